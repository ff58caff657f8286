//! Local sandboxes on bubblewrap.

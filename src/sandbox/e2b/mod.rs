//! E2B cloud sandboxes: the control plane over REST, processes and files over envd.

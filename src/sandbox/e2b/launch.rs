//! The upload and the runner's start, sent at once: a run's second and
//! third round trips become one.
//!
//! The process goes out behind an [`upload_gate`] that holds it until the
//! upload's last file, a marker unique to the run, exists. That this means
//! every earlier file is complete is envd's doing: its multipart handler
//! (e2b-dev/infra, `packages/envd/internal/api/upload.go`,
//! `handleMultipartUpload`) takes one part at a time with `NextPart` and
//! hands it to `processFile`, which opens the destination, copies the
//! whole part into it (`file.ReadFrom(part)`) and closes it before the
//! loop reads the next part. A part that fails ends the request, so
//! nothing after it, the marker least of all, is written.
//!
//! envd starts the process itself as at any other time: its own
//! `/bin/sh -c '... exec "$@"'` around the command, the start's `cwd`
//! (which must exist then: the run's is the user's home, which the
//! template has) and its environment (`PATH`, `HOME`, `USER`, `LOGNAME`,
//! the sandbox's variables, then the start's own). The gate adds one
//! variable and removes it before its own `exec`; see [`upload_gate`] for
//! what else stays the same.
//!
//! An upload that fails fails the launch with its own error, at once; a
//! start already made is let go, and the process, still waiting for its
//! marker, dies with the sandbox the run then destroys (or, should that
//! destroy fail too, at the gate's bound).

use tracing::Instrument as _;

use super::E2bSandbox;
use crate::sandbox::{ProcessSpec, ProcessStream, Sandbox, SandboxError, SandboxFile, upload_gate};

/// Sends `files` and starts `process` at once, `process` held until the
/// last of `files` is written.
pub(super) async fn upload_and_start(
    sandbox: &E2bSandbox,
    mut files: Vec<SandboxFile>,
    process: ProcessSpec,
) -> Result<ProcessStream, SandboxError> {
    let marker = upload_gate::marker();
    let landed = marker.path.clone();
    files.push(marker);
    // Long enough for the upload's two attempts and the check between
    // them (`upload_files`), each within the request timeout.
    let bound = sandbox.shared.options.request_timeout * 3;
    let process = upload_gate::gated(process, &landed, bound);
    // Two spans that overlap, as the calls do.
    let upload_span = crate::sandbox::upload_span(&files);
    let upload = sandbox
        .upload_files(files, Some(&landed))
        .instrument(upload_span);
    let start = Sandbox::start(sandbox, process).instrument(crate::sandbox::start_span());
    tokio::pin!(upload, start);
    tokio::select! {
        biased;
        uploaded = &mut upload => {
            uploaded?;
            start.await
        }
        started = &mut start => {
            // The upload's failure is the run's cause even when the start
            // failed too.
            upload.await?;
            started
        }
    }
}

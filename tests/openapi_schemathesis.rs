//! schemathesis (PyPI) runs the served OpenAPI document against a real
//! `ds serve --sandbox e2b` in front of the E2B emulator (synthetic runner).
//!
//! It generates valid and invalid bodies from the document and checks the
//! server both ways: no 5xx; every status, content type and header is
//! documented; every JSON body and every SSE event's JSON matches its
//! schema; every body the schema forbids is refused. A run of real sandbox
//! lifecycles stands behind each accepted body.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::run;
use common::serve::StackBuilder;
use common::tools::{manifest_dir, tool};

/// The pinned package, as in tests/python/requirements.txt.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// What schemathesis checks. `positive_data_acceptance` (every body the
/// schema allows is accepted) is left out: JSON Schema counts `14.0` as an
/// integer, and the request parser refuses it for `timeout`/`max_turns`.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,\
                      negative_data_rejection";

#[test]
fn schemathesis_finds_the_server_true_to_its_openapi_document() {
    let schemathesis = tool("schemathesis", SCHEMATHESIS);
    // Its working folder is a temporary one, so nothing it writes lands in
    // the repository.
    let scratch = tempfile::tempdir().expect("tempdir");
    // With a run history, so that GET /runs and GET /runs/{id} answer with
    // records as well as live runs.
    let history = scratch.path().join("history.db");
    let stack = StackBuilder::default()
        .synthetic(5)
        .env("SANDSTORM_HISTORY_PATH", &history.display().to_string())
        // So that POST /webhooks/e2b reads what it is sent rather than
        // refuse it unsigned: the body's schema is what is checked.
        .env("SANDSTORM_E2B_WEBHOOK_INSECURE", "1")
        // So GET /triggers/cron/{name} answers callers without it (401)
        // rather than refusing every call (503).
        .env("CRON_SECRET", "cron-secret-schemathesis-0123456789")
        .start();
    let config = manifest_dir().join("tests/schemathesis/schemathesis.toml");
    let mut command = Command::new(&schemathesis);
    command
        .current_dir(scratch.path())
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/openapi.json", stack.url)])
        .args(["--checks", CHECKS])
        // Bounded and repeatable: the same cases on every run.
        .args(["--max-examples", "30", "--seed", "20261127"])
        .args(["--generation-database", "none", "--request-timeout", "30"])
        .arg("--no-color");
    let (status, stdout, stderr) = run(command, Duration::from_secs(300));
    assert!(
        status.success(),
        "schemathesis found the server and src/openapi.json disagreeing:\n{stdout}\n{stderr}"
    );
    // Every operation was exercised, not skipped: POST /query, GET /health,
    // GET /runs, GET and DELETE /runs/{id}, POST /runs/{id}/cancel, POST
    // /runs/{id}/ended, GET /runs/{id}/events, POST /runs/{id}/messages,
    // POST /runs/{id}/replay, POST /webhooks/e2b, GET /triggers/cron/{name}
    // and the dashboard, GET /.
    assert!(
        stdout.contains("Tested: 15"),
        "schemathesis tested fewer operations than the document has:\n{stdout}"
    );
}

//! Parity with the official E2B SDKs (issue 13): the Python SDK (driver.py),
//! the JS SDK (driver.mjs) and our client perform the same operation against
//! a recording emulator, and the shapes of what they send are compared field
//! by field (method, path, query keys, allow-listed headers, body shape).
//!
//! Every call our client makes is held this way: create, upload, process
//! start, file read, set-timeout and kill. Where the two SDKs differ from
//! each other either is accepted, and the message says which one ours
//! matches. One difference is documented and allowed: our client sends an
//! `Idempotency-Key` on create (neither SDK does by default), so a retried
//! create cannot make two sandboxes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::emulator::{self, Recorded, RunningEmulator};
use common::keys::E2B_KEY as KEY;
use common::tools::manifest_dir;
use futures::StreamExt as _;
use sandstorm::sandbox::e2b::{E2bOptions, E2bProvider};
use sandstorm::sandbox::{ProcessEvent, ProcessSpec, SandboxFile, SandboxProvider, SandboxSpec};

const OPERATIONS: &[&str] = &[
    "create",
    "upload_one",
    "upload_many",
    "run",
    "read",
    "set_timeout",
    "kill",
    "pause",
    "connect",
    "list",
];

/// Runs one SDK driver against a recording emulator of its own and returns
/// what the emulator saw.
async fn record_sdk(program: &str, driver: &str, op: &str) -> Vec<Recorded> {
    let (running, recording) = emulator::start_recording().await;
    let dir = manifest_dir().join("tests/e2b-parity");
    let mut command = tokio::process::Command::new(program);
    command
        .arg(dir.join(driver))
        .arg(op)
        .current_dir(&dir)
        .env("E2B_API_URL", &running.url)
        .env("E2B_SANDBOX_URL", &running.url)
        .env("E2B_API_KEY", KEY)
        .env("E2B_VALIDATE_API_KEY", "false")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("{driver} {op} did not finish within 60 s"))
        .unwrap_or_else(|err| panic!("start {program} {driver}: {err}"));
    assert!(
        output.status.success(),
        "{driver} {op} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    running.settled(Duration::from_secs(10)).await;
    recording.lock().expect("recording lock").clone()
}

fn python() -> String {
    manifest_dir()
        .join(".venv/bin/python")
        .to_string_lossy()
        .into_owned()
}

/// The first request of `recorded` that `matches`, for a readable failure.
fn find<'a>(
    recorded: &'a [Recorded],
    what: &str,
    matches: impl Fn(&Recorded) -> bool,
) -> &'a Recorded {
    recorded
        .iter()
        .find(|request| matches(request))
        .unwrap_or_else(|| panic!("no {what} request among {recorded:#?}"))
}

/// Field-by-field differences between two recorded requests.
fn diff(left: &Recorded, right: &Recorded) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, l: String, r: String| {
        if l != r {
            out.push(format!("  {name}:\n    - {l}\n    + {r}"));
        }
    };
    field("method", left.method.clone(), right.method.clone());
    field("path", left.path.clone(), right.path.clone());
    field(
        "query keys",
        format!("{:?}", left.query_keys),
        format!("{:?}", right.query_keys),
    );
    let names: std::collections::BTreeSet<_> =
        left.headers.keys().chain(right.headers.keys()).collect();
    for name in names {
        field(
            &format!("header {name}"),
            format!("{:?}", left.headers.get(name)),
            format!("{:?}", right.headers.get(name)),
        );
    }
    field("body", left.body.to_string(), right.body.to_string());
    out
}

/// The request sequence of each SDK for `op`, as (method, path) pairs.
fn sequence(recorded: &[Recorded]) -> Vec<(String, String)> {
    recorded
        .iter()
        .map(|request| (request.method.clone(), request.path.clone()))
        .collect()
}

/// Both SDKs, every operation: each request is recorded, and where they
/// agree that is what our client is held to; where they differ the test
/// prints both so the choice is a visible one.
#[tokio::test(flavor = "multi_thread")]
async fn sdks_send_the_same_requests_per_operation() {
    let mut report = Vec::new();
    for op in OPERATIONS {
        let py = record_sdk(&python(), "driver.py", op).await;
        let js = record_sdk("node", "driver.mjs", op).await;
        assert!(!py.is_empty() && !js.is_empty(), "{op}: nothing recorded");
        let (py_seq, js_seq) = (sequence(&py), sequence(&js));
        if py_seq != js_seq {
            report.push(format!(
                "{op}: request sequences differ\n  py: {py_seq:?}\n  js: {js_seq:?}"
            ));
            continue;
        }
        for (p, j) in py.iter().zip(&js) {
            let lines = diff(p, j);
            if !lines.is_empty() {
                report.push(format!(
                    "{op} {} {} (py -, js +):\n{}",
                    p.method,
                    p.path,
                    lines.join("\n")
                ));
            }
        }
    }
    // The SDKs' own differences are printed, not failed: either is accepted.
    println!(
        "differences between the Python and JS SDKs:\n{}",
        report.join("\n")
    );
}

/// The check every test below makes: both SDKs perform `op` (the drivers'
/// operation), our client performs the same call in `ours` against a
/// recording emulator of its own, and the request `matches` picks out of our
/// recording must equal, field by field, the one it picks out of at least
/// one SDK's. `ours_only` names headers our client sends on purpose where
/// neither SDK does (each call site says why): each must be present, and
/// only then is it left out of the comparison.
async fn assert_ours_matches_an_sdk(
    op: &str,
    matches: impl Fn(&Recorded) -> bool,
    ours_only: &[&str],
    ours: impl AsyncFnOnce(&RunningEmulator),
) {
    let py = record_sdk(&python(), "driver.py", op).await;
    let js = record_sdk("node", "driver.mjs", op).await;
    let py_request = find(&py, &format!("Python {op}"), &matches);
    let js_request = find(&js, &format!("JS {op}"), &matches);

    let (running, recording) = emulator::start_recording().await;
    ours(&running).await;
    // Ours must leave nothing running either, as the drivers are held to.
    running.settled(Duration::from_secs(10)).await;
    let recorded = recording.lock().expect("recording lock").clone();
    let mut our_request = find(&recorded, &format!("our {op}"), &matches).clone();
    for header in ours_only {
        assert!(
            our_request.headers.remove(*header).is_some(),
            "our {op} no longer sends {header}, which the test allows as ours alone: \
             {our_request:#?}"
        );
    }

    let against_py = diff(py_request, &our_request);
    let against_js = diff(js_request, &our_request);
    let matched = match (against_py.is_empty(), against_js.is_empty()) {
        (true, true) => "both SDKs",
        (true, false) => "the Python SDK",
        (false, true) => "the JS SDK",
        (false, false) => panic!(
            "our {op} matches neither SDK\nvs Python (- py, + ours):\n{}\nvs JS (- js, + ours):\n{}",
            against_py.join("\n"),
            against_js.join("\n")
        ),
    };
    println!("our {op} matches {matched}");
}

/// Our client against the recording emulator, with the default options.
fn our_provider(running: &RunningEmulator) -> E2bProvider {
    E2bProvider::new(E2bOptions::local(&running.url, KEY)).expect("client builds")
}

/// Our create, compared with the SDKs' `Sandbox.create` with the drivers'
/// arguments (120 s, one metadata entry).
#[tokio::test(flavor = "multi_thread")]
async fn our_create_matches_an_sdk() {
    let is_create = |r: &Recorded| r.method == "POST" && r.path.ends_with("/sandboxes");
    // Our create carries an Idempotency-Key (neither SDK does by default):
    // every attempt shares it, so a retried create cannot make two sandboxes.
    assert_ours_matches_an_sdk("create", is_create, &["idempotency-key"], async |running| {
        let sandbox = our_provider(running)
            .create(SandboxSpec {
                lifetime: Duration::from_secs(120),
                metadata: BTreeMap::from([("suite".into(), "parity".into())]),
                ..SandboxSpec::default()
            })
            .await
            .expect("our client creates a sandbox");
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our upload of two files, compared with the SDKs' `write_files`/`write`
/// of two: one multipart POST /files.
#[tokio::test(flavor = "multi_thread")]
async fn our_upload_matches_an_sdk() {
    let is_upload = |r: &Recorded| r.method == "POST" && r.path == "/files";
    assert_ours_matches_an_sdk("upload_many", is_upload, &[], async |running| {
        let sandbox = our_provider(running)
            .create(SandboxSpec::default())
            .await
            .expect("our client creates a sandbox");
        let files = ["a.txt", "b.txt"]
            .iter()
            .map(|name| SandboxFile {
                path: format!("/home/user/parity/{name}"),
                content: bytes::Bytes::from_static(b"A"),
            })
            .collect();
        sandbox.upload(files).await.expect("our client uploads");
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our upload of one file, compared with the SDKs' `write` of one: with a
/// single part envd wants the path in the `path` query, as both send it.
#[tokio::test(flavor = "multi_thread")]
async fn our_upload_of_one_file_matches_an_sdk() {
    let is_upload = |r: &Recorded| r.method == "POST" && r.path == "/files";
    assert_ours_matches_an_sdk("upload_one", is_upload, &[], async |running| {
        let sandbox = our_provider(running)
            .create(SandboxSpec::default())
            .await
            .expect("our client creates a sandbox");
        let one = SandboxFile {
            path: "/home/user/parity/one.txt".into(),
            content: bytes::Bytes::from_static(b"one\n"),
        };
        sandbox.upload(vec![one]).await.expect("our client uploads");
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our process start, compared with the SDKs' `commands.run`: the Connect
/// headers and the decoded Start message. The SDKs run a command line as
/// `/bin/bash -l -c <line>`, so ours is given that argv (with the drivers'
/// environment, folder and 30 s limit): the message's shape, which keeps
/// array lengths and map keys, is then comparable.
#[tokio::test(flavor = "multi_thread")]
async fn our_process_start_matches_an_sdk() {
    let is_start = |r: &Recorded| r.method == "POST" && r.path == "/process.Process/Start";
    assert_ours_matches_an_sdk("run", is_start, &[], async |running| {
        let sandbox = our_provider(running)
            .create(SandboxSpec::default())
            .await
            .expect("our client creates a sandbox");
        let mut events = sandbox
            .start(ProcessSpec {
                cmd: "/bin/bash".into(),
                args: vec!["-l".into(), "-c".into(), "echo parity".into()],
                envs: BTreeMap::from([("PARITY".into(), "1".into())]),
                cwd: "/home/user".into(),
                timeout: Some(Duration::from_secs(30)),
                // As `commands.run` does: stdin closed.
                stdin: false,
                tag: None,
                spend: None,
                spend_record: None,
                callback: None,
            })
            .await
            .expect("our client starts the process");
        // Read the run to its end, as `commands.run` waits for the exit.
        let mut stdout = Vec::new();
        let mut exit = None;
        while let Some(event) = events.next().await {
            match event.expect("the process stream reads") {
                ProcessEvent::Stdout(chunk) => stdout.extend_from_slice(&chunk),
                ProcessEvent::Stderr(_) => {}
                ProcessEvent::Exited(status) => exit = Some(status),
            }
        }
        let exit = exit.expect("the stream ends with the exit");
        assert_eq!(exit.code, Some(0), "the command failed: {exit:?}");
        assert_eq!(String::from_utf8_lossy(&stdout), "parity\n");
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our file read, compared with the SDKs' `files.read`: `GET /files` with
/// the path in the query.
#[tokio::test(flavor = "multi_thread")]
async fn our_file_read_matches_an_sdk() {
    let is_read = |r: &Recorded| r.method == "GET" && r.path == "/files";
    assert_ours_matches_an_sdk("read", is_read, &[], async |running| {
        let sandbox = our_provider(running)
            .create(SandboxSpec::default())
            .await
            .expect("our client creates a sandbox");
        let path = "/home/user/parity/read.txt";
        // As the drivers do: write the file first, so the read finds it.
        sandbox
            .upload(vec![SandboxFile {
                path: path.into(),
                content: bytes::Bytes::from_static(b"read me\n"),
            }])
            .await
            .expect("our client uploads");
        let content = sandbox.read_file(path).await.expect("our client reads");
        assert_eq!(&content[..], b"read me\n");
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our kill, compared with the SDKs' `kill`: `DELETE /sandboxes/{id}`.
#[tokio::test(flavor = "multi_thread")]
async fn our_kill_matches_an_sdk() {
    let is_kill = |r: &Recorded| r.method == "DELETE" && r.path == "/sandboxes/{id}";
    assert_ours_matches_an_sdk("kill", is_kill, &[], async |running| {
        let sandbox = our_provider(running)
            .create(SandboxSpec::default())
            .await
            .expect("our client creates a sandbox");
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our pause, compared with the SDKs' `pause`: `POST /sandboxes/{id}/pause`.
#[tokio::test(flavor = "multi_thread")]
async fn our_pause_matches_an_sdk() {
    let is_pause = |r: &Recorded| r.method == "POST" && r.path == "/sandboxes/{id}/pause";
    assert_ours_matches_an_sdk("pause", is_pause, &[], async |running| {
        let sandbox = our_provider(running)
            .create(SandboxSpec::default())
            .await
            .expect("our client creates a sandbox");
        assert!(sandbox.pause().await.expect("our client pauses"));
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our connect (how a run is reattached), compared with the SDKs'
/// `Sandbox.connect`: `POST /v2/sandboxes/{id}/connect {"timeout": s}`.
#[tokio::test(flavor = "multi_thread")]
async fn our_connect_matches_an_sdk() {
    let is_connect = |r: &Recorded| r.method == "POST" && r.path == "/v2/sandboxes/{id}/connect";
    assert_ours_matches_an_sdk("connect", is_connect, &[], async |running| {
        let provider = our_provider(running);
        let sandbox = provider
            .create(SandboxSpec::default())
            .await
            .expect("our client creates a sandbox");
        let again = provider
            .connect(sandbox.id(), SandboxSpec::default())
            .await
            .expect("our client connects");
        again.destroy().await.expect("our client kills the sandbox");
    })
    .await;
}

/// Our list by metadata, compared with the SDKs' `Sandbox.list` with a
/// metadata query: `GET /v2/sandboxes` and the same query keys.
#[tokio::test(flavor = "multi_thread")]
async fn our_list_matches_an_sdk() {
    let is_list = |r: &Recorded| r.method == "GET" && r.path == "/v2/sandboxes";
    assert_ours_matches_an_sdk("list", is_list, &[], async |running| {
        let provider = our_provider(running);
        let metadata = BTreeMap::from([("suite".to_owned(), "parity".to_owned())]);
        let sandbox = provider
            .create(SandboxSpec {
                metadata: metadata.clone(),
                ..SandboxSpec::default()
            })
            .await
            .expect("our client creates a sandbox");
        let listed = provider
            .list(&metadata, None)
            .await
            .expect("our client lists");
        assert_eq!(
            listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            [sandbox.id()]
        );
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

/// Our set-timeout, compared with the SDKs' `set_timeout`/`setTimeout`:
/// `POST /sandboxes/{id}/timeout` with `{"timeout": seconds}` (the values
/// differ, the shape must not). Ours calls it only to extend a run past the
/// plan's limit, so the test sets a 2 s limit, asks for a longer lifetime
/// and waits for the first extension (due 0.5 s before the 2 s run out).
#[tokio::test(flavor = "multi_thread")]
async fn our_set_timeout_matches_an_sdk() {
    let is_set_timeout = |r: &Recorded| r.method == "POST" && r.path == "/sandboxes/{id}/timeout";
    assert_ours_matches_an_sdk("set_timeout", is_set_timeout, &[], async |running| {
        let mut options = E2bOptions::local(&running.url, KEY);
        options.max_timeout = Duration::from_secs(2);
        let provider = E2bProvider::new(options).expect("client builds");
        let sandbox = provider
            .create(SandboxSpec {
                lifetime: Duration::from_secs(60),
                ..SandboxSpec::default()
            })
            .await
            .expect("our client creates a sandbox");
        let start = Instant::now();
        while running.requests("timeout") == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "our client did not extend the sandbox within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sandbox
            .destroy()
            .await
            .expect("our client kills the sandbox");
    })
    .await;
}

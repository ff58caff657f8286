//! The E2B emulator: its wire behaviour (Connect stream shape, auth, files),
//! its counters and test knobs, and the conformance suite that runs the
//! official Python SDK against the `e2b-emulator` binary.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::emulator::{self, Knobs};
use common::keys::E2B_KEY as KEY;
use common::process::{Process, Signal};
use e2b_wire::connect::{Frame, FrameDecoder, encode};
use futures::StreamExt;
use serde_json::{Value, json};

/// A liveness guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

/// The repository root: the runner install, .venv and tests/python live
/// there, two levels above this crate.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An emulator of its own per test, so counters and knobs do not mix.
struct Emu {
    base: String,
    http: reqwest::Client,
}

struct Sbx {
    id: String,
    token: String,
}

impl Sbx {
    /// The sandbox a create answered, addressed without its token (kill
    /// needs only the id).
    fn created(answer: &Value) -> Sbx {
        Sbx {
            id: answer["sandboxID"]
                .as_str()
                .expect("a sandboxID")
                .to_owned(),
            token: String::new(),
        }
    }
}

/// A decoded `Process/Start` answer.
#[derive(Debug)]
struct Started {
    content_type: String,
    messages: Vec<Value>,
    end_of_stream: Option<Value>,
    /// The connection broke before the stream ended.
    cut: bool,
    /// Bytes after the end-of-stream frame (there must be none).
    trailing_frames: usize,
}

impl Started {
    fn events(&self, kind: &str) -> Vec<&Value> {
        self.messages
            .iter()
            .filter_map(|m| m["event"].get(kind))
            .collect()
    }

    fn output(&self, stream: &str) -> Vec<u8> {
        use base64::Engine;
        self.events("data")
            .iter()
            .filter_map(|d| d[stream].as_str())
            .flat_map(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .expect("base64")
            })
            .collect()
    }
}

impl Emu {
    async fn start() -> Emu {
        Emu {
            base: emulator::start(Knobs::default()).await.url,
            http: reqwest::Client::new(),
        }
    }

    fn control(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-KEY", KEY)
    }

    fn envd(&self, method: reqwest::Method, path: &str, sbx: &Sbx) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("E2b-Sandbox-Id", &sbx.id)
            .header("E2b-Sandbox-Port", "49983")
            .header("X-Access-Token", &sbx.token)
    }

    /// Creates a `secure` sandbox (the SDKs' default), whose envd wants
    /// the token create hands back.
    async fn create(&self, mut body: Value) -> Sbx {
        body["secure"] = json!(true);
        let res = self
            .control(reqwest::Method::POST, "/v2/sandboxes")
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.expect("json");
        Sbx {
            id: v["sandboxID"].as_str().expect("id").to_owned(),
            token: v["envdAccessToken"].as_str().expect("token").to_owned(),
        }
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/stats", self.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }

    async fn configure(&self, knobs: Value) {
        let res = self
            .http
            .post(format!("{}/_emulator/config", self.base))
            .json(&knobs)
            .send()
            .await
            .expect("config");
        assert_eq!(
            res.status(),
            200,
            "{}",
            res.text().await.unwrap_or_default()
        );
    }

    async fn start_process(&self, sbx: &Sbx, argv: &[&str], headers: &[(&str, &str)]) -> Started {
        let message = json!({
            "process": {"cmd": argv[0], "args": &argv[1..], "envs": {}, "cwd": "/home/user"},
            "stdin": false,
        });
        self.start_message(sbx, &message, headers).await
    }

    /// Starts the process `message` describes.
    async fn start_message(&self, sbx: &Sbx, message: &Value, headers: &[(&str, &str)]) -> Started {
        self.stream_call("/process.Process/Start", sbx, message, headers)
            .await
    }

    /// Attaches to the process `selector` names (`Process/Connect`) and
    /// reads its stream to the end.
    async fn attach(&self, sbx: &Sbx, selector: &Value) -> Started {
        let message = json!({ "process": selector });
        self.stream_call("/process.Process/Connect", sbx, &message, &[])
            .await
    }

    /// A server-streaming envd call, read to its end.
    async fn stream_call(
        &self,
        path: &str,
        sbx: &Sbx,
        message: &Value,
        headers: &[(&str, &str)],
    ) -> Started {
        let mut req = self
            .envd(reqwest::Method::POST, path, sbx)
            .header("Content-Type", "application/connect+json")
            .body(encode(0, message.to_string().as_bytes()));
        // reqwest appends a header given twice; the caller's value replaces
        // the default instead.
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connect-protocol-version"))
        {
            req = req.header("Connect-Protocol-Version", "1");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let read = async {
            let res = req.send().await.expect("start");
            assert_eq!(res.status(), 200);
            let content_type = res.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .to_owned();
            let mut body = res.bytes_stream();
            let mut decoder = FrameDecoder::new();
            let mut frames: Vec<Frame> = Vec::new();
            let mut cut = false;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(chunk) => decoder.push(&chunk),
                    Err(_) => {
                        cut = true;
                        break;
                    }
                }
                while let Some(frame) = decoder.next_frame().expect("valid frame") {
                    frames.push(frame);
                }
            }
            let mut started = Started {
                content_type,
                messages: Vec::new(),
                end_of_stream: None,
                cut,
                trailing_frames: 0,
            };
            for frame in frames {
                let v: Value = serde_json::from_slice(&frame.payload).expect("json frame");
                if started.end_of_stream.is_some() {
                    started.trailing_frames += 1;
                } else if frame.is_end_stream() {
                    started.end_of_stream = Some(v);
                } else {
                    started.messages.push(v);
                }
            }
            started
        };
        tokio::time::timeout(GUARD, read)
            .await
            .expect("stream did not end")
    }

    async fn kill(&self, sbx: &Sbx) -> u16 {
        self.control(reqwest::Method::DELETE, &format!("/sandboxes/{}", sbx.id))
            .send()
            .await
            .expect("kill")
            .status()
            .as_u16()
    }
}

fn sh(script: &str) -> [&str; 3] {
    ["/bin/sh", "-c", script]
}

#[tokio::test]
async fn a_run_costs_create_one_upload_one_start_and_a_kill() {
    let emu = Emu::start().await;
    let sbx = emu
        .create(json!({"templateID": "base", "timeout": 60}))
        .await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"a".to_vec()).file_name("/home/user/a.txt"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"b".to_vec()).file_name("/opt/agent-runner/b.json"),
        );
    let res = emu
        .envd(reqwest::Method::POST, "/files", &sbx)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 200);
    let started = emu
        .start_process(
            &sbx,
            &sh("cat /home/user/a.txt /opt/agent-runner/b.json"),
            &[],
        )
        .await;
    assert_eq!(started.output("stdout"), b"ab");
    assert_eq!(emu.kill(&sbx).await, 204);

    let mut stats = emu.stats().await;
    // One after another: each call arrived once the one before was answered.
    let calls = stats
        .as_object_mut()
        .and_then(|stats| stats.remove("calls"))
        .expect("the call log");
    let calls: Vec<(&str, &str)> = calls
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["call"].as_str().unwrap_or_default(),
                c["moment"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let kill = format!("DELETE /sandboxes/{}", sbx.id);
    assert_eq!(
        calls,
        [
            ("POST /v2/sandboxes", "arrived"),
            ("POST /v2/sandboxes", "answered"),
            ("POST /files", "arrived"),
            ("POST /files", "answered"),
            ("POST /process.Process/Start", "arrived"),
            ("POST /process.Process/Start", "answered"),
            (kill.as_str(), "arrived"),
            (kill.as_str(), "answered"),
        ]
    );
    assert_eq!(
        stats,
        json!({"created": 1, "killed": 1, "alive": 0,
               "requests": {"create": 1, "upload": 1, "start": 1, "kill": 1}})
    );
}

#[tokio::test]
async fn the_process_stream_has_envds_shape() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({"templateID": "base"})).await;
    let s = emu
        .start_process(&sbx, &sh("echo out; echo err >&2; exit 3"), &[])
        .await;
    assert_eq!(s.content_type, "application/connect+json");
    assert!(!s.cut);
    let first = &s.messages[0]["event"];
    assert!(
        first["start"]["pid"].as_u64().is_some_and(|p| p > 0),
        "start first: {first}"
    );
    assert_eq!(s.output("stdout"), b"out\n");
    assert_eq!(s.output("stderr"), b"err\n");
    let last = s.messages.last().expect("messages");
    assert_eq!(
        last["event"]["end"],
        json!({"exitCode": 3, "exited": true, "status": "exit status 3", "error": "exit status 3"})
    );
    assert_eq!(s.end_of_stream, Some(json!({})));
    assert_eq!(s.trailing_frames, 0);

    // Exit 0 omits the zero values, as proto JSON does.
    let s = emu.start_process(&sbx, &["true"], &[]).await;
    assert_eq!(
        s.events("end"),
        [&json!({"exited": true, "status": "exit status 0"})]
    );
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn quiet_processes_get_keepalive_frames() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let s = emu
        .start_process(
            &sbx,
            &sh("sleep 2.5; echo done"),
            &[("Keepalive-Ping-Interval", "1")],
        )
        .await;
    let kinds: Vec<&str> = s
        .messages
        .iter()
        .filter_map(|m| m["event"].as_object()?.keys().next().map(String::as_str))
        .collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert!(kinds.contains(&"keepalive"), "no keepalive in {kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"));
    assert_eq!(s.output("stdout"), b"done\n");
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn connect_timeout_ms_bounds_the_process_life() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let s = emu
        .start_process(
            &sbx,
            &sh("echo started; sleep 600"),
            &[("Connect-Timeout-Ms", "500")],
        )
        .await;
    assert_eq!(s.output("stdout"), b"started\n");
    assert!(s.events("end").is_empty());
    assert_eq!(
        s.end_of_stream
            .as_ref()
            .and_then(|e| e["error"]["code"].as_str()),
        Some("deadline_exceeded")
    );
    emu.kill(&sbx).await;
}

/// envd gives a process a stdin pipe unless Start says `"stdin": false`
/// (`req.Stdin == nil || req.GetStdin()` in its process handler), and
/// nothing writes to it: a read waits until the deadline kills the
/// process. With `"stdin": false` stdin is `/dev/null` and a read ends at
/// once. A client that forgets to send `false` hangs here as on E2B.
#[tokio::test]
async fn stdin_is_an_open_pipe_unless_start_says_false_as_envd_does() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let process = json!({
        "cmd": "/bin/sh",
        "args": ["-c", "if read line; then echo line; else echo end of input; fi"],
        "cwd": "/home/user",
    });
    let closed = emu
        .start_message(&sbx, &json!({"process": process, "stdin": false}), &[])
        .await;
    assert_eq!(closed.output("stdout"), b"end of input\n");

    for message in [
        json!({"process": process}),
        json!({"process": process, "stdin": true}),
    ] {
        let open = emu
            .start_message(&sbx, &message, &[("Connect-Timeout-Ms", "1000")])
            .await;
        assert_eq!(open.output("stdout"), b"", "{message}");
        assert_eq!(
            open.end_of_stream
                .as_ref()
                .and_then(|e| e["error"]["code"].as_str()),
            Some("deadline_exceeded"),
            "the read waits on the open pipe until the deadline: {message}"
        );
    }
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn create_envvars_are_every_process_default_environment() {
    let emu = Emu::start().await;
    let sbx = emu
        .create(json!({"envVars": {"FROM_CREATE": "yes"}, "metadata": {"k": "v"}}))
        .await;
    let s = emu.start_process(&sbx, &sh("echo $FROM_CREATE"), &[]).await;
    assert_eq!(s.output("stdout"), b"yes\n");
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn keys_and_tokens_are_checked() {
    let emu = Emu::start().await;
    let res = emu
        .http
        .post(format!("{}/v2/sandboxes", emu.base))
        .header("X-API-KEY", "not-an-e2b-key")
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.expect("json")["code"], 401);

    let sbx = emu.create(json!({})).await;
    let wrong = Sbx {
        id: sbx.id.clone(),
        token: "wrong".into(),
    };
    let res = emu
        .envd(reqwest::Method::GET, "/files?path=/home/user/x", &wrong)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    let gone = Sbx {
        id: "nosuchsandbox".into(),
        token: sbx.token.clone(),
    };
    let res = emu
        .envd(reqwest::Method::GET, "/files?path=/home/user/x", &gone)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 502);
    assert_eq!(emu.stats().await["created"], 1);
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn files_upload_many_parts_octet_stream_and_download() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"one".to_vec()).file_name("/home/user/d/one.txt"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"two".to_vec()).file_name("/tmp/two.txt"),
        );
    let res = emu
        .envd(reqwest::Method::POST, "/files", &sbx)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let written: Value = res.json().await.expect("json");
    assert_eq!(
        written,
        json!([{"path": "/home/user/d/one.txt", "name": "one.txt", "type": "file"},
               {"path": "/tmp/two.txt", "name": "two.txt", "type": "file"}])
    );
    let res = emu
        .envd(
            reqwest::Method::POST,
            "/files?path=/home/user/raw.bin",
            &sbx,
        )
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8, 1, 2, 255])
        .send()
        .await
        .expect("octet upload");
    assert_eq!(res.status(), 200);

    for (path, content) in [
        ("/home/user/d/one.txt", &b"one"[..]),
        ("/tmp/two.txt", b"two"),
        ("/home/user/raw.bin", &[0, 1, 2, 255]),
    ] {
        let res = emu
            .envd(reqwest::Method::GET, &format!("/files?path={path}"), &sbx)
            .send()
            .await
            .expect("download");
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            res.bytes().await.expect("body"),
            Bytes::copy_from_slice(content)
        );
    }
    let missing = emu
        .envd(reqwest::Method::GET, "/files?path=/home/user/nope", &sbx)
        .send()
        .await
        .expect("download");
    assert_eq!(missing.status(), 404);
    let outside = emu
        .envd(reqwest::Method::POST, "/files?path=/etc/passwd", &sbx)
        .header("Content-Type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .expect("upload");
    assert_eq!(outside.status(), 400);
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn send_signal_kills_a_running_process() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let message = json!({"process": {"cmd": "/bin/sh", "args": ["-c", "echo up; sleep 600"]}});
    let res = emu
        .envd(reqwest::Method::POST, "/process.Process/Start", &sbx)
        .header("Content-Type", "application/connect+json")
        .body(encode(0, message.to_string().as_bytes()))
        .send()
        .await
        .expect("start");
    let mut body = res.bytes_stream();
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    while frames.is_empty() {
        decoder.push(&body.next().await.expect("frame").expect("bytes"));
        while let Some(f) = decoder.next_frame().expect("frame") {
            frames.push(f);
        }
    }
    let start: Value = serde_json::from_slice(&frames[0].payload).expect("json");
    let pid = start["event"]["start"]["pid"].as_u64().expect("pid");

    let signal = |pid: u64| {
        emu.envd(reqwest::Method::POST, "/process.Process/SendSignal", &sbx)
            .header("Content-Type", "application/json")
            .json(&json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}))
            .send()
    };
    let res = signal(pid).await.expect("signal");
    assert_eq!(res.status(), 200);
    let mut rest = Vec::new();
    let drain = async {
        while let Some(chunk) = body.next().await {
            decoder.push(&chunk.expect("bytes"));
            while let Some(f) = decoder.next_frame().expect("frame") {
                rest.push(f);
            }
        }
    };
    tokio::time::timeout(GUARD, drain)
        .await
        .expect("stream ended");
    let end = rest
        .iter()
        .filter(|f| !f.is_end_stream())
        .map(|f| serde_json::from_slice::<Value>(&f.payload).expect("json"))
        .find_map(|v| v["event"].get("end").cloned())
        .expect("end frame");
    assert_eq!(end["exitCode"], -1);
    assert_eq!(end["status"], "signal: killed");

    let res = signal(pid).await.expect("signal");
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "not_found"
    );
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn create_faults_fail_count_times_then_succeed() {
    let emu = Emu::start().await;
    emu.configure(json!({"create_fault": {"mode": "error", "count": 2}}))
        .await;
    for _ in 0..2 {
        let res = emu
            .control(reqwest::Method::POST, "/sandboxes")
            .json(&json!({}))
            .send()
            .await
            .expect("create");
        assert_eq!(res.status(), 500);
        assert_eq!(res.json::<Value>().await.expect("json")["code"], 500);
    }
    let sbx = emu.create(json!({})).await;

    emu.configure(json!({"create_fault": {"mode": "rate_limit", "count": 1}}))
        .await;
    let res = emu
        .control(reqwest::Method::POST, "/sandboxes")
        .json(&json!({}))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "an injected 429 names its wait, as a rate limiter does"
    );

    emu.configure(json!({"create_fault": {"mode": "hang", "count": 1}}))
        .await;
    let hung = emu
        .control(reqwest::Method::POST, "/sandboxes")
        .timeout(Duration::from_millis(300))
        .json(&json!({}))
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()));

    let stats = emu.stats().await;
    // Two 500s, one success, one 429, one hang.
    assert_eq!(stats["requests"]["create"], 5);
    assert_eq!(stats["created"], 1);
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn kill_faults_fail_then_the_kill_goes_through() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    emu.configure(json!({"kill_failures": 1})).await;
    assert_eq!(emu.kill(&sbx).await, 503);
    assert_eq!(emu.stats().await["alive"], 1);
    assert_eq!(emu.kill(&sbx).await, 204);
    assert_eq!(emu.kill(&sbx).await, 404);
    let stats = emu.stats().await;
    assert_eq!(
        (stats["alive"].clone(), stats["killed"].clone()),
        (json!(0), json!(1))
    );
}

#[tokio::test]
async fn a_cut_stream_ends_without_end_frames() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    emu.configure(json!({"stream_cut": {"after_frames": 1, "count": 1}}))
        .await;
    let s = emu
        .start_process(
            &sbx,
            &sh("echo one; sleep 0.3; echo two; sleep 0.3; echo three"),
            &[],
        )
        .await;
    assert!(s.cut, "the connection should have broken");
    assert_eq!(s.output("stdout"), b"one\n");
    assert!(s.events("end").is_empty());
    assert_eq!(s.end_of_stream, None);
    // Only the next stream was cut.
    let s = emu.start_process(&sbx, &sh("echo whole"), &[]).await;
    assert!(!s.cut);
    assert_eq!(s.end_of_stream, Some(json!({})));
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn synthetic_mode_answers_the_runner_with_generated_lines() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    emu.configure(json!({"synthetic": {"lines": 2000, "bytes": 300}}))
        .await;
    let s = emu
        .start_process(
            &sbx,
            &[
                "/bin/bash",
                "-l",
                "-c",
                "cd /opt/agent-runner && node runner.mjs",
            ],
            &[],
        )
        .await;
    let frames: Vec<Vec<u8>> = s
        .events("data")
        .iter()
        .map(|d| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(d["stdout"].as_str().expect("stdout"))
                .expect("base64")
        })
        .collect();
    assert!(frames.len() > 1, "output must span several frames");
    assert!(
        frames.iter().any(|f| f.last() != Some(&b'\n')),
        "line borders must not line up with frames"
    );
    let all = s.output("stdout");
    let lines: Vec<Value> = all
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            assert_eq!(l.len() + 1, 300);
            serde_json::from_slice(l).expect("json line")
        })
        .collect();
    assert_eq!(lines.len(), 2000);
    assert_eq!(lines[0]["type"], "assistant");
    assert_eq!(
        (&lines[1999]["type"], &lines[1999]["subtype"]),
        (&json!("result"), &json!("success"))
    );
    assert_eq!(
        s.events("end"),
        [&json!({"exited": true, "status": "exit status 0"})]
    );

    // Anything that is not the runner still really runs.
    let s = emu.start_process(&sbx, &sh("echo real"), &[]).await;
    assert_eq!(s.output("stdout"), b"real\n");
    emu.kill(&sbx).await;
}

#[tokio::test]
async fn the_sandbox_timeout_is_enforced() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({"timeout": 1})).await;
    let gone = async {
        loop {
            let res = emu
                .control(reqwest::Method::GET, &format!("/sandboxes/{}", sbx.id))
                .send()
                .await
                .expect("get");
            if res.status() == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(GUARD, gone)
        .await
        .expect("the sandbox never expired");
    let stats = emu.stats().await;
    assert_eq!(
        (stats["alive"].clone(), stats["killed"].clone()),
        (json!(0), json!(1))
    );
}

#[tokio::test]
async fn list_filters_by_metadata_and_pages() {
    let emu = Emu::start().await;
    let a = emu.create(json!({"metadata": {"team": "a b&c"}})).await;
    let b = emu.create(json!({"metadata": {"team": "a b&c"}})).await;
    let c = emu.create(json!({"metadata": {"team": "other"}})).await;
    // The SDKs encode the filter twice: as a query string, inside the query.
    let res = emu
        .control(
            reqwest::Method::GET,
            "/v2/sandboxes?metadata=team%3Da%2520b%2526c&limit=1",
        )
        .send()
        .await
        .expect("list");
    let next = res.headers().get("x-next-token").cloned();
    let page: Vec<Value> = res.json().await.expect("json");
    assert_eq!(page.len(), 1);
    let next = next
        .expect("a next token")
        .to_str()
        .expect("ascii")
        .to_owned();
    let res = emu
        .control(
            reqwest::Method::GET,
            &format!("/v2/sandboxes?metadata=team%3Da%2520b%2526c&limit=1&nextToken={next}"),
        )
        .send()
        .await
        .expect("list");
    assert!(res.headers().get("x-next-token").is_none());
    let page2: Vec<Value> = res.json().await.expect("json");
    let mut ids: Vec<&str> = page
        .iter()
        .chain(&page2)
        .map(|s| s["sandboxID"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    let mut expected = [a.id.as_str(), b.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    let paused: Vec<Value> = emu
        .control(reqwest::Method::GET, "/v2/sandboxes?state=paused")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(paused.is_empty());
    for s in [a, b, c] {
        emu.kill(&s).await;
    }
}

#[tokio::test]
async fn knobs_round_trip_and_bad_configs_are_refused() {
    let emu = Emu::start().await;
    let knobs =
        json!({"latency_ms": 5, "kill_failures": 2, "synthetic": {"lines": 3, "bytes": 100}});
    emu.configure(knobs.clone()).await;
    let current: Value = emu
        .http
        .get(format!("{}/_emulator/config", emu.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(current, knobs);
    let res = emu
        .http
        .post(format!("{}/_emulator/config", emu.base))
        .json(&json!({"latency": 5}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 400);
}

/// The "Done when" of the emulator: the official E2B Python SDK, pinned in
/// tests/python/requirements.txt, passes its conformance suite against the
/// `e2b-emulator` binary cargo built for this test.
#[test]
fn the_official_python_sdk_passes_the_conformance_suite() {
    let python = repo().join(".venv/bin/python");
    let install = "python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt";
    assert!(
        python.is_file(),
        "{} is missing: create it with `{install}`",
        python.display()
    );
    let sdk = std::process::Command::new(&python)
        .args(["-c", "import e2b, pytest"])
        .output()
        .expect("run python");
    assert!(
        sdk.status.success(),
        "the e2b SDK or pytest is not installed in .venv: run `{install}`\n{}",
        String::from_utf8_lossy(&sdk.stderr)
    );
    let out = std::process::Command::new(&python)
        .args([
            "-m",
            "pytest",
            "tests/python",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(repo())
        .env("E2B_EMULATOR_BIN", emulator::binary())
        .output()
        .expect("run pytest");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the conformance suite failed:\n{report}"
    );
    assert!(report.contains(" passed"), "pytest ran no test:\n{report}");
    assert!(
        !report.contains("skipped"),
        "no conformance test may be skipped:\n{report}"
    );
}

/// The `e2b-emulator` binary on the port it picks, with its sandboxes
/// under `work_root`.
async fn spawn_binary(work_root: &std::path::Path) -> (Process, String) {
    emulator::start_binary(emulator::binary_command_in(work_root, &[])).await
}

/// Host processes whose argv is exactly `needle`.
fn host_processes(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").trim_end() == needle)
        .count()
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}"));
}

async fn start_sleeper(emu: &Emu, sbx: &Sbx, marker: &str) -> reqwest::Response {
    let message = json!({"process": {"cmd": "sleep", "args": [marker]}});
    let res = emu
        .envd(reqwest::Method::POST, "/process.Process/Start", sbx)
        .header("Content-Type", "application/connect+json")
        .body(encode(0, message.to_string().as_bytes()))
        .send()
        .await
        .expect("start");
    assert_eq!(res.status(), 200);
    res
}

#[tokio::test]
async fn sigterm_stops_the_binary_promptly_and_cleans_up() {
    let work_root = tempfile::tempdir().expect("work root");
    let (mut child, base) = spawn_binary(work_root.path()).await;
    let emu = Emu {
        base,
        http: reqwest::Client::new(),
    };
    let sbx = emu.create(json!({})).await;
    // An open process stream must not hold the shutdown up.
    let _stream = start_sleeper(&emu, &sbx, "6151").await;
    eventually("the sleeper never started", || {
        host_processes("sleep 6151") == 1
    })
    .await;
    assert_eq!(std::fs::read_dir(work_root.path()).expect("dir").count(), 1);

    child.signal(Signal::TERM);
    let exited = tokio::task::spawn_blocking(move || child.wait_for_exit(GUARD));
    let status = exited
        .await
        .expect("join")
        .expect("the emulator did not stop on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(host_processes("sleep 6151"), 0);
    assert_eq!(
        std::fs::read_dir(work_root.path()).expect("dir").count(),
        0,
        "sandbox directories were left behind"
    );
}

#[tokio::test]
async fn sandboxes_die_with_a_sigkilled_emulator() {
    let work_root = tempfile::tempdir().expect("work root");
    let (mut child, base) = spawn_binary(work_root.path()).await;
    let emu = Emu {
        base,
        http: reqwest::Client::new(),
    };
    let sbx = emu.create(json!({})).await;
    let _stream = start_sleeper(&emu, &sbx, "6152").await;
    eventually("the sleeper never started", || {
        host_processes("sleep 6152") == 1
    })
    .await;
    child.signal(Signal::KILL);
    child.wait_for_exit(GUARD).expect("reap");
    eventually("a sandbox process outlived its emulator", || {
        host_processes("sleep 6152") == 0
    })
    .await;
}

/// Started without `--api-key`, the emulator makes up a key, prints it, and
/// accepts that key only: a made-up `e2b_` key (a sandbox guessing one, say)
/// is a 401.
#[tokio::test]
async fn without_a_key_the_emulator_accepts_only_the_one_it_printed() {
    let mut command = std::process::Command::new(emulator::binary());
    command
        .args(["--port", "0", "--runner-dir"])
        .arg(common::runner::runner_dir());
    let mut key = None;
    let (_process, (url, key)) = Process::start(
        "e2b-emulator",
        command,
        Duration::from_secs(30),
        move |line: &str| {
            if let Some(printed) = line.strip_prefix("api key: ") {
                key = Some(printed.trim().to_owned());
            }
            let url = common::process::listening_on(line)?;
            Some((
                url,
                key.clone().expect("the key is printed before the address"),
            ))
        },
    )
    .await;
    assert!(key.starts_with("e2b_") && key.len() > 20, "{key}");
    let client = reqwest::Client::new();
    let list = |key: String| {
        let request = client
            .get(format!("{url}/sandboxes"))
            .header("X-API-Key", key);
        async move { request.send().await.expect("list").status().as_u16() }
    };
    assert_eq!(list(KEY.to_owned()).await, 401, "a made-up key worked");
    assert_eq!(list(format!("{key}x")).await, 401);
    assert_eq!(list(key).await, 200);
}

/// A create POST of `body` to `path` with `headers`: its status and body.
async fn create_answer(
    emu: &Emu,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Value) {
    let mut request = emu.control(reqwest::Method::POST, path).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let res = request.send().await.expect("create");
    let status = res.status().as_u16();
    (status, res.json().await.expect("a JSON answer"))
}

/// E2B refuses a timeout above the plan's limit (one hour by default) with
/// its own 400 and message, and a zero one; `--max-timeout` moves the limit.
#[tokio::test]
async fn create_refuses_timeouts_above_the_plan_limit_as_e2b_does() {
    let emu = Emu::start().await;
    for path in ["/sandboxes", "/v2/sandboxes"] {
        let (status, body) = create_answer(&emu, path, &[], &json!({"timeout": 3660})).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["message"], "Timeout cannot be greater than 1 hours");
        let (status, body) = create_answer(&emu, path, &[], &json!({"timeout": 0})).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["message"], "Timeout must be greater than 0");
    }
    assert_eq!(emu.stats().await["created"], 0);
    let sbx = emu.create(json!({"timeout": 3600})).await;
    emu.kill(&sbx).await;

    let mut options = emulator::options();
    options.max_timeout_secs = 7200;
    let two_hours = Emu {
        base: emulator::start_with(options).await.url,
        http: reqwest::Client::new(),
    };
    let (status, body) =
        create_answer(&two_hours, "/sandboxes", &[], &json!({"timeout": 7201})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["message"], "Timeout cannot be greater than 2 hours");
    let sbx = two_hours.create(json!({"timeout": 7200})).await;
    two_hours.kill(&sbx).await;
}

/// An unknown template is E2B's 404; a registered one boots. `--lenient`
/// lets both through.
#[tokio::test]
async fn create_refuses_unknown_templates_unless_registered_or_lenient() {
    let emu = Emu::start().await;
    let (status, body) =
        create_answer(&emu, "/v2/sandboxes", &[], &json!({"templateID": "nope"})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["message"], "template 'nope' not found");
    for known in ["base", "sandstorm", "sandstorm-test"] {
        let sbx = emu.create(json!({"templateID": known})).await;
        emu.kill(&sbx).await;
    }

    let mut options = emulator::options();
    options.templates.insert("nope".into());
    let registered = Emu {
        base: emulator::start_with(options).await.url,
        http: reqwest::Client::new(),
    };
    let sbx = registered.create(json!({"templateID": "nope"})).await;
    registered.kill(&sbx).await;

    let mut options = emulator::options();
    options.lenient = true;
    let lenient = Emu {
        base: emulator::start_with(options).await.url,
        http: reqwest::Client::new(),
    };
    let sbx = lenient
        .create(json!({"templateID": "anything", "timeout": 86_400}))
        .await;
    lenient.kill(&sbx).await;
}

/// E2B hands out an envd access token only to a secure sandbox: on v1 when
/// create asks for `secure`, on v2 always (the SDKs no longer send the
/// flag there). Without one, envd takes calls with no token.
#[tokio::test]
async fn the_access_token_is_issued_only_for_secure_sandboxes() {
    let emu = Emu::start().await;
    let (status, body) = create_answer(&emu, "/sandboxes", &[], &json!({})).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.get("envdAccessToken").is_none_or(Value::is_null),
        "{body}"
    );
    let open = Sbx::created(&body);
    let s = emu.start_process(&open, &sh("echo open"), &[]).await;
    assert_eq!(s.output("stdout"), b"open\n");
    emu.kill(&open).await;

    let (status, body) = create_answer(&emu, "/sandboxes", &[], &json!({"secure": true})).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["envdAccessToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    let id = body["sandboxID"].as_str().expect("id").to_owned();
    let res = emu
        .http
        .get(format!("{}/files?path=/home/user/x", emu.base))
        .header("E2b-Sandbox-Id", &id)
        .header("E2b-Sandbox-Port", "49983")
        .send()
        .await
        .expect("read");
    assert_eq!(
        res.status(),
        401,
        "a secure sandbox took a call without its token"
    );
    emu.kill(&Sbx {
        id,
        token: String::new(),
    })
    .await;

    let (status, body) = create_answer(&emu, "/v2/sandboxes", &[], &json!({})).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["envdAccessToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "a v2 sandbox came without a token: {body}"
    );
    emu.kill(&Sbx::created(&body)).await;
}

/// `Idempotency-Key` on `POST /v2/sandboxes`: the same key and body give the
/// same sandbox, a different body is 422, and a bad key is a 400.
#[tokio::test]
async fn v2_create_honours_idempotency_keys() {
    let emu = Emu::start().await;
    let body = json!({"templateID": "base", "secure": true, "metadata": {"run": "1"}});
    let key = [("Idempotency-Key", "run-1")];
    let (status, first) = create_answer(&emu, "/v2/sandboxes", &key, &body).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = create_answer(&emu, "/v2/sandboxes", &key, &body).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(
        again["sandboxID"], first["sandboxID"],
        "a retried create made a second sandbox"
    );
    assert_eq!(emu.stats().await["created"], 1);

    let other = json!({"templateID": "base", "secure": true, "metadata": {"run": "2"}});
    let (status, answer) = create_answer(&emu, "/v2/sandboxes", &key, &other).await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) =
        create_answer(&emu, "/v2/sandboxes", &[("Idempotency-Key", "")], &body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("Idempotency-Key"))
    );

    let (_, fresh) = create_answer(&emu, "/v2/sandboxes", &[], &body).await;
    assert_ne!(
        fresh["sandboxID"], first["sandboxID"],
        "no key, a new sandbox"
    );
    for id in [&first["sandboxID"], &fresh["sandboxID"]] {
        emu.kill(&Sbx {
            id: id.as_str().expect("id").to_owned(),
            token: String::new(),
        })
        .await;
    }
}

/// The `envdVersion` create reports is the emulator's setting.
#[tokio::test]
async fn envd_version_is_configurable() {
    let emu = Emu::start().await;
    let (_, body) = create_answer(&emu, "/sandboxes", &[], &json!({})).await;
    assert_eq!(body["envdVersion"], "0.5.7");
    emu.kill(&Sbx::created(&body)).await;

    let mut options = emulator::options();
    options.envd_version = "0.4.2".into();
    let old = Emu {
        base: emulator::start_with(options).await.url,
        http: reqwest::Client::new(),
    };
    let (_, body) = create_answer(&old, "/sandboxes", &[], &json!({})).await;
    assert_eq!(body["envdVersion"], "0.4.2");
    old.kill(&Sbx::created(&body)).await;
}

/// E2B's proxy routes by `E2b-Sandbox-Id` and `E2b-Sandbox-Port` together:
/// one without the other is its plain-text 400, as is a port that is not a
/// number.
#[tokio::test]
async fn envd_calls_need_the_sandbox_port_header_as_e2b_s_proxy_does() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let read = |port: Option<&'static str>| {
        let mut request = emu
            .http
            .get(format!("{}/files?path=/home/user/x", emu.base))
            .header("E2b-Sandbox-Id", &sbx.id)
            .header("X-Access-Token", &sbx.token);
        if let Some(port) = port {
            request = request.header("E2b-Sandbox-Port", port);
        }
        async move {
            let res = request.send().await.expect("read");
            (res.status().as_u16(), res.text().await.expect("body"))
        }
    };
    assert_eq!(read(None).await, (400, "missing header\n".to_owned()));
    assert_eq!(
        read(Some("envd")).await,
        (400, "Invalid sandbox port\n".to_owned())
    );
    assert_eq!(
        read(Some("49983")).await.0,
        404,
        "with both headers the call reaches envd"
    );
    emu.kill(&sbx).await;
}

/// `Start` is a Connect stream: another content type is connect-go's 415
/// with `Accept-Post`, and a protocol version other than 1 is
/// `invalid_argument`.
#[tokio::test]
async fn start_checks_content_type_and_protocol_version_as_connect_go_does() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let message = json!({"process": {"cmd": "/bin/true"}, "stdin": false});
    let res = emu
        .envd(reqwest::Method::POST, "/process.Process/Start", &sbx)
        .header("Content-Type", "application/json")
        .body(encode(0, message.to_string().as_bytes()))
        .send()
        .await
        .expect("start");
    assert_eq!(res.status(), 415);
    assert_eq!(res.headers()["accept-post"], "application/connect+json");

    let s = emu
        .start_message(&sbx, &message, &[("Connect-Protocol-Version", "2")])
        .await;
    let error = s.end_of_stream.clone().expect("an end of stream");
    assert_eq!(error["error"]["code"], "invalid_argument", "{error}");
    assert!(s.events("start").is_empty(), "the process started anyway");
    emu.kill(&sbx).await;
}

/// A `cwd` that does not exist is envd's `invalid_argument`, before
/// anything runs; a relative one is under the user's home.
#[tokio::test]
async fn a_missing_cwd_is_invalid_argument_as_envd_says() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let message = json!({
        "process": {"cmd": "/bin/pwd", "cwd": "/home/user/nowhere"},
        "stdin": false,
    });
    let s = emu.start_message(&sbx, &message, &[]).await;
    let end = s.end_of_stream.expect("an end of stream");
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    assert_eq!(
        end["error"]["message"],
        "cwd '/home/user/nowhere' does not exist"
    );

    emu.start_process(&sbx, &sh("mkdir -p /home/user/here"), &[])
        .await;
    let message = json!({"process": {"cmd": "/bin/pwd", "cwd": "here"}, "stdin": false});
    let s = emu.start_message(&sbx, &message, &[]).await;
    assert_eq!(s.output("stdout"), b"/home/user/here\n");
    emu.kill(&sbx).await;
}

/// A process's environment is envd's: its PATH (behind the folder of the
/// sandbox's execute-only `node`), the user's HOME, USER and LOGNAME, then
/// create's `envVars`, then the request's `envs`.
#[tokio::test]
async fn the_process_environment_is_envd_s() {
    let emu = Emu::start().await;
    let sbx = emu
        .create(json!({"envVars": {"FROM_CREATE": "c", "BOTH": "create", "USER": "override"}}))
        .await;
    let message = json!({
        "process": {
            "cmd": "/bin/sh",
            "args": ["-c", "echo $PATH; echo $HOME $USER $LOGNAME; echo $FROM_CREATE $BOTH"],
            "envs": {"BOTH": "request"},
        },
        "stdin": false,
    });
    let s = emu.start_message(&sbx, &message, &[]).await;
    assert_eq!(
        String::from_utf8_lossy(&s.output("stdout")),
        "/opt/sandstorm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         /home/user override user\n\
         c request\n"
    );
    emu.kill(&sbx).await;
}

/// Uploads as envd takes them: octet-stream needs `path`, other content
/// types are refused, and several parts under one `path` query are refused
/// with envd's message after the first was written.
#[tokio::test]
async fn uploads_follow_envd_s_content_type_and_path_rules() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let res = emu
        .envd(reqwest::Method::POST, "/files?path=/home/user/a", &sbx)
        .header("Content-Type", "text/plain")
        .body("a")
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        body["message"],
        "unsupported content type: text/plain, expected multipart/form-data or application/octet-stream"
    );

    let res = emu
        .envd(reqwest::Method::POST, "/files", &sbx)
        .header("Content-Type", "application/octet-stream")
        .body("a")
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        body["message"],
        "path query parameter is required for raw body upload"
    );

    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(&b"first"[..]).file_name("one"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(&b"second"[..]).file_name("two"),
        );
    let res = emu
        .envd(reqwest::Method::POST, "/files?path=/home/user/same", &sbx)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        body["message"],
        "you cannot upload multiple files to the same path '/home/user/same' in one upload request, only the first specified file was uploaded"
    );
    let res = emu
        .envd(reqwest::Method::GET, "/files?path=/home/user/same", &sbx)
        .send()
        .await
        .expect("read");
    assert_eq!(res.bytes().await.expect("body"), &b"first"[..]);
    emu.kill(&sbx).await;
}

/// Pause and the deprecated resume as E2B's API answers them: 404 for no
/// such sandbox, 409 for a second pause or for resuming a running one, 201
/// with the sandbox on resume; and while paused, envd is out of reach (E2B's
/// proxy does not find the sandbox) and v1's list of running sandboxes
/// leaves it out. (The official SDK's pause, list and connect are in
/// tests/python/test_e2b_sdk.py.)
#[tokio::test]
async fn pause_and_resume_answer_as_e2b_does() {
    let emu = Emu::start().await;
    let status = |res: reqwest::Response| res.status().as_u16();
    let emu = &emu;
    let post = |path: String| async move {
        emu.control(reqwest::Method::POST, &path)
            .send()
            .await
            .expect("request")
    };
    assert_eq!(status(post("/sandboxes/nosuch/pause".into()).await), 404);

    let sbx = emu.create(json!({"metadata": {"case": "pause"}})).await;
    let resume_path = format!("/sandboxes/{}/resume", sbx.id);
    let pause_path = format!("/sandboxes/{}/pause", sbx.id);
    assert_eq!(status(post(resume_path.clone()).await), 409, "it runs");
    assert_eq!(status(post(pause_path.clone()).await), 204);
    let again = post(pause_path.clone()).await;
    assert_eq!(again.status(), 409);
    assert!(
        again
            .text()
            .await
            .expect("body")
            .contains("is already paused"),
        "E2B's words"
    );

    let health = emu
        .envd(reqwest::Method::GET, "/health", &sbx)
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 502, "envd is out of reach while paused");
    let running: Vec<Value> = emu
        .control(reqwest::Method::GET, "/sandboxes")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(
        running.iter().all(|s| s["sandboxID"] != sbx.id.as_str()),
        "v1 lists running sandboxes only: {running:?}"
    );

    let resumed = post(resume_path).await;
    assert_eq!(resumed.status(), 201);
    let body: Value = resumed.json().await.expect("json");
    assert_eq!(body["sandboxID"], sbx.id.as_str());
    let health = emu
        .envd(reqwest::Method::GET, "/health", &sbx)
        .send()
        .await
        .expect("health");
    assert!(health.status().is_success(), "envd answers again");
    assert_eq!(emu.kill(&sbx).await, 204);
}

/// envd's `Process/Connect`: a client attaches to a process whose `Start`
/// client has gone, by pid or by tag, alongside another, and each gets the
/// output from then on, the end and its exit code; an unknown process is
/// envd's `not_found`; a client a moment too late still learns the end.
#[tokio::test]
async fn clients_attach_to_a_running_process_as_envd_lets_them() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let message = json!({
        "process": {
            "cmd": "/bin/sh",
            "args": ["-c", "echo first; sleep 1; for i in 1 2 3; do echo tick $i; sleep 0.2; done"],
            "cwd": "/home/user",
        },
        "stdin": false,
        "tag": "ticker",
    });
    // The Start client reads the first frames, then goes away.
    let started = emu
        .envd(reqwest::Method::POST, "/process.Process/Start", &sbx)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(encode(0, message.to_string().as_bytes()))
        .send()
        .await
        .expect("start");
    let mut body = started.bytes_stream();
    let mut decoder = FrameDecoder::new();
    // Until `first` has come: what follows is what attached clients get.
    let (mut pid, mut seen_first) = (None, false);
    while !seen_first {
        let chunk = body.next().await.expect("a frame").expect("bytes");
        decoder.push(&chunk);
        while let Some(frame) = decoder.next_frame().expect("valid frame") {
            let v: Value = serde_json::from_slice(&frame.payload).expect("json");
            pid = pid.or(v["event"]["start"]["pid"].as_u64());
            seen_first |= v["event"]["data"]["stdout"].is_string();
        }
    }
    let pid = pid.expect("the start frame");
    drop(body);

    let (pid_selector, tag_selector) = (json!({ "pid": pid }), json!({ "tag": "ticker" }));
    let (by_pid, by_tag) = tokio::join!(
        emu.attach(&sbx, &pid_selector),
        emu.attach(&sbx, &tag_selector),
    );
    for attached in [&by_pid, &by_tag] {
        assert_eq!(attached.events("start")[0]["pid"], pid);
        let out = String::from_utf8(attached.output("stdout")).expect("utf-8");
        assert!(out.ends_with("tick 1\ntick 2\ntick 3\n"), "{out:?}");
        assert!(
            !out.contains("first"),
            "nothing from before attaching: {out:?}"
        );
        assert_eq!(attached.events("end")[0]["status"], "exit status 0");
        assert_eq!(attached.end_of_stream, Some(json!({})));
    }

    let late = emu.attach(&sbx, &json!({ "pid": pid })).await;
    assert_eq!(
        late.events("end")[0]["status"],
        "exit status 0",
        "the end is kept"
    );

    let unknown = emu.attach(&sbx, &json!({ "pid": 999_999 })).await;
    let error = &unknown.end_of_stream.as_ref().expect("an error")["error"];
    assert_eq!(error["code"], "not_found");
    assert_eq!(error["message"], "process with pid 999999 not found");
    emu.kill(&sbx).await;
}

/// `Connect-Timeout-Ms` bounds a Connect call as it bounds a Start: the
/// attached stream ends with `deadline_exceeded`, and the process, which
/// the call only watched, goes on.
#[tokio::test]
async fn a_connect_deadline_ends_the_stream_not_the_process() {
    let emu = Emu::start().await;
    let sbx = emu.create(json!({})).await;
    let message = json!({
        "process": {"cmd": "/bin/sh", "args": ["-c", "sleep 30"], "cwd": "/home/user"},
        "stdin": false,
        "tag": "sleeper",
    });
    let started = emu
        .envd(reqwest::Method::POST, "/process.Process/Start", &sbx)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(encode(0, message.to_string().as_bytes()))
        .send()
        .await
        .expect("start");
    assert_eq!(started.status(), 200);
    let selector = json!({"process": {"tag": "sleeper"}});
    let attached = emu
        .stream_call(
            "/process.Process/Connect",
            &sbx,
            &selector,
            &[("Connect-Timeout-Ms", "300")],
        )
        .await;
    assert_eq!(
        attached
            .end_of_stream
            .as_ref()
            .and_then(|e| e["error"]["code"].as_str()),
        Some("deadline_exceeded")
    );
    let listed: Value = emu
        .envd(reqwest::Method::POST, "/process.Process/List", &sbx)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["processes"][0]["tag"], "sleeper",
        "the process goes on: {listed}"
    );

    // SendSignal selects by tag too, as envd's does.
    let signal = |tag: &str| {
        emu.envd(reqwest::Method::POST, "/process.Process/SendSignal", &sbx)
            .header("Content-Type", "application/json")
            .body(json!({"process": {"tag": tag}, "signal": "SIGNAL_SIGKILL"}).to_string())
            .send()
    };
    assert_eq!(signal("sleeper").await.expect("signal").status(), 200);
    let unknown = signal("nobody").await.expect("signal");
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["message"], "process with tag nobody not found");
    drop(started);
    emu.kill(&sbx).await;
}

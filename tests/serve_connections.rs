//! `ds serve` under clients that hold connections: a slow request head is
//! cut at the header timeout, an idle keep-alive connection at the idle
//! timeout but never an event stream in progress, and past the connection
//! cap new connections are answered with a 503 at once while `/health`
//! keeps answering. Real processes on loopback, raw sockets, every wait
//! bounded.

mod common;

use std::time::{Duration, Instant};

use common::emulator::{self, Knobs, Synthetic};
use common::serve::{DS, DsServe, Server};
use common::stream::read_stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The connections `ds serve` lets in past its cap for `GET /health`
/// (`HEALTH_SLOTS` in src/cli/serve/accept.rs).
const HEALTH_SLOTS: usize = 8;

/// The longest any one read here waits.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// `ds serve --sandbox e2b` with these settings; no query reaches E2B.
async fn serve_with(vars: &[(&str, &str)]) -> Server {
    DsServe::new(["serve", "--sandbox", "e2b"])
        .envs(vars.iter().copied())
        .start()
        .await
}

async fn connect(server: &Server) -> TcpStream {
    let address = server.url.trim_start_matches("http://");
    TcpStream::connect(address).await.expect("connect")
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: sandstorm\r\n\r\n")
}

/// One response on a connection that stays open: its head and its body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut bytes = Vec::new();
    let read = async {
        loop {
            if let Some(end) = find(&bytes, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("a content-length");
                if bytes.len() >= end + 4 + length {
                    let body =
                        String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
                    return (head, body);
                }
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(
                n > 0,
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(READ_LIMIT, read)
        .await
        .expect("a response within the read limit")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How long until the server closes `stream` (end of file or reset),
/// reading and discarding whatever comes first; `None` if it is still open
/// after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let wait = async {
        let mut chunk = [0; 4096];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .ok()
        .map(|()| start.elapsed())
}

#[tokio::test]
async fn a_slow_request_head_is_cut_at_the_header_timeout_but_keep_alive_is_not() {
    let server = serve_with(&[
        ("SANDSTORM_HEADER_TIMEOUT", "1"),
        ("SANDSTORM_IDLE_TIMEOUT", "60"),
    ])
    .await;

    // Half a head, then nothing.
    let mut half = connect(&server).await;
    half.write_all(b"GET /health HTTP/1.1\r\nHost: sand")
        .await
        .expect("write");
    // A connection that sends nothing at all holds a slot as well.
    let mut silent = connect(&server).await;
    for (name, stream) in [("half a head", &mut half), ("nothing", &mut silent)] {
        let closed = closed_within(stream, READ_LIMIT)
            .await
            .unwrap_or_else(|| panic!("{name}: still open after {READ_LIMIT:?}"));
        assert!(
            closed < Duration::from_secs(4),
            "{name}: closed only after {closed:?} (header timeout 1 s)"
        );
    }

    // hyper's own header timeout would also cut this one between requests;
    // ours leaves a keep-alive connection to the idle timeout.
    let mut kept = connect(&server).await;
    kept.write_all(get("/health").as_bytes())
        .await
        .expect("write");
    let (head, _) = read_response(&mut kept).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    kept.write_all(get("/health").as_bytes())
        .await
        .expect("write");
    let (head, _) = read_response(&mut kept).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "a keep-alive connection idle past the header timeout still works: {head}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_quiet_event_stream_is_not() {
    // Every E2B call takes 1.2 s: the stream is silent for 2.4 s between
    // its head and its first event (create, then the upload and the start
    // at once), more than twice the idle timeout.
    let e2b = emulator::start(Knobs {
        latency_ms: 1200,
        synthetic: Some(Synthetic {
            lines: 5,
            bytes: 200,
        }),
        ..Knobs::default()
    })
    .await;
    let server = DsServe::e2b(&e2b)
        .env("SANDSTORM_IDLE_TIMEOUT", "1")
        .env("SANDSTORM_HEADER_TIMEOUT", "1")
        .start()
        .await;

    let mut idle = connect(&server).await;
    idle.write_all(get("/health").as_bytes())
        .await
        .expect("write");
    let (head, _) = read_response(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let closed = closed_within(&mut idle, READ_LIMIT)
        .await
        .expect("an idle connection is closed");
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(4)).contains(&closed),
        "closed {closed:?} after its last response (idle timeout 1 s)"
    );

    let stream = read_stream(
        reqwest::Client::new()
            .post(format!("{}/query", server.url))
            .json(&serde_json::json!({"prompt": "take your time"})),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.events.len(), 5, "every event: {stream:?}");
    assert_eq!(stream.last()["type"], "result");
    let first = stream.first_event.expect("a first event");
    assert!(
        first > Duration::from_secs(2),
        "the stream was quiet for {first:?} before its first event"
    );
    let closing = stream.closing.expect("the closing event");
    assert_eq!(closing["type"], "done", "{closing}");
    e2b.settled(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn past_the_cap_connections_get_a_fast_503_and_health_still_answers() {
    let server = serve_with(&[
        ("SANDSTORM_MAX_CONNECTIONS", "8"),
        ("SANDSTORM_HEADER_TIMEOUT", "60"),
        ("SANDSTORM_IDLE_TIMEOUT", "60"),
    ])
    .await;

    // Eight keep-alive connections, each served once and then left idle.
    let mut full = Vec::new();
    for _ in 0..8 {
        let mut stream = connect(&server).await;
        stream
            .write_all(get("/health").as_bytes())
            .await
            .expect("write");
        let (head, _) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        full.push(stream);
    }

    // At the cap, a health check is still answered, once.
    let mut health = connect(&server).await;
    health
        .write_all(get("/health").as_bytes())
        .await
        .expect("write");
    let (head, body) = read_response(&mut health).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("\"ok\""), "{body}");
    assert!(
        closed_within(&mut health, READ_LIMIT).await.is_some(),
        "a health-check slot serves one request"
    );
    // Anything else on such a slot is a 503 that says why.
    let mut other = connect(&server).await;
    other
        .write_all(get("/openapi.json").as_bytes())
        .await
        .expect("write");
    let (head, body) = read_response(&mut other).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["error"]["type"], "overloaded", "{body}");
    assert!(closed_within(&mut other, READ_LIMIT).await.is_some());
    // The closed slots are handed back as their tasks end.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Silent clients fill the health-check slots; the ones after them get
    // the canned 503 and are closed before they send a byte.
    let mut probes = Vec::new();
    for _ in 0..HEALTH_SLOTS + 4 {
        probes.push(connect(&server).await);
    }
    // Read all at once, for less than the 2 s a silent client may hold a
    // health-check slot.
    let answers = futures::future::join_all(probes.iter_mut().map(|probe| async move {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), probe.read_to_end(&mut answer));
        read.await
            .ok()
            .map(|_| String::from_utf8_lossy(&answer).into_owned())
    }))
    .await;
    let mut refused = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        if let Some(answer) = answer {
            assert!(answer.starts_with("HTTP/1.1 503"), "probe {i}: {answer}");
            assert!(answer.contains("\"overloaded\""), "probe {i}: {answer}");
            refused.push(i);
        }
    }
    assert_eq!(
        refused,
        (HEALTH_SLOTS..HEALTH_SLOTS + 4).collect::<Vec<_>>(),
        "the first {HEALTH_SLOTS} wait in health-check slots, the rest are refused at once"
    );

    // One idle client leaves: its slot serves the next connection in full.
    drop(full.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = connect(&server).await;
        stream
            .write_all(get("/openapi.json").as_bytes())
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(READ_LIMIT, stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused 5 s after a slot freed: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(probes);
}

#[tokio::test]
async fn a_flood_of_idle_connections_never_runs_the_server_out_of_descriptors() {
    // `ds serve` under a limit of 128 open files: it fits its cap to them
    // (14 connections), where uncapped it would hit EMFILE after about 120.
    let limited = "ulimit -n 128 && exec \"$0\" \"$@\"";
    let server = DsServe::with_binary(
        std::path::Path::new("/bin/sh"),
        ["-c", limited, DS, "serve", "--sandbox", "e2b"],
    )
    .env("SANDSTORM_HEADER_TIMEOUT", "60")
    .start()
    .await;
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(connect(&server).await);
    }

    // The flood holds every full slot for a minute, but the health-check
    // slots let a silent client go after 2 s: a health check gets in then.
    let started = Instant::now();
    let answered = loop {
        let mut stream = connect(&server).await;
        stream
            .write_all(get("/health").as_bytes())
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(READ_LIMIT, stream.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no health answer 10 s into the flood: {}",
            String::from_utf8_lossy(&answer)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("/health answered {answered:?} into a flood of 400 idle connections");
    let log = server.log();
    assert!(
        !log.contains("Too many open files") && !log.contains("accepting a connection failed"),
        "{log}"
    );
    assert!(log.contains("connection limit reached"), "{log}");
    drop(flood);
}

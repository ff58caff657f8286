//! Load: 500 concurrent queries to a real `ds serve` process against the
//! E2B emulator's synthetic runner (issue 6, item 7).
//!
//! Every stream must arrive complete and in order, every sandbox must be
//! destroyed, and the whole run must end within a fixed bound. The figures
//! (latencies; the server's RSS idle, at its peak, and for 5 s after the
//! load has gone) are printed, and written to
//! the file `SANDSTORM_LOAD_FIGURES` names when it is set: `bench/run`
//! picks them up there for BENCHMARKS.md.
//!
//! It is a step of its own, not part of a plain `cargo test`: `.ci/run`
//! runs it with `cargo test --all-features --test load -- --ignored`, and
//! `bench/run` runs its release build (`--features sandstorm/lambda`) with
//! `--ignored`.
//!
//! The server is the `ds` binary cargo built with this test. `bench/run`
//! sets `SANDSTORM_LOAD_DS` to the release binary so the published figures
//! are those of what ships.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::emulator::{self, RunningEmulator, synthetic};
use common::serve::{DS, DsServe, Server};
use common::sse;
use futures::StreamExt;
use tokio::sync::Barrier;

/// Concurrent queries.
const STREAMS: usize = 500;
/// Lines the synthetic runner prints per query, and their size.
const LINES: u64 = 100;
const LINE_BYTES: usize = 300;
/// The whole load phase must end within this (it takes a few seconds on a
/// 2-core machine); past it the test fails instead of hanging CI.
const TIME_LIMIT: Duration = Duration::from_secs(90);
/// After the load, the server's RSS is sampled this often, this many
/// times: an allocator that returns memory does it within a few seconds.
const AFTER_LOAD_SAMPLE: Duration = Duration::from_millis(500);
const AFTER_LOAD_SAMPLES: usize = 10;
/// File descriptors each query may hold across this process and the
/// server: client socket, server side, envd stream, pooled REST sockets.
const FDS_PER_STREAM: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a step of its own in .ci/run and bench/run: cargo test --test load -- --ignored"]
async fn five_hundred_concurrent_queries_stream_completely_and_leak_no_sandbox() {
    raise_fd_limit(STREAMS as u64 * FDS_PER_STREAM + 256);
    let emulator = emulator::start(synthetic(LINES, LINE_BYTES)).await;
    let (binary, server) = start_ds_serve(&emulator).await;
    let pid = server.process.pid();
    let idle_rss_kib = proc_status_kib(pid, "VmRSS");

    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let outcome = tokio::time::timeout(TIME_LIMIT, run_load(&server.url)).await;
    let wall = started.elapsed();
    let server_cpu = cpu_time(pid).saturating_sub(cpu_before);
    let results = outcome.unwrap_or_else(|_| {
        panic!(
            "{STREAMS} queries did not finish within {TIME_LIMIT:?}; emulator: {:?}",
            emulator.stats()
        )
    });

    let mut failures: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("query {i}: {e}")))
        .collect();
    failures.truncate(5);
    assert!(failures.is_empty(), "broken streams: {failures:#?}");
    let done: Vec<&Stream> = results.iter().filter_map(|r| r.as_ref().ok()).collect();

    // A run destroys its sandbox before it ends its stream, so by now every
    // kill has been answered; the short wait only absorbs scheduling.
    let stats = emulator.settled(Duration::from_secs(5)).await;
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (STREAMS as u64, STREAMS as u64, 0),
        "created, killed, alive: {stats:?}"
    );
    for route in ["create", "upload", "kill"] {
        assert_eq!(
            stats.requests.get(route).copied().unwrap_or(0),
            STREAMS as u64,
            "{route} calls in {:?}",
            stats.requests
        );
    }
    // The runner's start, and the template's model proxy's beside it. The
    // synthetic runner ends at once, and a proxy start still on its way
    // when its runner has ended (and for a while after, under this load)
    // is dropped: nothing could have called the model through it.
    let starts = stats.requests.get("start").copied().unwrap_or(0);
    assert!(
        (STREAMS as u64..=2 * STREAMS as u64).contains(&starts),
        "start calls in {:?}",
        stats.requests
    );

    let peak_rss_kib = proc_status_kib(pid, "VmHWM");
    // Every client is gone and every sandbox killed: what the server keeps
    // now is what it failed to give back.
    let after_load_rss_kib = rss_after_load(pid).await;
    // Idle pooled connections to E2B, kept for reuse, are live memory.
    let after_load_open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or_default();
    let first: Vec<Duration> = done.iter().map(|s| s.first_event).collect();
    let complete: Vec<Duration> = done.iter().map(|s| s.complete).collect();
    let figures = serde_json::json!({
        "streams": STREAMS,
        "lines_per_stream": LINES,
        "line_bytes": LINE_BYTES,
        "events": done.iter().map(|s| s.events).sum::<u64>(),
        "wall_ms": millis(wall),
        "server_cpu_ms": millis(server_cpu),
        "first_event_ms": percentiles(first),
        "complete_ms": percentiles(complete),
        "idle_rss_kib": idle_rss_kib,
        "peak_rss_kib": peak_rss_kib,
        "after_load_rss_kib": after_load_rss_kib.last().copied().unwrap_or_default(),
        "after_load_rss_series_kib": after_load_rss_kib,
        "after_load_sample_ms": millis(AFTER_LOAD_SAMPLE),
        "after_load_open_fds": after_load_open_fds,
        "created": stats.created,
        "killed": stats.killed,
        "alive": stats.alive,
        "server": binary.display().to_string(),
    });
    let text = serde_json::to_string_pretty(&figures).expect("figures are JSON");
    eprintln!("load figures:\n{text}");
    if let Some(path) = std::env::var_os("SANDSTORM_LOAD_FIGURES") {
        let path = PathBuf::from(path);
        std::fs::write(&path, format!("{text}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// What one query's stream looked like, from the client's side.
struct Stream {
    events: u64,
    first_event: Duration,
    complete: Duration,
}

/// Sends every query at once. Each stream waits after its first event until
/// all have one, so the server really holds `STREAMS` open streams at the
/// same moment, then reads to the end.
async fn run_load(url: &str) -> Vec<Result<Stream, String>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let all_open = Arc::new(Barrier::new(STREAMS));
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let request = client
                .post(format!("{url}/query"))
                .json(&serde_json::json!({"prompt": format!("load {i}")}));
            let all_open = all_open.clone();
            tokio::spawn(async move { one_stream(request, &all_open).await })
        })
        .collect();
    let mut results = Vec::with_capacity(STREAMS);
    for task in tasks {
        results.push(
            task.await
                .unwrap_or_else(|e| Err(format!("task failed: {e}"))),
        );
    }
    results
}

/// One query; waits at `all_open` exactly once, even when it fails early,
/// so one broken stream fails the test instead of stalling the others.
async fn one_stream(
    request: reqwest::RequestBuilder,
    all_open: &Barrier,
) -> Result<Stream, String> {
    let mut waited = false;
    let result = read_stream(request, all_open, &mut waited).await;
    if !waited {
        all_open.wait().await;
    }
    result
}

async fn read_stream(
    request: reqwest::RequestBuilder,
    all_open: &Barrier,
    waited: &mut bool,
) -> Result<Stream, String> {
    let sent = Instant::now();
    let response = request.send().await.map_err(|e| format!("send: {e}"))?;
    if response.status() != 200 {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(format!("status {status}: {body}"));
    }
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    let mut first_event = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("after {} events: {e}", parser.events))?;
        parser.feed(&chunk)?;
        if first_event.is_none() && parser.events > 0 {
            first_event = Some(sent.elapsed());
            *waited = true;
            all_open.wait().await;
        }
    }
    if parser.events != LINES || !parser.saw_result {
        return Err(format!(
            "stream ended after {} of {LINES} events (result seen: {})",
            parser.events, parser.saw_result
        ));
    }
    Ok(Stream {
        events: parser.events,
        first_event: first_event.unwrap_or_default(),
        complete: sent.elapsed(),
    })
}

/// Reads an SSE body with the toolkit's decoder and checks each event is
/// the next runner line.
#[derive(Default)]
struct SseParser {
    decoder: sse::Decoder,
    events: u64,
    saw_result: bool,
    /// The stream's closing status event came (see `sse::split_closing`):
    /// nothing may follow it.
    closed: bool,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        for event in self.decoder.feed(chunk) {
            let event: serde_json::Value = serde_json::from_str(&event.data)
                .map_err(|e| format!("event {} is not JSON: {e}", self.events))?;
            if self.closed {
                return Err(format!("event after the closing one: {event}"));
            }
            if self.saw_result {
                if event["type"] == "done" {
                    self.closed = true;
                    continue;
                }
                return Err(format!("event after the result: {event}"));
            }
            if event["seq"] != self.events {
                return Err(format!("event {} out of order: {event}", self.events));
            }
            self.saw_result = event["type"] == "result";
            self.events += 1;
        }
        Ok(())
    }
}

/// `ds serve --port 0 --sandbox e2b` pointed at the emulator, and which
/// binary it is.
async fn start_ds_serve(e2b: &RunningEmulator) -> (PathBuf, Server) {
    let binary =
        std::env::var_os("SANDSTORM_LOAD_DS").map_or_else(|| PathBuf::from(DS), PathBuf::from);
    // The server runs in a temp folder: a relative path would resolve there.
    let binary = std::path::absolute(&binary)
        .unwrap_or_else(|e| panic!("resolving {}: {e}", binary.display()));
    let server = DsServe::with_binary(&binary, ["serve", "--sandbox", "e2b"])
        .envs(e2b.env())
        .start()
        .await;
    (binary, server)
}

/// Lifts this process's soft limit on open files to what the test needs;
/// `ds serve` inherits it.
fn raise_fd_limit(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|c| c >= needed) {
        return;
    }
    assert!(
        limit.maximum.is_none_or(|m| m >= needed),
        "the load test needs {needed} open files but the hard limit is {:?}; \
         raise it (for example `ulimit -Hn 8192` as root) and run again",
        limit.maximum
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .expect("raising the open-file limit");
}

/// The server's RSS every [`AFTER_LOAD_SAMPLE`], [`AFTER_LOAD_SAMPLES`]
/// times, starting now.
async fn rss_after_load(pid: u32) -> Vec<u64> {
    let mut samples = Vec::with_capacity(AFTER_LOAD_SAMPLES);
    for _ in 0..AFTER_LOAD_SAMPLES {
        tokio::time::sleep(AFTER_LOAD_SAMPLE).await;
        samples.push(proc_status_kib(pid, "VmRSS"));
    }
    samples
}

/// The CPU time process `pid` has used, all its threads (ended ones
/// included), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    // utime and stime, fields 14 and 15, counted after the command name,
    // which is in parentheses and may hold spaces.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Duration::from_millis(ticks * 10)
}

/// A `kB` line of `/proc/PID/status`: `VmRSS` now, `VmHWM` the peak.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percentiles(mut values: Vec<Duration>) -> serde_json::Value {
    values.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "q is in 0..=1, so the rounded index is in 0..len"
    )]
    let at = |q: f64| {
        let i = ((values.len() as f64 - 1.0) * q).round() as usize;
        values.get(i).copied().map(millis)
    };
    serde_json::json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

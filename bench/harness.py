"""Measures this Sandstorm and the Python original (0.4.0 and 0.9.2) side
by side and writes BENCHMARKS.md, and its summary paragraph into README.md
(see bench/run, which builds and installs first).

Every figure is taken from at least `--runs` runs (median, min, max), but
the 1,000-stream memory table (`--memory-runs`, `--theirs-memory-runs`)
and the growth curve (one run per point); every server runs against the
same E2B emulator (synthetic runner), with the same client, in the same
session, their runs interleaved so that drift on the machine hits all
alike. The local sandbox start-up section (issue 9) times
the emulator's own sandboxes instead, now and, with `--before-emulator`,
before issue 9 (see bench/startup.py). The model endpoint section (issue
14) takes the figures of tests/bench_model_endpoint.rs, which bench/run
runs in release.

Raw figures go to bench/results.json, which is kept in git: a run with
`--only` measures those phases and merges them into it, so the other
sections keep their figures (and the date and commit they were measured at).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from lambda_runtime import RuntimeApi, query_event  # noqa: E402
from procs import Emulator, Server, Setup, cpu_seconds, nagle_flag, status_kib, stop  # noqa: E402
from sse import start_detached, stream_get, stream_query  # noqa: E402
import startup  # noqa: E402

HOST = "127.0.0.1"
# The originals, by side: version and virtualenv (under bench/.work), both
# installed by bench/run. Each figure compares ours with the faster of them.
ORIGINALS = {"theirs": ("0.4.0", "venv"), "theirs092": ("0.9.2", "venv-0.9.2")}
# Ours and the originals installed (set in main()).
SIDES: tuple[str, ...] = ("ours", *ORIGINALS)

# Workloads (the synthetic runner's output per query).
SMALL = dict(lines=10, bytes_=500)  # per-query overhead, round trips
# How long the reattach servers keep a finished run's sandbox (seconds).
REATTACH_LINGER = 5
RELAY = dict(lines=100_000, bytes_=500)  # relay throughput
# Concurrency, two workloads: a short agent run's worth of output (the
# growth curve's), and more than all the buffers between runner and client
# hold (a stalled client: the memory table's).
CONCURRENT = {"typical": dict(lines=10, bytes_=500), "stalled": dict(lines=1_000, bytes_=500)}
# The growth curve's steps (concurrent runs), and the originals' last step
# (their 1,000-run step costs about a minute each; --growth-theirs-max).
GROWTH_STEPS = (1, 10, 100, 1000)
# RSS after the load, sampled this long after every sandbox was killed.
AFTER_LOAD_S = (0.5, 2, 5)

# Phases, in the order they run. `size` reads the built binaries, `load`
# and `proxy` take the figures of tests bench/run ran (tests/load.rs,
# tests/bench_model_endpoint.rs); the rest measure.
PHASES = ("cold", "lambda", "overhead", "trips", "relay", "detached", "memory", "growth", "size", "load", "local", "proxy", "otel")
# The phases that need the E2B emulator running.
EMULATOR_PHASES = {"cold", "lambda", "overhead", "trips", "relay", "detached", "memory", "growth", "local", "otel"}
# The phases that run the originals, so need their virtualenvs.
THEIRS_PHASES = {"cold", "overhead", "trips", "relay", "memory", "growth", "size"}
# Local start-up: counted runs per emulator (at least), after uncounted ones.
LOCAL_RUNS = 21
LOCAL_WARMUP = 3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ten_files() -> dict[str, str]:
    """Ten small text files, half of them in a subfolder (the original
    then also runs a `mkdir -p` for the folder)."""
    files = {f"data/part-{i}.csv": "id,value\n" + "".join(f"{j},{j * i}\n" for j in range(50)) for i in range(5)}
    files.update({f"notes-{i}.md": f"# Note {i}\n\n" + "lorem ipsum " * 40 for i in range(5)})
    return files


def query(prompt: str = "benchmark", files: dict | None = None) -> dict:
    body: dict = {"prompt": prompt}
    if files:
        body["files"] = files
    return body


def alternate(i: int, sides: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The sides' order in run `i`: rotating, so none always gets the
    warmer machine."""
    sides = sides or SIDES
    k = i % len(sides)
    return sides[k:] + sides[:k]


# --- cold start -----------------------------------------------------------


def cold_start(setup: Setup, emu: Emulator, runs: int) -> dict:
    """Process start to the first /health 200, and the idle RSS after it."""
    out: dict = {s: {"cold_start_s": [], "idle_rss_kib": []} for s in SIDES}
    for i in range(runs + 1):  # run 0 warms the page cache, not counted
        for side in alternate(i):
            server = setup.start_server(side, emu.url)
            try:
                time.sleep(0.5)  # let start-up allocations settle
                rss = status_kib(server.pid, "VmRSS")
            finally:
                server.stop()
            if i > 0:
                out[side]["cold_start_s"].append(server.cold_start)
                out[side]["idle_rss_kib"].append(rss)
    log("cold start: " + ", ".join(f"{side} {report.med(out[side]['cold_start_s']) * 1e3:.1f} ms" for side in SIDES))
    return out


async def lambda_cold_start(setup: Setup, emu: Emulator, runs: int) -> dict:
    """`bootstrap` under the Runtime API emulator: process start to the
    complete streamed answer of a Function URL `GET /health`. With the
    TCP_NODELAY shim built, the same again with it preloaded (diagnostic)."""
    out = await _lambda_series(setup, emu, runs, {})
    shim = setup.work / "nodelay.so"
    if shim.exists():
        forced = await _lambda_series(setup, emu, runs, {"LD_PRELOAD": str(shim)})
        out["nodelay_s"] = forced["cold_start_s"]
    log(
        f"lambda cold start: median {report.med(out['cold_start_s']) * 1e3:.1f} ms "
        f"(answer's head at {report.med(out['head_s']) * 1e3:.1f} ms)"
    )
    return out


async def _lambda_series(setup: Setup, emu: Emulator, runs: int, extra_env: dict) -> dict:
    times, heads, rss = [], [], []
    for i in range(runs + 1):  # run 0 warms the page cache, not counted
        api = RuntimeApi()
        await api.start()
        env = setup.server_env(emu.url) | extra_env | {
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.port}",
            "AWS_LAMBDA_FUNCTION_NAME": "sandstorm-bench",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_REGION": "us-east-1",
        }
        log_file = open(setup.work / "logs" / "bootstrap.log", "ab")
        spawned = time.perf_counter()
        proc = subprocess.Popen(
            [str(setup.bootstrap)],
            cwd=setup.work / "cwd",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        log_file.close()
        try:
            done, head, status, body = await asyncio.wait_for(api.response, timeout=30)
            if status != 200 or b'"ok"' not in body:
                raise RuntimeError(f"bootstrap answered /health with {status}: {body[:200]!r}")
            await asyncio.sleep(0.5)
            idle = status_kib(proc.pid, "VmRSS")
        finally:
            stop(proc)
            await api.close()
        if i > 0:
            times.append(done - spawned)
            heads.append(head - spawned)
            rss.append(idle)
    return {"cold_start_s": times, "head_s": heads, "idle_rss_kib": rss}


# --- per-query figures ------------------------------------------------------


async def run_query(server: Server, body: dict, expect_lines: int, label: str):
    result = await asyncio.wait_for(stream_query(HOST, server.port, body), timeout=300)
    if result.status != 200 or result.error_events or not result.saw_result:
        raise RuntimeError(
            f"{server.name} {label}: status {result.status}, errors {result.error_events}, "
            f"result seen {result.saw_result}; body starts {result.body_head[:300]!r}"
        )
    # Ours relays each runner line as one event, and ends with `done`; the
    # original relays stdout chunks, splitting a line where a chunk ends, so
    # a few lines arrive cut.
    if server.name == "ours" and (result.lines != expect_lines or result.events != expect_lines + 1):
        raise RuntimeError(f"ours {label}: {result.events} events, {result.lines} lines, expected {expect_lines}")
    return result


async def overhead(servers: dict[str, Server], emus: dict[str, Emulator], runs: int) -> dict:
    """Time to the first agent event and to the end of the stream, at 0 ms
    and 20 ms of added E2B latency. `emus` maps each side to its emulator:
    the side "ours_nagle" is ours against an emulator answering without
    `TCP_NODELAY`, so no figure hangs on a delayed ACK."""
    sides = tuple(servers)
    out: dict = {}
    for latency in (0, 20):
        for emu in set(emus.values()):
            emu.configure(**SMALL, latency_ms=latency)
        figures = {s: {"first_event_s": [], "end_s": []} for s in sides}
        for side in sides:  # warm-up: connection pools, lazy imports
            await run_query(servers[side], query(), SMALL["lines"], "warm-up")
            emus[side].wait_idle()
        for i in range(runs):
            for side in alternate(i, sides):
                r = await run_query(servers[side], query(), SMALL["lines"], f"overhead {latency} ms")
                emus[side].wait_idle()
                figures[side]["first_event_s"].append(r.ttfe)
                figures[side]["end_s"].append(r.total)
        out[str(latency)] = figures
        log(f"overhead at {latency} ms: " + ", ".join(f"{s} {report.med(figures[s]['first_event_s']) * 1e3:.1f} ms" for s in sides))
    for emu in set(emus.values()):
        emu.configure(**SMALL)
    return out


async def round_trips(servers: dict[str, Server], emu: Emulator, runs: int) -> dict:
    """E2B calls per query, by route, from the emulator's counters."""
    emu.configure(**SMALL)
    out: dict = {}
    for n_files, files in ((0, None), (10, ten_files())):
        per_side: dict = {s: [] for s in SIDES}
        for i in range(runs):
            for side in alternate(i):
                emu.wait_idle()
                emu.reset_stats()
                await run_query(servers[side], query(files=files), SMALL["lines"], f"{n_files} files")
                stats = emu.wait_idle()
                per_side[side].append(stats["requests"])
        out[str(n_files)] = per_side
        log(f"E2B calls with {n_files} files: " + ", ".join(f"{side} {per_side[side][-1]}" for side in SIDES))
    return out


async def relay(servers: dict[str, Server], emu: Emulator, runs: int) -> dict:
    """One query whose runner prints 100,000 lines of 500 bytes."""
    emu.configure(**RELAY)
    out: dict = {s: {"relay_s": [], "lines": [], "events": [], "cpu_s": [], "total_s": []} for s in SIDES}
    for i in range(runs):
        for side in alternate(i):
            server = servers[side]
            emu.wait_idle()
            cpu0 = cpu_seconds(server.pid)
            r = await run_query(server, query(), RELAY["lines"], "relay")
            cpu1 = cpu_seconds(server.pid)
            o = out[side]
            o["relay_s"].append(r.end - r.first_event)
            o["total_s"].append(r.total)
            o["lines"].append(r.lines)
            o["events"].append(r.events)
            o["cpu_s"].append(cpu1 - cpu0)
        log(f"relay {i + 1}/{runs}: " + ", ".join(f"{side} {out[side]['relay_s'][-1]:.3f} s" for side in SIDES))
    emu.configure(**SMALL)
    return out


# --- detached runs (issue 14) --------------------------------------------------


def check_stream(r, expect_lines: int, label: str) -> None:
    if r.status != 200 or r.error_events or not r.saw_result or r.lines != expect_lines:
        raise RuntimeError(
            f"{label}: status {r.status}, errors {r.error_events}, result seen {r.saw_result}, "
            f"{r.lines} lines of {expect_lines}; body starts {r.body_head[:300]!r}"
        )


class OtlpSink:
    """An OTLP/HTTP receiver on loopback that takes every export and answers
    200 at once: what the export costs the server, not the backend's own
    time. Counts the requests, to show export happened."""

    def __init__(self) -> None:
        import http.server
        import threading

        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                sink.requests += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.requests = 0
        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


async def otel(setup: Setup, emu: Emulator, runs: int) -> dict:
    """Ours only: the same query on two servers, OpenTelemetry export off
    and on (traces and metrics, http/protobuf, to a loopback sink),
    alternating. Time to the first event and to the stream's end, and the
    server's CPU per query."""
    sink = OtlpSink()
    servers = {
        "off": setup.start_server("ours", emu.url),
        "on": setup.start_server(
            "ours",
            emu.url,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_METRIC_EXPORT_INTERVAL": "1000"},
        ),
    }
    out: dict = {mode: {"first_event_s": [], "end_s": [], "cpu_s": []} for mode in servers}
    try:
        emu.configure(**SMALL)
        for mode in servers:  # warm-up
            await run_query(servers[mode], query(), SMALL["lines"], f"otel {mode} warm-up")
            emu.wait_idle()
        for i in range(runs):
            modes = ("off", "on") if i % 2 == 0 else ("on", "off")
            for mode in modes:
                server = servers[mode]
                emu.wait_idle()
                cpu0 = cpu_seconds(server.pid)
                r = await run_query(server, query(), SMALL["lines"], f"otel {mode}")
                out[mode]["cpu_s"].append(cpu_seconds(server.pid) - cpu0)
                out[mode]["first_event_s"].append(r.ttfe)
                out[mode]["end_s"].append(r.total)
        # The batch goes within its five-second delay: wait for it, to show
        # that the "on" server exported.
        for _ in range(80):
            if sink.requests:
                break
            await asyncio.sleep(0.1)
        out["exports"] = sink.requests
        log(f"otel: end off {report.med(out['off']['end_s'])} on {report.med(out['on']['end_s'])}, {sink.requests} exports")
        if setup.bootstrap is not None:
            out["lambda"] = await _lambda_flush(setup, emu, sink, runs)
    finally:
        for server in servers.values():
            stop(server.proc)
        sink.close()
    return out


async def _lambda_flush(setup: Setup, emu: Emulator, sink: OtlpSink, runs: int) -> dict:
    """The Lambda door's flush: one query invocation per fresh `bootstrap`,
    export off and on, alternating. From the chunk that carried `done` to
    the response's end (what the flush adds to the stream's close), and
    from the process's start to the response's end."""
    out: dict = {mode: {"close_after_done_s": [], "invocation_s": []} for mode in ("off", "on")}
    for i in range(runs + 1):  # run 0 of each warms the page cache, not counted
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            api = RuntimeApi(query_event(query()))
            await api.start()
            env = setup.server_env(emu.url) | {
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.port}",
                "AWS_LAMBDA_FUNCTION_NAME": "sandstorm-bench",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_REGION": "us-east-1",
                # A serverless door asks for a token unless told otherwise.
                "SANDSTORM_ALLOW_ANONYMOUS": "1",
            }
            if mode == "on":
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url
            # Without TCP_NODELAY (see the Lambda cold start) the `done`
            # chunk waits under Nagle and leaves with the body's end, which
            # would hide when the function wrote it.
            if (setup.work / "nodelay.so").exists():
                env["LD_PRELOAD"] = str(setup.work / "nodelay.so")
            emu.wait_idle()
            spawned = time.perf_counter()
            proc = subprocess.Popen(
                [str(setup.bootstrap)],
                cwd=setup.work / "cwd",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                done, _head, status, body = await asyncio.wait_for(api.response, timeout=60)
                if status != 200 or b'"type":"done"' not in body or api.done_at is None:
                    raise RuntimeError(f"bootstrap {mode}: status {status}, body starts {body[:300]!r}")
            finally:
                stop(proc)
                await api.close()
            if i > 0:
                out[mode]["close_after_done_s"].append(done - api.done_at)
                out[mode]["invocation_s"].append(done - spawned)
    log(
        "lambda flush: close after done off "
        f"{report.med(out['off']['close_after_done_s']) * 1e3:.2f} ms, on "
        f"{report.med(out['on']['close_after_done_s']) * 1e3:.2f} ms"
    )
    return out


async def detached(setup: Setup, emu: Emulator, runs: int) -> dict:
    """Ours only (the original streams no detached runs). What the event log
    costs the relay: the same output relayed attached (a process's stdout)
    and detached (written to the log in the sandbox, read back by the
    follower process), alternating on one server. And how long another instance,
    which knows nothing of the run, takes to the first replayed event."""
    # Linger 0: a run read to its end is destroyed at once, as an attached
    # run is, so wait_idle() means the same for both.
    env = {"SANDSTORM_RUN_LINGER": "0"}
    first = setup.start_server("ours", emu.url, env)
    second = setup.start_server("ours", emu.url, env)
    out: dict = {
        mode: {"relay_s": [], "lines": [], "cpu_s": [], "total_s": []} for mode in ("attached", "detached")
    }
    out["reattach"] = {"first_event_s": [], "first_replayed_s": [], "end_s": [], "linger_s": REATTACH_LINGER}
    try:
        # Both through one real process: the attached run's output comes
        # from `cat`'s stdout, as a runner's would; the detached run's
        # from the follower reading the log back.
        emu.configure(**RELAY, process=True)
        for mode in ("attached", "detached"):  # warm-up
            r = await stream_query(HOST, first.port, dict(query(), detach=mode == "detached"))
            check_stream(r, RELAY["lines"], f"{mode} warm-up")
            emu.wait_idle()
        for i in range(runs):
            modes = ("attached", "detached") if i % 2 == 0 else ("detached", "attached")
            for mode in modes:
                emu.wait_idle()
                cpu0 = cpu_seconds(first.pid)
                r = await stream_query(HOST, first.port, dict(query(), detach=mode == "detached"))
                cpu1 = cpu_seconds(first.pid)
                check_stream(r, RELAY["lines"], mode)
                o = out[mode]
                # From the first runner line: a detached stream's `run` event
                # comes before its follower starts.
                o["relay_s"].append(r.end - r.first_line)
                o["total_s"].append(r.total)
                o["lines"].append(r.lines)
                o["cpu_s"].append(cpu1 - cpu0)
            log(
                f"detached {i + 1}/{runs}: attached {out['attached']['relay_s'][-1]:.3f} s, "
                f"detached {out['detached']['relay_s'][-1]:.3f} s"
            )
        emu.configure(**SMALL)
        emu.wait_idle()
        # Reattach reads a run that may already have ended: a 10-line run
        # ends within milliseconds of its `run` event. A finished run's
        # sandbox is kept for SANDSTORM_RUN_LINGER so that every reader can
        # still read its end (60 s by default); with the 0 above, the first
        # server destroyed it while the second was replaying. These two
        # keep it REATTACH_LINGER s, as a deployment keeps it, and the
        # sandboxes are counted gone once, after the last reattach.
        first.stop()
        second.stop()
        linger = {"SANDSTORM_RUN_LINGER": str(REATTACH_LINGER)}
        first = setup.start_server("ours", emu.url, linger)
        second = setup.start_server("ours", emu.url, linger)
        for i in range(max(runs, 9)):
            run_id = await start_detached(HOST, first.port, query())
            r = await stream_get(HOST, second.port, f"/runs/{run_id}/events")
            rr = out["reattach"]
            try:
                check_stream(r, SMALL["lines"], "reattach")
            except RuntimeError as e:
                # Recorded, not fatal: the file says how many failed and
                # why, and the rest of the run keeps its figures.
                rr.setdefault("failed", []).append(str(e)[:600])
                log(f"reattach failed: {e}")
                continue
            rr["first_event_s"].append(r.ttfe)
            rr["first_replayed_s"].append(r.first_line - r.sent)
            rr["end_s"].append(r.total)
        log(f"reattach: first replayed event after {report.med(out['reattach']['first_replayed_s'])} s")
        emu.wait_idle(timeout=REATTACH_LINGER + 60)
    finally:
        first.stop()
        second.stop()
        emu.configure(**SMALL)
    return out


# --- memory under concurrency --------------------------------------------------


async def concurrent_streams(setup: Setup, side: str, streams: int, workload: dict, open_timeout: float) -> dict:
    """A fresh server, `streams` queries at once. Each client stops reading
    after its first event, so when all have one the server holds every
    stream open with its buffers full; then every client disconnects, and
    every sandbox must be destroyed. Peak RSS is the server's VmHWM; RSS is
    sampled again 0.5, 2 and 5 s after the last sandbox was killed."""
    # An emulator of its own: a server that leaks sandboxes here must not
    # fail the runs after it.
    emu = Emulator(setup)
    server = None
    after: dict = {}
    try:
        emu.configure(**workload)
        server = setup.start_server(side, emu.url)
        await run_query(server, query(), workload["lines"], "warm-up")
        emu.wait_idle()
        emu.reset_stats()
        await asyncio.sleep(0.5)  # let the warm-up's allocations settle, as cold start does
        idle = status_kib(server.pid, "VmRSS")
        hold = asyncio.Event()
        reported: asyncio.Queue = asyncio.Queue()
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(stream_query(HOST, server.port, query(f"stream {k}"), hold=hold, on_first_event=reported))
            for k in range(streams)
        ]
        opened, failed = 0, []
        try:
            while opened + len(failed) < streams:
                left = open_timeout - (time.perf_counter() - started)
                r = await asyncio.wait_for(reported.get(), timeout=max(left, 0.001))
                if r.first_event is None or r.status != 200:
                    failed.append(f"status {r.status}: {r.body_head[:200]!r}")
                else:
                    opened += 1
        except TimeoutError:
            pass
        open_s = time.perf_counter() - started
        at_hold = {"rss_kib": status_kib(server.pid, "VmRSS"), "alive": emu.stats()["alive"]}
        await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        disconnected = time.perf_counter()
        try:
            stats = emu.wait_idle(timeout=20)
            cleanup_s = time.perf_counter() - disconnected
        except TimeoutError:
            stats, cleanup_s = emu.stats(), None
        # After the load: from the moment every sandbox was killed (or the
        # wait gave up: a server that leaks them is sampled all the same).
        gone = time.perf_counter()
        for delay in AFTER_LOAD_S:
            await asyncio.sleep(max(0.0, gone + delay - time.perf_counter()))
            after[str(delay)] = status_kib(server.pid, "VmRSS")
        peak = status_kib(server.pid, "VmHWM")
    finally:
        if server is not None:
            server.stop()
        emu.stop()
    return {
        "streams": streams,
        "opened": opened,
        "failed": failed[:3],
        "failed_count": len(failed),
        "open_s": open_s,
        "idle_rss_kib": idle,
        "rss_at_hold_kib": at_hold["rss_kib"],
        "alive_at_hold": at_hold["alive"],
        "peak_rss_kib": peak,
        "after_rss_kib": after,
        "cleanup_s": cleanup_s,
        "created": stats["created"],
        "killed": stats["killed"],
        "alive_after": stats["alive"],
    }


async def memory(setup: Setup, runs: int, theirs_runs: int, streams: int) -> dict:
    """`streams` stalled clients (500 KB each) on every side: ours `runs`
    times, each original `theirs_runs` times (a minute each)."""
    workload = CONCURRENT["stalled"]
    out: dict = {"streams": streams, "runs": {"ours": runs, "theirs": theirs_runs}}
    for i in range(max(runs, theirs_runs)):
        for side in alternate(i):
            if i >= (runs if side == "ours" else theirs_runs):
                continue
            fig = await concurrent_streams(setup, side, streams, workload, open_timeout=120)
            out.setdefault(side, []).append(fig)
            log(
                f"{streams} stalled streams, {side}: opened {fig['opened']} in {fig['open_s']:.1f} s, "
                f"idle {fig['idle_rss_kib'] / 1024:.1f} MiB, peak {fig['peak_rss_kib'] / 1024:.1f} MiB, "
                f"after {[round(v / 1024, 1) for v in fig['after_rss_kib'].values()]} MiB, "
                f"created/killed/alive after {fig['created']}/{fig['killed']}/{fig['alive_after']}"
            )
    return out


async def growth_step(setup: Setup, side: str, runs: int) -> dict:
    """A fresh server and emulator, `runs` typical queries at once, every
    client reading to the end: the server's peak RSS, its CPU per relayed
    runner line, and the time to each stream's first event."""
    workload = CONCURRENT["typical"]
    emu = Emulator(setup)
    server = None
    try:
        emu.configure(**workload)
        server = setup.start_server(side, emu.url)
        await run_query(server, query(), workload["lines"], "warm-up")
        emu.wait_idle()
        cpu0 = cpu_seconds(server.pid)
        results = await asyncio.wait_for(
            asyncio.gather(*(stream_query(HOST, server.port, query(f"run {k}")) for k in range(runs)), return_exceptions=True),
            timeout=300,
        )
        cpu = cpu_seconds(server.pid) - cpu0
        peak = status_kib(server.pid, "VmHWM")
        ok = [r for r in results if not isinstance(r, BaseException) and r.status == 200 and r.saw_result and not r.error_events]
        try:
            emu.wait_idle(timeout=30)
        except TimeoutError:
            pass  # counted below as failed runs if their streams failed; leaks show in the memory table
    finally:
        if server is not None:
            server.stop()
        emu.stop()
    lines = sum(r.lines for r in ok)
    return {
        "runs": runs,
        "completed": len(ok),
        "peak_rss_kib": peak,
        "cpu_s": cpu,
        "lines": lines,
        "first_event_s": sorted(r.ttfe for r in ok),
    }


async def growth(setup: Setup, steps: tuple[int, ...], theirs_max: int) -> dict:
    """The growth curve: each step, ours to the last, the originals up to
    `theirs_max` runs. One fresh server per point."""
    out: dict = {"steps": list(steps), "theirs_max": theirs_max}
    for n in steps:
        for side in SIDES:
            if side != "ours" and n > theirs_max:
                continue
            fig = await growth_step(setup, side, n)
            out.setdefault(side, []).append(fig)
            log(
                f"growth, {n} runs, {side}: {fig['completed']} completed, peak {fig['peak_rss_kib'] / 1024:.1f} MiB, "
                f"CPU {fig['cpu_s'] / max(fig['lines'], 1) * 1e6:.1f} µs per line, "
                f"p99 first event {(report.percentile(fig['first_event_s'], 99) or 0) * 1e3:.1f} ms"
            )
    return out


# --- local sandbox start-up (issue 9) -----------------------------------------


def local_startup(setup: Setup, emu: Emulator, before: Path | None, before_commit: str | None, runs: int) -> dict:
    """Create, first process (`true`) and kill through this checkout's
    emulator and, given `before`, an emulator built before issue 9."""
    emu.configure(**SMALL)  # no added latency; `true` is not the synthetic runner
    emulators = {"now": emu}
    old = Emulator(setup, binary=before, log_name="emulator-before.log") if before else None
    try:
        if old is not None:
            emulators["before"] = old
        figures = startup.measure(emulators, runs, warmup=LOCAL_WARMUP)
    finally:
        if old is not None:
            old.stop()
    out = {"runs": runs, "warmup": LOCAL_WARMUP, "root": os.geteuid() == 0, **figures}
    if old is not None:
        out["before_commit"] = before_commit
    for name in emulators:
        total = [a + b for a, b in zip(out[name]["create_s"], out[name]["first_process_s"])]
        log(f"local start-up, {name}: create to first process done {report.med(total) * 1e3:.1f} ms")
    return out


# --- environment ----------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])

    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "rustc": run("rustc", "--version"),
        "python": platform.python_version(),
        "commit": run("git", "rev-parse", "--short", "HEAD"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def busy_cores(seconds: float) -> float:
    """How many cores other work keeps busy, over `seconds` of /proc/stat
    before anything of ours runs (a busy machine makes every figure noisy)."""

    def sample():
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def theirs_versions(setup: Setup) -> dict:
    """Each original's versions, by side."""
    code = "import importlib.metadata as m; print(m.version('duvo-sandstorm'), m.version('e2b'), m.version('uvicorn'))"
    versions = {}
    for side, ds in setup.originals.items():
        out = subprocess.run([str(ds.parent / "python"), "-c", code], capture_output=True, text=True, check=True).stdout.split()
        versions[side] = {"duvo-sandstorm": out[0], "e2b": out[1], "uvicorn": out[2]}
    return versions


def has_symbols(path: Path) -> bool:
    """Whether an ELF64 file still has a `.symtab` (i.e. is not stripped);
    read from the section headers, so no binutils are needed."""
    import struct

    data = path.read_bytes()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + k * shentsize) for k in range(shnum)]
    names_at = sections[shstrndx][4]
    names = {data[names_at + sec[0] : data.index(b"\0", names_at + sec[0])] for sec in sections}
    return b".symtab" in names


def sizes(setup: Setup) -> dict:
    def binary(path: Path | None):
        if path is None or not path.exists():
            return None
        return {"bytes": path.stat().st_size, "stripped": not has_symbols(path)}

    def site_packages(ds: Path):
        site = next((ds.parent.parent / "lib").glob("python*/site-packages"), None)
        return sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) if site is not None else None

    return {
        "ds": binary(setup.ds),
        "bootstrap": binary(setup.bootstrap),
        "site_packages": {side: site_packages(ds) for side, ds in setup.originals.items()},
    }


# --- main -------------------------------------------------------------------


async def main() -> None:
    harness_began = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--target-dir", type=Path, help="cargo's target folder (default REPO/target)")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (at least 5 for the published file)")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent stalled streams for the memory table")
    parser.add_argument("--memory-runs", type=int, default=2, help="runs of the memory table's stalled streams, ours")
    parser.add_argument("--theirs-memory-runs", type=int, default=1, help="the same, each original (0: skip them)")
    parser.add_argument("--growth-steps", default=",".join(map(str, GROWTH_STEPS)), help="the growth curve's concurrent runs")
    parser.add_argument("--growth-theirs-max", type=int, default=100, help="the originals' last step on the growth curve")
    parser.add_argument("--timing", type=Path, help="bench/run's build and install times (JSON) to include")
    parser.add_argument("--bootstrap", type=Path, help="the Lambda bootstrap binary (absent: not measured)")
    parser.add_argument("--load-figures", type=Path, help="tests/load.rs figures (JSON) to include")
    parser.add_argument("--proxy-figures", type=Path, help="tests/bench_model_endpoint.rs figures (JSON) to include")
    parser.add_argument("--out", type=Path, help="where to write the markdown (default REPO/BENCHMARKS.md)")
    parser.add_argument(
        "--only",
        help=f"comma-separated phases ({','.join(PHASES)}), merged into bench/results.json; default: all, from scratch",
    )
    parser.add_argument("--before-emulator", type=Path, help="an e2b-emulator built before issue 9, for the local start-up section")
    parser.add_argument("--before-commit", help="the commit --before-emulator was built from (named in the report)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from bench/results.json, measure nothing")
    args = parser.parse_args()

    repo = args.repo.resolve()
    target = (args.target_dir or repo / "target").resolve()
    work = repo / "bench" / ".work"
    results_file = repo / "bench" / "results.json"
    out = args.out or repo / "BENCHMARKS.md"
    if args.report_only:
        report.write(json.loads(results_file.read_text()), out, repo)
        return
    phases = set((args.only or ",".join(PHASES)).split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phases {','.join(sorted(phases - set(PHASES)))}; known: {','.join(PHASES)}")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    setup = Setup(
        repo=repo,
        work=work,
        ds=target / "release" / "ds",
        bootstrap=args.bootstrap.resolve() if args.bootstrap else None,
        emulator_bin=target / "release" / "e2b-emulator",
        originals={
            side: work / venv / "bin" / "ds" for side, (_, venv) in ORIGINALS.items() if (work / venv / "bin" / "ds").exists()
        },
    )
    global SIDES
    SIDES = ("ours", *setup.originals)
    nagle = nagle_flag(setup.emulator_bin)
    # A thousand streams need a few thousand sockets across the processes.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # A partial run starts from the figures on file and replaces only its
    # phases; a full run starts afresh.
    results: dict = {}
    if args.only and results_file.exists():
        results = json.loads(results_file.read_text())
    for phase in phases:  # a phase that measures nothing this time (no bootstrap) must not keep old figures
        results.pop(phase, None)
    results["machine"] = machine()
    if phases & {"overhead", "trips", "relay", "detached", "memory", "growth"}:
        results["runs"] = args.runs
        results["workloads"] = {"small": SMALL, "relay": RELAY, "concurrent": CONCURRENT, "ten_files": sorted(ten_files())}
    if phases & THEIRS_PHASES:
        results["originals"] = theirs_versions(setup)
    if "size" in phases:
        results["sizes"] = sizes(setup)
    started = time.perf_counter()
    busy = busy_cores(2.0)
    emu = Emulator(setup) if phases & EMULATOR_PHASES else None
    try:
        if "cold" in phases:
            log("cold start")
            results["cold"] = cold_start(setup, emu, max(args.runs, 7))
        if "lambda" in phases:
            if setup.bootstrap is not None:
                results["lambda"] = await lambda_cold_start(setup, emu, max(args.runs, 7))
            else:
                results["lambda"] = None
        if phases & {"overhead", "trips", "relay"}:
            servers: dict[str, Server] = {}
            nagle_emu = None
            try:
                for side in SIDES:
                    servers[side] = setup.start_server(side, emu.url)
                if "overhead" in phases:
                    log("per-query overhead")
                    emus = {side: emu for side in servers}
                    with_nagle = dict(servers)
                    if nagle:
                        nagle_emu = Emulator(setup, log_name="emulator-nagle.log", extra_args=[nagle])
                        with_nagle["ours_nagle"] = setup.start_server("ours", nagle_emu.url)
                        emus["ours_nagle"] = nagle_emu
                    try:
                        results["overhead"] = await overhead(with_nagle, emus, max(args.runs, 9))
                    finally:
                        if "ours_nagle" in with_nagle:
                            with_nagle["ours_nagle"].stop()
                    results["overhead"]["nagle_flag"] = nagle
                if "trips" in phases:
                    log("E2B round trips")
                    results["trips"] = await round_trips(servers, emu, args.runs)
                if "relay" in phases:
                    log("relay throughput")
                    results["relay"] = await relay(servers, emu, args.runs)
            finally:
                for s in servers.values():
                    s.stop()
                if nagle_emu is not None:
                    nagle_emu.stop()
        if "otel" in phases:
            log("OpenTelemetry export, off and on")
            results["otel"] = await otel(setup, emu, max(args.runs, 9))
        if "detached" in phases:
            log("detached runs: the event log's cost, and reattach")
            results["detached"] = await detached(setup, emu, args.runs)
        if "memory" in phases:
            log(f"memory with {args.streams} stalled streams")
            results["memory"] = await memory(setup, args.memory_runs, args.theirs_memory_runs, args.streams)
        if "growth" in phases:
            steps = tuple(int(n) for n in args.growth_steps.split(","))
            log(f"growth: {', '.join(map(str, steps))} concurrent runs")
            results["growth"] = await growth(setup, steps, args.growth_theirs_max)
        if "local" in phases:
            log("local sandbox start-up")
            before = args.before_emulator.resolve() if args.before_emulator else None
            results["local"] = local_startup(setup, emu, before, args.before_commit, max(args.runs, LOCAL_RUNS))
    finally:
        if emu is not None:
            emu.stop()
    elapsed = time.perf_counter() - started
    if "load" in phases and args.load_figures and args.load_figures.exists():
        results["load"] = json.loads(args.load_figures.read_text())
    if "proxy" in phases and args.proxy_figures and args.proxy_figures.exists():
        results["proxy"] = json.loads(args.proxy_figures.read_text())
        elapsed += results["proxy"].get("elapsed_s", 0)  # bench/run ran it before the harness
    # When and where each phase on file was measured: a partial run leaves
    # the others' as they were.
    m = results["machine"]
    this_run = {"date": m["date"], "commit": m["commit"], "busy_cores": busy, "elapsed_s": elapsed}
    provenance = results.setdefault("provenance", {})
    for phase in phases:
        if results.get(phase) is not None or phase == "size":
            provenance[phase] = this_run
        else:
            provenance.pop(phase, None)
    if args.timing and args.timing.exists():
        results["timing"] = json.loads(args.timing.read_text()) | {"harness_s": time.perf_counter() - harness_began}
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, out, repo)
    log(f"measured in {elapsed:.0f} s; wrote {out} and {results_file}")


if __name__ == "__main__":
    asyncio.run(main())

"""The processes under test: the E2B emulator and the two servers, and
what /proc says about them (resident memory, CPU time)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

E2B_KEY = "e2b_0123abcd"
ANTHROPIC_KEY = "sk-bench-0000"
# The E2B template both originals (duvo-sandstorm 0.4.0 and 0.9.2) name in
# their create calls (0.9.2: `SANDSTORM_TEMPLATE`, unset, defaults to it).
THEIR_TEMPLATE = "work-43ca/sandstorm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status: VmRSS (now) or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every live thread of `pid`, from
    schedstat (nanoseconds; /proc/PID/stat only counts in 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended between listdir and open
    return total / 1e9


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    """Polls GET /health until it answers 200; returns perf_counter() then.

    Plain blocking sockets, retried every 0.2 ms while the port refuses, so
    the probe adds well under a millisecond to a start-up of a few ms."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    give_up = time.perf_counter() + timeout
    while time.perf_counter() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before /health answered")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                head = s.recv(64)
                if head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"):
                    return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.0002)
    raise TimeoutError(f"/health on port {port} did not answer 200 within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Server:
    name: str  # "ours", or an original's side ("theirs": 0.4.0, "theirs092": 0.9.2)
    proc: subprocess.Popen
    port: int
    spawned: float  # perf_counter() just before the spawn
    healthy: float  # perf_counter() at the first /health 200

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def cold_start(self) -> float:
        return self.healthy - self.spawned

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class Setup:
    """Where everything is: the repository, our binaries, the original's
    virtualenv, and a scratch folder."""

    repo: Path
    work: Path  # bench/.work
    ds: Path
    bootstrap: Path | None
    emulator_bin: Path
    # The originals' `ds`, by side ("theirs": 0.4.0, "theirs092": 0.9.2),
    # each in a virtualenv of its own; only those installed.
    originals: dict[str, Path]

    def server_env(self, emulator_url: str) -> dict[str, str]:
        # The same environment for both: the emulator for both E2B planes,
        # dummy keys, nothing from the caller's shell.
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.work / "home"),
            "LANG": "C.UTF-8",
            "E2B_API_URL": emulator_url,
            "E2B_SANDBOX_URL": emulator_url,
            "E2B_API_KEY": E2B_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        }

    def start_server(self, name: str, emulator_url: str, extra_env: dict[str, str] | None = None) -> Server:
        """Starts `ds serve` (ours or theirs) on a free port in an empty
        folder (no .env, no sandstorm.json) and waits for /health.
        `extra_env` adds settings to its environment."""
        port = free_port()
        if name == "ours":
            argv = [str(self.ds), "serve", "--port", str(port), "--sandbox", "e2b"]
        else:
            argv = [str(self.originals[name]), "serve", "--host", "127.0.0.1", "--port", str(port)]
        cwd = self.work / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        (self.work / "home").mkdir(parents=True, exist_ok=True)
        log = open(self.work / "logs" / f"{name}-serve.log", "ab")
        spawned = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**self.server_env(emulator_url), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        try:
            healthy = wait_healthy(port, proc)
        except BaseException:
            stop(proc)
            raise
        return Server(name, proc, port, spawned, healthy)


def _drain(pipe, log) -> None:
    with log:
        for raw in pipe:
            log.write(raw)
            log.flush()


def nagle_flag(emulator_bin: Path) -> str | None:
    """The emulator's flag that makes it answer without `TCP_NODELAY`, if
    this build has one: the first `--...` word of its `--help` that names
    nodelay (another change adds it; until then the Nagle rows are left out)."""
    try:
        text = subprocess.run([str(emulator_bin), "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in text.replace(",", " ").split():
        if word.startswith("--") and "nodelay" in word.lower().replace("-", "").replace("_", ""):
            return word.split("=", 1)[0]
    return None


class Emulator:
    """The release `e2b-emulator`, shared by both servers; or, given
    `binary`, another build of it (the local start-up section's "before")."""

    def __init__(
        self, setup: Setup, binary: Path | None = None, log_name: str = "emulator.log", extra_args: list[str] | None = None
    ) -> None:
        argv = [str(binary or setup.emulator_bin), "--port", "0", "--api-key", E2B_KEY, "--runner-dir", str(setup.repo / "runner")]
        argv += extra_args or []
        if binary is None:
            # The template the original creates its sandboxes from; E2B
            # (and the emulator) refuse a template they do not know.
            argv += ["--template", THEIR_TEMPLATE]
            # The template's model proxy, which `ds serve` starts as root
            # beside each runner; the emulator runs this build for it.
            proxy = setup.emulator_bin.parent / "sandstorm-model-proxy"
            argv += ["--root-command", f"/usr/local/bin/sandstorm-model-proxy={proxy}"]
        binary = binary or setup.emulator_bin
        # Sandbox folders on tmpfs: removing one on a journaled disk costs
        # 3-25 ms, which both servers would wait for on every kill.
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            root = shm / "sandstorm-bench"
            root.mkdir(exist_ok=True)
            argv += ["--work-root", str(root)]
        self.proc = subprocess.Popen(
            argv,
            cwd=setup.repo,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # The address is on stderr (as with `ds serve`), among the log lines;
        # everything else it prints goes to the log, and keeps going there so
        # the emulator never blocks on a full pipe.
        log = open(setup.work / "logs" / log_name, "ab")
        for raw in self.proc.stderr:
            if raw.startswith(b"listening on "):
                self.url = raw.decode().strip().removeprefix("listening on ")
                break
            log.write(raw)
        else:
            log.close()
            stop(self.proc)
            raise RuntimeError(f"{binary} exited before printing its address")
        threading.Thread(target=_drain, args=(self.proc.stderr, log), daemon=True).start()

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return json.loads(raw) if raw else None

    def configure(self, *, lines: int, bytes_: int = 500, latency_ms: int = 0, process: bool = False) -> None:
        """Replaces every knob: synthetic runner output (from a real `cat`
        process when `process`) and added latency."""
        self._call(
            "POST",
            "/_emulator/config",
            {"latency_ms": latency_ms, "synthetic": {"lines": lines, "bytes": bytes_}, "synthetic_process": process},
        )

    def stats(self) -> dict:
        return self._call("GET", "/_emulator/stats")

    def reset_stats(self) -> None:
        self._call("DELETE", "/_emulator/stats")

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """Waits until no sandbox is alive and every create was killed."""
        give_up = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["alive"] == 0 and stats["created"] == stats["killed"]:
                return stats
            if time.monotonic() > give_up:
                raise TimeoutError(f"sandboxes still alive after {timeout} s: {stats}")
            time.sleep(0.01)

    def stop(self) -> None:
        stop(self.proc)

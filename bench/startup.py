"""Local sandbox start-up (issue 9), timed through the E2B emulator.

What a run pays before its agent can start, with the local provider behind
E2B's API: `POST /sandboxes` until its 201, then envd's
`process.Process/Start` of `true` until the process's `end` event, then
`DELETE /sandboxes/{id}` until it is answered. The same client times the
emulator built from this checkout and, when given, one built from before
issue 9 (where create was a mkdir and every process its own bwrap), their
runs interleaved so that drift on the machine hits both alike.

The client is `http.client` on one kept-alive connection per emulator with
`TCP_NODELAY`, so no figure includes a TCP handshake or a delayed ACK; its
own cost (well under a millisecond a call on loopback) is the same for both
emulators, and cancels out of the difference.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
from urllib.parse import urlsplit

from procs import E2B_KEY

# Connect's envelope: one flags byte, then the payload's length, big-endian.
FLAG_END_STREAM = 0x02
ENVELOPE = struct.Struct(">BI")


class E2bClient:
    """Just enough of E2B's control plane and envd to create a sandbox,
    run one command to its exit, and kill the sandbox."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.conn.close()

    def _call(self, method: str, path: str, body: bytes | None, headers: dict) -> http.client.HTTPResponse:
        self.conn.request(method, path, body=body, headers=headers)
        return self.conn.getresponse()

    def create(self) -> tuple[str, str]:
        """`POST /sandboxes`; returns the sandbox id and envd access token."""
        body = json.dumps({"templateID": "base", "timeout": 300}).encode()
        response = self._call("POST", "/sandboxes", body, {"X-API-KEY": E2B_KEY, "Content-Type": "application/json"})
        raw = response.read()
        if response.status != 201:
            raise RuntimeError(f"create answered {response.status}: {raw[:300]!r}")
        sandbox = json.loads(raw)
        return sandbox["sandboxID"], sandbox.get("envdAccessToken") or ""

    def run(self, sandbox_id: str, token: str, cmd: str, args: list[str]) -> int:
        """envd's `Start`, read until the process's `end` event; returns its
        exit code. The rest of the stream (its end-of-stream frame) is read
        too, so the connection can be used again."""
        message = json.dumps({"process": {"cmd": cmd, "args": args, "envs": {}}}).encode()
        headers = {
            "Content-Type": "application/connect+json",
            "Connect-Protocol-Version": "1",
            "E2b-Sandbox-Id": sandbox_id,
            # E2B's edge routes by both, and refuses one without the other.
            "E2b-Sandbox-Port": "49983",
            "X-Access-Token": token,
        }
        response = self._call("POST", "/process.Process/Start", ENVELOPE.pack(0, len(message)) + message, headers)
        if response.status != 200:
            raise RuntimeError(f"start answered {response.status}: {response.read()[:300]!r}")
        buf, exit_code = b"", None
        while True:
            while len(buf) >= ENVELOPE.size:
                flags, length = ENVELOPE.unpack_from(buf)
                if len(buf) < ENVELOPE.size + length:
                    break
                payload = json.loads(buf[ENVELOPE.size : ENVELOPE.size + length])
                buf = buf[ENVELOPE.size + length :]
                if flags & FLAG_END_STREAM:
                    response.read()  # the chunked body's terminator
                    if payload.get("error") or exit_code is None:
                        raise RuntimeError(f"the process stream ended without an exit: {payload}")
                    return exit_code
                end = payload.get("event", {}).get("end")
                if end is not None:
                    exit_code = end.get("exitCode", 0)
            chunk = response.read1(65536)
            if not chunk:
                raise RuntimeError("the process stream was cut")
            buf += chunk

    def kill(self, sandbox_id: str) -> None:
        response = self._call("DELETE", f"/sandboxes/{sandbox_id}", None, {"X-API-KEY": E2B_KEY})
        raw = response.read()
        if response.status != 204:
            raise RuntimeError(f"kill answered {response.status}: {raw[:300]!r}")


def one_run(client: E2bClient) -> dict:
    """Create, `true`, kill: the seconds each took, from the client."""
    t0 = time.perf_counter()
    sandbox_id, token = client.create()
    t1 = time.perf_counter()
    code = client.run(sandbox_id, token, "true", [])
    t2 = time.perf_counter()
    client.kill(sandbox_id)
    t3 = time.perf_counter()
    if code != 0:
        raise RuntimeError(f"`true` exited with {code}")
    return {"create_s": t1 - t0, "first_process_s": t2 - t1, "kill_s": t3 - t2}


def measure(emulators: dict, runs: int, warmup: int = 3, pause: float = 0.1) -> dict:
    """`runs` create/`true`/kill rounds on each emulator (name -> Emulator),
    after `warmup` uncounted ones; the emulators alternate going first.
    Between rounds, `pause` seconds let the last kill's aftermath (reaping,
    the directory's removal) settle, and every sandbox must be gone."""
    names = list(emulators)
    clients = {name: E2bClient(emu.url) for name, emu in emulators.items()}
    out: dict = {name: {"create_s": [], "first_process_s": [], "kill_s": []} for name in names}
    try:
        for i in range(warmup + runs):
            for name in names if i % 2 == 0 else names[::-1]:
                emulators[name].wait_idle()
                time.sleep(pause)
                figures = one_run(clients[name])
                if i >= warmup:
                    for key, value in figures.items():
                        out[name][key].append(value)
    finally:
        for client in clients.values():
            client.close()
    return out

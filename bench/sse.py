"""A minimal HTTP/1.1 client for SSE streams, on asyncio streams only.

Both servers are driven by the same client, so its own cost is the same on
each side. It records when the first event and the end of the stream
arrive, counts SSE events and the runner lines inside them, and can pause
after the first event (so a test can hold many streams open at once).

Why not httpx: its pure-Python parser costs more per byte than the servers
under test, and on two cores that would blur the relay figures.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

# One synthetic runner line carries exactly one of these (see
# crates/e2b-emulator/src/synthetic.rs); counting them counts lines that arrived whole.
SEQ_TOKEN = b'"seq":'


@dataclass
class StreamResult:
    status: int = 0
    sent: float = 0.0
    first_event: float | None = None
    first_line: float | None = None  # the first event holding a runner line
    end: float | None = None
    events: int = 0  # SSE events carrying data
    lines: int = 0  # runner lines that arrived whole
    saw_result: bool = False
    error_events: list[str] = field(default_factory=list)
    body_head: bytes = b""  # for error reports

    @property
    def ttfe(self) -> float:
        """Seconds from sending the request to the first event."""
        return (self.first_event or self.sent) - self.sent

    @property
    def total(self) -> float:
        return (self.end or self.sent) - self.sent


class _SseCounter:
    """Counts events in a byte stream, whatever its line endings (ours use
    LF, the original's sse-starlette CRLF)."""

    def __init__(self, result: StreamResult) -> None:
        self.result = result
        self.tail = b""

    def feed(self, data: bytes) -> None:
        buf = (self.tail + data).replace(b"\r\n", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.tail = buf
            return
        complete, self.tail = buf[: cut + 2], buf[cut + 2 :]
        # Frames without a data line are comments (keepalives).
        events = sum(1 for f in complete.split(b"\n\n") if f.startswith(b"data:") or b"\ndata:" in f)
        if not events:
            return
        r = self.result
        if r.first_event is None:
            r.first_event = time.perf_counter()
        r.events += events
        lines = complete.count(SEQ_TOKEN)
        if lines and r.first_line is None:
            r.first_line = time.perf_counter()
        r.lines += lines
        if b'"type":"result"' in complete:
            r.saw_result = True
        if b'"type":"error"' in complete and len(r.error_events) < 3:
            at = complete.find(b'"type":"error"')
            r.error_events.append(complete[max(0, at - 100) : at + 300].decode(errors="replace"))


async def stream_query(
    host: str,
    port: int,
    payload: dict,
    hold: asyncio.Event | None = None,
    on_first_event: asyncio.Queue | None = None,
) -> StreamResult:
    """POSTs `payload` to /query and reads the SSE stream to its end.

    With `hold`, stops reading after the first event until `hold` is set
    (announcing itself on `on_first_event`), so the server keeps the stream
    open and its buffers fill.
    """
    return await stream_request(host, port, _post_query(host, port, payload), hold, on_first_event)


def _post_query(host: str, port: int, payload: dict) -> bytes:
    """The whole `POST /query` request for `payload`."""
    body = json.dumps(payload).encode()
    head = (
        b"POST /query HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Accept: text/event-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (host.encode(), port, len(body))
    )
    return head + body


async def stream_get(host: str, port: int, path: str) -> StreamResult:
    """GETs `path` (a run's events) and reads the SSE stream to its end."""
    request = (
        b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        % (path.encode(), host.encode(), port)
    )
    return await stream_request(host, port, request)


async def stream_request(
    host: str,
    port: int,
    request: bytes,
    hold: asyncio.Event | None = None,
    on_first_event: asyncio.Queue | None = None,
) -> StreamResult:
    """Sends `request` (a whole HTTP/1.1 request) and reads the SSE stream
    of its answer to its end (see stream_query for `hold`)."""
    result = StreamResult()
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        result.sent = time.perf_counter()
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        result.status = int(status_line.split()[1])
        headers = _parse_headers(header_block)
        counter = _SseCounter(result)
        held = hold is None
        async for chunk in _body_chunks(reader, headers):
            if len(result.body_head) < 600:
                result.body_head += chunk[: 600 - len(result.body_head)]
            counter.feed(chunk)
            if not held and result.first_event is not None:
                held = True
                if on_first_event is not None:
                    on_first_event.put_nowait(result)
                await hold.wait()
        if not held and on_first_event is not None:
            on_first_event.put_nowait(result)  # never had an event: still report
        result.end = time.perf_counter()
        return result
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _parse_headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode()] = value.strip().decode()
    return headers


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The response body as it arrives: chunked, sized or until EOF."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        # Decoded from large reads, not one await per chunk: ours sends one
        # HTTP chunk per event, and per-chunk awaits would make this client
        # the bottleneck of the relay figures.
        buf = bytearray()
        while True:
            data = await reader.read(1 << 20)
            if not data:
                raise asyncio.IncompleteReadError(bytes(buf), None)
            buf += data
            out, pos, ended = [], 0, False
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(buf[pos:nl].split(b";")[0], 16)
                if size == 0:
                    ended = True
                    break
                start = nl + 2
                if len(buf) < start + size + 2:
                    break
                out.append(bytes(buf[start : start + size]))
                pos = start + size + 2
            del buf[:pos]
            if out:
                yield b"".join(out)
            if ended:
                return
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                return
            left -= len(data)
            yield data
    else:
        while data := await reader.read(1 << 20):
            yield data


async def get_status(host: str, port: int, path: str) -> int:
    """The status of one GET (for /health probes); raises when refused."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path.encode(), host.encode()))
        await writer.drain()
        line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()


async def start_detached(host: str, port: int, payload: dict) -> str:
    """POSTs a detached query, reads up to its `run` event, and leaves: the
    run goes on. Returns the run's id."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(_post_query(host, port, dict(payload, detach=True)))
        await writer.drain()
        seen = b""
        while b'"type":"run"' not in seen or b"\n\n" not in seen[seen.find(b'"type":"run"') :]:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError(f"the stream ended before its run event: {seen[:300]!r}")
            seen += chunk
        at = seen.find(b'"run_id":"') + len(b'"run_id":"')
        return seen[at : seen.find(b'"', at)].decode()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass

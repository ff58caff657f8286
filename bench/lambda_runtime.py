"""A Lambda Runtime API emulator on loopback, enough for one invocation.

The `bootstrap` binary asks `GET /2018-06-01/runtime/invocation/next` for
work; the first ask gets a Function URL event (API Gateway payload v2.0)
for `GET /health`, later asks are never answered (a Lambda waiting for its
next request). The invocation's streamed response (`POST .../response`,
chunked: a JSON prelude, eight NUL bytes, then the body) is read whole and
handed to `response`, stamped with the time it was complete.

Cold start of the Lambda door is then measured the way a Function URL user
feels it: from starting the process to the whole `/health` answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

PREFIX = "/2018-06-01/runtime"


def health_event(request_id: str) -> dict:
    """A Function URL invocation for `GET /health`."""
    return function_url_event(request_id, "GET", "/health", None)


def query_event(body: dict):
    """A maker of Function URL invocations for `POST /query` with `body`."""
    return lambda request_id: function_url_event(request_id, "POST", "/query", body)


def function_url_event(request_id: str, method: str, path: str, body: dict | None) -> dict:
    """A Function URL invocation (API Gateway payload v2.0)."""
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "host": "bench.lambda-url.us-east-1.on.aws",
            "accept": "application/json" if body is None else "text/event-stream",
            "content-type": "application/json",
            "user-agent": "sandstorm-bench",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "bench",
            "domainName": "bench.lambda-url.us-east-1.on.aws",
            "domainPrefix": "bench",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "sandstorm-bench",
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = json.dumps(body)
    return event


class RuntimeApi:
    """Serves one invocation (`event` makes it from the request id: `GET
    /health` by default); `response` resolves to `(time_complete,
    time_head_arrived, status_code, body_bytes)` or raises on an error post.
    `done_at` is when the chunk that carried a `done` event arrived, if
    one did."""

    def __init__(self, event=health_event) -> None:
        self.event = event
        self.done_at: float | None = None
        self.request_id = str(uuid.uuid4())
        self.response: asyncio.Future = asyncio.get_running_loop().create_future()
        self._served = False
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # The runtime's connection parked on /next never ends by itself.
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                head_at = time.perf_counter()
                line, _, rest = head.partition(b"\r\n")
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                for h in rest.split(b"\r\n"):
                    name, sep, value = h.partition(b":")
                    if sep:
                        headers[name.strip().lower().decode()] = value.strip().decode()
                body = await _read_body(reader, headers, self._chunk)
                await self._handle(method, path, body, head_at, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _handle(self, method: str, path: str, body: bytes, head_at: float, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path == f"{PREFIX}/invocation/next":
            if self._served:
                await asyncio.Event().wait()  # no more work: park forever
            self._served = True
            event = json.dumps(self.event(self.request_id)).encode()
            deadline = int(time.time() * 1000) + 60_000
            _respond(
                writer,
                200,
                event,
                {
                    "Lambda-Runtime-Aws-Request-Id": self.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline),
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:000000000000:function:bench",
                    "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000;Sampled=0",
                },
            )
        elif method == "POST" and path == f"{PREFIX}/invocation/{self.request_id}/response":
            done = time.perf_counter()
            _respond(writer, 202, b'{"status":"OK"}')
            if not self.response.done():
                self.response.set_result((done, head_at, *_split_streamed(body)))
        elif method == "POST" and path.endswith("/error"):
            _respond(writer, 202, b'{"status":"OK"}')
            if not self.response.done():
                self.response.set_exception(RuntimeError(f"{path}: {body[:500]!r}"))
        else:
            _respond(writer, 404, b'{"errorMessage":"unknown path"}')
        await writer.drain()

    def _chunk(self, chunk: bytes) -> None:
        if self.done_at is None and b'"type":"done"' in chunk:
            self.done_at = time.perf_counter()


def _split_streamed(body: bytes) -> tuple[int, bytes]:
    """A streamed response is `prelude JSON` + 8 NULs + body; a buffered
    one is the API Gateway response JSON."""
    prelude, sep, rest = body.partition(b"\0" * 8)
    meta = json.loads(prelude or b"{}")
    if sep:
        return int(meta.get("statusCode", 200)), rest
    return int(meta.get("statusCode", 200)), str(meta.get("body", "")).encode()


def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict | None = None) -> None:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], on_chunk=None) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                # Trailers (the runtime may send error trailers) end with a blank line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            if on_chunk is not None:
                on_chunk(parts[-1])
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""

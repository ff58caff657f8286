"""`phoenix serve` for the tests (tests/common/phoenix.rs), on loopback only.

Phoenix binds its HTTP server (UI, REST API, OTLP/HTTP) to PHOENIX_HOST,
but its OTLP gRPC server to `[::]` whatever the host: every interface.
This launcher rebinds that one to 127.0.0.1 and prints the port it got
(`phoenix grpc listening on 127.0.0.1:PORT`), for PHOENIX_GRPC_PORT=0;
everything else is Phoenix's own `phoenix serve`.

Run with the Python of .venv/phoenix: python phoenix_serve.py serve
"""

import sys

from grpc.aio._server import Server

_add_insecure_port = Server.add_insecure_port


def _add_loopback_port(self: Server, address: str) -> int:
    _host, _, port = address.rpartition(":")
    bound = _add_insecure_port(self, f"127.0.0.1:{port}")
    print(f"phoenix grpc listening on 127.0.0.1:{bound}", flush=True)
    return bound


Server.add_insecure_port = _add_loopback_port  # type: ignore[method-assign]

from phoenix.server.main import main  # noqa: E402  (after the patch above)

if __name__ == "__main__":
    sys.argv[0] = "phoenix"
    sys.exit(main())

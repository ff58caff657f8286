"""Runs one query through Python Sandstorm 0.9.2's own SandstormClient.

Used by tests/python_peer.rs as a real peer: the client is the package from
PyPI (scripts/setup installs it in .venv/peers/duvo-sandstorm), untouched.

    python query_092.py URL [TOKEN] < body.json

The body's `prompt` is the positional argument and every other field goes in
as a keyword argument, as a 0.9.2 user would call `client.query(...)`. Each
event is printed as one JSON line: the event's own JSON, as the client
parsed it. `{"health": true}` as the body calls `client.health()` instead.
"""

import asyncio
import json
import sys

from sandstorm import SandstormClient


async def main() -> None:
    url = sys.argv[1]
    token = sys.argv[2] if len(sys.argv) > 2 else None
    body = json.load(sys.stdin)
    async with SandstormClient(url, api_key=token, timeout=180) as client:
        if body.pop("health", False):
            print(json.dumps(await client.health()), flush=True)
            return
        prompt = body.pop("prompt")
        async for event in client.query(prompt, **body):
            assert event.type == event.data.get("type", "unknown")
            print(json.dumps(event.data), flush=True)


asyncio.run(main())

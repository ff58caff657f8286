"""POST /query: upload data.csv, ask for report.md back, print the events
and save the files that come back under output/.

    pip install httpx httpx-sse
    python query.py
"""

import base64
import json
import os
import sys
from pathlib import Path

import httpx
from httpx_sse import connect_sse

url = os.environ.get("SANDSTORM_URL", "http://localhost:8000")
token = os.environ.get("SANDSTORM_API_TOKEN")
headers = {"Authorization": f"Bearer {token}"} if token else {}
out = Path("output").resolve()

body = {
    "prompt": "Summarize data.csv in report.md",
    "files": {"data.csv": "region,sales\nnorth,10\nsouth,7\n"},
    "outputs": ["report.md"],
}

# The server sends a keepalive every 15 s while the agent works, so a read
# timeout of a minute never fires on a healthy stream.
with httpx.Client(timeout=httpx.Timeout(10.0, read=60.0)) as client:
    with connect_sse(client, "POST", f"{url}/query", json=body, headers=headers) as events:
        if events.response.status_code != 200:
            events.response.read()
            sys.exit(f"{events.response.status_code}: {events.response.text}")
        for sse in events.iter_sse():
            event = json.loads(sse.data)
            if event["type"] == "file":
                target = (out / event["path"]).resolve()
                if not target.is_relative_to(out):
                    sys.exit(f"refusing to write outside {out}: {event['path']}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(event["data"]))
                print(f"saved {target} ({event['size']} bytes)")
            else:
                print(sse.data)
            if event["type"] == "error":
                sys.exit(1)

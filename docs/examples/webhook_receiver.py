"""A receiver of Sandstorm's completion webhooks: Python's standard library
and the official Standard Webhooks verifier (pip install standardwebhooks).

    SANDSTORM_WEBHOOK_SECRET=whsec_... PORT=8080 python3 webhook_receiver.py

It prints each verified notice's `data` as one JSON line, answers 204, and
answers 401 to a POST whose signature does not verify (a forged or changed
body, another secret, a timestamp more than five minutes off).
"""

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

hook = Webhook(os.environ["SANDSTORM_WEBHOOK_SECRET"])
# Every attempt of one notice has the same webhook-id: a retry of a notice
# already taken (its 2xx lost on the way back) is answered and skipped.
seen = set()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            notice = hook.verify(body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(401)
            self.end_headers()
            return
        if self.headers["webhook-id"] not in seen:
            seen.add(self.headers["webhook-id"])
            print(json.dumps(notice["data"]), flush=True)
        # Answer at once; do the slow work elsewhere: an answer slower
        # than 15 s counts as a failure, and the notice is sent again.
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        pass


server = HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Receiver)
print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()

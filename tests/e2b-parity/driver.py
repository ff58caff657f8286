"""Performs one named operation with the official Python E2B SDK against the
emulator, so tests/e2b_parity.rs can record what the SDK sends; the twin of
driver.mjs (same operations, same arguments). Usage: python driver.py <op>"""

import json
import sys

from e2b import Sandbox, SandboxQuery

OPERATIONS = [
    "create", "upload_one", "upload_many", "run", "read", "set_timeout", "kill",
    "pause", "connect", "list",
]


def main() -> None:
    op = sys.argv[1] if len(sys.argv) > 1 else None
    if op not in OPERATIONS:
        sys.exit(f"driver.py: operation must be one of {', '.join(OPERATIONS)}, got {op}")
    sbx = Sandbox.create("base", timeout=120, metadata={"suite": "parity"})
    if op == "upload_one":
        sbx.files.write("/home/user/parity/one.txt", "one\n")
    elif op == "upload_many":
        sbx.files.write_files(
            [
                {"path": "/home/user/parity/a.txt", "data": "A"},
                {"path": "/home/user/parity/b.txt", "data": "B"},
            ]
        )
    elif op == "run":
        sbx.commands.run("echo parity", envs={"PARITY": "1"}, cwd="/home/user", timeout=30)
    elif op == "read":
        sbx.files.write("/home/user/parity/read.txt", "read me\n")
        text = sbx.files.read("/home/user/parity/read.txt")
        if text != "read me\n":
            raise SystemExit(f"read back {text!r}")
    elif op == "set_timeout":
        sbx.set_timeout(300)
    elif op == "pause":
        if not sbx.pause():
            raise SystemExit("pause answered False")
    elif op == "connect":
        Sandbox.connect(sbx.sandbox_id, timeout=120)
    elif op == "list":
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": "parity"})).next_items()
        if sbx.sandbox_id not in [s.sandbox_id for s in listed]:
            raise SystemExit("not listed")
    sbx.kill()
    print(json.dumps({"op": op, "sandboxId": sbx.sandbox_id}))


if __name__ == "__main__":
    main()

"""Starts the e2b-emulator binary for the conformance suite.

The emulator listens on an ephemeral loopback port and prints its address
on stderr (as `ds serve` does); the official SDK finds it through
E2B_API_URL / E2B_SANDBOX_URL.
"""

import os
import pathlib
import subprocess
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
API_KEY = "e2b_0123456789abcdef0123456789abcdef"


def emulator_binary() -> pathlib.Path:
    # `cargo test -p e2b-emulator` passes the binary it built; by hand, the
    # debug build in the checkout is used.
    path = pathlib.Path(
        os.environ.get("E2B_EMULATOR_BIN", REPO / "target" / "debug" / "e2b-emulator")
    )
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: build it with `cargo build -p e2b-emulator`",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def emulator():
    proc = subprocess.Popen(
        [str(emulator_binary()), "--port", "0", "--api-key", API_KEY, "--runner-dir", str(REPO / "runner")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        prefix = "listening on "
        seen = []
        for line in proc.stderr:
            if line.startswith(prefix):
                break
            seen.append(line)
        else:
            pytest.fail(f"the emulator did not start: {''.join(seen)!r}", pytrace=False)
        url = line.strip()[len(prefix):]
        # Keep draining stderr so the emulator never blocks on a full pipe.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN")}
        os.environ.update(
            E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=API_KEY, E2B_DOMAIN="localhost"
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in locals().get("saved", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

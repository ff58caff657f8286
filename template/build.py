"""Builds Sandstorm's E2B template and publishes it under a name.

    E2B_API_KEY=e2b_... python template/build.py

The name is `sandstorm` (what `ds` and `ds serve` use when SANDSTORM_TEMPLATE
is unset), or the value of SANDSTORM_TEMPLATE.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from e2b import Template, default_build_logger

from template import template

REPO = Path(__file__).resolve().parent.parent


def build_model_proxy() -> None:
    """The model proxy, static (musl), so it runs on the template's Debian
    whatever this machine's libc is. Needs `rustup target add
    x86_64-unknown-linux-musl` once."""
    command = [
        "cargo", "build", "--release", "--locked",
        "--target", "x86_64-unknown-linux-musl",
        "--bin", "sandstorm-model-proxy",
    ]
    if subprocess.run(command, cwd=REPO).returncode != 0:
        sys.exit(
            "could not build sandstorm-model-proxy for x86_64-unknown-linux-musl; "
            "install the target with: rustup target add x86_64-unknown-linux-musl"
        )
    built = REPO / "target/x86_64-unknown-linux-musl/release/sandstorm-model-proxy"
    staged = REPO / "template/bin/sandstorm-model-proxy"
    staged.parent.mkdir(exist_ok=True)
    shutil.copy2(built, staged)


def main() -> None:
    build_model_proxy()
    name = os.environ.get("SANDSTORM_TEMPLATE") or "sandstorm"
    Template.build(
        template,
        name,
        cpu_count=2,
        memory_mb=2048,
        on_build_logs=default_build_logger(),
    )
    print(f"built E2B template {name!r}")


if __name__ == "__main__":
    main()

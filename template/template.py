"""Sandstorm's E2B template: the machine every E2B sandbox starts as.

Node 24, git, ripgrep, curl and python3, and the agent runner's
dependencies installed with `npm ci` from runner/package-lock.json at
/opt/agent-runner, so the Agent SDK version is the one pinned in
runner/package.json and nowhere else. The server uploads runner.mjs and
agent_config.json into that folder for each request, which is why it
belongs to the sandbox user, `user`.

It also carries the model proxy, `sandstorm-model-proxy`, which the server
starts as root beside each runner so that the model key never enters the
sandbox (docs/security.md), and it takes sudo away from `user`: the agent
runs as `user`, and must not become root and read the proxy's key.

Built with E2B's template SDK; see build.py and README.md beside this file.
"""

import os
from pathlib import Path

from e2b import Template

# The repository root. Copies are relative to it, so the template reads
# runner/ itself rather than a copy of it.
REPO = Path(__file__).resolve().parent.parent

RUNNER_DIR = "/opt/agent-runner"

# The model proxy as build.py builds and stages it (static, for any Linux),
# relative to the repository root. Staged outside target/, which the SDK
# ignores as Docker does (.dockerignore); the template's tests point at
# another file.
MODEL_PROXY_BUILD = os.environ.get(
    "SANDSTORM_MODEL_PROXY_BUILD", "template/bin/sandstorm-model-proxy"
)
MODEL_PROXY = "/usr/local/bin/sandstorm-model-proxy"

template = (
    Template(file_context_path=REPO)
    .from_node_image("24-bookworm-slim")
    .apt_install(
        ["git", "ripgrep", "curl", "python3", "ca-certificates"],
        no_install_recommends=True,
    )
    .run_cmd(f"mkdir -p {RUNNER_DIR} && chown user:user {RUNNER_DIR}", user="root")
    .copy(
        ["runner/package.json", "runner/package-lock.json"],
        f"{RUNNER_DIR}/",
        user="user",
    )
    # `npm ci` installs exactly the lock, and fails if package.json and the
    # lock disagree. Never --omit=optional: the SDK's CLI binary is an
    # optional dependency.
    .run_cmd(
        f"cd {RUNNER_DIR} && npm ci --no-audit --no-fund && npm cache clean --force",
        user="user",
    )
    # Fails the build, not a request, if a tool is missing.
    .run_cmd(
        f"cd {RUNNER_DIR} && npm ls @anthropic-ai/claude-agent-sdk"
        " && node --version && git --version && rg --version"
        " && curl --version && python3 --version"
    )
    # Root's own, readable and runnable by all: it holds no secret, the
    # key comes in its environment when it starts.
    .copy(MODEL_PROXY_BUILD, MODEL_PROXY, user="root", mode=0o755)
    # No way to root for the agent: no sudo, no group that grants it, and
    # no password that `su` would take.
    .run_cmd(
        "(gpasswd -d user sudo || true)"
        " && rm -f /etc/sudoers.d/user /etc/sudoers.d/90-user"
        " && (apt-get purge -y --auto-remove sudo || true)"
        " && passwd -l root"
        f" && test -x {MODEL_PROXY}",
        user="root",
    )
    # Fails the build if `user` can still become root.
    .run_cmd(
        "if sudo -n true 2>/dev/null || su -c true root </dev/null 2>/dev/null;"
        " then echo 'user can become root' >&2; exit 1; fi",
        user="user",
    )
)

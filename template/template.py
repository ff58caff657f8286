"""Sandstorm's E2B template: the machine every E2B sandbox starts as.

Node 24, git, ripgrep, curl and python3, and the agent runner's
dependencies installed with `npm ci` from runner/package-lock.json at
/opt/agent-runner, so the Agent SDK version is the one pinned in
runner/package.json and nowhere else. The server uploads runner.mjs and
agent_config.json into that folder for each request, which is why it
belongs to the sandbox user, `user`.

Built with E2B's template SDK; see build.py and README.md beside this file.
"""

from pathlib import Path

from e2b import Template

# The repository root. Copies are relative to it, so the template reads
# runner/ itself rather than a copy of it.
REPO = Path(__file__).resolve().parent.parent

RUNNER_DIR = "/opt/agent-runner"

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
)

#!/bin/sh
# Vercel's Rust runtime runs this script before it builds each function with
# `cargo build --bin <function> --release`, a command it gives no --features.
# The functions need the `vercel` feature (api/*.rs are `[[bin]]`s with
# required-features = ["vercel"]), so on Vercel's build machine (VERCEL=1)
# this makes it a default feature of that one build. Elsewhere it does
# nothing: build the functions yourself with `cargo build --features vercel`.
set -eu
cd "$(dirname "$0")"
if [ "${VERCEL:-}" = "1" ]; then
  sed -i 's/^default = \[\]$/default = ["vercel"]/' Cargo.toml
  grep -q '^default = \["vercel"\]$' Cargo.toml || {
    echo "build.sh: could not enable the vercel feature in Cargo.toml" >&2
    exit 1
  }
fi

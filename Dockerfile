# `ds serve` in a container: the HTTP API on port 8000.
#
#   docker build -t sandstorm .
#   docker run -p 8000:8000 --env-file .env sandstorm
#
# Queries run in E2B sandboxes (SANDSTORM_SANDBOX=e2b), so the image needs
# no Node.js and no bubblewrap: set E2B_API_KEY and ANTHROPIC_API_KEY (or
# another provider's keys). See docs/deploy-docker.md.

# Build: the same toolchain as rust-toolchain.toml.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# The whole context: Cargo reads every workspace member's manifest (crates/)
# even to build one binary, and `ds` compiles crates/e2b-wire.
COPY . .
RUN cargo build --release --locked --bin ds

# Run: glibc and CA certificates (the E2B and model APIs are HTTPS), nothing
# else.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --no-create-home sandstorm
COPY --from=build /src/target/release/ds /usr/local/bin/ds
# sandstorm.json, if you have one, goes here (or name it in SANDSTORM_CONFIG).
WORKDIR /app
USER sandstorm
ENV SANDSTORM_SANDBOX=e2b
EXPOSE 8000
CMD ["ds", "serve", "--host", "0.0.0.0", "--port", "8000"]

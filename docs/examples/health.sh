#!/usr/bin/env bash
# GET /health: is the server up, and which version is it?
set -euo pipefail
curl -sS --fail-with-body "${SANDSTORM_URL:-http://localhost:8000}/health"

#!/usr/bin/env bash
# POST /query: upload data.csv, ask for report.md back, print every event.
set -euo pipefail
SANDSTORM_URL="${SANDSTORM_URL:-http://localhost:8000}"
auth=()
if [ -n "${SANDSTORM_API_TOKEN:-}" ]; then
  auth=(-H "Authorization: Bearer $SANDSTORM_API_TOKEN")
fi

curl -sS -N --fail-with-body "$SANDSTORM_URL/query" \
  "${auth[@]}" \
  -H "Content-Type: application/json" \
  -d '{
    "prompt": "Summarize data.csv in report.md",
    "files": {"data.csv": "region,sales\nnorth,10\nsouth,7\n"},
    "outputs": ["report.md"]
  }'

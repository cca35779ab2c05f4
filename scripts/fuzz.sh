#!/usr/bin/env bash
# make fuzz: schemathesis against a live `dtlab serve` on loopback; bounded by case count, stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXAMPLES=${FUZZ_EXAMPLES:-600}   # per operation; /plan and /observe take inputs -> >= 1,000 cases
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DTLAB_API_TOKEN=fuzz-$RANDOM$RANDOM
.venv/bin/dtlab serve --cluster examples/cluster-hetero.yaml --port "$PORT" >/tmp/dtlab-fuzz-server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
fuzz() {
  .venv/bin/schemathesis run "http://127.0.0.1:$PORT/openapi.json" --checks all -D all \
    -H "Authorization: Bearer $DTLAB_API_TOKEN" --hypothesis-max-examples "$EXAMPLES" \
    --hypothesis-deadline None --hypothesis-seed 1 --request-timeout 60000 "$@"
}
# /plan's auth is optional by design (dry runs open, acting needs the token): schemathesis'
# ignored_auth check cannot express that, so /plan runs without it and everything else with it.
fuzz --exclude-path /plan "$@"
fuzz --include-path /plan --exclude-checks ignored_auth "$@"

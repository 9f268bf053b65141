#!/usr/bin/env bash
# schemathesis (from PyPI, into its own virtual environment on first use) with
# every check against a running `detris serve` and the /openapi.json it serves,
# for a bounded time. Fails on any finding, a schema-valid request refused included.
#   tests/schemathesis/run.sh PATH/TO/detris [SECONDS]   (.ci/run calls it)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?usage: $0 PATH/TO/detris [SECONDS]}
secs=${2:-120}
venv="${DETRIS_HOME:-$HOME/.cache/detris}/schemathesis-4.32.5"
if [ ! -x "$venv/bin/st" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi
log=$(mktemp)
# schemathesis keeps a cache in its working directory: a scratch one, not the checkout.
work=$(mktemp -d)
hooks="$PWD/tests/schemathesis"
# The shipped model: no fixture needed.
"$bin" serve --device cpu --bind 127.0.0.1:0 2>"$log" &
pid=$!
# Stop the server on the way out, keeping schemathesis's exit status.
stop() {
  local rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$log" "$work"
  exit "$rc"
}
trap stop EXIT
addr=
for _ in $(seq 600); do
  addr=$(grep -o 'http://[0-9.]*:[0-9]*' "$log" | head -1 || true)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "detris serve exited:"; cat "$log"; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "detris serve printed no address in 60 s"; cat "$log"; exit 1; }
echo "schemathesis: $addr/openapi.json, every check, $secs s"
cd "$work"
PYTHONPATH="$hooks${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=hooks \
  "$venv/bin/st" run "$addr/openapi.json" --checks all --max-time "$secs" --workers 2 \
  --request-timeout 60 --max-response-time 30 --no-color

#!/usr/bin/env bash
# The wheel carries the whole platform: build it with `pip wheel .`, install it into a new
# venv OUTSIDE the checkout, then, from a folder that is not the checkout, list the
# services and start the OMS (`brokercore service oms`) against the local Postgres, Redis
# and Kafka, and ask it one question over HTTP. Exit 0 only if all of that worked.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/brokercore-wheel.XXXXXX")"
oms=""
cleanup() {
    if [[ -n "$oms" ]]; then kill "$oms" 2>/dev/null || true; wait "$oms" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf 'wheel-check: %s\n' "$*"; }

log "building the wheel (pip wheel .)"
"$python" -m pip wheel --quiet --no-deps --config-settings=build-dir="$work/build" \
    --wheel-dir "$work/dist" "$repo"
wheel="$(ls "$work"/dist/brokercore-*.whl)"
log "built $(basename "$wheel")"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "${wheel}[kafka,services]"
cd "$work"                                 # nothing of the checkout is importable from here
"$work/venv/bin/python" -c 'import brokercore, sys; sys.exit("imported from the checkout"
    if "'"$repo"'" in brokercore.__file__ else 0)'
"$work/venv/bin/brokercore" service --list

port="$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BROKERCORE_DEV_MODE=1 BROKERCORE_INSTRUMENTS="$repo/config/instruments.toml" \
    "$work/venv/bin/brokercore" service oms --port "$port" >"$work/oms.log" 2>&1 &
oms=$!
for _ in $(seq 1 120); do
    if answer="$(curl -s -X POST -H 'Content-Type: application/json' -d '{}' \
                 "http://127.0.0.1:$port/api/v1/orders")" && [[ -n "$answer" ]]; then
        break
    fi
    if ! kill -0 "$oms" 2>/dev/null; then cat "$work/oms.log"; log "the OMS exited"; exit 1; fi
    sleep 0.5
done
log "POST /api/v1/orders without a token -> $answer"
[[ "$answer" == *'"UNAUTHENTICATED"'* ]] || { cat "$work/oms.log"; log "unexpected answer"; exit 1; }
log "ok: the installed wheel lists its services and serves the OMS"

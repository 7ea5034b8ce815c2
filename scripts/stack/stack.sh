#!/usr/bin/env bash
# The whole development stack on loopback: Postgres, Redis, Kafka, one engine daemon per
# shard, the OMS, query, WebSocket and notification APIs, and the settlement, projector
# and notifier consumers, and the reconciler (plus its dead-letter push retries when
# BROKERCORE_PUSH_URL names a push provider).
#
#   scripts/stack/stack.sh up       start what is not running (idempotent), print URLs + a token
#   scripts/stack/stack.sh down     stop everything, servers included
#   scripts/stack/stack.sh status
#
# Processes log to .stack/logs/<name>.log (pids in .stack/). Dev mode is on: the OMS
# accepts tokens signed with the public development secret (brokercore token --user).
# Settings: BROKERCORE_SHARDS (default 2), BROKERCORE_PORT_BASE (default 8000: the OMS;
# +1 query, +2 WebSocket gateway, +3 notification preferences and alerts).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
py="$repo/.venv/bin/python"
state="$repo/.stack"
shards="${BROKERCORE_SHARDS:-2}"
base="${BROKERCORE_PORT_BASE:-8000}"
oms_port=$base query_port=$((base + 1)) ws_port=$((base + 2)) notify_port=$((base + 3))

export BROKERCORE_DEV_MODE=1
export BROKERCORE_SHARDS="$shards"
export BROKERCORE_DATABASE_URL="${BROKERCORE_DATABASE_URL:-$(scripts/postgres/postgres.sh url)}"
export BROKERCORE_REDIS_URL="${BROKERCORE_REDIS_URL:-$(scripts/redis/redis.sh url)}"

log() { echo "stack: $*" >&2; }
source "$repo/scripts/lib/process.sh"

up_process() { alive "$(cat "$state/$1.pid" 2>/dev/null)"; }      # by name

start_process() {           # name, command...
    local name="$1"; shift
    if up_process "$name"; then log "$name already running (pid $(cat "$state/$name.pid"))"; return; fi
    setsid "$@" >> "$state/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$state/$name.pid"
    log "$name started (pid $!, log .stack/logs/$name.log)"
}

stop_process() { stop_pid_file "$state/$1.pid" 10 "$1"; }

processes() {
    for shard in $(seq 0 $((shards - 1))); do echo "engine-$shard"; done
    echo oms query ws notifier-api settlement projector notifier reconciler
    if [ -n "${BROKERCORE_PUSH_URL:-}" ] || [ -e "$state/push-retry.pid" ]; then echo push-retry; fi
}

start_api() {               # name, module, port
    start_process "$1" "$py" -m uvicorn "$2" --host 127.0.0.1 --port "$3" \
        --loop uvloop --http httptools --log-level warning
}

wait_for_port() {           # name, port
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return
        up_process "$1" || { log "$1 did not start; see .stack/logs/$1.log"; exit 1; }
        sleep 0.2
    done
    log "$1 is not listening on port $2; see .stack/logs/$1.log"; exit 1
}

up() {
    mkdir -p "$state/logs"
    scripts/postgres/postgres.sh start
    scripts/redis/redis.sh start
    scripts/kafka/kafka.sh start
    "$py" -m brokercore.migrations
    "$py" -m brokercore.demo
    for shard in $(seq 0 $((shards - 1))); do
        start_process "engine-$shard" "$py" -m brokercore.cli engine --shard "$shard" --shards "$shards"
    done
    start_api oms services.oms.app:app "$oms_port"
    start_api query services.query.app:app "$query_port"
    start_api ws services.ws.app:app "$ws_port"
    start_api notifier-api services.notifier.app:app "$notify_port"
    start_process settlement "$py" -m services.settlement
    start_process projector "$py" -m services.projector
    start_process notifier "$py" -m services.notifier
    start_process reconciler "$py" -m services.reconciler
    if [ -n "${BROKERCORE_PUSH_URL:-}" ]; then      # pushes (and their dead letters) need one
        start_process push-retry "$py" -m services.reconciler --notifications
    fi
    wait_for_port oms "$oms_port"
    wait_for_port query "$query_port"
    wait_for_port ws "$ws_port"
    wait_for_port notifier-api "$notify_port"
    local token
    token="$("$py" -m brokercore.cli token --user alice --ttl 86400)"
    cat <<TEXT

brokercore is up (dev mode; logs in .stack/logs):
  OMS        http://127.0.0.1:$oms_port/api/v1/orders           (POST, DELETE)
  query      http://127.0.0.1:$query_port/api/v1/orders  /api/v1/portfolio  /api/v1/marketdata/RELIANCE
  WebSocket  ws://127.0.0.1:$ws_port/ws/v1/orders?token=\$TOKEN
  alerts     http://127.0.0.1:$notify_port/api/v1/alerts  /api/v1/notifications/preferences
  Kafka      127.0.0.1:19092   Postgres $(scripts/postgres/postgres.sh url)   Redis $(scripts/redis/redis.sh url)
  token for the demo user alice (24 h):
    export TOKEN=$token
  try:
    curl -s -X POST http://127.0.0.1:$oms_port/api/v1/orders -H "Authorization: Bearer \$TOKEN" \\
      -H 'Content-Type: application/json' -d '{"symbol":"RELIANCE","side":"BUY","type":"LIMIT",
      "quantity":10,"price":"15000.00","timeInForce":"DAY","idempotencyKey":"try-1"}'
    curl -s http://127.0.0.1:$query_port/api/v1/portfolio -H "Authorization: Bearer \$TOKEN"
TEXT
}

down() {
    for name in $(processes); do stop_process "$name"; done
    scripts/kafka/kafka.sh stop
    scripts/redis/redis.sh stop
    scripts/postgres/postgres.sh stop
}

status() {
    local code=0
    for name in $(processes); do
        if up_process "$name"; then log "$name running (pid $(cat "$state/$name.pid"))"
        else log "$name not running"; code=1; fi
    done
    scripts/kafka/kafka.sh status || code=1
    scripts/redis/redis.sh status || code=1
    scripts/postgres/postgres.sh status || code=1
    return $code
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The whole development stack on loopback: Postgres, Redis, Kafka, one engine daemon per
# shard, the OMS, query, WebSocket and notification APIs, and the settlement, projector
# and notifier consumers, and the reconciler (plus its dead-letter push retries when
# BROKERCORE_PUSH_URL names a push provider).
#
#   scripts/stack/stack.sh up       start what is not running (idempotent), wait until
#                                   every component is ready, print URLs + a token; exit 1
#                                   naming the component and its log if one is not
#   scripts/stack/stack.sh down     stop everything, servers included
#   scripts/stack/stack.sh status   each component running and ready, or why not; exit 1
#                                   unless all are
#
# Processes log to $state/logs/<name>.log (pids in $state). Dev mode is on: the OMS
# accepts tokens signed with the public development secret (brokercore token --user).
# Settings (environment):
#   BROKERCORE_STACK_STATE  pids and logs (default .stack/ in the repository)
#   BROKERCORE_PORT_BASE    the OMS's port (default 8000); +1 query, +2 WebSocket gateway,
#                           +3 notification preferences and alerts
#   BROKERCORE_PG_PORT, BROKERCORE_PG_STATE, BROKERCORE_REDIS_PORT, BROKERCORE_REDIS_STATE,
#   BROKERCORE_KAFKA_PORT, BROKERCORE_KAFKA_STATE   the servers' (scripts/{postgres,redis,
#                           kafka}/*.sh), which the processes are pointed at
#   BROKERCORE_SHARDS       engine daemons, one per shard (default 2)
#   BROKERCORE_CALENDAR     always-open (the default here: orders trade at any hour) or
#                           exchange (the sessions in config/instruments.toml)
#   BROKERCORE_STACK_WAIT   seconds each component may take to be ready (default 60)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
py="$repo/.venv/bin/python"
state="${BROKERCORE_STACK_STATE:-$repo/.stack}"
shards="${BROKERCORE_SHARDS:-2}"
base="${BROKERCORE_PORT_BASE:-8000}"
wait_s="${BROKERCORE_STACK_WAIT:-60}"
oms_port=$base query_port=$((base + 1)) ws_port=$((base + 2)) notify_port=$((base + 3))

export BROKERCORE_DEV_MODE=1
export BROKERCORE_SHARDS="$shards"
export BROKERCORE_CALENDAR="${BROKERCORE_CALENDAR:-always-open}"
export BROKERCORE_KAFKA_BOOTSTRAP="${BROKERCORE_KAFKA_BOOTSTRAP:-127.0.0.1:${BROKERCORE_KAFKA_PORT:-19092}}"
export BROKERCORE_DATABASE_URL="${BROKERCORE_DATABASE_URL:-$(scripts/postgres/postgres.sh url)}"
export BROKERCORE_REDIS_URL="${BROKERCORE_REDIS_URL:-$(scripts/redis/redis.sh url)}"

log() { echo "stack: $*" >&2; }
source "$repo/scripts/lib/process.sh"

pid_of() { cat "$state/$1.pid" 2>/dev/null || true; }
up_process() { alive "$(pid_of "$1")"; }       # by name
log_of() { echo "$state/logs/$1.log"; }

start_process() {           # name, command...
    local name="$1"; shift
    if up_process "$name"; then log "$name already running (pid $(pid_of "$name"))"; return; fi
    touch "$(log_of "$name")"
    # Readiness is read from what the log says after this point (it is appended to).
    stat -c %s "$(log_of "$name")" > "$state/$name.since"
    setsid "$@" >> "$(log_of "$name")" 2>&1 < /dev/null &
    echo $! > "$state/$name.pid"
    log "$name started (pid $!, log $(log_of "$name"))"
}

stop_process() { stop_pid_file "$state/$1.pid" 10 "$1"; rm -f "$state/$1.since"; }

processes() {
    for shard in $(seq 0 $((shards - 1))); do echo "engine-$shard"; done
    printf '%s\n' oms query ws notifier-api settlement projector notifier reconciler
    if [ -n "${BROKERCORE_PUSH_URL:-}" ] || [ -e "$state/push-retry.pid" ]; then echo push-retry; fi
}

start_api() {               # name, port
    start_process "$1" "$py" -m brokercore.cli service "$1" --port "$2"
}

since_start() {             # name: its log since it was started
    tail -c "+$(($(cat "$state/$1.since" 2>/dev/null || echo 0) + 1))" "$(log_of "$1")" 2>/dev/null
}

answers_http() {            # port: an HTTP answer (any status) to a request within 5 s
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 && head -c 5 <&3' _ "$1" \
        2>/dev/null | grep -q '^HTTP/'
}

# ready NAME: whether the running component NAME does its job; prints what shows it (or
# what it lacks). The log lines relied on, written since the process started:
#   engine-K               brokercore/daemon.py: "engine shard K: active from input offset
#                          ..." or "... standby: waiting for the lease ..."; not ready once
#                          a later "failed: ..." or "lost the lease" follows
#   settlement, projector  brokercore/pgconsumer.py: "<name>: events partitions [...] from
#                          offsets [...]" (assigned, from the offsets stored in Postgres)
# The notifier's group assignment is asked of Kafka (group_ready.py); the HTTP apps must
# answer a request; the reconciler, silent while all is well, must have stayed up 2 s.
ready() {
    local name="$1" line
    case "$name" in
        engine-*)
            line="$(since_start "$name" | grep -Eo "(active from input offset|standby: waiting for the lease|failed: |lost the lease).*" | tail -1 || true)"
            echo "${line:-no 'active' or 'standby' line yet}"
            [[ "$line" == active* || "$line" == standby* ]] ;;
        settlement|projector)
            line="$(since_start "$name" | grep -Eo "partitions \[[0-9, ]*\] from offsets \[[0-9, ]*\]" | tail -1 || true)"
            echo "${line:-no partitions assigned yet}"
            [[ -n "$line" ]] ;;
        notifier)
            "$py" "$repo/scripts/stack/group_ready.py" notifier ;;
        oms|query|ws|notifier-api)
            local port
            case "$name" in
                oms) port=$oms_port ;; query) port=$query_port ;;
                ws) port=$ws_port ;; notifier-api) port=$notify_port ;;
            esac
            if answers_http "$port"; then echo "answers HTTP on 127.0.0.1:$port"
            else echo "no HTTP answer on 127.0.0.1:$port"; return 1; fi ;;
        *)
            local seconds
            seconds="$(ps -o etimes= -p "$(pid_of "$name")" 2>/dev/null | tr -d ' ')"
            echo "up ${seconds:-0} s"
            (( ${seconds:-0} >= 2 )) ;;
    esac
}

# check NAME: prints what shows NAME running and ready (see ready), or logs why it is not
# and returns 1.
check() {
    local name="$1" pid detail
    pid="$(pid_of "$name")"
    if ! alive "$pid"; then log "$name not running"; return 1; fi
    case "$(proc_state "$pid")" in
        T|t) log "$name not running: stopped (pid $pid)"; return 1 ;;
    esac
    if ! detail="$(ready "$name")"; then log "$name not ready (pid $pid): $detail"; return 1; fi
    echo "$detail"
}

# Every component ready within wait_s seconds, or exit 1 naming the ones that are not.
wait_ready() {
    local deadline=$((SECONDS + wait_s)) name detail pending=() still
    mapfile -t pending < <(processes)
    while true; do
        still=()
        for name in "${pending[@]}"; do
            if ! up_process "$name"; then
                log "$name exited; see $(log_of "$name"):"
                since_start "$name" | tail -n 20 >&2
                fail
            fi
            if detail="$(ready "$name")"; then log "$name ready ($detail)"; else still+=("$name"); fi
        done
        (( ${#still[@]} )) || break
        pending=("${still[@]}")
        if (( SECONDS >= deadline )); then
            for name in "${pending[@]}"; do
                log "$name not ready after $wait_s s ($(ready "$name" || true)); see $(log_of "$name")"
            done
            fail
        fi
        sleep 0.5
    done
    # Still so a moment later: none died meanwhile (a daemon that failed just after
    # saying "standby", as on a brand-new broker, is caught here).
    sleep 2
    for name in $(processes); do check "$name" > /dev/null || fail; done
}

fail() { log "brokercore is NOT up; \`make down\` stops what started"; exit 1; }

up() {
    mkdir -p "$state/logs"
    scripts/postgres/postgres.sh start
    scripts/redis/redis.sh start
    scripts/kafka/kafka.sh start
    "$py" -m brokercore.db.migrations
    "$py" -m brokercore.db.demo
    for shard in $(seq 0 $((shards - 1))); do
        start_process "engine-$shard" "$py" -m brokercore.cli engine --shard "$shard" --shards "$shards"
    done
    start_api oms "$oms_port"
    start_api query "$query_port"
    start_api ws "$ws_port"
    start_api notifier-api "$notify_port"
    start_process settlement "$py" -m brokercore.cli service settlement
    start_process projector "$py" -m brokercore.cli service projector
    start_process notifier "$py" -m brokercore.cli service notifier
    start_process reconciler "$py" -m brokercore.cli service reconciler
    if [ -n "${BROKERCORE_PUSH_URL:-}" ]; then      # pushes (and their dead letters) need one
        start_process push-retry "$py" -m brokercore.cli service reconciler --notifications
    fi
    wait_ready
    local token calendar
    token="$("$py" -m brokercore.cli token --user alice --ttl 86400)"
    if [[ "$BROKERCORE_CALENDAR" == always-open ]]; then
        calendar="always-open: orders trade at any hour (BROKERCORE_CALENDAR=exchange for the exchange's sessions)"
    else
        calendar="$BROKERCORE_CALENDAR: the sessions in config/instruments.toml (outside them: MARKET_CLOSED)"
    fi
    cat <<TEXT

brokercore is up (dev mode; logs in $state/logs):
  calendar: $calendar
  OMS        http://127.0.0.1:$oms_port/api/v1/orders           (POST, DELETE)
  query      http://127.0.0.1:$query_port/api/v1/orders  /api/v1/portfolio  /api/v1/marketdata/RELIANCE
  WebSocket  ws://127.0.0.1:$ws_port/ws/v1/orders?token=\$TOKEN
  alerts     http://127.0.0.1:$notify_port/api/v1/alerts  /api/v1/notifications/preferences
  Kafka      $BROKERCORE_KAFKA_BOOTSTRAP   Postgres $BROKERCORE_DATABASE_URL   Redis $BROKERCORE_REDIS_URL
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
    local code=0 name detail
    for name in $(processes); do
        if detail="$(check "$name")"; then log "$name running (pid $(pid_of "$name"); $detail)"
        else code=1; fi
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

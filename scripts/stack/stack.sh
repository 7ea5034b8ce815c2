#!/usr/bin/env bash
# The whole development stack on loopback: Postgres, Redis, Kafka, one engine daemon per
# shard, the OMS, query, WebSocket, notification, accounts and funds APIs (several
# processes of the first three) behind the edge (nginx, the one entry point), and the settlement, projector and
# notifier consumers, the reconciler (plus its dead-letter push retries when
# BROKERCORE_PUSH_URL names a push provider) and the session scheduler.
#
#   scripts/stack/stack.sh up       start what is not running (idempotent), wait until
#                                   every component is ready, print URLs + a token; exit 1
#                                   naming the component and its log if one is not
#   scripts/stack/stack.sh demo     up, then `brokercore simulate` in the background (log
#                                   $state/logs/simulate.log, pid $state/simulate.pid;
#                                   BROKERCORE_SIM_TRADERS, BROKERCORE_SIM_RATE), then the
#                                   web app's URL and a login to watch it with
#   scripts/stack/stack.sh down     stop everything (the simulator, supervisord and the
#                                   servers included)
#   scripts/stack/stack.sh status   each process, its supervisor state and whether it is
#                                   ready, and the servers; exit 1 unless all are
#
# The servers and the edge run from their own scripts (scripts/{postgres,redis,kafka}/*.sh,
# scripts/edge/nginx.sh: started once every API process is ready). The other
# processes run under supervisord, which restarts one that exits (autorestart): up writes
# $state/supervisord.conf (one [program:NAME] a process) and starts supervisord on a unix
# socket in $state, no TCP port; supervisorctl drives it, e.g.
#   .venv/bin/supervisorctl -c .stack/supervisord.conf status|restart NAME|tail -f NAME
# Processes log to $state/logs/<name>.log, supervisord to $state/logs/supervisord.log.
# Dev mode is on: the OMS accepts tokens signed with the public development secret
# (brokercore token --user), besides the accounts service's own (every service verifies
# those with its JWKS: BROKERCORE_JWKS_URL, set here to the accounts process's).
# Settings (environment; the processes get those supervisord started with, so change
# them across a `down`):
#   BROKERCORE_STACK_STATE  supervisord's socket and configuration, logs (default .stack/
#                           in the repository)
#   BROKERCORE_EDGE_PORT    the edge, the stack's one entry point (default base+80: 8080),
#   BROKERCORE_EDGE_STATE   and its folder (default $BROKERCORE_STACK_STATE/edge, so that a
#                           stack of its own has an edge of its own; scripts/edge/nginx.sh)
#   BROKERCORE_OMS_PROCESSES, BROKERCORE_QUERY_PROCESSES, BROKERCORE_WS_PROCESSES
#                           processes of each API kind behind the edge (default 2 each;
#                           supervisord's programs oms-0, oms-1, query-0, ..., ws-1)
#   BROKERCORE_PORT_BASE    where the API processes listen (default 8000), each on a port of
#                           its own (scripts/lib/ports.sh): base+0 oms-0, +1 query-0, +2 ws-0,
#                           +3 notifier-api, then +4*i+{0,1,2} process i of oms, query, ws
#                           (base+4 oms-1, +5 query-1, +6 ws-1); the first of each kind keeps
#                           the port it had when there was one of each
#   BROKERCORE_REPLICA_URL  the read replica the query and gateway processes read (default
#                           postgres.sh replica-url's, started with the primary; empty: none)
#   BROKERCORE_PG_REPLICA_PORT, BROKERCORE_PG_REPLICA_STATE   the replica's (postgres.sh)
#   BROKERCORE_PG_PORT, BROKERCORE_PG_STATE, BROKERCORE_REDIS_PORT, BROKERCORE_REDIS_STATE,
#   BROKERCORE_KAFKA_PORT, BROKERCORE_KAFKA_STATE   the servers' (scripts/{postgres,redis,
#                           kafka}/*.sh), which the processes are pointed at
#   BROKERCORE_SHARDS       engine daemons, one per shard (default 2)
#   BROKERCORE_CALENDAR     always-open (the default here: orders trade at any hour) or
#                           exchange (the sessions in config/instruments.toml)
#   BROKERCORE_DAY          calendar (the default: the scheduler follows the calendar, and
#                           always-open has no pre-open or close) or compressed (`make up
#                           DAY=compressed`: a 6-minute day, pre-open 60 s, the uncross,
#                           4 min trading, close, 1 min closed, over and over)
#   BROKERCORE_STACK_WAIT   seconds each component may take to be ready (default 60)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
py="$repo/.venv/bin/python"
state="${BROKERCORE_STACK_STATE:-$repo/.stack}"
shards="${BROKERCORE_SHARDS:-2}"
wait_s="${BROKERCORE_STACK_WAIT:-60}"
export BROKERCORE_EDGE_STATE="${BROKERCORE_EDGE_STATE:-$state/edge}"
export BROKERCORE_OMS_PROCESSES="${BROKERCORE_OMS_PROCESSES:-2}"
export BROKERCORE_QUERY_PROCESSES="${BROKERCORE_QUERY_PROCESSES:-2}"
export BROKERCORE_WS_PROCESSES="${BROKERCORE_WS_PROCESSES:-2}"

export BROKERCORE_DEV_MODE=1
export BROKERCORE_SHARDS="$shards"
export BROKERCORE_CALENDAR="${BROKERCORE_CALENDAR:-always-open}"
export BROKERCORE_DAY="${BROKERCORE_DAY:-calendar}"
# BROKERCORE_DAY_SECONDS="PRE_OPEN,UNCROSS_WINDOW,TRADING,CLOSED" shortens a compressed day
# (the scheduler and the OMS read it).
export BROKERCORE_KAFKA_BOOTSTRAP="${BROKERCORE_KAFKA_BOOTSTRAP:-127.0.0.1:${BROKERCORE_KAFKA_PORT:-19092}}"
export BROKERCORE_DATABASE_URL="${BROKERCORE_DATABASE_URL:-$(scripts/postgres/postgres.sh url)}"
export BROKERCORE_REDIS_URL="${BROKERCORE_REDIS_URL:-$(scripts/redis/redis.sh url)}"
# The query and gateway processes read the replica (postgres.sh replica-*); set empty: none.
export BROKERCORE_REPLICA_URL="${BROKERCORE_REPLICA_URL-$(scripts/postgres/postgres.sh replica-url)}"

log() { echo "stack: $*" >&2; }
source "$repo/scripts/lib/process.sh"           # proc_state, alive
source "$repo/scripts/lib/ports.sh"             # api_port
edge="$repo/scripts/edge/nginx.sh"
export BROKERCORE_JWKS_URL="${BROKERCORE_JWKS_URL:-http://127.0.0.1:$(api_port accounts 0)/api/v1/auth/jwks}"
edge_url="$("$edge" url)"
ws_url="ws://${edge_url#http://}"

conf="$state/supervisord.conf"
log_of() { echo "$state/logs/$1.log"; }
ctl() { "$repo/.venv/bin/supervisorctl" -c "$conf" "$@"; }
supervised() { ctl pid > /dev/null 2>&1; }      # supervisord is up and answers
processes() { sed -n 's/^\[program:\(.*\)\]$/\1/p' "$conf" 2>/dev/null; }   # configured

# program NAME COMMAND...: the [program:NAME] section that runs COMMAND under supervisord,
# through logged.sh, which notes where its log stands first (for since_start). A process
# that exits is started again; stopping it is SIGTERM, then SIGKILL after 10 s. One that
# does not last 5 s is tried 3 more times, then left FATAL.
program() {
    local name="$1" command
    shift
    command="$(printf '%q ' "$repo/scripts/stack/logged.sh" "$(log_of "$name")" \
        "$state/$name.since" "$@")"
    command="${command% }"
    cat <<CONF

[program:$name]
command=$(escape "$command")
directory=$(escape "$repo")
autorestart=true
startsecs=5
startretries=3
stopwaitsecs=10
redirect_stderr=true
stdout_logfile=$(escape "$(log_of "$name")")
stdout_logfile_maxbytes=0
CONF
}

escape() { echo "${1//%/%%}"; }                 # supervisord expands %(name)s in values

# api_programs KIND COUNT: the programs KIND-0 .. KIND-(COUNT-1), each `brokercore service
# KIND` on its port (scripts/lib/ports.sh).
api_programs() {
    local i
    for ((i = 0; i < $2; i++)); do
        program "$1-$i" "$py" -m brokercore.cli service "$1" --port "$(api_port "$1" "$i")"
    done
}

write_conf() {
    local shard
    {
        cat <<CONF
; Written by scripts/stack/stack.sh up, on every up: the stack's processes (the servers
; run from their own scripts). supervisorctl -c $(escape "$conf") status|restart NAME|...

[unix_http_server]
file=$(escape "$state/supervisor.sock")
chmod=0700

[supervisord]
logfile=$(escape "$state/logs/supervisord.log")
logfile_maxbytes=0
pidfile=$(escape "$state/supervisord.pid")
childlogdir=$(escape "$state/logs")

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$(escape "$state/supervisor.sock")
CONF
        for shard in $(seq 0 $((shards - 1))); do
            program "engine-$shard" "$py" -m brokercore.cli engine --shard "$shard" --shards "$shards"
        done
        api_programs oms "$BROKERCORE_OMS_PROCESSES"
        api_programs query "$BROKERCORE_QUERY_PROCESSES"
        api_programs ws "$BROKERCORE_WS_PROCESSES"
        program notifier-api "$py" -m brokercore.cli service notifier-api \
            --port "$(api_port notifier-api 0)"
        program accounts "$py" -m brokercore.cli service accounts --port "$(api_port accounts 0)"
        program funds "$py" -m brokercore.cli service funds --port "$(api_port funds 0)"
        program settlement "$py" -m brokercore.cli service settlement
        program projector "$py" -m brokercore.cli service projector
        program triggers "$py" -m brokercore.cli service triggers  # GTTs, bracket legs (docs/gtt.md, brackets.md)
        program notifier "$py" -m brokercore.cli service notifier
        program postback-retry "$py" -m brokercore.cli service reconciler --postbacks
        program reconciler "$py" -m brokercore.cli service reconciler
        program scheduler "$py" -m brokercore.cli service scheduler  # BROKERCORE_DAY, BROKERCORE_DAY_SECONDS
        program monitor "$py" -m brokercore.cli service monitor  # consumer lag, WARNING past 1,000
        if [ -n "${BROKERCORE_PUSH_URL:-}" ]; then  # pushes (and their dead letters) need one
            program push-retry "$py" -m brokercore.cli service reconciler --notifications
        fi
    } > "$conf.new"
    mv "$conf.new" "$conf"
}

# read_states: what supervisord says of each process (states.py), in sup_state[NAME]
# (STARTING, RUNNING, BACKOFF, STOPPED, EXITED, FATAL...), sup_pid[NAME] (0 when none) and
# sup_info[NAME] (its words: "pid 123, uptime 0:01:02", "Exited too quickly...").
declare -A sup_state=() sup_pid=() sup_info=()
read_states() {
    local name word number rest
    sup_state=() sup_pid=() sup_info=()
    while read -r name word number rest; do
        sup_state[$name]="$word" sup_pid[$name]="$number" sup_info[$name]="$rest"
    done < <("$py" "$repo/scripts/stack/states.py" "$state/supervisor.sock" 2> /dev/null || true)
}

running() { [[ "${sup_state[$1]:-}" == RUNNING || "${sup_state[$1]:-}" == STARTING ]]; }

since_start() {             # name: its log since it was started; nothing before logged.sh ran
    [[ -e "$state/$1.since" ]] || return 0
    tail -c "+$(($(cat "$state/$1.since") + 1))" "$(log_of "$1")" 2>/dev/null
}

answers_http() {            # port: an HTTP answer (any status) to a request within 5 s
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 && head -c 5 <&3' _ "$1" \
        2>/dev/null | grep -q '^HTTP/'
}

# ready NAME: whether the running component NAME does its job; prints what shows it (or
# what it lacks). The log lines relied on, written since the process started:
#   engine-K               brokercore/kafka/daemon.py: "engine shard K: active from input offset
#                          ..." or "... standby: waiting for the lease ..."; not ready once
#                          a later "failed: ..." or "lost the lease" follows
#   settlement, projector  brokercore/consumers/pg_consumer.py: "<name>: events partitions [...] from
#                          offsets [...]" (assigned, from the offsets stored in Postgres)
#   triggers               the same line (its GTT watcher is such a consumer)
# The notifier's group assignment is asked of Kafka (group_ready.py); the HTTP apps must
# answer a request; the reconciler, silent while all is well, must have stayed up 2 s.
ready() {
    local name="$1" line
    case "$name" in
        engine-*)
            line="$(since_start "$name" | grep -Eo "(active from input offset|standby: waiting for the lease|failed: |lost the lease).*" | tail -1 || true)"
            echo "${line:-no 'active' or 'standby' line yet}"
            [[ "$line" == active* || "$line" == standby* ]] ;;
        settlement|projector|triggers)
            line="$(since_start "$name" | grep -Eo "partitions \[[0-9, ]*\] from offsets \[[0-9, ]*\]" | tail -1 || true)"
            echo "${line:-no partitions assigned yet}"
            [[ -n "$line" ]] ;;
        notifier)
            "$py" "$repo/scripts/stack/group_ready.py" notifier ;;
        oms-*|query-*|ws-*|notifier-api|accounts|funds)
            local port
            case "$name" in
                notifier-api|accounts|funds) port="$(api_port "$name" 0)" ;;
                *) port="$(api_port "${name%-*}" "${name##*-}")" ;;
            esac
            if answers_http "$port"; then echo "answers HTTP on 127.0.0.1:$port"
            else echo "no HTTP answer on 127.0.0.1:$port"; return 1; fi ;;
        *)
            local seconds
            seconds="$(ps -o etimes= -p "${sup_pid[$name]:-0}" 2>/dev/null | tr -d ' ')"
            echo "up ${seconds:-0} s"
            (( ${seconds:-0} >= 2 )) ;;
    esac
}

# check NAME: prints what shows NAME running and ready (see ready), or logs why it is not
# and returns 1. Reads the states read_states read.
check() {
    local name="$1" detail
    if ! running "$name"; then
        log "$name not running: ${sup_state[$name]:-not supervised} ${sup_info[$name]:-}"; return 1
    fi
    if ! alive "${sup_pid[$name]}"; then
        log "$name not running: exited (pid ${sup_pid[$name]})"; return 1
    fi
    case "$(proc_state "${sup_pid[$name]}")" in
        T|t) log "$name not running: stopped (pid ${sup_pid[$name]})"; return 1 ;;
    esac
    if ! detail="$(ready "$name")"; then
        log "$name not ready (pid ${sup_pid[$name]}): $detail"; return 1
    fi
    echo "$detail"
}

# Every component ready within wait_s seconds, or exit 1 naming the ones that are not. A
# process that exits meanwhile fails it at once, though supervisord starts it again: each
# must be ready in the run it was first seen in (same pid).
wait_ready() {
    local deadline=$((SECONDS + wait_s)) name detail pending=() still
    local -A seen=()
    mapfile -t pending < <(processes)
    while true; do
        read_states
        still=()
        for name in "${pending[@]}"; do
            if [[ -z "${sup_state[$name]:-}" ]]; then still+=("$name"); continue; fi  # unknown
            if running "$name"; then
                if (( sup_pid[$name] )); then : "${seen[$name]:=${sup_pid[$name]}}"; fi
            elif [[ "${sup_state[$name]}" != STOPPED ]]; then
                seen[$name]=exited                  # BACKOFF, EXITED, FATAL
            fi                                      # STOPPED: supervisord starts it soon
            if [[ -n "${seen[$name]:-}" && "${seen[$name]}" != "${sup_pid[$name]:-}" ]]; then
                log "$name exited; see $(log_of "$name"):"
                tail -n 20 "$(log_of "$name")" >&2
                fail
            fi
            if [[ -n "${seen[$name]:-}" ]] && detail="$(ready "$name")"; then
                log "$name ready ($detail)"
            else
                still+=("$name")
            fi
        done
        (( ${#still[@]} )) || break
        pending=("${still[@]}")
        if (( SECONDS >= deadline )); then
            for name in "${pending[@]}"; do
                if running "$name"; then detail="$(ready "$name" || true)"
                else detail="${sup_state[$name]:-not supervised} ${sup_info[$name]:-}"; fi
                log "$name not ready after $wait_s s ($detail); see $(log_of "$name")"
            done
            fail
        fi
        sleep 0.5
    done
    # Still so a moment later, in the same run: none died meanwhile (a daemon that failed
    # just after saying "standby", as on a brand-new broker, is caught here).
    sleep 2
    read_states
    for name in $(processes); do
        check "$name" > /dev/null || fail
        if [[ "${sup_pid[$name]}" != "${seen[$name]}" ]]; then
            log "$name exited (pid ${seen[$name]}) and was started again; see $(log_of "$name")"
            fail
        fi
    done
}

fail() { log "brokercore is NOT up; \`make down\` stops what started"; exit 1; }

# Starts supervisord on a new configuration, or has the running one take the configuration
# up (adding, removing or restarting the processes it changed) and start again each process
# not RUNNING: the stopped, and those it is trying to start (so that every run wait_ready
# waits for starts now).
supervise() {
    local name again=()
    if ! supervised; then
        rm -f "$state"/*.since
        if ! "$repo/.venv/bin/supervisord" -c "$conf"; then
            log "supervisord did not start; see $state/logs/supervisord.log"; fail
        fi
        for _ in $(seq 1 40); do supervised && break; sleep 0.25; done
        if ! supervised; then
            log "supervisord does not answer on $state/supervisor.sock; see $state/logs/supervisord.log"
            fail
        fi
        log "supervisord started (pid $(ctl pid), $conf); processes log to $state/logs"
        return
    fi
    ctl update >&2
    read_states
    for name in $(processes); do
        if [[ "${sup_state[$name]:-}" == RUNNING ]]; then
            log "$name already running (pid ${sup_pid[$name]})"
        else
            log "$name ${sup_state[$name]:-not supervised}: starting it"
            again+=("$name")
        fi
    done
    if (( ${#again[@]} )); then
        ctl stop "${again[@]}" > /dev/null || true
        for name in "${again[@]}"; do rm -f "$state/$name.since"; done
        ctl start all >&2 || true           # wait_ready says which did not start, and why
    fi
}

up() {
    mkdir -p "$state/logs"
    scripts/postgres/postgres.sh start
    [[ -z "$BROKERCORE_REPLICA_URL" ]] || scripts/postgres/postgres.sh replica-start
    scripts/redis/redis.sh start
    scripts/kafka/kafka.sh start
    "$py" -m brokercore.db.migrations
    write_conf
    supervise
    wait_ready
    "$edge" start || fail                   # its upstreams: the API processes, by default
    # The demo users sign up, are verified by an operator and deposit, through the edge.
    "$py" -m brokercore.demo --api "$edge_url" --out "$state/demo-users.json" >&2 || fail
    local token calendar alice
    alice="$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["alice"]["userId"])' "$state/demo-users.json")"
    token="$("$py" -m brokercore.cli token --user "$alice" --ttl 86400)"
    if [[ "$BROKERCORE_CALENDAR" == always-open ]]; then
        calendar="always-open: orders trade at any hour (BROKERCORE_CALENDAR=exchange for the exchange's sessions)"
    else
        calendar="$BROKERCORE_CALENDAR: the sessions in config/instruments.toml (outside them: MARKET_CLOSED)"
    fi
    if [[ "$BROKERCORE_DAY" == compressed ]]; then
        calendar="$calendar; compressed days: every 6 min a pre-open (60 s), the uncross, 4 min of trading, the close (logs/scheduler.log)"
    fi
    cat <<TEXT

brokercore is up (dev mode; logs in $state/logs):
  calendar: $calendar
  edge       $edge_url, the one entry point (nginx, state in $BROKERCORE_EDGE_STATE);
             behind it $BROKERCORE_OMS_PROCESSES OMS, $BROKERCORE_QUERY_PROCESSES query and $BROKERCORE_WS_PROCESSES gateway processes (ports: scripts/lib/ports.sh)
  orders     $edge_url/api/v1/orders                  (POST; DELETE /api/v1/orders/ID)
  reads      $edge_url/api/v1/orders  /api/v1/portfolio  /api/v1/marketdata/RELIANCE
  WebSocket  $ws_url/ws/v1/orders?token=\$TOKEN
  alerts     $edge_url/api/v1/alerts  /api/v1/notifications/preferences
  accounts   $edge_url/api/v1/auth/signup  /api/v1/auth/login  /api/v1/me  (docs/identity.md)
  funds      $edge_url/api/v1/funds  /api/v1/funds/deposits  /api/v1/funds/withdrawals
  Kafka      $BROKERCORE_KAFKA_BOOTSTRAP   Postgres $BROKERCORE_DATABASE_URL   Redis $BROKERCORE_REDIS_URL
  processes  make status, or .venv/bin/supervisorctl -c $conf status|restart NAME
  demo logins (development passwords; ops is an operator): alice@example.com alice-demo-password,
             bob@example.com bob-demo-password, ops@example.com ops-demo-password ($state/demo-users.json)
  a development token for alice ($alice, 24 h):
    export TOKEN=$token
  try:
    curl -s -X POST $edge_url/api/v1/orders -H "Authorization: Bearer \$TOKEN" \\
      -H 'Content-Type: application/json' -d '{"symbol":"RELIANCE","side":"BUY","type":"LIMIT",
      "quantity":10,"price":"15000.00","timeInForce":"DAY","idempotencyKey":"try-1"}'
    curl -s $edge_url/api/v1/portfolio -H "Authorization: Bearer \$TOKEN"
TEXT
}

# up, then the simulator (brokercore.simulate) trading in the background, once: a market
# to watch in the web app.
demo() {
    local pid_file="$state/simulate.pid"
    up
    if alive "$(cat "$pid_file" 2>/dev/null || true)"; then
        log "simulator already running (pid $(cat "$pid_file"))"
    else
        nohup "$py" -m brokercore.cli simulate --api "$edge_url" --url "$BROKERCORE_DATABASE_URL" \
            --traders "${BROKERCORE_SIM_TRADERS:-20}" --rate "${BROKERCORE_SIM_RATE:-20}" \
            > "$(log_of simulate)" 2>&1 < /dev/null &
        echo $! > "$pid_file"
        log "simulator started (pid $!, log $(log_of simulate))"
    fi
    cat <<TEXT

The broker at work: ${BROKERCORE_SIM_TRADERS:-20} simulated traders trade through the edge (make down stops them).
  web app    $edge_url/   log in as alice@example.com, password alice-demo-password
             (no second factor until she enrols one in the app: then the code is her
             authenticator's, e.g. python -c "import pyotp; print(pyotp.TOTP('SECRET').now())")
  progress   tail -f $(log_of simulate)
TEXT
}

# Stops the simulator, the edge, every process (supervisorctl stop all: SIGTERM, SIGKILL
# after 10 s), then supervisord, then the servers.
down() {
    local daemon
    [[ ! -e "$state/simulate.pid" ]] || stop_pid_file "$state/simulate.pid" 15 simulator
    "$edge" stop
    if supervised; then
        daemon="$(ctl pid)"
        ctl stop all >&2 || true
        ctl shutdown > /dev/null
        for _ in $(seq 1 120); do alive "$daemon" || break; sleep 0.25; done
        if alive "$daemon"; then
            kill -9 "$daemon" 2> /dev/null || true
            log "supervisord killed after 30 s (pid $daemon)"
        else
            log "supervisord stopped (pid $daemon)"
        fi
    else
        log "supervisord not running"
    fi
    rm -f "$state"/*.since
    scripts/kafka/kafka.sh stop
    scripts/redis/redis.sh stop
    scripts/postgres/postgres.sh replica-stop
    scripts/postgres/postgres.sh stop
}

status() {
    local code=0 name detail
    if supervised; then
        read_states
        log "supervisord running (pid $(ctl pid), $conf)"
        for name in $(processes); do
            if detail="$(check "$name")"; then
                log "$name running (${sup_state[$name]} ${sup_info[$name]}; $detail)"
            else
                code=1
            fi
        done
    else
        code=1
        log "supervisord not running"
        for name in $(processes); do log "$name not running"; done
    fi
    "$edge" status || code=1
    scripts/kafka/kafka.sh status || code=1
    scripts/redis/redis.sh status || code=1
    scripts/postgres/postgres.sh status || code=1
    [[ -z "$BROKERCORE_REPLICA_URL" ]] || scripts/postgres/postgres.sh replica-status || code=1
    return $code
}

case "${1:-}" in
    up) up ;;
    demo) demo ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|demo|down|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A Redis server on 127.0.0.1 for development, tests and CI: a cache and pub/sub only,
# so nothing is persisted.
#
#   scripts/redis/redis.sh start    install if needed, start (daemonized), wait
#   scripts/redis/redis.sh stop     stop the server started here
#   scripts/redis/redis.sh status   exit 0 and say so if it answers, 1 otherwise
#   scripts/redis/redis.sh url      print the connection URL
#   scripts/redis/redis.sh kill     kill -9 the server (fault tests; every key is lost)
#
# Redis is Debian's (`apt-get install -y redis-server` when redis-server is missing).
# Its pid file, log and working folder live in $BROKERCORE_REDIS_STATE (default .redis/
# in the repository, ignored by git). Port: $BROKERCORE_REDIS_PORT (default 16379),
# loopback only. No RDB snapshots, no append-only file. Every command is idempotent.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${BROKERCORE_REDIS_STATE:-$repo/.redis}"
port="${BROKERCORE_REDIS_PORT:-16379}"
pidfile="$state/redis.pid"
logfile="$state/redis.log"

log() { echo "redis: $*" >&2; }
die() { log "$*"; exit 1; }
source "$here/../lib/process.sh"
source "$here/../lib/apt.sh"

install_redis() {
    if command -v redis-server > /dev/null && command -v redis-cli > /dev/null; then return; fi
    log "redis-server not found; installing Debian's redis-server"
    apt_install redis redis-server
    command -v redis-server > /dev/null || die "installed redis-server, but it is not on PATH"
}

# A live process (a zombie, dead but not yet reaped by PID 1, is not).
running() { [[ -f "$pidfile" ]] && alive "$(cat "$pidfile")"; }

answers() {
    running && command -v redis-cli > /dev/null \
        && [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]
}

start() {
    install_redis
    if answers; then log "already running on 127.0.0.1:$port"; return; fi
    if running; then stop; fi
    mkdir -p "$state/data"
    rm -f "$pidfile"
    # Daemonized: redis-server returns once it has forked and writes its pid file itself.
    # 'protected-mode' stays on; the server is reachable from loopback only anyway.
    if ! redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
            --pidfile "$pidfile" --logfile "$logfile" --dir "$state/data" \
            --save "" --appendonly no --databases 16 --maxclients 1000 \
            --tcp-backlog 511 --loglevel notice; then
        tail -20 "$logfile" >&2 2>/dev/null || true
        die "redis-server refused to start; see $logfile"
    fi
    for _ in $(seq 1 60); do
        if answers; then log "started on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
        sleep 0.25
    done
    log "the server did not come up; see $logfile"
    tail -20 "$logfile" >&2 || true
    exit 1
}

stop() { stop_pid_file "$pidfile" 10; }

status() {
    if answers; then log "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
    log "not running"
    return 1
}

url() { echo "redis://127.0.0.1:$port/0"; }

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    url) url ;;
    kill) kill_pid_file "$pidfile" ;;
    *) echo "usage: $0 start|stop|status|url|kill" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The edge: nginx on 127.0.0.1 in front of the API processes, the stack's one entry point
# (routing, balancing, body cap and JSON errors: scripts/edge/nginx.conf.template).
#
#   scripts/edge/nginx.sh install  install nginx if it is missing (make test: the tests
#                                  start edges of their own)
#   scripts/edge/nginx.sh start    install if needed, render nginx.conf, start, wait
#   scripts/edge/nginx.sh reload   render nginx.conf again (new upstreams) and reload it:
#                                  the workers finish their requests, new ones start
#   scripts/edge/nginx.sh stop     stop the edge started here
#   scripts/edge/nginx.sh status   exit 0 and say so if it answers, 1 otherwise
#   scripts/edge/nginx.sh url      print its base URL
#
# nginx is Debian's (`apt-get install -y nginx` when it is missing; the system server that
# the package starts on port 80 is stopped again: the project runs its own). Its
# configuration, pid file, logs and temporary files live in $BROKERCORE_EDGE_STATE
# (default .edge/ in the repository, ignored by git). Settings (environment):
#   BROKERCORE_EDGE_PORT     the port on 127.0.0.1 (default BROKERCORE_PORT_BASE+80: 8080)
#   BROKERCORE_EDGE_OMS, BROKERCORE_EDGE_QUERY, BROKERCORE_EDGE_WS, BROKERCORE_EDGE_NOTIFY,
#   BROKERCORE_EDGE_ACCOUNTS, BROKERCORE_EDGE_FUNDS
#                            each kind's processes, "HOST:PORT HOST:PORT ..."; by default
#                            those `make up` starts (scripts/lib/ports.sh: from
#                            BROKERCORE_PORT_BASE and BROKERCORE_{OMS,QUERY,WS}_PROCESSES)
#   BROKERCORE_EDGE_WORKERS  nginx worker processes (default 1: one proxies thousands of
#                            requests a second on a core the APIs need more)
#   BROKERCORE_MAX_BODY_BYTES  the body cap, the services' own (default 16384)
#   BROKERCORE_WEB_ROOT      the web app the edge serves at / (default web/dist: make web)
# As root the master runs as root and the workers as www-data; as anyone else, all run
# as that user. Every command is idempotent.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${BROKERCORE_EDGE_STATE:-$repo/.edge}"
conf="$state/nginx.conf"
pidfile="$state/nginx.pid"
logfile="$state/error.log"
worker_user=www-data

log() { echo "edge: $*" >&2; }
die() { log "$*"; exit 1; }
source "$here/../lib/process.sh"
source "$here/../lib/ports.sh"
source "$here/../lib/apt.sh"
port="$edge_port"

nginx_bin() { command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }

install_nginx() {
    if [[ -n "$(nginx_bin)" ]]; then return; fi
    log "nginx not found; installing Debian's nginx"
    apt_install nginx nginx
    [[ -n "$(nginx_bin)" ]] || die "installed nginx, but there is no nginx binary"
    # The package starts the system's server (port 80, /etc/nginx) where there is no
    # systemd to refuse it; the edge is ours alone.
    if [[ -s /run/nginx.pid ]] && alive "$(cat /run/nginx.pid)"; then
        "$(nginx_bin)" -s stop 2> /dev/null || true
        log "stopped the system nginx the package started"
    fi
}

# servers ADDRESSES: the upstream block's server lines; none given, one marked down, so
# that its requests get the edge's 502 (nginx needs one server per upstream).
servers() {
    local address lines=""
    for address in $1; do
        lines+="        server $address max_fails=1 fail_timeout=2s;"$'\n'
    done
    printf '%s' "${lines:-        server 127.0.0.1:9 down;$'\n'}"
}

render() {
    local text user=""
    text="$(< "$here/nginx.conf.template")"
    if [[ "$(id -u)" == 0 ]]; then user="user $worker_user;"; fi
    text="${text//@USER@/$user}"
    text="${text//@WORKERS@/${BROKERCORE_EDGE_WORKERS:-1}}"
    text="${text//@STATE@/$state}"
    text="${text//@PORT@/$port}"
    text="${text//@MAX_BODY@/${BROKERCORE_MAX_BODY_BYTES:-16384}}"
    text="${text//@WEB@/${BROKERCORE_WEB_ROOT:-$repo/web/dist}}"
    text="${text//@OMS_SERVERS@/$(servers "${BROKERCORE_EDGE_OMS-$(api_addresses oms "${BROKERCORE_OMS_PROCESSES:-2}")}")}"
    text="${text//@QUERY_SERVERS@/$(servers "${BROKERCORE_EDGE_QUERY-$(api_addresses query "${BROKERCORE_QUERY_PROCESSES:-2}")}")}"
    text="${text//@WS_SERVERS@/$(servers "${BROKERCORE_EDGE_WS-$(api_addresses ws "${BROKERCORE_WS_PROCESSES:-2}")}")}"
    text="${text//@NOTIFY_SERVERS@/$(servers "${BROKERCORE_EDGE_NOTIFY-$(api_addresses notifier-api 1)}")}"
    text="${text//@ACCOUNTS_SERVERS@/$(servers "${BROKERCORE_EDGE_ACCOUNTS-$(api_addresses accounts 1)}")}"
    text="${text//@FUNDS_SERVERS@/$(servers "${BROKERCORE_EDGE_FUNDS-$(api_addresses funds 1)}")}"
    mkdir -p "$state/tmp"
    if [[ "$(id -u)" == 0 ]]; then
        id "$worker_user" > /dev/null 2>&1 || die "no OS user '$worker_user' for the workers"
        runuser -u "$worker_user" -- test -x "$state" \
            || die "the workers' user '$worker_user' cannot reach $state: its parent folders" \
                   "must be searchable (chmod o+x), or set BROKERCORE_EDGE_STATE elsewhere"
    fi
    printf '%s\n' "$text" > "$conf.new"
    nginx_cmd -t -c "$conf.new" > "$state/check.log" 2>&1 \
        || { cat "$state/check.log" >&2; die "the rendered configuration is refused ($conf.new)"; }
    mv "$conf.new" "$conf"
}

# nginx with the state folder as its prefix and error log from the first line on (the
# compiled-in /var/log/nginx is not ours).
nginx_cmd() { "$(nginx_bin)" -p "$state" -e "$logfile" "$@"; }

running() { [[ -f "$pidfile" ]] && alive "$(cat "$pidfile")"; }

answers() {             # the edge's own health location answers 200
    running && timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf "GET /_edge/health HTTP/1.0\r\nHost: edge\r\n\r\n" >&3 && head -c 12 <&3' _ "$port" \
        2> /dev/null | grep -q '^HTTP/1.1 200'
}

start() {
    install_nginx
    mkdir -p "$state"
    render
    if answers; then nginx_cmd -c "$conf" -s reload; log "already running on 127.0.0.1:$port (configuration reloaded)"; return; fi
    if running; then stop; fi
    rm -f "$pidfile"
    nginx_cmd -c "$conf" || { tail -20 "$logfile" >&2 || true; die "nginx refused to start; see $logfile"; }
    for _ in $(seq 1 40); do
        if answers; then log "started on 127.0.0.1:$port (pid $(cat "$pidfile"), $conf)"; return; fi
        sleep 0.25
    done
    tail -20 "$logfile" >&2 || true
    die "the edge does not answer on 127.0.0.1:$port; see $logfile"
}

reload() {
    running || { start; return; }
    install_nginx
    render
    nginx_cmd -c "$conf" -s reload
    log "reloaded $conf (pid $(cat "$pidfile"))"
}

# SIGQUIT: the workers finish the requests they hold, then exit; after 10 s, SIGTERM (and
# SIGKILL 5 s later).
stop() {
    local pid
    pid="$(cat "$pidfile" 2> /dev/null || true)"
    if ! alive "$pid"; then rm -f "$pidfile"; log "not running"; return; fi
    kill -QUIT "$pid"
    for _ in $(seq 1 40); do
        if ! alive "$pid"; then rm -f "$pidfile"; log "stopped"; return; fi
        sleep 0.25
    done
    stop_pid_file "$pidfile" 5
}

status() {
    if answers; then log "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
    log "not running"
    return 1
}

url() { echo "http://127.0.0.1:$port"; }

case "${1:-}" in
    install) install_nginx ;;
    start) start ;;
    reload) reload ;;
    stop) stop ;;
    status) status ;;
    url) url ;;
    *) echo "usage: $0 install|start|reload|stop|status|url" >&2; exit 2 ;;
esac

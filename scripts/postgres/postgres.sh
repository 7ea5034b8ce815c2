#!/usr/bin/env bash
# A PostgreSQL server on 127.0.0.1 for development, tests and CI: its own cluster,
# apart from any system one.
#
#   scripts/postgres/postgres.sh start    install if needed, initdb once, start, wait,
#                                         create role and database brokercore if missing
#   scripts/postgres/postgres.sh stop     stop the server started here (fast shutdown)
#   scripts/postgres/postgres.sh status   exit 0 and say so if it answers, 1 otherwise
#   scripts/postgres/postgres.sh url      print the application's connection URL
#   scripts/postgres/postgres.sh crash-restart
#                                         fault tests: every backend killed at once (an
#                                         immediate shutdown, no shutdown checkpoint), then
#                                         started again (crash recovery) and waited for
#   scripts/postgres/postgres.sh replica-start
#                                         a streaming read replica of that server (started
#                                         first if needed): the primary allows replication
#                                         (pg_hba reloaded; restarted only when wal_level or
#                                         max_wal_senders must change), pg_basebackup -R
#                                         once (again if the primary was re-initialised),
#                                         then started (hot standby) and waited for
#   scripts/postgres/postgres.sh replica-stop | replica-status | replica-url
#                                         as stop, status and url, for the replica
#   scripts/postgres/postgres.sh superuser-url | replica-superuser-url
#                                         the superuser's URL (the Unix socket), for tests
#                                         that pause a replica's replay
#
# PostgreSQL is Debian's (`apt-get install -y postgresql` when it is missing); the
# newest /usr/lib/postgresql/<version>/bin is used. The cluster's data, log and
# socket live in $BROKERCORE_PG_STATE (default .postgres/ in the repository, ignored by
# git). Port: $BROKERCORE_PG_PORT (default 15432), TCP on loopback only. Postgres will
# not run as root, so as root the server runs as the `postgres` OS user (which the
# Debian package creates) and owns the state folder; as anyone else it runs as that
# user. The superuser `postgres` connects through the Unix socket only (trust); the
# role `brokercore` (password `brokercore`, CREATEDB) connects over TCP with a
# password. Every command is idempotent.
#
# The replica keeps its cluster in $BROKERCORE_PG_REPLICA_STATE (default the primary's
# state folder + "-replica": .postgres-replica/) and listens on
# $BROKERCORE_PG_REPLICA_PORT (default 15433); it
# streams from the primary's Unix socket as the superuser, without a replication slot
# (the primary keeps wal_keep_size of WAL for a replica that was away a while).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${BROKERCORE_PG_STATE:-$repo/.postgres}"
port="${BROKERCORE_PG_PORT:-15432}"
data="$state/data"
logfile="$state/postgres.log"
app_user=brokercore
app_password=brokercore
app_db=brokercore
replica_state="${BROKERCORE_PG_REPLICA_STATE:-$state-replica}"
replica_port="${BROKERCORE_PG_REPLICA_PORT:-15433}"

log() { echo "postgres: $*" >&2; }
die() { log "$*"; exit 1; }
source "$here/../lib/process.sh"
source "$here/../lib/apt.sh"

# Unix socket paths are limited to 107 bytes: a deep checkout gets a socket in /tmp.
socket_folder() {
    if (( ${#1} > 76 )); then echo "/tmp/brokercore-pg-$2"; else echo "$1/run"; fi
}
socket_dir="$(socket_folder "$state" "$port")"
primary_socket_dir="$socket_dir"
primary_port="$port"

if [[ "$(id -u)" == 0 ]]; then
    pg_user=postgres
    as_pg() { runuser -u "$pg_user" -- "$@"; }
else
    pg_user="$(id -un)"
    as_pg() { "$@"; }
fi

# The newest installed server (a client-only version has no initdb and is skipped).
find_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            echo "$dir"
            return
        fi
    done
}

install_postgres() {
    log "PostgreSQL not found; installing Debian's postgresql"
    apt_install postgres postgresql
}

bindir=""
need_bindir() {
    bindir="$(find_bindir)"
    if [[ -z "$bindir" ]]; then
        install_postgres
        bindir="$(find_bindir)"
        [[ -n "$bindir" ]] || die "installed postgresql, but no /usr/lib/postgresql/*/bin/initdb"
    fi
    if [[ "$(id -u)" == 0 ]] && ! id "$pg_user" > /dev/null 2>&1; then
        die "running as root needs the OS user '$pg_user' (the Debian package creates it)"
    fi
}

pg_ctl() { as_pg "$bindir/pg_ctl" -D "$data" "$@"; }

postmaster_pid() { head -1 "$data/postmaster.pid" 2>/dev/null || true; }

# The server of this data directory is up (its postmaster.pid names a live process).
running() { alive "$(postmaster_pid)"; }

answers() {
    running && "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2
}

# Who else listens on 127.0.0.1:$port (not this data directory's server): a PostgreSQL
# server by its pid and data directory (its working directory), another process by its
# pid and name; nothing when the port is free.
port_holder() {
    local pid
    pid="$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
    if [[ -z "$pid" ]]; then
        if ss -ltnH "sport = :$port" 2>/dev/null | grep -q .; then echo "a process not shown"; fi
    elif [[ "$pid" != "$(postmaster_pid)" ]]; then
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == postgres ]]; then
            echo "PostgreSQL pid $pid, data directory $(readlink "/proc/$pid/cwd")"
        else
            echo "pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null))"
        fi
    fi
}

# Fail clearly when another server holds the port (a stale one of another checkout, say),
# instead of a start that fails in the log; $1 names the port's setting.
need_free_port() {
    local holder
    holder="$(port_holder)"
    [[ -z "$holder" ]] || die "127.0.0.1:$port is held by $holder, not by the server of" \
        "$data: stop that one (pg_ctl -D DIRECTORY stop) or set $1 to another port"
}

prepare_state() {
    mkdir -p "$state" "$socket_dir"
    if [[ "$(id -u)" == 0 ]]; then chown "$pg_user:" "$state" "$socket_dir"; fi
    # The socket admits the superuser without a password: only its owner (and root).
    chmod 0755 "$state"
    chmod 0700 "$socket_dir"
    as_pg test -w "$state" \
        || die "the OS user '$pg_user' cannot write $state: its parent folders must be" \
               "searchable by it (chmod o+x), or set BROKERCORE_PG_STATE elsewhere"
}

init_once() {
    if [[ -f "$data/PG_VERSION" ]]; then
        local have
        have="$(cat "$data/PG_VERSION")"
        if [[ "$bindir" != "/usr/lib/postgresql/$have/bin" && ! -x "/usr/lib/postgresql/$have/bin/postgres" ]]; then
            die "$data was made by PostgreSQL $have, which is not installed: remove $state (make clean)"
        fi
        bindir="/usr/lib/postgresql/$have/bin"
        return
    fi
    rm -rf "$data"
    as_pg "$bindir/initdb" -D "$data" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 > "$state/initdb.log" 2>&1 \
        || { tail -20 "$state/initdb.log" >&2; die "initdb failed"; }
    # Settings that may change between starts live in brokercore.conf, rewritten on
    # every start; the generated postgresql.conf only gains the include.
    echo "include_if_exists = 'brokercore.conf'" | as_pg tee -a "$data/postgresql.conf" > /dev/null
    log "initialised $data ($("$bindir/postgres" --version))"
}

write_config() {
    as_pg tee "$data/brokercore.conf" > /dev/null <<CONF
# Written by scripts/postgres/postgres.sh on every start: a server for tests on loopback.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$socket_dir'
max_connections = 200
shared_buffers = 128MB
work_mem = 8MB
maintenance_work_mem = 64MB
# Durable: fsync and synchronous_commit stay on (exactly-once tests crash processes).
fsync = on
synchronous_commit = on
checkpoint_timeout = 15min
max_wal_size = 2GB
# Streaming replication (replica-start): the WAL a replica away for a while still finds.
wal_level = replica
max_wal_senders = 10
wal_keep_size = 512MB
hot_standby_feedback = on
log_destination = 'stderr'
logging_collector = off
log_min_duration_statement = 1000
log_line_prefix = '%m [%p] %q%u@%d '
timezone = 'UTC'
CONF
    as_pg tee "$data/pg_hba.conf" > /dev/null <<HBA
# Written by scripts/postgres/postgres.sh on every start.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
local   replication  postgres         trust
host    all       all   127.0.0.1/32  scram-sha-256
HBA
}

ensure_app_role() {
    local psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$socket_dir" -p "$port" -U postgres -d postgres)
    as_pg "${psql[@]}" > /dev/null <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$app_user') THEN
        CREATE ROLE $app_user LOGIN CREATEDB PASSWORD '$app_password';
    END IF;
END
\$\$;
SQL
    if [[ -z "$(as_pg "${psql[@]}" -tA -c "SELECT 1 FROM pg_database WHERE datname = '$app_db'")" ]]; then
        as_pg "${psql[@]}" -c "CREATE DATABASE $app_db OWNER $app_user" > /dev/null
        log "created role $app_user and database $app_db"
    fi
}

# After a crash (kill -9) postmaster.pid is stale. Postgres itself checks a stale one
# safely (no live process, no backend still attached to the old shared memory), but
# only once the dead postmaster is reaped: a zombie's pid still "exists".
wait_stale_pid() {
    local pid
    pid="$(postmaster_pid)"
    [[ -n "$pid" ]] || return 0
    for _ in $(seq 1 40); do
        if ! kill -0 "$pid" 2>/dev/null; then return; fi
        sleep 0.25
    done
    die "$data/postmaster.pid names pid $pid, which is dead but not reaped; retry later"
}

start() {
    need_bindir
    if answers; then ensure_app_role; log "already running on 127.0.0.1:$port"; return; fi
    prepare_state
    need_free_port BROKERCORE_PG_PORT
    init_once
    if running; then stop; fi
    wait_stale_pid
    write_config
    as_pg touch "$logfile"
    if ! pg_ctl start -w -t 60 -l "$logfile" > /dev/null; then
        tail -20 "$logfile" >&2 || true
        die "the server did not come up; see $logfile"
    fi
    for _ in $(seq 1 60); do
        if answers; then break; fi
        sleep 0.5
    done
    answers || { tail -20 "$logfile" >&2; die "the server does not answer on 127.0.0.1:$port; see $logfile"; }
    ensure_app_role
    log "started on 127.0.0.1:$port (PostgreSQL $(cat "$data/PG_VERSION"), data $data)"
}

# For stop and status: the binaries of the version that made the data directory.
existing_bindir() {
    bindir="$(find_bindir)"
    if [[ -f "$data/PG_VERSION" && -x "/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin/pg_ctl" ]]; then
        bindir="/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin"
    fi
}

stop() {
    existing_bindir
    if ! running; then log "not running"; return; fi
    if pg_ctl stop -m fast -w -t 60 > /dev/null || ! running; then log "stopped"; return; fi
    log "fast shutdown did not finish in 60 s; immediate shutdown"
    if pg_ctl stop -m immediate -w -t 30 > /dev/null || ! running; then
        log "stopped (immediate)"
        return
    fi
    die "the server (pid $(postmaster_pid)) does not stop; see $logfile"
}

# As a crash would: connections cut, no checkpoint, so the start replays the WAL.
crash_restart() {
    existing_bindir
    running || die "not running"
    pg_ctl stop -m immediate -w -t 60 > /dev/null || die "immediate shutdown failed; see $logfile"
    log "stopped (immediate)"
    start
}

status() {
    existing_bindir
    if answers; then
        log "running on 127.0.0.1:$port (pid $(postmaster_pid), data $data)"
        return 0
    fi
    log "not running"
    return 1
}

url() { echo "postgresql://$app_user:$app_password@127.0.0.1:$port/$app_db"; }

superuser_url() { echo "postgresql://postgres@/postgres?host=$socket_dir&port=$port"; }

# --- the replica ------------------------------------------------------------------------------

superuser_sql() {
    as_pg "$bindir/psql" -X -q -tA -v ON_ERROR_STOP=1 -h "$primary_socket_dir" -p "$primary_port" \
        -U postgres -d postgres -c "$1"
}

# The running primary admits the replica: its configuration rewritten and reloaded (the
# replication line of pg_hba.conf); a restart only when a setting that needs one is off.
# After wal_level minimal no existing copy can follow the primary: stale_copy=1.
stale_copy=0
allow_replication() {
    write_config
    pg_ctl reload > /dev/null
    local level senders
    level="$(superuser_sql "SHOW wal_level")"
    senders="$(superuser_sql "SHOW max_wal_senders")"
    if [[ "$level" == minimal || "$senders" == 0 ]]; then
        log "wal_level $level, max_wal_senders $senders: restarting the primary for replication"
        superuser_sql "ALTER SYSTEM SET wal_level = replica" > /dev/null
        superuser_sql "ALTER SYSTEM SET max_wal_senders = 10" > /dev/null
        stop
        start
        if [[ "$level" == minimal ]]; then stale_copy=1; fi
    fi
}

system_id() {
    as_pg "$bindir/pg_controldata" -D "$1" 2>/dev/null | sed -n 's/^Database system identifier: *//p'
}

# From here on the commands act on the replica's cluster.
use_replica() {
    state="$replica_state"
    port="$replica_port"
    data="$state/data"
    logfile="$state/postgres.log"
    socket_dir="$(socket_folder "$state" "$port")"
}

start_copy() {
    write_config
    as_pg touch "$logfile"
    pg_ctl start -w -t 120 -l "$logfile" > /dev/null
}

replica_start() {
    start
    allow_replication
    local primary_data="$data"
    use_replica
    if answers; then log "replica already running on 127.0.0.1:$port"; return; fi
    prepare_state
    need_free_port BROKERCORE_PG_REPLICA_PORT
    if running; then stop; fi
    wait_stale_pid
    if [[ -f "$data/PG_VERSION" && "$(system_id "$data")" != "$(system_id "$primary_data")" ]]; then
        log "$data is a copy of another cluster: taking a new base backup"
        rm -rf "$data"
    elif [[ -f "$data/PG_VERSION" && "$stale_copy" == 1 ]]; then
        log "the primary ran with wal_level minimal: taking a new base backup"
        rm -rf "$data"
    fi
    if [[ -f "$data/PG_VERSION" ]] && ! start_copy; then
        log "the replica does not start from its copy: taking a new base backup"
        rm -rf "$data"
    fi
    if [[ ! -f "$data/PG_VERSION" ]]; then
        as_pg "$bindir/pg_basebackup" -D "$data" -R -X stream -c fast \
            -d "host=$primary_socket_dir port=$primary_port user=postgres application_name=brokercore_replica" \
            > "$state/basebackup.log" 2>&1 \
            || { tail -20 "$state/basebackup.log" >&2; rm -rf "$data"; die "pg_basebackup failed"; }
        log "base backup of 127.0.0.1:$primary_port taken into $data"
        start_copy || { tail -20 "$logfile" >&2; die "the replica did not come up; see $logfile"; }
    fi
    for _ in $(seq 1 120); do
        if answers; then break; fi
        sleep 0.5
    done
    answers || { tail -20 "$logfile" >&2; die "the replica does not answer on 127.0.0.1:$port; see $logfile"; }
    log "replica started on 127.0.0.1:$port, streaming from 127.0.0.1:$primary_port"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    url) url ;;
    crash-restart) crash_restart ;;
    replica-start) need_bindir; replica_start ;;
    replica-stop) use_replica; stop ;;
    replica-status) use_replica; status ;;
    replica-url) use_replica; url ;;
    superuser-url) superuser_url ;;
    replica-superuser-url) use_replica; superuser_url ;;
    *) echo "usage: $0 start|stop|status|url|crash-restart|replica-start|replica-stop|replica-status|replica-url|superuser-url|replica-superuser-url" >&2; exit 2 ;;
esac

# Shared by the scripts that run servers: a process behind a pid file. Source it; the
# caller defines log().

# proc_state PID: the process's state letter from /proc (R, S, D, T stopped, Z zombie...;
# see proc(5)); nothing if there is no such process.
proc_state() {
    [[ -n "${1:-}" ]] && sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1
}

# alive PID: the process exists and is not a zombie (a server killed with -9 may linger
# unreaped for a while, and kill -0 alone would call it running).
alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null && [[ "$(proc_state "$1")" != Z ]]
}

# stop_pid_file FILE SECONDS [NAME]: SIGTERM the process in FILE, SIGKILL it after
# SECONDS, remove FILE. Says what happened (of NAME) through log().
stop_pid_file() {
    local file="$1" seconds="$2" name="${3:+$3 }" pid
    pid="$(cat "$file" 2>/dev/null || true)"
    if ! alive "$pid"; then rm -f "$file"; log "${name}not running"; return; fi
    kill "$pid"
    for _ in $(seq 1 $((seconds * 4))); do
        if ! alive "$pid"; then rm -f "$file"; log "${name}stopped"; return; fi
        sleep 0.25
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
    log "${name}killed after $seconds s"
}

# kill_pid_file FILE [NAME]: kill -9 the process in FILE, as a crash would (no shutdown
# of any kind), and remove FILE; returns once the process is gone.
kill_pid_file() {
    local file="$1" name="${2:+$2 }" pid
    pid="$(cat "$file" 2>/dev/null || true)"
    if alive "$pid"; then
        kill -9 "$pid"
        while alive "$pid"; do sleep 0.05; done
        log "${name}killed (pid $pid)"
    else
        log "${name}not running"
    fi
    rm -f "$file"
}

#!/usr/bin/env bash
# How supervisord runs each process of the stack (stack.sh puts it in front of every
# [program:NAME] command): notes where the process's log stands, then becomes the process.
#
#   scripts/stack/logged.sh LOG SINCE COMMAND...
#
# LOG is the file supervisord appends the process's output to; its size goes into SINCE,
# so that stack.sh judges the readiness of this run, not of an earlier one, from what was
# logged after that point. exec keeps the pid supervisord knows.
set -euo pipefail
log="$1" since="$2"
shift 2
stat -c %s "$log" > "$since" 2>/dev/null || echo 0 > "$since"
exec "$@"

# Shared by scripts/stack/stack.sh and scripts/edge/nginx.sh: where each API process of
# the stack listens, from BROKERCORE_PORT_BASE (default 8000). Source it.
#
#   base+0 oms-0   base+1 query-0   base+2 ws-0   base+3 notifier-api
#   base+4 oms-1   base+5 query-1   base+6 ws-1   (base+7 unused)
#   base+4*i+k     process i of kind k (0 oms, 1 query, 2 ws)
#   base+40 accounts   base+41 funds   (one process each)
#
# so the first process of each kind keeps the port it had when there was one of each. The
# edge in front of them: BROKERCORE_EDGE_PORT, by default base+80 (8080), so that a stack
# on another base has an edge of its own.

port_base="${BROKERCORE_PORT_BASE:-8000}"
edge_port="${BROKERCORE_EDGE_PORT:-$((port_base + 80))}"

# api_port KIND INDEX: the port of process INDEX of KIND (oms, query, ws, notifier-api,
# accounts, funds).
api_port() {
    local offset
    case "$1" in
        oms) offset=0 ;; query) offset=1 ;; ws) offset=2 ;; notifier-api) offset=3 ;;
        accounts) offset=40 ;; funds) offset=41 ;;
        *) echo "api_port: no API kind '$1'" >&2; return 1 ;;
    esac
    echo $((port_base + 4 * $2 + offset))
}

# api_addresses KIND COUNT: "127.0.0.1:PORT ..." of processes 0..COUNT-1 of KIND.
api_addresses() {
    local i addresses=()
    for ((i = 0; i < $2; i++)); do addresses+=("127.0.0.1:$(api_port "$1" "$i")"); done
    echo "${addresses[*]}"
}

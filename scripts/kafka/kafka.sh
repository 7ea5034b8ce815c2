#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft) on 127.0.0.1 for development, tests and CI.
#
#   scripts/kafka/kafka.sh start    fetch the jars if needed, format once, start, wait
#   scripts/kafka/kafka.sh stop     stop the broker started here
#   scripts/kafka/kafka.sh status   exit 0 and say so if it answers, 1 otherwise
#   scripts/kafka/kafka.sh kill     kill -9 the broker (fault tests; `start` brings it back)
#
# The jars come from Maven Central through Maven (pom.xml beside this script) into
# $BROKERCORE_KAFKA_CACHE (default ~/.cache/brokercore/kafka); the broker's data, logs
# and pid live in $BROKERCORE_KAFKA_STATE (default .kafka/ in the repository, ignored
# by git). Port: $BROKERCORE_KAFKA_PORT (default 19092; the controller uses port + 1).
# `start` waits up to $BROKERCORE_KAFKA_START_WAIT seconds (default 60) for it to answer:
# after a kill -9 on a busy machine, the restarted node may wait out its own old
# registration first.
# Every command is idempotent.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cache="${BROKERCORE_KAFKA_CACHE:-$HOME/.cache/brokercore/kafka}/$version"
state="${BROKERCORE_KAFKA_STATE:-$repo/.kafka}"
port="${BROKERCORE_KAFKA_PORT:-19092}"
controller_port=$((port + 1))
pidfile="$state/kafka.pid"
start_wait="${BROKERCORE_KAFKA_START_WAIT:-60}"

log() { echo "kafka: $*" >&2; }
source "$here/../lib/process.sh"

fetch_jars() {
    if [[ -f "$cache/.complete" ]]; then return; fi
    log "fetching Apache Kafka $version from Maven Central into $cache"
    rm -rf "$cache/libs"
    mvn -q -f "$here/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$cache/libs" -DincludeScope=runtime
    touch "$cache/.complete"
}

kafka_java() { java -cp "$cache/libs/*" "$@"; }

write_config() {
    mkdir -p "$state/data" "$state/logs"
    cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
# Engine standbys take over when the active daemon's lease (a group session) lapses.
group.min.session.timeout.ms=500
# One node: the internal topics must not ask for more replicas, or transactions
# and consumer groups never initialise.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
PROPS
}

format_once() {
    if [[ -f "$state/data/meta.properties" ]]; then return; fi
    local cluster_id
    cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid | tail -1)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$state/server.properties" > "$state/logs/format.log"
    log "formatted $state/data (cluster $cluster_id)"
}

running() { [[ -f "$pidfile" ]] && alive "$(cat "$pidfile")"; }

answers() {
    running && grep -q "Kafka Server started" "$state/logs/server.log" 2>/dev/null \
        && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

start() {
    if answers; then log "already running on 127.0.0.1:$port"; return; fi
    if running; then stop; fi
    fetch_jars
    write_config
    format_once
    rm -f "$state/logs/server.log"
    # ZGC: a GC pause stalls every transaction in flight, and on two busy vCPUs G1's
    # young pauses reached 50-135 ms (see the GC log); ZGC's stay under a millisecond.
    setsid java -Xms1g -Xmx1g -XX:+UseZGC \
        -Xlog:gc:file="$state/logs/gc.log":time,uptime -Djava.awt.headless=true \
        -Dkafka.logs.dir="$state/logs" \
        -Dlog4j2.configurationFile="$here/log4j2.properties" \
        -cp "$cache/libs/*" kafka.Kafka "$state/server.properties" \
        > "$state/logs/stdout.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 1 $((start_wait * 2))); do
        if answers; then log "started on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
        if ! running; then break; fi
        sleep 0.5
    done
    log "the broker did not come up; see $state/logs"
    tail -n 20 "$state/logs/stdout.log" "$state/logs/server.log" >&2 || true
    exit 1
}

stop() { stop_pid_file "$pidfile" 30; }

status() {
    if answers; then log "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
    log "not running"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    kill) kill_pid_file "$pidfile" ;;
    *) echo "usage: $0 start|stop|status|kill" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# One broker of the BROKERS=3 local cluster crashes under a producer with acks=all and comes back:
#
#   make up BROKERS=3 && scripts/broker-fault.sh [N]      (N: the node to kill, default 2)
#
# Creates a topic (3 partitions, the cluster's replication factor 3 and min.insync.replicas=2),
# produces 1000 records, kill -9s node N, produces 1000 more and reads all 2000 back while it is
# down, starts it again and waits until it is back in every partition's ISR. Prints
# `kafka-topics --describe` at each step; exits non-zero if a record is missing or the node does
# not rejoin. Uses the same environment as scripts/stack.sh (REFLEX_STACK_DIR, KAFKA_PORT, ...).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STACK_DIR="${REFLEX_STACK_DIR:-$PWD/.stack}"
LIBS="$STACK_DIR/kafka/libs/${KAFKA_VERSION:-4.4.0}"
PORT="${KAFKA_PORT:-9092}"
STEP="${KAFKA_PORT_STEP:-10}"
NODE="${1:-2}"
BOOTSTRAP="127.0.0.1:$PORT,127.0.0.1:$((PORT + STEP)),127.0.0.1:$((PORT + 2 * STEP))"
TOPIC="broker-fault-$(date +%s)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
tool() {
    java -Xmx256m -Dlog4j2.configurationFile="$STACK_DIR/kafka/config/tools-log4j2.xml" -cp "$LIBS/*" "$@"
}
describe() { tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --describe --topic "$TOPIC"; }
produce() {
    tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BOOTSTRAP" --topic "$TOPIC" \
        --command-property acks=all <"$1" 2>"$WORK/producer.log" ||
        die "producing $1 failed: $(tail -n 3 "$WORK/producer.log")"
}

[[ -f $STACK_DIR/kafka/brokers && $(<"$STACK_DIR/kafka/brokers") == 3 ]] ||
    die "no BROKERS=3 cluster in $STACK_DIR: start one with make up BROKERS=3"
[[ -f $LIBS/.complete ]] || die "no Kafka jars in $LIBS"

tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --create --topic "$TOPIC" \
    --partitions 3 >/dev/null
seq 1 1000 | sed 's/^/record-/' >"$WORK/first"
seq 1001 2000 | sed 's/^/record-/' >"$WORK/second"
produce "$WORK/first"
echo "--- 1000 records produced with acks=all"
describe
"$SCRIPT_DIR/stack.sh" kill-broker "$NODE"
produce "$WORK/second"
echo "--- 1000 more produced with node $NODE down"
describe
tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BOOTSTRAP" --topic "$TOPIC" \
    --from-beginning --timeout-ms 15000 >"$WORK/read" 2>/dev/null || true
read_back="$(sort -u "$WORK/read" | wc -l)"
missing="$(sort "$WORK/first" "$WORK/second" | comm -23 - <(sort -u "$WORK/read") | wc -l)"
echo "--- read back with node $NODE down: $read_back distinct records, $missing missing"
((missing == 0)) || die "$missing records missing"
"$SCRIPT_DIR/stack.sh" start-broker "$NODE"
for _ in $(seq 60); do
    out="$(describe)"
    # Every partition lists node N in its ISR again.
    if (($(grep -oE "Isr: [0-9,]+" <<<"$out" | grep -cE "[ ,]$NODE(,|\$)") == 3)); then
        echo "--- node $NODE back in every ISR"
        echo "$out"
        tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --delete --topic "$TOPIC"
        exit 0
    fi
    sleep 2
done
echo "$out"
die "node $NODE did not rejoin the ISR within 120 s"

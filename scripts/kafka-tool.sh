#!/usr/bin/env bash
# Run a Kafka CLI class with the local stack's classpath (no Kafka install needed).
#
#   scripts/kafka-tool.sh CLASS|ALIAS [ARGS...]
#
# e.g.
#   scripts/kafka-tool.sh topics --bootstrap-server 127.0.0.1:9092 --list
#   scripts/kafka-tool.sh org.apache.kafka.tools.ConsumerPerformance \
#       --bootstrap-server 127.0.0.1:9092 --topic t --messages 100000
#
# Aliases (Kafka 4.x class names; the kafka-*.sh script names minus "kafka-"):
#   topics, console-producer, console-consumer, consumer-groups,
#   producer-perf-test, consumer-perf-test, get-offsets, delete-records,
#   configs, broker-api-versions, metadata-quorum, storage
#
# Jars are fetched on first use (scripts/stack.sh fetch kafka). Uses the same
# REFLEX_STACK_DIR / KAFKA_VERSION defaults as scripts/stack.sh.
# KAFKA_TOOL_HEAP_OPTS sets the JVM heap (default -Xmx512m).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STACK_DIR="${REFLEX_STACK_DIR:-$PWD/.stack}"
[[ $STACK_DIR == /* ]] || STACK_DIR="$PWD/$STACK_DIR"
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
LIBS="$STACK_DIR/kafka/libs/$KAFKA_VERSION"
TOOLS_LOG4J="$STACK_DIR/kafka/config/tools-log4j2.xml"

if [[ $# -eq 0 || $1 == -h || $1 == --help ]]; then
    sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 2
fi

class=$1
shift
case $class in
    topics) class=org.apache.kafka.tools.TopicCommand ;;
    console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
    console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    producer-perf-test) class=org.apache.kafka.tools.ProducerPerformance ;;
    consumer-perf-test) class=org.apache.kafka.tools.ConsumerPerformance ;;
    get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
    delete-records) class=org.apache.kafka.tools.DeleteRecordsCommand ;;
    configs) class=org.apache.kafka.tools.ConfigCommand ;;
    broker-api-versions) class=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    metadata-quorum) class=org.apache.kafka.tools.MetadataQuorumCommand ;;
    storage) class=kafka.tools.StorageTool ;;
esac

command -v java >/dev/null 2>&1 ||
    { echo "error: java not found: install a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }

# First use: download the jars (progress goes to stderr, keeping stdout clean).
if [[ ! -f $LIBS/.complete || ! -f $TOOLS_LOG4J ]]; then
    REFLEX_STACK_DIR="$STACK_DIR" "$SCRIPT_DIR/stack.sh" fetch kafka >&2
fi

# shellcheck disable=SC2086  # heap opts are a word list
exec java ${KAFKA_TOOL_HEAP_OPTS:--Xmx512m} -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
    -cp "$LIBS/*" "$class" "$@"

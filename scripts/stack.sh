#!/usr/bin/env bash
# Local service stack for development and tests, without Docker.
#
#   scripts/stack.sh up     [SERVICE...]          start (idempotent), wait until ready
#   scripts/stack.sh down   [--clean] [SERVICE...] stop; --clean also deletes data
#   scripts/stack.sh status [SERVICE...]          one line per service; exit 3 unless all run
#   scripts/stack.sh fetch  [SERVICE...]          only download what a service needs
#   scripts/stack.sh kill-broker N                kill -9 broker N of a BROKERS=3 cluster
#   scripts/stack.sh start-broker N               start broker N again, wait until it answers
#   scripts/stack.sh delete-topics REGEX          delete the local broker's topics matching REGEX
#
# SERVICE defaults to all of: kafka registry s3. Each service NAME provides the functions
# NAME_up, NAME_down, NAME_status (and optionally NAME_fetch); add new services
# (schema registry, S3 server, ...) the same way and list them in SERVICES.
#
# State (jars, config, data, logs, pid files) lives in ${REFLEX_STACK_DIR:-$PWD/.stack}.
#
# Kafka: one KRaft node acting as broker and controller on 127.0.0.1.
#   KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_VERSION (4.4.0),
#   KAFKA_HEAP_OPTS (-Xms256m -Xmx1g), KAFKA_JVM_OPTS (extra), KAFKA_START_TIMEOUT (90 s).
#   Beside the plaintext listener, two secured ones with a throw-away CA (openssl), kept in
#   $STACK_DIR/kafka/tls (ca.pem, client.pem + client.key, scram-password):
#   KAFKA_SASL_SSL_PORT (9094): SASL_SSL, SCRAM-SHA-512, user KAFKA_SCRAM_USER (reflex)
#   with a random password in tls/scram-password; KAFKA_SSL_PORT (9095): SSL with a client
#   certificate required (mutual TLS); KAFKA_OAUTH_PORT (9096): SASL_SSL with OAUTHBEARER,
#   tokens checked by Kafka's unsecured JWT validator (any well-formed unsigned JWT with a
#   `sub` and an `exp` is accepted: a test double of a managed cluster's token check).
#
# BROKERS=3: a three-node KRaft cluster instead, each node a combined broker and controller
#   (node ids 1-3, a three-voter quorum, so one node down keeps both the metadata quorum and the
#   data available), from the same jars. Node N listens on KAFKA_PORT + (N-1) x KAFKA_PORT_STEP
#   and its controller on KAFKA_CONTROLLER_PORT + (N-1) x KAFKA_PORT_STEP (step 10: 9092/9093,
#   9102/9103, 9112/9113), with its own config, data and logs in $STACK_DIR/kafka/cluster/node-N.
#   New topics default to replication factor 3 and min.insync.replicas=2. Plaintext only: the
#   SASL_SSL and mTLS listeners exist only with BROKERS=1. The mode is remembered until `down`, so
#   `status`, `down`, `kill-broker` and `start-broker` need no BROKERS.
#
# S3: s3s-fs 0.14.1 (crates.io, Apache-2.0), an S3-compatible server over a directory with one
#   folder per bucket, installed on first use by `cargo install` into cargo's bin directory
#   ($CARGO_HOME/bin), so every checkout shares it; S3S_FS_BIN names another binary.
#   S3_PORT (8014), S3_ACCESS_KEY (reflex), S3_SECRET_KEY (reflex-secret), S3_BUCKETS (lake).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

STACK_DIR="${REFLEX_STACK_DIR:-$PWD/.stack}"
[[ $STACK_DIR == /* ]] || STACK_DIR="$PWD/$STACK_DIR"

# Start order; `down` goes in reverse.
SERVICES=(kafka registry s3)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit "${1:-2}"
}

need_java() {
    command -v java >/dev/null 2>&1 ||
        die "java not found: install a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)"
    local ver major
    ver="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    major="${ver%%.*}"
    [[ $major == 1 ]] && major="$(cut -d. -f2 <<<"$ver")"  # 1.8 -> 8
    if ! [[ $major =~ ^[0-9]+$ ]] || ((major < 17)); then
        die "java $ver is too old: Kafka needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)"
    fi
}

need_mvn() {
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found: install Maven 3 to fetch the Kafka jars (Debian: apt-get install maven)"
}

# True if PID is a running process and not a zombie (zombies have an empty cmdline). A thread's
# id is not one: /proc/TID exists for every thread of every process, so a pid file outliving its
# process can name a thread of another one.
pid_alive() {
    [[ -n $1 && -r /proc/$1/cmdline ]] && [[ -n "$(tr -d '\0' </proc/"$1"/cmdline 2>/dev/null)" ]] &&
        grep -qx "Tgid:[[:space:]]*$1" /proc/"$1"/status 2>/dev/null
}

# True if something accepts TCP connections on HOST PORT.
# shellcheck disable=SC2016  # $0/$1 expand in the inner bash
port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# Serialise up/down/fetch across concurrent callers (e.g. parallel test jobs).
take_lock() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    flock -w 600 9 || die "could not lock $STACK_DIR/.lock"
}

# Print the last lines of a log file to stderr, after a failure; with a byte
# offset, only what was written after it (i.e. by the current attempt).
show_log_tail() {
    local f=$1 from=${2:-0} text
    [[ -s $f ]] || return 0
    text="$(tail -c +"$((from + 1))" "$f" | tail -n 20)"
    [[ -n $text ]] || return 0
    printf -- '--- last lines of %s ---\n%s\n---\n' "$f" "$text" >&2
}

file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# Stops service NAME's process PID: SIGTERM, up to TIMEOUT seconds for a clean exit, then
# SIGKILL; removes PIDFILE.
stop_process() {
    local name=$1 pid=$2 pidfile=$3 timeout=$4 i
    say "$name: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        say "$name: still running after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
    say "$name: stopped"
}

# One status line for service NAME at ADDR: PID empty means stopped; PROBE is a command that
# succeeds when the service answers; LOG is named when it does not. Fails unless running.
status_line() {
    local name=$1 addr=$2 pid=$3 probe=$4 log=$5
    if [[ -z $pid ]]; then
        printf '%-10s %-10s %s\n' "$name" stopped "$addr"
        return 1
    fi
    if "$probe"; then
        printf '%-10s %-10s %s (pid %s)\n' "$name" running "$addr" "$pid"
    else
        printf '%-10s %-10s %s (pid %s, not answering; see %s)\n' "$name" unhealthy "$addr" "$pid" "$log"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# kafka
# ---------------------------------------------------------------------------

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT=30

KAFKA_DIR="$STACK_DIR/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs/$KAFKA_VERSION"    # keyed by version; survives --clean
KAFKA_CONF="$KAFKA_DIR/config"
KAFKA_DATA="$KAFKA_DIR/data"                   # removed by `down --clean`
KAFKA_LOG_DIRS="$KAFKA_DATA/kraft-combined-logs"
KAFKA_LOGS="$KAFKA_DIR/logs"
KAFKA_PIDFILE="$KAFKA_DIR/kafka.pid"
KAFKA_ADDR="$KAFKA_HOST:$KAFKA_PORT"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-9094}"
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-9095}"
KAFKA_OAUTH_PORT="${KAFKA_OAUTH_PORT:-9096}"
KAFKA_SCRAM_USER="${KAFKA_SCRAM_USER:-reflex}"
KAFKA_TLS="$KAFKA_DIR/tls"                     # throw-away CA and certificates; removed by `down --clean`

[[ $KAFKA_PORT =~ ^[0-9]+$ ]] || die "KAFKA_PORT must be a port number, got '$KAFKA_PORT'"
[[ $KAFKA_CONTROLLER_PORT =~ ^[0-9]+$ ]] ||
    die "KAFKA_CONTROLLER_PORT must be a port number, got '$KAFKA_CONTROLLER_PORT'"
[[ $KAFKA_SASL_SSL_PORT =~ ^[0-9]+$ ]] ||
    die "KAFKA_SASL_SSL_PORT must be a port number, got '$KAFKA_SASL_SSL_PORT'"
[[ $KAFKA_SSL_PORT =~ ^[0-9]+$ ]] || die "KAFKA_SSL_PORT must be a port number, got '$KAFKA_SSL_PORT'"
[[ $KAFKA_OAUTH_PORT =~ ^[0-9]+$ ]] || die "KAFKA_OAUTH_PORT must be a port number, got '$KAFKA_OAUTH_PORT'"

# Health probe without starting a JVM: send a Kafka Metadata v4 request
# (all topics) over /dev/tcp and require a reply listing at least one broker.
# The broker only serves requests once it has started and registered.
# With PORT, asks that broker instead; with MIN_BROKERS, requires that many in the reply.
# shellcheck disable=SC2016  # the script is expanded by the inner bash
kafka_probe() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        # size=21 | api_key=3 (Metadata) | api_version=4 | correlation_id=42
        # | client_id="reflex" | topics=null (-1) | allow_auto_topic_creation=false
        printf "\x00\x00\x00\x15\x00\x03\x00\x04\x00\x00\x00\x2a\x00\x06reflex\xff\xff\xff\xff\x00" >&3
        # reply: size(4) correlation_id(4) throttle_time_ms(4) broker_count(4) ...
        reply=$(head -c 16 <&3 | od -An -tx1 | tr -d " \n")
        [[ ${reply:8:8} == 0000002a && $((16#${reply:24:8})) -ge $2 ]]
    ' "$KAFKA_HOST" "${1:-$KAFKA_PORT}" "${2:-1}" 2>/dev/null
}

# Print the broker pid if one from this stack dir is running. Cleans up a
# stale pid file; finds the broker by its config path if the pid file is lost.
kafka_pid() {
    local pid="" conf="$KAFKA_CONF/server.properties"
    if [[ -f $KAFKA_PIDFILE ]]; then
        pid="$(<"$KAFKA_PIDFILE")"
        if pid_alive "$pid" && tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF "kafka.Kafka $conf"; then
            echo "$pid"
            return 0
        fi
        say "kafka: removing stale pid file (pid ${pid:-?} is not running)" >&2
        rm -f "$KAFKA_PIDFILE"
    fi
    local re
    # shellcheck disable=SC2001  # regex-escape the path for pgrep
    re="$(sed 's/[][\.*^$+?(){}|]/\\&/g' <<<"$conf")"
    pid="$(pgrep -u "$(id -u)" -f -- "kafka\\.Kafka $re\$" | head -n 1 || true)"
    if [[ -n $pid ]]; then
        echo "$pid" >"$KAFKA_PIDFILE"
        echo "$pid"
        return 0
    fi
    return 1
}

# Download the broker + tools jars once per Kafka version (Maven reuses ~/.m2),
# and write the logging config the CLI tools use.
kafka_fetch() {
    mkdir -p "$KAFKA_CONF" "$KAFKA_LOGS"
    kafka_write_tools_log4j
    [[ -f $KAFKA_LIBS/.complete ]] && return 0

    need_mvn
    say "kafka: fetching Kafka $KAFKA_VERSION jars with Maven (first run only)..."
    local tmp="$KAFKA_LIBS.tmp.$$" log="$KAFKA_LOGS/fetch.log"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -B -q -Dstyle.color=never -f "$REPO_DIR/stack/kafka/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DoutputDirectory="$tmp" -DincludeScope=runtime \
        >"$log" 2>&1; then
        rm -rf "$tmp"
        show_log_tail "$log"
        die "kafka: Maven could not fetch the Kafka $KAFKA_VERSION jars (full log: $log)"
    fi
    touch "$tmp/.complete"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    say "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $KAFKA_LIBS"
}

kafka_write_tools_log4j() {
    # CLI tools: warnings and errors to stderr only (like Kafka's tools-log4j2.yaml).
    cat >"$KAFKA_CONF/tools-log4j2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stderr"/></Root>
  </Loggers>
</Configuration>
EOF
}

# A throw-away CA, a broker certificate for 127.0.0.1/localhost and a client certificate, all
# signed by it, and a random SCRAM password; made once per stack dir.
kafka_tls() {
    [[ -f $KAFKA_TLS/.complete ]] && return 0
    command -v openssl >/dev/null 2>&1 ||
        die "openssl not found: it makes the local stack's test certificates (Debian: apt-get install openssl)"
    say "kafka: making a throw-away CA and certificates in $KAFKA_TLS"
    local tmp="$KAFKA_TLS.tmp.$$" log="$KAFKA_LOGS/tls.log"
    rm -rf "$tmp"
    mkdir -p "$tmp" "$KAFKA_LOGS"
    (
        set -e
        cd "$tmp"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=reflex local stack CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.pem
        local name ext
        for name in broker client; do
            if [[ $name == broker ]]; then
                ext="subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
            else
                ext="extendedKeyUsage=clientAuth"
            fi
            openssl req -newkey rsa:2048 -nodes -subj "/CN=reflex-$name" -keyout "$name.key" -out "$name.csr"
            openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
                -extfile <(printf '%b\n' "$ext") -out "$name.pem"
            rm -f "$name.csr"
        done
        # Kafka's PEM key store: the private key, then the certificate chain.
        cat broker.key broker.pem >broker-keystore.pem
        head -c 18 /dev/urandom | base64 | tr '+/' '-_' >scram-password
    ) >"$log" 2>&1 || {
        show_log_tail "$log"
        rm -rf "$tmp"
        die "kafka: openssl could not make the test certificates (full log: $log)"
    }
    touch "$tmp/.complete"
    rm -rf "$KAFKA_TLS"
    mv "$tmp" "$KAFKA_TLS"
}

# The SCRAM user of the SASL_SSL listener (an upsert, over the plaintext listener), once per
# data dir: the credentials live in the cluster's metadata log.
kafka_scram_user() {
    local log="$KAFKA_LOGS/scram.log" password marker="$KAFKA_DATA/scram-user-$KAFKA_SCRAM_USER"
    [[ -f $marker ]] && return 0
    password="$(<"$KAFKA_TLS/scram-password")"
    if ! java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.xml" -cp "$KAFKA_LIBS/*" \
        org.apache.kafka.tools.ConfigCommand --bootstrap-server "$KAFKA_ADDR" --alter \
        --add-config "SCRAM-SHA-512=[password=$password]" \
        --entity-type users --entity-name "$KAFKA_SCRAM_USER" >"$log" 2>&1; then
        show_log_tail "$log"
        die "kafka: could not create SCRAM user $KAFKA_SCRAM_USER (full log: $log)"
    fi
    touch "$marker"
    say "kafka: SASL_SSL on $KAFKA_HOST:$KAFKA_SASL_SSL_PORT (SCRAM user $KAFKA_SCRAM_USER, password in $KAFKA_TLS/scram-password), mutual TLS on $KAFKA_HOST:$KAFKA_SSL_PORT, CA $KAFKA_TLS/ca.pem"
}

# Deletes the topics whose whole name matches the Java regular expression $1 (none is fine):
# `make bench` removes its run's topics with it, and `scripts/stack.sh delete-topics 'it-.*'`
# those that failed tests kept.
kafka_delete_topics() {
    local pattern="$1" log="$KAFKA_LOGS/delete-topics.log"
    [[ -n $pattern ]] || die "delete-topics needs a regular expression, e.g. 'bench-.*'"
    port_open "$KAFKA_HOST" "$KAFKA_PORT" || die "kafka: nothing answers on $KAFKA_ADDR (make up)"
    mkdir -p "$KAFKA_LOGS"
    if ! java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.xml" -cp "$KAFKA_LIBS/*" \
        org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_ADDR" --delete \
        --if-exists --topic "$pattern" >"$log" 2>&1; then
        show_log_tail "$log"
        die "kafka: could not delete the topics matching $pattern (full log: $log)"
    fi
    say "kafka: deleted the topics matching $pattern"
}

kafka_write_config() {
    mkdir -p "$KAFKA_CONF" "$KAFKA_LOGS" "$KAFKA_LOG_DIRS"
    cat >"$KAFKA_CONF/server.properties" <<EOF
# Generated by scripts/stack.sh on each start; edit the script, not this file.
# Single-node KRaft: this process is both broker and (the only) controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$KAFKA_HOST:$KAFKA_SASL_SSL_PORT,SSL://$KAFKA_HOST:$KAFKA_SSL_PORT,OAUTH://$KAFKA_HOST:$KAFKA_OAUTH_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,SASL_SSL://$KAFKA_HOST:$KAFKA_SASL_SSL_PORT,SSL://$KAFKA_HOST:$KAFKA_SSL_PORT,OAUTH://$KAFKA_HOST:$KAFKA_OAUTH_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,OAUTH:SASL_SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER

# Secured listeners, with the throw-away CA of $KAFKA_TLS.
ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_TLS/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_TLS/ca.pem
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.client.auth=required
# OAUTHBEARER with Kafka's default, unsecured validator (OAuthBearerUnsecuredValidatorCallbackHandler).
listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauth.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;

log.dirs=$KAFKA_LOG_DIRS

# One replica of everything, no waiting for other members.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true

# Small footprint (2-core dev machines and CI).
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.retention.hours=24
log.segment.bytes=134217728
log.retention.check.interval.ms=300000
EOF

    # Broker logs go to a file in the stack dir, not the terminal.
    kafka_write_log4j "$KAFKA_CONF/log4j2.xml" "$KAFKA_LOGS"
}

# The broker's logging config FILE: server.log (rolled at 50 MB, 3 kept) in the directory LOGS.
kafka_write_log4j() {
    cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="$2/server.log" filePattern="$2/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="50MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

# Format the KRaft metadata/log dir once (new cluster id, single-voter quorum).
kafka_format() {
    local marker="$KAFKA_DATA/controller-port"
    if [[ -f $KAFKA_LOG_DIRS/meta.properties ]]; then
        # The controller endpoint is recorded in the metadata log at format time.
        local formatted
        formatted="$(cat "$marker" 2>/dev/null || echo "$KAFKA_CONTROLLER_PORT")"
        [[ $formatted == "$KAFKA_CONTROLLER_PORT" ]] ||
            die "kafka: data was formatted for controller port $formatted; use KAFKA_CONTROLLER_PORT=$formatted or reset with: scripts/stack.sh down --clean kafka"
        return 0
    fi
    # Kafka cluster ids are 16 random bytes, URL-safe base64 without padding;
    # avoid a leading '-' so the id is not taken for a command-line option.
    local id
    id="-"
    while [[ $id == -* ]]; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    say "kafka: formatting storage in $KAFKA_LOG_DIRS (cluster id $id)"
    local log="$KAFKA_LOGS/format.log"
    if ! java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.xml" -cp "$KAFKA_LIBS/*" \
        kafka.tools.StorageTool format --config "$KAFKA_CONF/server.properties" \
        --cluster-id "$id" --standalone >"$log" 2>&1; then
        show_log_tail "$log"
        die "kafka: formatting storage failed (full log: $log)"
    fi
    echo "$KAFKA_CONTROLLER_PORT" >"$marker"
}

# Wait until the broker answers, or fail (stopping it) with a pointer to the log.
kafka_wait_ready() {
    local pid=$1 log_from=${2:-0} start=$SECONDS
    # A broker loads every partition it holds before it answers: after many test runs (each
    # makes topics of its own) that takes minutes, so the wait grows by 20 ms a partition.
    local partitions timeout=$KAFKA_START_TIMEOUT
    partitions=$(find "$KAFKA_LOG_DIRS" -mindepth 1 -maxdepth 1 -type d -name '*-[0-9]*' 2>/dev/null | wc -l)
    if ((partitions > 1000)); then
        timeout=$((KAFKA_START_TIMEOUT + partitions / 50))
        say "kafka: loading $partitions partitions (waiting up to ${timeout}s; scripts/stack.sh down --clean kafka starts empty)"
    fi
    local deadline=$((SECONDS + timeout))
    while ! kafka_probe; do
        if ! pid_alive "$pid"; then
            rm -f "$KAFKA_PIDFILE"
            show_log_tail "$KAFKA_LOGS/server.log" "$log_from"
            show_log_tail "$KAFKA_LOGS/kafka.out"
            die "kafka: broker exited during startup; see $KAFKA_LOGS/server.log and $KAFKA_LOGS/kafka.out"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$KAFKA_LOGS/server.log" "$log_from"
            kafka_stop "$pid" >&2
            die "kafka: broker not ready on $KAFKA_ADDR after ${timeout}s (stopped it; $partitions partitions on disk, KAFKA_START_TIMEOUT raises the wait, scripts/stack.sh down --clean kafka starts empty); see $KAFKA_LOGS/server.log"
        fi
        sleep 1
    done
    say "kafka: ready on $KAFKA_ADDR (pid $pid, $((SECONDS - start))s)"
}

kafka_up() {
    if cluster_mode; then
        cluster_up
        return
    fi
    [[ ! -f $KAFKA_MODE_FILE ]] ||
        die "kafka: the stack in $STACK_DIR runs with BROKERS=$(<"$KAFKA_MODE_FILE"); stop it first: scripts/stack.sh down kafka"
    need_java
    local pid
    if pid="$(kafka_pid)"; then
        if kafka_probe; then
            say "kafka: already running on $KAFKA_ADDR (pid $pid)"
            if port_open "$KAFKA_HOST" "$KAFKA_SASL_SSL_PORT"; then
                kafka_scram_user
            else
                say "kafka: warning: no SASL_SSL listener on $KAFKA_HOST:$KAFKA_SASL_SSL_PORT (the broker was started by an older stack script); restart it for the security tests: make down && make up" >&2
            fi
            port_open "$KAFKA_HOST" "$KAFKA_OAUTH_PORT" ||
                say "kafka: warning: no OAUTHBEARER listener on $KAFKA_HOST:$KAFKA_OAUTH_PORT (the broker was started by an older stack script); restart it for the security tests: make down && make up" >&2
            return 0
        fi
        say "kafka: pid $pid is up but not answering yet; waiting"
        kafka_wait_ready "$pid"
        return 0
    fi

    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_SSL_PORT" "$KAFKA_OAUTH_PORT"; do
        ! port_open "$KAFKA_HOST" "$port" ||
            die "kafka: $KAFKA_HOST:$port is already in use by another process (a Docker Kafka? another stack dir?); stop it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
    done

    kafka_fetch
    kafka_tls
    kafka_write_config
    kafka_format

    say "kafka: starting broker on $KAFKA_ADDR (logs: $KAFKA_LOGS/server.log)"
    rm -f "$KAFKA_PIDFILE"
    local log_from
    log_from="$(file_size "$KAFKA_LOGS/server.log")"
    # setsid: own session, so it survives the calling shell; the inner bash
    # records its pid and exec's java, so the pid file holds the java pid.
    # fd 9 (the stack lock) must not leak into the long-running broker.
    # shellcheck disable=SC2086,SC2016  # JVM opts are word lists; $$/$0 are the inner bash's
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PIDFILE" \
        java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true $KAFKA_JVM_OPTS \
        -Dlog4j2.configurationFile="$KAFKA_CONF/log4j2.xml" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF/server.properties" \
        </dev/null >"$KAFKA_LOGS/kafka.out" 2>&1 9>&- &

    local i
    for i in $(seq 50); do
        [[ -s $KAFKA_PIDFILE ]] && break
        sleep 0.1
    done
    pid="$(cat "$KAFKA_PIDFILE" 2>/dev/null || true)"
    [[ -n $pid ]] || die "kafka: broker did not start; see $KAFKA_LOGS/kafka.out"
    kafka_wait_ready "$pid" "$log_from"
    kafka_scram_user
}

# SIGTERM, wait up to KAFKA_STOP_TIMEOUT s (clean shutdown), then SIGKILL.
kafka_stop() {
    stop_process kafka "$1" "$KAFKA_PIDFILE" "$KAFKA_STOP_TIMEOUT"
}

kafka_down() {
    if cluster_mode; then
        cluster_down
        return
    fi
    local pid
    if pid="$(kafka_pid)"; then
        kafka_stop "$pid"
    else
        rm -f "$KAFKA_PIDFILE"
        say "kafka: not running"
    fi
    if [[ ${CLEAN:-false} == true ]]; then
        rm -rf "$KAFKA_DATA" "$KAFKA_TLS"
        say "kafka: removed data dir $KAFKA_DATA and certificates $KAFKA_TLS"
    fi
}

kafka_sasl_ssl_probe() { port_open "$KAFKA_HOST" "$KAFKA_SASL_SSL_PORT"; }
kafka_ssl_probe() { port_open "$KAFKA_HOST" "$KAFKA_SSL_PORT"; }
kafka_oauth_probe() { port_open "$KAFKA_HOST" "$KAFKA_OAUTH_PORT"; }

kafka_status() {
    if cluster_mode; then
        cluster_status
        return
    fi
    local pid rc=0
    pid="$(kafka_pid 2>/dev/null || true)"
    status_line kafka "$KAFKA_ADDR" "$pid" kafka_probe "$KAFKA_LOGS/server.log" || rc=1
    status_line kafka-sasl "sasl_ssl://$KAFKA_HOST:$KAFKA_SASL_SSL_PORT" "$pid" kafka_sasl_ssl_probe \
        "$KAFKA_LOGS/server.log" || rc=1
    status_line kafka-tls "ssl://$KAFKA_HOST:$KAFKA_SSL_PORT" "$pid" kafka_ssl_probe "$KAFKA_LOGS/server.log" || rc=1
    status_line kafka-oauth "sasl_ssl://$KAFKA_HOST:$KAFKA_OAUTH_PORT" "$pid" kafka_oauth_probe \
        "$KAFKA_LOGS/server.log" || rc=1
    if [[ -f $KAFKA_TLS/.complete ]]; then
        printf '%-10s %-10s %s\n' "" "" "SCRAM-SHA-512 user $KAFKA_SCRAM_USER, password file $KAFKA_TLS/scram-password; CA $KAFKA_TLS/ca.pem; client certificate $KAFKA_TLS/client.pem + client.key"
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------
# kafka cluster (BROKERS=3)
# ---------------------------------------------------------------------------

KAFKA_PORT_STEP="${KAFKA_PORT_STEP:-10}"
KAFKA_CLUSTER="$KAFKA_DIR/cluster"             # node-N/{config,data,logs}; data removed by `down --clean`
KAFKA_MODE_FILE="$KAFKA_DIR/brokers"           # the BROKERS of the running stack, until `down`

[[ $KAFKA_PORT_STEP =~ ^[0-9]+$ ]] && ((KAFKA_PORT_STEP > 0)) ||
    die "KAFKA_PORT_STEP must be a positive number, got '$KAFKA_PORT_STEP'"

# BROKERS as given, else as the running stack was started, else 1.
kafka_brokers() {
    if [[ -n ${BROKERS:-} ]]; then
        echo "$BROKERS"
    elif [[ -f $KAFKA_MODE_FILE ]]; then
        cat "$KAFKA_MODE_FILE"
    else
        echo 1
    fi
}

cluster_mode() { [[ $(kafka_brokers) != 1 ]]; }

node_port() { echo $((KAFKA_PORT + ($1 - 1) * KAFKA_PORT_STEP)); }
node_controller_port() { echo $((KAFKA_CONTROLLER_PORT + ($1 - 1) * KAFKA_PORT_STEP)); }
node_dir() { echo "$KAFKA_CLUSTER/node-$1"; }

cluster_nodes() { seq 1 "$(kafka_brokers)"; }

# The pid of node N if it runs; cleans up a stale pid file.
node_pid() {
    local n=$1 pid pidfile conf
    pidfile="$(node_dir "$n")/kafka.pid"
    conf="$(node_dir "$n")/config/server.properties"
    [[ -f $pidfile ]] || return 1
    pid="$(<"$pidfile")"
    if pid_alive "$pid" && tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF "kafka.Kafka $conf"; then
        echo "$pid"
        return 0
    fi
    rm -f "$pidfile"
    return 1
}

node_write_config() {
    local n=$1 dir voters="" i
    dir="$(node_dir "$n")"
    mkdir -p "$dir/config" "$dir/data" "$dir/logs"
    for i in $(cluster_nodes); do
        voters+="${voters:+,}$i@$KAFKA_HOST:$(node_controller_port "$i")"
    done
    cat >"$dir/config/server.properties" <<CONF
# Generated by scripts/stack.sh on each start; edit the script, not this file.
# Node $n of a $(kafka_brokers)-node KRaft cluster: broker and controller (a static quorum of every node).
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://$KAFKA_HOST:$(node_port "$n"),CONTROLLER://$KAFKA_HOST:$(node_controller_port "$n")
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$(node_port "$n")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER

log.dirs=$dir/data

# Three replicas of everything; a write with acks=all needs two in sync.
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true

# Small footprint (2-core dev machines and CI).
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.retention.hours=24
log.segment.bytes=134217728
log.retention.check.interval.ms=300000
CONF
    kafka_write_log4j "$dir/config/log4j2.xml" "$dir/logs"
}

# Format every node's storage once, with one cluster id; refuse other ports than at format time.
cluster_format() {
    local marker="$KAFKA_CLUSTER/ports" ports id n log
    ports="$(kafka_brokers) $KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_PORT_STEP"
    if [[ -f $marker ]]; then
        [[ $(<"$marker") == "$ports" ]] ||
            die "kafka: the cluster in $KAFKA_CLUSTER was formatted for BROKERS KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_PORT_STEP = $(<"$marker"); use those or reset with: BROKERS=$(kafka_brokers) scripts/stack.sh down --clean kafka"
        return 0
    fi
    id="-"
    while [[ $id == -* ]]; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    say "kafka: formatting $(kafka_brokers) nodes in $KAFKA_CLUSTER (cluster id $id)"
    for n in $(cluster_nodes); do
        log="$(node_dir "$n")/logs/format.log"
        if ! java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.xml" -cp "$KAFKA_LIBS/*" \
            kafka.tools.StorageTool format --config "$(node_dir "$n")/config/server.properties" \
            --cluster-id "$id" >"$log" 2>&1; then
            show_log_tail "$log"
            die "kafka: formatting node $n failed (full log: $log)"
        fi
    done
    echo "$ports" >"$marker"
}

# Starts node N in the background (its config written and storage formatted).
node_start() {
    local n=$1 dir pidfile i
    dir="$(node_dir "$n")"
    pidfile="$dir/kafka.pid"
    ! port_open "$KAFKA_HOST" "$(node_port "$n")" ||
        die "kafka: $KAFKA_HOST:$(node_port "$n") (node $n) is already in use by another process; stop it or set KAFKA_PORT / KAFKA_PORT_STEP"
    ! port_open "$KAFKA_HOST" "$(node_controller_port "$n")" ||
        die "kafka: $KAFKA_HOST:$(node_controller_port "$n") (controller of node $n) is already in use by another process; stop it or set KAFKA_CONTROLLER_PORT / KAFKA_PORT_STEP"
    say "kafka: starting node $n on $KAFKA_HOST:$(node_port "$n"), controller :$(node_controller_port "$n") (logs: $dir/logs/server.log)"
    rm -f "$pidfile"
    # As in kafka_up: own session, pid file holds the java pid, the lock's fd not inherited.
    # shellcheck disable=SC2086,SC2016
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
        java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true $KAFKA_JVM_OPTS \
        -Dlog4j2.configurationFile="$dir/config/log4j2.xml" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/config/server.properties" \
        </dev/null >"$dir/logs/kafka.out" 2>&1 9>&- &
    for i in $(seq 50); do
        [[ -s $pidfile ]] && break
        sleep 0.1
    done
    [[ -s $pidfile ]] || die "kafka: node $n did not start; see $dir/logs/kafka.out"
}

# Waits until node N answers and sees MIN_BROKERS brokers.
node_wait_ready() {
    local n=$1 min=${2:-1} start=$SECONDS pid dir
    dir="$(node_dir "$n")"
    while ! kafka_probe "$(node_port "$n")" "$min"; do
        if ! pid="$(node_pid "$n")"; then
            show_log_tail "$dir/logs/server.log"
            show_log_tail "$dir/logs/kafka.out"
            die "kafka: node $n exited during startup; see $dir/logs/server.log"
        fi
        if ((SECONDS - start >= KAFKA_START_TIMEOUT)); then
            show_log_tail "$dir/logs/server.log"
            die "kafka: node $n not ready on $KAFKA_HOST:$(node_port "$n") after ${KAFKA_START_TIMEOUT}s; see $dir/logs/server.log"
        fi
        sleep 1
    done
    say "kafka: node $n ready on $KAFKA_HOST:$(node_port "$n") (pid $(node_pid "$n"), $((SECONDS - start))s)"
}

cluster_up() {
    local brokers n pid port
    brokers="$(kafka_brokers)"
    [[ $brokers == 3 ]] || die "BROKERS must be 1 or 3, got '$brokers'"
    if [[ -f $KAFKA_MODE_FILE && $(<"$KAFKA_MODE_FILE") != "$brokers" ]]; then
        die "kafka: the stack in $STACK_DIR runs with BROKERS=$(<"$KAFKA_MODE_FILE"); stop it first: scripts/stack.sh down kafka"
    fi
    if pid="$(kafka_pid 2>/dev/null)"; then
        die "kafka: the single broker (pid $pid) of $STACK_DIR runs; stop it first: scripts/stack.sh down kafka"
    fi
    for n in $(cluster_nodes); do
        node_pid "$n" >/dev/null && continue
        for port in "$(node_port "$n")" "$(node_controller_port "$n")"; do
            ! port_open "$KAFKA_HOST" "$port" ||
                die "kafka: $KAFKA_HOST:$port (node $n) is already in use by another process (another stack dir?); stop it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT / KAFKA_PORT_STEP"
        done
    done
    need_java
    kafka_fetch
    echo "$brokers" >"$KAFKA_MODE_FILE"
    for n in $(cluster_nodes); do node_write_config "$n"; done
    cluster_format
    # Every controller must be up for the quorum to elect a leader: start all, then wait.
    for n in $(cluster_nodes); do
        if pid="$(node_pid "$n")"; then
            say "kafka: node $n already running (pid $pid)"
        else
            node_start "$n"
        fi
    done
    for n in $(cluster_nodes); do node_wait_ready "$n" "$brokers"; done
    say "kafka: $brokers brokers on $(for n in $(cluster_nodes); do printf '%s:%s ' "$KAFKA_HOST" "$(node_port "$n")"; done)(bootstrap: $KAFKA_ADDR); new topics: replication factor 3, min.insync.replicas=2; no SASL_SSL or mTLS listener"
}

cluster_down() {
    local n pid pids=()
    # Every node at once: a node shutting down alone waits for a controller quorum.
    for n in $(cluster_nodes); do
        if pid="$(node_pid "$n")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$n:$pid")
        else
            say "kafka: node $n not running"
        fi
    done
    local entry
    for entry in "${pids[@]}"; do
        stop_process "kafka node ${entry%%:*}" "${entry#*:}" "$(node_dir "${entry%%:*}")/kafka.pid" "$KAFKA_STOP_TIMEOUT"
    done
    rm -f "$KAFKA_MODE_FILE"
    if [[ ${CLEAN:-false} == true ]]; then
        rm -rf "$KAFKA_CLUSTER"
        say "kafka: removed the cluster's data, config and logs in $KAFKA_CLUSTER"
    fi
}

cluster_status() {
    local n pid rc=0
    for n in $(cluster_nodes); do
        pid="$(node_pid "$n" || true)"
        status_line "kafka-$n" "$KAFKA_HOST:$(node_port "$n")" "$pid" "node_probe_$n" \
            "$(node_dir "$n")/logs/server.log" || rc=1
    done
    printf '%-10s %-10s %s\n' "" "" "$(kafka_brokers)-node KRaft cluster, controllers on$(for n in $(cluster_nodes); do printf ' :%s' "$(node_controller_port "$n")"; done); plaintext only: no SASL_SSL or mTLS listener (BROKERS=1 has them)"
    return "$rc"
}

# status_line takes a probe command without arguments: one per node.
node_probe_1() { kafka_probe "$(node_port 1)"; }
node_probe_2() { kafka_probe "$(node_port 2)"; }
node_probe_3() { kafka_probe "$(node_port 3)"; }

# kill -9 node N (a broker crash); start-broker N brings it back.
kill_broker() {
    local n=${1:-} pid
    cluster_mode || die "kill-broker needs a cluster: start one with BROKERS=3 scripts/stack.sh up kafka"
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= $(kafka_brokers))) ||
        die "kill-broker: N must be a node number from 1 to $(kafka_brokers), got '$n'"
    pid="$(node_pid "$n")" || die "kafka: node $n is not running"
    kill -KILL "$pid"
    local i
    for i in $(seq 50); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    rm -f "$(node_dir "$n")/kafka.pid"
    say "kafka: node $n killed (kill -9, pid $pid)"
}

start_broker() {
    local n=${1:-} pid
    cluster_mode || die "start-broker needs a cluster: start one with BROKERS=3 scripts/stack.sh up kafka"
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= $(kafka_brokers))) ||
        die "start-broker: N must be a node number from 1 to $(kafka_brokers), got '$n'"
    if pid="$(node_pid "$n")"; then
        say "kafka: node $n already running (pid $pid)"
        return 0
    fi
    need_java
    node_write_config "$n"
    node_start "$n"
    node_wait_ready "$n" "$(kafka_brokers)"
}

# shellcheck source=scripts/stack/registry.sh
source "$SCRIPT_DIR/stack/registry.sh"

# ---------------------------------------------------------------------------
# s3 (s3s-fs)
# ---------------------------------------------------------------------------

S3_VERSION=0.14.1
S3_HOST=127.0.0.1
S3_PORT="${S3_PORT:-8014}"
S3_ACCESS_KEY="${S3_ACCESS_KEY:-reflex}"
S3_SECRET_KEY="${S3_SECRET_KEY:-reflex-secret}"
S3_BUCKETS="${S3_BUCKETS:-lake}"
S3_START_TIMEOUT=30

S3_DIR="$STACK_DIR/s3"
S3_BIN="${S3S_FS_BIN:-${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs}"
S3_DATA="$S3_DIR/data"                         # one folder per bucket; removed by `down --clean`
S3_LOGS="$S3_DIR/logs"
S3_PIDFILE="$S3_DIR/s3s-fs.pid"
S3_ADDR="$S3_HOST:$S3_PORT"

[[ $S3_PORT =~ ^[0-9]+$ ]] || die "S3_PORT must be a port number, got '$S3_PORT'"

# Any HTTP answer means the server is serving (an anonymous request gets an S3 error document).
s3_probe() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$S3_ADDR/" 2>/dev/null | grep -qv '^000$'
}

s3_pid() {
    local pid
    if [[ -f $S3_PIDFILE ]]; then
        pid="$(<"$S3_PIDFILE")"
        if pid_alive "$pid" && tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$S3_DATA"; then
            echo "$pid"
            return 0
        fi
        rm -f "$S3_PIDFILE"
    fi
    return 1
}

# Build s3s-fs once with cargo (later versions need a newer rustc than 1.95).
s3_fetch() {
    mkdir -p "$S3_LOGS"
    if [[ -x $S3_BIN ]] && [[ "$("$S3_BIN" --version 2>/dev/null)" == "s3s-fs $S3_VERSION" ]]; then
        return 0
    fi
    [[ -z ${S3S_FS_BIN:-} ]] || die "s3: S3S_FS_BIN=$S3S_FS_BIN is not s3s-fs $S3_VERSION"
    command -v cargo >/dev/null 2>&1 || die "cargo not found: s3s-fs is installed with cargo install"
    say "s3: installing s3s-fs $S3_VERSION with cargo (first run only, a few minutes)..."
    local log="$S3_LOGS/install.log"
    # Its own target dir, so it never waits for (or invalidates) the project's build.
    if ! CARGO_TARGET_DIR="$S3_DIR/build" cargo install "s3s-fs@$S3_VERSION" --features binary \
        --locked --force >"$log" 2>&1; then
        show_log_tail "$log"
        die "s3: cargo could not install s3s-fs $S3_VERSION (full log: $log)"
    fi
    rm -rf "$S3_DIR/build"
    say "s3: installed $S3_BIN"
}

s3_wait_ready() {
    local pid=$1 start=$SECONDS
    while ! s3_probe; do
        if ! pid_alive "$pid"; then
            rm -f "$S3_PIDFILE"
            show_log_tail "$S3_LOGS/s3s-fs.log"
            die "s3: s3s-fs exited during startup; see $S3_LOGS/s3s-fs.log"
        fi
        if ((SECONDS - start >= S3_START_TIMEOUT)); then
            kill -TERM "$pid" 2>/dev/null || true
            die "s3: not ready on $S3_ADDR after ${S3_START_TIMEOUT}s (stopped it); see $S3_LOGS/s3s-fs.log"
        fi
        sleep 0.2
    done
    say "s3: ready on http://$S3_ADDR (pid $pid, buckets: $S3_BUCKETS, access key $S3_ACCESS_KEY)"
}

s3_up() {
    command -v curl >/dev/null 2>&1 || die "curl not found (Debian: apt-get install curl)"
    local pid bucket
    mkdir -p "$S3_DATA" "$S3_LOGS"
    for bucket in $S3_BUCKETS; do mkdir -p "$S3_DATA/$bucket"; done
    if pid="$(s3_pid)"; then
        s3_wait_ready "$pid"
        return 0
    fi
    ! port_open "$S3_HOST" "$S3_PORT" ||
        die "s3: $S3_ADDR is already in use by another process; stop it or set S3_PORT"
    s3_fetch
    say "s3: starting s3s-fs on http://$S3_ADDR (data: $S3_DATA)"
    # shellcheck disable=SC2016  # $$/$0 are the inner bash's
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$S3_PIDFILE" \
        "$S3_BIN" --host "$S3_HOST" --port "$S3_PORT" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$S3_DATA" \
        </dev/null >"$S3_LOGS/s3s-fs.log" 2>&1 9>&- &
    local i
    for i in $(seq 50); do
        [[ -s $S3_PIDFILE ]] && break
        sleep 0.1
    done
    pid="$(cat "$S3_PIDFILE" 2>/dev/null || true)"
    [[ -n $pid ]] || die "s3: s3s-fs did not start; see $S3_LOGS/s3s-fs.log"
    s3_wait_ready "$pid"
}

s3_down() {
    local pid
    if pid="$(s3_pid)"; then
        stop_process s3 "$pid" "$S3_PIDFILE" 5
    else
        say "s3: not running"
    fi
    if [[ ${CLEAN:-false} == true ]]; then
        rm -rf "$S3_DATA"
        say "s3: removed data dir $S3_DATA"
    fi
}

s3_status() {
    status_line s3 "http://$S3_ADDR" "$(s3_pid || true)" s3_probe "$S3_LOGS/s3s-fs.log"
}

# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

main() {
    local cmd="${1:-}"
    [[ -n $cmd ]] || usage
    shift
    case $cmd in
        kill-broker)
            kill_broker "$@"
            return
            ;;
        start-broker)
            take_lock
            start_broker "$@"
            return
            ;;
        delete-topics)
            kafka_delete_topics "${1:-}"
            return
            ;;
    esac

    CLEAN=false
    local arg svc selected=()
    for arg in "$@"; do
        case $arg in
            --clean) CLEAN=true ;;
            -h | --help) usage 0 ;;
            -*) die "unknown option: $arg" ;;
            *)
                [[ " ${SERVICES[*]} " == *" $arg "* ]] ||
                    die "unknown service: $arg (known: ${SERVICES[*]})"
                selected+=("$arg")
                ;;
        esac
    done
    # Keep the canonical start order whatever order the user typed.
    local services=()
    for svc in "${SERVICES[@]}"; do
        if ((${#selected[@]} == 0)) || [[ " ${selected[*]} " == *" $svc "* ]]; then
            services+=("$svc")
        fi
    done
    [[ $CLEAN == false || $cmd == down ]] || die "--clean only applies to down"

    case $cmd in
        up)
            take_lock
            for svc in "${services[@]}"; do "${svc}_up"; done
            ;;
        down)
            take_lock
            local i
            for ((i = ${#services[@]} - 1; i >= 0; i--)); do "${services[i]}_down"; done
            ;;
        status)
            local rc=0
            for svc in "${services[@]}"; do "${svc}_status" || rc=3; done
            exit "$rc"
            ;;
        fetch)
            take_lock
            for svc in "${services[@]}"; do
                if declare -F "${svc}_fetch" >/dev/null; then "${svc}_fetch"; fi
            done
            ;;
        -h | --help | help) usage 0 ;;
        *) die "unknown command: $cmd (use up, down, status, fetch, kill-broker, start-broker or delete-topics)" ;;
    esac
}

main "$@"

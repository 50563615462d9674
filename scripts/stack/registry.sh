# shellcheck shell=bash
# Apicurio Registry 3.3.3 (Confluent-compatible API under /apis/ccompat/v7), sourced by
# scripts/stack.sh. Fetched from Maven Central as io.apicurio:apicurio-registry-app:3.3.3:tar.gz:all
# and run with `java -jar quarkus-run.jar`. It needs Java 21 or later: REGISTRY_JAVA, else `java`,
# else the newest JDK under /usr/lib/jvm that is new enough. Schemas are kept in an H2 file
# database under the stack dir, so they survive a restart (`down --clean` removes them).
#   REGISTRY_PORT (8081), REGISTRY_MANAGEMENT_PORT (port + 1000), REGISTRY_VERSION (3.3.3), REGISTRY_HEAP_OPTS (-Xmx384m),
#   REGISTRY_START_TIMEOUT (120 s), REGISTRY_COMPATIBILITY (BACKWARD), REGISTRY_APP (unpacked app dir).

REGISTRY_VERSION="${REGISTRY_VERSION:-3.3.3}"
REGISTRY_HOST=127.0.0.1
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
REGISTRY_MANAGEMENT_PORT="${REGISTRY_MANAGEMENT_PORT:-$((REGISTRY_PORT + 1000))}"  # Quarkus health/metrics
REGISTRY_HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xmx384m}"
REGISTRY_START_TIMEOUT="${REGISTRY_START_TIMEOUT:-120}"
REGISTRY_COMPATIBILITY="${REGISTRY_COMPATIBILITY:-BACKWARD}"
REGISTRY_DIR="$STACK_DIR/registry"
REGISTRY_APP="${REGISTRY_APP:-$REGISTRY_DIR/app/$REGISTRY_VERSION}"   # keyed by version; survives --clean
REGISTRY_DATA="$REGISTRY_DIR/data"                    # removed by `down --clean`
REGISTRY_LOGS="$REGISTRY_DIR/logs"
REGISTRY_PIDFILE="$REGISTRY_DIR/registry.pid"
REGISTRY_URL="http://$REGISTRY_HOST:$REGISTRY_PORT/apis/ccompat/v7"

[[ $REGISTRY_PORT =~ ^[0-9]+$ ]] || die "REGISTRY_PORT must be a port number, got '$REGISTRY_PORT'"

# The major version of a java binary (8 for 1.8).
java_major() {
    local ver
    ver="$("$1" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    [[ $ver == 1.* ]] && ver="${ver#1.}"
    printf '%s' "${ver%%.*}"
}

# Prints a java binary of version 21 or later, or fails with what to install.
registry_java() {
    local candidate best="" best_major=0 major
    for candidate in "${REGISTRY_JAVA:-}" "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
        [[ -n $candidate && -x $candidate ]] || continue
        major="$(java_major "$candidate")"
        [[ $major =~ ^[0-9]+$ ]] || continue
        if ((major >= 21 && major > best_major)); then
            best="$candidate" best_major=$major
        fi
        [[ -n ${REGISTRY_JAVA:-} && $candidate == "$REGISTRY_JAVA" && -n $best ]] && break
    done
    [[ -n $best ]] ||
        die "registry: Apicurio Registry $REGISTRY_VERSION needs Java 21 or later, none found: install one (Debian: apt-get install openjdk-21-jre-headless, or a Temurin 21+ JDK) or set REGISTRY_JAVA"
    printf '%s' "$best"
}

registry_probe() {
    curl -sf --max-time 2 "$REGISTRY_URL/subjects" >/dev/null 2>&1
}

registry_pid() {
    local pid
    pid="$(cat "$REGISTRY_PIDFILE" 2>/dev/null || true)"
    # The pid must still be this stack's registry: a pid file left behind by a process that died
    # may name another process now, and `registry_up` kills what it names when it is not ready.
    if [[ -n $pid ]] && pid_alive "$pid" && tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$REGISTRY_DATA/registry"; then
        printf '%s' "$pid"
        return 0
    fi
    rm -f "$REGISTRY_PIDFILE"
    return 1
}

registry_fetch() {
    [[ -f $REGISTRY_APP/quarkus-run.jar ]] && return 0
    need_mvn
    say "registry: fetching io.apicurio:apicurio-registry-app:$REGISTRY_VERSION (Maven)"
    local tmp
    tmp="$(mktemp -d "$STACK_DIR/.registry-fetch.XXXXXX")"
    mvn -B -q -Dstyle.color=never dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all" \
        -DoutputDirectory="$tmp" ||
        { rm -rf "$tmp"; die "registry: Maven could not fetch io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all"; }
    mkdir -p "$tmp/app"
    tar -xzf "$tmp"/apicurio-registry-app-*.tar.gz -C "$tmp/app"
    mkdir -p "$(dirname "$REGISTRY_APP")"
    rm -rf "$REGISTRY_APP"
    mv "$tmp/app" "$REGISTRY_APP"
    rm -rf "$tmp"
}

registry_up() {
    local java pid
    if pid="$(registry_pid)" && registry_probe; then
        say "registry: already running on $REGISTRY_URL (pid $pid)"
        return 0
    fi
    if [[ -z ${pid:-} ]] && port_open "$REGISTRY_HOST" "$REGISTRY_PORT"; then
        die "registry: $REGISTRY_HOST:$REGISTRY_PORT is already in use by another process; stop it or set REGISTRY_PORT"
    fi
    java="$(registry_java)"
    registry_fetch
    mkdir -p "$REGISTRY_DATA" "$REGISTRY_LOGS"
    if [[ -z ${pid:-} ]]; then
        say "registry: starting Apicurio Registry $REGISTRY_VERSION on $REGISTRY_URL (logs: $REGISTRY_LOGS/registry.log)"
        # shellcheck disable=SC2086,SC2016  # heap opts are a word list; $$/$0 are the inner bash's
        # fd 9 (the stack lock) must not leak into the long-running registry or its parent.
        (cd "$REGISTRY_APP" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$REGISTRY_PIDFILE" \
            "$java" $REGISTRY_HEAP_OPTS \
            -Dquarkus.http.host="$REGISTRY_HOST" -Dquarkus.http.port="$REGISTRY_PORT" \
            -Dquarkus.management.host="$REGISTRY_HOST" -Dquarkus.management.port="$REGISTRY_MANAGEMENT_PORT" \
            -Dapicurio.rules.global.compatibility="$REGISTRY_COMPATIBILITY" \
            -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 \
            "-Dapicurio.datasource.url=jdbc:h2:file:$REGISTRY_DATA/registry;DB_CLOSE_ON_EXIT=FALSE" \
            -jar quarkus-run.jar) </dev/null >"$REGISTRY_LOGS/registry.log" 2>&1 9>&- &
        for _ in $(seq 50); do
            [[ -s $REGISTRY_PIDFILE ]] && break
            sleep 0.1
        done
        pid="$(cat "$REGISTRY_PIDFILE" 2>/dev/null || true)"
        [[ -n $pid ]] || die "registry: did not start; see $REGISTRY_LOGS/registry.log"
    fi
    local start=$SECONDS
    until registry_probe; do
        if ! pid_alive "$pid"; then
            show_log_tail "$REGISTRY_LOGS/registry.log"
            die "registry: exited during start-up; see $REGISTRY_LOGS/registry.log"
        fi
        if ((SECONDS - start > REGISTRY_START_TIMEOUT)); then
            kill -KILL "$pid" 2>/dev/null || true
            die "registry: not ready on $REGISTRY_URL after ${REGISTRY_START_TIMEOUT}s (stopped it); see $REGISTRY_LOGS/registry.log"
        fi
        sleep 1
    done
    say "registry: ready on $REGISTRY_URL (pid $pid, $((SECONDS - start))s)"
}

registry_down() {
    local pid
    if pid="$(registry_pid)"; then
        stop_process registry "$pid" "$REGISTRY_PIDFILE" 20
    else
        say "registry: not running"
    fi
    if [[ ${CLEAN:-false} == true ]]; then
        rm -rf "$REGISTRY_DATA"
        say "registry: removed data dir $REGISTRY_DATA"
    fi
}

registry_status() {
    status_line registry "$REGISTRY_URL" "$(registry_pid || true)" registry_probe "$REGISTRY_LOGS/registry.log"
}

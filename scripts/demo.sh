#!/usr/bin/env bash
# The demo: sample events for a web shop through the actions pipeline on the local stack.
# Run it with `make demo`, which starts the stack and builds reflex first.
# DEMO_LAKE=s3 make demo writes the lake to the stack's S3 server (s3s-fs) instead of ./lake.
set -euo pipefail
cd "$(dirname "$0")/.."

reflex=target/release/reflex
config=config/reflex.toml
out=target/demo
export REFLEX_LOG="${REFLEX_LOG:-warn}"
# One id prefix for every event this run publishes, so the lake query can pick them out.
export DEMO_RUN="${DEMO_RUN:-$(date -u +%Y%m%d%H%M%S)}"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
# Each run analyses its own events with its own group and state: a group restored from an
# earlier run's changelog would hold that run's watermark, and find this run's events late.
export REFLEX_ANALYTICS_GROUP_ID="${REFLEX_ANALYTICS_GROUP_ID:-reflex-analytics-demo-$DEMO_RUN}"
export REFLEX_ANALYTICS_CHANGELOG_TOPIC="${REFLEX_ANALYTICS_CHANGELOG_TOPIC:-reflex.analytics.changelog.demo-$DEMO_RUN}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The supporting services: one sample HTTP service on :8090 plays the customer service (for
# enrichment) and the payment ledger (the http action of payment.authorized). On purpose the
# ledger refuses payment pay-100 until it is "fixed" below.
service=target/release/examples/action_service
service_pid=""
start_service() {
    stop_service
    "$service" --port 8090 --lookups scripts/demo-lookups.json --report-every 0 "$@" \
        >"$out/action-service.log" 2>&1 &
    service_pid=$!
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:8090/customers/cust-1" && return 0
        sleep 0.1
    done
    echo "error: the sample action service did not start on 127.0.0.1:8090 (is the port taken? see $out/action-service.log)" >&2
    exit 1
}
stop_service() {
    if [[ -n $service_pid ]]; then
        kill "$service_pid" 2>/dev/null || true
        wait "$service_pid" 2>/dev/null || true
        service_pid=""
    fi
}
trap stop_service EXIT
# Failed calls go round the retry topic once, after 2 s, before the dead-letter topic. pay-100's
# eight failed attempts stay below the breaker's threshold, so other payments are not refused
# (with the default of 5 the breaker opens, and payments called meanwhile fail fast too).
export REFLEX_ROLES_ACTIONS_RETRY_DELAY="${REFLEX_ROLES_ACTIONS_RETRY_DELAY:-2s}"
export REFLEX_ROLES_ACTIONS_RETRY_ROUNDS="${REFLEX_ROLES_ACTIONS_RETRY_ROUNDS:-1}"
export REFLEX_SERVICES_BREAKER_FAILURES="${REFLEX_SERVICES_BREAKER_FAILURES:-10}"
mkdir -p "$out"

step "a new signing key for the support desk (its refunds must be signed)"
# The desk keeps the private key; reflex gets the public key (config/reflex.toml's
# [publishers.support-desk], overridden here for this run).
desk_key="$out/support-desk.key"
rm -f "$desk_key"
REFLEX_PUBLISHERS_SUPPORT_DESK_PUBLIC_KEY="$("$reflex" sign --new-key "$desk_key" | sed -n 's/^public_key = "\(.*\)"$/\1/p')"
export REFLEX_PUBLISHERS_SUPPORT_DESK_PUBLIC_KEY
echo "public key $REFLEX_PUBLISHERS_SUPPORT_DESK_PUBLIC_KEY"

step "validate configuration, schemas and policies"
"$reflex" --config "$config" check

step "create topics"
"$reflex" --config "$config" topics

step "generate sample events (valid, denied, schema-invalid, unknown type, malformed)"
python3 scripts/demo-events.py "$out"

python="$(scripts/pyenv.sh)"
step "analytics: events of two hours ago in which the analyses (analytics/shop.toml) find something"
python3 scripts/demo-analytics.py "$out"
"$reflex" --config "$config" analytics test
# This run's analytics group starts where the topics end now, as a worker started at this
# point would: it reads this run's events only (earlier runs' events are hours ahead of them).
inputs=()
for topic in $(sed -n 's/^events = \[\(.*\)\]/\1/p' "$config" | tr -d '",'); do inputs+=(--topic "$topic"); done
scripts/kafka-tool.sh consumer-groups --bootstrap-server 127.0.0.1:9092 --group "$REFLEX_ANALYTICS_GROUP_ID" \
    --reset-offsets --to-latest --execute "${inputs[@]}" >/dev/null
echo "analytics group $REFLEX_ANALYTICS_GROUP_ID starts at the end of ${inputs[*]//--topic /}"
# Published first: the events below, at the current time, then move event time past their windows.
"$reflex" --config "$config" produce --no-validate --topic events.orders "$out/analytics-orders.jsonl"
"$reflex" --config "$config" produce --no-validate --topic events.payments "$out/analytics-payments.jsonl"
"$python" scripts/demo-refunds.py 127.0.0.1:9092 events.refunds "$out/analytics-refunds.jsonl" support-desk "$desk_key"

step "publish them (as they are: the bad ones are bad on purpose)"
"$reflex" --config "$config" produce --no-validate --topic events.orders "$out/orders.jsonl"
"$reflex" --config "$config" produce --no-validate --binary --topic events.payments "$out/payments.jsonl"
echo "the support desk signs its refunds (a few unsigned, one tampered with, one signed with an old key):"
"$python" scripts/demo-refunds.py 127.0.0.1:9092 events.refunds "$out/refunds.jsonl" support-desk "$desk_key"

step "register the schemas in the schema registry, and publish Avro events with confluent-kafka"
"$reflex" --config "$config" schemas register
"$python" scripts/demo-avro.py 127.0.0.1:9092 http://127.0.0.1:8081/apis/ccompat/v7 events.payments schemas/payment.settled.avsc 40

step "start the supporting services (customer lookups, payment ledger; the ledger refuses pay-100)"
start_service --fail /ledger/pay-100=503
echo "sample action service on http://127.0.0.1:8090 (pid $service_pid)"

step "run the analytics worker until drained: its findings go to reflex.analytics"
"$reflex" --config "$config" run --role analytics --drain --worker-id demo
echo "findings of this run:"
scripts/kafka-tool.sh console-consumer --bootstrap-server 127.0.0.1:9092 --topic reflex.analytics \
    --from-beginning --timeout-ms 5000 2>/dev/null | python3 -c 'import json, sys
for line in sys.stdin:
    f = json.loads(line)
    if not f.get("causationid", "").startswith(sys.argv[1] + "-"):
        continue
    d = f["data"]
    print("  %-40s %-10s %s..%s %s" % (f["type"], f.get("subject", "-"), d["window"]["start"][11:16],
          d["window"]["end"][11:16], json.dumps(d.get("values") or d.get("absence"))))' "$DEMO_RUN" || true

step "run the actions worker until the topics are drained (the findings too: policy, action, audit)"
"$reflex" --config "$config" run --role actions --drain --worker-id demo

step "dead letters by type and reason"
"$reflex" --config "$config" dlq list --since "$started"

step "fix the ledger, replay its dead letters, and drain again"
start_service
"$reflex" --config "$config" dlq replay --reason action_failed --since "$started"
"$reflex" --config "$config" run --role actions --drain --worker-id demo-replay
echo "audit trail of payment $DEMO_RUN-payment-100:"
scripts/kafka-tool.sh console-consumer --bootstrap-server 127.0.0.1:9092 --topic reflex.audit \
    --from-beginning --timeout-ms 5000 2>/dev/null | grep "\"event_id\":\"$DEMO_RUN-payment-100\"" \
    | python3 -c 'import json, sys
for line in sys.stdin:
    a = json.loads(line)
    act = a.get("action") or {}
    rep = (a.get("replay_of") or {}).get("dead_letter", "-")
    print("  %-14s attempts=%s status=%s replay_of=%s" % (a["outcome"], act.get("attempts"), act.get("status"), rep))' || true
stop_service

step "what the audit trail says about one denied event and one dead letter"
scripts/kafka-tool.sh console-consumer --bootstrap-server 127.0.0.1:9092 --topic reflex.audit \
    --from-beginning --timeout-ms 5000 2>/dev/null | grep -m1 '"outcome":"denied"' || true
scripts/kafka-tool.sh console-consumer --bootstrap-server 127.0.0.1:9092 --topic reflex.dlq \
    --from-beginning --max-messages 1 --timeout-ms 5000 \
    --property print.headers=true 2>/dev/null | tr ',' '\n' | grep '^reflex_' || true

cat <<'NOTE'

Every event has one audit record in the compacted topic reflex.audit (keyed by event id);
what could not be processed is in reflex.dlq with the reason in its reflex_* headers.
NOTE

step "write the lake: valid events and audit records as Parquet (lake role, until drained)"
if [[ ${DEMO_LAKE:-local} == s3 ]]; then
    export REFLEX_LAKE_STORE=s3://lake/demo REFLEX_LAKE_S3_ENDPOINT=http://127.0.0.1:8014
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-reflex}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-reflex-secret}"
fi
"$reflex" --config "$config" run --role lake --drain
lake="${REFLEX_LAKE_STORE:-$(sed -n 's/^store = "\(.*\)"/\1/p' "$config" | head -n 1)}"
[[ $lake == /* || $lake == *://* ]] || lake="$(cd "$(dirname "$config")" && realpath -m "$lake")"
if [[ -d $lake ]]; then
    printf '%s Parquet files, %s in %s\n' "$(find "$lake" -name '*.parquet' | wc -l)" \
        "$(du -sh "$lake" | cut -f1)" "$lake"
fi

step "query the lake with DuckDB (one row per event in each view, every Kafka record in <view>_raw)"
"$reflex" --config "$config" lake views >"$out/views.sql"
run="$DEMO_RUN"
# Per view: the Kafka records in <view>_raw, the view's rows and its distinct ids (for audit,
# distinct audit keys: the event id, or topic/partition/offset of an event without one).
audit_key="coalesce(event_id, \"topic\" || '/' || CAST(\"partition\" AS VARCHAR) || '/' || CAST(\"offset\" AS VARCHAR))"
counts=""
while read -r view; do
    key=id
    [[ $view == audit ]] && key="$audit_key"
    counts+="${counts:+ UNION ALL }SELECT '$view' AS view, (SELECT count(*) FROM \"${view}_raw\") AS records,
        count(*) AS \"rows\", count(DISTINCT $key) AS distinct_ids FROM \"$view\""
done < <(sed -n 's/^CREATE OR REPLACE VIEW "\(.*\)_raw" AS .*/\1/p' "$out/views.sql")
if [[ -z $counts ]]; then
    echo "error: reflex lake views created no views (see $out/views.sql)" >&2
    exit 1
fi
python3 scripts/lake-sql.py "@$out/views.sql" "SELECT * FROM ($counts) ORDER BY view = 'audit', view"
over="$(python3 scripts/lake-sql.py --json "@$out/views.sql" \
    "SELECT view, \"rows\", distinct_ids FROM ($counts) WHERE \"rows\" <> distinct_ids")"
if [[ -n $over ]]; then
    echo "error: a view has more rows than distinct ids ([view, rows, distinct ids]):" >&2
    echo "$over" >&2
    exit 1
fi
echo
# This run's events by final outcome (the audit view keeps each event's latest record).
python3 scripts/lake-sql.py "@$out/views.sql" "
    SELECT type, outcome, coalesce(reason, decision.reasons[1], '') AS why, count(*) AS events
    FROM audit WHERE event_id LIKE '$run-%' GROUP BY ALL ORDER BY 1, 2, 3"

echo
# This run's analytics findings: decided, acted on and audited like any event. (Their ids come
# from analysis, window and group, so they are told from earlier runs' by when they were decided.)
python3 scripts/lake-sql.py "@$out/views.sql" "
    SELECT type, outcome, count(*) AS findings FROM audit
    WHERE type LIKE 'reflex.analytics.%' AND processed_at >= TIMESTAMPTZ '$started'
    GROUP BY ALL ORDER BY 1, 2"

cat <<NOTE

The views are in $out/views.sql: \`duckdb -init $out/views.sql\` (pip install duckdb-cli) opens
them, e.g. SELECT date, hour, sum(amount) FROM order_placed GROUP BY ALL; (one row per event: a
replayed event counts once; order_placed_raw has every Kafka record).
NOTE

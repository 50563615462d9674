#!/usr/bin/env bash
# Checks the Helm chart (deploy/helm/reflex) and the plain manifests rendered from it (deploy/k8s).
#
#   scripts/k8s-check.sh lint        helm lint; helm template over several value sets; the values the
#                                    chart must refuse are refused; deploy/k8s is what the chart renders
#   scripts/k8s-check.sh render      write deploy/k8s/ anew from the chart
#   scripts/k8s-check.sh apiserver   every rendered object sent to a real kube-apiserver (with etcd and
#                                    KEDA's CRDs) as a server-side dry run with strict field validation
#
# helm and kube-apiserver are built from the Go module proxy by scripts/k8s-tools.sh and cached in
# .stack/bin; etcd is Debian's etcd-server. The API server listens on 127.0.0.1 only, with a
# throw-away token, and is stopped when the check ends.
#   K8S_CHECK_PORT (16443), K8S_ETCD_PORT (12379)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CHART="$REPO_DIR/deploy/helm/reflex"
RENDERED="$REPO_DIR/deploy/k8s"
NAMESPACE=reflex
PASSED=0
FAILED=0

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
pass() { PASSED=$((PASSED + 1)); printf 'ok    %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$*"; }

helm_bin() { "$SCRIPT_DIR/k8s-tools.sh" helm; }

# The value sets every check renders: name and --set flags.
VALUE_SETS=(
    "default|"
    "statefulset|--set roles.actions.kind=StatefulSet --set roles.lake.kind=StatefulSet"
    "no-keda|--set autoscaling.enabled=false --set roles.lake.enabled=false"
    "bundle|--set policyBundle.url=s3://policies/reflex/bundle.tar.gz --set policyBundle.verificationKey=file:/etc/reflex/secrets/bundle.pub --set-string secrets.files.bundle\\.pub=PEM --set-string secrets.env.AWS_ACCESS_KEY_ID=id --set-string secrets.env.AWS_SECRET_ACCESS_KEY=key --set autoscaling.triggerAuthentication=kafka-auth --set lake.store=s3://lake/reflex --set lake.s3Endpoint=http://minio:9000"
)

render() { # render HELM NAME FLAGS
    local helm=$1 flags=$3
    # shellcheck disable=SC2086  # the flags are words
    "$helm" template reflex "$CHART" --namespace "$NAMESPACE" $flags 2> >(grep -v 'symbolic link' >&2)
}

lint() {
    local helm out set name flags
    helm="$(helm_bin)"
    if out="$("$helm" lint --strict "$CHART" 2>&1)"; then pass "helm lint --strict"; else fail "helm lint: $out"; fi
    for set in "${VALUE_SETS[@]}"; do
        name=${set%%|*} flags=${set#*|}
        if out="$(render "$helm" "$name" "$flags")" && grep -q '^kind: Deployment\|^kind: StatefulSet' <<<"$out"; then
            pass "helm template ($name): $(grep -c '^kind:' <<<"$out") objects"
        else
            fail "helm template ($name): $out"
        fi
    done
    # The chart refuses what cannot work.
    local refused=(
        "--set roles.actions.replicas=13|more than partitions = 12"
        "--set autoscaling.minReplicas=13 --set autoscaling.maxReplicas=20|autoscaling.minReplicas = 13 is more than partitions = 12"
        "--set roles.lake.kind=DaemonSet|use Deployment or StatefulSet"
    )
    for set in "${refused[@]}"; do
        flags=${set%%|*} name=${set#*|}
        if out="$(render "$helm" refused "$flags" 2>&1)"; then
            fail "helm template $flags was accepted"
        elif grep -q "$name" <<<"$out"; then
            pass "helm template $flags refused: $name"
        else
            fail "helm template $flags refused for another reason: $out"
        fi
    done
    # KEDA's maximum is capped at the partition count.
    out="$(render "$helm" cap "--set autoscaling.maxReplicas=50 --set partitions=6")"
    if grep -q 'maxReplicaCount: 6$' <<<"$out"; then pass "maxReplicaCount capped at partitions"; else fail "maxReplicaCount not capped"; fi
    # The plain manifests are the chart's rendering.
    for set in "${VALUE_SETS[@]:0:2}"; do
        name=${set%%|*} flags=${set#*|}
        if diff -u "$RENDERED/reflex-$name.yaml" <(render "$helm" "$name" "$flags") >/dev/null 2>&1; then
            pass "deploy/k8s/reflex-$name.yaml is up to date"
        else
            fail "deploy/k8s/reflex-$name.yaml differs from the chart: run scripts/k8s-check.sh render"
        fi
    done
    summary
}

write_rendered() {
    local helm set name flags
    helm="$(helm_bin)"
    mkdir -p "$RENDERED"
    for set in "${VALUE_SETS[@]:0:2}"; do
        name=${set%%|*} flags=${set#*|}
        render "$helm" "$name" "$flags" >"$RENDERED/reflex-$name.yaml"
        echo "wrote $RENDERED/reflex-$name.yaml"
    done
}

summary() {
    echo "k8s check: $PASSED passed, $FAILED failed"
    ((FAILED == 0))
}

# --- the API server check ----------------------------------------------------------------

APISERVER_PORT="${K8S_CHECK_PORT:-16443}"
ETCD_PORT="${K8S_ETCD_PORT:-12379}"
WORK=""
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -n $WORK ]] && rm -rf "$WORK"
}

api() { # api METHOD PATH [curl args...]
    local method=$1 path=$2
    shift 2
    curl -sS --cacert "$WORK/ca.pem" -H "Authorization: Bearer $TOKEN" -X "$method" \
        "https://127.0.0.1:$APISERVER_PORT$path" "$@"
}

start_apiserver() {
    local apiserver
    command -v etcd >/dev/null || die "etcd not found: apt-get install etcd-server"
    command -v openssl >/dev/null || die "openssl not found"
    apiserver="$("$SCRIPT_DIR/k8s-tools.sh" apiserver)"
    WORK="$(mktemp -d)"
    trap cleanup EXIT
    TOKEN="$(openssl rand -hex 16)"
    echo "$TOKEN,admin,admin,system:masters" >"$WORK/tokens.csv"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kube-apiserver \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
    openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
    openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
    etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
    "$apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
        --tls-cert-file "$WORK/ca.pem" --tls-private-key-file "$WORK/ca.key" \
        --token-auth-file "$WORK/tokens.csv" --authorization-mode AlwaysAllow \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$WORK/sa.pub" --service-account-signing-key-file "$WORK/sa.key" \
        --service-cluster-ip-range 10.96.0.0/24 --disable-admission-plugins ServiceAccount \
        --endpoint-reconciler-type none \
        --cert-dir "$WORK/certs" >"$WORK/apiserver.log" 2>&1 &
    PIDS+=($!)
    local i
    for ((i = 0; i < 120; i++)); do
        [[ "$(api GET /readyz 2>/dev/null)" == ok ]] && return 0
        kill -0 "${PIDS[1]}" 2>/dev/null || { tail -n 20 "$WORK/apiserver.log" >&2; die "kube-apiserver exited"; }
        sleep 1
    done
    tail -n 20 "$WORK/apiserver.log" >&2
    die "kube-apiserver did not become ready within 120 s"
}

# The REST path of one object, from its apiVersion, kind and name.
object_path() {
    local api_version=$1 kind=$2 name=$3 plural group
    plural="$(tr '[:upper:]' '[:lower:]' <<<"$kind")"
    case $plural in
    *y) plural="${plural%y}ies" ;;
    *s) plural="${plural}es" ;;
    *) plural="${plural}s" ;;
    esac
    if [[ $api_version == */* ]]; then group="/apis/$api_version"; else group="/api/$api_version"; fi
    echo "$group/namespaces/$NAMESPACE/$plural/$name"
}

# Sends each document of a rendered file as a server-side apply with dryRun=All.
dry_run_file() {
    local file=$1 label=$2 doc="$WORK/doc.yaml" n=0 out code
    local -a starts
    mapfile -t starts < <(awk '/^---/ {print NR}' "$file")
    starts+=($(($(wc -l <"$file") + 1)))
    local i
    for ((i = 0; i + 1 < ${#starts[@]}; i++)); do
        sed -n "$((starts[i] + 1)),$((starts[i + 1] - 1))p" "$file" >"$doc"
        grep -q '^kind:' "$doc" || continue
        local api_version kind name
        api_version="$(awk '/^apiVersion:/ {print $2; exit}' "$doc")"
        kind="$(awk '/^kind:/ {print $2; exit}' "$doc")"
        name="$(awk '/^metadata:/ {m = 1; next} m && /^  name:/ {print $2; exit}' "$doc")"
        out="$(api PATCH "$(object_path "$api_version" "$kind" "$name")?dryRun=All&fieldManager=reflex-check&fieldValidation=Strict&force=true" \
            -H 'Content-Type: application/apply-patch+yaml' --data-binary @"$doc" -w '\n%{http_code}')"
        code="$(tail -n1 <<<"$out")"
        n=$((n + 1))
        if [[ $code == 200 || $code == 201 ]]; then
            pass "$label: $kind $name accepted (server-side dry run)"
        else
            fail "$label: $kind $name refused ($code): $(head -c 600 <<<"$out")"
        fi
    done
    ((n > 0)) || fail "$label: no objects found"
}

apiserver_check() {
    local helm crds crd set name flags rendered
    helm="$(helm_bin)"
    crds="$("$SCRIPT_DIR/k8s-tools.sh" keda-crds)"
    start_apiserver
    pass "kube-apiserver (k8s.io/kubernetes $(cat "$(dirname "$("$SCRIPT_DIR/k8s-tools.sh" apiserver)")/.kube-apiserver-version")) with etcd $(etcd --version | awk '/etcd Version/ {print $3}') is ready"
    api POST /api/v1/namespaces -H 'Content-Type: application/json' \
        -d "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$NAMESPACE\"}}" >/dev/null
    for crd in "$crds"/keda.sh_scaledobjects.yaml "$crds"/keda.sh_triggerauthentications.yaml; do
        name="$(awk '/^metadata:/ {m = 1; next} m && /^  name:/ {print $2; exit}' "$crd")"
        api PATCH "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$name?fieldManager=reflex-check&force=true" \
            -H 'Content-Type: application/apply-patch+yaml' --data-binary @"$crd" >/dev/null
    done
    local i
    for ((i = 0; i < 60; i++)); do
        api GET "/apis/keda.sh/v1alpha1/namespaces/$NAMESPACE/scaledobjects" 2>/dev/null | grep -q '"kind": *"ScaledObjectList"' && break
        sleep 1
    done
    pass "KEDA CRDs ($(basename "$(dirname "$(dirname "$(dirname "$crds")")")")) established"
    for set in "${VALUE_SETS[@]}"; do
        name=${set%%|*} flags=${set#*|}
        rendered="$WORK/$name.yaml"
        render "$helm" "$name" "$flags" >"$rendered"
        dry_run_file "$rendered" "$name"
    done
    # A field the API does not know is refused: the check can fail.
    sed 's/^  replicas: 1$/  replicas: 1\n  replicaz: 1/' "$RENDERED/reflex-default.yaml" >"$WORK/typo.yaml"
    local before=$FAILED
    dry_run_file "$WORK/typo.yaml" typo >/dev/null || true
    if ((FAILED > before)); then
        FAILED=$before
        pass "an unknown field (replicaz) is refused by the API server"
    else
        fail "the API server accepted an unknown field: the check checks nothing"
    fi
    summary
}

case "${1:-}" in
lint) lint ;;
render) write_rendered ;;
apiserver) apiserver_check ;;
*) sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac

#!/usr/bin/env bash
# The reflex container image, built and run without a Docker daemon or a registry.
#
#   scripts/image.sh build            cargo build --release, lay out the root filesystem, buildah bud
#   scripts/image.sh test             run `reflex check`, a bundle build and (with a broker on the
#                                     host) an actions worker inside the image with podman
#   scripts/image.sh rootfs BIN DIR   lay out the runtime root filesystem for binary BIN in DIR
#
# The runtime image is `FROM scratch`: the binary (debug info stripped), the shared libraries
# `ldd` names (glibc, OpenSSL, zlib, libgcc), the CA bundle, /etc/passwd with the non-root user
# reflex (uid 10001), and config/, schemas/, policies/, analytics/ under /etc/reflex. Nothing is pulled.
# The image is also written as an OCI archive (target/image/reflex.oci.tar) to load elsewhere
# (`skopeo copy oci-archive:target/image/reflex.oci.tar docker://registry/reflex:TAG`).
#   IMAGE (localhost/reflex:dev), REFLEX_BIN (skip the cargo build, use this binary)
#
# Needs Debian's buildah and podman (apt-get install buildah podman runc). Where the default OCI
# runtime cannot start a container (a VM whose root lacks CAP_SYS_RESOURCE, so crun's setrlimit
# of podman's default ulimits fails, and cgroups in hybrid v1/v2 mode, which crun refuses), `test`
# retries with runc and lower ulimits, and says so.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
IMAGE="${IMAGE:-localhost/reflex:dev}"
OUT="$REPO_DIR/target/image"
UID_GID=10001

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install ${2:-$1}"
}

rootfs() {
    local bin=$1 dir=$2 lib
    [[ -x $bin ]] || die "no binary at $bin"
    rm -rf "$dir"
    mkdir -p "$dir"/{usr/local/bin,etc/reflex,etc/ssl/certs,tmp,var/lib/reflex}
    objcopy --strip-debug "$bin" "$dir/usr/local/bin/reflex" 2>/dev/null || cp "$bin" "$dir/usr/local/bin/reflex"
    # The shared libraries and the dynamic loader, at the paths the binary looks for them.
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        cp -L --parents "$lib" "$dir/"
    done
    cp -L /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nreflex:x:%s:%s:reflex:/var/lib/reflex:/sbin/nologin\n' \
        "$UID_GID" "$UID_GID" >"$dir/etc/passwd"
    printf 'root:x:0:\nreflex:x:%s:\n' "$UID_GID" >"$dir/etc/group"
    cp -r "$REPO_DIR/config" "$REPO_DIR/schemas" "$REPO_DIR/policies" "$REPO_DIR/analytics" "$dir/etc/reflex/"
    chmod 1777 "$dir/tmp"
    touch "$dir/var/lib/reflex/.keep"
}

build() {
    need buildah
    local bin=${REFLEX_BIN:-}
    if [[ -z $bin ]]; then
        (cd "$REPO_DIR" && cargo build --release --locked --bin reflex)
        bin="${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/reflex"
    fi
    rootfs "$bin" "$OUT/rootfs"
    buildah bud --quiet --layers=false --build-arg ROOTFS_FROM=prebuilt -t "$IMAGE" \
        -f "$REPO_DIR/Dockerfile" "$REPO_DIR" >/dev/null
    # buildah keeps a working container of the build stage; it and the images of earlier builds,
    # now untagged, are removed (only reflex's own, by their label).
    local id image
    while read -r id image; do
        [[ -n $(podman image inspect --format '{{index .Labels "org.reflex.image"}}' "$image" 2>/dev/null) ]] &&
            buildah rm "$id" >/dev/null
    done < <(buildah containers --noheading --format '{{.ContainerID}} {{.ImageID}}')
    for label in build-stage runtime; do
        podman image prune -f --filter "label=org.reflex.image=$label" >/dev/null 2>&1 || true
    done
    rm -f "$OUT/reflex.oci.tar"
    buildah push --quiet "$IMAGE" "oci-archive:$OUT/reflex.oci.tar:$IMAGE"
    printf '%s built (%s), OCI archive %s\n' "$IMAGE" \
        "$(buildah inspect --format '{{.FromImageID}}' "$IMAGE" | cut -c1-12)" "$OUT/reflex.oci.tar"
}

# podman run, falling back to runc with ulimits below the current hard limits.
run() {
    local out
    if out="$(podman run --rm "$@" 2>&1)"; then
        printf '%s\n' "$out"
        return 0
    fi
    if [[ $out == *setrlimit* || $out == *"hybrid mode"* ]]; then
        printf 'note: podman run with its default runtime failed here: %s\n' "$(tail -n1 <<<"$out")" >&2
        printf 'note: retrying with runc and nofile/nproc limits of 4096\n' >&2
        local conf
        conf="$(mktemp)"
        printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n' >"$conf"
        CONTAINERS_CONF="$conf" podman --runtime runc run --rm "$@"
        local rc=$?
        rm -f "$conf"
        return $rc
    fi
    printf '%s\n' "$out" >&2
    return 1
}

test_image() {
    need podman
    podman image exists "$IMAGE" || die "$IMAGE is not built: run make image"
    local user out
    user="$(podman image inspect --format '{{.Config.User}}' "$IMAGE")"
    [[ $user == "$UID_GID:$UID_GID" ]] || die "$IMAGE runs as '$user', expected $UID_GID:$UID_GID"
    out="$(run --network none --read-only "$IMAGE" check)" || die "reflex check failed in $IMAGE: $out"
    printf '%s\n' "$out"
    grep -q 'policies' <<<"$out" || die "reflex check in $IMAGE printed no policy summary"
    grep -q 'refund.requested -> approve_refund' <<<"$out" || die "reflex check in $IMAGE printed no action table"
    # As the chart runs it: a read-only root filesystem, only /tmp writable. A bundle built
    # inside the container from its default policies, written there.
    out="$(run --network none --read-only "$IMAGE" policy bundle build -o /tmp/b.tar.gz --revision image-test)" ||
        die "reflex policy bundle build failed in $IMAGE: $out"
    grep -q 'revision image-test' <<<"$out" || die "unexpected bundle report: $out"
    printf '%s\n' "$out"
    local passed=2
    # With a broker on the host (make up), a real worker in the container: one order produced
    # and decided, its audit record written, on fresh topics.
    local brokers=${KAFKA_BROKERS:-127.0.0.1:9092}
    if timeout 2 bash -c 'exec 3<>"/dev/tcp/${0%:*}/${0##*:}"' "$brokers" 2>/dev/null; then
        local run env event
        run="img-$(openssl rand -hex 5)"
        env=(-e "REFLEX_KAFKA_BROKERS=$brokers" -e "REFLEX_TOPICS_EVENTS=$run.orders"
            -e "REFLEX_TOPICS_AUDIT=$run.audit" -e "REFLEX_TOPICS_DLQ=$run.dlq"
            -e "REFLEX_TOPICS_RETRY=$run.retry" -e "REFLEX_ROLES_ACTIONS_GROUP_ID=$run"
            -e REFLEX_TELEMETRY_LISTEN= -e REFLEX_LOG=warn)
        event='{"specversion":"1.0","id":"'$run'-1","source":"/shop/web","type":"order.placed","subject":"ord-1","time":"2026-12-02T06:00:00Z","datacontenttype":"application/json","data":{"order_id":"ord-1","customer_id":"c-1","amount":12.5,"currency":"EUR","items":[{"sku":"S-1","quantity":1}]}}'
        out="$(run --network host --read-only "${env[@]}" "$IMAGE" topics 2>&1)" || die "reflex topics failed in $IMAGE: $out"
        out="$(run -i --network host --read-only "${env[@]}" "$IMAGE" produce --topic "$run.orders" <<<"$event" 2>&1)" ||
            die "reflex produce failed in $IMAGE: $out"
        out="$(run --network host --read-only "${env[@]}" "$IMAGE" run --role actions --drain --worker-id image-test 2>&1)" ||
            die "the actions role failed in $IMAGE: $out"
        printf '%s\n' "$out"
        grep -Eq '^order\.placed +1 ' <<<"$out" || die "the worker in $IMAGE did not action the order: $out"
        passed=3
    else
        echo "no broker at $brokers (make up): the worker run in the container is skipped"
    fi
    echo "image test: $passed passed, 0 failed"
}

case "${1:-}" in
build) build ;;
test) test_image ;;
rootfs) [[ $# == 3 ]] || die "usage: scripts/image.sh rootfs BIN DIR"; rootfs "$2" "$3" ;;
*) sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac

#!/usr/bin/env bash
# Builds the Kubernetes tools the chart checks use, into .stack/bin, once.
#
#   scripts/k8s-tools.sh helm          build .stack/bin/helm (skipped when cached); print its path
#   scripts/k8s-tools.sh apiserver     build .stack/bin/kube-apiserver (skipped when cached); print its path
#   scripts/k8s-tools.sh keda-crds     print the folder of KEDA's CRDs (from its Go module)
#   scripts/k8s-tools.sh cached        exit 0 when helm and kube-apiserver are both already built
#
# Everything comes from the Go module proxy as source and is compiled with the local Go toolchain,
# like OPA (scripts/opa.sh). Helm is `go install`ed. kube-apiserver lives in k8s.io/kubernetes,
# whose go.mod points its k8s.io/* staging modules at local folders; a small build module here
# requires it and points those at their published v0.X.Y twins instead. The first apiserver build
# takes 15-30 minutes on two cores; run it at low priority (`nice -n 19`).
#   HELM_VERSION (v3.22.0), KUBE_VERSION (v1.37.2), KEDA_VERSION (v2.21.0), REFLEX_STACK_DIR (.stack)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
STACK_DIR="${REFLEX_STACK_DIR:-$REPO_DIR/.stack}"
[[ $STACK_DIR == /* ]] || STACK_DIR="$PWD/$STACK_DIR"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
KEDA_VERSION="${KEDA_VERSION:-v2.21.0}"
BIN_DIR="$STACK_DIR/bin"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need_go() {
    command -v go >/dev/null 2>&1 || die "go not found: install Go 1.24+ (Debian: apt-get install golang)"
}

# cached NAME VERSION: true when .stack/bin/NAME exists and was built at VERSION.
cached() { [[ -x $BIN_DIR/$1 && -f $BIN_DIR/.$1-version && "$(<"$BIN_DIR/.$1-version")" == "$2" ]]; }

build_helm() {
    if cached helm "$HELM_VERSION"; then echo "$BIN_DIR/helm"; return; fi
    need_go
    mkdir -p "$BIN_DIR"
    echo "helm: building helm.sh/helm/v3@$HELM_VERSION (first run only, a few minutes)..." >&2
    local tmp
    tmp="$(mktemp -d "$BIN_DIR/.helm-build.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the folder is known
    trap "rm -rf '$tmp'" RETURN
    GOBIN="$tmp" GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
        go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
    mv "$tmp/helm" "$BIN_DIR/helm"
    echo "$HELM_VERSION" >"$BIN_DIR/.helm-version"
    echo "$BIN_DIR/helm"
}

build_apiserver() {
    if cached kube-apiserver "$KUBE_VERSION"; then echo "$BIN_DIR/kube-apiserver"; return; fi
    need_go
    mkdir -p "$BIN_DIR"
    echo "kube-apiserver: building k8s.io/kubernetes@$KUBE_VERSION (first run only, 15-30 minutes)..." >&2
    local tmp gomod staging
    tmp="$(mktemp -d "$BIN_DIR/.apiserver-build.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    gomod="$(cd "$tmp" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy"
    # v1.37.2 -> v0.37.2: the staging modules' published versions.
    staging="v0.${KUBE_VERSION#v1.}"
    {
        echo "module reflex.local/kube-apiserver-build"
        echo
        echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
        echo
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo
        echo "replace ("
        sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
        echo ")"
    } >"$tmp/go.mod"
    printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' >"$tmp/tools.go"
    (
        cd "$tmp"
        GOFLAGS="-mod=mod -buildvcs=false" go mod tidy >&2
        GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 \
            go build -o kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver >&2
    )
    mv "$tmp/kube-apiserver" "$BIN_DIR/kube-apiserver"
    echo "$KUBE_VERSION" >"$BIN_DIR/.kube-apiserver-version"
    echo "$BIN_DIR/kube-apiserver"
}

keda_crds() {
    need_go
    local tmp dir
    tmp="$(mktemp -d)"
    dir="$(cd "$tmp" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    rm -rf "$tmp"
    [[ -d $dir/config/crd/bases ]] || die "KEDA $KEDA_VERSION has no config/crd/bases in its module"
    echo "$dir/config/crd/bases"
}

case "${1:-}" in
helm) build_helm ;;
apiserver) build_apiserver ;;
keda-crds) keda_crds ;;
cached) cached helm "$HELM_VERSION" && cached kube-apiserver "$KUBE_VERSION" ;;
*) sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac

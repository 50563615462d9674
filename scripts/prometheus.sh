#!/usr/bin/env bash
# Builds the Prometheus server the telemetry tests scrape reflex's /metrics with.
#
#   scripts/prometheus.sh   build .stack/bin/prometheus once (skipped when it is already there); print its path
#
# Prometheus comes from the Go module proxy as source (module github.com/prometheus/prometheus,
# whose v0.3xx.y versions are the 3.x releases) and is compiled with the local Go toolchain; the
# module cache (GOMODCACHE) and the binary are reused on later runs. The web UI's assets are not
# built in; the HTTP API the tests query is. The first build takes several minutes on two cores.
#   PROMETHEUS_VERSION (v0.316.0), REFLEX_STACK_DIR (.stack)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
STACK_DIR="${REFLEX_STACK_DIR:-$REPO_DIR/.stack}"
[[ $STACK_DIR == /* ]] || STACK_DIR="$PWD/$STACK_DIR"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
BIN_DIR="$STACK_DIR/bin"
PROMETHEUS="$BIN_DIR/prometheus"
STAMP="$BIN_DIR/.prometheus-version"

if [[ -x $PROMETHEUS && -f $STAMP && "$(<"$STAMP")" == "$PROMETHEUS_VERSION" ]]; then
    echo "$PROMETHEUS"
    exit 0
fi
command -v go >/dev/null 2>&1 ||
    { echo "error: go not found: install Go 1.25+ to build Prometheus $PROMETHEUS_VERSION (Debian: apt-get install golang)" >&2; exit 1; }
mkdir -p "$BIN_DIR"
echo "prometheus: building github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION (first run only, several minutes)..." >&2
tmp="$(mktemp -d "$BIN_DIR/.prometheus-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The module's v0.3XY.Z is release 3.XY.Z; stamped into the binary, as the release build does.
release="${PROMETHEUS_VERSION#v0.}"
release="${release:0:1}.${release:1}"
GOBIN="$tmp" GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
    go install -ldflags "-X github.com/prometheus/common/version.Version=$release" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" >&2
mv "$tmp/prometheus" "$PROMETHEUS"
echo "$PROMETHEUS_VERSION" >"$STAMP"
"$PROMETHEUS" --version >&2
echo "$PROMETHEUS"

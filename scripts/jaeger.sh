#!/usr/bin/env bash
# Builds the Jaeger server the tracing tests send reflex's spans to.
#
#   scripts/jaeger.sh   build .stack/bin/jaeger once (skipped when it is already there); print its path
#
# Jaeger comes from the Go module proxy as source (module github.com/jaegertracing/jaeger; its
# cmd/jaeger is the Jaeger v2 binary, an OpenTelemetry Collector distribution) and is compiled
# with the local Go toolchain inside the module's directory in the module cache (GOMODCACHE), as
# the main module; the module cache, the build cache and the binary are reused on later runs. Without --config it runs all-in-one with in-memory storage: OTLP on 4317 (gRPC) and
# 4318 (HTTP), the query API and UI on 16686. The first build takes several minutes on two
# cores (it compiles a few hundred modules).
#   JAEGER_VERSION (v1.76.0), REFLEX_STACK_DIR (.stack)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
STACK_DIR="${REFLEX_STACK_DIR:-$REPO_DIR/.stack}"
[[ $STACK_DIR == /* ]] || STACK_DIR="$PWD/$STACK_DIR"
JAEGER_VERSION="${JAEGER_VERSION:-v1.76.0}"
BIN_DIR="$STACK_DIR/bin"
JAEGER="$BIN_DIR/jaeger"
STAMP="$BIN_DIR/.jaeger-version"

if [[ -x $JAEGER && -f $STAMP && "$(<"$STAMP")" == "$JAEGER_VERSION" ]]; then
    echo "$JAEGER"
    exit 0
fi
command -v go >/dev/null 2>&1 ||
    { echo "error: go not found: install Go 1.25+ to build Jaeger $JAEGER_VERSION (Debian: apt-get install golang)" >&2; exit 1; }
mkdir -p "$BIN_DIR"
echo "jaeger: building github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION (first run only, several minutes)..." >&2
tmp="$(mktemp -d "$BIN_DIR/.jaeger-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The module's go.mod has a replace directive, which `go install module@version` refuses; so its
# source is fetched from the proxy into the module cache and built there as the main module.
src="$(GOFLAGS=-mod=mod go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -n $src && -f $src/go.mod ]] ||
    { echo "error: the Go module proxy did not serve github.com/jaegertracing/jaeger@$JAEGER_VERSION" >&2; exit 1; }
(cd "$src" && GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
    go build -o "$tmp/jaeger" \
    -ldflags "-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_VERSION" \
    ./cmd/jaeger) >&2
mv "$tmp/jaeger" "$JAEGER"
echo "$JAEGER_VERSION" >"$STAMP"
"$JAEGER" version >&2 || true
echo "$JAEGER"

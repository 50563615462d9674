#!/usr/bin/env bash
# Builds the reference OPA binary the policy tests compare regorus against.
#
#   scripts/opa.sh        build .stack/bin/opa once (skipped when it is already there); print its path
#
# OPA comes from the Go module proxy as source and is compiled with the local Go toolchain
# (`go install`); the module cache (GOMODCACHE) and the binary are reused on later runs.
# The first build takes a few minutes on two cores.
#   OPA_VERSION (v1.22.3), REFLEX_STACK_DIR (.stack)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
STACK_DIR="${REFLEX_STACK_DIR:-$REPO_DIR/.stack}"
[[ $STACK_DIR == /* ]] || STACK_DIR="$PWD/$STACK_DIR"
OPA_VERSION="${OPA_VERSION:-v1.22.3}"
BIN_DIR="$STACK_DIR/bin"
OPA="$BIN_DIR/opa"
STAMP="$BIN_DIR/.opa-version"

if [[ -x $OPA && -f $STAMP && "$(<"$STAMP")" == "$OPA_VERSION" ]]; then
    echo "$OPA"
    exit 0
fi
command -v go >/dev/null 2>&1 ||
    { echo "error: go not found: install Go 1.24+ to build OPA $OPA_VERSION (Debian: apt-get install golang)" >&2; exit 1; }
mkdir -p "$BIN_DIR"
echo "opa: building github.com/open-policy-agent/opa@$OPA_VERSION (first run only, a few minutes)..." >&2
tmp="$(mktemp -d "$BIN_DIR/.opa-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
    go install "github.com/open-policy-agent/opa@$OPA_VERSION" >&2
mv "$tmp/opa" "$OPA"
echo "$OPA_VERSION" >"$STAMP"
"$OPA" version >&2
echo "$OPA"

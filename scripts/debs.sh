#!/usr/bin/env bash
# Installs the Debian packages a target needs, when a command it uses is missing.
#
#   scripts/debs.sh image    buildah, podman, runc, skopeo, umoci (make image, make test-image)
#   scripts/debs.sh k8s      etcd-server (make test-k8s: etcd for the real kube-apiserver)
#   scripts/debs.sh browser  chromium (the status page's browser tests in make test)
#
# Does nothing when every command is there; otherwise says which packages it installs and runs
# apt-get (with sudo when not root). REFLEX_NO_APT=1 only reports what is missing.
set -euo pipefail

declare -A PACKAGE=([buildah]=buildah [podman]=podman [runc]=runc [skopeo]=skopeo [umoci]=umoci
                    [etcd]=etcd-server [chromium]=chromium)
case "${1:-}" in
    image) commands=(buildah podman runc skopeo umoci) ;;
    k8s) commands=(etcd) ;;
    browser) commands=(chromium) ;;
    *) echo "usage: scripts/debs.sh image|k8s|browser" >&2; exit 2 ;;
esac

missing=()
for c in "${commands[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("${PACKAGE[$c]}")
done
[[ ${#missing[@]} == 0 ]] && exit 0
if [[ ${REFLEX_NO_APT:-} == 1 ]]; then
    echo "error: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "error: missing ${missing[*]} and no apt-get to install them" >&2; exit 1; }
SUDO=""
[[ $(id -u) == 0 ]] || SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

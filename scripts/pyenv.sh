#!/usr/bin/env bash
# Creates (or refreshes) the project's Python environment in .stack/venv from
# stack/python/requirements.txt. pip's own cache (~/.cache/pip) is reused across runs.
# Prints the venv's python path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${REFLEX_STACK_DIR:-$PWD/.stack}/venv"
req=stack/python/requirements.txt
stamp="$venv/.requirements.sha256"
command -v python3 >/dev/null || { echo "error: python3 not found: install Python 3.9+ (Debian: apt-get install python3 python3-venv)" >&2; exit 1; }
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi
echo "pyenv: installing $req into $venv" >&2
[[ -x $venv/bin/python ]] || python3 -m venv "$venv" ||
    { echo "error: cannot create a virtualenv: install python3-venv (Debian: apt-get install python3-venv)" >&2; exit 1; }
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"

#!/usr/bin/env bash
# Decision time per event on the demo policy set: regorus (criterion, engine reused) against
# `opa bench` (prepared query) on the same policies and inputs, in the same run, as a ratio.
#
#   scripts/bench-policy.sh
#
# Inputs: benches/policy-inputs.json. OPA gets the modules and the merged data document (reflex
# merges every data file at the root of `data`; OPA would mount data/limits.json under data.data).
# Needs python3, cargo, and OPA (scripts/opa.sh builds it once).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OPA="$(scripts/opa.sh)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'PY'
import glob, json, os, shutil, sys
work = sys.argv[1]
os.makedirs(f"{work}/bundle")
for path in sorted(glob.glob("policies/**/*.rego", recursive=True)):
    rel = os.path.relpath(path, "policies")
    if rel.startswith("tests/") or rel.endswith("_test.rego"):
        continue
    shutil.copy(path, f"{work}/bundle/{rel.replace('/', '__')}")
data = {}
def merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            merge(a[k], v)
        else:
            a[k] = v
for path in sorted(glob.glob("policies/**/*.json", recursive=True)):
    if not os.path.relpath(path, "policies").startswith("tests/"):
        merge(data, json.load(open(path)))
json.dump(data, open(f"{work}/bundle/data.json", "w"))
for case in json.load(open("benches/policy-inputs.json")):
    json.dump(case["input"], open(f"{work}/{case['name']}.input.json", "w"))
PY

echo "building the bench (release) ..." >&2
cargo bench --quiet --bench policy --no-run >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

# Each input is measured by criterion and then by opa bench right after it, so both see the same
# load on a shared machine; the ratio is the figure to read, the absolute times move with the load.
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-22s %14s %14s %14s %8s\n' input "regorus eval" "regorus decide" "opa bench" "opa/eval"
for input in "$work"/*.input.json; do
    name="$(basename "$input" .input.json)"
    cargo bench --quiet --bench policy -- --noplot "/${name}\$" >"$work/criterion-$name.log" 2>&1 ||
        { cat "$work/criterion-$name.log" >&2; exit 1; }
    opa_json="$("$OPA" bench --format json --metrics=false --benchmem=false --count 3 \
        --data "$work/bundle" --input "$input" data.reflex.decision)"
    python3 - "$name" "$opa_json" "$CARGO_TARGET_DIR/criterion/policy" <<'PY'
import json, statistics, sys
name, opa_text, root = sys.argv[1], sys.argv[2], sys.argv[3]
# --count N prints N JSON objects one after another (each the mean of a ~1 s run): the median.
dec = json.JSONDecoder()
runs, i = [], 0
while i < len(opa_text):
    if opa_text[i].isspace():
        i += 1
        continue
    obj, i = dec.raw_decode(opa_text, i)
    runs.append(obj["T"] / obj["N"])
opa_ns = statistics.median(runs)
def est(kind):
    return json.load(open(f"{root}/{kind}/{name}/new/estimates.json"))["mean"]["point_estimate"]
ev, de = est("eval"), est("decide")
us = lambda ns: f"{ns / 1000:.2f} µs"
print(f"{name:<22} {us(ev):>14} {us(de):>14} {us(opa_ns):>14} {opa_ns / ev:>7.2f}x")
PY
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

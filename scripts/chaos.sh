#!/usr/bin/env bash
# The full fault suite (`make chaos`): the scenarios two at a time, then the three-broker one on
# its own (it points the whole test process at a cluster of its own). Prints one table of every
# scenario at the end (also kept as target/chaos/report.md) and fails if any scenario did.
set -u
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}
out=target/chaos
mkdir -p "$out"
rm -f "$out/header.md" "$out/rows.md" "$out/notes.md" "$out/report.md"
started=$(date +%s)
status=0
REFLEX_CHAOS=full "$cargo" test --locked --test it chaos_ -- --skip three_brokers --nocapture --test-threads=2 || status=1
REFLEX_CHAOS=full "$cargo" test --locked --test it chaos_three_brokers -- --nocapture --test-threads=1 || status=1
took=$(( $(date +%s) - started ))
{
  cat "$out/header.md" "$out/rows.md" 2>/dev/null
  cat "$out/notes.md" 2>/dev/null
  echo
  echo "Suite: $((took / 60)) min $((took % 60)) s on $(nproc) cores; load at the end $(cut -d' ' -f1-3 /proc/loadavg)."
} > "$out/report.md"
echo
echo "== make chaos: every scenario =="
cat "$out/report.md"
if [ "$status" -ne 0 ]; then
  echo "make chaos: a scenario failed; its panic is above and its workers' log under $out/" >&2
fi
exit "$status"

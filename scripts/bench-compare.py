#!/usr/bin/env python3
"""Sets two `make bench` reports side by side: every process's medians and every ratio, with the
second over the first.

usage: scripts/bench-compare.py BEFORE/report.json AFTER/report.json
"""
import json
import sys


def median(entry):
    if isinstance(entry, dict):
        return entry.get("median")
    return entry


def row(name, a, b):
    a, b = median(a), median(b)
    change = f"{b / a:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
    show = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) and v < 10 else f"{v:.0f}" if isinstance(v, float) else str(v))
    return f"| {name} | {show(a)} | {show(b)} | {change} |"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    try:
        before, after = (json.load(open(p)) for p in sys.argv[1:])
    except (OSError, ValueError) as e:
        sys.exit(f"cannot read a report: {e}")
    out = [f"| figure | {sys.argv[1]} | {sys.argv[2]} | after / before |", "|---|---|---|---|"]
    for report in (before, after):
        if "summary" not in report:
            sys.exit("a report has no per-process summary: it comes from an older scripts/bench.py")
    for process in sorted(set(before["summary"]) | set(after["summary"])):
        for figure in ("events_per_second", "cpu_us_per_record", "peak_rss_mib"):
            a = before["summary"].get(process, {}).get(figure)
            b = after["summary"].get(process, {}).get(figure)
            out.append(row(f"{process} {figure}", a, b))
    for ratio in sorted(set(before.get("ratios", {})) | set(after.get("ratios", {}))):
        out.append(row(ratio, before.get("ratios", {}).get(ratio), after.get("ratios", {}).get(ratio)))
    for key in ("events", "repeats", "load_average_start", "run_seconds"):
        out.append(row(key, before.get(key), after.get(key)))
    print("\n".join(out))


if __name__ == "__main__":
    main()

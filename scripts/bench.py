#!/usr/bin/env python3
"""The end-to-end load run: reflex's roles against the ceiling of the same broker, in one run.

Loads N demo-like events (valid and invalid, JSON CloudEvents over the demo types) into a fresh
topic with Kafka's own producer-perf-test, then drains that one topic with, in turn:
  - a bare rdkafka consumer with the worker's consumer settings (examples/bare_consumer.rs),
  - Kafka's kafka-consumer-perf-test,
  - the actions role (`reflex run --role actions --drain`),
  - the lake role (`reflex run --role lake --drain`, the events and their audit records),
each as its own process, timed with /usr/bin/time (CPU seconds, peak RSS). Writes
target/bench/report.md and target/bench/report.json with every figure and the ratios.

usage: scripts/bench.py [--events N] [--partitions P]   (the local stack must be up: make up)
"""
import argparse
import datetime as dt
import json
import os
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "target" / "bench"
BROKERS = os.environ.get("REFLEX_BENCH_BROKERS", "127.0.0.1:9092")


def log(msg):
    print(f"[bench {dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(name, cmd, env=None):
    """Runs cmd under /usr/bin/time; returns (stdout, wall s, cpu s, peak RSS MiB)."""
    tfile = OUT / f"{name}.time"
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(tfile), *cmd],
                          env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    (OUT / f"{name}.out").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}); see {OUT / (name + '.out')}")
    _, user, sys_, rss_kb = tfile.read_text().split()[-4:]
    return proc.stdout, wall, float(user) + float(sys_), int(rss_kb) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", 1_000_000)))
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    n = args.events
    OUT.mkdir(parents=True, exist_ok=True)
    run = "bench-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    topic = f"{run}.events"
    reflex = str(REPO / "target/release/reflex")
    env = dict(os.environ,
               REFLEX_CONFIG=str(REPO / "config/reflex.toml"), REFLEX_LOG="warn",
               REFLEX_KAFKA_BROKERS=BROKERS, REFLEX_TOPICS_EVENTS=topic,
               REFLEX_TOPICS_AUDIT=f"{run}.audit", REFLEX_TOPICS_DLQ=f"{run}.dlq",
               REFLEX_TOPICS_PARTITIONS=str(args.partitions),
               REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.actions", REFLEX_ROLES_LAKE_GROUP_ID=f"{run}.lake",
               REFLEX_LAKE_STORE=str(OUT / f"{run}-lake"))

    log(f"{n} events over the demo types into {topic} ({args.partitions} partitions)")
    subprocess.run([sys.executable, str(REPO / "scripts/demo-events.py"), str(OUT / "payloads")],
                   check=True, capture_output=True)
    payloads = OUT / "payloads.jsonl"
    lines = []
    for name in ("orders", "payments", "refunds"):
        lines += [l for l in (OUT / "payloads" / f"{name}.jsonl").read_text().splitlines() if l.strip()]
    payloads.write_text("\n".join(lines))
    subprocess.run([reflex, "topics"], env=env, check=True, capture_output=True)
    load = subprocess.run([str(REPO / "scripts/kafka-tool.sh"), "producer-perf-test", "--topic", topic,
                           "--num-records", str(n), "--throughput", "-1", "--payload-file", str(payloads),
                           "--producer-props", f"bootstrap.servers={BROKERS}", "acks=1", "linger.ms=20",
                           "batch.size=262144", "compression.type=lz4"], capture_output=True, text=True)
    if load.returncode != 0:
        sys.exit(f"loading failed: {load.stderr[-2000:]}")
    log(load.stdout.strip().splitlines()[-1])

    figures = {"events": n, "partitions": args.partitions, "payload_lines": len(lines),
               "machine": f"{os.cpu_count()} cores, broker on the same machine"}

    log("ceiling: bare rdkafka consumer (worker's consumer settings, payloads discarded)")
    out, wall, cpu, rss = timed("bare", [str(REPO / "target/release/examples/bare_consumer"), BROKERS, topic, str(n)])
    bare = json.loads(out.strip().splitlines()[-1])
    figures["bare_consumer"] = {"events_per_second": bare["events_per_second"], "busy_seconds": bare["seconds"],
                                "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(rss, 1)}

    log("ceiling: kafka-consumer-perf-test")
    out, wall, cpu, rss = timed("perf_test", [str(REPO / "scripts/kafka-tool.sh"), "consumer-perf-test",
                                              "--bootstrap-server", BROKERS, "--topic", topic,
                                              "--num-records", str(n), "--group", f"{run}.perf"])
    row = [l for l in out.splitlines() if re.match(r"^\d{4}-", l)][-1].split(",")
    figures["kafka_consumer_perf_test"] = {"events_per_second": float(row[5]), "mb_per_second": float(row[3]),
                                           "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}

    log("actions role (full pipeline, inline actions)")
    out, wall, cpu, rss = timed("actions", [reflex, "run", "--role", "actions", "--drain", "--worker-id", "bench"], env)
    m = re.search(r"(\d+) events in ([\d.]+)s .*\((\d+) events/s\)", out)
    busy = float(m.group(2)) if m else wall
    figures["actions_role"] = {"events_per_second": round(n / busy), "busy_seconds": busy, "wall_seconds": round(wall, 2),
                               "cpu_seconds": round(cpu, 2), "cpu_seconds_per_million": round(cpu * 1e6 / n, 2),
                               "peak_rss_mib": round(rss, 1)}

    log("lake role (events and their audit records)")
    out, wall, cpu, rss = timed("lake", [reflex, "run", "--role", "lake", "--drain"], env)
    m = re.search(r"lake: (\d+) records, (\d+) rows in (\d+) files \((\d+) bytes", out)
    records = int(m.group(1)) if m else 2 * n
    figures["lake_role"] = {"records": records, "rows": int(m.group(2)) if m else None,
                            "files": int(m.group(3)) if m else None, "parquet_bytes": int(m.group(4)) if m else None,
                            "records_per_second": round(records / wall), "wall_seconds": round(wall, 2),
                            "cpu_seconds": round(cpu, 2), "cpu_seconds_per_million": round(cpu * 1e6 / records, 2),
                            "peak_rss_mib": round(rss, 1)}

    ceiling = figures["bare_consumer"]["events_per_second"]
    figures["ratios"] = {
        "actions_over_bare_consumer": round(figures["actions_role"]["events_per_second"] / ceiling, 3),
        "lake_over_bare_consumer": round(figures["lake_role"]["records_per_second"] / ceiling, 3),
        "bare_consumer_over_perf_test": round(ceiling / figures["kafka_consumer_perf_test"]["events_per_second"], 3),
    }
    (OUT / "report.json").write_text(json.dumps(figures, indent=2))
    md = ["# reflex end-to-end load run", "",
          f"{n} events, {args.partitions} partitions, {figures['machine']}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
          "| process | events/s | wall s | CPU s | CPU s per 1M | peak RSS MiB |", "|---|---|---|---|---|---|"]
    b, p, a, l = (figures[k] for k in ("bare_consumer", "kafka_consumer_perf_test", "actions_role", "lake_role"))
    md.append(f"| bare rdkafka consumer | {b['events_per_second']:.0f} | {b['wall_seconds']} | {b['cpu_seconds']} | {b['cpu_seconds'] * 1e6 / n:.2f} | {b['peak_rss_mib']} |")
    md.append(f"| kafka-consumer-perf-test | {p['events_per_second']:.0f} | {p['wall_seconds']} | {p['cpu_seconds']} | {p['cpu_seconds'] * 1e6 / n:.2f} | |")
    md.append(f"| actions role | {a['events_per_second']} | {a['wall_seconds']} | {a['cpu_seconds']} | {a['cpu_seconds_per_million']} | {a['peak_rss_mib']} |")
    md.append(f"| lake role ({l['records']} records) | {l['records_per_second']} | {l['wall_seconds']} | {l['cpu_seconds']} | {l['cpu_seconds_per_million']} | {l['peak_rss_mib']} |")
    md += ["", "Ratios (same run): " + ", ".join(f"{k} = {v}" for k, v in figures["ratios"].items()), "",
           "The bare consumer and the actions role are timed from their first record received (the actions",
           "role to its last record acknowledged); the lake role and the perf test by wall time, start-up included."]
    (OUT / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

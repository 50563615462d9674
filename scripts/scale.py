#!/usr/bin/env python3
"""The scale run: 1, 2 and 4 actions workers, each its own process, on one 12-partition topic.

Two parts, each on fresh topics and a group of its own, on the local stack:

  - **Throughput.** For each worker count N (--workers, default 1 2 4), N workers join one
    group; once every one of them holds partitions, --events demo-like events (the bench's
    mix: 10 000 keys, about 5 % bad input) are produced as fast as the broker takes them. The
    run ends when every event has its audit record. events/s = audit records ÷ (last − first
    audit record's Kafka timestamp); CPU per event = the workers' CPU time (from /proc) spent
    between the load's start and the last audit record. Repeats are interleaved (1, 2, 4,
    1, 2, 4, …); every figure is the median with its range.
  - **Membership changes under load.** Two workers are fed at --rate events/s (each event's
    `time` set when it is sent) for --seconds; a third worker joins at one third of the run and
    one worker leaves (SIGTERM) at two thirds. Each is done twice: with dynamic membership (a
    leaving worker sends LeaveGroup) and with static membership (`--instance-id`, as the Helm
    chart sets from the pod name, where a leaving member's partitions wait for the session
    timeout). For each change: the longest time an input partition's output stood still and
    the largest event-to-audit latency (first audit record of each event) from the change to
    2 s before the next one (the leave: until the load ends), against the seven seconds before
    the join.

Both parts check that nothing was lost: every input offset has an audit record; duplicates are
counted (at_least_once re-delivers what a leaving worker had not committed).

Writes target/bench/scale.md and target/bench/scale.json.

usage: scripts/scale.py [--events N] [--repeats R] [--workers 1 2 4] [--partitions 12]
                        [--rate R] [--seconds S]
       (the local stack must be up; `make scale` builds and runs everything)
"""
import argparse
import datetime as dt
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the load run's helpers: config, payloads, spread)

REPO, TARGET, OUT, BROKERS = bench.REPO, bench.TARGET, bench.OUT, bench.BROKERS
log = bench.log


def cpu_seconds(pid):
    """User + system CPU seconds of a live process, from /proc."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Workers:
    """Actions workers of one group, each a process with its own log."""

    def __init__(self, reflex, env, tag):
        self.reflex, self.env, self.tag, self.procs = reflex, env, tag, {}

    def start(self, name, static=False):
        log_path = OUT / f"scale-{self.tag}-{name}.log"
        cmd = [self.reflex, "run", "--role", "actions", "--worker-id", name]
        if static:
            cmd += ["--instance-id", f"{self.tag}-{name}"]
        handle = open(log_path, "w")
        self.procs[name] = (subprocess.Popen(cmd, env=self.env, stdout=handle, stderr=subprocess.STDOUT),
                            log_path, handle)

    def assigned(self, name):
        return "partitions assigned" in self.procs[name][1].read_text()

    def wait_assigned(self, names, timeout=90):
        deadline = time.monotonic() + timeout
        while not all(self.assigned(n) for n in names):
            for n in names:
                proc, log_path, _ = self.procs[n]
                if proc.poll() is not None:
                    sys.exit(f"worker {n} exited ({proc.returncode}); see {log_path}")
            if time.monotonic() > deadline:
                sys.exit(f"workers {names} not all assigned partitions in {timeout} s; see {OUT}/scale-{self.tag}-*.log")
            time.sleep(0.2)

    def cpu(self):
        return sum(cpu_seconds(p.pid) for p, _, _ in self.procs.values() if p.poll() is None)

    def stop(self, name):
        proc, _, handle = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        handle.close()
        return proc.returncode

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


def read_audit(loader, topic, expected):
    """(audit timestamp ms, input partition, input offset, event time ms or None, worker) per record."""
    out = subprocess.run([loader, "audit", BROKERS, topic, str(expected)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"reading {topic} failed: {out.stderr[-2000:]}")
    rows = []
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 5:
            ts, p, o, t, w = parts
            rows.append((int(ts), int(p), int(o), None if t == "-" else int(t), w))
    return rows


def throughput_run(reflex, loader, env, run, payloads, n_workers, i, args):
    tag = f"n{n_workers}-{i}"
    wenv = dict(env, REFLEX_TOPICS_EVENTS=f"{run}.{tag}", REFLEX_TOPICS_AUDIT=f"{run}.{tag}.audit",
                REFLEX_TOPICS_DLQ=f"{run}.{tag}.dlq", REFLEX_TOPICS_RETRY=f"{run}.{tag}.retry",
                REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.{tag}.actions")
    subprocess.run([reflex, "topics"], env=wenv, check=True, capture_output=True)
    workers = Workers(reflex, wenv, f"{run}-{tag}")
    load_before = os.getloadavg()[0]
    try:
        names = [f"w{k}" for k in range(n_workers)]
        for name in names:
            workers.start(name)
        workers.wait_assigned(names)
        time.sleep(3)  # the last join's rebalance settles
        cpu_start = workers.cpu()
        bench.load_topic(loader, f"{run}.{tag}", payloads, args.events, args.keys)
        rows = read_audit(loader, f"{run}.{tag}.audit", args.events)
        cpu = workers.cpu() - cpu_start
    finally:
        workers.stop_all()
    per_partition = {}
    for _, p, o, _, _ in rows:
        per_partition[p] = max(per_partition.get(p, 0), o + 1)
    seen = {(p, o) for _, p, o, _, _ in rows}
    first, last = min(r[0] for r in rows), max(r[0] for r in rows)
    per_worker = {}
    for r in rows:
        per_worker[r[4]] = per_worker.get(r[4], 0) + 1
    figures = {"workers": n_workers, "records": len(rows), "distinct": len(seen),
               "lost": args.events - len(seen), "duplicated": len(rows) - len(seen),
               "events_per_second": round(len(seen) / max((last - first) / 1000, 1e-3)),
               "cpu_us_per_event": round(cpu * 1e6 / max(len(seen), 1), 1),
               "per_worker": per_worker, "load_before": round(load_before, 2),
               "load_after": round(os.getloadavg()[0], 2)}
    log(f"[{i + 1}] {n_workers} worker(s): {figures['events_per_second']} events/s, "
        f"{figures['cpu_us_per_event']} CPU-µs per event, lost {figures['lost']}, duplicated {figures['duplicated']}, "
        f"per worker {sorted(per_worker.values())} (load {load_before:.1f})")
    return figures


def gaps_after(rows, start_ms, end_ms):
    """The longest time an input partition's output stood still within [start, end], and the
    largest event-to-audit latency of the events sent in it."""
    by_partition = {}
    for ts, p, _, t, _ in rows:
        by_partition.setdefault(p, []).append(ts)
    longest = 0
    for stamps in by_partition.values():
        stamps.sort()
        prev = None
        for ts in stamps:
            if ts < start_ms:
                prev = ts
                continue
            if prev is not None and prev <= end_ms:
                longest = max(longest, min(ts, end_ms) - max(prev, start_ms))
            prev = ts
            if ts > end_ms:
                break
    # Latency of each input record's first audit record (a re-delivered one's second is late
    # by design), for the events sent within the window.
    first = {}
    for ts, p, o, t, _ in rows:
        if t is not None and start_ms <= t <= end_ms:
            first[(p, o)] = min(first.get((p, o), (ts, t)), (ts, t))
    latencies = [ts - t for ts, t in first.values()]
    return longest, (max(latencies) if latencies else None)


def membership_run(reflex, loader, env, run, payloads, static, args):
    tag = "static" if static else "dynamic"
    wenv = dict(env, REFLEX_TOPICS_EVENTS=f"{run}.{tag}", REFLEX_TOPICS_AUDIT=f"{run}.{tag}.audit",
                REFLEX_TOPICS_DLQ=f"{run}.{tag}.dlq", REFLEX_TOPICS_RETRY=f"{run}.{tag}.retry",
                REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.{tag}.actions")
    subprocess.run([reflex, "topics"], env=wenv, check=True, capture_output=True)
    workers = Workers(reflex, wenv, f"{run}-{tag}")
    marks = {}
    try:
        for name in ("w0", "w1"):
            workers.start(name, static)
        workers.wait_assigned(["w0", "w1"])
        time.sleep(3)
        load = subprocess.Popen([loader, "paced", BROKERS, f"{run}.{tag}", str(payloads), str(args.rate),
                                 str(args.seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.time()
        time.sleep(args.seconds / 3)
        marks["join"] = int(time.time() * 1000)
        workers.start("w2", static)
        time.sleep(max(0.0, started + 2 * args.seconds / 3 - time.time()))
        marks["leave"] = int(time.time() * 1000)
        workers.stop("w0")
        out, err = load.communicate(timeout=args.seconds + 120)
        if load.returncode != 0:
            sys.exit(f"paced load failed: {err[-2000:]}")
        marks["end"] = int(time.time() * 1000)
        sent = json.loads(out.strip().splitlines()[-1])["records"]
        rows = read_audit(loader, f"{run}.{tag}.audit", sent)
    finally:
        workers.stop_all()
    seen = {(p, o) for _, p, o, _, _ in rows}
    with open(OUT / f"scale-{tag}.tsv", "w") as f:
        f.write("audit_ms\tpartition\toffset\tevent_ms\tworker\n")
        f.writelines(f"{ts}\t{p}\t{o}\t{'-' if t is None else t}\t{w}\n" for ts, p, o, t, w in rows)
    # Each duplicate is charged to the last change before its second audit record.
    duplicates = {"join": 0, "leave": 0}
    firsts = set()
    for ts, p, o, _, _ in sorted(rows):
        if (p, o) in firsts:
            duplicates["leave" if ts >= marks["leave"] else "join"] += 1
        firsts.add((p, o))
    steady_gap, steady_latency = gaps_after(rows, marks["join"] - 8000, marks["join"] - 1000)
    steady = sorted(ts - t for ts, _, _, t, _ in rows if t is not None and marks["join"] - 8000 <= t < marks["join"] - 1000)
    figures = {"membership": tag, "rate": args.rate, "seconds": args.seconds, "sent": sent, "records": len(rows),
               "lost": sent - len(seen), "duplicated": len(rows) - len(seen),
               "steady": {"longest_gap_ms": steady_gap, "max_latency_ms": steady_latency,
                          "p99_latency_ms": steady[int(0.99 * (len(steady) - 1))] if steady else None}}
    # Each change is looked at until 2 s before the next one (the leave: until the load ends),
    # so what the next change holds up is not counted for this one.
    ends = {"join": marks["leave"] - 2000, "leave": marks["end"]}
    for change in ("join", "leave"):
        gap, latency = gaps_after(rows, marks[change], ends[change])
        figures[change] = {"longest_gap_ms": gap, "max_latency_ms": latency, "duplicated": duplicates[change]}
    log(f"{tag} membership at {args.rate} events/s: join pause {figures['join']['longest_gap_ms']} ms "
        f"(max latency {figures['join']['max_latency_ms']} ms), leave pause {figures['leave']['longest_gap_ms']} ms "
        f"(max latency {figures['leave']['max_latency_ms']} ms), steady longest gap {steady_gap} ms; "
        f"lost {figures['lost']}, duplicated {figures['duplicated']}")
    return figures


def write_markdown(figures):
    s = figures["summary"]
    md = ["# reflex scale run", "",
          f"{figures['events']} events per run over {figures['keys']} keys, {figures['partitions']} partitions, "
          f"{figures['repeats']} interleaved repeats, {figures['machine']}, started {figures['started']} "
          f"(load average {figures['load_average_start']:.1f} at the start, {figures['load_average_end'][0]:.1f} at the end).",
          "", "| workers | events/s | per worker | CPU-µs per event | lost | duplicated | × one worker |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, row in s.items():
        ratio = figures["speedup"].get(n)
        md.append(f"| {n} | {bench.fmt(row['events_per_second'])} | {bench.fmt(row['per_worker'])} | "
                  f"{bench.fmt(row['cpu_us_per_event'], 1)} | {row['lost']} | {row['duplicated']} | "
                  f"{bench.fmt(ratio, 2) if ratio else '1'} |")
    if figures.get("membership"):
        md += ["", f"Membership changes at {figures['membership'][0]['rate']} events/s, two workers, "
               "a third joins, then one leaves (SIGTERM):", "",
               "| membership | steady: longest output gap / max latency | join: longest gap / max latency | "
               "leave: longest gap / max latency | lost | duplicated at join / leave |",
               "| --- | --- | --- | --- | --- | --- |"]
        for m in figures["membership"]:
            md.append(f"| {m['membership']} | {m['steady']['longest_gap_ms']} / {m['steady']['max_latency_ms']} ms | "
                      f"{m['join']['longest_gap_ms']} / {m['join']['max_latency_ms']} ms | "
                      f"{m['leave']['longest_gap_ms']} / {m['leave']['max_latency_ms']} ms | {m['lost']} | "
                      f"{m['join']['duplicated']} / {m['leave']['duplicated']} |")
    (OUT / "scale.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("SCALE_EVENTS", 60_000)))
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("SCALE_REPEATS", 3)))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=int(os.environ.get("SCALE_RATE", 1000)))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SCALE_SECONDS", 45)))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    run = "scale-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    reflex = str(TARGET / "release/reflex")
    loader = str(TARGET / "release/examples/bench_load")
    env = dict(os.environ, REFLEX_CONFIG=str(bench.inline_config()),
               REFLEX_LOG="warn,reflex::role::actions::rebalance=info",
               REFLEX_SCHEMAS_DIR=str(REPO / "schemas"), REFLEX_POLICY_DIR=str(REPO / "policies"),
               REFLEX_KAFKA_BROKERS=BROKERS, REFLEX_TOPICS_PARTITIONS=str(args.partitions),
               REFLEX_TELEMETRY_LISTEN="")
    payloads, _ = bench.bench_payloads()
    figures = {"events": args.events, "keys": args.keys, "partitions": args.partitions, "repeats": args.repeats,
               "machine": f"{os.cpu_count()} cores, broker on the same machine",
               "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "load_average_start": os.getloadavg()[0], "runs": {}}
    for i in range(args.repeats):
        for n in args.workers:
            figures["runs"].setdefault(n, []).append(
                throughput_run(reflex, loader, env, run, payloads, n, i, args))
    figures["summary"] = {
        n: {"events_per_second": bench.spread([r["events_per_second"] for r in rs]),
            "per_worker": bench.spread([r["events_per_second"] / n for r in rs]),
            "cpu_us_per_event": bench.spread([r["cpu_us_per_event"] for r in rs]),
            "lost": sum(r["lost"] for r in rs), "duplicated": sum(r["duplicated"] for r in rs)}
        for n, rs in figures["runs"].items()}
    one = figures["runs"].get(args.workers[0])
    figures["speedup"] = {n: bench.spread([r["events_per_second"] / o["events_per_second"] for r, o in zip(rs, one)])
                          for n, rs in figures["runs"].items() if n != args.workers[0]}
    if args.seconds > 0:
        figures["membership"] = [membership_run(reflex, loader, env, run, payloads, static, args)
                                 for static in (False, True)]
    figures["load_average_end"] = os.getloadavg()
    (OUT / "scale.json").write_text(json.dumps(figures, indent=2))
    write_markdown(figures)
    lost = sum(r["lost"] for rs in figures["runs"].values() for r in rs) + \
        sum(m["lost"] for m in figures.get("membership", []))
    if lost:
        sys.exit(f"{lost} events have no audit record; see {OUT}/scale.json")


if __name__ == "__main__":
    main()

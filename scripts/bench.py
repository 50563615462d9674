#!/usr/bin/env python3
"""The end-to-end load run: reflex's roles against two ceilings on the same broker, in one run.

Loads N demo-like events (the demo's mix of types and sizes, about 5 % bad input: schema
violations, an unknown type, undecodable lines), each with a fresh id and keyed by one of
--keys keys, into a fresh topic (examples/bench_load.rs), then drains that topic, each drain a
process of its own with a consumer group of its own, with:
  - `bare`: a bare rdkafka consumer with the worker's consumer settings (examples/bare_consumer.rs);
  - `mirror`: a bare rdkafka program that consumes each event and produces one audit-sized record
    with the worker's producer settings, storing offsets after acknowledgement
    (examples/mirror.rs) -- the honest ceiling for an audited pipeline;
  - the actions role (inline actions), also with the compiled policy engine, with two policy
    evaluators and under exactly_once, and, with --baseline BIN, another reflex build;
  - the lake role (the events and the actions role's audit records);
  - the analytics role: a count window per customer over 10 000 customers (orders keyed by
    customer, event time advancing 100 events/s), and once with --analytics-groups-max groups
    open at once (one event each in a one-day window) for its memory;
  - a hot key: the first --hot-events events again, all under one key, and the same under
    distinct keys, each drained by the actions role.
Every drain is repeated --repeats times, the repeats interleaved (all processes once, then again),
and each figure is reported as the median with its range; each ratio is taken within a repeat
and reported the same way. Busy time comes from each process's own summary (first record
received to last one done: `reflex run --summary-json`), CPU seconds and peak RSS from
/usr/bin/time (the whole process, start-up included; the targets use this figure). Beside it,
"after start-up": the same less the CPU the process had used when its first record arrived
(the summary's `startup_cpu_seconds`), what a record costs once the worker is running. Then, once:
  - paced latency: one actions worker on fresh topics fed at half the actions role's median
    events/s (or --rate) for --paced-seconds, from the moment the load producer sends an event
    (its `time`, ms; the producer lingers 5 ms, librdkafka's default, and knows the topic
    before the first) to the broker appending its audit record (the audit topic stamps
    LogAppendTime; the acknowledgement follows), or with --audit-time create to the worker
    handing the audit record to its producer; over all records, the worker's first second and
    the steady state (after 2 s), with a timeline of the first 3 s, and split at the event's
    own append (the event topic stamps LogAppendTime too) and the audit record's
    `processed_at`. Without --rate, also at half the sustained rate: one worker fed the drain's
    rate for up to 15 s, beside the load producer and the broker's produce path on this
    machine, makes fewer audit records per second than it drains a filled topic; half of what
    it made while the events were sent (--only latency runs just this, at half the sustained
    rate unless --half-of drain, --repeats times, alternating with --baseline, into
    target/bench/latency.{md,json}, after one short run that is not counted, for a broker just
    started);
  - CPU ratio: the actions role's CPU per event over the sum of its stages measured alone:
    `mirror`'s CPU per event (consume, produce one audit-sized record, offsets after
    acknowledgement) plus criterion's `pipeline/process` (decode, validate, policy with the
    configured engine, action, audit encode; from target/criterion, so `cargo bench` must have
    run);
  - Avro vs JSON (unless --wire-events 0): `payment.settled` events as binary-mode CloudEvents
    with Avro data in the Confluent wire format, and the same events as structured JSON.
Writes target/bench/report.md and target/bench/report.json; scripts/bench-compare.py sets two
reports side by side. The machine's load average is recorded before and after every drain.

With --baseline BIN the baseline build's actions, lake and analytics roles are measured beside
this build's, each alternated with it in every repeat on the same topics. With --only lake, only
the bare consumer and the lake role are measured (the actions role runs once first to write the
audit records the lake reads, which every lake drain of the run then reads again). With --only
analytics, only the bare consumer and the analytics role, both on the customers' orders, and the
analytics role's memory at --analytics-groups-max open groups (with --baseline, both builds').

usage: scripts/bench.py [--events N] [--repeats R] [--keys K] [--hot-events H] [--partitions P]
                        [--paced-seconds S] [--wire-events M] [--baseline REFLEX_BINARY]
                        [--only latency|lake|analytics] [--rate EVENTS_PER_S] [--audit-time append|create]
       (the local stack must be up: make up; make bench builds and runs everything)
"""
import argparse
import atexit
import datetime as dt
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
OUT = REPO / "target" / "bench"
TARGETS = {"actions_over_mirror": ("≥", 0.5), "actions_cpu_us_per_event": ("≤", 20),
           "lake_cpu_us_per_record": ("≤", 10), "lake_peak_rss_mib": ("≤", 1024),
           "analytics_cpu_us_per_event": ("≤", 5),
           "cpu_over_stage_sum": ("≤", 1.3), "hot_key_over_distinct_keys": ("≥", 0.5)}
# The mean value size of the demo's audit records (722 bytes over its audit topic), which `mirror` produces
# one of per event.
AUDIT_BYTES = 720
BROKERS = os.environ.get("REFLEX_BENCH_BROKERS", "127.0.0.1:9092")


def log(msg):
    print(f"[bench {dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def inline_config():
    """config/reflex.toml with inline actions only: its `http` actions become `log` actions and
    its enrichment lookups are left out, so the load run measures reflex, not an HTTP service
    (`make bench-ordering` measures HTTP actions). Written to target/bench/inline.toml."""
    sections, current = [], ["", []]
    for line in (REPO / "config/reflex.toml").read_text().splitlines():
        if line.startswith("["):
            sections.append(current)
            current = [line.strip(), []]
        else:
            current[1].append(line)
    sections.append(current)
    out = []
    for header, lines in sections:
        if header.startswith("[[enrichment."):
            continue
        body = [l for l in lines if l.strip() and not l.lstrip().startswith("#")]
        if header.startswith("[actions.") and any(re.match(r'\s*kind\s*=\s*"http"', l) for l in body):
            types = [l for l in body if re.match(r"\s*types\s*=", l)]
            lines = ['kind = "log"', *types, 'message = "inline stand-in for an http action"']
        out += ([header] if header else []) + lines
    path = OUT / "inline.toml"
    path.write_text("\n".join(out) + "\n")
    return path


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


def criterion_ns(*parts):
    """Mean time (ns) of one criterion benchmark, or None when it has not run."""
    path = TARGET.joinpath("criterion", *parts, "new", "estimates.json")
    try:
        return json.loads(path.read_text())["mean"]["point_estimate"]
    except (OSError, ValueError, KeyError):
        return None


def criterion_mean(group, function):
    """Mean over the inputs of a parameterised criterion benchmark (ns), with the inputs."""
    root = TARGET / "criterion" / group / function
    values = {}
    if root.is_dir():
        for child in sorted(root.iterdir()):
            v = criterion_ns(group, function, child.name)
            if v is not None and child.name != "report":
                values[child.name] = v
    return (statistics.mean(values.values()) if values else None), values


def summary_of(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_SUMMARY_FLAG = {}


def has_summary_json(reflex):
    """Whether a reflex binary has `run --summary-json` (a baseline build may be older)."""
    if reflex not in _SUMMARY_FLAG:
        out = subprocess.run([reflex, "run", "--help"], capture_output=True, text=True)
        _SUMMARY_FLAG[reflex] = "--summary-json" in out.stdout
    return _SUMMARY_FLAG[reflex]


_ACCEPTED = {}


def accepted_config(reflex, env):
    """The environment with a configuration `reflex` accepts: a baseline build may be older than
    config/reflex.toml, so each section or key it names as unknown in `reflex check` (or whose
    value it does not know, such as a newer engine) is left out for it, where its own default
    applies, and listed in the report."""
    config = pathlib.Path(env["REFLEX_CONFIG"])
    if reflex not in _ACCEPTED:
        lines, left_out = config.read_text().splitlines(), []
        for _ in range(50):
            path = OUT / f"config-{abs(hash(reflex)) % 10**8}.toml"
            path.write_text("\n".join(lines) + "\n")
            out = subprocess.run([reflex, "check", "-c", str(path)], env=dict(env, REFLEX_CONFIG=str(path)),
                                 capture_output=True, text=True)
            text = out.stdout + out.stderr
            at = re.search(r"^\s*(\d+) \|", text, re.M)
            if out.returncode == 0 or not re.search(r"unknown (field|variant)", text) or not at:
                break
            index = int(at.group(1)) - 1
            if not 0 <= index < len(lines):
                break
            end = index + 1
            if lines[index].lstrip().startswith("["):
                while end < len(lines) and not lines[end].lstrip().startswith("["):
                    end += 1
            left_out.append(lines[index].strip())
            del lines[index:end]
        if left_out:
            log(f"{reflex} does not know {', '.join(left_out)}: left out of its configuration")
        _ACCEPTED[reflex] = (str(path) if left_out else str(config), left_out)
    return dict(env, REFLEX_CONFIG=_ACCEPTED[reflex][0])


def role_run(name, reflex, env, role, expected):
    """Drains a topic with a role, timed by /usr/bin/time and by the worker's own summary
    (`--summary-json`: busy seconds from its first record received to its last one done; an
    older build's printed summary instead)."""
    summary_path = OUT / f"{name}.summary.json"
    summary_path.unlink(missing_ok=True)
    env = accepted_config(reflex, env)
    cmd = [reflex, "run", "--role", role, "--drain", "--worker-id", "bench"]
    if has_summary_json(reflex):
        cmd += ["--summary-json", str(summary_path)]
    out, wall, cpu, rss = timed(name, cmd, env)
    summary = summary_of(summary_path) or {}
    printed = re.search(r"(\d+) records in ([\d.]+)s from the first received", out)
    if not summary and printed:
        summary = {"records": int(printed.group(1)), "busy_seconds": float(printed.group(2))}
    records = summary.get("records") or expected
    busy = summary.get("busy_seconds") or wall
    if records != expected:
        log(f"{name}: {records} records, expected {expected}")
    return {"records": records, "events_per_second": round(records / max(busy, 1e-9)),
            "busy_seconds": round(busy, 3), "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "cpu_us_per_record": round(cpu * 1e6 / max(records, 1), 1),
            "cpu_us_per_record_working": working_cpu(cpu, summary.get("startup_cpu_seconds"), records),
            "startup_cpu_seconds": summary.get("startup_cpu_seconds"), "peak_rss_mib": round(rss, 1),
            **({"rows": summary.get("rows"), "files": summary.get("files"), "parquet_bytes": summary.get("bytes")}
               if role == "lake" else {})}


def actions_run(name, reflex, env, expected):
    """Drains a topic with the actions role; returns its figures."""
    return role_run(name, reflex, env, "actions", expected)


def free_listen():
    """A free 127.0.0.1 port for a worker's telemetry listener (others may run beside this one)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def role_env(base, run, name):
    """The environment for a role on topics and groups of its own."""
    return dict(base, REFLEX_TOPICS_EVENTS=f"{run}.{name}", REFLEX_TOPICS_AUDIT=f"{run}.{name}.audit",
                REFLEX_TOPICS_DLQ=f"{run}.{name}.dlq", REFLEX_TOPICS_RETRY=f"{run}.{name}.retry",
                REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.{name}.actions")


def percentiles(values):
    """p50, p90, p99 and max of a list of latencies (ms), nearest rank; None when empty."""
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    v = sorted(values)
    at = lambda p: v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]
    return {"n": len(v), "p50_ms": at(50), "p90_ms": at(90), "p99_ms": at(99), "max_ms": v[-1]}


# Events sent in the first this many milliseconds of a paced run are left out of the steady state.
WARM_UP_MS = 2000
# linger.ms of the paced latency's load producer (--paced-linger-ms).
PACED_LINGER_MS = 5


def broker_state():
    """The local broker's age and collections (its state may move these noisy figures too):
    minutes since it started and, when the JDK's `jstat` is there, its young collections so far
    and their seconds. None when the broker is not this repo's local stack."""
    try:
        pid = int((REPO / ".stack" / "kafka" / "kafka.pid").read_text().strip())
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime_s = float(pathlib.Path("/proc/uptime").read_text().split()[0])
        started_s = int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    state = {"pid": pid, "up_minutes": round((uptime_s - started_s) / 60)}
    try:
        out = subprocess.run(["jstat", "-gcutil", str(pid)], capture_output=True, text=True, timeout=10)
        head, row = out.stdout.strip().splitlines()[-2:]
        gc = dict(zip(head.split(), row.split()))
        state.update(young_collections=int(gc["YGC"]), young_collection_seconds=float(gc["YGCT"]))
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        pass
    return state


def broker_line(state):
    if not state:
        return "the broker is not this repo's local stack"
    line = f"the broker up {state['up_minutes']} min"
    if "young_collections" in state:
        line += (f", {state['young_collections']} young collections so far "
                 f"({state['young_collection_seconds']:.1f} s)")
    return line


def latency_figures(lines, appended=None):
    """Latency figures from `bench_load audit` lines (audit timestamp, partition, offset, event
    time, worker, processed_at): over all records, the first second, the steady state (after WARM_UP_MS), a
    timeline of the first 3 s in 250 ms steps and the p99 of every second after."""
    timed, before, after, to_append, appended_to_processed = [], [], [], [], []
    for line in lines:
        parts = line.split("\t")
        if len(parts) >= 5 and parts[3] != "-" and int(parts[0]) >= 0:
            timed.append((int(parts[3]), int(parts[0]) - int(parts[3]), int(parts[1]), int(parts[2])))
            # The worker's `processed_at` splits it: event time to the audit record made (the
            # load producer, the broker appending the event, the fetch, the worker), and from
            # there to the audit record appended (the worker's producer and the broker). The
            # event's own append time (`appended`, by partition and offset) splits the first part.
            if len(parts) >= 6 and parts[5] != "-":
                before.append(int(parts[5]) - int(parts[3]))
                after.append(int(parts[0]) - int(parts[5]))
                at = (appended or {}).get((int(parts[1]), int(parts[2])))
                if at is not None and at >= 0:
                    to_append.append(at - int(parts[3]))
                    appended_to_processed.append(int(parts[5]) - at)
    if not timed:
        return {"measured": 0}
    # What the worker got through while the load was being sent (event times span the sending):
    # the rate it was fed when it kept up, else what it sustains beside the producer and broker.
    first_sent, last_sent = min(t for t, *_ in timed), max(t for t, *_ in timed)
    processed_at = [int(p[5]) for p in (line.split("\t") for line in lines) if len(p) >= 6 and p[5] != "-"]
    window_s = (last_sent - first_sent) / 1000
    while_sending = (round(sum(1 for t in processed_at if first_sent <= t <= last_sent) / window_s)
                     if processed_at and window_s > 0 else None)
    first = min(t for t, *_ in timed)
    since = lambda lo, hi: [l for t, l, *_ in timed if lo <= t - first < hi]
    steps = [dict(from_ms=lo, **percentiles(since(lo, lo + 250))) for lo in range(0, 3000, 250)]
    last = max(t for t, *_ in timed) - first
    seconds = [percentiles(since(s * 1000, (s + 1) * 1000))["p99_ms"] for s in range(last // 1000 + 1)]
    worst = sorted(timed, key=lambda r: -r[1])[:10]
    return {"measured": len(timed), "all": percentiles([l for _, l, *_ in timed]),
            "first_second": percentiles(since(0, 1000)), "warm_up_ms": WARM_UP_MS,
            "steady": percentiles(since(WARM_UP_MS, 1 << 62)), "timeline_250ms": steps,
            "p99_per_second": seconds,
            "event_to_processed": percentiles(before) if before else None,
            "processed_to_append": percentiles(after) if after else None,
            "processed_per_second_while_sending": while_sending,
            "event_to_append": percentiles(to_append) if to_append else None,
            "append_to_processed": percentiles(appended_to_processed) if appended_to_processed else None,
            "worst": [{"at_ms": t - first, "latency_ms": l, "partition": p, "offset": o} for t, l, p, o in worst]}


def paced_latency(reflex, load, env, run, payloads, rate, seconds, tag="paced", audit_time="append"):
    """One actions worker (`reflex`) on fresh topics `{run}.{tag}*`, fed at `rate` events/s for
    `seconds`; latency = event `time` (set by the load producer as it sends) to the audit record's
    Kafka timestamp. With audit_time "append" the audit topic stamps records with the broker's
    append time (LogAppendTime: the record is durable and acknowledged right after), so the
    worker's producer batching counts; with "create", the worker's own time of sending it."""
    env = role_env(env, run, tag)
    # As in the drains, the inline actions' per-event log lines stay off; the worker's start-up
    # (partitions assigned, policy warm-up) is logged.
    env["REFLEX_LOG"] = "warn,reflex::role::actions=info,reflex::policy=info,reflex::telemetry=info"
    env["REFLEX_TELEMETRY_LISTEN"] = free_listen()
    if audit_time == "append":
        subprocess.run([load, "topic", BROKERS, f"{run}.{tag}.audit", env["REFLEX_TOPICS_PARTITIONS"],
                        "cleanup.policy=compact", "message.timestamp.type=LogAppendTime"],
                       check=True, capture_output=True)
        # The events' own append times split the latency at the broker (see latency_figures).
        subprocess.run([load, "topic", BROKERS, f"{run}.{tag}", env["REFLEX_TOPICS_PARTITIONS"],
                        "message.timestamp.type=LogAppendTime"], check=True, capture_output=True)
    env = accepted_config(reflex, env)
    subprocess.run([reflex, "topics"], env=env, check=True, capture_output=True)
    log_path = OUT / f"{tag}-worker.log"
    load_before = os.getloadavg()
    with open(log_path, "w") as log_file:
        started = time.monotonic()
        worker = subprocess.Popen([reflex, "run", "--role", "actions", "--worker-id", f"bench-{tag}"],
                                  env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "partitions assigned" not in log_path.read_text():
                if worker.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the paced worker did not start; see {log_path}")
                time.sleep(0.05)
            ready_s = time.monotonic() - started
            log(f"{tag}: worker ready in {ready_s:.2f} s; {rate} events/s for {seconds} s into {run}.{tag}")
            out = subprocess.run([load, "paced", BROKERS, f"{run}.{tag}", str(payloads), str(rate), str(seconds),
                                  str(PACED_LINGER_MS)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"paced load failed: {out.stderr[-2000:]}")
            sent = json.loads(out.stdout.strip().splitlines()[-1])
            load_after = os.getloadavg()
            audit = subprocess.run([load, "audit", BROKERS, f"{run}.{tag}.audit", str(sent["records"])],
                                   capture_output=True, text=True)
            if audit.returncode != 0:
                sys.exit(f"audit read failed: {audit.stderr[-2000:]}")
            appended = {}
            if audit_time == "append":
                events = subprocess.run([load, "appends", BROKERS, f"{run}.{tag}", str(sent["records"])],
                                        capture_output=True, text=True)
                if events.returncode != 0:
                    sys.exit(f"reading the events' append times failed: {events.stderr[-2000:]}")
                (OUT / f"{tag}-appends.tsv").write_text(events.stdout)
                for line in events.stdout.strip().splitlines()[:-1]:
                    p, o, t = line.split("\t")
                    appended[(int(p), int(o))] = int(t)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
    lines = audit.stdout.strip().splitlines()
    (OUT / f"{tag}-audit.tsv").write_text("\n".join(lines[:-1]) + "\n")
    figures = latency_figures(lines[:-1], appended)
    figures.update({"rate_target": rate, "rate_achieved": round(sent["events_per_second"]),
                    "seconds": seconds, "sent": sent["records"], "audit_time": audit_time,
                    "worker_ready_seconds": round(ready_s, 2),
                    "load_before": round(load_before[0], 2), "load_after": round(load_after[0], 2)})
    return figures


def sustained_rate(reflex, load, env, run, payloads, rate, seconds):
    """What one actions worker sustains while the load is produced on the same machine: fed at
    `rate` (the drain's events/s, more than it keeps up with beside the load producer and the
    broker's produce path) for up to 15 s, the audit records it made while events were being
    sent, per second. A drain reads a topic filled beforehand, so half its rate is not half of
    this machine's capacity for a worker fed live."""
    figures = paced_latency(reflex, load, env, run, payloads, rate, min(15.0, seconds), "paced-saturation")
    log(f"saturation: fed {figures['rate_achieved']} events/s, the worker made "
        f"{figures['processed_per_second_while_sending']} audit records/s while they were sent")
    return figures


def wire_comparison(reflex, load, env, run, count, partitions):
    """Actions-role events/s for the same payment.settled events as Avro (wire format) and JSON."""
    registered = subprocess.run([reflex, "schemas", "register"], env=env, capture_output=True, text=True)
    m = re.search(r"^payment\.settled\s+version\s+\d+\s+id\s+(\d+)", registered.stdout, re.M)
    if registered.returncode != 0 or not m:
        sys.exit(f"reflex schemas register failed: {registered.stdout[-1000:]} {registered.stderr[-2000:]}")
    schema_id = m.group(1)
    figures = {"events": count, "schema_id": int(schema_id)}
    for fmt in ("avro", "json"):
        fenv = role_env(env, run, fmt)
        subprocess.run([reflex, "topics"], env=fenv, check=True, capture_output=True)
        log(f"wire: {count} payment.settled events as {fmt} into {run}.{fmt}")
        out = subprocess.run([load, "settled", BROKERS, f"{run}.{fmt}", str(REPO / "schemas/payment.settled.avsc"),
                              schema_id, str(count), fmt], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"loading {fmt} failed: {out.stderr[-2000:]}")
        log(f"wire: actions role draining the {fmt} events")
        figures[fmt] = actions_run(f"actions-{fmt}", reflex, fenv, count)
    figures["avro_over_json"] = round(figures["avro"]["events_per_second"] / figures["json"]["events_per_second"], 3)
    return figures


def spread(values):
    """Median, low and high of a list of numbers (None when empty)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "low": round(min(values), 3),
            "high": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def working_cpu(cpu, startup, records):
    """CPU-µs per record after start-up: the process's CPU less what it had used when its first
    record arrived (its summary's `startup_cpu_seconds`; None from a build that does not say)."""
    if startup is None:
        return None
    return round(max(cpu - startup, 0.0) * 1e6 / max(records, 1), 1)


def fmt(s, digits=0):
    if s is None:
        return "n/a"
    f = (lambda v: f"{v:.{digits}f}")
    return f"{f(s['median'])} ({f(s['low'])}–{f(s['high'])})" if len(s["runs"]) > 1 else f(s["median"])


def bench_payloads():
    """The demo's events (scripts/demo-events.py: its mix of types and sizes, bad input included),
    one per line in target/bench/payloads.jsonl; returns the path and the lines."""
    subprocess.run([sys.executable, str(REPO / "scripts/demo-events.py"), str(OUT / "payloads")],
                   check=True, capture_output=True)
    payloads = OUT / "payloads.jsonl"
    lines = []
    for name in ("orders", "payments", "refunds"):
        lines += [l for l in (OUT / "payloads" / f"{name}.jsonl").read_text().splitlines() if l.strip()]
    payloads.write_text("\n".join(lines))
    return payloads, lines


ANALYTICS_GROUPS = 10_000


def analytics_env(base, run, tag, window, max_groups):
    """The environment for an analytics drain over `{run}.customers-*`: one count analysis per
    customer (`data.customer_id`, which is also the record key) on a tumbling `window`,
    declared in target/bench/analytics-<window>/, with a group and topics of its own."""
    decl = OUT / f"analytics-{window}"
    decl.mkdir(parents=True, exist_ok=True)
    (decl / "bench.toml").write_text(
        "[orders_per_customer]\n"
        'types = ["order.placed"]\n'
        'group_by = ["data.customer_id"]\n'
        'keyed_by_group = true\n'
        f'window = {{ tumbling = "{window}" }}\n'
        'aggregates = { orders = "count" }\n'
        'condition = "orders > 1000"\n'
        'emit = "reflex.analytics.refunds_high"\n')
    return dict(base, REFLEX_ANALYTICS_DIR=str(decl), REFLEX_ANALYTICS_GROUP_ID=f"{run}.{tag}",
                REFLEX_ANALYTICS_TOPIC=f"{run}.{tag}.findings",
                REFLEX_ANALYTICS_CHANGELOG_TOPIC=f"{run}.{tag}.changelog",
                REFLEX_ANALYTICS_MAX_GROUPS=str(max_groups))


def load_customers(load, topic, payloads, count, groups):
    out = subprocess.run([load, "customers", BROKERS, topic, str(payloads), str(count), str(groups)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"loading {topic} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_topic(load, topic, payloads, count, keys):
    out = subprocess.run([load, "keyed", BROKERS, topic, str(payloads), str(count), str(keys)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"loading {topic} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_breakdown(figures, runs, ratios):
    """The actions role's CPU per event against its stages measured alone: consuming each event
    and producing one audit-sized record with offsets stored after acknowledgement (`mirror`'s
    CPU per event, this run) plus `Processor::process` (criterion, this build: decode, validate,
    the policy input and decision with the engine the configuration selects, the action, the
    audit record's encoding; no Kafka). The single stages are listed beside it."""
    summary = figures["summary"]
    process_ns = criterion_mean("pipeline", "process")[0]
    if "actions" not in runs or "mirror" not in runs or process_ns is None:
        figures["cpu_breakdown"] = None
        log("criterion estimates missing (run cargo bench first): no CPU ratio")
        return
    stage_ns = {"consume + produce one audit-sized record, offsets after acknowledgement (`mirror` CPU per event)":
                summary["mirror"]["cpu_us_per_record"]["median"] * 1000,
                "`Processor::process` alone: decode, validate, policy, action, audit encode (criterion, no Kafka)":
                process_ns}
    stage_sum = sum(stage_ns.values())
    parts = {"decode (structured CloudEvent)": criterion_ns("decode", "cloudevent_structured"),
             "validate (JSON Schema)": criterion_mean("pipeline", "validate")[0],
             "policy input + decision, interpreter": criterion_mean("policy", "stage")[0],
             "policy input + decision, compiled": criterion_mean("policy", "stage_compiled")[0],
             "audit encode": criterion_mean("pipeline", "audit_encode")[0]}
    figures["cpu_breakdown"] = {
        "stage_ns": {k: round(v) for k, v in stage_ns.items()}, "stage_sum_ns": round(stage_sum),
        "actions_cpu_ns_per_event": round(summary["actions"]["cpu_us_per_record"]["median"] * 1000),
        "parts_ns": {k: None if v is None else round(v) for k, v in parts.items()}}
    ratios["cpu_over_stage_sum"] = spread([r["cpu_us_per_record"] * 1000 / stage_sum for r in runs["actions"]])


def add_ordering():
    """Adds the key-ordered concurrency run (`make bench-ordering`, target/bench/ordering.json)
    to report.json's figures, ratios and targets and to report.md, so that one report holds
    every target."""
    try:
        report = json.loads((OUT / "report.json").read_text())
        ordering = json.loads((OUT / "ordering.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"no report to add the ordering run to ({e}): run make bench")
    ratio = round(ordering["key_over_partition"], 1)
    report["ordering"] = ordering
    report["targets"]["key_ordered_over_sequential"] = {"target": "≥ 8", "median": ratio, "met": ratio >= 8,
                                                        "note": "one run, make bench-ordering"}
    (OUT / "report.json").write_text(json.dumps(report, indent=2))
    md = (OUT / "report.md").read_text().rstrip("\n").split("\n\n## Key-ordered concurrency")[0]
    md += ("\n\n" + (OUT / "ordering.md").read_text().strip() + "\n\n"
           f"| target | wanted | one run | |\n|---|---|---|---|\n"
           f"| key_ordered_over_sequential | ≥ 8 | {ratio} | {'met' if ratio >= 8 else 'not met'} |\n")
    (OUT / "report.md").write_text(md)
    log(f"added the key-ordered concurrency run to {OUT / 'report.md'}: {ratio}× sequential")


def delete_topics(run):
    """Deletes the run's topics from the local broker, so runs do not pile partitions up there."""
    if BROKERS != "127.0.0.1:9092":
        return
    done = subprocess.run([str(REPO / "scripts/stack.sh"), "delete-topics", run + "[.-].*"],
                          capture_output=True, text=True)
    log(done.stdout.strip() if done.returncode == 0 else
        f"the run's topics were not deleted: {done.stderr.strip()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", 200_000)))
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", 3)))
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--hot-events", type=int, default=int(os.environ.get("BENCH_HOT_EVENTS", 40_000)))
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--paced-seconds", type=float, default=float(os.environ.get("BENCH_PACED_SECONDS", 25)))
    parser.add_argument("--wire-events", type=int, default=int(os.environ.get("BENCH_WIRE_EVENTS", 100_000)))
    parser.add_argument("--analytics-groups-max", type=int,
                        default=int(os.environ.get("BENCH_ANALYTICS_GROUPS_MAX", 1_000_000)),
                        help="groups held open at once for the analytics role's memory figure (0: skip)")
    parser.add_argument("--baseline", default=os.environ.get("BENCH_BASELINE"),
                        help="another reflex binary whose actions and lake roles are measured beside this build's")
    parser.add_argument("--only", choices=["latency", "lake", "analytics"],
                        help="latency: only the paced latency, --repeats times, alternating with --baseline "
                             "if given (target/bench/latency.{md,json}); lake: only the bare consumer and the "
                             "lake role (the actions role runs once to write the audit records every lake "
                             "drain reads); analytics: only the bare consumer and the analytics role, on the "
                             "customers' orders, and its memory at --analytics-groups-max open groups")
    parser.add_argument("--rate", type=int, default=int(os.environ.get("BENCH_RATE", 0)),
                        help="events/s for the paced latency (default: half the actions role's median; with "
                             "--only latency, from one drain of --events events)")
    parser.add_argument("--audit-time", choices=["append", "create"], default="append",
                        help="paced latency up to the audit record's append on the broker (LogAppendTime, "
                             "the default) or to the worker handing it to its producer (CreateTime)")
    parser.add_argument("--add-ordering", action="store_true",
                        help="only add target/bench/ordering.json (make bench-ordering) to report.{json,md}")
    parser.add_argument("--half-of", choices=["sustained", "drain"], default="sustained",
                        help="--only latency without --rate: pace at half the rate one worker sustains while "
                             "the load is produced on this machine (default), or half its drain of a filled topic")
    parser.add_argument("--paced-linger-ms", type=int, default=PACED_LINGER_MS,
                        help="linger.ms of the paced latency's load producer (default 5, librdkafka's; 0 "
                             "sends every event in a request of its own, which saturates a broker "
                             "sharing 2 cores)")
    args = parser.parse_args()
    globals()["PACED_LINGER_MS"] = args.paced_linger_ms
    if args.add_ordering:
        return add_ordering()
    started = time.monotonic()
    n, repeats = args.events, max(1, args.repeats)
    hot_n = min(args.hot_events, n)
    OUT.mkdir(parents=True, exist_ok=True)
    run = "bench-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    atexit.register(delete_topics, run)
    topic = f"{run}.events"
    reflex = str(TARGET / "release/reflex")
    loader = str(TARGET / "release/examples/bench_load")
    env = dict(os.environ,
               REFLEX_CONFIG=str(inline_config()), REFLEX_LOG="warn",
               REFLEX_SCHEMAS_DIR=str(REPO / "schemas"), REFLEX_POLICY_DIR=str(REPO / "policies"),
               REFLEX_KAFKA_BROKERS=BROKERS, REFLEX_TOPICS_EVENTS=topic,
               REFLEX_TOPICS_AUDIT=f"{run}.audit", REFLEX_TOPICS_DLQ=f"{run}.dlq",
               REFLEX_TOPICS_RETRY=f"{run}.retry",
               REFLEX_TOPICS_PARTITIONS=str(args.partitions),
               REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.actions", REFLEX_ROLES_LAKE_GROUP_ID=f"{run}.lake",
               REFLEX_LAKE_STORE=str(OUT / f"{run}-lake"))

    broker_at_start = broker_state()
    payloads, lines = bench_payloads()
    if args.only == "latency":
        return latency_only(args, reflex, loader, env, run, payloads, topic, started)
    only_lake, only_analytics = args.only == "lake", args.only == "analytics"
    customers = f"{run}.customers"
    if only_analytics:
        topic = customers
    subprocess.run([reflex, "topics"], env=env, check=True, capture_output=True)
    if not only_analytics:
        log(f"loading {n} events over {args.keys} keys into {topic} ({args.partitions} partitions)")
        loaded = load_topic(loader, topic, payloads, n, args.keys)
        log(f"loaded at {loaded['events_per_second']:.0f} events/s")
    hot_topics = {"hot": (f"{run}.hot", 1), "distinct": (f"{run}.distinct", hot_n)}
    for label, (t, keys) in ({} if args.only else hot_topics).items():
        subprocess.run([reflex, "topics"], env=dict(env, REFLEX_TOPICS_EVENTS=t), check=True, capture_output=True)
        load_topic(loader, t, payloads, hot_n, keys)
    if not only_lake:
        if not only_analytics:
            log(f"loaded {hot_n} events under one key into {run}.hot and under {hot_n} keys into {run}.distinct")
        subprocess.run([reflex, "topics"], env=dict(env, REFLEX_TOPICS_EVENTS=customers), check=True,
                       capture_output=True)
        load_customers(loader, customers, payloads, n, ANALYTICS_GROUPS)
        log(f"loaded {n} orders of {ANALYTICS_GROUPS} customers into {customers}")
    # A baseline build may take a record per broker round trip on one key: its hot-key drains
    # get topics of their own, small, measured for both builds.
    small_n = min(hot_n, 3000)
    small_topics = {"hot": (f"{run}.hot-small", 1), "distinct": (f"{run}.distinct-small", small_n)}
    if args.baseline and not args.only:
        for label, (t, keys) in small_topics.items():
            subprocess.run([reflex, "topics"], env=dict(env, REFLEX_TOPICS_EVENTS=t), check=True, capture_output=True)
            load_topic(loader, t, payloads, small_n, keys)

    def outputs(name, i, **extra):
        """The environment for one drain: the same events, a group and outputs of its own."""
        tag = f"{name}-{i}"
        return dict(env, REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.{tag}", REFLEX_TOPICS_AUDIT=f"{run}.{tag}.audit",
                    REFLEX_TOPICS_DLQ=f"{run}.{tag}.dlq", REFLEX_TOPICS_RETRY=f"{run}.{tag}.retry", **extra)

    runs = {}

    def measure(name, i, fn):
        before = os.getloadavg()[0]
        figures = fn()
        figures["load_before"], figures["load_after"] = round(before, 2), round(os.getloadavg()[0], 2)
        runs.setdefault(name, []).append(figures)
        rate = figures.get("events_per_second")
        working = figures.get("cpu_us_per_record_working")
        log(f"[{i + 1}/{repeats}] {name}: {rate} events/s, {figures.get('cpu_us_per_record', '-')} CPU-µs per record"
            + (f" ({working} after start-up)" if working is not None else "") + f" (load {before:.1f})")

    def bare():
        out, wall, cpu, rss = timed("bare", [str(TARGET / "release/examples/bare_consumer"), BROKERS, topic, str(n)])
        b = json.loads(out.strip().splitlines()[-1])
        return {"records": n, "events_per_second": round(b["events_per_second"]), "busy_seconds": b["seconds"],
                "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                "cpu_us_per_record": round(cpu * 1e6 / n, 1),
                "cpu_us_per_record_working": working_cpu(cpu, b.get("startup_cpu_seconds"), n),
                "startup_cpu_seconds": b.get("startup_cpu_seconds"), "peak_rss_mib": round(rss, 1)}

    def mirror(i):
        out_topic = f"{run}.mirror-{i}"
        subprocess.run([reflex, "topics"], env=dict(env, REFLEX_TOPICS_EVENTS=out_topic), check=True, capture_output=True)
        summary = OUT / "mirror.summary.json"
        _, wall, cpu, rss = timed("mirror", [str(TARGET / "release/examples/mirror"), BROKERS, topic, out_topic,
                                             str(n), str(AUDIT_BYTES), str(summary)])
        m = summary_of(summary)
        return {"records": n, "events_per_second": round(m["events_per_second"]), "busy_seconds": round(m["busy_seconds"], 3),
                "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                "cpu_us_per_record": round(cpu * 1e6 / n, 1),
                "cpu_us_per_record_working": working_cpu(cpu, m.get("startup_cpu_seconds"), n),
                "startup_cpu_seconds": m.get("startup_cpu_seconds"), "peak_rss_mib": round(rss, 1)}

    def lake(name, i, binary, audit_topic):
        """The lake role draining the events and `audit_topic`, in a group and a store of its own."""
        tag = f"{name}-{i}"
        return role_run(name, binary, dict(
            env, REFLEX_TOPICS_AUDIT=audit_topic, REFLEX_ROLES_LAKE_GROUP_ID=f"{run}.{tag}",
            REFLEX_LAKE_STORE=str(OUT / f"{run}-{tag}")), "lake", 2 * n)

    def analytics(name, i, binary):
        """The analytics role's count window per customer over the customers' orders."""
        return role_run(name, binary, dict(analytics_env(env, run, f"{name}-{i}", "1m", 100_000),
                                           REFLEX_TOPICS_EVENTS=customers), "analytics", n)

    if only_analytics:
        for i in range(repeats):
            measure("bare_consumer", i, bare)
            measure("analytics", i, lambda: analytics("analytics", i, reflex))
            if args.baseline:
                measure("analytics_baseline", i, lambda: analytics("analytics-baseline", i, args.baseline))
    if only_lake:
        # One actions run writes the audit records that every lake drain reads.
        measure("actions", 0, lambda: actions_run("actions", reflex, outputs("actions", 0), n))
        for i in range(repeats):
            measure("bare_consumer", i, bare)
            measure("lake", i, lambda: lake("lake", i, reflex, f"{run}.actions-0.audit"))
            if args.baseline:
                measure("lake_baseline", i, lambda: lake("lake-baseline", i, args.baseline, f"{run}.actions-0.audit"))
    for i in range(0 if args.only else repeats):
        measure("bare_consumer", i, bare)
        measure("mirror", i, lambda: mirror(i))
        measure("actions", i, lambda: actions_run("actions", reflex, outputs("actions", i), n))
        if args.baseline:
            measure("actions_baseline", i, lambda: actions_run("actions-baseline", args.baseline,
                                                               outputs("baseline", i), n))
        measure("actions_compiled", i, lambda: actions_run("actions-compiled", reflex,
                                                           outputs("compiled", i, REFLEX_POLICY_ENGINE="compiled"), n))
        measure("actions_two_deciders", i, lambda: actions_run("actions-deciders", reflex,
                                                               outputs("deciders", i, REFLEX_ROLES_ACTIONS_DECIDERS="2"), n))
        measure("actions_exactly_once", i, lambda: actions_run("actions-eos", reflex,
                                                               outputs("eos", i, REFLEX_KAFKA_GUARANTEE="exactly_once"), n))
        # The lake reads the events and the audit records of this repeat's actions run.
        measure("lake", i, lambda: lake("lake", i, reflex, f"{run}.actions-{i}.audit"))
        if args.baseline:
            measure("lake_baseline", i, lambda: lake("lake-baseline", i, args.baseline, f"{run}.actions-{i}.audit"))
        measure("analytics", i, lambda: analytics("analytics", i, reflex))
        if args.baseline:
            measure("analytics_baseline", i, lambda: analytics("analytics-baseline", i, args.baseline))
        for label, (t, _) in hot_topics.items():
            measure(f"actions_{label}_keys", i, lambda: actions_run(
                f"actions-{label}", reflex, outputs(label, i, REFLEX_TOPICS_EVENTS=t), hot_n))
        if args.baseline:
            for label, (t, _) in small_topics.items():
                for build, binary in (("", reflex), ("baseline_", args.baseline)):
                    measure(f"actions_{build}{label}_keys_small", i, lambda: actions_run(
                        f"actions-{build}{label}-small", binary,
                        outputs(f"{build}{label}-small", i, REFLEX_TOPICS_EVENTS=t), small_n))

    def per_repeat(a, b, key="events_per_second"):
        if a not in runs or b not in runs:
            return None
        return spread([x[key] / y[key] for x, y in zip(runs[a], runs[b]) if x.get(key) and y.get(key)])

    figures = {"events": n, "repeats": repeats, "keys": args.keys, "hot_events": hot_n, "hot_events_small": small_n,
               "partitions": args.partitions, "payload_lines": len(lines), "audit_bytes_mirrored": AUDIT_BYTES,
               "machine": f"{os.cpu_count()} cores, broker on the same machine",
               "load_average_start": runs["bare_consumer"][0]["load_before"], "broker_start": broker_at_start,
               "runs": runs}
    figures["summary"] = {name: {k: spread([r.get(k) for r in rs])
                                 for k in ("events_per_second", "cpu_us_per_record", "cpu_us_per_record_working",
                                           "startup_cpu_seconds", "peak_rss_mib", "busy_seconds")}
                          for name, rs in runs.items()}
    ratios = {
        "actions_over_mirror": per_repeat("actions", "mirror"),
        "actions_over_bare_consumer": per_repeat("actions", "bare_consumer"),
        "mirror_over_bare_consumer": per_repeat("mirror", "bare_consumer"),
        "lake_over_bare_consumer": per_repeat("lake", "bare_consumer"),
        "analytics_over_bare_consumer": per_repeat("analytics", "bare_consumer"),
        "actions_compiled_over_mirror": per_repeat("actions_compiled", "mirror"),
        "actions_two_deciders_over_actions": per_repeat("actions_two_deciders", "actions"),
        "exactly_once_over_at_least_once": per_repeat("actions_exactly_once", "actions"),
        "hot_key_over_distinct_keys": per_repeat("actions_hot_keys", "actions_distinct_keys"),
    }
    if args.baseline:
        ratios["actions_over_baseline"] = per_repeat("actions", "actions_baseline")
        ratios["actions_cpu_over_baseline"] = per_repeat("actions", "actions_baseline", "cpu_us_per_record")
        ratios["lake_cpu_over_baseline"] = per_repeat("lake", "lake_baseline", "cpu_us_per_record")
        ratios["lake_rss_over_baseline"] = per_repeat("lake", "lake_baseline", "peak_rss_mib")
        ratios["analytics_cpu_over_baseline"] = per_repeat("analytics", "analytics_baseline", "cpu_us_per_record")
        ratios["hot_key_over_distinct_keys_small"] = per_repeat("actions_hot_keys_small", "actions_distinct_keys_small")
        ratios["baseline_hot_key_over_distinct_keys_small"] = per_repeat("actions_baseline_hot_keys_small",
                                                                         "actions_baseline_distinct_keys_small")
        ratios["hot_key_over_baseline_hot_key_small"] = per_repeat("actions_hot_keys_small", "actions_baseline_hot_keys_small")

    if args.analytics_groups_max > 0 and args.only in (None, "analytics"):
        g = args.analytics_groups_max
        topic_g = f"{run}.customers-{g}"
        subprocess.run([reflex, "topics"], env=dict(env, REFLEX_TOPICS_EVENTS=topic_g), check=True, capture_output=True)
        load_customers(loader, topic_g, payloads, g, g)
        log(f"analytics: {g} orders of {g} customers, one day's window: {g} groups open at once")
        builds = [("analytics_many_groups", "analytics-many", reflex)]
        if args.baseline:
            builds.append(("analytics_many_groups_baseline", "analytics-many-baseline", args.baseline))
        for name, tag, binary in builds:
            figures[name] = dict(role_run(tag, binary, dict(
                analytics_env(env, run, tag, "24h", 2 * g), REFLEX_TOPICS_EVENTS=topic_g), "analytics", g),
                groups=g)
            am = figures[name]
            log(f"{name} at {g} open groups: peak RSS {am['peak_rss_mib']} MiB, {am['cpu_us_per_record']} CPU-µs per event")
        if args.baseline:
            new, old = figures["analytics_many_groups"], figures["analytics_many_groups_baseline"]
            ratios["analytics_many_groups_rss_over_baseline"] = spread([new["peak_rss_mib"] / old["peak_rss_mib"]])
    figures["analytics_checkpoint"] = {"ns_10k_groups": criterion_ns("analytics_checkpoint", "snapshot_10k_groups")}

    if args.paced_seconds > 0 and not args.only:
        drained = figures["summary"]["actions"]["events_per_second"]["median"]
        rate = args.rate or max(1, round(drained / 2))
        log(f"paced latency: {rate} events/s (half the drain), one worker, fresh topic")
        figures["paced_latency"] = paced_latency(reflex, loader, env, run, payloads, rate, args.paced_seconds,
                                                 audit_time=args.audit_time)
        log_latency("paced latency", figures["paced_latency"])
        if not args.rate:
            sustained = sustained_rate(reflex, loader, env, run, payloads, drained, args.paced_seconds)
            figures["paced_saturation"] = sustained
            half = max(1, round(sustained["processed_per_second_while_sending"] / 2))
            log(f"paced latency: {half} events/s (half the sustained rate), one worker, fresh topic")
            figures["paced_latency_sustained_half"] = paced_latency(
                reflex, loader, env, run, payloads, half, args.paced_seconds, "paced-sustained-half", args.audit_time)
            log_latency("paced latency, half the sustained rate", figures["paced_latency_sustained_half"])
    if args.wire_events > 0 and not args.only:
        log(f"Avro vs JSON through the actions role ({args.wire_events} payment.settled events each)")
        figures["avro_vs_json"] = wire_comparison(reflex, loader, env, run, args.wire_events, args.partitions)
        ratios["avro_over_json"] = spread([figures["avro_vs_json"]["avro_over_json"]])

    cpu_breakdown(figures, runs, ratios)
    figures["ratios"] = ratios
    summary = figures["summary"]
    figure = lambda process, key: summary.get(process, {}).get(key)
    measured = {"actions_over_mirror": ratios["actions_over_mirror"],
                "actions_cpu_us_per_event": None if args.only else figure("actions", "cpu_us_per_record"),
                "lake_cpu_us_per_record": figure("lake", "cpu_us_per_record"),
                "lake_peak_rss_mib": figure("lake", "peak_rss_mib"),
                "analytics_cpu_us_per_event": figure("analytics", "cpu_us_per_record"),
                "cpu_over_stage_sum": ratios.get("cpu_over_stage_sum"),
                "hot_key_over_distinct_keys": ratios["hot_key_over_distinct_keys"]}
    figures["targets"] = {k: {"target": f"{op} {v}", "median": measured[k]["median"] if measured[k] else None,
                              "met": None if not measured[k] else
                              (measured[k]["median"] >= v if op == "≥" else measured[k]["median"] <= v)}
                          for k, (op, v) in TARGETS.items()}
    figures["load_average_end"] = os.getloadavg()
    figures["broker_end"] = broker_state()
    figures["run_seconds"] = round(time.monotonic() - started)
    figures["config_left_out"] = {binary: left for binary, (_, left) in _ACCEPTED.items() if left}
    (OUT / "report.json").write_text(json.dumps(figures, indent=2))
    write_markdown(figures, args)


def log_latency(label, pl):
    a, f, st = pl.get("all") or {}, pl.get("first_second") or {}, pl.get("steady") or {}
    log(f"{label}: all p50 {a.get('p50_ms')} / p99 {a.get('p99_ms')} / max {a.get('max_ms')} ms; first second "
        f"p99 {f.get('p99_ms')} / max {f.get('max_ms')} ms; steady p99 {st.get('p99_ms')} ms "
        f"(load {pl['load_before']:.1f} → {pl['load_after']:.1f})")


def latency_basis(audit_time):
    end = ("its audit record's append on the broker (LogAppendTime; acknowledged right after)"
           if audit_time == "append" else "its audit record's CreateTime (the worker handing it to its producer)")
    return (f"From the event's `time` (set by the load producer as it hands the event to its producer, which "
            f"lingers {PACED_LINGER_MS} ms; ms) to {end}.")


def latency_table(rows):
    """Markdown rows: per run, all records, the first second and the steady state, and all
    records split at the worker's `processed_at` (a baseline build may not write it)."""
    num = lambda v: "n/a" if v is None else f"{v:.0f}"
    md = ["| build | records | n | p50 ms | p90 ms | p99 ms | max ms | load before → after |",
          "|---|---|---|---|---|---|---|---|"]
    for label, pl in rows:
        for key, what in (("all", "all"), ("first_second", "first second"),
                          ("steady", f"after the first {pl.get('warm_up_ms', WARM_UP_MS)} ms"),
                          ("event_to_append", "all: event `time` → its append"),
                          ("append_to_processed", "all: event append → `processed_at`"),
                          ("event_to_processed", "all: event `time` → `processed_at`"),
                          ("processed_to_append", "all: `processed_at` → audit append")):
            if key.startswith(("event_", "processed_", "append_")) and not pl.get(key):
                continue
            f = pl.get(key) or {}
            md.append(f"| {label} | {what} | {f.get('n', 0)} | " + " | ".join(
                num(f.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
                + f" | {pl['load_before']:.1f} → {pl['load_after']:.1f} |")
    return md


def latency_only(args, reflex, loader, env, run, payloads, topic, started):
    """`--only latency`: the paced latency alone, --repeats times, this build and --baseline
    alternating (each run on topics of its own); writes target/bench/latency.{md,json}."""
    broker_at_start = broker_state()
    rate = args.rate
    if not rate:
        subprocess.run([reflex, "topics"], env=env, check=True, capture_output=True)
        log(f"loading {args.events} events into {topic} to find the actions role's rate")
        load_topic(loader, topic, payloads, args.events, args.keys)
        drained = actions_run("actions-rate", reflex, dict(env, REFLEX_TELEMETRY_LISTEN=free_listen()), args.events)
        rate = max(1, round(drained["events_per_second"] / 2))
        log(f"actions role: {drained['events_per_second']} events/s drained")
        if args.half_of == "sustained":
            sustained = sustained_rate(reflex, loader, env, run, payloads, round(drained["events_per_second"]),
                                       args.paced_seconds)
            rate = max(1, round(sustained["processed_per_second_while_sending"] / 2))
        log(f"paced at half the {args.half_of} rate: {rate} events/s")
    builds = [("this build", reflex)] + ([("baseline", args.baseline)] if args.baseline else [])
    runs = {label: [] for label, _ in builds}
    # A broker just started (`make up`) appends slowly while it loads its partitions and warms
    # up (p50 about 1 s at 2 000 events/s, against 6 ms a minute later): one short paced run on
    # topics of its own goes first and is not counted.
    warm_up = paced_latency(reflex, loader, env, run, payloads, rate, min(5.0, args.paced_seconds),
                            "paced-warm-up", args.audit_time)
    log_latency("warm-up, not counted", warm_up)
    for i in range(max(1, args.repeats)):
        for j, (label, binary) in enumerate(builds):
            tag = f"paced-{j}-{i}"
            pl = paced_latency(binary, loader, env, run, payloads, rate, args.paced_seconds, tag, args.audit_time)
            runs[label].append(pl)
            log_latency(f"[{i + 1}/{args.repeats}] {label}", pl)
    summary = {label: {part: {k: spread([(r.get(part) or {}).get(k) for r in rs])
                              for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")}
                       for part in ("all", "first_second", "steady")}
               for label, rs in runs.items()}
    figures = {"rate": rate, "half_of": None if args.rate else args.half_of,
               "seconds": args.paced_seconds, "repeats": args.repeats, "audit_time": args.audit_time,
               "load_linger_ms": PACED_LINGER_MS,
               "baseline": args.baseline, "machine": f"{os.cpu_count()} cores, broker on the same machine",
               "runs": runs, "summary": summary, "warm_up_run": warm_up.get("all"),
               "broker_start": broker_at_start, "broker_end": broker_state(),
               "run_seconds": round(time.monotonic() - started)}
    (OUT / "latency.json").write_text(json.dumps(figures, indent=2))
    md = ["# reflex paced latency", "",
          f"{rate} events/s" + ("" if args.rate else f" (half the {args.half_of} rate)")
          + f" for {args.paced_seconds} s into a fresh topic, one actions worker per run, "
          f"{len(builds)} build(s) alternating, {args.repeats} repeats; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{figures['machine']}; at the start {broker_line(broker_at_start)}, at the end "
          f"{broker_line(figures['broker_end'])}.", "", latency_basis(args.audit_time), "",
          "## Median (lowest–highest) over the repeats", "",
          "| build | records | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for label, parts in summary.items():
        for part, what in (("all", "all"), ("first_second", "first second"), ("steady", f"after {WARM_UP_MS} ms")):
            md.append(f"| {label} | {what} | " + " | ".join(fmt(parts[part][k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")) + " |")
    md += ["", "## Every run, in the order run", ""]
    md += latency_table([(f"{label} #{i + 1}", pl) for i in range(max(1, args.repeats))
                         for label, rs in runs.items() if i < len(rs) for pl in [rs[i]]])
    (OUT / "latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def write_markdown(figures, args):
    n, repeats, s, r = figures["events"], figures["repeats"], figures["summary"], figures["ratios"]
    md = ["# reflex end-to-end load run", "",
          f"{n} events over {figures['keys']} keys, {figures['partitions']} partitions, {figures['machine']}; "
          f"{repeats} repeats, interleaved; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
          "Each figure: median (lowest–highest) over the repeats. Events/s from each process's busy time "
          "(first record received to last one done); CPU and peak RSS of the whole process.", "",
          "| process | events/s | CPU-µs per record | … after start-up | peak RSS MiB |", "|---|---|---|---|---|"]
    labels = [("bare_consumer", "bare rdkafka consumer (ceiling)"),
              ("mirror", f"mirror: consume + produce a {AUDIT_BYTES}-byte record, offsets after ack (ceiling)"),
              ("actions", "actions role"),
              ("actions_baseline", f"actions role, baseline build ({args.baseline})"),
              ("actions_compiled", "actions role, `[policy] engine = \"compiled\"`"),
              ("actions_two_deciders", "actions role, `deciders = 2`"),
              ("actions_exactly_once", "actions role, `guarantee = \"exactly_once\"`"),
              ("lake", "lake role (events + audit records, per record)"),
              ("lake_baseline", f"lake role, baseline build ({args.baseline})"),
              ("analytics", f"analytics role, a count window per customer over {ANALYTICS_GROUPS} customers"),
              ("analytics_baseline", f"analytics role, baseline build ({args.baseline})"),
              ("actions_hot_keys", f"actions role, {figures['hot_events']} events under one key"),
              ("actions_distinct_keys", f"actions role, the same {figures['hot_events']} events under distinct keys"),
              ("actions_hot_keys_small", f"actions role, {figures['hot_events_small']} events under one key"),
              ("actions_distinct_keys_small", f"actions role, the same {figures['hot_events_small']} events under distinct keys"),
              ("actions_baseline_hot_keys_small", f"actions role, baseline build, {figures['hot_events_small']} events under one key"),
              ("actions_baseline_distinct_keys_small", f"actions role, baseline build, the same {figures['hot_events_small']} events under distinct keys")]
    for key, label in labels:
        if key in s:
            f = s[key]
            md.append(f"| {label} | {fmt(f['events_per_second'])} | {fmt(f['cpu_us_per_record'], 1)} | "
                      f"{fmt(f.get('cpu_us_per_record_working'), 1)} | {fmt(f['peak_rss_mib'])} |")
    md += ["", "## Ratios (within each repeat) and targets", "", "| ratio | median (range) |", "|---|---|"]
    md += [f"| {k} | {fmt(v, 3)} |" for k, v in r.items()]
    md += ["", "| target | wanted | median | |", "|---|---|---|---|"]
    md += [f"| {k} | {t['target']} | {t['median']} | {'met' if t['met'] else 'not met' if t['met'] is False else 'not measured'} |"
           for k, t in figures["targets"].items()]
    pl = figures.get("paced_latency")
    if pl:
        md += ["", f"## Latency at a paced rate ({pl['rate_target']} events/s, half the drain's, achieved "
               f"{pl['rate_achieved']}/s, {pl['seconds']} s, one worker, fresh topic)", "",
               latency_basis(pl["audit_time"]), "", *latency_table([("this build", pl)])]
    sat, half = figures.get("paced_saturation"), figures.get("paced_latency_sustained_half")
    if sat and half:
        md += ["", f"## Latency at half the sustained rate ({half['rate_target']} events/s)", "",
               f"Fed the drain's rate ({sat['rate_achieved']} events/s for {sat['seconds']} s) on this machine, "
               f"beside the load producer and the broker's produce path, one worker made "
               f"{sat['processed_per_second_while_sending']} audit records/s while the events were sent "
               f"(p50 latency {(sat.get('all') or {}).get('p50_ms')} ms: it fell behind). Half of that:", "",
               *latency_table([("this build", half)])]
    for key, who in (("analytics_many_groups", "Analytics role"),
                     ("analytics_many_groups_baseline", "The baseline build's analytics role")):
        am = figures.get(key)
        if am:
            md += ["", f"{who} with {am['groups']} groups open at once (one event each, a one-day window): "
                   f"peak RSS {am['peak_rss_mib']} MiB, {am['cpu_us_per_record']} CPU-µs per event, "
                   f"{am['events_per_second']} events/s."]
    ck = figures.get("analytics_checkpoint", {}).get("ns_10k_groups")
    if ck:
        md += [f"A checkpoint of 10 000 open groups (criterion, `analytics_checkpoint/snapshot_10k_groups`): {ck / 1e6:.2f} ms."]
    cb = figures.get("cpu_breakdown")
    if cb:
        md += ["", "## CPU per event: the actions role against its stages measured alone", "",
               "| stage | ns per event |", "|---|---|"]
        md += [f"| {k} | {v} |" for k, v in cb["stage_ns"].items()]
        md += [f"| **sum of stages** | **{cb['stage_sum_ns']}** |",
               f"| actions role CPU per event (median) | {cb['actions_cpu_ns_per_event']} |", "",
               "Parts of `Processor::process`, each alone (criterion, ns per event): "
               + "; ".join(f"{k} {v}" for k, v in cb["parts_ns"].items()) + "."]
    av = figures.get("avro_vs_json")
    if av:
        md += ["", f"## Avro vs JSON ({av['events']} `payment.settled` events each, actions role, one run)", "",
               "| data | events/s | CPU-µs per record | peak RSS MiB |", "|---|---|---|---|"]
        for key, label in (("avro", "Avro, Confluent wire format, binary mode"), ("json", "JSON, structured")):
            f = av[key]
            md.append(f"| {label} | {f['events_per_second']} | {f['cpu_us_per_record']} | {f['peak_rss_mib']} |")
    for binary, left in figures.get("config_left_out", {}).items():
        md += ["", f"`{binary}` does not know these parts of the configuration; they were left out of its own: "
               + ", ".join(f"`{item}`" for item in left) + "."]
    md += ["", f"Load average at start {figures['load_average_start']:.1f}, at end {figures['load_average_end'][0]:.1f} "
           f"(each drain's load before and after is in report.json); the whole run took {figures['run_seconds']} s. "
           f"At the start {broker_line(figures.get('broker_start'))}; at the end {broker_line(figures.get('broker_end'))}."]
    (OUT / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

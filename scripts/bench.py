#!/usr/bin/env python3
"""The end-to-end load run: reflex's roles against the ceiling of the same broker, in one run.

Loads N demo-like events (valid and invalid, JSON CloudEvents over the demo types) into a fresh
topic with Kafka's own producer-perf-test, then drains that one topic with, in turn:
  - a bare rdkafka consumer with the worker's consumer settings (examples/bare_consumer.rs),
  - Kafka's kafka-consumer-perf-test,
  - the actions role (`reflex run --role actions --drain`),
  - the lake role (`reflex run --role lake --drain`, the events and their audit records),
each as its own process, timed with /usr/bin/time (CPU seconds, peak RSS). Then:
  - paced latency: one actions worker on a fresh topic fed at half the actions role's measured
    maximum for --paced-seconds; latency = the audit record's Kafka timestamp (CreateTime, set by
    the worker's producer) minus the event's `time` (set by the producer at send, ms);
  - CPU ratio: the actions role's CPU per event over the sum of its stages measured alone by
    criterion (decode + validate + policy stage + audit encode, from target/criterion, so
    `cargo bench` must have run) plus the bare consumer's CPU per event;
  - Avro vs JSON: --wire-events `payment.settled` events as binary-mode CloudEvents with Avro
    data in the Confluent wire format (schema registered with `reflex schemas register`), and
    the same events as structured JSON, each drained by the actions role.
Writes target/bench/report.md and target/bench/report.json with every figure, the ratios and
the targets. About 4 minutes for the default sizes on a 2-core machine; progress is printed.

usage: scripts/bench.py [--events N] [--partitions P] [--paced-seconds S] [--wire-events M]
       (the local stack must be up: make up; make bench builds and runs everything)
"""
import argparse
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
TARGETS = {"actions_over_bare_consumer": 0.3, "lake_over_bare_consumer": 0.5,
           "cpu_over_stage_sum": 1.25}
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


def actions_run(name, reflex, env, expected):
    """Drains a topic with the actions role; returns its figures."""
    out, wall, cpu, rss = timed(name, [reflex, "run", "--role", "actions", "--drain", "--worker-id", "bench"], env)
    m = re.search(r"(\d+) events in ([\d.]+)s .*\((\d+) events/s\)", out)
    busy = float(m.group(2)) if m else wall
    return {"events_per_second": round(expected / busy), "busy_seconds": busy, "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2), "cpu_seconds_per_million": round(cpu * 1e6 / expected, 2),
            "peak_rss_mib": round(rss, 1)}


def role_env(base, run, name):
    """The environment for a role on topics and groups of its own."""
    return dict(base, REFLEX_TOPICS_EVENTS=f"{run}.{name}", REFLEX_TOPICS_AUDIT=f"{run}.{name}.audit",
                REFLEX_TOPICS_DLQ=f"{run}.{name}.dlq", REFLEX_TOPICS_RETRY=f"{run}.{name}.retry",
                REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.{name}.actions")


def paced_latency(reflex, load, env, run, payloads, rate, seconds):
    """One actions worker fed at `rate` events/s for `seconds`; latency event time → audit."""
    env = role_env(env, run, "paced")
    env["REFLEX_LOG"] = "info"
    subprocess.run([reflex, "topics"], env=env, check=True, capture_output=True)
    log_path = OUT / "paced-worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen([reflex, "run", "--role", "actions", "--worker-id", "bench-paced"],
                                  env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "partitions assigned" not in log_path.read_text():
                if worker.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the paced worker did not start; see {log_path}")
                time.sleep(0.2)
            log(f"paced: {rate} events/s for {seconds} s into {run}.paced")
            out = subprocess.run([load, "paced", BROKERS, f"{run}.paced", str(payloads), str(rate), str(seconds)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"paced load failed: {out.stderr[-2000:]}")
            sent = json.loads(out.stdout.strip().splitlines()[-1])
            lat = subprocess.run([load, "latency", BROKERS, f"{run}.paced.audit", str(sent["records"])],
                                 capture_output=True, text=True)
            if lat.returncode != 0:
                sys.exit(f"latency read failed: {lat.stderr[-2000:]}")
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
    figures = json.loads(lat.stdout.strip().splitlines()[-1])
    figures.update({"rate_target": rate, "rate_achieved": round(sent["events_per_second"]),
                    "seconds": seconds, "sent": sent["records"]})
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", 1_000_000)))
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--paced-seconds", type=float, default=float(os.environ.get("BENCH_PACED_SECONDS", 25)))
    parser.add_argument("--wire-events", type=int, default=int(os.environ.get("BENCH_WIRE_EVENTS", 200_000)))
    args = parser.parse_args()
    started = time.monotonic()
    n = args.events
    OUT.mkdir(parents=True, exist_ok=True)
    run = "bench-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
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
               "machine": f"{os.cpu_count()} cores, broker on the same machine",
               "load_average_start": os.getloadavg()}

    log("ceiling: bare rdkafka consumer (worker's consumer settings, payloads discarded)")
    out, wall, cpu, rss = timed("bare", [str(TARGET / "release/examples/bare_consumer"), BROKERS, topic, str(n)])
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
    figures["actions_role"] = actions_run("actions", reflex, env, n)
    log(f"actions role: {figures['actions_role']['events_per_second']} events/s")
    log("actions role with two policy evaluators (roles.actions.deciders = 2; same topic, its own group and outputs)")
    single_env = dict(env, REFLEX_ROLES_ACTIONS_DECIDERS="2", REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.actions-single",
                      REFLEX_TOPICS_AUDIT=f"{run}.audit-single", REFLEX_TOPICS_DLQ=f"{run}.dlq-single",
                      REFLEX_TOPICS_RETRY=f"{run}.retry-single")
    figures["actions_role_two_deciders"] = actions_run("actions-single", reflex, single_env, n)
    log(f"actions role (two evaluators): {figures['actions_role_two_deciders']['events_per_second']} events/s")
    log("actions role with [policy] engine = \"compiled\" (same topic, its own group and outputs)")
    compiled_env = dict(env, REFLEX_POLICY_ENGINE="compiled", REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.actions-compiled",
                        REFLEX_TOPICS_AUDIT=f"{run}.audit-compiled", REFLEX_TOPICS_DLQ=f"{run}.dlq-compiled",
                        REFLEX_TOPICS_RETRY=f"{run}.retry-compiled")
    figures["actions_role_compiled"] = actions_run("actions-compiled", reflex, compiled_env, n)
    log(f"actions role (compiled policy): {figures['actions_role_compiled']['events_per_second']} events/s")

    log("actions role with [kafka] guarantee = \"exactly_once\" (same topic, its own group and outputs)")
    eos_env = dict(env, REFLEX_KAFKA_GUARANTEE="exactly_once", REFLEX_ROLES_ACTIONS_GROUP_ID=f"{run}.actions-eos",
                   REFLEX_TOPICS_AUDIT=f"{run}.audit-eos", REFLEX_TOPICS_DLQ=f"{run}.dlq-eos",
                   REFLEX_TOPICS_RETRY=f"{run}.retry-eos")
    figures["actions_role_exactly_once"] = actions_run("actions-eos", reflex, eos_env, n)
    log(f"actions role (exactly_once): {figures['actions_role_exactly_once']['events_per_second']} events/s")

    log("lake role (events and their audit records)")
    out, wall, cpu, rss = timed("lake", [reflex, "run", "--role", "lake", "--drain"], env)
    m = re.search(r"lake: (\d+) records, (\d+) rows in (\d+) files \((\d+) bytes", out)
    records = int(m.group(1)) if m else 2 * n
    figures["lake_role"] = {"records": records, "rows": int(m.group(2)) if m else None,
                            "files": int(m.group(3)) if m else None, "parquet_bytes": int(m.group(4)) if m else None,
                            "records_per_second": round(records / wall), "wall_seconds": round(wall, 2),
                            "cpu_seconds": round(cpu, 2), "cpu_seconds_per_million": round(cpu * 1e6 / records, 2),
                            "peak_rss_mib": round(rss, 1)}

    rate = max(1, round(figures["actions_role"]["events_per_second"] / 2))
    log(f"paced latency: half the actions role's maximum, {rate} events/s, one worker, fresh topic")
    figures["paced_latency"] = paced_latency(reflex, loader, env, run, payloads, rate, args.paced_seconds)
    pl = figures["paced_latency"]
    log(f"paced latency: p50 {pl['p50_ms']} ms, p99 {pl['p99_ms']} ms, max {pl['max_ms']} ms; steady state p99 {pl['steady_p99_ms']} ms")

    log(f"Avro vs JSON through the actions role ({args.wire_events} payment.settled events each)")
    figures["avro_vs_json"] = wire_comparison(reflex, loader, env, run, args.wire_events, args.partitions)

    # The actions role's CPU per event against its stages measured alone (criterion, this build).
    stage_ns = {"consume (bare consumer CPU per event)": figures["bare_consumer"]["cpu_seconds"] * 1e9 / n,
                "decode (structured CloudEvent)": criterion_ns("decode", "cloudevent_structured"),
                "validate (JSON Schema)": criterion_mean("pipeline", "validate")[0],
                "policy (input + decision)": criterion_mean("policy", "stage")[0],
                "audit encode": criterion_mean("pipeline", "audit_encode")[0]}
    process_ns = criterion_mean("pipeline", "process")[0]
    actions_ns = figures["actions_role"]["cpu_seconds"] * 1e9 / n
    if all(v is not None for v in stage_ns.values()):
        stage_sum = sum(stage_ns.values())
        figures["cpu_breakdown"] = {"stage_ns": {k: round(v) for k, v in stage_ns.items()},
                                    "stage_sum_ns": round(stage_sum), "actions_cpu_ns_per_event": round(actions_ns),
                                    "process_alone_ns": round(process_ns) if process_ns else None,
                                    "policy_decide_interpreter_ns": round(criterion_mean("policy", "decide")[0] or 0),
                                    "policy_decide_compiled_ns": round(criterion_mean("policy", "decide_compiled")[0] or 0),
                                    "policy_stage_compiled_ns": round(criterion_mean("policy", "stage_compiled")[0] or 0)}
    else:
        figures["cpu_breakdown"] = None
        log("criterion estimates missing (run cargo bench first): no CPU ratio")

    ceiling = figures["bare_consumer"]["events_per_second"]
    figures["ratios"] = {
        "actions_over_bare_consumer": round(figures["actions_role"]["events_per_second"] / ceiling, 3),
        "lake_over_bare_consumer": round(figures["lake_role"]["records_per_second"] / ceiling, 3),
        "bare_consumer_over_perf_test": round(ceiling / figures["kafka_consumer_perf_test"]["events_per_second"], 3),
        "actions_compiled_over_bare_consumer": round(figures["actions_role_compiled"]["events_per_second"] / ceiling, 3),
        "actions_two_deciders_over_bare_consumer": round(figures["actions_role_two_deciders"]["events_per_second"] / ceiling, 3),
        "exactly_once_over_at_least_once": round(figures["actions_role_exactly_once"]["events_per_second"]
                                                 / figures["actions_role"]["events_per_second"], 3),
        "cpu_over_stage_sum": round(actions_ns / figures["cpu_breakdown"]["stage_sum_ns"], 2) if figures["cpu_breakdown"] else None,
        "avro_over_json": figures["avro_vs_json"]["avro_over_json"],
    }
    figures["targets"] = TARGETS
    figures["load_average_end"] = os.getloadavg()
    figures["run_seconds"] = round(time.monotonic() - started)
    (OUT / "report.json").write_text(json.dumps(figures, indent=2))
    md = ["# reflex end-to-end load run", "",
          f"{n} events, {args.partitions} partitions, {figures['machine']}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
          "| process | events/s | wall s | CPU s | CPU s per 1M | peak RSS MiB |", "|---|---|---|---|---|---|"]
    b, p, a, l = (figures[k] for k in ("bare_consumer", "kafka_consumer_perf_test", "actions_role", "lake_role"))
    md.append(f"| bare rdkafka consumer | {b['events_per_second']:.0f} | {b['wall_seconds']} | {b['cpu_seconds']} | {b['cpu_seconds'] * 1e6 / n:.2f} | {b['peak_rss_mib']} |")
    md.append(f"| kafka-consumer-perf-test | {p['events_per_second']:.0f} | {p['wall_seconds']} | {p['cpu_seconds']} | {p['cpu_seconds'] * 1e6 / n:.2f} | |")
    md.append(f"| actions role | {a['events_per_second']} | {a['wall_seconds']} | {a['cpu_seconds']} | {a['cpu_seconds_per_million']} | {a['peak_rss_mib']} |")
    o = figures["actions_role_two_deciders"]
    md.append(f"| actions role, two policy evaluators (`deciders = 2`) | {o['events_per_second']} | {o['wall_seconds']} | {o['cpu_seconds']} | {o['cpu_seconds_per_million']} | {o['peak_rss_mib']} |")
    c = figures["actions_role_compiled"]
    md.append(f"| actions role, `[policy] engine = \"compiled\"` | {c['events_per_second']} | {c['wall_seconds']} | {c['cpu_seconds']} | {c['cpu_seconds_per_million']} | {c['peak_rss_mib']} |")
    e = figures["actions_role_exactly_once"]
    md.append(f"| actions role, `[kafka] guarantee = \"exactly_once\"` | {e['events_per_second']} | {e['wall_seconds']} | {e['cpu_seconds']} | {e['cpu_seconds_per_million']} | {e['peak_rss_mib']} |")
    md.append(f"| lake role ({l['records']} records) | {l['records_per_second']} | {l['wall_seconds']} | {l['cpu_seconds']} | {l['cpu_seconds_per_million']} | {l['peak_rss_mib']} |")
    r = figures["ratios"]
    def stands(key):
        value, target = r.get(key), TARGETS[key]
        if value is None:
            return "not measured"
        ok = value <= target if key == "cpu_over_stage_sum" else value >= target
        return f"{value} (target {'≤' if key == 'cpu_over_stage_sum' else '≥'} {target}: {'met' if ok else 'short'})"
    md += ["", "The bare consumer and the actions role are timed from their first record received (the actions",
           "role to its last record acknowledged); the lake role and the perf test by wall time, start-up included.",
           "", "## Ratios (same run) and targets", "",
           "| ratio | value |", "|---|---|",
           f"| actions role / bare consumer (events/s) | {stands('actions_over_bare_consumer')} |",
           f"| actions role with two policy evaluators / bare consumer | {r['actions_two_deciders_over_bare_consumer']} |",
           f"| actions role with the compiled policy engine / bare consumer | {r['actions_compiled_over_bare_consumer']} |",
           f"| actions role exactly_once / at_least_once (events/s) | {r['exactly_once_over_at_least_once']} |",
           f"| lake role / bare consumer (records/s) | {stands('lake_over_bare_consumer')} |",
           f"| actions CPU per event / sum of stage costs | {stands('cpu_over_stage_sum')} |",
           f"| bare consumer / kafka-consumer-perf-test | {r['bare_consumer_over_perf_test']} |",
           f"| Avro / JSON through the actions role (events/s) | {r['avro_over_json']} |"]
    md += ["", f"## Latency at a paced rate ({pl['rate_target']} events/s = half the actions role's maximum, "
           f"achieved {pl['rate_achieved']}/s, {pl['seconds']} s, one worker, fresh topic)", "",
           "From the event's `time` (set by the producer at send, ms) to its audit record's Kafka timestamp",
           "(CreateTime, set by the worker's producer when it sends the audit record).", "",
           "| records | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|",
           "| all " + " | ".join([str(pl["measured"])] + ["n/a" if pl[k] is None else f"{pl[k]:.0f}"
                                                           for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]) + " |",
           f"| steady state (events after the first {pl['warm_up_ms']} ms) " + " | ".join(
               [str(pl["steady_measured"])] + ["n/a" if pl[k] is None else f"{pl[k]:.0f}"
                                               for k in ("steady_p50_ms", "steady_p90_ms", "steady_p99_ms", "steady_max_ms")]) + " |"]
    cb = figures["cpu_breakdown"]
    if cb:
        md += ["", "## CPU per event: the actions role against its stages measured alone", "",
               "| stage | ns per event |", "|---|---|"]
        md += [f"| {k} | {v} |" for k, v in cb["stage_ns"].items()]
        md += [f"| **sum of stages** | **{cb['stage_sum_ns']}** |",
               f"| actions role CPU per event (this run) | {cb['actions_cpu_ns_per_event']} |",
               f"| `Processor::process` alone (criterion, no Kafka) | {cb['process_alone_ns']} |", "",
               f"Policy decision alone (criterion, same build): {cb['policy_decide_interpreter_ns']} ns with regorus's interpreter "
               f"(the default engine), {cb['policy_decide_compiled_ns']} ns compiled to regorus's VM (`[policy] engine = \"compiled\"`). Stage costs are the means over the",
               "demo inputs of `benches/`; the load run's mix also has invalid events (dead-lettered, no policy)."]
    av = figures["avro_vs_json"]
    md += ["", f"## Avro vs JSON ({av['events']} `payment.settled` events each, actions role, same run)", "",
           "| data | events/s | CPU s per 1M | peak RSS MiB |", "|---|---|---|---|"]
    for fmt, label in (("avro", "Avro, Confluent wire format, binary-mode CloudEvent"), ("json", "JSON, structured CloudEvent")):
        f = av[fmt]
        md.append(f"| {label} | {f['events_per_second']} | {f['cpu_seconds_per_million']} | {f['peak_rss_mib']} |")
    la0, la1 = figures["load_average_start"], figures["load_average_end"]
    md += ["", f"Load average at start {la0[0]:.1f}, at end {la1[0]:.1f} (2 cores shared with other work); "
           f"the whole run took {figures['run_seconds']} s."]
    (OUT / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

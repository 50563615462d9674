"""Publishes the demo's Avro events the way a team outside reflex would: confluent-kafka's own
AvroSerializer and schema registry client, as binary-mode CloudEvents (ce_* headers, data in the
Confluent wire format). Two records are broken on purpose: an unknown schema id and a truncated
datum.

usage: demo-avro.py BOOTSTRAP REGISTRY_URL TOPIC AVSC_FILE COUNT
"""
import datetime as dt
import json
import os
import random
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    bootstrap, registry_url, topic, avsc_file, count = sys.argv[1:6]
    avsc = open(avsc_file).read()
    schema = json.loads(avsc)
    event_type = f"{schema['namespace']}.{schema['name']}"
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), avsc,
                                conf={"subject.name.strategy": record_subject_name_strategy})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    ctx = SerializationContext(topic, MessageField.VALUE)
    rnd = random.Random(11)
    run = os.environ.get("DEMO_RUN") or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    now = dt.datetime.now(dt.timezone.utc)
    failures = []

    def headers(n):
        return [("ce_specversion", b"1.0"), ("ce_id", f"{run}-settled-{n}".encode()),
                ("ce_source", b"/payments/ledger"), ("ce_type", event_type.encode()),
                ("ce_time", now.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()),
                ("content-type", b"application/avro")]

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    value = b""
    for n in range(1, int(count) + 1):
        settled = {"payment_id": f"pay-{n}", "order_id": f"ord-{n}", "amount": round(rnd.uniform(5, 400), 2),
                   "currency": "EUR", "settled_at": now, "fee": None if n % 3 else 0.35}
        value = serializer(settled, ctx)
        producer.produce(topic, key=f"pay-{n}", value=value, headers=headers(n), on_delivery=report)
    broken = [b"\x00\x7f\xff\xff\xff" + value[5:], value[:-3]]  # unknown schema id, truncated datum
    for i, raw in enumerate(broken, start=int(count) + 1):
        producer.produce(topic, key=f"broken-{i}", value=raw, headers=headers(i), on_delivery=report)
    producer.flush(30)
    if failures:
        sys.exit(f"delivery failures: {failures[:3]}")
    print(f"{topic}: {int(count) + len(broken)} Avro events ({event_type}) through {registry_url}")


if __name__ == "__main__":
    main()

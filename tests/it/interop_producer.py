"""Produces Avro and JSON Schema events with confluent-kafka's own serializers and schema
registry client, as a team outside reflex would.

usage: interop_producer.py BOOTSTRAP REGISTRY_URL TOPIC AVSC_FILE JSON_SCHEMA_FILE COUNT
Writes N plain Avro records, N binary-mode CloudEvents with Avro data, and N plain JSON records.
"""
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    bootstrap, registry_url, topic, avsc_file, json_file, count = sys.argv[1:7]
    count = int(count)
    registry = SchemaRegistryClient({"url": registry_url})
    avsc = open(avsc_file).read()
    json_schema = open(json_file).read()
    avro_type = json.loads(avsc)["namespace"] + "." + json.loads(avsc)["name"]
    conf = {"subject.name.strategy": record_subject_name_strategy}
    avro = AvroSerializer(registry, avsc, conf=conf)
    js = JSONSerializer(json_schema, registry, conf=conf)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    ctx = SerializationContext(topic, MessageField.VALUE)
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    for n in range(count):
        payment = {"payment_id": f"py-{n}", "amount": n + 0.5, "note": None if n % 2 else "py"}
        producer.produce(topic, key=f"py-avro-{n}", value=avro(payment, ctx), on_delivery=report)
        headers = [("ce_specversion", b"1.0"), ("ce_id", f"py-ce-{n}".encode()),
                   ("ce_source", b"/python/producer"), ("ce_type", avro_type.encode()),
                   ("content-type", b"application/avro")]
        producer.produce(topic, key=f"py-ce-{n}", value=avro(payment, ctx), headers=headers, on_delivery=report)
        order = {"order_id": f"o-{n}", "qty": n + 1}
        producer.produce(topic, key=f"py-json-{n}", value=js(order, ctx), on_delivery=report)
    producer.flush(30)
    if failures:
        print("delivery failures:", failures[:5], file=sys.stderr)
        sys.exit(1)
    print(f"produced {3 * count} records")


if __name__ == "__main__":
    main()

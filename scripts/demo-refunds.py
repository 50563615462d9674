#!/usr/bin/env python3
"""Publishes the demo's refund requests the way the support desk would: each record signed with
the desk's Ed25519 key in a `publisher-signature` header, with confluent-kafka and the
`cryptography` package (nothing of reflex). On purpose some are not signed, one is changed after
signing, and one is signed with a key reflex does not know: the policy denies those.

usage: demo-refunds.py BOOTSTRAP TOPIC REFUNDS_JSONL KEY_ID PRIVATE_KEY_FILE
"""
import base64
import json
import struct
import sys

from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def signed_bytes(key, value, headers):
    """The bytes reflex verifies (README "Signed records"): a domain line, then the key, the
    value and the ce_* and content-type headers sorted by name and value, each length-prefixed."""
    def field(b):
        return struct.pack(">I", len(b)) + b
    signed = sorted((n.encode(), v) for n, v in headers if n.startswith("ce_") or n == "content-type")
    out = b"reflex publisher-signature v1\n" + field(key or b"") + field(value or b"")
    out += struct.pack(">I", len(signed))
    for name, val in signed:
        out += field(name) + field(val)
    return out


def signature(private_key, key_id, key, value, headers):
    sig = private_key.sign(signed_bytes(key, value, headers))
    return f"keyid={key_id};sig={base64.b64encode(sig).decode()}".encode()


def main():
    bootstrap, topic, jsonl, key_id, key_file = sys.argv[1:6]
    seed = base64.b64decode(open(key_file).read().strip())
    desk = Ed25519PrivateKey.from_private_bytes(seed)
    stranger = Ed25519PrivateKey.generate()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    failures, counts = [], {"signed": 0, "unsigned": 0, "tampered": 0, "unknown key": 0}

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    for n, line in enumerate(l for l in open(jsonl) if l.strip()):
        event = json.loads(line)
        key = event.get("subject", event["id"]).encode()
        value = json.dumps(event).encode()
        headers = [("content-type", b"application/cloudevents+json")]
        if n % 10 == 9:
            kind = "unsigned"
        elif n == 6:
            kind = "tampered"                     # signed, then the amount raised
            headers.append(("publisher-signature", signature(desk, key_id, key, value, headers)))
            event["data"]["amount"] = round(event["data"]["amount"] * 1.1, 2)
            value = json.dumps(event).encode()
        elif n == 12:
            kind = "unknown key"
            headers.append(("publisher-signature", signature(stranger, "support-desk-2019", key, value, headers)))
        else:
            kind = "signed"
            headers.append(("publisher-signature", signature(desk, key_id, key, value, headers)))
        counts[kind] += 1
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report)
    producer.flush(30)
    if failures:
        sys.exit(f"delivery failures: {failures[:3]}")
    print(f"{topic}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + " refunds")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the demo's sample events as JSON lines, one file per topic.

A recognisable mix for a web shop: valid orders, payments and refunds, and on purpose some that
reflex must deny (unauthorized source, refund above the limit, stale payment), some that violate
their schema, events of an unknown type, and lines that are not CloudEvents at all.

usage: demo-events.py OUT_DIR [--seed N]
"""
import argparse
import datetime as dt
import json
import os
import pathlib
import random


def ts(delta_seconds=0):
    t = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=delta_seconds)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(id_, source, type_, subject, data, age=0):
    return {
        "specversion": "1.0",
        "id": id_,
        "source": source,
        "type": type_,
        "subject": subject,
        "time": ts(age),
        "datacontenttype": "application/json",
        "data": data,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    run = os.environ.get("DEMO_RUN") or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    orders, payments, refunds = [], [], []

    for n in range(1, 141):
        oid = f"ord-{n}"
        items = [{"sku": f"SKU-{rnd.randint(100, 999)}", "quantity": rnd.randint(1, 3),
                  "unit_price": round(rnd.uniform(5, 200), 2)} for _ in range(rnd.randint(1, 4))]
        amount = round(sum(i["quantity"] * i["unit_price"] for i in items), 2)
        data = {"order_id": oid, "customer_id": f"cust-{rnd.randint(1, 60)}", "amount": amount,
                "currency": "EUR", "items": items, "placed_at": ts()}
        source = "/shop/web"
        if n % 20 == 0:
            source = "/shop/test-harness"          # not an authorized publisher -> denied
        if n % 35 == 0:
            del data["customer_id"]                # schema violation -> DLQ
        if n % 47 == 0:
            data["amount"] = 25000.0               # above the single-order limit -> denied
        orders.append(event(f"{run}-order-{n}", source, "order.placed", oid, data))

        if n <= 100:
            pdata = {"payment_id": f"pay-{n}", "order_id": oid, "amount": amount, "currency": "EUR",
                     "method": rnd.choice(["card", "paypal", "bank_transfer"])}
            if pdata["method"] == "card":
                pdata["card_last4"] = f"{rnd.randint(0, 9999):04d}"
            age = 3600 if n % 12 == 0 else 5      # an hour old is past the 15 min SLA -> denied
            if n % 30 == 0:
                pdata["method"] = "cash"          # schema violation -> DLQ
            payments.append(event(f"{run}-payment-{n}", "/payments/gateway", "payment.authorized",
                                  f"pay-{n}", pdata, age))

    for n in range(1, 61):
        amount = round(rnd.uniform(5, 400), 2)
        if n % 6 == 0:
            amount = round(rnd.uniform(600, 2000), 2)   # above the automatic approval limit -> denied
        rdata = {"refund_id": f"ref-{n}", "order_id": f"ord-{rnd.randint(1, 140)}", "amount": amount,
                 "currency": "EUR", "reason": rnd.choice(["damaged", "not_delivered", "wrong_item", "goodwill"]),
                 "requested_by": f"agent-{rnd.randint(1, 8)}"}
        refunds.append(event(f"{run}-refund-{n}", "/support/desk", "refund.requested", f"ref-{n}", rdata))

    # An event type nobody registered: unknown type -> DLQ.
    for n in range(1, 6):
        orders.append(event(f"{run}-cancel-{n}", "/shop/web", "order.cancelled", f"ord-{n}",
                            {"order_id": f"ord-{n}"}))
    rnd.shuffle(orders)
    lines = {"orders": [json.dumps(e) for e in orders],
             "payments": [json.dumps(e) for e in payments],
             "refunds": [json.dumps(e) for e in refunds]}
    # Not CloudEvents at all: undecodable -> DLQ.
    lines["orders"] += ['{"order_id": "ord-1", "note": "a bare JSON object, no envelope"}',
                        "this line is not JSON", '{"specversion": "1.0", "id": "x", "type": "order.placed"']
    lines["payments"] += ['{"specversion": "0.3", "id": "legacy-1", "source": "/payments/gateway", "type": "payment.authorized"}']

    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in lines.items():
        (args.out / f"{name}.jsonl").write_text("\n".join(content) + "\n")
        print(f"{args.out / (name + '.jsonl')}: {len(content)} events")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the events the demo's analyses (analytics/shop.toml) find something in, as JSON lines.

Dated two hours back, so the demo's ordinary events (published after them, at the current time)
move event time past every window: refunds piling up on order ord-900, payments pay-901, pay-903
and pay-905 authorised but never settled, and orders per minute that collapse for one minute.

usage: demo-analytics.py OUT_DIR
"""
import datetime as dt
import json
import os
import pathlib
import sys


def main():
    out = pathlib.Path(sys.argv[1])
    run = os.environ.get("DEMO_RUN") or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    now = dt.datetime.now(dt.timezone.utc)
    t0 = (now - dt.timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)

    def ts(minutes):
        t = t0 + dt.timedelta(minutes=minutes)
        return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # The record key (`partitionkey` for reflex produce, `subject` for the refunds' signer) is
    # what an analysis groups or correlates by, so analytics/shop.toml declares those analyses
    # keyed_by_group = true and they need no repartition topic; the orders per minute, one
    # group, go through theirs.
    def event(id_, source, type_, minutes, data, key):
        return {"specversion": "1.0", "id": f"{run}-{id_}", "source": source, "type": type_,
                "subject": key, "time": ts(minutes), "datacontenttype": "application/json",
                "partitionkey": key, "data": data}

    refunds = []
    for n, minute in enumerate([5, 18, 31, 44], start=1):
        refunds.append(event(f"an-refund-{n}", "/support/desk", "refund.requested", minute,
                             {"refund_id": f"ref-90{n}", "order_id": "ord-900", "amount": 20.0 * n,
                              "currency": "EUR", "reason": "not_delivered",
                              "requested_by": f"agent-{n % 2}"}, "ord-900"))
    refunds.append(event("an-refund-5", "/support/desk", "refund.requested", 12,
                         {"refund_id": "ref-905", "order_id": "ord-901", "amount": 15.0,
                          "currency": "EUR", "reason": "damaged"}, "ord-901"))

    payments = []
    for n in range(900, 906):
        pid = f"pay-{n}"
        payments.append(event(f"an-auth-{n}", "/payments/gateway", "payment.authorized", 10 + n % 10,
                              {"payment_id": pid, "order_id": f"ord-{n}", "amount": 42.0,
                               "currency": "EUR", "method": "card"}, pid))
        if n % 2 == 0:
            payments.append(event(f"an-settle-{n}", "/payments/ledger", "payment.settled", 20 + n % 10,
                                  {"payment_id": pid, "order_id": f"ord-{n}", "amount": 42.0,
                                   "currency": "EUR", "settled_at": 0, "fee": None}, pid))

    orders = []
    per_minute = [12, 13, 11, 12, 14, 12, 11, 13, 12, 12, 13, 11, 12, 1, 12, 13]
    n = 0
    for minute, count in enumerate(per_minute):
        for k in range(count):
            n += 1
            t = minute + k / (count + 1)
            orders.append(event(f"an-order-{n}", "/shop/web", "order.placed", t,
                                {"order_id": f"ord-{5000 + n}", "customer_id": f"cust-{1 + n % 60}",
                                 "amount": 20.0 + n % 30, "currency": "EUR",
                                 "items": [{"sku": "SKU-100", "quantity": 1, "unit_price": 20.0 + n % 30}]},
                                "rate"))

    for name, events in [("orders", orders), ("payments", payments), ("refunds", refunds)]:
        path = out / f"analytics-{name}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
        print(f"{len(events):4} events -> {path}")


if __name__ == "__main__":
    main()

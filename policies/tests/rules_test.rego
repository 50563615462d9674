# Rego unit tests, run by `reflex policy test` (and by `opa test` in the test suite, which gives
# OPA the merged data document).
# Loaded only by the test runner: no test module is ever part of a worker's policy set.
package reflex.rules_test

now := "2026-03-01T10:00:00Z"

order(source, amount, currency) := {
	"event": {
		"id": "o-t", "source": source, "type": "order.placed", "time": now,
		"data": {"order_id": "ord-1", "customer_id": "c-1", "amount": amount, "currency": currency},
	},
	"context": {"now": now},
}

test_authorized_source_may_publish if {
	not data.reflex.authz.deny["source is not allowed to publish this event type"] with input as order("/shop/web", 1, "EUR")
}

test_unauthorized_source_is_denied if {
	data.reflex.authz.deny["source is not allowed to publish this event type"] with input as order("/elsewhere", 1, "EUR")
}

test_order_limit_is_per_currency if {
	data.reflex.business.deny["order above the single-order limit"] with input as order("/shop/web", 9001, "GBP")
	count(data.reflex.business.deny) == 0 with input as order("/shop/web", 9001, "EUR")
}

test_order_limit_comes_from_data if {
	data.reflex.business.deny["order above the single-order limit"] with input as order("/shop/web", 11, "EUR")
		with data.limits.order_max as {"EUR": 10}
}

test_decision_collects_every_reason if {
	d := data.reflex.decision with input as order("/elsewhere", 20000, "EUR")
	d.allow == false
	count(d.reasons) == 2
}

test_sla_breach_is_emitted_with_the_age if {
	late := {
		"event": {"id": "p-t", "source": "/payments/gateway", "type": "payment.authorized", "time": "2026-03-01T09:00:00Z"},
		"context": {"now": now},
	}
	d := data.reflex.decision with input as late
	d.allow == false
	some e in d.obligations.emit
	e.type == "reflex.sla.breached"
	e.data.age_seconds == 3600
	e.data.deadline_seconds == 900
}

test_customer_id_is_redacted_from_orders if {
	o := order("/shop/web", 1, "EUR")
	data.reflex.redact == ["data.customer_id"] with input as {"event": o.event}
}

test_card_digits_are_redacted_from_payments if {
	data.reflex.redact == ["data.card_last4"] with input as {"event": {"type": "payment.authorized"}}
}

test_other_types_redact_nothing if {
	data.reflex.redact == [] with input as {"event": {"type": "refund.requested"}}
}

test_the_decision_leaves_redaction_to_its_own_rule if {
	d := data.reflex.decision with input as order("/shop/web", 1, "EUR")
	object.get(d.obligations, "redact", "absent") == "absent"
}

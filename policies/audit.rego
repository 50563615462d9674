# Audit rules: which fields are redacted from every copy of an event reflex writes (read by the
# redaction rule data.reflex.redact, so they may read only input.event).
package reflex.audit

redact contains "data.card_last4" if input.event.type == "payment.authorized"

redact contains "data.customer_id" if input.event.type == "order.placed"

# Audit rules: which fields are redacted from audit records and lake rows.
package reflex.audit

redact contains "data.card_last4" if input.event.type == "payment.authorized"

redact contains "data.customer_id" if input.event.type == "order.placed"

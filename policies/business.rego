# Business rules on the event's data (limits in data.limits).
package reflex.business

deny contains "refund above the automatic approval limit" if {
	input.event.type == "refund.requested"
	input.event.data.amount > data.limits.refund_auto_approve[input.event.data.currency]
}

deny contains "order above the single-order limit" if {
	input.event.type == "order.placed"
	input.event.data.amount > data.limits.order_max[input.event.data.currency]
}

deny contains "customer is blocked" if {
	input.event.type == "order.placed"
	input.enrichment.customer.blocked == true
}

# SLA: an event older than its type's deadline (data.sla.deadline_seconds) is too late to act on.
# Age is measured from the event's own time to the moment of the decision (input.context.now).
package reflex.sla

deny contains "event older than its SLA deadline" if {
	deadline := data.sla.deadline_seconds[input.event.type]
	age_ns := time.parse_rfc3339_ns(input.context.now) - time.parse_rfc3339_ns(input.event.time)
	age_ns > deadline * 1000000000
}

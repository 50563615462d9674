# SLA: an event older than its type's deadline (data.sla.deadline_seconds) is too late to act on.
# Age is measured from the event's own time to the moment of the decision (input.context.now).
# A late event is denied and reported: the decision asks for a "reflex.sla.breached" event.
package reflex.sla

deadline_seconds := data.sla.deadline_seconds[input.event.type]

age_ns := time.parse_rfc3339_ns(input.context.now) - time.parse_rfc3339_ns(input.event.time)

late if age_ns > deadline_seconds * 1000000000

deny contains "event older than its SLA deadline" if late

emit contains breach if {
	late
	breach := {
		"type": "reflex.sla.breached",
		"data": {
			"event_id": input.event.id,
			"event_type": input.event.type,
			"source": input.event.source,
			"age_seconds": floor(age_ns / 1000000000),
			"deadline_seconds": deadline_seconds,
		},
	}
}

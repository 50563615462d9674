# Authorization: which sources may publish which event types (data.publishers).
package reflex.authz

allowed if input.event.type in data.publishers[input.event.source]

deny contains "source is not allowed to publish this event type" if not allowed

# Authorization: which sources may publish which event types (data.publishers), and which event
# types must carry a verified publisher signature by a key allowed for their source
# (data.signatures). input.publisher is what reflex found when it verified the record's
# publisher-signature header: {verified, key_id, status, claimed_key_id}; key_id is set only
# when verified.
package reflex.authz

allowed if input.event.type in data.publishers[input.event.source]

deny contains "source is not allowed to publish this event type" if not allowed

signature_required if input.event.type in data.signatures.required_types

deny contains "a verified publisher signature is required for this event type" if {
	signature_required
	not input.publisher.verified
}

deny contains "the signing key may not publish for this source" if {
	signature_required
	input.publisher.verified
	not input.publisher.key_id in data.signatures.keys[input.event.source]
}

# The decision for every event: data.reflex.decision; and what to redact: data.reflex.redact.
#
# Contract (policies/README.md has the full text):
#   decision: {"allow": bool, "reasons": [string], "obligations": {"emit": [event]}}
#   redact:   [path]
# Each rule package contributes deny reasons; an event is allowed when none applies.
# Obligations: "emit" lists derived events {"type", "topic"?, "data"} published alongside the
# audit record, allowed or not.
# Redaction is its own rule, a pure function of the event: it lists the paths (e.g.
# "data.customer_id") removed from every copy of the event reflex writes (the audit record's
# obligations, emitted events, action bodies, lake rows, replay). It is evaluated with an input
# holding only the event, and a set in which it (or any rule it uses) reads anything but
# input.event, such as input.context.now or input.enrichment, is refused at load.
# reflex fails closed: if the decision is undefined, errors, runs too long or breaks the contract,
# the event is denied with its own reason (policy_undefined, policy_error, policy_timeout,
# policy_malformed_decision; policy_not_loaded when no set is loaded); if redact cannot say, no
# event data is written.
package reflex

deny contains reason if some reason in data.reflex.authz.deny

deny contains reason if some reason in data.reflex.business.deny

deny contains reason if some reason in data.reflex.sla.deny

redact := [path | some path in data.reflex.audit.redact]

emit := [event | some event in data.reflex.sla.emit]

decision := {
	"allow": count(deny) == 0,
	"reasons": [reason | some reason in deny],
	"obligations": {"emit": emit},
}

# The decision for every event: data.reflex.decision.
#
# Contract (policies/README.md has the full text):
#   {"allow": bool, "reasons": [string], "obligations": {"redact": [path], "emit": [event]}}
# Each rule package contributes deny reasons; an event is allowed when none applies.
# Obligations: "redact" lists the paths (e.g. "data.customer_id") removed from every copy of the
# event reflex writes (derived events, lake rows); "emit" lists derived events
# {"type", "topic"?, "data"} published alongside the audit record, allowed or not.
# reflex fails closed: if this rule is undefined, errors, runs too long or breaks the contract,
# the event is denied with its own reason (policy_undefined, policy_error, policy_timeout,
# policy_malformed_decision; policy_not_loaded when no set is loaded).
package reflex

deny contains reason if some reason in data.reflex.authz.deny

deny contains reason if some reason in data.reflex.business.deny

deny contains reason if some reason in data.reflex.sla.deny

redact := [path | some path in data.reflex.audit.redact]

emit := [event | some event in data.reflex.sla.emit]

decision := {
	"allow": count(deny) == 0,
	"reasons": [reason | some reason in deny],
	"obligations": {"redact": redact, "emit": emit},
}

# The decision for every event: data.reflex.decision.
#
# Contract: {"allow": bool, "reasons": [string], "obligations": object}.
# Each rule package contributes deny reasons; an event is allowed when none applies.
# Obligations: "redact" lists the paths removed from audit records and lake rows.
# reflex fails closed: if this rule is undefined or errors, the event is denied.
package reflex

deny contains reason if some reason in data.reflex.authz.deny

deny contains reason if some reason in data.reflex.business.deny

deny contains reason if some reason in data.reflex.sla.deny

redact := [path | some path in data.reflex.audit.redact]

decision := {
	"allow": count(deny) == 0,
	"reasons": [reason | some reason in deny],
	"obligations": {"redact": redact},
}

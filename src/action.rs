//! Actions: exactly one per event type, run after the policy allows the event.
//!
//! Inline kinds run in process: `emit` derives a CloudEvent for another topic, `log` writes a
//! log line. An action returns what it did; sending anything to Kafka is the pipeline's job.
//! The `http` kind calls an action service: [`Action::run`] only says so ([`Effect::Call`]); the
//! caller performs [`Action::http`] with [`crate::service::Services::perform`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::event::{CloudEvent, SPEC_VERSION};
use crate::service::HttpAction;

/// Namespace of derived event ids (UUID v5), so a re-delivered event derives the same id.
const DERIVED_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d1f_3c1e_8a8e_4d2b_9a55_2f6e_0b7c_5a11);

/// A named action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Its name in the configuration.
    pub name: String,
    /// What it does.
    pub kind: ActionKind,
}

/// The action kinds: inline (`emit`, `log`) or a call to an action service (`http`).
#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind {
    /// Emit a derived CloudEvent to `topic`.
    Emit {
        /// Destination topic.
        topic: String,
        /// Type of the derived event.
        event_type: String,
        /// Source of the derived event.
        source: String,
    },
    /// Log the event's envelope (never its data).
    Log {
        /// The message logged.
        message: String,
    },
    /// Call an HTTP action service with the event.
    Http(HttpAction),
}

impl ActionKind {
    /// The kind's name as written in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Emit { .. } => "emit",
            Self::Log { .. } => "log",
            Self::Http(_) => "http",
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A derived event to publish; the action is complete once it is acknowledged.
    Emit {
        /// Destination topic.
        topic: String,
        /// The derived event.
        event: Box<CloudEvent>,
    },
    /// The action completed in process.
    Done,
    /// The action is an HTTP call the caller must make: [`Action::http`] with
    /// [`crate::service::Services::perform`]; it is complete when that call succeeds.
    Call,
}

/// The part of an action's outcome recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionReport {
    /// The action's name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Id of the derived event, for `emit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emitted_id: Option<String>,
    /// Topic of the derived event, for `emit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emitted_topic: Option<String>,
    /// The action service's last status, for `http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Calls made to the action service, over every round, for `http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl Action {
    /// The HTTP call of an `http` action; `None` for the inline kinds.
    pub fn http(&self) -> Option<&HttpAction> {
        match &self.kind {
            ActionKind::Http(http) => Some(http),
            ActionKind::Emit { .. } | ActionKind::Log { .. } => None,
        }
    }

    /// Runs an inline action for an allowed event; an `http` action only returns
    /// [`Effect::Call`].
    pub fn run(
        &self,
        event: &CloudEvent,
        obligations: &serde_json::Map<String, Value>,
    ) -> (Effect, ActionReport) {
        let mut report = ActionReport {
            name: self.name.clone(),
            kind: self.kind.name(),
            emitted_id: None,
            emitted_topic: None,
            status: None,
            attempts: None,
        };
        match &self.kind {
            ActionKind::Emit {
                topic,
                event_type,
                source,
            } => {
                let id = derived_id(&event.source, &event.id, &self.name);
                let mut extensions = BTreeMap::new();
                extensions.insert("causationid".to_owned(), Value::String(event.id.clone()));
                if !obligations.is_empty() {
                    extensions.insert(
                        "obligations".to_owned(),
                        // The same text as the map's JSON value, without copying the map.
                        Value::String(serde_json::to_string(obligations).unwrap_or_default()),
                    );
                }
                let derived = CloudEvent {
                    specversion: SPEC_VERSION.to_owned(),
                    id: id.clone(),
                    source: source.clone(),
                    ty: event_type.clone(),
                    subject: event.subject.clone(),
                    time: Some(
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    ),
                    datacontenttype: Some("application/json".to_owned()),
                    dataschema: None,
                    data: event.data.clone(),
                    extensions,
                };
                report.emitted_id = Some(id);
                report.emitted_topic = Some(topic.clone());
                (
                    Effect::Emit {
                        topic: topic.clone(),
                        event: Box::new(derived),
                    },
                    report,
                )
            }
            ActionKind::Log { message } => {
                tracing::info!(
                    action = %self.name,
                    event_id = %event.id,
                    event_type = %event.ty,
                    source = %event.source,
                    subject = event.subject.as_deref().unwrap_or(""),
                    "{message}"
                );
                (Effect::Done, report)
            }
            ActionKind::Http(_) => (Effect::Call, report),
        }
    }
}

/// The derived event id: stable across re-deliveries of the same event to the same action.
fn derived_id(source: &str, id: &str, action: &str) -> String {
    let name = format!("{source}\n{id}\n{action}");
    uuid::Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The one action of each event type.
#[derive(Debug, Clone, Default)]
pub struct ActionTable {
    by_type: BTreeMap<String, Arc<Action>>,
}

impl ActionTable {
    /// Wraps a validated type → action map.
    pub fn new(by_type: BTreeMap<String, Arc<Action>>) -> Self {
        Self { by_type }
    }

    /// The action of `ty`.
    pub fn get(&self, ty: &str) -> Option<&Arc<Action>> {
        self.by_type.get(ty)
    }

    /// Every (type, action) pair, sorted by type.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Action)> {
        self.by_type.iter().map(|(t, a)| (t.as_str(), a.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CloudEvent {
        let json = r#"{"specversion":"1.0","id":"e1","source":"/shop","type":"order.placed","subject":"o-1","data":{"n":1}}"#;
        CloudEvent::decode(Some(json.as_bytes()), &[])
            .expect("valid")
            .0
    }

    #[test]
    fn emit_derives_a_stable_id_and_carries_causation() {
        let action = Action {
            name: "ship".into(),
            kind: ActionKind::Emit {
                topic: "out".into(),
                event_type: "shipment.requested".into(),
                source: "/reflex".into(),
            },
        };
        let (first, report) = action.run(&event(), &serde_json::Map::new());
        let (second, _) = action.run(&event(), &serde_json::Map::new());
        let (Effect::Emit { topic, event: a }, Effect::Emit { event: b, .. }) = (first, second)
        else {
            panic!("emit action must emit");
        };
        assert_eq!(topic, "out");
        assert_eq!(a.id, b.id, "re-delivery derives the same id");
        assert_ne!(a.id, "e1");
        assert_eq!(a.ty, "shipment.requested");
        assert_eq!(a.extensions["causationid"], Value::String("e1".into()));
        assert_eq!(a.data, event().data);
        assert_eq!(report.emitted_id.as_deref(), Some(a.id.as_str()));
    }

    #[test]
    fn log_is_done_in_process() {
        let action = Action {
            name: "note".into(),
            kind: ActionKind::Log {
                message: "m".into(),
            },
        };
        let (effect, report) = action.run(&event(), &serde_json::Map::new());
        assert_eq!(effect, Effect::Done);
        assert_eq!(report.kind, "log");
    }
}

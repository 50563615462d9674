//! Consumer group membership: which rebalance protocol a role's consumer speaks, how fast a
//! dead member is noticed, static membership for restarts, and the assignor each role needs.
//!
//! The actions role needs partition `p` of every topic it reads (the event topics and the retry
//! topic, created with the same partition count) to belong to the same member: the keys waiting
//! in retry partition `p` are known only to the owner of the event partitions `p`. The range
//! assignors give that (the classic client-side `range`, and the `range` assignor of the new
//! protocol, which runs on the broker). The lake role keeps no state across topics, so it takes
//! the incremental `cooperative-sticky` assignor, or the broker's default.

use std::time::Duration;

use rdkafka::config::ClientConfig;

/// The consumer group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol: the group leader assigns, and each rebalance is a round of
    /// join and sync requests. Session and heartbeat settings are the client's.
    #[default]
    Classic,
    /// The consumer group protocol of KIP-848 (Kafka 4.0+): the broker assigns incrementally;
    /// the session timeout is the broker's `group.consumer.session.timeout.ms`.
    Consumer,
}

impl GroupProtocol {
    /// The configuration name, also librdkafka's `group.protocol` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

/// `[kafka.group]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// The protocol.
    pub protocol: GroupProtocol,
    /// Classic protocol: how long a silent member keeps its partitions.
    pub session_timeout: Duration,
    /// Classic protocol: heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Static membership (`group.instance.id`): a member that restarts under the same name
    /// within the session timeout gets its partitions back without a rebalance.
    pub instance_id: Option<String>,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            protocol: GroupProtocol::Classic,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
            instance_id: None,
        }
    }
}

/// What a role needs of the partitions it is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Partition `p` of every subscribed topic goes to the same member (range assignors).
    CoPartitioned,
    /// Any spread; incremental where the protocol allows it.
    Any,
}

impl GroupSettings {
    /// Sets the membership properties on a consumer's configuration.
    pub fn apply(&self, config: &mut ClientConfig, assignment: Assignment) {
        match self.protocol {
            GroupProtocol::Classic => {
                config
                    .set("group.protocol", "classic")
                    .set(
                        "session.timeout.ms",
                        self.session_timeout.as_millis().to_string(),
                    )
                    .set(
                        "heartbeat.interval.ms",
                        self.heartbeat_interval.as_millis().to_string(),
                    )
                    .set(
                        "partition.assignment.strategy",
                        match assignment {
                            Assignment::CoPartitioned => "range",
                            Assignment::Any => "cooperative-sticky",
                        },
                    );
            }
            GroupProtocol::Consumer => {
                config.set("group.protocol", "consumer");
                if assignment == Assignment::CoPartitioned {
                    config.set("group.remote.assignor", "range");
                }
            }
        }
        if let Some(id) = &self.instance_id {
            config.set("group.instance.id", id);
        }
    }
}

/// A consumer error after which the consumer cannot go on (librdkafka's fatal errors), with
/// what the operator can do about it.
#[derive(Debug, thiserror::Error)]
#[error("the consumer of group \"{group}\" cannot go on: {cause}{hint}")]
pub struct ConsumerFatal {
    /// The group.
    pub group: String,
    /// librdkafka's error.
    pub cause: String,
    /// What to do, or empty.
    pub hint: &'static str,
}

/// The fatal error in `error`, if it is one; other consumer errors are transient.
pub fn consumer_fatal(error: &rdkafka::error::KafkaError, group: &str) -> Option<ConsumerFatal> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let KafkaError::MessageConsumptionFatal(code) = error else {
        return None;
    };
    let hint = match code {
        RDKafkaErrorCode::UnreleasedInstanceId => {
            ". Another member holds this --instance-id: a worker that crashed less than the \
             broker's group.consumer.session.timeout.ms ago (restart after it expires), or a \
             live worker with the same name (give each replica its own)"
        }
        RDKafkaErrorCode::FencedInstanceId => {
            ". A worker started with the same --instance-id took this one's place; give each \
             replica its own name"
        }
        _ => "",
    };
    Some(ConsumerFatal {
        group: group.to_owned(),
        cause: error.to_string(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(settings: &GroupSettings, assignment: Assignment) -> Vec<(String, String)> {
        let mut config = ClientConfig::new();
        settings.apply(&mut config, assignment);
        let mut all: Vec<(String, String)> = config
            .config_map()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn the_actions_role_is_co_partitioned_under_both_protocols() {
        let classic = GroupSettings::default();
        let p = props(&classic, Assignment::CoPartitioned);
        assert!(p.contains(&("partition.assignment.strategy".into(), "range".into())));
        assert!(p.contains(&("session.timeout.ms".into(), "10000".into())));
        let consumer = GroupSettings {
            protocol: GroupProtocol::Consumer,
            ..GroupSettings::default()
        };
        let p = props(&consumer, Assignment::CoPartitioned);
        assert!(p.contains(&("group.remote.assignor".into(), "range".into())));
        assert!(
            !p.iter().any(|(k, _)| k == "session.timeout.ms"),
            "the new protocol refuses client-side session settings: {p:?}"
        );
    }

    #[test]
    fn static_membership_sets_the_instance_id() {
        let settings = GroupSettings {
            instance_id: Some("actions-0".into()),
            ..GroupSettings::default()
        };
        let p = props(&settings, Assignment::Any);
        assert!(p.contains(&("group.instance.id".into(), "actions-0".into())));
        assert!(p.contains(&(
            "partition.assignment.strategy".into(),
            "cooperative-sticky".into()
        )));
    }
}

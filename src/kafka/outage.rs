//! Kafka outages as an operator wants to read them: one line when the brokers become
//! unreachable, one when they answer again (with how long it lasted), a gauge meanwhile — not a
//! line per connection attempt and per poll.
//!
//! librdkafka reports a broker it cannot reach in its log (`FAIL`), as a global error
//! (`BrokerTransportFailure`, `AllBrokersDown`), and to each poll of a consumer; it keeps
//! reconnecting by itself and says nothing when a broker answers again. So failures that go on
//! for a few seconds without data flowing open an outage (one WARN), the rest are DEBUG, and the
//! outage ends (one INFO, with its length) when data flows again: a record consumed or a
//! watermark query answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How long failures must go on, with no data flowing, before they are an outage: a single
/// dropped connection that librdkafka re-opens at once is not one.
const GRACE: Duration = Duration::from_secs(3);

/// Failures further apart than this are not one outage. librdkafka retries a connection at
/// least every `reconnect.backoff.max.ms` (10 s by default) but reports a broker's identical
/// connection errors only once in 30 s, so with every broker down the reports can be 30 s apart.
const STALE: Duration = Duration::from_secs(45);

/// Failures since data last flowed.
#[derive(Debug)]
struct Failing {
    first: Instant,
    last: Instant,
    cause: String,
    /// Whether the outage was logged (and is shown in the metrics).
    announced: bool,
    /// Whether librdkafka said every broker is down: then the outage is announced once the
    /// grace period passes with no data flowing, even when no further failure is reported
    /// (librdkafka suppresses a broker's identical connection errors for 30 s).
    all_down: bool,
}

/// Whether the brokers are reachable, shared by a worker's Kafka clients.
#[derive(Debug, Default)]
pub struct Outage {
    failing: Mutex<Option<Failing>>,
    /// Outages that ended.
    ended: AtomicU64,
}

impl Outage {
    /// No outage.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// librdkafka could not reach a broker: an outage once failures go on past [`GRACE`].
    pub fn failed(&self, cause: &str) {
        self.failure(cause, false);
    }

    fn failure(&self, cause: &str, all_down: bool) {
        let now = Instant::now();
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match failing.as_mut() {
            Some(f) if f.announced || f.all_down || now.duration_since(f.last) < STALE => {
                f.last = now;
                f.all_down |= all_down;
                // A connection that was up and closed (an idle connection the broker dropped,
                // say) is re-opened at once; only a failure to connect, or a request that
                // cannot be sent, says the brokers cannot be reached.
                let dropped = cause.contains(": Disconnected");
                if !f.announced && !dropped && now.duration_since(f.first) >= GRACE {
                    announce(f);
                } else {
                    tracing::debug!(cause, "Kafka still unreachable");
                }
            }
            _ => {
                tracing::debug!(cause, "Kafka broker connection failed");
                *failing = Some(Failing {
                    first: now,
                    last: now,
                    cause: cause.to_owned(),
                    announced: false,
                    all_down,
                });
            }
        }
    }

    /// Called every second or so by a worker's loop: every broker down for the grace period,
    /// with no data flowing since, is an outage even if librdkafka reported nothing more.
    pub fn tick(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = failing.as_mut() {
            if f.all_down && !f.announced && f.first.elapsed() >= GRACE {
                announce(f);
            }
        }
    }

    /// A record was consumed: closes the outage if one is open, unless every broker was
    /// reported down (the record may come from what was fetched before they went).
    pub fn flowing(&self) {
        self.end(false);
    }

    /// A broker answered a request (an acknowledgement, a commit, watermarks, metadata):
    /// closes the outage if one is open.
    pub fn answered(&self) {
        self.end(true);
    }

    fn end(&self, answered: bool) {
        // The hot path: one uncontended lock, no allocation.
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if failing.as_ref().is_some_and(|f| f.all_down && !answered) {
            return;
        }
        if let Some(f) = failing.take() {
            if f.announced {
                self.ended.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    after = %humantime::format_duration(Duration::from_millis(
                        u64::try_from(f.first.elapsed().as_millis()).unwrap_or(u64::MAX)
                    )),
                    first_cause = %f.cause,
                    "Kafka brokers reachable again"
                );
            }
        }
    }

    /// How long the current outage has lasted, if one is open.
    pub fn down_for(&self) -> Option<Duration> {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|f| f.announced)
            .map(|f| f.first.elapsed())
    }

    /// Outages that ended since start.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// Whether `error` (from a poll or a delivery) means the brokers cannot be reached; such an
    /// error is then counted here and needs no log line of its own.
    pub fn absorbs(&self, error: &KafkaError) -> bool {
        if let Some(code) = error.rdkafka_error_code().filter(|c| is_unreachable(*c)) {
            self.failure(&error.to_string(), code == RDKafkaErrorCode::AllBrokersDown);
            true
        } else {
            false
        }
    }

    /// Handles a librdkafka log line: connection failures go to the outage, the rest to
    /// `tracing` at their level.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // A failed connection, and requests timed out on a connection that went quiet.
        if fac == "FAIL" || fac == "REQTMOUT" {
            self.failed(message);
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    /// Handles a librdkafka global error.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code().filter(|c| is_unreachable(*c)) {
            self.failure(reason, code == RDKafkaErrorCode::AllBrokersDown);
        } else {
            tracing::error!(target: "librdkafka", error = %error, "{reason}");
        }
    }
}

fn announce(f: &mut Failing) {
    f.announced = true;
    tracing::warn!(
        cause = %f.cause,
        "Kafka brokers unreachable; reflex keeps retrying and resumes where it stopped (one line when they answer again)"
    );
}

/// The error codes that say a broker cannot be reached (not that it refused something).
fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
    )
}

/// A client context that reports to an [`Outage`]: the producer's and the probes'.
pub struct OutageContext(pub Arc<Outage>);

impl ClientContext for OutageContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for OutageContext {}

impl rdkafka::producer::ProducerContext for OutageContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(outage: &Outage, by: Duration) {
        if let Some(f) = outage
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            f.first -= by;
            f.last -= by;
        }
    }

    #[test]
    fn every_broker_down_is_an_outage_after_the_grace_period_without_further_failures() {
        let outage = Outage::new();
        outage.error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "3/3 brokers are down",
        );
        outage.tick();
        assert!(outage.down_for().is_none(), "not before the grace period");
        // librdkafka goes quiet (its repeated connection errors are suppressed) past STALE.
        age(&outage, STALE + GRACE);
        outage.tick();
        assert!(
            outage.down_for().is_some(),
            "every broker down, nothing flowing"
        );
        outage.flowing();
        assert_eq!(
            outage.ended(),
            0,
            "a consumed record may have been fetched before"
        );
        outage.answered();
        assert_eq!(outage.ended(), 1, "a broker answered");
    }

    #[test]
    fn connection_failures_reported_30_s_apart_are_one_outage() {
        let outage = Outage::new();
        let refused = "127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused";
        outage.log(RDKafkaLogLevel::Error, "FAIL", refused);
        // librdkafka reports the same error again only 30 s later.
        age(&outage, Duration::from_secs(31));
        outage.log(RDKafkaLogLevel::Error, "FAIL", refused);
        assert!(outage.down_for().is_some());
    }

    #[test]
    fn one_dropped_connection_is_not_an_outage() {
        let outage = Outage::new();
        outage.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "127.0.0.1:9092/1: Disconnected (after 600000ms in state UP)",
        );
        age(&outage, STALE + GRACE);
        outage.tick();
        assert!(outage.down_for().is_none());
        // Another isolated failure long after is not the same outage either.
        outage.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "127.0.0.1:9092/1: Disconnected (after 600000ms in state UP)",
        );
        assert!(outage.down_for().is_none());
    }

    #[test]
    fn an_outage_opens_once_and_closes_when_data_flows() {
        let outage = Outage::new();
        assert!(outage.down_for().is_none());
        outage.flowing();
        assert_eq!(outage.ended(), 0, "no outage to end");
        outage.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "127.0.0.1:9092/1: Connect refused",
        );
        outage.error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(outage.absorbs(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(
            outage.down_for().is_none(),
            "not an outage before the grace period"
        );
        // The failures go on past the grace period.
        if let Some(f) = outage
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            f.first -= GRACE;
        }
        outage.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "127.0.0.1:9092/1: Connect refused",
        );
        assert!(outage.down_for().is_some());
        outage.flowing();
        assert!(
            outage.down_for().is_some(),
            "every broker was down: a consumed record may have been fetched before"
        );
        outage.answered();
        assert!(outage.down_for().is_none());
        assert_eq!(outage.ended(), 1, "four reports, one outage");
    }

    #[test]
    fn a_blip_that_heals_at_once_is_not_an_outage() {
        let outage = Outage::new();
        outage.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "127.0.0.1:9092/1: Disconnected",
        );
        outage.flowing();
        assert_eq!(outage.ended(), 0);
        assert!(outage.down_for().is_none());
    }

    #[test]
    fn other_errors_are_not_an_outage() {
        let outage = Outage::new();
        assert!(!outage.absorbs(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(outage.down_for().is_none());
    }
}

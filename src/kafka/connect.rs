//! Connecting to the brokers before a role starts: one metadata request, with the first
//! authentication, TLS or protocol failure reported at once, naming the brokers, the security
//! protocol and mechanism, and librdkafka's cause, instead of a client that retries forever.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use crate::config::KafkaConfig;

/// How long start-up waits for the brokers before it gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the brokers could not be used (boxed: errors stay small on the happy path).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ConnectError(Box<ConnectFailure>);

impl ConnectError {
    /// What failed.
    pub fn failure(&self) -> &ConnectFailure {
        &self.0
    }
}

impl From<ConnectFailure> for ConnectError {
    fn from(failure: ConnectFailure) -> Self {
        Self(Box::new(failure))
    }
}

/// Why the brokers could not be used. Messages name the brokers, the protocol and mechanism,
/// and the cause; never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// The brokers refused the credentials.
    #[error("Kafka at {brokers} rejected the {security} credentials{user}: {cause}")]
    Authentication {
        /// The bootstrap servers.
        brokers: String,
        /// Protocol and mechanism, e.g. `SASL_SSL/SCRAM-SHA-512`.
        security: String,
        /// ` of user "name"`, or empty.
        user: String,
        /// librdkafka's reason.
        cause: String,
    },
    /// The TLS handshake failed (untrusted or expired certificate, host name mismatch, or a
    /// listener that does not speak TLS).
    #[error("TLS handshake with Kafka at {brokers} failed ({security}): {cause}")]
    Tls {
        /// The bootstrap servers.
        brokers: String,
        /// Protocol and mechanism.
        security: String,
        /// librdkafka's reason.
        cause: String,
    },
    /// The broker closed the connection before answering: the client's protocol is not the
    /// listener's (e.g. plaintext to a TLS port).
    #[error("Kafka at {brokers} closed the connection before answering ({security}); does the listener expect another security protocol? {cause}")]
    Protocol {
        /// The bootstrap servers.
        brokers: String,
        /// Protocol and mechanism.
        security: String,
        /// librdkafka's reason.
        cause: String,
    },
    /// No broker answered in time.
    #[error("Kafka at {brokers} did not answer within {waited} ({security}): {cause}; is the broker running? (`make up` starts one)", waited = humantime::format_duration(*waited))]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// Protocol and mechanism.
        security: String,
        /// How long it waited.
        waited: Duration,
        /// The last reason librdkafka gave, if any.
        cause: String,
    },
    /// The client could not be created from the settings.
    #[error("cannot create a Kafka client for {brokers} ({security}): {source}")]
    Client {
        /// The bootstrap servers.
        brokers: String,
        /// Protocol and mechanism.
        security: String,
        /// librdkafka's error.
        source: KafkaError,
    },
}

/// What the brokers said when they answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Brokers in the cluster's metadata.
    pub brokers: usize,
    /// Topics visible to this client.
    pub topics: usize,
    /// How long the connection took.
    pub elapsed: Duration,
}

/// Records the errors librdkafka reports while connecting.
#[derive(Default)]
struct Capture {
    errors: Mutex<Vec<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for Capture {
    /// Forwards librdkafka's log to `tracing`, and keeps connection failures, which librdkafka
    /// reports only in its log when a broker closes the connection during the handshake.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
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
        if fac == "FAIL" {
            // "[thrd:sasl_ssl://host:port/bootstrap]: sasl_ssl://host:port/bootstrap: …"
            let message = message
                .strip_prefix("[thrd:")
                .and_then(|rest| rest.split_once("]: "))
                .map_or(message, |(_, text)| text);
            if let Ok(mut errors) = self.errors.lock() {
                errors.push((RDKafkaErrorCode::BrokerTransportFailure, message.to_owned()));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            if let Ok(mut errors) = self.errors.lock() {
                errors.push((code, reason.to_owned()));
            }
        }
    }
}

impl ProducerContext for Capture {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The failure class of one librdkafka error, if it is one that retrying will not cure.
fn classify(code: RDKafkaErrorCode, reason: &str) -> Option<Kind> {
    let lower = reason.to_ascii_lowercase();
    match code {
        RDKafkaErrorCode::Authentication => Some(Kind::Authentication),
        RDKafkaErrorCode::SSL => Some(Kind::Tls),
        _ if lower.contains("ssl handshake") || lower.contains("certificate") => Some(Kind::Tls),
        _ if lower.contains("sasl authentication") => Some(Kind::Authentication),
        // Closed before the first answer: the listener speaks TLS or SASL and the client not.
        _ if lower.contains("incorrect security.protocol")
            || lower.contains("requesting apiversion")
            || (lower.contains("disconnected") && lower.contains("apiversion_query")) =>
        {
            Some(Kind::Protocol)
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Authentication,
    Tls,
    Protocol,
}

/// Connects to `kafka`'s brokers and fetches the cluster metadata, failing as soon as librdkafka
/// reports an authentication, TLS or protocol error, or after `timeout`.
pub async fn connect(kafka: &KafkaConfig, timeout: Duration) -> Result<Connected, ConnectError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || connect_blocking(&kafka, timeout))
        .await
        .unwrap_or_else(|e| {
            Err(ConnectFailure::Unreachable {
                brokers: String::new(),
                security: String::new(),
                waited: timeout,
                cause: format!("the connection check stopped: {e}"),
            }
            .into())
        })
}

fn connect_blocking(kafka: &KafkaConfig, timeout: Duration) -> Result<Connected, ConnectError> {
    let brokers = kafka.brokers.clone();
    let security = kafka.security.describe();
    let start = Instant::now();
    let mut config = super::with_properties(super::base_config(kafka), kafka);
    // Fail over quickly between brokers; the check has its own deadline.
    config.set("socket.connection.setup.timeout.ms", "5000");
    let producer: BaseProducer<Capture> =
        config
            .create_with_context(Capture::default())
            .map_err(|source| {
                ConnectError::from(ConnectFailure::Client {
                    brokers: brokers.clone(),
                    security: security.clone(),
                    source,
                })
            })?;
    let mut last_cause = String::new();
    let mut probed = false;
    loop {
        let step = Duration::from_millis(500).min(timeout.saturating_sub(start.elapsed()));
        let answer = producer.client().fetch_metadata(None, step);
        producer.poll(Duration::ZERO);
        if let Ok(metadata) = answer {
            return Ok(Connected {
                brokers: metadata.brokers().len(),
                topics: metadata.topics().len(),
                elapsed: start.elapsed(),
            });
        }
        let errors: Vec<(RDKafkaErrorCode, String)> = producer
            .context()
            .errors
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        for (code, reason) in errors {
            let cause = reason.clone();
            match classify(code, &reason) {
                Some(Kind::Authentication) => {
                    return Err(ConnectFailure::Authentication {
                        brokers,
                        user: kafka
                            .security
                            .principal()
                            .map(|u| format!(" of user \"{u}\""))
                            .unwrap_or_default(),
                        security,
                        cause,
                    }
                    .into())
                }
                Some(Kind::Tls) => {
                    // OpenSSL's "certificate verify failed" does not say why; a second
                    // handshake with the same CA file does (expired, unknown issuer, name).
                    let cause = match tls_diagnosis(&reason, kafka) {
                        Some(why) => format!("{cause}; the broker's certificate: {why}"),
                        None => cause,
                    };
                    return Err(ConnectFailure::Tls {
                        brokers,
                        security,
                        cause,
                    }
                    .into());
                }
                Some(Kind::Protocol) => last_cause = cause,
                None if code != RDKafkaErrorCode::AllBrokersDown => last_cause = cause,
                None => {}
            }
        }
        // A plaintext client on a TLS listener sees only closed connections: ask each
        // bootstrap broker once whether it speaks TLS.
        if !probed && !kafka.security.protocol.is_tls() {
            probed = true;
            if let Some(addr) = kafka
                .brokers
                .split(',')
                .map(str::trim)
                .find(|a| speaks_tls(a))
            {
                return Err(ConnectFailure::Protocol {
                    brokers,
                    security,
                    cause: format!(
                        "{addr} speaks TLS: set [kafka.security] protocol = \"ssl\" or \"sasl_ssl\""
                    ),
                }
                .into());
            }
        }
        if start.elapsed() >= timeout {
            if last_cause.is_empty() {
                last_cause = answer
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no answer".into());
            }
            return Err(ConnectFailure::Unreachable {
                brokers,
                security,
                waited: timeout,
                cause: last_cause,
            }
            .into());
        }
    }
}

/// The broker a librdkafka message is about: `sasl_ssl://host:port/1: …` → `host:port`.
fn broker_of(reason: &str) -> Option<&str> {
    let reason = match reason.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ").map_or(rest, |(_, r)| r),
        None => reason,
    };
    let rest = reason.split_once("://").map_or(reason, |(_, rest)| rest);
    let addr = rest.split(['/', ' ']).next()?;
    addr.contains(':').then_some(addr)
}

/// Whether `addr` answers a TLS handshake: with no trusted CA, a TLS server's certificate is
/// refused as unknown, while a plaintext Kafka listener just closes the connection.
fn speaks_tls(addr: &str) -> bool {
    tls_handshake(addr, rustls::RootCertStore::empty())
        .is_some_and(|error| error.contains("invalid peer certificate"))
}

/// A TLS handshake with `addr` trusting `roots`; the error, if it failed for a TLS reason.
fn tls_handshake(addr: &str, roots: rustls::RootCertStore) -> Option<String> {
    use rustls::pki_types::ServerName;
    use std::net::ToSocketAddrs;
    use std::sync::Arc;

    let (host, _) = addr.rsplit_once(':')?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).ok()?;
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let limit = Duration::from_secs(3);
    let socket_addr = addr.to_socket_addrs().ok()?.next()?;
    let mut socket = std::net::TcpStream::connect_timeout(&socket_addr, limit).ok()?;
    socket.set_read_timeout(Some(limit)).ok()?;
    socket.set_write_timeout(Some(limit)).ok()?;
    while tls.is_handshaking() {
        if let Err(e) = tls.complete_io(&mut socket) {
            return (e.kind() == std::io::ErrorKind::InvalidData).then(|| e.to_string());
        }
    }
    None
}

/// Why the broker's certificate does not verify against the configured CA file, from a TLS
/// handshake of our own; `None` when it cannot tell (no CA file, no connection, or it verifies).
fn tls_diagnosis(reason: &str, kafka: &KafkaConfig) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let ca_file = kafka.security.ca_file.as_ref()?;
    let addr = broker_of(reason).or_else(|| kafka.brokers.split(',').next().map(str::trim))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).ok()? {
        roots.add(cert.ok()?).ok()?;
    }
    tls_handshake(addr, roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_broker_a_message_is_about() {
        assert_eq!(
            broker_of("sasl_ssl://127.0.0.1:9094/bootstrap: SSL handshake failed"),
            Some("127.0.0.1:9094")
        );
        assert_eq!(
            broker_of("127.0.0.1:9094/1: Disconnected"),
            Some("127.0.0.1:9094")
        );
        assert_eq!(
            broker_of("[thrd:127.0.0.1:9094/bootstrap]: 127.0.0.1:9094/bootstrap: Disconnected"),
            Some("127.0.0.1:9094")
        );
        assert_eq!(broker_of("no broker here"), None);
    }

    #[test]
    fn classifies_the_failures_retrying_cannot_cure() {
        assert_eq!(
            classify(
                RDKafkaErrorCode::Authentication,
                "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
            ),
            Some(Kind::Authentication)
        );
        assert_eq!(
            classify(
                RDKafkaErrorCode::BrokerTransportFailure,
                "sasl_ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
            ),
            Some(Kind::Tls)
        );
        assert_eq!(
            classify(
                RDKafkaErrorCode::BrokerTransportFailure,
                "127.0.0.1:9094/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?)"
            ),
            Some(Kind::Protocol)
        );
        assert_eq!(
            classify(
                RDKafkaErrorCode::BrokerTransportFailure,
                "127.0.0.1:9094/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)"
            ),
            Some(Kind::Protocol)
        );
        assert_eq!(
            classify(
                RDKafkaErrorCode::BrokerTransportFailure,
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
            ),
            None
        );
    }
}

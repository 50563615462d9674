//! `[telemetry]`: the worker's telemetry listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! Every key is documented in `config/reflex.toml`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[telemetry]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    /// `ip:port` the listener binds; `""` turns it off.
    pub listen: String,
    /// `/healthz` fails once the worker's loop has made no progress for this long.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// How often the brokers are asked for the high watermarks of the assigned partitions.
    #[serde(with = "humantime_serde")]
    pub lag_interval: Duration,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            stall_timeout: Duration::from_secs(30),
            lag_interval: Duration::from_secs(5),
        }
    }
}

/// The telemetry listener's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The address to bind; `None`: no listener.
    pub listen: Option<SocketAddr>,
    /// Longest the worker's loop may go without progress before `/healthz` fails.
    pub stall_timeout: Duration,
    /// Interval of the high-watermark queries behind the lag metrics.
    pub lag_interval: Duration,
}

impl TelemetryConfig {
    /// Validates `[telemetry]`.
    pub fn new(raw: RawTelemetry) -> Result<Self, ConfigError> {
        let listen = match raw.listen.trim() {
            "" => None,
            addr => Some(addr.parse().map_err(|_| ConfigError::Invalid {
                key: "telemetry.listen",
                value: format!("\"{addr}\""),
                why: "must be ip:port (e.g. \"127.0.0.1:9464\"), or \"\" for no listener",
            })?),
        };
        for (key, value) in [
            ("telemetry.stall_timeout", raw.stall_timeout),
            ("telemetry.lag_interval", raw.lag_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    value: "\"0s\"".into(),
                    why: "must be longer than zero",
                });
            }
        }
        Ok(Self {
            listen,
            stall_timeout: raw.stall_timeout,
            lag_interval: raw.lag_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<TelemetryConfig, String> {
        let raw: RawTelemetry = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        TelemetryConfig::new(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_bind_the_loopback_interface() {
        let cfg = parse("").expect("defaults");
        assert_eq!(cfg.listen, Some("127.0.0.1:9464".parse().expect("addr")));
        assert_eq!(cfg.stall_timeout, Duration::from_secs(30));
        assert_eq!(cfg.lag_interval, Duration::from_secs(5));
    }

    #[test]
    fn an_empty_address_turns_the_listener_off() {
        let cfg = parse("listen = \"\"\nlag_interval = \"250ms\"").expect("off");
        assert_eq!(cfg.listen, None);
        assert_eq!(cfg.lag_interval, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_named() {
        let msg = parse("listen = \"localhost:x\"").expect_err("bad address");
        assert!(
            msg.contains("telemetry.listen") && msg.contains("\"localhost:x\""),
            "{msg}"
        );
        let msg = parse("stall_timeout = \"0s\"").expect_err("zero");
        assert!(msg.contains("telemetry.stall_timeout"), "{msg}");
        let msg = parse("listen_on = \"x\"").expect_err("unknown key");
        assert!(msg.contains("listen_on"), "{msg}");
    }
}

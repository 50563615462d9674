//! `[telemetry]`: the worker's telemetry listener (`/metrics`, `/healthz`, `/readyz`, the
//! status page), the bearer token it may require, and the OTLP endpoint traces are sent to.
//!
//! Every key is documented in `config/reflex.toml`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::{Secret, SecretRef};

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
    /// `env:VAR` or `file:PATH`: the bearer token every path but the probes requires.
    pub token: Option<SecretRef>,
    /// OTLP/HTTP base URL traces are exported to; unset: `OTEL_EXPORTER_OTLP_ENDPOINT`, `""`:
    /// no tracing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            stall_timeout: Duration::from_secs(30),
            lag_interval: Duration::from_secs(5),
            token: None,
            otlp_endpoint: None,
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
    /// The bearer token required for everything but `/healthz` and `/readyz` (read only when
    /// the listener is on).
    pub token: Option<Secret>,
    /// The OTLP/HTTP base URL (`http://host:4318`) traces are exported to; `None`: no tracing.
    pub otlp_endpoint: Option<String>,
}

/// The standard variable naming the OTLP endpoint, used when `otlp_endpoint` is unset.
pub const OTLP_ENDPOINT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable that, set to `true`, turns the OpenTelemetry SDK off.
pub const SDK_DISABLED_VARIABLE: &str = "OTEL_SDK_DISABLED";

impl TelemetryConfig {
    /// Validates `[telemetry]`; `base` resolves a relative `file:` token path. The OTLP
    /// endpoint falls back to the process environment.
    pub fn new(raw: RawTelemetry, base: &Path) -> Result<Self, ConfigError> {
        Self::with_env(raw, base, |name| std::env::var(name).ok())
    }

    /// [`TelemetryConfig::new`] reading the environment through `env`.
    pub fn with_env(
        raw: RawTelemetry,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let otlp_endpoint = otlp_endpoint(raw.otlp_endpoint.as_deref(), &env)?;
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
        let token = match (&listen, &raw.token) {
            (Some(_), Some(reference)) => Some(reference.resolve("telemetry.token", base)?),
            _ => None,
        };
        Ok(Self {
            listen,
            stall_timeout: raw.stall_timeout,
            lag_interval: raw.lag_interval,
            token,
            otlp_endpoint,
        })
    }
}

/// The OTLP endpoint: the key when set (`""` turns tracing off), else
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_SDK_DISABLED=true` turns it off either way.
fn otlp_endpoint(
    key: Option<&str>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    if env(SDK_DISABLED_VARIABLE).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let (name, value) = match key {
        Some(value) => ("telemetry.otlp_endpoint", value.trim().to_owned()),
        None => match env(OTLP_ENDPOINT_VARIABLE) {
            Some(value) => (OTLP_ENDPOINT_VARIABLE, value.trim().to_owned()),
            None => return Ok(None),
        },
    };
    if value.is_empty() {
        return Ok(None);
    }
    let scheme_ok = value.starts_with("http://") || value.starts_with("https://");
    if !scheme_ok || reqwest::Url::parse(&value).is_err() {
        return Err(ConfigError::Invalid {
            key: name,
            value: format!("\"{value}\""),
            why: "must be the http:// or https:// base URL of an OTLP/HTTP collector (e.g. \"http://127.0.0.1:4318\"; traces go to its /v1/traces), or \"\" for no tracing",
        });
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<TelemetryConfig, String> {
        let raw: RawTelemetry = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        TelemetryConfig::new(raw, Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_bind_the_loopback_interface() {
        let cfg = parse("").expect("defaults");
        assert_eq!(cfg.listen, Some("127.0.0.1:9464".parse().expect("addr")));
        assert_eq!(cfg.stall_timeout, Duration::from_secs(30));
        assert_eq!(cfg.lag_interval, Duration::from_secs(5));
        assert_eq!(cfg.token, None);
    }

    #[test]
    fn the_token_is_read_from_a_reference_and_never_written_inline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), "t0ken-value\n").expect("write");
        let raw: RawTelemetry = toml::from_str("token = \"file:token\"").expect("parses");
        let cfg = TelemetryConfig::new(raw, dir.path()).expect("readable");
        let token = cfg.token.expect("a token");
        assert_eq!(token.expose(), "t0ken-value");
        assert!(!format!("{token:?}").contains("t0ken"));

        let msg = parse("token = \"t0ken-value\"").expect_err("inline");
        assert!(msg.contains("telemetry.token"), "{msg}");
        assert!(!msg.contains("t0ken"), "{msg}");
        let msg = parse("token = \"file:surely-missing-token-file\"").expect_err("missing");
        assert!(
            msg.contains("telemetry.token") && msg.contains("file:surely-missing-token-file"),
            "{msg}"
        );
        assert_eq!(
            parse("listen = \"\"\ntoken = \"env:REFLEX_TEST_SURELY_UNSET\"")
                .expect("no listener, no token read")
                .token,
            None
        );
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

    fn endpoint(toml_text: &str, vars: &[(&str, &str)]) -> Result<Option<String>, String> {
        let raw: RawTelemetry = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let env = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        TelemetryConfig::with_env(raw, Path::new("."), env)
            .map(|c| c.otlp_endpoint)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_named_and_the_key_wins_over_the_variable() {
        let standard = [(OTLP_ENDPOINT_VARIABLE, "http://collector:4318")];
        assert_eq!(endpoint("", &[]), Ok(None));
        assert_eq!(
            endpoint("", &standard),
            Ok(Some("http://collector:4318".into()))
        );
        let key = "otlp_endpoint = \"http://127.0.0.1:4318\"";
        assert_eq!(
            endpoint(key, &standard),
            Ok(Some("http://127.0.0.1:4318".into()))
        );
        assert_eq!(endpoint("otlp_endpoint = \"\"", &standard), Ok(None));
        let disabled = [
            (OTLP_ENDPOINT_VARIABLE, "http://collector:4318"),
            (SDK_DISABLED_VARIABLE, "true"),
        ];
        assert_eq!(endpoint(key, &disabled), Ok(None));
    }

    #[test]
    fn an_endpoint_that_is_not_an_http_url_is_named() {
        let msg = endpoint("otlp_endpoint = \"127.0.0.1:4317\"", &[]).expect_err("no scheme");
        assert!(
            msg.contains("telemetry.otlp_endpoint") && msg.contains("\"127.0.0.1:4317\""),
            "{msg}"
        );
        let msg = endpoint("", &[(OTLP_ENDPOINT_VARIABLE, "grpc://c:4317")]).expect_err("scheme");
        assert!(msg.contains(OTLP_ENDPOINT_VARIABLE), "{msg}");
    }
}

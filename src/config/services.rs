//! `[services]`, `[enrichment."<type>"]` and the keys of `kind = "http"` actions: the HTTP
//! services reflex calls, validated at load.
//!
//! Every key is documented in `config/reflex.toml`. URL templates are parsed here, so a bad
//! brace stops start-up; the host of a URL must be literal unless `service` names the circuit
//! breaker. Header values of the form `env:VAR` are read from the environment now (secrets only
//! from there: `authorization`, `proxy-authorization` and `x-api-key` must use `env:`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{ConfigError, RawHttpAction};
use crate::enrich::{EnrichmentTable, Lookup, OnError};
use crate::schema::SchemaRegistry;
use crate::service::{BreakerSettings, HttpAction, RetryPolicy, ServicesConfig, UrlTemplate};

/// Headers reflex sets itself on every action request.
const RESERVED_HEADERS: &[&str] = &[
    "idempotency-key",
    "ce-id",
    "ce-type",
    "ce-source",
    "ce-specversion",
    "content-type",
];

/// Headers whose value is a secret, so only `env:VAR` is accepted.
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "x-api-key"];

/// Lookup defaults.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
const LOOKUP_TTL: Duration = Duration::from_secs(60);
const LOOKUP_CACHE_SIZE: u64 = 10_000;

/// `[services]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServices {
    /// Consecutive failures that open a service's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before one trial call.
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
    /// Private CA and client certificate for HTTPS services: `[services.tls]`.
    pub tls: super::security::RawHttpTls,
    /// Per service name (an action's or lookup's `service`, by default the URL's host:port),
    /// TLS settings that replace `[services.tls]` for that service:
    /// `[services.service_tls."<service>"]`.
    pub service_tls: BTreeMap<String, super::security::RawHttpTls>,
}

impl Default for RawServices {
    fn default() -> Self {
        let d = BreakerSettings::default();
        Self {
            breaker_failures: d.failures,
            breaker_open_for: d.open_for,
            tls: super::security::RawHttpTls::default(),
            service_tls: BTreeMap::new(),
        }
    }
}

/// `[enrichment."<type>"]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEnrichment {
    /// The type's lookups, run concurrently.
    pub lookups: Vec<RawLookup>,
}

/// `[[enrichment."<type>".lookups]]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLookup {
    /// Key of the answer in the policy input's `enrichment`.
    pub name: String,
    /// URL template of the GET.
    pub url: String,
    /// Service name selecting the circuit breaker (default: the URL's host:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Limit of the request (default 1s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// How long an answer is reused (default 60s; "0s": never cached).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Most answers cached (default 10000; 0: never cached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<u64>,
    /// `deny` (default), `continue` or `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

/// Validates `[services]`.
pub fn services_config(raw: &RawServices, base: &Path) -> Result<ServicesConfig, ConfigError> {
    if raw.breaker_failures == 0 {
        return Err(ConfigError::Invalid {
            key: "services.breaker_failures",
            value: "0".into(),
            why: "must be at least 1",
        });
    }
    if raw.breaker_open_for.is_zero() {
        return Err(ConfigError::Invalid {
            key: "services.breaker_open_for",
            value: "\"0s\"".into(),
            why: "must be longer than zero",
        });
    }
    Ok(ServicesConfig {
        breaker: BreakerSettings {
            failures: raw.breaker_failures,
            open_for: raw.breaker_open_for,
        },
        tls: super::security::http_tls(&raw.tls, "services.tls", base)?,
        service_tls: raw
            .service_tls
            .iter()
            .map(|(service, tls)| {
                super::security::http_tls(tls, "services.service_tls", base)
                    .map(|tls| (service.clone(), tls))
                    .map_err(|e| ConfigError::ServiceTls {
                        service: service.clone(),
                        why: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Checks that every `[services.service_tls."<service>"]` names a service an action or lookup
/// calls, so a misspelt name cannot leave a service on the default TLS settings unnoticed.
pub fn check_service_tls(
    services: &ServicesConfig,
    actions: &crate::action::ActionTable,
    enrichment: &EnrichmentTable,
) -> Result<(), ConfigError> {
    let mut known: Vec<&str> = Vec::new();
    for (ty, action) in actions.iter() {
        known.extend(action.http().map(|h| h.service.as_str()));
        known.extend(enrichment.get(ty).iter().map(|l| l.service.as_str()));
    }
    known.sort_unstable();
    known.dedup();
    match services
        .service_tls
        .keys()
        .find(|s| !known.contains(&s.as_str()))
    {
        None => Ok(()),
        Some(service) => Err(ConfigError::ServiceTls {
            service: service.clone(),
            why: format!(
                "no action or lookup calls a service of that name (the services are: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        }),
    }
}

/// Validates the keys of a `kind = "http"` action; errors are sentences about the action.
pub fn http_action(
    raw: &RawHttpAction,
    env: &BTreeMap<String, String>,
) -> Result<HttpAction, String> {
    let (url, service) = url_and_service(&raw.url, raw.service.as_deref())?;
    let method = raw.method.as_deref().unwrap_or("POST");
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("method \"{method}\" is not an HTTP method"))?;
    let defaults = RetryPolicy::default();
    let retry = RetryPolicy {
        max_attempts: raw.max_attempts.unwrap_or(defaults.max_attempts),
        initial_backoff: raw.initial_backoff.unwrap_or(defaults.initial_backoff),
        max_backoff: raw.max_backoff.unwrap_or(defaults.max_backoff),
    };
    if retry.max_attempts == 0 {
        return Err("max_attempts = 0: must be at least 1".into());
    }
    if retry.initial_backoff > retry.max_backoff {
        return Err(format!(
            "initial_backoff \"{}\" exceeds max_backoff \"{}\"",
            humantime::format_duration(retry.initial_backoff),
            humantime::format_duration(retry.max_backoff)
        ));
    }
    let timeout = raw.timeout.unwrap_or(Duration::from_secs(5));
    if timeout.is_zero() {
        return Err("timeout = \"0s\": must be longer than zero".into());
    }
    Ok(HttpAction {
        service,
        method,
        url,
        headers: headers(&raw.headers, env)?,
        timeout,
        retry,
    })
}

/// Parses a URL template and names its service: `service` or the URL's `host:port`, which
/// must then not depend on the event.
fn url_and_service(text: &str, service: Option<&str>) -> Result<(UrlTemplate, String), String> {
    let template = UrlTemplate::parse(text).map_err(|e| e.to_string())?;
    let authority = |sample: &str| -> Result<String, String> {
        let rendered = template.render_with(sample);
        let url = reqwest::Url::parse(&rendered)
            .map_err(|e| format!("url \"{text}\" is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "url \"{text}\" must start with http:// or https://"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("url \"{text}\" has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(format!("{host}:{port}"))
    };
    let first = authority("x")?;
    if let Some(service) = service {
        if service.trim().is_empty() {
            return Err("service = \"\": name the service or leave the key out".into());
        }
        return Ok((template, service.to_owned()));
    }
    if authority("y")? != first {
        return Err(format!(
            "the host of url \"{text}\" depends on the event: set `service` to name its circuit breaker"
        ));
    }
    Ok((template, first))
}

/// Builds the header map, reading `env:VAR` values from `env`.
fn headers(
    raw: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in raw {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header \"{name}\" is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "header \"{name}\" is set by reflex and cannot be configured"
            ));
        }
        let mut value = match value.strip_prefix("env:") {
            Some(var) => {
                let secret = env.get(var).ok_or_else(|| {
                    format!("header \"{name}\": environment variable {var} is not set")
                })?;
                let mut v = HeaderValue::from_str(secret).map_err(|_| {
                    format!("header \"{name}\": environment variable {var} is not a valid header value")
                })?;
                v.set_sensitive(true);
                v
            }
            None if SECRET_HEADERS.contains(&header.as_str()) => {
                return Err(format!(
                    "header \"{name}\" carries a secret: write \"env:VARIABLE\" and set it in the environment"
                ))
            }
            None => HeaderValue::from_str(value)
                .map_err(|_| format!("header \"{name}\" = {value:?} is not a valid header value"))?,
        };
        if SECRET_HEADERS.contains(&header.as_str()) {
            value.set_sensitive(true);
        }
        map.insert(header, value);
    }
    Ok(map)
}

/// Validates `[enrichment]`: every type has a schema, lookup names are unique per type.
pub fn enrichment_table(
    raw: &BTreeMap<String, RawEnrichment>,
    schemas: &SchemaRegistry,
    schema_dir: &Path,
) -> Result<EnrichmentTable, ConfigError> {
    let mut by_type = BTreeMap::new();
    for (ty, spec) in raw {
        if !schemas.contains(ty) {
            return Err(ConfigError::EnrichmentType {
                ty: ty.clone(),
                dir: schema_dir.to_owned(),
            });
        }
        let mut names = BTreeSet::new();
        let mut lookups = Vec::with_capacity(spec.lookups.len());
        for l in &spec.lookups {
            let bad = |why: String| ConfigError::Lookup {
                ty: ty.clone(),
                lookup: l.name.clone(),
                why,
            };
            if l.name.trim().is_empty() {
                return Err(bad("give the lookup a `name`".into()));
            }
            if !names.insert(l.name.as_str()) {
                return Err(bad("two lookups of this type have this name".into()));
            }
            let (url, service) = url_and_service(&l.url, l.service.as_deref()).map_err(bad)?;
            let timeout = l.timeout.unwrap_or(LOOKUP_TIMEOUT);
            if timeout.is_zero() {
                return Err(bad("timeout = \"0s\": must be longer than zero".into()));
            }
            lookups.push(Lookup {
                name: l.name.clone(),
                service,
                url,
                timeout,
                ttl: l.ttl.unwrap_or(LOOKUP_TTL),
                cache_size: l.cache_size.unwrap_or(LOOKUP_CACHE_SIZE),
                on_error: l.on_error.unwrap_or(OnError::Deny),
            });
        }
        if !lookups.is_empty() {
            by_type.insert(ty.clone(), lookups);
        }
    }
    Ok(EnrichmentTable::new(by_type))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::Config;
    use super::*;
    use crate::action::ActionKind;

    /// A directory with schemas for `order.placed` and `refund.requested` and an allow-all policy.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["schemas", "policies"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        for ty in ["order.placed", "refund.requested"] {
            std::fs::write(dir.path().join(format!("schemas/{ty}.json")), "{}").expect("write");
        }
        let policy =
            "package reflex\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {}}\nredact := []\n";
        std::fs::write(dir.path().join("policies/p.rego"), policy).expect("write");
        dir
    }

    fn load(body: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = fixture();
        let text = format!(
            "[topics]\nevents = [\"e\"]\n[actions.note]\nkind = \"log\"\ntypes = [\"refund.requested\"]\n{body}"
        );
        let vars = vars.iter().map(|(a, b)| (a.to_string(), b.to_string()));
        Config::from_toml(&text, &PathBuf::from(dir.path()).join("reflex.toml"), vars)
    }

    fn http(cfg: &Config) -> &HttpAction {
        match &cfg.actions.get("order.placed").expect("action").kind {
            ActionKind::Http(http) => http,
            other => panic!("not http: {other:?}"),
        }
    }

    const HTTP: &str = r#"
[actions.notify]
kind = "http"
types = ["order.placed"]
url = "http://127.0.0.1:8090/orders/{data.id}?source={source}"
"#;

    #[test]
    fn http_action_defaults() {
        let cfg = load(HTTP, &[]).expect("valid");
        let a = http(&cfg);
        assert_eq!(a.method, Method::POST);
        assert_eq!(a.service, "127.0.0.1:8090");
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(a.retry, RetryPolicy::default());
        assert_eq!(a.retry.max_attempts, 5);
        assert_eq!(a.retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(a.retry.max_backoff, Duration::from_secs(5));
        assert!(a.headers.is_empty());
        assert_eq!(
            a.url.as_str(),
            "http://127.0.0.1:8090/orders/{data.id}?source={source}"
        );
        assert_eq!(cfg.services.breaker, BreakerSettings::default());
        assert!(cfg.enrichment.is_empty());
    }

    #[test]
    fn http_action_keys_and_secret_headers_from_the_environment() {
        let body = format!(
            r#"{HTTP}method = "put"
timeout = "750ms"
max_attempts = 3
initial_backoff = "10ms"
max_backoff = "1s"
service = "orders"
headers = {{ authorization = "env:SHOP_TOKEN", "x-tenant" = "t1" }}
[services]
breaker_failures = 2
breaker_open_for = "3s"
"#
        );
        let cfg = load(&body, &[("SHOP_TOKEN", "Bearer s3cret")]).expect("valid");
        let a = http(&cfg);
        assert_eq!(a.method, Method::PUT);
        assert_eq!(a.service, "orders");
        assert_eq!(a.timeout, Duration::from_millis(750));
        assert_eq!(
            a.retry,
            RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_secs(1),
            }
        );
        assert_eq!(a.headers["authorization"], "Bearer s3cret");
        assert_eq!(a.headers["x-tenant"], "t1");
        let debug = format!("{:?}", cfg.actions);
        assert!(!debug.contains("s3cret"), "secret in Debug: {debug}");
        assert_eq!(
            cfg.services.breaker,
            BreakerSettings {
                failures: 2,
                open_for: Duration::from_secs(3),
            }
        );
    }

    #[test]
    fn bad_http_actions_are_named() {
        let cases: &[(&str, &[&str])] = &[
            (
                "headers = { authorization = \"env:MISSING_TOKEN\" }",
                &["notify", "authorization", "MISSING_TOKEN", "not set"],
            ),
            (
                "headers = { authorization = \"Bearer literal\" }",
                &["notify", "authorization", "env:"],
            ),
            (
                "headers = { \"idempotency-key\" = \"x\" }",
                &["idempotency-key", "set by reflex"],
            ),
            ("method = \"GE T\"", &["notify", "GE T"]),
            ("max_attempts = 0", &["notify", "max_attempts"]),
            (
                "initial_backoff = \"2s\"\nmax_backoff = \"1s\"",
                &["initial_backoff", "max_backoff"],
            ),
        ];
        for (extra, want) in cases {
            let msg = load(&format!("{HTTP}{extra}\n"), &[])
                .expect_err(extra)
                .to_string();
            assert!(want.iter().all(|w| msg.contains(w)), "{extra}: {msg}");
        }
        let urls = [
            ("http://h:1/{data.id", "never closed"),
            ("http://{data.host}/x", "depends on the event"),
            ("ftp://h/x", "http://"),
            ("{data.url}", "not a URL"),
        ];
        for (url, want) in urls {
            let body = format!(
                "[actions.notify]\nkind = \"http\"\ntypes = [\"order.placed\"]\nurl = \"{url}\"\n"
            );
            let msg = load(&body, &[]).expect_err(url).to_string();
            assert!(
                msg.contains("notify") && msg.contains(url) && msg.contains(want),
                "{msg}"
            );
        }
        let body =
            "[actions.ship]\nkind = \"log\"\ntypes = [\"order.placed\"]\nurl = \"http://h/\"\n";
        let msg = load(body, &[]).expect_err("url on log").to_string();
        assert!(msg.contains("`url`") && msg.contains("\"log\""), "{msg}");
        let body = "[actions.ship]\nkind = \"http\"\ntypes = [\"order.placed\"]\n";
        let msg = load(body, &[]).expect_err("no url").to_string();
        assert!(msg.contains("ship") && msg.contains("`url`"), "{msg}");
    }

    const LOOKUPS: &str = r#"
[[enrichment."order.placed".lookups]]
name = "customer"
url = "http://127.0.0.1:8091/customers/{data.customer}"

[[enrichment."order.placed".lookups]]
name = "stock"
url = "http://stock.internal/items/{data.item}"
service = "stock"
timeout = "200ms"
ttl = "5s"
cache_size = 10
on_error = "continue"
"#;

    #[test]
    fn enrichment_lookups_with_defaults() {
        let cfg = load(&format!("{HTTP}{LOOKUPS}"), &[]).expect("valid");
        let lookups = cfg.enrichment.get("order.placed");
        assert_eq!(lookups.len(), 2);
        let (customer, stock) = (&lookups[0], &lookups[1]);
        assert_eq!(customer.name, "customer");
        assert_eq!(customer.service, "127.0.0.1:8091");
        assert_eq!(customer.timeout, LOOKUP_TIMEOUT);
        assert_eq!(customer.ttl, LOOKUP_TTL);
        assert_eq!(customer.cache_size, LOOKUP_CACHE_SIZE);
        assert_eq!(customer.on_error, OnError::Deny);
        assert_eq!(stock.service, "stock");
        assert_eq!(stock.timeout, Duration::from_millis(200));
        assert_eq!(stock.ttl, Duration::from_secs(5));
        assert_eq!(stock.cache_size, 10);
        assert_eq!(stock.on_error, OnError::Continue);
        assert!(cfg.enrichment.get("refund.requested").is_empty());
    }

    #[test]
    fn bad_enrichment_is_named() {
        let unknown = LOOKUPS.replace("order.placed", "order.shipped");
        let msg = load(&format!("{HTTP}{unknown}"), &[])
            .expect_err("unknown type")
            .to_string();
        assert!(
            msg.contains("order.shipped") && msg.contains("no schema"),
            "{msg}"
        );
        let twice = LOOKUPS.replace("\"stock\"\nurl", "\"customer\"\nurl");
        let msg = load(&format!("{HTTP}{twice}"), &[])
            .expect_err("duplicate")
            .to_string();
        assert!(
            msg.contains("customer") && msg.contains("two lookups"),
            "{msg}"
        );
        let bad = LOOKUPS.replace("\"continue\"", "\"ignore\"");
        let msg = load(&format!("{HTTP}{bad}"), &[])
            .expect_err("on_error")
            .to_string();
        assert!(msg.contains("ignore") && msg.contains("continue"), "{msg}");
        let bad = LOOKUPS.replace("{data.customer}", "{data.customer");
        let msg = load(&format!("{HTTP}{bad}"), &[])
            .expect_err("template")
            .to_string();
        assert!(
            msg.contains("customer") && msg.contains("never closed"),
            "{msg}"
        );
        let msg = load(&format!("{HTTP}[services]\nbreaker_failures = 0\n"), &[])
            .expect_err("breaker")
            .to_string();
        assert!(msg.contains("services.breaker_failures"), "{msg}");
    }
}

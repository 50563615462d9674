//! `reflex check --connect`: tries every configured endpoint — the brokers, the schema
//! registry, the lake's object store, each HTTP service — and reports each, so a user sees every
//! unreachable, untrusted or unauthenticated endpoint at once, before a worker starts. Once the
//! brokers answer, each configured topic is checked too: that it exists and, for the topics the
//! worker writes, that this principal may write to it ([`crate::kafka::access`], which probes
//! without writing).

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::lake::store::LakeStore;

/// How long one HTTP service may take to answer.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);

/// One endpoint and what trying it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `kafka`, `topic`, `registry`, `lake` or `service`.
    pub kind: &'static str,
    /// Where: brokers, URL or store location.
    pub address: String,
    /// What answered, or why nothing did.
    pub result: Result<String, String>,
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Endpoint", 4)?;
        out.serialize_field("kind", self.kind)?;
        out.serialize_field("address", &self.address)?;
        out.serialize_field("ok", &self.ok())?;
        match &self.result {
            Ok(detail) => out.serialize_field("detail", detail)?,
            Err(error) => out.serialize_field("error", error)?,
        }
        out.end()
    }
}

impl Endpoint {
    /// Whether it answered.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(detail) => write!(f, "  ok    {:<8} {}: {detail}", self.kind, self.address),
            Err(error) => write!(f, "  FAIL  {:<8} {}: {error}", self.kind, self.address),
        }
    }
}

/// Tries every configured endpoint, concurrently; the report lists them in a fixed order.
pub async fn check(config: &Config) -> Vec<Endpoint> {
    let kafka = async {
        let result = crate::kafka::connect(&config.kafka, crate::kafka::CONNECT_TIMEOUT)
            .await
            .map(|c| {
                format!(
                    "{} broker(s), {} topic(s) visible, {} ({} ms)",
                    c.brokers,
                    c.topics,
                    config.kafka.security.describe(),
                    c.elapsed.as_millis()
                )
            })
            .map_err(|e| e.to_string());
        let mut endpoints = Vec::new();
        let reached = result.is_ok();
        endpoints.push(Endpoint {
            kind: "kafka",
            address: config.kafka.brokers.clone(),
            result,
        });
        if reached {
            let mut others: Vec<(String, &'static str)> = config
                .emit_topics()
                .into_iter()
                .map(|t| (t, "write (emitted events)"))
                .collect();
            if !config.analytics.analyses.is_empty() {
                let analytics = &config.analytics;
                others.push((analytics.topic.clone(), "write (analytics findings)"));
                others.push((
                    analytics.changelog_topic.clone(),
                    "read, write (analytics state)",
                ));
            }
            for topic in crate::kafka::access::check(&config.kafka, &config.topics, &others).await {
                endpoints.push(Endpoint {
                    kind: "topic",
                    address: format!("{} ({})", topic.topic, topic.role),
                    result: topic.result,
                });
            }
        }
        endpoints
    };
    let registry = async {
        let registry = config.registry.as_ref()?;
        let result = registry
            .subjects()
            .await
            .map(|s| format!("{} subject(s)", s.len()))
            .map_err(|e| e.to_string());
        Some(Endpoint {
            kind: "registry",
            address: registry.url().to_owned(),
            result,
        })
    };
    let lake = async {
        let result = match LakeStore::open(&config.lake) {
            Ok(store) => store
                .list("")
                .await
                .map(|objects| format!("{} object(s) at the top level", objects.len()))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        Endpoint {
            kind: "lake",
            address: crate::lake::store::describe(&config.lake.location),
            result,
        }
    };
    let services = async {
        let client = |tls: &crate::http::HttpTls| {
            crate::http::client_builder(tls)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    b.timeout(SERVICE_TIMEOUT)
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(|e| e.to_string())
                })
        };
        // Each origin with the TLS settings of the service that calls it.
        let mut origins: Vec<(String, String)> = Vec::new();
        for (ty, action) in config.actions.iter() {
            if let Some(http) = action.http() {
                origins.extend(origin(http.url.as_str()).map(|o| (o, http.service.clone())));
            }
            for lookup in config.enrichment.get(ty) {
                origins.extend(origin(lookup.url.as_str()).map(|o| (o, lookup.service.clone())));
            }
        }
        origins.sort();
        origins.dedup();
        let mut reports = Vec::new();
        for (address, service) in origins {
            let tls = config
                .services
                .service_tls
                .get(&service)
                .unwrap_or(&config.services.tls);
            let result = match client(tls) {
                Ok(client) => {
                    let start = Instant::now();
                    client
                        .get(&address)
                        .send()
                        .await
                        .map(|r| {
                            format!(
                                "answered HTTP {} ({} ms)",
                                r.status().as_u16(),
                                start.elapsed().as_millis()
                            )
                        })
                        .map_err(|e| crate::http::error_chain(&e))
                }
                Err(e) => Err(e),
            };
            reports.push(Endpoint {
                kind: "service",
                address,
                result,
            });
        }
        reports
    };
    let (kafka, registry, lake, services) = tokio::join!(kafka, registry, lake, services);
    let mut endpoints = kafka;
    endpoints.extend(registry);
    endpoints.push(lake);
    endpoints.extend(services);
    endpoints
}

/// `scheme://host[:port]/` of a URL template, whose placeholders come after the authority.
fn origin(template: &str) -> Option<String> {
    let (scheme, rest) = template.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty() && !authority.contains('{')).then(|| format!("{scheme}://{authority}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_of_url_templates() {
        assert_eq!(
            origin("https://pay.example.com:8443/payments/{id}").as_deref(),
            Some("https://pay.example.com:8443/")
        );
        assert_eq!(
            origin("http://127.0.0.1:9000").as_deref(),
            Some("http://127.0.0.1:9000/")
        );
        assert_eq!(origin("http://{data.host}/x"), None);
        assert_eq!(origin("not a url"), None);
    }

    #[test]
    fn a_report_line_names_kind_address_and_result() {
        let e = Endpoint {
            kind: "kafka",
            address: "b:9094".into(),
            result: Err("refused".into()),
        };
        assert_eq!(e.to_string(), "  FAIL  kafka    b:9094: refused");
        assert!(!e.ok());
    }
}

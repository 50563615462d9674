//! Secured connections: `[kafka.security]` (TLS, SASL) turned into librdkafka properties, and
//! the `tls` tables of the HTTP clients (`[services.tls]`, `[registry.tls]`). Secrets are read
//! here, once, from their `env:`/`file:` references.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::http::{ClientCert, HttpTls};
use crate::secret::{Secret, SecretRef};

/// `security.protocol`: how clients talk to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    /// TLS; with a client certificate, mutual TLS.
    #[serde(alias = "SSL")]
    Ssl,
    /// SASL authentication without TLS.
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL authentication over TLS.
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether it runs over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    /// User name and password, sent as they are (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens from an OpenID Connect token endpoint (client credentials).
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
    /// Kerberos; needs librdkafka built with Cyrus SASL, which this build does not include.
    #[serde(rename = "GSSAPI")]
    Gssapi,
}

impl SaslMechanism {
    /// librdkafka's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
            Self::Gssapi => "GSSAPI",
        }
    }
}

/// `[kafka.security]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`; required with SASL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<SaslMechanism>,
    /// PEM file of the CAs that sign the brokers' certificates (default: the system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Password of an encrypted `key_file`: `env:VAR` or `file:PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_password: Option<SecretRef>,
    /// Check that the broker's certificate names the host connected to (default true).
    pub verify_hostname: bool,
    /// SASL user name (PLAIN, SCRAM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// SASL password (PLAIN, SCRAM): `env:VAR` or `file:PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// OAUTHBEARER: the OpenID Connect token endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_token_url: Option<String>,
    /// OAUTHBEARER: the client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_client_id: Option<String>,
    /// OAUTHBEARER: the client secret: `env:VAR` or `file:PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_client_secret: Option<SecretRef>,
    /// OAUTHBEARER: the scope requested, if the provider wants one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_scope: Option<String>,
}

impl Default for RawKafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: SecurityProtocol::Plaintext,
            mechanism: None,
            ca_file: None,
            certificate_file: None,
            key_file: None,
            key_password: None,
            verify_hostname: true,
            username: None,
            password: None,
            oauth_token_url: None,
            oauth_client_id: None,
            oauth_client_secret: None,
            oauth_scope: None,
        }
    }
}

/// How a client authenticates with SASL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslAuth {
    /// PLAIN or SCRAM: a user and a password.
    Password {
        /// The mechanism.
        mechanism: SaslMechanism,
        /// The user.
        username: String,
        /// The password.
        password: Secret,
    },
    /// OAUTHBEARER with OpenID Connect client credentials.
    OAuthBearer {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
        /// The scope.
        scope: Option<String>,
    },
}

/// `[kafka.security]`, validated: files exist, secrets are read. `Debug` shows no secret.
/// The default is plaintext without authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// The protocol.
    pub protocol: SecurityProtocol,
    /// The CA file (TLS protocols only).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Password of the client key.
    pub key_password: Option<Secret>,
    /// Whether the broker's host name is checked against its certificate.
    pub verify_hostname: bool,
    /// SASL authentication (SASL protocols only).
    pub sasl: Option<SaslAuth>,
}

impl Default for KafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: SecurityProtocol::Plaintext,
            ca_file: None,
            client_cert: None,
            key_password: None,
            verify_hostname: true,
            sasl: None,
        }
    }
}

impl KafkaSecurity {
    /// The protocol and mechanism, as error messages name them: `SASL_SSL/SCRAM-SHA-512`.
    pub fn describe(&self) -> String {
        match &self.sasl {
            Some(SaslAuth::Password { mechanism, .. }) => {
                format!("{}/{}", self.protocol.name(), mechanism.name())
            }
            Some(SaslAuth::OAuthBearer { .. }) => format!("{}/OAUTHBEARER", self.protocol.name()),
            None if self.client_cert.is_some() => format!("{} (mutual TLS)", self.protocol.name()),
            None => self.protocol.name().to_owned(),
        }
    }

    /// The SASL user, if any (named in authentication errors; it is not a secret).
    pub fn principal(&self) -> Option<&str> {
        match &self.sasl {
            Some(SaslAuth::Password { username, .. }) => Some(username),
            Some(SaslAuth::OAuthBearer { client_id, .. }) => Some(client_id),
            None => None,
        }
    }

    /// The librdkafka properties, secrets included: for the client configuration only.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut props = vec![("security.protocol", self.protocol.name().to_owned())];
        if self.protocol.is_tls() {
            if let Some(ca) = &self.ca_file {
                props.push(("ssl.ca.location", ca.display().to_string()));
            }
            if let Some((cert, key)) = &self.client_cert {
                props.push(("ssl.certificate.location", cert.display().to_string()));
                props.push(("ssl.key.location", key.display().to_string()));
            }
            if let Some(password) = &self.key_password {
                props.push(("ssl.key.password", password.expose().to_owned()));
            }
            let algorithm = if self.verify_hostname {
                "https"
            } else {
                "none"
            };
            props.push((
                "ssl.endpoint.identification.algorithm",
                algorithm.to_owned(),
            ));
        }
        match &self.sasl {
            Some(SaslAuth::Password {
                mechanism,
                username,
                password,
            }) => {
                props.push(("sasl.mechanism", mechanism.name().to_owned()));
                props.push(("sasl.username", username.clone()));
                props.push(("sasl.password", password.expose().to_owned()));
            }
            Some(SaslAuth::OAuthBearer {
                token_url,
                client_id,
                client_secret,
                scope,
            }) => {
                props.push(("sasl.mechanism", "OAUTHBEARER".to_owned()));
                props.push(("sasl.oauthbearer.method", "oidc".to_owned()));
                props.push(("sasl.oauthbearer.token.endpoint.url", token_url.clone()));
                props.push(("sasl.oauthbearer.client.id", client_id.clone()));
                props.push((
                    "sasl.oauthbearer.client.secret",
                    client_secret.expose().to_owned(),
                ));
                if let Some(scope) = scope {
                    props.push(("sasl.oauthbearer.scope", scope.clone()));
                }
            }
            None => {}
        }
        props
    }
}

fn invalid(key: &'static str, value: impl Into<String>, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        why,
    }
}

/// A file named by `key`, resolved against `base`, that must be readable.
fn existing_file(key: &'static str, path: &Path, base: &Path) -> Result<PathBuf, ConfigError> {
    let full = base.join(path);
    std::fs::File::open(&full).map_err(|source| ConfigError::File {
        key,
        path: full.clone(),
        source,
    })?;
    Ok(full)
}

/// Validates `[kafka.security]`: the keys fit the protocol, files are readable, secrets are read.
pub fn kafka_security(raw: &RawKafkaSecurity, base: &Path) -> Result<KafkaSecurity, ConfigError> {
    const KEY: &str = "kafka.security.protocol";
    if *raw == RawKafkaSecurity::default() {
        return Ok(KafkaSecurity::default());
    }
    let protocol = raw.protocol;
    let tls_keys = raw.ca_file.is_some()
        || raw.certificate_file.is_some()
        || raw.key_file.is_some()
        || raw.key_password.is_some();
    if tls_keys && !protocol.is_tls() {
        return Err(invalid(
            KEY,
            protocol.name(),
            "ca_file, certificate_file, key_file and key_password need protocol \"ssl\" or \"sasl_ssl\"",
        ));
    }
    let ca_file = raw
        .ca_file
        .as_deref()
        .map(|p| existing_file("kafka.security.ca_file", p, base))
        .transpose()?;
    let client_cert = match (&raw.certificate_file, &raw.key_file) {
        (Some(cert), Some(key)) => Some((
            existing_file("kafka.security.certificate_file", cert, base)?,
            existing_file("kafka.security.key_file", key, base)?,
        )),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "kafka.security.certificate_file",
                "",
                "certificate_file and key_file go together (mutual TLS)",
            ))
        }
    };
    let key_password = raw
        .key_password
        .as_ref()
        .map(|r| r.resolve("kafka.security.key_password", base))
        .transpose()?;
    let sasl = match (protocol.sasl(), raw.mechanism) {
        (false, None) => None,
        (false, Some(m)) => {
            return Err(invalid(
                "kafka.security.mechanism",
                m.name(),
                "a SASL mechanism needs protocol \"sasl_ssl\" or \"sasl_plaintext\"",
            ))
        }
        (true, None) => return Err(invalid(
            "kafka.security.mechanism",
            "",
            "SASL protocols need a mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
        )),
        (true, Some(SaslMechanism::Gssapi)) => return Err(invalid(
            "kafka.security.mechanism",
            "GSSAPI",
            "Kerberos needs librdkafka built with Cyrus SASL, which this build does not include",
        )),
        (true, Some(SaslMechanism::OAuthBearer)) => {
            let (Some(token_url), Some(client_id), Some(secret)) = (
                &raw.oauth_token_url,
                &raw.oauth_client_id,
                &raw.oauth_client_secret,
            ) else {
                return Err(invalid(
                    "kafka.security.mechanism",
                    "OAUTHBEARER",
                    "OAUTHBEARER needs oauth_token_url, oauth_client_id and oauth_client_secret",
                ));
            };
            Some(SaslAuth::OAuthBearer {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: secret.resolve("kafka.security.oauth_client_secret", base)?,
                scope: raw.oauth_scope.clone(),
            })
        }
        (true, Some(mechanism)) => {
            let (Some(username), Some(password)) = (&raw.username, &raw.password) else {
                return Err(invalid(
                    "kafka.security.mechanism",
                    mechanism.name(),
                    "PLAIN and SCRAM need username and password",
                ));
            };
            Some(SaslAuth::Password {
                mechanism,
                username: username.clone(),
                password: password.resolve("kafka.security.password", base)?,
            })
        }
    };
    Ok(KafkaSecurity {
        protocol,
        ca_file,
        client_cert,
        key_password,
        verify_hostname: raw.verify_hostname,
        sasl,
    })
}

/// A `tls` table of an HTTP client (`[services.tls]`, `[registry.tls]`) as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttpTls {
    /// PEM file of the only CAs trusted for HTTPS (default: the system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<PathBuf>,
    /// Its PEM private key (unencrypted PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `services.tls` + `ca_file` → `services.tls.ca_file`, for error messages.
fn table_key(table: &'static str, key: &'static str) -> &'static str {
    match (table, key) {
        ("services.tls", "ca_file") => "services.tls.ca_file",
        ("services.tls", "certificate_file") => "services.tls.certificate_file",
        ("services.tls", "key_file") => "services.tls.key_file",
        ("registry.tls", "ca_file") => "registry.tls.ca_file",
        ("registry.tls", "certificate_file") => "registry.tls.certificate_file",
        ("registry.tls", "key_file") => "registry.tls.key_file",
        ("policy.bundle.tls", "ca_file") => "policy.bundle.tls.ca_file",
        ("policy.bundle.tls", "certificate_file") => "policy.bundle.tls.certificate_file",
        ("policy.bundle.tls", "key_file") => "policy.bundle.tls.key_file",
        _ => table,
    }
}

/// Validates a `tls` table; `table` names it in errors (`services.tls`).
pub fn http_tls(
    raw: &RawHttpTls,
    table: &'static str,
    base: &Path,
) -> Result<HttpTls, ConfigError> {
    let ca_file = raw
        .ca_file
        .as_deref()
        .map(|p| existing_file(table_key(table, "ca_file"), p, base))
        .transpose()?;
    let client_cert = match (&raw.certificate_file, &raw.key_file) {
        (Some(cert), Some(key)) => Some(ClientCert {
            certificate_file: existing_file(table_key(table, "certificate_file"), cert, base)?,
            key_file: existing_file(table_key(table, "key_file"), key, base)?,
        }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                table,
                "",
                "certificate_file and key_file go together (mutual TLS)",
            ))
        }
    };
    Ok(HttpTls {
        ca_file,
        client_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RawKafkaSecurity {
        toml::from_str(text).expect("valid TOML")
    }

    #[test]
    fn scram_over_tls_maps_to_librdkafka_properties() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), "x").expect("write");
        std::fs::write(dir.path().join("pw"), "p4ss\n").expect("write");
        let raw = parse(
            r#"
protocol = "sasl_ssl"
mechanism = "SCRAM-SHA-512"
ca_file = "ca.pem"
username = "reflex"
password = "file:pw"
"#,
        );
        let security = kafka_security(&raw, dir.path()).expect("valid");
        assert_eq!(security.describe(), "SASL_SSL/SCRAM-SHA-512");
        let props: std::collections::BTreeMap<_, _> = security.properties().into_iter().collect();
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.username"], "reflex");
        assert_eq!(props["sasl.password"], "p4ss");
        assert_eq!(props["ssl.endpoint.identification.algorithm"], "https");
        assert!(props["ssl.ca.location"].ends_with("ca.pem"));
        assert!(!format!("{security:?}").contains("p4ss"));
    }

    #[test]
    fn inline_passwords_are_refused_without_echoing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = parse(
            "protocol = \"sasl_ssl\"\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"hunter2\"\n",
        );
        assert!(!format!("{raw:?}").contains("hunter2"));
        let text = kafka_security(&raw, dir.path())
            .expect_err("inline")
            .to_string();
        assert!(
            text.contains("kafka.security.password") && text.contains("env:VAR"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn keys_that_do_not_fit_the_protocol_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("protocol = \"sasl_ssl\"\n", "need a mechanism"),
            (
                "protocol = \"ssl\"\nmechanism = \"PLAIN\"\n",
                "needs protocol",
            ),
            ("ca_file = \"ca.pem\"\n", "need protocol"),
            (
                "protocol = \"sasl_ssl\"\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\n",
                "need username and password",
            ),
            (
                "protocol = \"sasl_ssl\"\nmechanism = \"OAUTHBEARER\"\n",
                "oauth_token_url",
            ),
            (
                "protocol = \"sasl_ssl\"\nmechanism = \"GSSAPI\"\n",
                "Cyrus SASL",
            ),
            (
                "protocol = \"ssl\"\ncertificate_file = \"c.pem\"\n",
                "go together",
            ),
        ];
        for (text, want) in cases {
            let err = kafka_security(&parse(text), dir.path()).expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = kafka_security(
            &parse("protocol = \"ssl\"\nca_file = \"nope.pem\"\n"),
            dir.path(),
        )
        .expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains("nope.pem") && text.contains("kafka.security.ca_file"),
            "{text}"
        );
    }

    #[test]
    fn oauthbearer_uses_oidc_client_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("s"), "cl13nt").expect("write");
        let raw = parse(
            r#"
protocol = "sasl_ssl"
mechanism = "OAUTHBEARER"
oauth_token_url = "https://login.example.com/oauth2/token"
oauth_client_id = "reflex"
oauth_client_secret = "file:s"
oauth_scope = "kafka"
"#,
        );
        let security = kafka_security(&raw, dir.path()).expect("valid");
        let props: std::collections::BTreeMap<_, _> = security.properties().into_iter().collect();
        assert_eq!(props["sasl.oauthbearer.method"], "oidc");
        assert_eq!(props["sasl.oauthbearer.client.secret"], "cl13nt");
        assert_eq!(props["sasl.oauthbearer.scope"], "kafka");
        assert_eq!(security.describe(), "SASL_SSL/OAUTHBEARER");
    }
}

//! The one HTTP client stack: reqwest over rustls (the `ring` provider), used for action
//! services, lookups and the schema registry alike. A `tls` table may name a private CA (then
//! only its CAs are trusted) and a client certificate for mutual TLS; credentials for a service
//! come from [`crate::secret`] references and are sent as sensitive headers.

use std::path::{Path, PathBuf};

use reqwest::header::{HeaderValue, AUTHORIZATION};

use crate::secret::Secret;

/// TLS settings of one HTTP client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpTls {
    /// PEM bundle of the only CAs trusted; `None` trusts the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate and its key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate (chain).
    pub certificate_file: PathBuf,
    /// The private key.
    pub key_file: PathBuf,
}

/// Credentials sent with every request of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HttpAuth {
    /// None.
    #[default]
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
}

impl HttpAuth {
    /// The `Authorization` value, marked sensitive so that no `Debug` output shows it.
    pub fn header(&self) -> Option<HeaderValue> {
        use base64::Engine as _;
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let text = match self {
            Self::None => return None,
            Self::Basic { username, password } => {
                format!(
                    "Basic {}",
                    encode(&format!("{username}:{}", password.expose()))
                )
            }
            Self::Bearer(token) => format!("Bearer {}", token.expose()),
        };
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Adds the credentials to `request`.
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.header() {
            Some(value) => request.header(AUTHORIZATION, value),
            None => request,
        }
    }
}

/// Why an HTTP client cannot be built from its TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read.
    #[error("cannot read {what} {path}: {source}", path = path.display())]
    Read {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{what} {path} is not usable: {source}", path = path.display())]
    Pem {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// reqwest's error.
        source: reqwest::Error,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A client builder over rustls with `tls` applied; every HTTP client of reflex starts here.
pub fn client_builder(tls: &HttpTls) -> Result<reqwest::ClientBuilder, TlsError> {
    // The process-wide provider; a second call finds it installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().tls_backend_rustls();
    if let Some(ca) = &tls.ca_file {
        let pem = read("CA file", ca)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| TlsError::Pem {
                what: "CA file",
                path: ca.clone(),
                source,
            })?;
        builder = builder.tls_certs_only(certs);
    }
    if let Some(client) = &tls.client_cert {
        let mut pem = read("client key", &client.key_file)?;
        pem.push(b'\n');
        pem.extend(read("client certificate", &client.certificate_file)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|source| TlsError::Pem {
            what: "client certificate and key",
            path: client.certificate_file.clone(),
            source,
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

/// An error and its causes as one line: reqwest's own message says little ("error sending
/// request"), the TLS cause ("invalid peer certificate: UnknownIssuer") is in the chain.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;

    #[test]
    fn basic_auth_is_user_colon_password_in_base64() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p"), "pass").expect("write");
        let auth = HttpAuth::Basic {
            username: "user".into(),
            password: SecretRef::File("p".into())
                .resolve("registry.password", dir.path())
                .expect("readable"),
        };
        let value = auth.header().expect("a header");
        assert_eq!(value.to_str().expect("ascii"), "Basic dXNlcjpwYXNz");
    }

    #[test]
    fn authorization_headers_are_sensitive() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("t"), "t0ken").expect("write");
        let token = SecretRef::File("t".into())
            .resolve("registry.token", dir.path())
            .expect("readable");
        let auth = HttpAuth::Bearer(token);
        let value = auth.header().expect("a header");
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().expect("ascii"), "Bearer t0ken");
        assert!(!format!("{auth:?} {value:?}").contains("t0ken"));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = HttpTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            client_cert: None,
        };
        let err = client_builder(&tls).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}

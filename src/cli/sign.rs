//! `reflex sign`: what a publisher puts in the `publisher-signature` header of a record, and a
//! new Ed25519 key for `[publishers.<id>]`. It needs no configuration: publishers run it.

use std::path::Path;

use crate::publisher::{Algorithm, KeyError, SigningKey};
use crate::secret::{SecretError, SecretRef};

/// One record to sign.
#[derive(Debug, Clone)]
pub struct SignRequest {
    /// The key id named in the header.
    pub key_id: String,
    /// The key's algorithm.
    pub algorithm: Algorithm,
    /// The HMAC secret or the Ed25519 private key seed (base64): `env:VAR` or `file:PATH`.
    pub secret: SecretRef,
    /// The record key, if it has one.
    pub key: Option<String>,
    /// The record's headers (only `ce_*` and `content-type` are signed).
    pub headers: Vec<(String, String)>,
    /// The record value, exactly as it will be sent.
    pub value: Vec<u8>,
}

/// Why signing failed. Messages name references, never key material.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The key is not usable.
    #[error("--secret {reference}: {source}")]
    Key {
        /// Where the key was read from.
        reference: SecretRef,
        /// What is wrong with it.
        source: KeyError,
    },
    /// The key file could not be written.
    #[error("cannot write the new key to {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The `publisher-signature` header value for `request`.
pub fn sign(request: &SignRequest) -> Result<String, SignError> {
    let secret = request.secret.resolve("--secret", Path::new("."))?;
    let key = match request.algorithm {
        Algorithm::HmacSha256 => SigningKey::hmac(secret.expose().as_bytes()),
        Algorithm::Ed25519 => SigningKey::ed25519(secret.expose()),
    }
    .map_err(|source| SignError::Key {
        reference: request.secret.clone(),
        source,
    })?;
    let headers: Vec<(&str, &[u8])> = request
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let signature = key
        .sign(
            &request.key_id,
            request.key.as_deref().map(str::as_bytes),
            Some(&request.value),
            &headers,
        )
        .map_err(|source| SignError::Key {
            reference: request.secret.clone(),
            source,
        })?;
    Ok(signature.to_string())
}

/// Writes a new Ed25519 private key seed to `path` (which must not exist; readable by its
/// owner only) and returns the public key for `[publishers.<id>] public_key`.
pub fn new_key(path: &Path) -> Result<String, SignError> {
    let seed = SigningKey::generate_ed25519_seed().map_err(|source| SignError::Key {
        reference: SecretRef::File(path.to_owned()),
        source,
    })?;
    let public = SigningKey::ed25519(&seed)
        .ok()
        .and_then(|k| k.public_key())
        .unwrap_or_default();
    let write_err = |source| SignError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_err)?;
    std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes()).map_err(write_err)?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::{Keyring, Status, HEADER};

    #[test]
    fn a_new_key_signs_what_its_public_key_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("desk.key");
        let public = new_key(&path).expect("new key");
        assert!(
            new_key(&path).is_err(),
            "an existing key is not overwritten"
        );
        let request = SignRequest {
            key_id: "desk".into(),
            algorithm: Algorithm::Ed25519,
            secret: SecretRef::File(path.clone()),
            key: Some("r-1".into()),
            headers: vec![("content-type".into(), "application/cloudevents+json".into())],
            value: br#"{"id":"r-1"}"#.to_vec(),
        };
        let header = sign(&request).expect("sign");
        let mut ring = Keyring::new();
        ring.add_ed25519("desk", &public).expect("public key");
        let headers: [(&str, &[u8]); 2] = [
            ("content-type", b"application/cloudevents+json"),
            (HEADER, header.as_bytes()),
        ];
        let got = ring.verify(Some(b"r-1"), Some(br#"{"id":"r-1"}"#), &headers);
        assert_eq!(got.status, Status::Verified);

        let secret = "a shared secret, long enough for hmac-sha256";
        std::fs::write(dir.path().join("shared"), secret).expect("write");
        let wrong = SignRequest {
            secret: SecretRef::File(dir.path().join("shared")),
            ..request
        };
        let err = sign(&wrong).expect_err("an HMAC secret is no Ed25519 seed");
        let shown = err.to_string();
        assert!(!shown.contains(secret), "{shown}");
        assert!(
            shown.contains("shared") && shown.contains("Ed25519"),
            "{shown}"
        );
    }
}

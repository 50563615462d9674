//! `[publishers.<key id>]`: the keys publishers sign records with, read into a
//! [`Keyring`]. An HMAC secret is a reference (`env:`/`file:`); an Ed25519 public key is not a
//! secret and is written inline.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::publisher::{Algorithm, Keyring};
use crate::secret::SecretRef;

/// One publisher key as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublisherKey {
    /// `hmac-sha256` or `ed25519`.
    pub algorithm: Algorithm,
    /// HMAC-SHA256: the shared secret, `env:VAR` or `file:PATH` (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    /// Ed25519: the public key, base64 of its 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// The keyring of `[publishers]`; every error names the key.
pub(super) fn keyring(
    raw: &BTreeMap<String, RawPublisherKey>,
    base: &Path,
) -> Result<Keyring, ConfigError> {
    let mut keyring = Keyring::new();
    for (id, key) in raw {
        let invalid = |why: String| ConfigError::Publisher {
            id: id.clone(),
            why,
        };
        let added = match (key.algorithm, &key.secret, &key.public_key) {
            (Algorithm::HmacSha256, Some(secret), None) => {
                let secret = secret.resolve(&format!("publishers.{id}.secret"), base)?;
                keyring.add_hmac(id, secret.expose().as_bytes())
            }
            (Algorithm::Ed25519, None, Some(public)) => keyring.add_ed25519(id, public),
            (Algorithm::HmacSha256, _, _) => {
                return Err(invalid(
                    "an hmac-sha256 key takes `secret` (env:VAR or file:PATH) and no `public_key`"
                        .into(),
                ))
            }
            (Algorithm::Ed25519, _, _) => {
                return Err(invalid(
                    "an ed25519 key takes `public_key` (base64 of 32 bytes) and no `secret`".into(),
                ))
            }
        };
        added.map_err(|e| invalid(e.to_string()))?;
    }
    Ok(keyring)
}

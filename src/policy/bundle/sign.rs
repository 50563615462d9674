//! Bundle signatures as OPA writes and checks them: `.signatures.json` holds one JWT whose
//! payload lists every file of the bundle with its SHA-256 (`{"files": [{"name", "hash",
//! "algorithm"}], "keyid"}`), signed with HS256 (a shared secret), RS256 or ES256 (a PEM key
//! pair: the private key signs, the public key verifies).
//!
//! A structured file (`data.json`, `data.yaml`, `.manifest`) is hashed in OPA's canonical form
//! (keys sorted, no white space) so a re-encoded file still verifies; every other file is hashed
//! as its bytes. Numbers are written as serde_json writes them: a data file of OPA's with
//! literals such as `1e3` or `1.50` hashes differently (rebuild it with `reflex policy bundle
//! build`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The signature algorithms bundles are signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum Algorithm {
    /// HMAC with SHA-256 over a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (a 2048-bit key or larger).
    #[default]
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

impl Algorithm {
    /// The JWT name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(Self::HS256),
            "RS256" => Ok(Self::RS256),
            "ES256" => Ok(Self::ES256),
            _ => Err(SignatureError::Algorithm(s.to_owned())),
        }
    }
}

/// Why a bundle could not be signed or did not verify. Messages never carry key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// An algorithm other than HS256, RS256 and ES256.
    #[error("signature algorithm \"{0}\" is not supported: use HS256, RS256 or ES256")]
    Algorithm(String),
    /// The key cannot be used with the algorithm.
    #[error("{key} is not a usable {alg} key: {why}")]
    Key {
        /// The key's reference (`env:VAR`, `file:PATH`).
        key: String,
        /// The algorithm.
        alg: &'static str,
        /// What is wrong.
        why: String,
    },
    /// `.signatures.json` is missing or not one JWT.
    #[error(".signatures.json: {0}")]
    Malformed(String),
    /// The JWT names another algorithm than the key's.
    #[error("the bundle is signed with {found}, the verification key is {expected}")]
    WrongAlgorithm {
        /// The configured algorithm.
        expected: &'static str,
        /// The JWT's `alg`.
        found: String,
    },
    /// The JWT names another key id than the configured one.
    #[error(
        "the bundle is signed with key id \"{found}\", the verification key is \"{expected}\""
    )]
    WrongKeyId {
        /// The configured key id.
        expected: String,
        /// The JWT's key id.
        found: String,
    },
    /// The signature does not verify with the key.
    #[error("the signature does not verify with the configured key")]
    BadSignature,
    /// A file's hash differs from the signed one.
    #[error(
        "{0}: its content differs from the signed hash (the bundle was changed after signing)"
    )]
    Digest(String),
    /// A file is in the bundle but not in the signature.
    #[error("{0} is not covered by the bundle signature")]
    Unsigned(String),
    /// A signed file is not in the bundle.
    #[error("{0} is signed but missing from the bundle")]
    Missing(String),
}

/// One signed file: its name in the bundle and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FileInfo {
    /// The path in the bundle, without a leading `/`.
    pub name: String,
    /// Hex SHA-256.
    pub hash: String,
    /// Always `SHA-256`.
    pub algorithm: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct Payload {
    files: Vec<FileInfo>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    keyid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    scope: String,
}

/// `.signatures.json`.
#[derive(Debug, Deserialize, Serialize)]
pub struct Signatures {
    /// Exactly one compact JWT.
    pub signatures: Vec<String>,
}

/// Whether OPA hashes `name` in canonical JSON form (else as bytes).
pub fn is_structured(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    matches!(base, "data.json" | "data.yaml" | ".manifest")
}

/// The hex SHA-256 of a file as OPA computes it for signatures.
pub fn file_hash(name: &str, bytes: &[u8]) -> Result<String, String> {
    let mut hasher = Sha256::new();
    if is_structured(name) {
        let value: Value = if name.ends_with(".yaml") {
            serde_yaml_ng::from_slice(bytes).map_err(|e| format!("{name}: {e}"))?
        } else {
            serde_json::from_slice(bytes).map_err(|e| format!("{name}: {e}"))?
        };
        let mut text = String::new();
        canonical(&value, &mut text);
        hasher.update(text.as_bytes());
    } else {
        hasher.update(bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// OPA's canonical JSON: object keys sorted, no white space, `<>&` unescaped.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(key, out);
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string as Go's encoder writes it with HTML escaping off (it also escapes U+2028/9).
fn string(s: &str, out: &mut String) {
    let quoted = Value::String(s.to_owned()).to_string();
    out.push_str(
        &quoted
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029"),
    );
}

/// A key that signs bundles (`reflex policy bundle build --signing-key`).
pub struct SigningKey {
    alg: Algorithm,
    key: Signer,
    key_id: String,
}

enum Signer {
    Hmac(ring::hmac::Key),
    Rsa(signature::RsaKeyPair),
    Ecdsa(signature::EcdsaKeyPair),
}

fn key_error(secret: &Secret, alg: Algorithm, why: impl Into<String>) -> SignatureError {
    SignatureError::Key {
        key: secret.reference().to_string(),
        alg: alg.name(),
        why: why.into(),
    }
}

impl SigningKey {
    /// A signing key from a secret: the shared secret for HS256, a PEM private key (PKCS#8,
    /// or PKCS#1 for RSA) for RS256 and ES256. `key_id` goes into the JWT (`kid`, `keyid`).
    pub fn new(alg: Algorithm, secret: &Secret, key_id: &str) -> Result<Self, SignatureError> {
        let key = match alg {
            Algorithm::HS256 => Signer::Hmac(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                secret.expose().as_bytes(),
            )),
            Algorithm::RS256 | Algorithm::ES256 => {
                let der = PrivateKeyDer::from_pem_slice(secret.expose().as_bytes())
                    .map_err(|_| key_error(secret, alg, "not a PEM private key"))?;
                match (alg, der) {
                    (Algorithm::RS256, PrivateKeyDer::Pkcs8(k)) => Signer::Rsa(
                        signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
                            .map_err(|e| key_error(secret, alg, e.to_string()))?,
                    ),
                    (Algorithm::RS256, PrivateKeyDer::Pkcs1(k)) => Signer::Rsa(
                        signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
                            .map_err(|e| key_error(secret, alg, e.to_string()))?,
                    ),
                    (Algorithm::ES256, PrivateKeyDer::Pkcs8(k)) => Signer::Ecdsa(
                        signature::EcdsaKeyPair::from_pkcs8(
                            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                            k.secret_pkcs8_der(),
                            &ring::rand::SystemRandom::new(),
                        )
                        .map_err(|e| key_error(secret, alg, e.to_string()))?,
                    ),
                    _ => return Err(key_error(
                        secret,
                        alg,
                        "expected a PKCS#8 PEM key (convert with `openssl pkcs8 -topk8 -nocrypt`)",
                    )),
                }
            }
        };
        Ok(Self {
            alg,
            key,
            key_id: key_id.to_owned(),
        })
    }

    /// `.signatures.json` for `files` (name and content).
    pub fn sign(&self, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, SignatureError> {
        let files = files
            .iter()
            .map(|(name, bytes)| {
                Ok(FileInfo {
                    name: name.clone(),
                    hash: file_hash(name, bytes).map_err(SignatureError::Malformed)?,
                    algorithm: "SHA-256".into(),
                })
            })
            .collect::<Result<Vec<_>, SignatureError>>()?;
        let mut header = serde_json::json!({"alg": self.alg.name(), "typ": "JWT"});
        if !self.key_id.is_empty() {
            header["kid"] = Value::String(self.key_id.clone());
        }
        let payload = Payload {
            files,
            keyid: self.key_id.clone(),
            scope: String::new(),
        };
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap_or_default())
        );
        let sig = match &self.key {
            Signer::Hmac(k) => ring::hmac::sign(k, signing_input.as_bytes())
                .as_ref()
                .to_vec(),
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| SignatureError::BadSignature)?;
                sig
            }
            Signer::Ecdsa(k) => k
                .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
                .map_err(|_| SignatureError::BadSignature)?
                .as_ref()
                .to_vec(),
        };
        let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig));
        serde_json::to_vec(&Signatures {
            signatures: vec![jwt],
        })
        .map_err(|e| SignatureError::Malformed(e.to_string()))
    }
}

/// A key that verifies bundles (`[policy.bundle] verification_key`).
#[derive(Clone)]
pub struct VerificationKey {
    alg: Algorithm,
    key: Vec<u8>,
    key_id: String,
    reference: String,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VerificationKey({}, {})",
            self.alg.name(),
            self.reference
        )
    }
}

impl VerificationKey {
    /// A verification key from a secret: the shared secret for HS256, a PEM public key
    /// (`PUBLIC KEY`, SubjectPublicKeyInfo) for RS256 and ES256. A non-empty `key_id` must match
    /// the one the bundle was signed with.
    pub fn new(alg: Algorithm, secret: &Secret, key_id: &str) -> Result<Self, SignatureError> {
        let key = match alg {
            Algorithm::HS256 => secret.expose().as_bytes().to_vec(),
            Algorithm::RS256 | Algorithm::ES256 => {
                let spki = SubjectPublicKeyInfoDer::from_pem_slice(secret.expose().as_bytes())
                    .map_err(|_| {
                        key_error(
                            secret,
                            alg,
                            "expected a PEM public key (-----BEGIN PUBLIC KEY-----)",
                        )
                    })?;
                spki_key(spki.as_ref())
                    .ok_or_else(|| key_error(secret, alg, "the public key's DER cannot be read"))?
            }
        };
        Ok(Self {
            alg,
            key,
            key_id: key_id.to_owned(),
            reference: secret.reference().to_string(),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Checks `.signatures.json` and returns the signed files.
    pub fn verify(&self, signatures: &[u8]) -> Result<Vec<FileInfo>, SignatureError> {
        let sigs: Signatures = serde_json::from_slice(signatures)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let [jwt] = sigs.signatures.as_slice() else {
            return Err(SignatureError::Malformed(format!(
                "{} JWTs, expected exactly one",
                sigs.signatures.len()
            )));
        };
        let mut parts = jwt.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SignatureError::Malformed("not a compact JWT".into()));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| SignatureError::Malformed(format!("JWT {what}: {e}")))
        };
        let head: Value = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|e| SignatureError::Malformed(format!("JWT header: {e}")))?;
        let alg = head.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg != self.alg.name() {
            return Err(SignatureError::WrongAlgorithm {
                expected: self.alg.name(),
                found: alg.to_owned(),
            });
        }
        let signed = format!("{header}.{payload}");
        let sig = decode(sig, "signature")?;
        let ok = match self.alg {
            Algorithm::HS256 => ring::hmac::verify(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key),
                signed.as_bytes(),
                &sig,
            )
            .is_ok(),
            Algorithm::RS256 => {
                signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.key)
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
            Algorithm::ES256 => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.key)
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
        };
        if !ok {
            return Err(SignatureError::BadSignature);
        }
        let payload: Payload = serde_json::from_slice(&decode(payload, "payload")?)
            .map_err(|e| SignatureError::Malformed(format!("JWT payload: {e}")))?;
        let kid = head
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or(&payload.keyid);
        if !self.key_id.is_empty() && !kid.is_empty() && kid != self.key_id {
            return Err(SignatureError::WrongKeyId {
                expected: self.key_id.clone(),
                found: kid.to_owned(),
            });
        }
        Ok(payload.files)
    }
}

/// The subjectPublicKey bits of a DER SubjectPublicKeyInfo: the PKCS#1 key for RSA, the
/// uncompressed point for EC (the forms ring verifies with).
fn spki_key(der: &[u8]) -> Option<Vec<u8>> {
    let (tag, spki, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _algorithm, rest) = tlv(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, bits, _) = tlv(rest)?;
    match (tag, bits.split_first()) {
        (0x03, Some((0, key))) => Some(key.to_vec()),
        _ => None,
    }
}

/// One DER tag-length-value: (tag, content, what follows).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;

    fn secret(var: &str, value: &str) -> Secret {
        std::env::set_var(var, value);
        SecretRef::Env(var.into())
            .resolve("test", std::path::Path::new("."))
            .expect("secret")
    }

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            (
                ".manifest".into(),
                br#"{"revision":"r1","roots":[""]}"#.to_vec(),
            ),
            (
                "data.json".into(),
                br#"{"b": 1, "a": {"y": [1, "x"], "x": null}}"#.to_vec(),
            ),
            ("p.rego".into(), b"package reflex\n".to_vec()),
        ]
    }

    #[test]
    fn structured_files_hash_in_canonical_form() {
        let a = file_hash("data.json", br#"{"b": 1, "a": "<&>"}"#).expect("hash");
        let b = file_hash("data.json", br#"{"a":"<&>","b":1}"#).expect("hash");
        assert_eq!(a, b);
        // OPA's canonical text of that document, hashed with sha256sum.
        let want = hex::encode(Sha256::digest(br#"{"a":"<&>","b":1}"#));
        assert_eq!(a, want);
        let raw = file_hash("p.rego", b"package x\n").expect("hash");
        assert_eq!(raw, hex::encode(Sha256::digest(b"package x\n")));
    }

    #[test]
    fn hmac_signatures_verify_and_name_the_problem() {
        let key = secret("REFLEX_TEST_BUNDLE_HMAC", "s3cret-hmac-key");
        let signer = SigningKey::new(Algorithm::HS256, &key, "ci").expect("key");
        let sigs = signer.sign(&files()).expect("signs");
        let verifier = VerificationKey::new(Algorithm::HS256, &key, "ci").expect("key");
        let signed = verifier.verify(&sigs).expect("verifies");
        assert_eq!(signed.len(), 3);
        assert_eq!(signed[1].name, "data.json");

        let other = secret("REFLEX_TEST_BUNDLE_HMAC2", "another-key");
        let wrong = VerificationKey::new(Algorithm::HS256, &other, "").expect("key");
        assert_eq!(wrong.verify(&sigs), Err(SignatureError::BadSignature));
        let wrong_id = VerificationKey::new(Algorithm::HS256, &key, "prod").expect("key");
        assert!(matches!(
            wrong_id.verify(&sigs),
            Err(SignatureError::WrongKeyId { .. })
        ));
        let rs = VerificationKey {
            alg: Algorithm::RS256,
            ..verifier.clone()
        };
        let err = rs.verify(&sigs).expect_err("alg");
        assert!(err.to_string().contains("HS256"), "{err}");
        assert!(!format!("{verifier:?}").contains("s3cret"));
    }

    #[test]
    fn es256_signatures_verify_with_the_public_key() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let private = secret("REFLEX_TEST_BUNDLE_ES_PRIVATE", &pair.serialize_pem());
        let public = secret("REFLEX_TEST_BUNDLE_ES_PUBLIC", &pair.public_key_pem());
        let sigs = SigningKey::new(Algorithm::ES256, &private, "")
            .expect("key")
            .sign(&files())
            .expect("signs");
        let verifier = VerificationKey::new(Algorithm::ES256, &public, "").expect("key");
        assert_eq!(verifier.verify(&sigs).expect("verifies").len(), 3);
        // A signature made with another key pair does not verify.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let other = secret("REFLEX_TEST_BUNDLE_ES_OTHER", &other.serialize_pem());
        let forged = SigningKey::new(Algorithm::ES256, &other, "")
            .expect("key")
            .sign(&files())
            .expect("signs");
        assert_eq!(verifier.verify(&forged), Err(SignatureError::BadSignature));
        let err = VerificationKey::new(Algorithm::ES256, &private, "").expect_err("not public");
        assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
        assert!(!err.to_string().contains("BEGIN PRIVATE"), "{err}");
    }
}

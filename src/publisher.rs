//! Publisher authentication: who produced a record, proven by a signature over it rather than
//! claimed by the event's `source`.
//!
//! Consumers cannot see the Kafka principal that produced a record, so a publisher may sign
//! it: the header [`HEADER`] (`publisher-signature: keyid=<id>;sig=<base64>`) carries the id of
//! one of the keys configured under `[publishers.<id>]` and a signature, HMAC-SHA256 or
//! Ed25519, over [`signed_bytes`] of the record: its key, its value and its CloudEvents headers
//! (`ce_*` and `content-type`). The algorithm is the configured key's; the header does not
//! choose it. [`Keyring::verify`] gives a [`Publisher`], which joins the policy input as
//! `input.publisher` and the audit record; what an unsigned or badly signed record means is the
//! policy's decision. The header is the publisher's, not reflex's: it is not one of the
//! `reflex_*` headers, and it travels unchanged with a record to the retry and dead-letter
//! topics, so a retried or replayed record verifies again.
//!
//! The primitives are ring's (HMAC-SHA256 with a constant-time comparison, Ed25519), the same
//! library rustls uses here.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use ring::signature::KeyPair as _;
use serde::{Deserialize, Serialize};

/// The record header that carries a publisher's signature.
pub const HEADER: &str = "publisher-signature";

/// The first bytes of every signed message: the scheme and its version.
const DOMAIN: &[u8] = b"reflex publisher-signature v1\n";

/// Length of an Ed25519 public key and of a private key seed.
const ED25519_KEY_LEN: usize = 32;

/// Shortest HMAC secret accepted, in bytes (the length of the SHA-256 output, RFC 2104).
pub const MIN_HMAC_SECRET: usize = 32;

/// A key's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    /// HMAC with SHA-256 over a shared secret.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// Ed25519: the publisher holds the private key, reflex the public one.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl Algorithm {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// Whether a header takes part in the signature: the CloudEvents attributes of a binary-mode
/// record and its content type.
fn is_signed_header(name: &str) -> bool {
    name.starts_with("ce_") || name == "content-type"
}

/// The bytes a publisher signs for a record: the domain `reflex publisher-signature v1\n`, then
/// the key, the value, and the signed headers (`ce_*` and `content-type`, sorted by name, then
/// value), each length-prefixed (4 bytes, big-endian), the headers preceded by their count. An
/// absent key or value counts as empty. Other headers, the topic and the partition are not
/// signed, so a record keeps its signature through the retry and dead-letter topics.
pub fn signed_bytes(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut signed: Vec<(&[u8], &[u8])> = headers
        .iter()
        .filter(|(name, _)| is_signed_header(name))
        .map(|(name, value)| (name.as_bytes(), *value))
        .collect();
    signed.sort_unstable();
    let key = key.unwrap_or_default();
    let value = value.unwrap_or_default();
    let size = DOMAIN.len()
        + 12
        + key.len()
        + value.len()
        + signed
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(DOMAIN);
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&len32(bytes.len()).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(key);
    field(value);
    let count = len32(signed.len()).to_be_bytes();
    out.extend_from_slice(&count);
    for (name, value) in signed {
        out.extend_from_slice(&len32(name.len()).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&len32(value.len()).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// A length as the 4-byte prefix; Kafka records are far below 4 GiB.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// What verifying a record's signature found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The signature is valid for a configured key.
    Verified,
    /// The record has no signature header.
    Unsigned,
    /// The header names a key id that is not configured.
    UnknownKey,
    /// The signature does not match the record (tampered, or signed with another key).
    BadSignature,
    /// The header is not `keyid=<id>;sig=<base64>`.
    Malformed,
}

impl Status {
    /// The status as recorded.
    pub fn name(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Unsigned => "unsigned",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Malformed => "malformed",
        }
    }
}

/// Who published a record, as far as its signature proves: `input.publisher` in the policy
/// input and `publisher` in the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    /// Whether the signature is valid for a configured key.
    pub verified: bool,
    /// The key that signed it, only when verified.
    pub key_id: Option<String>,
    /// What verification found.
    pub status: Status,
    /// The key id the header names, verified or not (absent when unsigned or malformed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_key_id: Option<String>,
}

impl Publisher {
    /// The JSON form, as the policy input's `publisher` and the audit record carry it.
    pub fn policy_value(&self) -> serde_json::Value {
        let mut out = serde_json::json!({
            "verified": self.verified,
            "key_id": self.key_id,
            "status": self.status.name(),
        });
        if let (Some(claimed), Some(map)) = (&self.claimed_key_id, out.as_object_mut()) {
            map.insert("claimed_key_id".to_owned(), claimed.as_str().into());
        }
        out
    }

    /// A record without a signature.
    pub fn unsigned() -> Self {
        Self::not_verified(Status::Unsigned, None)
    }

    fn not_verified(status: Status, claimed: Option<&str>) -> Self {
        Self {
            verified: false,
            key_id: None,
            status,
            claimed_key_id: claimed.map(str::to_owned),
        }
    }
}

/// A parsed signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The key id.
    pub key_id: String,
    /// The signature bytes.
    pub bytes: Vec<u8>,
}

impl Signature {
    /// Parses `keyid=<id>;sig=<base64>` (parameters in any order, spaces around `;` allowed).
    pub fn parse(header: &str) -> Option<Self> {
        let mut key_id = None;
        let mut sig = None;
        for part in header.split(';') {
            let (name, value) = part.trim().split_once('=')?;
            let slot = match name {
                "keyid" => &mut key_id,
                "sig" => &mut sig,
                _ => return None,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        let key_id = key_id.filter(|k| valid_key_id(k))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sig?)
            .ok()?;
        Some(Self {
            key_id: key_id.to_owned(),
            bytes,
        })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sig = base64::engine::general_purpose::STANDARD.encode(&self.bytes);
        write!(f, "keyid={};sig={sig}", self.key_id)
    }
}

/// Whether `id` may name a key: letters, digits, `.`, `_`, `-` and `:`, at most 128 of them.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Why a key cannot be used. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key id has characters a header cannot carry unambiguously.
    #[error("key id \"{0}\" must be 1 to 128 letters, digits, '.', '_', '-' or ':'")]
    BadId(String),
    /// An HMAC secret is too short to be safe.
    #[error("the HMAC secret is {0} bytes; use at least {MIN_HMAC_SECRET} random bytes (e.g. `openssl rand -base64 32`)")]
    ShortSecret(usize),
    /// An Ed25519 key is not the base64 of 32 bytes.
    #[error("an Ed25519 {0} must be the base64 of 32 bytes")]
    BadEd25519(&'static str),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
}

/// A configured key, ready to verify.
enum Verifier {
    Hmac(ring::hmac::Key),
    Ed25519(Vec<u8>),
}

impl Verifier {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Hmac(key) => ring::hmac::verify(key, message, signature).is_ok(),
            Self::Ed25519(public) => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

/// The configured publisher keys by id. `Debug` lists ids and algorithms, never key material.
#[derive(Default)]
pub struct Keyring {
    keys: BTreeMap<String, (Algorithm, Verifier)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|(id, (alg, _))| (id, alg.name())))
            .finish()
    }
}

impl Keyring {
    /// An empty keyring: every signed record has an unknown key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an HMAC-SHA256 key with the shared `secret`.
    pub fn add_hmac(&mut self, id: &str, secret: &[u8]) -> Result<(), KeyError> {
        check_id(id)?;
        if secret.len() < MIN_HMAC_SECRET {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        self.keys
            .insert(id.to_owned(), (Algorithm::HmacSha256, Verifier::Hmac(key)));
        Ok(())
    }

    /// Adds an Ed25519 public key, given as the base64 of its 32 bytes.
    pub fn add_ed25519(&mut self, id: &str, public_key: &str) -> Result<(), KeyError> {
        check_id(id)?;
        let public = decode_key(public_key, "public key")?;
        self.keys.insert(
            id.to_owned(),
            (Algorithm::Ed25519, Verifier::Ed25519(public.to_vec())),
        );
        Ok(())
    }

    /// The configured key ids and their algorithms.
    pub fn keys(&self) -> impl Iterator<Item = (&str, Algorithm)> {
        self.keys.iter().map(|(id, (alg, _))| (id.as_str(), *alg))
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies the signature of a record with these `key`, `value` and `headers`.
    pub fn verify(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Publisher {
        let Some((_, header)) = headers.iter().find(|(name, _)| *name == HEADER) else {
            return Publisher::unsigned();
        };
        let Some(signature) = std::str::from_utf8(header).ok().and_then(Signature::parse) else {
            return Publisher::not_verified(Status::Malformed, None);
        };
        let claimed = Some(signature.key_id.as_str());
        let Some((_, verifier)) = self.keys.get(&signature.key_id) else {
            return Publisher::not_verified(Status::UnknownKey, claimed);
        };
        if !verifier.verify(&signed_bytes(key, value, headers), &signature.bytes) {
            return Publisher::not_verified(Status::BadSignature, claimed);
        }
        Publisher {
            verified: true,
            key_id: Some(signature.key_id.clone()),
            status: Status::Verified,
            claimed_key_id: Some(signature.key_id),
        }
    }
}

fn check_id(id: &str) -> Result<(), KeyError> {
    if valid_key_id(id) {
        Ok(())
    } else {
        Err(KeyError::BadId(id.to_owned()))
    }
}

fn decode_key(text: &str, what: &'static str) -> Result<[u8; ED25519_KEY_LEN], KeyError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; ED25519_KEY_LEN]>::try_from(bytes).ok())
        .ok_or(KeyError::BadEd25519(what))
}

/// A publisher's key, to sign records (`reflex sign`, tests).
pub enum SigningKey {
    /// A shared HMAC-SHA256 secret.
    Hmac(ring::hmac::Key),
    /// An Ed25519 key pair.
    Ed25519(ring::signature::Ed25519KeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hmac(_) => "SigningKey(hmac-sha256, redacted)",
            Self::Ed25519(_) => "SigningKey(ed25519, redacted)",
        })
    }
}

impl SigningKey {
    /// An HMAC-SHA256 key with the shared `secret`.
    pub fn hmac(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        Ok(Self::Hmac(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            secret,
        )))
    }

    /// An Ed25519 key from its private seed, the base64 of 32 bytes.
    pub fn ed25519(seed: &str) -> Result<Self, KeyError> {
        let seed = decode_key(seed, "private key seed")?;
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map(Self::Ed25519)
            .map_err(|_| KeyError::BadEd25519("private key seed"))
    }

    /// A new Ed25519 private key seed (base64), from the system's random source.
    pub fn generate_ed25519_seed() -> Result<String, KeyError> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; ED25519_KEY_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(seed))
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hmac(_) => Algorithm::HmacSha256,
            Self::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The Ed25519 public key (base64), for `[publishers.<id>] public_key`.
    pub fn public_key(&self) -> Option<String> {
        match self {
            Self::Hmac(_) => None,
            Self::Ed25519(pair) => {
                Some(base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref()))
            }
        }
    }

    /// The signature of a record with these `key`, `value` and `headers` under `key_id`.
    pub fn sign(
        &self,
        key_id: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<Signature, KeyError> {
        check_id(key_id)?;
        let message = signed_bytes(key, value, headers);
        let bytes = match self {
            Self::Hmac(k) => ring::hmac::sign(k, &message).as_ref().to_vec(),
            Self::Ed25519(pair) => pair.sign(&message).as_ref().to_vec(),
        };
        Ok(Signature {
            key_id: key_id.to_owned(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-desk";

    fn signed(
        key: &SigningKey,
        id: &str,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Vec<(String, Vec<u8>)> {
        let sig = key
            .sign(id, Some(b"k1"), Some(value), headers)
            .expect("sign");
        let mut out: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
            .collect();
        out.push((HEADER.to_owned(), sig.to_string().into_bytes()));
        out
    }

    fn borrow(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect()
    }

    fn keyring(public: &str) -> Keyring {
        let mut ring = Keyring::new();
        ring.add_hmac("desk", SECRET).expect("hmac key");
        ring.add_ed25519("ledger", public).expect("ed25519 key");
        ring
    }

    #[test]
    fn the_signed_bytes_are_the_documented_layout() {
        let headers: [(&str, &[u8]); 4] = [
            ("ce_type", b"t"),
            ("traceparent", b"ignored"),
            ("content-type", b"application/json"),
            ("ce_id", b"1"),
        ];
        let mut want = b"reflex publisher-signature v1\n".to_vec();
        want.extend_from_slice(&[0, 0, 0, 1, b'k', 0, 0, 0, 2, b'{', b'}', 0, 0, 0, 3]);
        for (n, v) in [
            ("ce_id", "1"),
            ("ce_type", "t"),
            ("content-type", "application/json"),
        ] {
            want.extend_from_slice(&(n.len() as u32).to_be_bytes());
            want.extend_from_slice(n.as_bytes());
            want.extend_from_slice(&(v.len() as u32).to_be_bytes());
            want.extend_from_slice(v.as_bytes());
        }
        assert_eq!(signed_bytes(Some(b"k"), Some(b"{}"), &headers), want);
        assert_eq!(
            signed_bytes(None, None, &[]),
            signed_bytes(Some(b""), Some(b""), &[]),
            "absent is empty"
        );
    }

    #[test]
    fn signed_records_verify_and_any_change_does_not() {
        let seed = SigningKey::generate_ed25519_seed().expect("seed");
        let ed = SigningKey::ed25519(&seed).expect("ed25519");
        let ring = keyring(&ed.public_key().expect("public"));
        let hmac = SigningKey::hmac(SECRET).expect("hmac");
        let value = br#"{"id":"r-1","amount":20}"#;
        let ce: [(&str, &[u8]); 1] = [("ce_source", b"/support/desk")];

        for (key, id) in [(&hmac, "desk"), (&ed, "ledger")] {
            let headers = signed(key, id, value, &ce);
            let got = ring.verify(Some(b"k1"), Some(value), &borrow(&headers));
            assert_eq!(got.status, Status::Verified, "{id}");
            assert!(got.verified);
            assert_eq!(got.key_id.as_deref(), Some(id));

            let tampered = br#"{"id":"r-1","amount":2000}"#;
            let got = ring.verify(Some(b"k1"), Some(tampered), &borrow(&headers));
            assert_eq!(got.status, Status::BadSignature, "{id}: value changed");
            assert_eq!((got.verified, got.key_id), (false, None));
            assert_eq!(got.claimed_key_id.as_deref(), Some(id));

            let got = ring.verify(Some(b"k2"), Some(value), &borrow(&headers));
            assert_eq!(got.status, Status::BadSignature, "{id}: key changed");

            let mut moved = headers.clone();
            moved[0].1 = b"/shop/web".to_vec();
            let got = ring.verify(Some(b"k1"), Some(value), &borrow(&moved));
            assert_eq!(got.status, Status::BadSignature, "{id}: ce_ header changed");

            let mut extra = headers.clone();
            extra.push(("traceparent".to_owned(), b"00-ab".to_vec()));
            extra.push(("reflex_retry_round".to_owned(), b"1".to_vec()));
            let got = ring.verify(Some(b"k1"), Some(value), &borrow(&extra));
            assert_eq!(
                got.status,
                Status::Verified,
                "{id}: other headers are not signed"
            );
        }

        // The desk's HMAC signature under the ledger's id: the ledger's key does not verify it.
        let forged = hmac
            .sign("ledger", Some(b"k1"), Some(value), &ce)
            .expect("sign");
        let mut headers = borrow(&[]);
        headers.extend(ce);
        let text = forged.to_string();
        headers.push((HEADER, text.as_bytes()));
        let got = ring.verify(Some(b"k1"), Some(value), &headers);
        assert_eq!(got.status, Status::BadSignature);
    }

    #[test]
    fn unsigned_unknown_and_malformed_are_told_apart() {
        let seed = SigningKey::generate_ed25519_seed().expect("seed");
        let ed = SigningKey::ed25519(&seed).expect("ed25519");
        let ring = keyring(&ed.public_key().expect("public"));
        assert_eq!(ring.verify(None, Some(b"{}"), &[]), Publisher::unsigned());
        let other = SigningKey::hmac(SECRET).expect("hmac");
        let sig = other
            .sign("nobody", None, Some(b"{}"), &[])
            .expect("sign")
            .to_string();
        let got = ring.verify(None, Some(b"{}"), &[(HEADER, sig.as_bytes())]);
        assert_eq!(got.status, Status::UnknownKey);
        assert_eq!(got.claimed_key_id.as_deref(), Some("nobody"));
        for bad in [
            "",
            "keyid=desk",
            "sig=AAAA",
            "keyid=desk;sig=not base64!",
            "keyid=desk;sig=AAAA;alg=none",
            "keyid=desk;keyid=ledger;sig=AAAA",
            "keyid=de sk;sig=AAAA",
        ] {
            let got = ring.verify(None, Some(b"{}"), &[(HEADER, bad.as_bytes())]);
            assert_eq!(got.status, Status::Malformed, "{bad}");
        }
        let got = ring.verify(None, Some(b"{}"), &[(HEADER, b"\xff")]);
        assert_eq!(got.status, Status::Malformed);
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        let mut ring = Keyring::new();
        assert_eq!(
            ring.add_hmac("desk", b"short"),
            Err(KeyError::ShortSecret(5))
        );
        assert_eq!(
            ring.add_ed25519("ledger", "AAAA"),
            Err(KeyError::BadEd25519("public key"))
        );
        assert!(matches!(
            ring.add_hmac("a;b", SECRET),
            Err(KeyError::BadId(_))
        ));
        ring.add_hmac("desk", SECRET).expect("hmac");
        let shown = format!("{ring:?}");
        assert_eq!(shown, r#"{"desk": "hmac-sha256"}"#);
        let key = SigningKey::hmac(SECRET).expect("hmac");
        assert!(!format!("{key:?}").contains("0123"));
        let sig = Signature::parse(" keyid=desk ; sig=AAEC ").expect("parse");
        assert_eq!(sig.bytes, [0, 1, 2]);
        assert_eq!(sig.to_string(), "keyid=desk;sig=AAEC");
    }
}

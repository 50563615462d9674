//! `reflex policy bundle build`: the policy directory as an OPA-format bundle (see
//! [`crate::policy::bundle`]), compiled first so a bundle workers would refuse is never written.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Report;
use crate::config::PolicySettings;
use crate::policy::bundle::{self, sign, Manifest};
use crate::policy::PolicySet;
use crate::secret::SecretRef;

/// How to build a bundle.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The policy directory.
    pub dir: PathBuf,
    /// The bundle file to write.
    pub output: PathBuf,
    /// The manifest revision; empty: the content hash of the policy files.
    pub revision: String,
    /// The manifest roots; empty: no roots (the bundle owns all of `data`).
    pub roots: Vec<String>,
    /// The key to sign with (`env:VAR` or `file:PATH`).
    pub signing_key: Option<SecretRef>,
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// The key id written into the signature.
    pub key_id: String,
}

/// Why a bundle was not built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The policy set does not compile.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The signing key is not usable.
    #[error("--signing-key: {0}")]
    Key(String),
    /// Writing it failed.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    /// The policy directory.
    pub dir: String,
    /// The bundle.
    #[serde(flatten)]
    pub built: bundle::Built,
}

impl Report for BundleReport {}

impl fmt::Display for BundleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}: revision {}, {} files, {}",
            self.dir,
            self.built.output.display(),
            self.built.revision,
            self.built.files.len(),
            if self.built.signed {
                "signed"
            } else {
                "unsigned"
            }
        )
    }
}

/// Compiles `options.dir` as a worker would, then writes the bundle.
pub fn build(
    options: &BuildOptions,
    settings: &PolicySettings,
    base: &Path,
) -> Result<BundleReport, BuildError> {
    let set = PolicySet::load(&options.dir, &settings.entry, settings.timeout)?
        .with_redaction(&settings.redact)?;
    let key = match &options.signing_key {
        None => None,
        Some(reference) => {
            let alg: sign::Algorithm = options
                .algorithm
                .parse()
                .map_err(|e: sign::SignatureError| BuildError::Key(e.to_string()))?;
            let secret = reference
                .resolve("--signing-key", base)
                .map_err(|e| BuildError::Key(e.to_string()))?;
            Some(
                sign::SigningKey::new(alg, &secret, &options.key_id)
                    .map_err(|e| BuildError::Key(e.to_string()))?,
            )
        }
    };
    let manifest = Manifest {
        revision: if options.revision.is_empty() {
            set.revision().to_owned()
        } else {
            options.revision.clone()
        },
        roots: (!options.roots.is_empty()).then(|| options.roots.clone()),
        rego_version: Some(1),
        metadata: None,
    };
    let built = bundle::build(&options.dir, &set, &manifest, key.as_ref(), &options.output)?;
    Ok(BundleReport {
        dir: options.dir.display().to_string(),
        built,
    })
}

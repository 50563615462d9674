//! Secrets: passwords, tokens and keys are named in the configuration by a reference,
//! `env:VAR` or `file:PATH`, never written inline; the value read is held by [`Secret`], whose
//! `Debug` shows only the reference, so no log line, error or report can print it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a secret is read from: `env:VAR` or `file:PATH` (a relative path is relative to the
/// configuration file's directory).
///
/// Parsing from configuration never fails: a value that is not a reference becomes
/// [`SecretRef::Inline`], which forgets the value and is refused when the secret is read, so
/// no parser message can quote an inline secret.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file; one trailing line break is not part of the secret.
    File(PathBuf),
    /// A value written inline (not kept); reading it is an error.
    Inline,
}

/// A value given where a secret reference is expected. The message never repeats the value,
/// which may be the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a secret must be a reference, `env:VAR` or `file:PATH`; inline values are not accepted")]
pub struct NotAReference;

impl From<String> for SecretRef {
    fn from(text: String) -> Self {
        text.parse().unwrap_or(Self::Inline)
    }
}

impl std::str::FromStr for SecretRef {
    type Err = NotAReference;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(var) = text.strip_prefix("env:") {
            if !var.is_empty() && !var.contains(['=', '\0']) {
                return Ok(Self::Env(var.to_owned()));
            }
        } else if let Some(path) = text.strip_prefix("file:") {
            if !path.is_empty() {
                return Ok(Self::File(PathBuf::from(path)));
            }
        }
        Err(NotAReference)
    }
}

impl From<SecretRef> for String {
    fn from(reference: SecretRef) -> Self {
        reference.to_string()
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(var) => write!(f, "env:{var}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Inline => f.write_str("(an inline value)"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Why a secret could not be read. Messages name the key and the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The configuration holds the secret itself.
    #[error("{key}: a secret must be a reference, `env:VAR` or `file:PATH`; inline values are not accepted")]
    Inline {
        /// The configuration key.
        key: String,
    },
    /// The environment variable is not set (or not Unicode).
    #[error("{key} = \"{reference}\": the environment variable is not set")]
    MissingEnv {
        /// The configuration key.
        key: String,
        /// The reference.
        reference: SecretRef,
    },
    /// The file could not be read.
    #[error("{key} = \"{reference}\": cannot read {path}: {source}")]
    File {
        /// The configuration key.
        key: String,
        /// The reference.
        reference: SecretRef,
        /// The file, resolved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The variable or file is empty.
    #[error("{key} = \"{reference}\": the secret is empty")]
    Empty {
        /// The configuration key.
        key: String,
        /// The reference.
        reference: SecretRef,
    },
}

impl SecretRef {
    /// Reads the secret for configuration key `key`; `base` resolves relative file paths.
    pub fn resolve(&self, key: &str, base: &Path) -> Result<Secret, SecretError> {
        let value = match self {
            Self::Inline => {
                return Err(SecretError::Inline {
                    key: key.to_owned(),
                })
            }
            Self::Env(var) => std::env::var(var).map_err(|_| SecretError::MissingEnv {
                key: key.to_owned(),
                reference: self.clone(),
            })?,
            Self::File(path) => {
                let path = base.join(path);
                let mut text =
                    std::fs::read_to_string(&path).map_err(|source| SecretError::File {
                        key: key.to_owned(),
                        reference: self.clone(),
                        path: path.clone(),
                        source,
                    })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty {
                key: key.to_owned(),
                reference: self.clone(),
            });
        }
        Ok(Secret {
            value,
            reference: self.clone(),
        })
    }
}

/// A secret's value with the reference it was read from. `Debug` shows the reference only;
/// there is no `Display`: the value leaves only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    reference: SecretRef,
}

impl Secret {
    /// The value, for the one place that hands it to a client library.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where it was read from.
    pub fn reference(&self) -> &SecretRef {
        &self.reference
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, redacted)", self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_and_refuses_inline_values() {
        assert_eq!(
            "env:KAFKA_PASSWORD".parse(),
            Ok(SecretRef::Env("KAFKA_PASSWORD".into()))
        );
        assert_eq!(
            "file:/run/secrets/kafka".parse(),
            Ok(SecretRef::File("/run/secrets/kafka".into()))
        );
        for inline in ["hunter2", "env:", "file:", "ENV:X", ""] {
            assert_eq!(inline.parse::<SecretRef>(), Err(NotAReference), "{inline}");
        }
        assert!(!NotAReference.to_string().contains("hunter2"));
        let inline = SecretRef::from("hunter2".to_owned());
        assert_eq!(inline, SecretRef::Inline);
        let err = inline
            .resolve("kafka.security.password", Path::new("."))
            .expect_err("inline");
        assert_eq!(
            err.to_string(),
            "kafka.security.password: a secret must be a reference, `env:VAR` or `file:PATH`; inline values are not accepted"
        );
    }

    #[test]
    fn reads_a_file_without_its_line_break_and_debug_hides_the_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), "s3cr3t-value\n").expect("write");
        let secret = SecretRef::File("pw".into())
            .resolve("kafka.security.password", dir.path())
            .expect("readable");
        assert_eq!(secret.expose(), "s3cr3t-value");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("file:pw"), "{shown}");
    }

    #[test]
    fn errors_name_the_key_and_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = SecretRef::Env("REFLEX_TEST_SURELY_UNSET_VARIABLE".into())
            .resolve("registry.password", dir.path())
            .expect_err("unset");
        assert_eq!(
            missing.to_string(),
            "registry.password = \"env:REFLEX_TEST_SURELY_UNSET_VARIABLE\": the environment variable is not set"
        );
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        let empty = SecretRef::File("empty".into())
            .resolve("k", dir.path())
            .expect_err("empty");
        assert!(matches!(empty, SecretError::Empty { .. }), "{empty}");
    }
}

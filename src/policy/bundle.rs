//! OPA-format policy bundles: a gzipped tar of `*.rego` modules, `data.json` (or `data.yaml`)
//! documents, a `.manifest` (`{"revision", "roots"}`) and optionally `.signatures.json`.
//!
//! `reflex policy bundle build` writes one from a policy directory ([`build`]); workers configured
//! with `[policy.bundle] url` read one ([`Bundle::read`]) from a file, an HTTP server or S3
//! ([`fetch`]), verify its signature when a key is configured ([`sign`]), and compile it into the
//! [`super::PolicySet`] that decides, whose revision is the manifest's. Bundles built by
//! `opa build` load the same way: a `data.json` at `a/b/data.json` is the document `data.a.b`, as
//! in OPA.

pub mod fetch;
pub mod sign;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::files::{PolicyFile, PolicyFiles};
use sign::{SignatureError, SigningKey, VerificationKey};

/// The largest bundle read, unpacked: a guard against a decompression bomb.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

/// The signature file's name.
pub const SIGNATURES: &str = ".signatures.json";

/// The manifest's name.
pub const MANIFEST: &str = ".manifest";

/// Why a bundle could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a gzipped tar, or a file in it cannot be read.
    #[error("not a readable bundle (a gzipped tar): {0}")]
    Archive(String),
    /// Larger than [`MAX_BUNDLE_BYTES`] unpacked.
    #[error("the bundle unpacks to more than {} MiB", MAX_BUNDLE_BYTES >> 20)]
    TooLarge,
    /// A file in the bundle is not what its name says.
    #[error("{name} in the bundle is not usable: {why}")]
    File {
        /// The path in the bundle.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The manifest asks for Rego v0.
    #[error(".manifest has rego_version {0}: reflex reads Rego v1 only (rebuild with `opa build` of OPA 1.x)")]
    RegoVersion(i64),
    /// Verification is configured and the bundle carries no signature.
    #[error("the bundle is not signed (no .signatures.json) and [policy.bundle] verification_key is set")]
    NotSigned,
    /// The signature does not hold.
    #[error("signature refused: {0}")]
    Signature(#[from] SignatureError),
    /// A package or data document lies outside the manifest's roots.
    #[error("{what} is outside the bundle's roots ({roots}): OPA refuses such a bundle too; add its root to the manifest")]
    Root {
        /// The package (`data.x.y`) or data path.
        what: String,
        /// The manifest's roots.
        roots: String,
    },
    /// The bundle could not be fetched.
    #[error("cannot fetch {url}: {why}")]
    Fetch {
        /// Where from.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The bundle URL is not one reflex reads.
    #[error("policy bundle url \"{0}\" is not usable: use file:///path/bundle.tar.gz, http(s)://host/path or s3://bucket/key")]
    Url(String),
    /// A local file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// `.manifest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Manifest {
    /// The revision the bundle's author gave it.
    #[serde(default)]
    pub revision: String,
    /// The paths under `data` the bundle owns (absent: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<Vec<String>>,
    /// The Rego version of its modules (absent: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego_version: Option<i64>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A bundle read and verified.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its manifest (default when it has none).
    pub manifest: Manifest,
    /// Every file but the signature, by path (no leading `/`), in archive order.
    pub files: Vec<(String, Vec<u8>)>,
    /// Whether its signature was verified.
    pub verified: bool,
}

/// A path in a bundle without a leading `/` or `./`.
fn clean(name: &str) -> String {
    let mut name = name;
    loop {
        if let Some(rest) = name.strip_prefix("./") {
            name = rest;
        } else if let Some(rest) = name.strip_prefix('/') {
            name = rest;
        } else {
            return name.to_owned();
        }
    }
}

impl Bundle {
    /// Unpacks `bytes`; with a key, refuses it unless its signature covers exactly its files.
    pub fn read(bytes: &[u8], key: Option<&VerificationKey>) -> Result<Self, BundleError> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let archive_err = |e: std::io::Error| BundleError::Archive(e.to_string());
        let mut files = Vec::new();
        let mut signatures = None;
        let mut total = 0u64;
        for entry in archive.entries().map_err(archive_err)? {
            let entry = entry.map_err(archive_err)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = clean(&entry.path().map_err(archive_err)?.to_string_lossy());
            let mut content = Vec::new();
            entry
                .take(MAX_BUNDLE_BYTES + 1 - total)
                .read_to_end(&mut content)
                .map_err(archive_err)?;
            total += content.len() as u64;
            if total > MAX_BUNDLE_BYTES {
                return Err(BundleError::TooLarge);
            }
            if name == SIGNATURES {
                signatures = Some(content);
            } else {
                files.push((name, content));
            }
        }
        let verified = match (key, signatures) {
            (None, _) => false,
            (Some(_), None) => return Err(BundleError::NotSigned),
            (Some(key), Some(sigs)) => {
                verify_files(key, &sigs, &files)?;
                true
            }
        };
        let manifest = match files.iter().find(|(n, _)| n == MANIFEST) {
            Some((_, text)) => serde_json::from_slice(text).map_err(|e| BundleError::File {
                name: MANIFEST.into(),
                why: e.to_string(),
            })?,
            None => Manifest::default(),
        };
        if let Some(v) = manifest.rego_version.filter(|v| *v != 1) {
            return Err(BundleError::RegoVersion(v));
        }
        Ok(Self {
            manifest,
            files,
            verified,
        })
    }

    /// The modules and data documents as a policy set's files; `origin` (the URL) prefixes
    /// their paths in messages. A `data.json` under `a/b/` becomes `{"a": {"b": …}}`.
    pub fn policy_files(&self, origin: &str) -> Result<PolicyFiles, BundleError> {
        let mut files = PolicyFiles::default();
        for (name, bytes) in &self.files {
            let path = PathBuf::from(format!("{origin}#{name}"));
            let base = name.rsplit('/').next().unwrap_or(name);
            let bad = |why: String| BundleError::File {
                name: name.clone(),
                why,
            };
            // Test modules (`*_test.rego`, anything under `tests/`) never decide, as in `dir`.
            let is_test = base.ends_with("_test.rego")
                || name.starts_with("tests/")
                || name.contains("/tests/");
            if base.ends_with(".rego") && is_test {
                continue;
            }
            if base.ends_with(".rego") {
                let text =
                    String::from_utf8(bytes.clone()).map_err(|_| bad("not UTF-8 text".into()))?;
                files.modules.push(PolicyFile {
                    rel: name.clone(),
                    path,
                    text,
                });
            } else if base == "data.json" || base == "data.yaml" {
                let mut doc: Value = if base == "data.json" {
                    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?
                } else {
                    serde_yaml_ng::from_slice(bytes).map_err(|e| bad(e.to_string()))?
                };
                if !doc.is_object() {
                    return Err(bad("the top level is not an object".into()));
                }
                let dir = name.strip_suffix(base).unwrap_or("");
                for key in dir.split('/').filter(|k| !k.is_empty()).rev() {
                    doc = serde_json::json!({ key: doc });
                }
                files.data.push(PolicyFile {
                    rel: name.clone(),
                    path,
                    text: doc.to_string(),
                });
            }
        }
        Ok(files)
    }
}

impl Bundle {
    /// Refuses a module package (`data.x.y`, from `packages`) or a data document outside the
    /// manifest's roots, as OPA does. No roots (or the root `""`) means all of `data`.
    pub fn check_roots(&self, packages: &[String]) -> Result<(), BundleError> {
        let Some(roots) = self.manifest.roots.as_ref() else {
            return Ok(());
        };
        let roots: Vec<&str> = roots.iter().map(|r| r.trim_matches('/')).collect();
        let under = |path: &str| {
            roots
                .iter()
                .any(|r| r.is_empty() || path == *r || path.starts_with(&format!("{r}/")))
        };
        let outside = |what: String| BundleError::Root {
            what,
            roots: roots
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", "),
        };
        for package in packages {
            let path = package.trim_start_matches("data.").replace('.', "/");
            if !under(&path) {
                return Err(outside(package.clone()));
            }
        }
        for (name, bytes) in &self.files {
            let base = name.rsplit('/').next().unwrap_or(name);
            if base != "data.json" {
                continue;
            }
            let dir = name.strip_suffix(base).unwrap_or("").trim_matches('/');
            let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else {
                continue;
            };
            for key in doc.keys() {
                let path = if dir.is_empty() {
                    key.clone()
                } else {
                    format!("{dir}/{key}")
                };
                // A document may also hold a root deeper down (`{"a": {"b": …}}` for root a/b).
                let holds_root = roots.iter().any(|r| r.starts_with(&format!("{path}/")));
                if !under(&path) && !holds_root {
                    return Err(outside(format!("data.{}", path.replace('/', "."))));
                }
            }
        }
        Ok(())
    }
}

/// Checks the signature over `files`: every file signed with a matching hash, every signed
/// file present.
fn verify_files(
    key: &VerificationKey,
    signatures: &[u8],
    files: &[(String, Vec<u8>)],
) -> Result<(), BundleError> {
    let mut signed: std::collections::HashMap<String, sign::FileInfo> = key
        .verify(signatures)?
        .into_iter()
        .map(|f| (clean(&f.name), f))
        .collect();
    for (name, bytes) in files {
        let Some(info) = signed.remove(name) else {
            return Err(SignatureError::Unsigned(name.clone()).into());
        };
        if info.algorithm != "SHA-256" {
            return Err(BundleError::File {
                name: name.clone(),
                why: format!("signed with {}; reflex checks SHA-256 only", info.algorithm),
            });
        }
        let hash = sign::file_hash(name, bytes).map_err(|why| BundleError::File {
            name: name.clone(),
            why,
        })?;
        if hash != info.hash {
            return Err(SignatureError::Digest(name.clone()).into());
        }
    }
    if let Some(name) = signed.into_keys().min() {
        return Err(SignatureError::Missing(name).into());
    }
    Ok(())
}

/// What `reflex policy bundle build` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    /// The bundle file.
    pub output: PathBuf,
    /// Its manifest revision.
    pub revision: String,
    /// Its files (signature included).
    pub files: Vec<String>,
    /// Whether it is signed.
    pub signed: bool,
}

/// Writes the production modules of `dir` and its data (every data file merged, as workers see
/// it) as a bundle with `manifest` to `output`, signed with `key` if given. The set is compiled
/// first (`entry`, `timeout`), so a bundle that does not compile is never written.
pub fn build(
    dir: &Path,
    set: &super::PolicySet,
    manifest: &Manifest,
    key: Option<&SigningKey>,
    output: &Path,
) -> Result<Built, BundleError> {
    let policy = PolicyFiles::read(dir).map_err(|e| BundleError::Archive(e.to_string()))?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut data = set.data();
    if data.as_object().is_none() {
        data = Value::Object(serde_json::Map::new());
    }
    files.push(("data.json".into(), data.to_string().into_bytes()));
    for module in &policy.modules {
        files.push((module.rel.clone(), module.text.clone().into_bytes()));
    }
    let manifest_json = serde_json::to_vec(manifest).map_err(|e| BundleError::File {
        name: MANIFEST.into(),
        why: e.to_string(),
    })?;
    files.push((MANIFEST.into(), manifest_json));
    // A bundle workers (and OPA) would refuse is not written.
    Bundle {
        manifest: manifest.clone(),
        files: files.clone(),
        verified: false,
    }
    .check_roots(&set.packages())?;
    if let Some(key) = key {
        let sigs = key.sign(&files)?;
        files.push((SIGNATURES.into(), sigs));
    }
    let io = |source| BundleError::Io {
        path: output.to_owned(),
        source,
    };
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, bytes.as_slice())
            .map_err(io)?;
    }
    let bytes = tar.into_inner().and_then(|gz| gz.finish()).map_err(io)?;
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // Written whole, then renamed: a bundle server never serves half a file.
    let tmp = output.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, output).map_err(io)?;
    Ok(Built {
        output: output.to_owned(),
        revision: manifest.revision.clone(),
        files: files.into_iter().map(|(n, _)| n).collect(),
        signed: key.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;
    use crate::secret::SecretRef;
    use std::time::Duration;

    const POLICY: &str = "package reflex\ndecision := {\"allow\": input.n < data.limits.max}\n";

    fn hmac(var: &str) -> crate::secret::Secret {
        std::env::set_var(var, "bundle-test-hmac");
        SecretRef::Env(var.into())
            .resolve("k", Path::new("."))
            .expect("secret")
    }

    fn built(signed: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(policies.join("tests")).expect("mkdir");
        std::fs::write(policies.join("p.rego"), POLICY).expect("write");
        std::fs::write(policies.join("limits.json"), r#"{"limits":{"max":10}}"#).expect("write");
        std::fs::write(policies.join("tests/t.rego"), "package t\n").expect("write");
        let set = PolicySet::load(&policies, "data.reflex.decision", Duration::from_secs(1))
            .expect("loads");
        let key = signed.then(|| {
            sign::SigningKey::new(sign::Algorithm::HS256, &hmac("REFLEX_TEST_BUILD_KEY"), "")
                .expect("key")
        });
        let manifest = Manifest {
            revision: "r7".into(),
            roots: Some(vec!["reflex".into(), "limits".into()]),
            ..Manifest::default()
        };
        let out = dir.path().join("out/bundle.tar.gz");
        let report = build(&policies, &set, &manifest, key.as_ref(), &out).expect("builds");
        assert_eq!(report.revision, "r7");
        assert!(
            !report.files.iter().any(|f| f.contains("tests/")),
            "{report:?}"
        );
        (dir, out)
    }

    #[test]
    fn a_built_bundle_reads_back_and_decides_with_its_revision() {
        let (_dir, out) = built(false);
        let bytes = std::fs::read(&out).expect("read");
        let bundle = Bundle::read(&bytes, None).expect("reads");
        assert_eq!(bundle.manifest.revision, "r7");
        let set = PolicySet::from_bundle(
            &bundle,
            "file:///b",
            "data.reflex.decision",
            Duration::from_secs(1),
        )
        .expect("compiles");
        assert_eq!(set.revision(), "r7");
        let d = set
            .evaluator()
            .decide(regorus::Value::from(serde_json::json!({"n": 3})));
        assert!(d.allow, "{d:?}");
    }

    #[test]
    fn a_signed_bundle_verifies_and_a_tampered_one_is_refused() {
        let (_dir, out) = built(true);
        let bytes = std::fs::read(&out).expect("read");
        let key = VerificationKey::new(sign::Algorithm::HS256, &hmac("REFLEX_TEST_READ_KEY"), "")
            .expect("key");
        assert!(Bundle::read(&bytes, Some(&key)).expect("verifies").verified);

        // Rewrite the archive with one changed data value, keeping the signature.
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut out = tar::Builder::new(gz);
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read");
            if name == "data.json" {
                content = br#"{"limits":{"max":1000}}"#.to_vec();
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            out.append_data(&mut header, &name, content.as_slice())
                .expect("append");
        }
        let tampered = out.into_inner().and_then(|g| g.finish()).expect("finish");
        let err = Bundle::read(&tampered, Some(&key)).expect_err("tampered");
        assert!(err.to_string().contains("data.json"), "{err}");
        // Unsigned bundles are refused when a key is configured.
        let (_d, plain) = built(false);
        let err =
            Bundle::read(&std::fs::read(plain).expect("read"), Some(&key)).expect_err("unsigned");
        assert!(matches!(err, BundleError::NotSigned), "{err}");
        assert!(matches!(
            Bundle::read(b"not a bundle", None),
            Err(BundleError::Archive(_))
        ));
    }

    #[test]
    fn packages_and_data_outside_the_roots_are_refused() {
        let bundle = |roots: &[&str]| Bundle {
            manifest: Manifest {
                roots: Some(roots.iter().map(|r| (*r).to_owned()).collect()),
                ..Manifest::default()
            },
            files: vec![
                ("data.json".into(), br#"{"limits": {"max": 1}}"#.to_vec()),
                ("ext/data.json".into(), br#"{"x": 1}"#.to_vec()),
            ],
            verified: false,
        };
        let packages = ["data.reflex".to_owned(), "data.reflex.business".to_owned()];
        assert!(bundle(&["reflex", "limits", "ext"])
            .check_roots(&packages)
            .is_ok());
        assert!(bundle(&[""]).check_roots(&packages).is_ok());
        let err = bundle(&["reflex", "limits"])
            .check_roots(&packages)
            .expect_err("ext");
        assert!(err.to_string().contains("data.ext.x"), "{err}");
        let err = bundle(&["reflex/business", "limits", "ext"])
            .check_roots(&packages)
            .expect_err("package");
        assert!(
            err.to_string().starts_with("data.reflex is outside"),
            "{err}"
        );
    }

    #[test]
    fn nested_data_documents_sit_under_their_directory() {
        let bundle = Bundle {
            manifest: Manifest::default(),
            files: vec![
                ("a/b/data.json".into(), br#"{"x": 1}"#.to_vec()),
                ("/data.json".into(), br#"{"y": 2}"#.to_vec()),
                ("README.md".into(), b"ignored".to_vec()),
                ("x/p_test.rego".into(), b"package t\n".to_vec()),
                ("tests/helpers.rego".into(), b"package t\n".to_vec()),
            ],
            verified: false,
        };
        let files = bundle.policy_files("b").expect("files");
        assert_eq!(files.data[0].text, r#"{"a":{"b":{"x":1}}}"#);
        assert_eq!(files.data[1].text, r#"{"y":2}"#);
        assert!(files.modules.is_empty());
    }
}

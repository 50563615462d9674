//! Which files under `policies/` make up the policy set, and its revision.
//!
//! - `*.rego`: a production module, loaded into every worker's engine;
//! - `*.json`: a data file whose top-level object is merged into `data`;
//! - `*_test.rego` anywhere, and `*.rego` under `tests/`: test modules, loaded only by
//!   `reflex policy test`, so a test helper can never change a production decision;
//! - `tests/*.yaml` (or `.yml`): data-driven test cases;
//! - everything else, and every file or directory whose name starts with `.`, is ignored (editor
//!   swap files, Kubernetes ConfigMap internals).
//!
//! The revision is the SHA-256 of the production modules and data files (relative path and
//! content, sorted by path): editing a test does not change it, editing a rule or a limit does.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::PolicyError;

/// One file read from the policy directory.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// Path relative to the policy directory, with `/` separators.
    pub rel: String,
    /// The full path.
    pub path: PathBuf,
    /// Its content.
    pub text: String,
}

/// The classified content of a policy directory.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    /// Production Rego modules.
    pub modules: Vec<PolicyFile>,
    /// Data files.
    pub data: Vec<PolicyFile>,
    /// Rego test modules.
    pub tests: Vec<PolicyFile>,
    /// YAML test-case files (paths only).
    pub cases: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Module,
    Data,
    TestModule,
    Cases,
}

fn classify(rel: &str) -> Option<Kind> {
    let in_tests = rel.starts_with("tests/");
    let ext = rel.rsplit_once('.').map(|(_, e)| e)?;
    match ext {
        "rego" if in_tests || rel.ends_with("_test.rego") => Some(Kind::TestModule),
        "rego" => Some(Kind::Module),
        "yaml" | "yml" if in_tests => Some(Kind::Cases),
        "json" if !in_tests => Some(Kind::Data),
        _ => None,
    }
}

impl PolicyFiles {
    /// Reads and classifies every file under `dir`.
    pub fn read(dir: &Path) -> Result<Self, PolicyError> {
        let mut paths = Vec::new();
        collect(dir, &mut paths)?;
        paths.sort();
        let mut files = Self::default();
        for path in paths {
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let Some(kind) = classify(&rel) else {
                continue;
            };
            if kind == Kind::Cases {
                files.cases.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
                path: path.clone(),
                source,
            })?;
            let file = PolicyFile { rel, path, text };
            match kind {
                Kind::Module => files.modules.push(file),
                Kind::Data => files.data.push(file),
                Kind::TestModule => files.tests.push(file),
                Kind::Cases => {}
            }
        }
        Ok(files)
    }

    /// The content hash of the production modules and data files.
    pub fn revision(&self) -> String {
        let mut all: Vec<&PolicyFile> = self.modules.iter().chain(&self.data).collect();
        all.sort_by(|a, b| a.rel.cmp(&b.rel));
        let mut hasher = Sha256::new();
        for file in all {
            hasher.update(file.rel.as_bytes());
            hasher.update([0]);
            hasher.update(file.text.as_bytes());
            hasher.update([0]);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

/// The revision of the policy set in `dir`, without compiling it.
pub fn revision(dir: &Path) -> Result<String, PolicyError> {
    Ok(PolicyFiles::read(dir)?.revision())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| PolicyError::Read {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_production_test_and_ignored_files() {
        assert_eq!(classify("reflex.rego"), Some(Kind::Module));
        assert_eq!(classify("rules/sla.rego"), Some(Kind::Module));
        assert_eq!(classify("data/limits.json"), Some(Kind::Data));
        assert_eq!(classify("sla_test.rego"), Some(Kind::TestModule));
        assert_eq!(classify("tests/helpers.rego"), Some(Kind::TestModule));
        assert_eq!(classify("tests/decisions.yaml"), Some(Kind::Cases));
        assert_eq!(classify("tests/input.json"), None);
        assert_eq!(classify("README.md"), None);
        assert_eq!(classify("notes.yaml"), None);
        assert_eq!(classify("Makefile"), None);
    }

    #[test]
    fn revision_ignores_tests_and_hidden_files_but_not_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("p.rego", "package reflex\n");
        write("data/l.json", "{\"l\": 1}");
        let before = revision(dir.path()).expect("revision");
        write("p_test.rego", "package reflex\ntest_x if true\n");
        write("tests/cases.yaml", "cases: []\n");
        write(".p.rego.swp", "junk");
        write("README.md", "# policies\n");
        assert_eq!(revision(dir.path()).expect("revision"), before);
        write("data/l.json", "{\"l\": 2}");
        assert_ne!(revision(dir.path()).expect("revision"), before);
        let files = PolicyFiles::read(dir.path()).expect("read");
        assert_eq!(files.modules.len(), 1);
        assert_eq!(files.tests.len(), 1);
        assert_eq!(files.cases.len(), 1);
    }
}

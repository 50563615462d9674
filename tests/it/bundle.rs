//! Policy bundles across processes and with OPA: a bundle built by `opa build` loads in reflex
//! and one built by `reflex policy bundle build` runs in `opa run --bundle`, both signed with
//! RS256; three worker processes polling one bundle in the S3 store all switch to a new
//! revision, and a tampered bundle changes no decision.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::ObjectStore as _;
use reflex::policy::bundle::{self, sign, Bundle, Manifest};
use reflex::policy::PolicySet;
use reflex::secret::SecretRef;
use serde_json::{json, Value};

use crate::common::*;
use crate::lake::s3_endpoint;

fn opa() -> PathBuf {
    crate::opa::opa()
}

/// An RSA key pair made by openssl: (private key file, public key file).
fn rsa_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("rsa.pem");
    let public = dir.join("rsa.pub");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &private.display().to_string(),
    ]);
    run(&[
        "pkey",
        "-in",
        &private.display().to_string(),
        "-pubout",
        "-out",
        &public.display().to_string(),
    ]);
    (private, public)
}

fn verification_key(alg: sign::Algorithm, file: &Path) -> sign::VerificationKey {
    let secret = SecretRef::File(file.to_owned())
        .resolve("test", Path::new("."))
        .expect("key file");
    sign::VerificationKey::new(alg, &secret, "").expect("verification key")
}

/// `bundle` with `name` replaced by `content`, everything else (the signature too) kept.
fn tamper(bundle: &[u8], name: &str, content: &[u8]) -> Vec<u8> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut out = tar::Builder::new(gz);
    let mut replaced = false;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        if path.trim_start_matches('/') == name {
            bytes = content.to_vec();
            replaced = true;
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        out.append_data(&mut header, path.trim_start_matches('/'), bytes.as_slice())
            .expect("append");
    }
    assert!(replaced, "{name} is in the bundle");
    out.into_inner().and_then(|g| g.finish()).expect("finish")
}

#[test]
fn an_opa_built_bundle_loads_in_reflex_and_a_tampered_copy_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = rsa_pair(dir.path());
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("limits")).expect("mkdir");
    std::fs::write(
        src.join("reflex.rego"),
        "package reflex\n\ndecision := {\"allow\": input.n < data.limits.max, \"reasons\": [], \"obligations\": {}}\n",
    )
    .expect("write");
    std::fs::write(
        src.join("reflex_test.rego"),
        "package reflex\n\ntest_small if decision.allow with input as {\"n\": 1}\n",
    )
    .expect("write");
    std::fs::write(src.join("limits/data.json"), r#"{"max": 10}"#).expect("write");
    let out = Command::new(opa())
        .current_dir(&src)
        .args(["build", "-b", ".", "-o"])
        .arg(dir.path().join("opa.tar.gz"))
        .args([
            "--revision",
            "opa-r1",
            "--signing-alg",
            "RS256",
            "--signing-key",
        ])
        .arg(&private)
        .output()
        .expect("opa build runs");
    assert!(
        out.status.success(),
        "opa build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(dir.path().join("opa.tar.gz")).expect("bundle");

    let key = verification_key(sign::Algorithm::RS256, &public);
    let read = Bundle::read(&bytes, Some(&key)).expect("OPA's signature verifies in reflex");
    assert!(read.verified);
    let set = PolicySet::from_bundle(
        &read,
        "file:///opa.tar.gz",
        "data.reflex.decision",
        Duration::from_secs(5),
    )
    .expect("OPA's bundle compiles in reflex");
    assert_eq!(
        set.revision(),
        "opa-r1",
        "the manifest revision names the set"
    );
    assert_eq!(
        set.modules().len(),
        1,
        "the test module is not loaded: {:?}",
        set.modules()
    );
    let mut evaluator = set.evaluator();
    let decide = |ev: &mut reflex::policy::Evaluator, n: i64| {
        ev.decide(regorus::Value::from(json!({"n": n}))).allow
    };
    // `opa build` merged limits/data.json into the bundle's data.json as data.limits.
    assert!(decide(&mut evaluator, 3), "data.limits.max is 10");
    assert!(!decide(&mut evaluator, 30));

    let tampered = tamper(&bytes, "data.json", br#"{"limits": {"max": 100}}"#);
    let err = Bundle::read(&tampered, Some(&key)).expect_err("a changed data file is refused");
    assert!(err.to_string().contains("data.json"), "{err}");
    let (_, other_public) = rsa_pair(&dir.path().join("other").tap_mkdir());
    let err = Bundle::read(
        &bytes,
        Some(&verification_key(sign::Algorithm::RS256, &other_public)),
    )
    .expect_err("another key's bundle is refused");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn a_reflex_bundle_is_accepted_by_opa_run_with_its_signature_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = rsa_pair(dir.path());
    let bundle_file = dir.path().join("reflex.tar.gz");
    let out = Command::new(reflex_bin())
        .args(["--config"])
        .arg(repo().join("config/reflex.toml"))
        .args([
            "policy",
            "bundle",
            "build",
            "--revision",
            "reflex-r1",
            "--signing-alg",
            "RS256",
            "--json",
            "-o",
        ])
        .arg(&bundle_file)
        .arg("--signing-key")
        .arg(format!("file:{}", private.display()))
        .env("REFLEX_LOG", "warn")
        .output()
        .expect("reflex runs");
    assert!(
        out.status.success(),
        "reflex policy bundle build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["revision"], "reflex-r1");
    assert_eq!(report["signed"], true);

    let port = free_port();
    let mut server = Kill(
        Command::new(opa())
            .args([
                "run",
                "--server",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--bundle",
            ])
            .arg(&bundle_file)
            .arg("--verification-key")
            .arg(&public)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("opa runs"),
    );
    let server = &mut server.0;
    let client = http_get::json(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let bundles = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            let mut err = String::new();
            let _ = server.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("opa refused reflex's bundle ({status}): {err}");
        }
        if let Some(v) = client("/v1/data/system/bundles") {
            break v;
        }
        assert!(Instant::now() < deadline, "opa did not answer within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let revisions: Vec<&str> = bundles["result"]
        .as_object()
        .expect("bundles by name")
        .values()
        .filter_map(|b| b["manifest"]["revision"].as_str())
        .collect();
    assert_eq!(revisions, ["reflex-r1"], "{bundles}");
    // OPA decides with the bundle's data: the limits reflex merged into data.json.
    let set = PolicySet::load(
        &repo().join("policies"),
        "data.reflex.decision",
        Duration::from_secs(5),
    )
    .expect("policies load");
    let limits = client("/v1/data/limits").expect("data.limits");
    assert_eq!(limits["result"], set.data()["limits"]);
    let _ = server.kill();
    let _ = server.wait();

    // The same bundle with a changed module: OPA refuses it too.
    let bytes = std::fs::read(&bundle_file).expect("bundle");
    let tampered = dir.path().join("tampered.tar.gz");
    std::fs::write(
        &tampered,
        tamper(
            &bytes,
            "reflex.rego",
            b"package reflex\ndecision := {\"allow\": true}\n",
        ),
    )
    .expect("write");
    let out = Command::new(opa())
        .args([
            "run",
            "--server",
            "--addr",
            &format!("127.0.0.1:{}", free_port()),
            "--bundle",
        ])
        .arg(&tampered)
        .arg("--verification-key")
        .arg(&public)
        .output()
        .expect("opa runs");
    assert!(!out.status.success(), "opa must refuse a tampered bundle");
    // OPA prints its load error on standard output.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("reflex.rego: digest mismatch"), "{said}");
}

/// A child process killed when the test ends, passed or failed.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny blocking HTTP GET of JSON on 127.0.0.1 without another client crate.
mod http_get {
    use std::io::{Read as _, Write as _};

    pub fn json(port: u16) -> impl Fn(&str) -> Option<serde_json::Value> {
        move |path: &str| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            let (head, body) = text.split_once("\r\n\r\n")?;
            (head.split(' ').nth(1) == Some("200")).then_some(())?;
            serde_json::from_str(body).ok()
        }
    }
}

/// The S3 store the bundle is published to (the local s3s-fs, bucket `lake`).
fn store() -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("lake")
        .with_region("us-east-1")
        .with_endpoint(s3_endpoint())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_access_key_id(std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| "reflex".into()))
        .with_secret_access_key(
            std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| "reflex-secret".into()),
        )
        .build()
        .expect("S3 store")
}

/// The repository's policies as a bundle of `revision`, signed with the HMAC key in `key`.
fn repo_bundle(dir: &Path, revision: &str, key: &Path) -> Vec<u8> {
    let policies = repo().join("policies");
    let set = PolicySet::load(&policies, "data.reflex.decision", Duration::from_secs(5))
        .expect("policies load");
    let secret = SecretRef::File(key.to_owned())
        .resolve("key", Path::new("."))
        .expect("key");
    let signer = sign::SigningKey::new(sign::Algorithm::HS256, &secret, "").expect("signing key");
    let manifest = Manifest {
        revision: revision.to_owned(),
        ..Manifest::default()
    };
    let out = dir.join(format!("{revision}.tar.gz"));
    bundle::build(&policies, &set, &manifest, Some(&signer), &out).expect("bundle built");
    std::fs::read(out).expect("bundle")
}

fn spawn_worker(env: &TestEnv, id: &str, log: &Path) -> Child {
    Command::new(reflex_bin())
        .args(["run", "--role", "actions", "--worker-id", id])
        .env("REFLEX_CONFIG", &env.config_path)
        .env("REFLEX_LOG", "warn")
        .env_remove("REFLEX_TEST_BROKERS")
        .env(
            "AWS_ACCESS_KEY_ID",
            std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| "reflex".into()),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| "reflex-secret".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("reflex starts")
}

/// `reflex policy status --json` with the test's configuration.
fn policy_status(env: &TestEnv) -> serde_json::Value {
    let out = Command::new(reflex_bin())
        .args(["policy", "status", "--json"])
        .env("REFLEX_CONFIG", &env.config_path)
        .env_remove("REFLEX_TEST_BROKERS")
        .env(
            "AWS_ACCESS_KEY_ID",
            std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| "reflex".into()),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| "reflex-secret".into()),
        )
        .output()
        .expect("reflex policy status runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "policy status printed no JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Workers and revisions in the audit records: worker -> revisions it decided with.
fn revisions_by_worker(audit: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for records in audits_by_key(audit).values() {
        for r in records {
            if let (Some(w), Some(rev)) = (r["worker"].as_str(), r["policy_revision"].as_str()) {
                seen.entry(w.to_owned()).or_default().insert(rev.to_owned());
            }
        }
    }
    seen
}

/// Produces waves of orders until every worker in `workers` has decided with `revision`.
async fn until_all_decide_with(env: &TestEnv, workers: &[&str], revision: &str, wave: &mut usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records: Vec<Rec> = (0..24)
            .map(|n| {
                let id = format!("w{wave}-{n}");
                Rec::json(&format!("k-{n}"), &order(&id, "/shop/web", 10.0))
            })
            .collect();
        *wave += 1;
        produce(&env.events, &records).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let seen = revisions_by_worker(&env.audit);
        if workers
            .iter()
            .all(|w| seen.get(*w).is_some_and(|r| r.contains(revision)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every worker decided with {revision} within 120 s: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_polling_one_bundle_switch_revision_and_ignore_a_tampered_one() {
    let env = TestEnv::new(6);
    env.create_topics().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("bundle.key");
    std::fs::write(
        &key,
        "an HMAC key shared by the bundle builder and the workers\n",
    )
    .expect("key");
    let store = store();
    let object = object_store::path::Path::from(format!("{}/bundle.tar.gz", unique("bundles")));
    let publish = |bytes: Vec<u8>| {
        let store = store.clone();
        let object = object.clone();
        async move {
            store
                .put(&object, bytes.into())
                .await
                .expect("bundle published");
        }
    };
    publish(repo_bundle(dir.path(), "rev-1", &key)).await;

    env.use_policies(&repo().join("policies"), Duration::from_millis(300));
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = format!(
        "{text}\n[policy.bundle]\nurl = \"s3://lake/{object}\"\nverification_key = \"file:{key}\"\nalgorithm = \"HS256\"\n[lake.s3]\nendpoint = \"{endpoint}\"\n",
        key = key.display(),
        endpoint = s3_endpoint(),
    );
    std::fs::write(&env.config_path, text).expect("config");

    let ids = ["bundle-w1", "bundle-w2", "bundle-w3"];
    let logs: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.path().join(format!("{id}.log")))
        .collect();
    let _workers: Vec<Kill> = ids
        .iter()
        .zip(&logs)
        .map(|(id, log)| Kill(spawn_worker(&env, id, log)))
        .collect();
    let mut wave = 0;
    until_all_decide_with(&env, &ids, "rev-1", &mut wave).await;

    // A new revision: every worker picks it up from the store.
    publish(repo_bundle(dir.path(), "rev-2", &key)).await;
    until_all_decide_with(&env, &ids, "rev-2", &mut wave).await;

    // `reflex policy status` fetches and verifies the bundle as the workers do and sees them on it.
    let status = policy_status(&env);
    assert_eq!(status["revision"], "rev-2", "{status}");
    assert_eq!(status["verified"], true, "{status}");
    assert!(status["refused"].is_null(), "{status}");
    let on_rev2: BTreeSet<&str> = status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter(|w| w["revision"] == "rev-2")
        .filter_map(|w| w["worker"].as_str())
        .collect();
    assert!(
        ids.iter().all(|id| on_rev2.contains(id)),
        "every worker on rev-2: {status}"
    );

    // A tampered copy (a signed rev-3 with its data changed): every worker refuses it.
    let rev3 = repo_bundle(dir.path(), "rev-3", &key);
    publish(tamper(&rev3, "data.json", br#"{"limits": {}}"#)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !logs.iter().all(|log| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("refused")
    }) {
        assert!(
            Instant::now() < deadline,
            "not every worker refused the tampered bundle within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = policy_status(&env);
    let refused = status["refused"].as_str().unwrap_or_default();
    assert!(
        refused.contains("signature") || refused.contains("digest"),
        "policy status refuses the tampered bundle, naming the signature: {status}"
    );
    let records: Vec<Rec> = (0..24)
        .map(|n| {
            Rec::json(
                &format!("k-{n}"),
                &order(&format!("after-{n}"), "/shop/web", 10.0),
            )
        })
        .collect();
    produce(&env.events, &records).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut audits = audits_by_key(&env.audit);
    while (0..24).any(|n| !audits.contains_key(&format!("after-{n}"))) {
        assert!(
            Instant::now() < deadline,
            "the events after the tampered bundle were not all decided"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        audits = audits_by_key(&env.audit);
    }
    for n in 0..24 {
        for audit in &audits[&format!("after-{n}")] {
            assert_eq!(
                audit["policy_revision"], "rev-2",
                "the tampered bundle decided nothing: {audit}"
            );
        }
    }
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            text.contains("differs from the signed hash"),
            "the refusal names the tampering: {text}"
        );
    }
}

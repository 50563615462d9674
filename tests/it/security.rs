//! Secured connections end to end against the stack's secured listeners (`make up` starts
//! SASL_SSL with SCRAM-SHA-512 on 127.0.0.1:9094, mutual TLS on :9095 and SASL_SSL with
//! OAUTHBEARER on :9096, with a throw-away CA in `.stack/kafka/tls`): the actions and lake roles
//! over SASL_SSL, the actions role with OIDC client credentials, the failures a user meets
//! first (wrong password, unknown CA, expired certificate, plaintext to a TLS port), HTTPS with
//! a private CA to an action service and the registry, and no secret in what reflex writes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reflex::role::actions::{self as worker, RunOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::tls::{tls_proxy, TestCa};

/// The directory of the stack's CA, client certificate and SCRAM password.
fn stack_tls() -> PathBuf {
    std::env::var_os("REFLEX_STACK_DIR")
        .map_or_else(|| repo().join(".stack"), PathBuf::from)
        .join("kafka/tls")
}

/// The SASL_SSL listener.
fn sasl_brokers() -> String {
    std::env::var("REFLEX_TEST_SASL_BROKERS").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

/// The OAUTHBEARER listener (Kafka's unsecured JWT validator).
fn oauth_brokers() -> String {
    std::env::var("REFLEX_TEST_OAUTH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9096".into())
}

/// The mutual-TLS listener.
fn mtls_brokers() -> String {
    std::env::var("REFLEX_TEST_MTLS_BROKERS").unwrap_or_else(|_| "127.0.0.1:9095".into())
}

fn require_secured_stack() {
    assert!(
        stack_tls().join(".complete").exists(),
        "no test CA in {}: the local stack must be started by the current scripts/stack.sh (make down && make up)",
        stack_tls().display()
    );
}

/// `[kafka.security]` for the stack's SCRAM user, the password read from `password`.
fn scram(password: &str) -> String {
    format!(
        "protocol = \"sasl_ssl\"\nmechanism = \"SCRAM-SHA-512\"\nca_file = \"{ca}\"\nusername = \"reflex\"\npassword = \"{password}\"\n",
        ca = stack_tls().join("ca.pem").display()
    )
}

/// The stack's SCRAM password reference.
fn stack_password() -> String {
    format!("file:{}", stack_tls().join("scram-password").display())
}

/// Points `env`'s config at `brokers` with `security` as its `[kafka.security]` table.
fn secure(env: &TestEnv, brokers: &str, security: &str) {
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text = text.replacen(
        &format!("brokers = \"{}\"", crate::common::brokers()),
        &format!("brokers = \"{brokers}\""),
        1,
    );
    std::fs::write(
        &env.config_path,
        format!("{text}\n[kafka.security]\n{security}"),
    )
    .expect("write config");
}

fn options(worker: &str) -> RunOptions {
    RunOptions {
        worker_id: worker.to_owned(),
        drain: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_role_runs_over_sasl_ssl_with_scram_sha_512() {
    require_secured_stack();
    let env = TestEnv::new(1);
    secure(&env, &sasl_brokers(), &scram(&stack_password()));
    let config = env.config();
    assert_eq!(config.kafka.security.describe(), "SASL_SSL/SCRAM-SHA-512");
    env.create_topics().await;
    produce(
        &env.events,
        &[
            Rec::json("k1", &order("secure-ok", "/shop/web", 42.0)),
            Rec::json("k2", &order("secure-denied", "/shop/intruder", 5.0)),
            Rec::raw("k3", b"\xff\x00not an event"),
        ],
    )
    .await;
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(&config, options("secure-worker"), CancellationToken::new()),
    )
    .await
    .expect("drains within two minutes")
    .expect("worker runs over SASL_SSL");
    assert_eq!(summary.total(), 3, "{summary}");
    let audits = wait_for_audits(&env.audit, 3).await;
    assert_eq!(audits["secure-ok"][0]["outcome"], "actioned");
    assert_eq!(audits["secure-denied"][0]["outcome"], "denied");
    let dead = read_all(&env.dlq);
    assert_eq!(dead.len(), 1, "the undecodable record is dead-lettered");
    assert_eq!(dead[0].value.as_deref(), Some(&b"\xff\x00not an event"[..]));
    let shipments = read_all(&env.shipments);
    assert_eq!(shipments.len(), 1, "the allowed order emitted its shipment");
}

#[tokio::test(flavor = "multi_thread")]
async fn lake_role_runs_over_sasl_ssl_with_scram_sha_512() {
    require_secured_stack();
    let lake = crate::lake::LakeEnv::new(crate::lake::Store::Local, 1, "max_file_age = \"30s\"");
    secure(&lake.env, &sasl_brokers(), &scram(&stack_password()));
    lake.env.create_topics().await;
    produce(
        &lake.env.events,
        &[
            Rec::json("k1", &order("lake-secure-1", "/shop/web", 10.0)),
            Rec::json("k2", &refund("lake-secure-2", 20.0)),
        ],
    )
    .await;
    lake.drain("actions");
    lake.drain("lake");
    assert_eq!(
        lake.count("SELECT count(*) FROM order_placed WHERE id = 'lake-secure-1'"),
        1
    );
    assert_eq!(
        lake.count("SELECT count(*) FROM refund_requested WHERE id = 'lake-secure-2'"),
        1
    );
}

/// Runs the actions role on `env` and returns its start-up error and how long it took.
async fn startup_error(env: &TestEnv) -> (String, Duration) {
    let config = env.config();
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        worker::run(&config, options("failing-worker"), CancellationToken::new()),
    )
    .await
    .expect("start-up ends within 30 s");
    let error = result.expect_err("start-up fails");
    (format!("{:#}", anyhow::Error::from(error)), start.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_fast_naming_broker_mechanism_and_cause() {
    require_secured_stack();
    let env = TestEnv::new(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = "not-the-password-7f3a9c";
    std::fs::write(dir.path().join("pw"), wrong).expect("write");
    secure(
        &env,
        &sasl_brokers(),
        &scram(&format!("file:{}", dir.path().join("pw").display())),
    );
    let (error, took) = startup_error(&env).await;
    assert!(took < Duration::from_secs(15), "took {took:?}: {error}");
    for part in [
        sasl_brokers().as_str(),
        "SASL_SSL/SCRAM-SHA-512",
        "user \"reflex\"",
        "rejected",
        "Authentication failed",
    ] {
        assert!(error.contains(part), "{part:?} not in: {error}");
    }
    assert!(!error.contains(wrong), "the password leaked: {error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_ca_fails_fast_with_a_tls_message() {
    require_secured_stack();
    let env = TestEnv::new(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let other = TestCa::new(dir.path(), "other");
    let security = scram(&stack_password()).replace(
        &stack_tls().join("ca.pem").display().to_string(),
        &other.ca_file.display().to_string(),
    );
    secure(&env, &sasl_brokers(), &security);
    let (error, took) = startup_error(&env).await;
    assert!(took < Duration::from_secs(15), "took {took:?}: {error}");
    for part in [
        sasl_brokers().as_str(),
        "TLS handshake",
        "SASL_SSL/SCRAM-SHA-512",
        "certificate verify failed",
        "UnknownIssuer",
    ] {
        assert!(error.contains(part), "{part:?} not in: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_broker_certificate_fails_fast_with_its_own_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "expiring");
    let expired = ca.server_cert(true);
    // A TLS endpoint presenting the expired certificate, where the client expects a broker.
    let server = tls_proxy(&expired, None).await;
    let env = TestEnv::new(1);
    secure(
        &env,
        &server.addr.to_string(),
        &format!(
            "protocol = \"ssl\"\nca_file = \"{}\"\n",
            ca.ca_file.display()
        ),
    );
    let (error, took) = startup_error(&env).await;
    assert!(took < Duration::from_secs(15), "took {took:?}: {error}");
    assert!(error.contains("TLS handshake"), "{error}");
    assert!(error.contains("certificate verify failed"), "{error}");
    assert!(error.contains("the broker's certificate"), "{error}");
    assert!(error.to_lowercase().contains("expired"), "{error}");
    assert!(error.contains(&server.addr.to_string()), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_client_on_the_tls_port_fails_fast() {
    require_secured_stack();
    let env = TestEnv::new(1);
    secure(&env, &sasl_brokers(), "protocol = \"plaintext\"\n");
    let (error, took) = startup_error(&env).await;
    assert!(took < Duration::from_secs(15), "took {took:?}: {error}");
    assert!(error.contains(&sasl_brokers()), "{error}");
    assert!(error.contains("PLAINTEXT"), "{error}");
    assert!(error.contains("another security protocol"), "{error}");
    assert!(error.contains("speaks TLS"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_needs_the_client_certificate() {
    require_secured_stack();
    let tls = stack_tls();
    let env = TestEnv::new(1);
    secure(
        &env,
        &mtls_brokers(),
        &format!(
            "protocol = \"ssl\"\nca_file = \"{}\"\ncertificate_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.join("ca.pem").display(),
            tls.join("client.pem").display(),
            tls.join("client.key").display()
        ),
    );
    let config = env.config();
    assert_eq!(config.kafka.security.describe(), "SSL (mutual TLS)");
    let connected = reflex::kafka::connect(&config.kafka, Duration::from_secs(10))
        .await
        .expect("connects with the client certificate");
    assert_eq!(connected.brokers, 1);
    env.create_topics().await;

    let without = TestEnv::new(1);
    secure(
        &without,
        &mtls_brokers(),
        &format!(
            "protocol = \"ssl\"\nca_file = \"{}\"\n",
            tls.join("ca.pem").display()
        ),
    );
    let start = Instant::now();
    let error = reflex::kafka::connect(&without.config().kafka, Duration::from_secs(10))
        .await
        .expect_err("refused without a client certificate");
    assert!(start.elapsed() < Duration::from_secs(15), "{error}");
    assert!(error.to_string().contains(&mtls_brokers()), "{error}");
}

/// A config of `env` with its action `record_payment` made an HTTP action at `url`.
fn with_http_payment_action(env: &TestEnv, url: &str, services_tls: &str) {
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text = text.replace(
        "[actions.record_payment]\nkind = \"log\"\n",
        &format!(
            "[actions.record_payment]\nkind = \"http\"\nurl = \"{url}/payments/{{id}}\"\ntimeout = \"2s\"\nmax_attempts = 2\ninitial_backoff = \"10ms\"\n"
        ),
    );
    // Failed calls go straight to the dead-letter topic.
    let text = text.replace(
        "shutdown_timeout = \"20s\"\n",
        "shutdown_timeout = \"20s\"\nretry_rounds = 0\n",
    );
    std::fs::write(
        &env.config_path,
        format!("{text}\n[services.tls]\n{services_tls}"),
    )
    .expect("write config");
}

fn payment(id: &str) -> serde_json::Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/payments/gateway", "type": "payment.authorized",
        "time": chrono::Utc::now().to_rfc3339(),
        "data": {"payment_id": "pay-1", "order_id": "ord-1", "amount": 10.0, "currency": "EUR", "method": "card"}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_action_service_with_a_private_ca_is_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let service = crate::action_service::ActionService::start();
    let proxy = tls_proxy(&ca.server_cert(false), Some(service.addr())).await;
    let stranger = TestCa::new(dir.path(), "stranger");
    let untrusted = tls_proxy(&stranger.server_cert(false), Some(service.addr())).await;

    // Trusted: the call goes through TLS to the service.
    let env = TestEnv::new(1);
    with_http_payment_action(
        &env,
        &format!("https://{}", proxy.addr),
        &format!("ca_file = \"{}\"\n", ca.ca_file.display()),
    );
    env.create_topics().await;
    produce(&env.events, &[Rec::json("p1", &payment("pay-trusted"))]).await;
    let config = env.config();
    worker::run(&config, options("https-worker"), CancellationToken::new())
        .await
        .expect("worker runs");
    let audits = wait_for_audits(&env.audit, 1).await;
    assert_eq!(
        audits["pay-trusted"][0]["outcome"], "actioned",
        "{audits:?}"
    );
    assert_eq!(service.requests_to("/payments/pay-trusted").len(), 1);

    // Untrusted: the certificate is refused, the event is dead-lettered with that reason.
    let env = TestEnv::new(1);
    with_http_payment_action(
        &env,
        &format!("https://{}", untrusted.addr),
        &format!("ca_file = \"{}\"\n", ca.ca_file.display()),
    );
    env.create_topics().await;
    produce(&env.events, &[Rec::json("p2", &payment("pay-untrusted"))]).await;
    let config = env.config();
    worker::run(&config, options("https-worker"), CancellationToken::new())
        .await
        .expect("worker runs");
    let audits = wait_for_audits(&env.audit, 1).await;
    let audit = audits["pay-untrusted"].last().expect("an audit record");
    assert_eq!(audit["outcome"], "dead_lettered", "{audit}");
    let audit = audit.to_string();
    assert!(
        audit.contains("invalid peer certificate") && audit.contains("UnknownIssuer"),
        "{audit}"
    );
    let dead = read_all(&env.dlq);
    assert_eq!(dead.len(), 1);
    let reason = format!("{:?}", dead[0].headers);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(service.requests_to("/payments/pay-untrusted").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_registry_with_a_private_ca_is_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "registry");
    let registry = crate::registry::registry_url();
    let upstream: std::net::SocketAddr = registry
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("an address");
    let path = registry
        .trim_start_matches("http://")
        .split_once('/')
        .map_or("", |(_, p)| p);
    let proxy = tls_proxy(&ca.server_cert(false), Some(upstream)).await;
    let url = format!("https://{}/{path}", proxy.addr);
    let trusted = reflex::http::HttpTls {
        ca_file: Some(ca.ca_file.clone()),
        client_cert: None,
    };
    let client = reflex::registry::HttpRegistry::with_tls(
        &url,
        Duration::from_secs(5),
        &trusted,
        reflex::http::HttpAuth::None,
    )
    .expect("client");
    client.subjects().await.expect("subjects over HTTPS");

    let stranger = TestCa::new(dir.path(), "stranger");
    let untrusted = reflex::http::HttpTls {
        ca_file: Some(stranger.ca_file.clone()),
        client_cert: None,
    };
    let client = reflex::registry::HttpRegistry::with_tls(
        &url,
        Duration::from_secs(5),
        &untrusted,
        reflex::http::HttpAuth::None,
    )
    .expect("client");
    let error = client.subjects().await.expect_err("refused").to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains(&proxy.addr.to_string()), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_logs_audit_dead_letters_or_check_output() {
    require_secured_stack();
    let password = std::fs::read_to_string(stack_tls().join("scram-password"))
        .expect("stack password")
        .trim_end()
        .to_owned();
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let desk_secret = format!("desk-secret-{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::new(1);
    env.create_topics().await;
    // The password comes from the environment, the registry token from a file.
    secure(
        &env,
        &sasl_brokers(),
        &scram("env:REFLEX_IT_KAFKA_PASSWORD"),
    );
    let token_file = env.config_path.with_file_name("registry-token");
    std::fs::write(&token_file, &token).expect("write token");
    let text = std::fs::read_to_string(&env.config_path).expect("read");
    let text = text.replace(
        "[schemas]\n",
        &format!(
            "[registry]\nurl = \"{}\"\ntoken = \"file:{}\"\n[schemas]\n",
            crate::registry::registry_url(),
            token_file.display()
        ),
    );
    // A publisher's HMAC secret comes from the environment too; refunds signed with it, one
    // of them tampered with, and one with a schema violation (so it is dead-lettered with
    // its signature header), pass through the worker.
    let text = format!(
        "{text}\n[publishers.desk-hmac]\nalgorithm = \"hmac-sha256\"\nsecret = \"env:REFLEX_IT_DESK_SECRET\"\n"
    );
    std::fs::write(&env.config_path, text).expect("write");
    let desk = reflex::publisher::SigningKey::hmac(desk_secret.as_bytes()).expect("hmac key");
    let mut tampered =
        Rec::unsigned("k4", &refund("leak-tampered", 10.0)).signed(&desk, "desk-hmac");
    tampered.value = Some(refund("leak-tampered", 11.0).to_string().into_bytes());
    let mut invalid = refund("leak-invalid", 10.0);
    invalid["data"]["currency"] = serde_json::json!("DOGE");
    produce(
        &env.events,
        &[
            Rec::json("k1", &order("leak-ok", "/shop/web", 10.0)),
            Rec::raw("k2", b"garbage"),
            Rec::unsigned("k3", &refund("leak-signed", 10.0)).signed(&desk, "desk-hmac"),
            tampered,
            Rec::unsigned("k5", &invalid).signed(&desk, "desk-hmac"),
        ],
    )
    .await;
    let run = std::process::Command::new(reflex_bin())
        .args(["run", "--role", "actions", "--drain"])
        .env("REFLEX_CONFIG", &env.config_path)
        .env("REFLEX_LOG", "debug,librdkafka=debug")
        .env("REFLEX_IT_KAFKA_PASSWORD", &password)
        .env("REFLEX_IT_DESK_SECRET", &desk_secret)
        .output()
        .expect("reflex runs");
    let check = std::process::Command::new(reflex_bin())
        .args(["check", "--connect"])
        .env("REFLEX_CONFIG", &env.config_path)
        .env("REFLEX_LOG", "debug")
        .env("REFLEX_IT_KAFKA_PASSWORD", &password)
        .env("REFLEX_IT_DESK_SECRET", &desk_secret)
        .output()
        .expect("reflex check runs");
    let run_log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{run_log}");
    assert!(run_log.contains("DEBUG"), "debug logging is on: {run_log}");
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check_out.contains("SASL_SSL/SCRAM-SHA-512"), "{check_out}");
    let audits = wait_for_audits(&env.audit, 5).await;
    let status = |id: &str| audits[id][0]["publisher"]["status"].clone();
    assert_eq!(
        status("leak-signed"),
        "verified",
        "the secret was read: {audits:?}"
    );
    assert_eq!(status("leak-tampered"), "bad_signature", "{audits:?}");
    let dead = read_all(&env.dlq);
    assert_eq!(dead.len(), 2, "the garbage and the schema-invalid refund");
    let mut written = vec![
        ("run output", run_log),
        ("check output", check_out),
        ("audit records", format!("{audits:?}")),
    ];
    for record in &dead {
        written.push(("dead letter", format!("{:?}", record.headers)));
    }
    for (what, text) in &written {
        assert!(
            !text.contains(&password),
            "the Kafka password is in the {what}"
        );
        assert!(
            !text.contains(&token),
            "the registry token is in the {what}"
        );
        assert!(
            !text.contains(&desk_secret),
            "the publisher's HMAC secret is in the {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lake_writes_to_an_https_s3_endpoint_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "s3");
    let plain = crate::lake::s3_endpoint();
    let upstream: std::net::SocketAddr = plain
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("an address");
    let proxy = tls_proxy(&ca.server_cert(false), Some(upstream)).await;
    let lake = crate::lake::LakeEnv::new(crate::lake::Store::S3, 1, "max_file_age = \"30s\"");
    lake.env.create_topics().await;
    let text = std::fs::read_to_string(&lake.env.config_path).expect("read");
    let text = text.replace(
        &format!("endpoint = \"{plain}\""),
        &format!(
            "endpoint = \"https://{}\"\nca_file = \"{}\"",
            proxy.addr,
            ca.ca_file.display()
        ),
    );
    assert!(
        text.contains("https://"),
        "the lake config names the S3 endpoint"
    );
    std::fs::write(&lake.env.config_path, text).expect("write");
    produce(
        &lake.env.events,
        &[Rec::json("k1", &order("lake-https-1", "/shop/web", 10.0))],
    )
    .await;
    lake.drain("actions");
    // The event and its audit record, written as Parquet through the TLS endpoint.
    let summary = lake.drain("lake");
    assert!(
        summary.contains("2 records, 2 rows in 2 files"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_are_sent_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = format!("pw-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(dir.path().join("registry-password"), format!("{secret}\n")).expect("write");
    let password = reflex::secret::SecretRef::File(dir.path().join("registry-password"))
        .resolve("registry.password", dir.path())
        .expect("readable");
    // A server that records what it receives and answers nothing a registry would.
    let server = crate::action_service::ActionService::start();
    let client = reflex::registry::HttpRegistry::with_tls(
        &server.url(),
        Duration::from_secs(5),
        &reflex::http::HttpTls::default(),
        reflex::http::HttpAuth::Basic {
            username: "reflex".into(),
            password,
        },
    )
    .expect("client");
    let error = client
        .subjects()
        .await
        .expect_err("not a registry")
        .to_string();
    let received = server.requests_to("/subjects");
    assert_eq!(received.len(), 1, "{error}");
    let expected = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("reflex:{secret}"))
    };
    assert_eq!(
        received[0].header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );
    for shown in [error, format!("{client:?}")] {
        assert!(
            !shown.contains(&secret) && !shown.contains(&expected),
            "{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_with_tls_settings_of_its_own_is_verified_with_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger_ca = TestCa::new(dir.path(), "ledger");
    let others_ca = TestCa::new(dir.path(), "others");
    let service = crate::action_service::ActionService::start();
    let proxy = tls_proxy(&ledger_ca.server_cert(false), Some(service.addr())).await;

    // [services.tls] trusts only the other CA; the ledger's own table trusts its CA.
    let env = TestEnv::new(1);
    with_http_payment_action(
        &env,
        &format!("https://{}", proxy.addr),
        &format!("ca_file = \"{}\"\n", others_ca.ca_file.display()),
    );
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text = text.replace(
        "max_attempts = 2\n",
        "max_attempts = 2\nservice = \"ledger\"\n",
    );
    std::fs::write(
        &env.config_path,
        format!(
            "{text}\n[services.service_tls.ledger]\nca_file = \"{}\"\n",
            ledger_ca.ca_file.display()
        ),
    )
    .expect("write config");
    env.create_topics().await;
    produce(&env.events, &[Rec::json("p1", &payment("pay-ledger"))]).await;
    let config = env.config();
    worker::run(&config, options("service-tls"), CancellationToken::new())
        .await
        .expect("worker runs");
    let audits = wait_for_audits(&env.audit, 1).await;
    assert_eq!(audits["pay-ledger"][0]["outcome"], "actioned", "{audits:?}");
    assert_eq!(service.requests_to("/payments/pay-ledger").len(), 1);

    // `reflex check --connect` tries the ledger with its own settings too, and the topics.
    let endpoints = reflex::connectivity::check(&config).await;
    let ledger = endpoints
        .iter()
        .find(|e| e.kind == "service")
        .expect("the ledger is checked");
    assert!(ledger.ok(), "{ledger}");
    let audit = endpoints
        .iter()
        .find(|e| e.kind == "topic" && e.address.starts_with(&format!("{} ", env.audit)))
        .expect("the audit topic is checked");
    assert!(
        audit
            .result
            .as_ref()
            .is_ok_and(|d| d.contains("write allowed")),
        "{audit}"
    );

    // A name no action or lookup uses is refused, naming it.
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    std::fs::write(
        &env.config_path,
        text.replace(
            "[services.service_tls.ledger]",
            "[services.service_tls.ledgr]",
        ),
    )
    .expect("write config");
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let error = reflex::config::Config::from_toml(&text, &env.config_path, Vec::new())
        .expect_err("an unknown service name")
        .to_string();
    assert!(
        error.contains("[services.service_tls.\"ledgr\"]") && error.contains("ledger"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_connect_reports_each_topic_and_probes_writes_without_writing() {
    let env = TestEnv::new(1);
    env.create_topics().await;
    let missing = unique("it-missing");
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text = text
        .replace(
            &format!("events = [\"{}\"]", env.events),
            &format!("events = [\"{}\", \"{missing}\"]", env.events),
        )
        .replace("[topics]\n", "[topics]\ncreate_missing = false\n");
    std::fs::write(&env.config_path, text).expect("write config");
    let endpoints = reflex::connectivity::check(&env.config()).await;
    let topic = |name: &str| {
        endpoints
            .iter()
            .find(|e| e.kind == "topic" && e.address.starts_with(&format!("{name} (")))
            .unwrap_or_else(|| panic!("{name} is checked: {endpoints:?}"))
    };
    let events = topic(&env.events);
    assert_eq!(events.result, Ok("1 partition(s)".to_owned()), "{events}");
    let absent = topic(&missing);
    assert!(
        absent
            .result
            .as_ref()
            .is_err_and(|e| e.contains("does not exist") && e.contains("reflex topics")),
        "{absent}"
    );
    for (name, how) in [
        (&env.audit, "a record without key"),
        (&env.dlq, "message.timestamp.after.max.ms"),
    ] {
        let checked = topic(name);
        assert!(
            checked
                .result
                .as_ref()
                .is_ok_and(|d| d.contains("write allowed") && d.contains(how)),
            "{checked}"
        );
    }
    assert!(
        read_all(&env.audit).is_empty(),
        "the probe wrote to the audit topic"
    );
    assert!(
        read_all(&env.dlq).is_empty(),
        "the probe wrote to the dead-letter topic"
    );
}

/// An OpenID Connect token endpoint for the client-credentials grant: it answers every request
/// with an unsigned JWT for `subject` (which the stack's OAUTHBEARER listener, Kafka's unsecured
/// validator, accepts) and records each request's `Authorization` header.
async fn token_endpoint(
    subject: &str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = chrono::Utc::now().timestamp();
    let jwt = format!(
        "{}.{}.",
        b64(json!({"alg": "none"})),
        b64(json!({"sub": subject, "iat": now, "exp": now + 3600, "scope": "kafka"}))
    );
    let body = json!({"access_token": jwt, "token_type": "Bearer", "expires_in": 3600}).to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The request line, headers and the short form body arrive together.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let authorization = text
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default();
            record.lock().expect("lock").push(authorization);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_role_runs_over_oauthbearer_with_oidc_client_credentials() {
    use base64::Engine as _;
    require_secured_stack();
    assert!(
        std::net::TcpStream::connect(oauth_brokers()).is_ok(),
        "no OAUTHBEARER listener on {}: the local stack must be started by the current scripts/stack.sh (make down && make up)",
        oauth_brokers()
    );
    let (token_url, requests) = token_endpoint("reflex-actions").await;
    let env = TestEnv::new(1);
    env.create_topics().await;
    let secret = format!("client-secret-{}", uuid::Uuid::new_v4().simple());
    let secret_file = env.config_path.with_file_name("client-secret");
    std::fs::write(&secret_file, &secret).expect("write secret");
    secure(
        &env,
        &oauth_brokers(),
        &format!(
            "protocol = \"sasl_ssl\"\nmechanism = \"OAUTHBEARER\"\nca_file = \"{ca}\"\noauth_token_url = \"http://{token_url}/token\"\noauth_client_id = \"reflex-actions\"\noauth_client_secret = \"file:{secret}\"\noauth_scope = \"kafka\"\n",
            ca = stack_tls().join("ca.pem").display(),
            secret = secret_file.display(),
        ),
    );
    let config = env.config();
    assert_eq!(config.kafka.security.describe(), "SASL_SSL/OAUTHBEARER");
    produce(
        &env.events,
        &[Rec::json("k1", &order("oauth-ok", "/shop/web", 42.0))],
    )
    .await;
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(&config, options("oauth-worker"), CancellationToken::new()),
    )
    .await
    .expect("drains within two minutes")
    .expect("worker runs over SASL_SSL/OAUTHBEARER");
    assert_eq!(summary.total(), 1, "{summary}");
    let audits = wait_for_audits(&env.audit, 1).await;
    assert_eq!(audits["oauth-ok"][0]["outcome"], "actioned", "{audits:?}");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("reflex-actions:{secret}"))
    );
    let seen = requests.lock().expect("lock").clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| *a == expected),
        "every token request carries the client credentials: {seen:?}"
    );
}

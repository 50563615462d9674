//! A Kafka outage as an operator reads it: the only broker of a private single-node cluster
//! (started by `scripts/stack.sh` in a stack directory of its own, so other tests keep theirs)
//! stops for 20 s under an actions worker. The worker logs one line when the broker goes and
//! one when it is back, `/metrics` shows the outage meanwhile, `/readyz` fails its producer
//! check until the broker is back, and nothing is lost.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::*;

/// Ports nothing listens on now.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// A single-node cluster of its own, stopped and its data deleted when dropped.
struct PrivateKafka {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
}

impl PrivateKafka {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The jars are the shared stack's (`make up` fetched them), linked rather than fetched.
        let libs = dir.path().join("kafka/libs");
        std::fs::create_dir_all(&libs).expect("mkdir");
        for entry in
            std::fs::read_dir(repo().join(".stack/kafka/libs")).expect("make up fetched Kafka")
        {
            let path = entry.expect("entry").path();
            std::os::unix::fs::symlink(&path, libs.join(path.file_name().expect("name")))
                .expect("link jars");
        }
        let kafka = Self {
            dir,
            ports: free_ports(5),
        };
        kafka.stack("up");
        kafka
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0])
    }

    fn stack(&self, command: &str) {
        let status = Command::new(repo().join("scripts/stack.sh"))
            .args([command, "kafka"])
            .env("REFLEX_STACK_DIR", self.dir.path())
            .env("KAFKA_PORT", self.ports[0].to_string())
            .env("KAFKA_CONTROLLER_PORT", self.ports[1].to_string())
            .env("KAFKA_SASL_SSL_PORT", self.ports[2].to_string())
            .env("KAFKA_SSL_PORT", self.ports[3].to_string())
            .env("KAFKA_OAUTH_PORT", self.ports[4].to_string())
            .stdout(Stdio::null())
            .status()
            .expect("stack.sh runs");
        assert!(status.success(), "scripts/stack.sh {command} kafka");
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/stack.sh"))
            .args(["down", "kafka"])
            .env("REFLEX_STACK_DIR", self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

async fn produce_to(brokers: &str, topic: &str, from: usize, to: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .create()
        .expect("producer");
    for n in from..to {
        let id = format!("out-{n}");
        let value = serde_json::to_vec(&order(&id, "/shop/web", 10.0)).expect("json");
        let key = format!("k{}", n % 17);
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .expect("delivered");
    }
}

/// `/metrics` of the worker, or nothing while it does not answer.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    get(addr, "/metrics")
}

/// The whole HTTP/1.0 answer (status line, headers, body) to `GET path`.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Waits for `/readyz` to answer `status`; returns its body.
async fn wait_ready(addr: SocketAddr, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(answer) = get(addr, "/readyz") {
            if answer.starts_with(&format!("HTTP/1.1 {status} "))
                || answer.starts_with(&format!("HTTP/1.0 {status} "))
            {
                let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
                return body.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "/readyz {status} within 120 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The sum of every sample of `name` (with or without labels).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_for(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(text) = scrape(addr) {
            if ok(&text) {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "{what} within 120 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn log_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_reads_as_one_line_when_it_starts_and_one_when_it_ends() {
    let kafka = PrivateKafka::start();
    let env = TestEnv::new(2);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text
        .replace(
            &format!("brokers = \"{}\"", brokers()),
            &format!("brokers = \"{}\"", kafka.brokers()),
        )
        .replace(
            "[telemetry]\nlisten = \"\"",
            &format!("[telemetry]\nlisten = \"{listen}\""),
        );
    std::fs::write(&env.config_path, text).expect("config");
    env.create_topics().await;

    let log = env.config_path.with_file_name("worker.log");
    let mut worker = Command::new(reflex_bin())
        .args(["run", "--role", "actions", "--worker-id", "outage"])
        .env("REFLEX_CONFIG", &env.config_path)
        .env("REFLEX_LOG", "info")
        .env("REFLEX_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("reflex starts");

    produce_to(&kafka.brokers(), &env.events, 0, 200).await;
    wait_for(listen, "200 events processed", |m| {
        metric(m, "reflex_events_processed_total") >= 200.0
    })
    .await;
    let ready = wait_ready(listen, 200).await;
    assert!(ready.contains("[+]producer ok\n"), "{ready}");

    kafka.stack("down");
    let during = wait_for(listen, "the outage in /metrics", |m| {
        metric(m, "reflex_kafka_unreachable_seconds") > 0.0
    })
    .await;
    assert_eq!(metric(&during, "reflex_kafka_outages_total"), 0.0);
    let unready = wait_ready(listen, 503).await;
    assert!(unready.contains("[-]producer failed: "), "{unready}");
    assert!(unready.ends_with("readyz check failed\n"), "{unready}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    kafka.stack("up");

    produce_to(&kafka.brokers(), &env.events, 200, 400).await;
    let after = wait_for(listen, "400 events processed after the outage", |m| {
        metric(m, "reflex_events_processed_total") >= 400.0
    })
    .await;
    assert_eq!(metric(&after, "reflex_kafka_unreachable_seconds"), 0.0);
    assert_eq!(metric(&after, "reflex_kafka_outages_total"), 1.0, "{after}");
    let ready = wait_ready(listen, 200).await;
    assert!(ready.contains("[+]producer ok\n"), "{ready}");

    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(
        worker.wait().expect("wait").success(),
        "a clean stop after the outage"
    );

    let text = std::fs::read_to_string(&log).expect("log");
    let went = log_lines(&log, "Kafka brokers unreachable");
    let back = log_lines(&log, "Kafka brokers reachable again");
    let errors = log_lines(&log, "\"level\":\"ERROR\"");
    let warnings = log_lines(&log, "\"level\":\"WARN\"");
    eprintln!("20 s outage: {went} line going, {back} coming back, {errors} ERROR, {warnings} WARN lines in all");
    assert_eq!((went, back), (1, 1), "one line each way:\n{text}");
    assert_eq!(
        errors, 0,
        "ERROR is for data loss or an operator's action:\n{text}"
    );
}

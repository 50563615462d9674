//! Hot reload: watch `policies/`, compile a changed set, swap it in atomically.
//!
//! The directory is polled (every `policy.reload_interval`) for its revision, the content hash of
//! the production files, rather than watched with inotify: a poll of a few small files costs
//! microseconds, sees every kind of change the same way (an editor's rename-over-write, a `git
//! checkout`, a Kubernetes ConfigMap's symlink swap, a network file system that sends no
//! events), and a content hash ignores touches that change nothing.
//!
//! A changed revision is compiled, off the worker's thread, once it has stayed the same for one
//! poll (a change being written file by file is not compiled half-way). If it compiles, the new
//! [`PolicySet`] is published on a `watch` channel; the worker takes it between two records
//! ([`PolicyWatch::changed`]), so each record is decided wholly by the revision it started on
//! and every audit record names that revision. If it does not compile, it is refused: the
//! running revision stays, the refusal is logged at ERROR and counted
//! ([`super::telemetry::PolicyReloadRefused`]), and [`PolicyWatch::status`] reports it. The same
//! broken revision is refused once, not at every poll.
//!
//! A set loaded from a bundle URL ([`super::bundle`]) is polled at its URL instead, at the same
//! interval with ±20 % jitter so many replicas do not ask the bundle server in step: a fetch
//! answered "not modified" costs nothing, a new bundle is verified and compiled, then published
//! or refused the same way.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{files, telemetry, Evaluator, PolicyError, PolicySet};

/// A policy set that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Its revision (or the read error's text when the directory could not be read).
    pub revision: String,
    /// Why it was refused.
    pub error: String,
    /// When (RFC 3339).
    pub at: String,
}

/// What the watcher knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// The revision running now.
    pub running: String,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// The last refused set, if any since the running one was loaded.
    pub refused: Option<Refusal>,
}

/// What one poll found.
#[derive(Debug)]
pub enum Poll {
    /// Nothing new (or a set that was already refused).
    Unchanged,
    /// A new set compiled and is now running.
    Reloaded(Arc<PolicySet>),
    /// A new set did not compile; the running one stays.
    Refused(PolicyError),
}

/// The poll-and-compile step, without timers or channels.
#[derive(Debug)]
pub struct Reloader {
    running: Arc<PolicySet>,
    refused: Option<String>,
    seen: Option<String>,
}

impl Reloader {
    /// Starts from the set that runs now.
    pub fn new(running: Arc<PolicySet>) -> Self {
        Self {
            running,
            refused: None,
            seen: None,
        }
    }

    /// The set that runs now.
    pub fn running(&self) -> &Arc<PolicySet> {
        &self.running
    }

    /// The revision last refused, while it is still what the directory holds.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Reads the directory's revision and compiles it when it changed and has stayed the same
    /// since the previous poll (so a change being written file by file is not compiled half-way).
    pub fn poll(&mut self) -> Poll {
        let dir = self.running.dir().to_owned();
        let revision = match files::revision(&dir) {
            Ok(r) => r,
            Err(e) => {
                let key = e.to_string();
                if self.refused.as_deref() == Some(key.as_str()) {
                    return Poll::Unchanged;
                }
                self.refused = Some(key);
                return Poll::Refused(e);
            }
        };
        if revision == self.running.revision() {
            self.refused = None;
            return Poll::Unchanged;
        }
        if self.refused.as_deref() == Some(revision.as_str()) {
            return Poll::Unchanged;
        }
        if self.seen.as_deref() != Some(revision.as_str()) {
            self.seen = Some(revision);
            return Poll::Unchanged;
        }
        match self.running.reload_from(&dir) {
            // The files changed again between hashing and compiling: record what compiled.
            Ok(set) => {
                self.refused = None;
                self.running = Arc::new(set);
                Poll::Reloaded(self.running.clone())
            }
            Err(e) => {
                self.refused = Some(revision);
                Poll::Refused(e)
            }
        }
    }
}

/// A worker's view of the policy: the running set, and new ones as they are loaded.
#[derive(Debug, Clone)]
pub struct PolicyWatch {
    rx: watch::Receiver<Arc<PolicySet>>,
    status: Arc<Mutex<ReloadStatus>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl PolicyWatch {
    /// A fixed policy set, never reloaded.
    pub fn fixed(set: PolicySet) -> Self {
        let status = ReloadStatus {
            running: set.revision().to_owned(),
            loaded_at: now(),
            refused: None,
        };
        let (tx, rx) = watch::channel(Arc::new(set));
        // No sender keeps the channel open: `changed` then never reports anything new.
        drop(tx);
        Self {
            rx,
            status: Arc::new(Mutex::new(status)),
        }
    }

    /// Starts polling `set`'s directory (or its bundle URL) every `interval` until `shutdown`
    /// (must run inside a Tokio runtime). A zero interval means no reload.
    pub fn spawn(set: PolicySet, interval: Duration, shutdown: CancellationToken) -> Self {
        if interval.is_zero() {
            return Self::fixed(set);
        }
        if set.bundle().is_some() {
            return Self::spawn_bundle(set, interval, shutdown);
        }
        let watch = Self::fixed(set);
        let (tx, rx) = watch::channel(watch.rx.borrow().clone());
        let status = watch.status.clone();
        let mut reloader = Some(Reloader::new(rx.borrow().clone()));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(mut r) = reloader.take() else { break };
                let Ok((r, poll)) = tokio::task::spawn_blocking(move || {
                    let poll = r.poll();
                    (r, poll)
                })
                .await
                else {
                    break;
                };
                let running = r.running().revision().to_owned();
                let refused = r.refused().unwrap_or("unreadable").to_owned();
                reloader = Some(r);
                publish(&status, &tx, poll, &running, refused);
            }
        });
        Self {
            rx,
            status: watch.status,
        }
    }

    /// Polls the bundle URL of `set` every `interval` (±20 %) until `shutdown`.
    fn spawn_bundle(set: PolicySet, interval: Duration, shutdown: CancellationToken) -> Self {
        let watch = Self::fixed(set);
        let (tx, rx) = watch::channel(watch.rx.borrow().clone());
        let status = watch.status.clone();
        let mut running = rx.borrow().clone();
        tokio::spawn(async move {
            let Some(spec) = running.bundle().cloned() else {
                return;
            };
            let mut fetcher = match super::bundle::fetch::Fetcher::new(&spec) {
                Ok(f) => f,
                Err(error) => {
                    tracing::error!(%error, "policy bundle polling is off; the loaded revision keeps deciding");
                    return;
                }
            };
            // The bytes last compiled or refused, and the last fetch error: each handled once.
            let mut last: Option<Vec<u8>> = running.bundle_digest().map(<[u8]>::to_vec);
            let mut last_error: Option<String> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(jittered(interval)) => {}
                }
                let bytes = match fetcher.fetch().await {
                    Ok(super::bundle::fetch::Fetched::NotModified) => continue,
                    Ok(super::bundle::fetch::Fetched::Bundle(bytes)) => bytes,
                    Err(source) => {
                        let key = source.to_string();
                        if last_error.as_deref() != Some(key.as_str()) {
                            last_error = Some(key);
                            let error = PolicyError::Bundle {
                                url: spec.url.clone(),
                                source,
                            };
                            let revision = running.revision().to_owned();
                            publish(
                                &status,
                                &tx,
                                Poll::Refused(error),
                                &revision,
                                "unreadable".into(),
                            );
                        }
                        continue;
                    }
                };
                last_error = None;
                let digest = {
                    use sha2::Digest as _;
                    sha2::Sha256::digest(&bytes).to_vec()
                };
                if last.as_deref() == Some(digest.as_slice()) {
                    continue;
                }
                last = Some(digest.clone());
                let current = running.clone();
                let Ok(loaded) =
                    tokio::task::spawn_blocking(move || current.reload_from_bundle(&bytes)).await
                else {
                    break;
                };
                let revision = running.revision().to_owned();
                let poll = match loaded {
                    Ok(set) => {
                        running = Arc::new(set);
                        Poll::Reloaded(running.clone())
                    }
                    Err(error) => Poll::Refused(error),
                };
                let refused = format!("sha256:{}", hex::encode(&digest));
                publish(&status, &tx, poll, &revision, refused);
            }
        });
        Self {
            rx,
            status: watch.status,
        }
    }

    /// The set running now.
    pub fn current(&self) -> Arc<PolicySet> {
        self.rx.borrow().clone()
    }

    /// An evaluator for the set running now (marks it seen).
    pub fn evaluator(&mut self) -> Evaluator {
        self.rx.borrow_and_update().evaluator()
    }

    /// Waits until a set this watch has not seen is loaded (marking it seen; [`Self::current`]
    /// is then that set). Never returns for a set that is not reloaded. Cancel-safe.
    pub async fn updated(&mut self) {
        if self.rx.changed().await.is_err() {
            // No watcher: nothing new will ever come.
            std::future::pending::<()>().await;
        }
    }

    /// An evaluator for a set loaded since the last call, if there is one.
    pub fn changed(&mut self) -> Option<Evaluator> {
        if self.rx.has_changed().unwrap_or(false) {
            Some(self.evaluator())
        } else {
            None
        }
    }

    /// The running revision and the last refusal.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `interval` ±20 %.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Records what a poll found in `status` and hands a new set to the workers.
fn publish(
    status: &Mutex<ReloadStatus>,
    tx: &watch::Sender<Arc<PolicySet>>,
    poll: Poll,
    running: &str,
    refused: String,
) {
    let mut status = status.lock().unwrap_or_else(PoisonError::into_inner);
    match poll {
        Poll::Unchanged => {}
        Poll::Reloaded(set) => {
            telemetry::PolicyReloaded {
                from: &status.running,
                to: set.revision(),
            }
            .emit();
            status.running = set.revision().to_owned();
            status.loaded_at = now();
            status.refused = None;
            tx.send_replace(set);
        }
        Poll::Refused(error) => {
            telemetry::PolicyReloadRefused {
                running,
                error: &error,
            }
            .emit();
            status.refused = Some(Refusal {
                revision: refused,
                error: error.to_string(),
                at: now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "package reflex\ndecision := {\"allow\": input.n < data.max}\n";

    fn dir_with(max: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p.rego"), GOOD).expect("write");
        std::fs::write(dir.path().join("d.json"), format!("{{\"max\": {max}}}")).expect("write");
        dir
    }

    fn load(dir: &tempfile::TempDir) -> PolicySet {
        PolicySet::load(dir.path(), "data.reflex.decision", Duration::from_secs(1)).expect("loads")
    }

    #[test]
    fn a_changed_set_is_reloaded_and_a_broken_one_refused_once() {
        let dir = dir_with(10);
        let first = load(&dir);
        let mut r = Reloader::new(Arc::new(first.clone()));
        assert!(matches!(r.poll(), Poll::Unchanged));

        std::fs::write(dir.path().join("d.json"), "{\"max\": 5}").expect("write");
        assert!(
            matches!(r.poll(), Poll::Unchanged),
            "not compiled until it settles"
        );
        let Poll::Reloaded(second) = r.poll() else {
            panic!("a changed data file reloads");
        };
        assert_ne!(second.revision(), first.revision());
        let input = regorus::Value::from(serde_json::json!({"n": 7}));
        assert!(first.evaluator().decide(input.clone()).allow);
        assert!(!second.evaluator().decide(input).allow);

        std::fs::write(dir.path().join("p.rego"), "package reflex\ndecision := {").expect("write");
        assert!(
            matches!(r.poll(), Poll::Unchanged),
            "not compiled until it settles"
        );
        let Poll::Refused(e) = r.poll() else {
            panic!("a broken module is refused");
        };
        assert!(e.to_string().contains("p.rego"), "{e}");
        assert!(
            matches!(r.poll(), Poll::Unchanged),
            "refused once, not at every poll"
        );
        assert_eq!(
            r.running().revision(),
            second.revision(),
            "running revision stays"
        );

        std::fs::write(dir.path().join("p.rego"), GOOD).expect("write");
        assert!(
            matches!(r.poll(), Poll::Unchanged),
            "back to the running revision"
        );
    }

    #[tokio::test]
    async fn the_watch_hands_new_sets_to_the_worker_between_records() {
        let dir = dir_with(10);
        let shutdown = CancellationToken::new();
        let _guard = shutdown.clone().drop_guard();
        let mut watch = PolicyWatch::spawn(load(&dir), Duration::from_millis(20), shutdown);
        let first = watch.evaluator();
        assert!(watch.changed().is_none());
        std::fs::write(dir.path().join("d.json"), "{\"max\": 5}").expect("write");
        let mut next = None;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            next = watch.changed();
            if next.is_some() {
                break;
            }
        }
        let next = next.expect("the new set arrives");
        assert_ne!(next.revision(), first.revision());
        assert_eq!(watch.status().running, next.revision());

        let refused_before = telemetry::refused_reloads();
        std::fs::write(dir.path().join("d.json"), "[1]").expect("write");
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if watch.status().refused.is_some() {
                break;
            }
        }
        let status = watch.status();
        let refusal = status.refused.expect("the broken set is reported");
        assert!(refusal.error.contains("d.json"), "{refusal:?}");
        assert_eq!(status.running, next.revision());
        assert!(watch.changed().is_none());
        assert!(telemetry::refused_reloads() > refused_before);
    }

    #[tokio::test]
    async fn a_bundle_url_is_polled_and_a_new_revision_handed_over_a_broken_one_refused() {
        use crate::policy::bundle::{self, fetch::BundleSpec, Manifest};
        let dir = dir_with(10);
        let out = dir.path().join("b.tar.gz");
        let write = |revision: &str| {
            let manifest = Manifest {
                revision: revision.into(),
                ..Manifest::default()
            };
            bundle::build(dir.path(), &load(&dir), &manifest, None, &out).expect("built");
        };
        write("r1");
        let spec = BundleSpec {
            url: format!("file://{}", out.display()),
            key: None,
            tls: crate::http::HttpTls::default(),
            timeout: Duration::from_secs(5),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_path_style: true,
        };
        let set = PolicySet::load_bundle(spec, "data.reflex.decision", Duration::from_secs(1))
            .expect("loads");
        assert_eq!(set.revision(), "r1");
        let shutdown = CancellationToken::new();
        let _guard = shutdown.clone().drop_guard();
        let mut watch = PolicyWatch::spawn(set, Duration::from_millis(20), shutdown);
        assert_eq!(watch.evaluator().revision(), "r1");

        write("r2");
        let mut next = None;
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            next = watch.changed();
            if next.is_some() {
                break;
            }
        }
        assert_eq!(next.expect("the new bundle arrives").revision(), "r2");

        std::fs::write(&out, b"not a bundle").expect("write");
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if watch.status().refused.is_some() {
                break;
            }
        }
        let status = watch.status();
        let refusal = status.refused.expect("the broken bundle is reported");
        assert!(refusal.error.contains("b.tar.gz"), "{refusal:?}");
        assert_eq!(status.running, "r2");
        assert!(watch.changed().is_none());
    }
}

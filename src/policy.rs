//! Rego policies evaluated in process with regorus.
//!
//! `policies/` holds `*.rego` modules and `*.json` data files (each file's object is merged into
//! `data`; see [`files`] for what belongs to the production set and what to the tests). They are
//! loaded once into a template [`regorus::Engine`]; each worker clones it into an [`Evaluator`]
//! and evaluates one entry rule (by default `data.reflex.decision`) per event. The decision
//! contract is in [`decision`]. With `[policy] engine = "auto"` (the default) the entry rule is
//! compiled to regorus's bytecode VM, which decides in a fraction of the time, when [`safety`]
//! proves at load that no rule the decision uses can raise on admitted input (the one way the VM
//! decides differently, see [`PolicyEngine`]); a sampled cross-check decides some VM decisions
//! with the interpreter too. The interpreter serves every other rule and is the fallback when a
//! set is not proved or cannot be compiled. Anything off-contract fails closed: undefined, an evaluation
//! error, the time limit, a malformed decision, or no policy loaded is a deny with its own
//! [`Failure`] reason and counter ([`telemetry`]).
//!
//! Redaction is its own rule (`[policy] redact`, by default `data.reflex.redact`): a pure
//! function of the event, checked at load to read nothing but `input.event`, evaluated on an
//! input holding only the event and cached per value of the fields it reads ([`redaction`],
//! [`Evaluator::redaction`]).
//!
//! [`input`] builds the input document. Around that core: [`redact`] removes the redacted paths
//! from an event, [`reload`] watches the directory and swaps revisions atomically, [`testing`]
//! runs `test_*` rules and YAML cases, [`explain`] says which rules fired, and [`shadow`]
//! compares candidate decisions with recorded ones. [`bundle`] reads and writes OPA-format
//! bundles, the other source of a policy set: workers fetch one from a URL, and its revision is
//! the bundle's.

pub mod bundle;
mod compiled;
pub mod decision;
pub mod explain;
pub mod files;
pub mod input;
pub mod projection;
pub mod redact;
pub mod redaction;
pub mod reload;
pub mod safety;
pub mod shadow;
mod syntax;
pub mod telemetry;
pub mod testing;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::Value;

use crate::event::CloudEvent;

pub use decision::{Decision, EmitObligation, Failure};
use files::PolicyFiles;
pub use projection::Projection;
pub use redaction::{Reads, RedactionFailed, RedactionRule, RedactionStats};
pub use safety::InputFacts;

/// Which regorus evaluator decides the entry rule (`[policy] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyEngine {
    /// The compiled engine when the policy set is proved compiled-safe (no rule the decision
    /// uses can raise an error on validated input, see [`safety`]), else the interpreter; decided
    /// per policy set at load and at every reload.
    #[default]
    Auto,
    /// regorus's interpreter: a builtin or arithmetic error anywhere fails the decision closed.
    Interpreter,
    /// The entry rule compiled to regorus's VM whatever the proof says: several times faster,
    /// the same decisions except that the VM treats an error inside a rule body as that body not
    /// holding (as OPA does by default) instead of failing the whole decision closed.
    Compiled,
}

impl PolicyEngine {
    /// The name as configured (`auto`, `interpreter`, `compiled`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Interpreter => "interpreter",
            Self::Compiled => "compiled",
        }
    }
}

/// How often the compiled engine's decision is checked against the interpreter's by default
/// (`[policy] cross_check_every`): one decision in this many.
pub const DEFAULT_CROSS_CHECK_EVERY: u64 = 1000;

/// The revision recorded when no policy set is loaded.
pub const NO_REVISION: &str = "none";

/// Evaluation steps between two reads of the clock for the time limit.
const TIMER_CHECK_INTERVAL: u32 = 64;

/// Why the policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or the directory could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A Rego module does not parse or compile.
    #[error("policy {path} does not parse: {message}")]
    Parse {
        /// The module.
        path: PathBuf,
        /// regorus's message, with line and column.
        message: String,
    },
    /// A data file is not a JSON object.
    #[error("policy data {path} is not a JSON object: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory holds no Rego module.
    #[error("no *.rego policy in {0}: without a policy every event would be denied")]
    Empty(PathBuf),
    /// The entry rule's package is not defined by any module.
    #[error("policy entry \"{entry}\" names package \"{package}\", which no module in {dir} defines (packages: {found})")]
    NoEntry {
        /// The configured entry rule.
        entry: String,
        /// Its package.
        package: String,
        /// The policy directory.
        dir: PathBuf,
        /// The packages that exist.
        found: String,
    },
    /// `[policy] redact` is not written as a rule path.
    #[error("redaction rule \"{rule}\" ([policy] redact) is not a rule path: write it as data.<package>.<rule>, or \"\" to turn redaction off")]
    BadRedaction {
        /// The configured redaction rule.
        rule: String,
    },
    /// No module defines the redaction rule.
    #[error("redaction rule {rule} ([policy] redact) is not defined by any module in {dir} (packages: {found}); define it, or set redact = \"\" to turn redaction off")]
    NoRedaction {
        /// The configured redaction rule.
        rule: String,
        /// The policy directory.
        dir: PathBuf,
        /// The packages that exist.
        found: String,
    },
    /// The redaction rule, or a rule it uses, reads something other than the event.
    #[error("redaction rule {rule} reads {reference} through {through} ({location}); redaction may read only input.event")]
    ImpureRedaction {
        /// The configured redaction rule.
        rule: String,
        /// What it reads: `input.context.now`, `input`, `time.now_ns()`, ….
        reference: String,
        /// The rule making that reference, `data.<package>.<rule>`.
        through: String,
        /// Its file and line.
        location: String,
    },
    /// A policy bundle could not be fetched, verified or read.
    #[error("policy bundle {url}: {source}")]
    Bundle {
        /// Where it came from.
        url: String,
        /// What is wrong.
        source: bundle::BundleError,
    },
    /// The syntax tree regorus gave could not be read.
    #[error("cannot analyse redaction rule {rule}: {message}")]
    Analysis {
        /// The configured redaction rule.
        rule: String,
        /// What went wrong.
        message: String,
    },
}

/// The loaded policy set: a template engine and the revision it was built from.
#[derive(Clone)]
pub struct PolicySet {
    engine: regorus::Engine,
    compiled: Option<compiled::Compiled>,
    engine_kind: PolicyEngine,
    /// Why `auto` decides with the interpreter (empty when it compiles, or not `auto`).
    not_compiled: Arc<[String]>,
    /// Why `auto` decides wire-format records (data validated by a registry's schema) with the
    /// interpreter although it compiles the set (empty: the VM decides them too).
    not_compiled_wire: Arc<[String]>,
    /// What admission guarantees about the input, for the proof.
    facts: InputFacts,
    /// One compiled decision in this many is also decided by the interpreter (0: none).
    cross_check_every: u64,
    entry: String,
    /// What of the input the entry rule can read (`None`: all of it).
    reads: Option<Arc<Projection>>,
    redaction: Option<Arc<RedactionRule>>,
    revision: String,
    modules: Vec<PathBuf>,
    dir: PathBuf,
    timeout: Duration,
    bundle: Option<Arc<bundle::fetch::BundleSpec>>,
    /// The SHA-256 of the bundle bytes this set was read from.
    bundle_digest: Option<Vec<u8>>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("entry", &self.entry)
            .field("redaction", &self.redaction)
            .field("revision", &self.revision)
            .field("compiled", &self.compiled.is_some())
            .field("modules", &self.modules)
            .finish()
    }
}

impl PolicySet {
    /// Loads the production modules and data files under `dir` (see [`files`]), without a
    /// redaction rule: add it with [`PolicySet::with_redaction`].
    pub fn load(dir: &Path, entry: &str, timeout: Duration) -> Result<Self, PolicyError> {
        let files = PolicyFiles::read(dir)?;
        Self::compile(&files, dir, entry, timeout, false)
    }

    /// Compiles `files`; with `with_tests`, the test modules too (for `reflex policy test`).
    pub fn compile(
        files: &PolicyFiles,
        dir: &Path,
        entry: &str,
        timeout: Duration,
        with_tests: bool,
    ) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: timeout,
            // Reading the clock at every step cost a few per cent of each decision.
            check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
        });
        let tests: &[files::PolicyFile] = if with_tests { &files.tests } else { &[] };
        let mut modules = Vec::new();
        for file in files.modules.iter().chain(tests) {
            engine
                .add_policy(file.rel.clone(), file.text.clone())
                .map_err(|e| PolicyError::Parse {
                    path: file.path.clone(),
                    message: e.to_string(),
                })?;
            modules.push(file.path.clone());
        }
        for file in &files.data {
            let data =
                regorus::Value::from_json_str(&file.text).map_err(|e| PolicyError::Data {
                    path: file.path.clone(),
                    message: e.to_string(),
                })?;
            if data.as_object().is_err() {
                return Err(PolicyError::Data {
                    path: file.path.clone(),
                    message: "top level is not an object".into(),
                });
            }
            engine.add_data(data).map_err(|e| PolicyError::Data {
                path: file.path.clone(),
                message: e.to_string(),
            })?;
        }
        if files.modules.is_empty() {
            return Err(PolicyError::Empty(dir.to_owned()));
        }
        let package = entry
            .rsplit_once('.')
            .map(|(p, _)| p)
            .unwrap_or(entry)
            .to_owned();
        let packages = engine.get_packages().unwrap_or_default();
        if !packages.contains(&package) {
            return Err(PolicyError::NoEntry {
                entry: entry.to_owned(),
                package,
                dir: dir.to_owned(),
                found: packages.join(", "),
            });
        }
        let reads = input_reads(&engine, entry);
        Ok(Self {
            engine,
            compiled: None,
            engine_kind: PolicyEngine::Interpreter,
            not_compiled: Arc::from(Vec::new()),
            not_compiled_wire: Arc::from(Vec::new()),
            facts: InputFacts::envelope(),
            cross_check_every: DEFAULT_CROSS_CHECK_EVERY,
            entry: entry.to_owned(),
            reads,
            redaction: None,
            revision: files.revision(),
            modules,
            dir: dir.to_owned(),
            timeout,
            bundle: None,
            bundle_digest: None,
        })
    }

    /// Compiles a bundle's modules and data (see [`bundle::Bundle::policy_files`]); `origin`
    /// names it in messages. The revision is the manifest's, or the content hash when the
    /// manifest gives none.
    pub fn from_bundle(
        bundle: &bundle::Bundle,
        origin: &str,
        entry: &str,
        timeout: Duration,
    ) -> Result<Self, PolicyError> {
        let files = bundle
            .policy_files(origin)
            .map_err(|source| PolicyError::Bundle {
                url: origin.to_owned(),
                source,
            })?;
        let mut set = Self::compile(&files, Path::new(origin), entry, timeout, false)?;
        bundle
            .check_roots(&set.packages())
            .map_err(|source| PolicyError::Bundle {
                url: origin.to_owned(),
                source,
            })?;
        if !bundle.manifest.revision.is_empty() {
            set.revision.clone_from(&bundle.manifest.revision);
        }
        Ok(set)
    }

    /// Fetches the bundle `spec` names once and loads it (for start-up); the set then reloads
    /// from that URL ([`reload::PolicyWatch::spawn`]).
    pub fn load_bundle(
        spec: bundle::fetch::BundleSpec,
        entry: &str,
        timeout: Duration,
    ) -> Result<Self, PolicyError> {
        let bytes = bundle::fetch::fetch_once(&spec).map_err(|source| PolicyError::Bundle {
            url: spec.url.clone(),
            source,
        })?;
        let spec = Arc::new(spec);
        let mut set = Self::read_bundle(&spec, &bytes, entry, timeout)?;
        set.bundle = Some(spec);
        set.bundle_digest = Some(digest(&bytes));
        Ok(set)
    }

    fn read_bundle(
        spec: &bundle::fetch::BundleSpec,
        bytes: &[u8],
        entry: &str,
        timeout: Duration,
    ) -> Result<Self, PolicyError> {
        let read = bundle::Bundle::read(bytes, spec.key.as_ref()).map_err(|source| {
            PolicyError::Bundle {
                url: spec.url.clone(),
                source,
            }
        })?;
        Self::from_bundle(&read, &spec.url, entry, timeout)
    }

    /// The SHA-256 of the bundle bytes this set was read from, if it came from a bundle.
    pub fn bundle_digest(&self) -> Option<&[u8]> {
        self.bundle_digest.as_deref()
    }

    /// The bundle this set reloads from, if it came from one.
    pub fn bundle(&self) -> Option<&Arc<bundle::fetch::BundleSpec>> {
        self.bundle.as_ref()
    }

    /// Loads a newly fetched copy of this set's bundle with the same entry rule, redaction rule,
    /// time limit and engine; refused (an error) unless it verifies and compiles.
    pub fn reload_from_bundle(&self, bytes: &[u8]) -> Result<Self, PolicyError> {
        let Some(spec) = self.bundle.clone() else {
            return Err(PolicyError::Bundle {
                url: self.dir.display().to_string(),
                source: bundle::BundleError::Url(self.dir.display().to_string()),
            });
        };
        let redact = self.redaction.as_ref().map_or("", |r| r.entry.as_str());
        let mut set = Self::read_bundle(&spec, bytes, &self.entry, self.timeout)?
            .with_redaction(redact)?
            .with_input_facts(self.facts.clone())
            .with_cross_check(self.cross_check_every)
            .with_engine(self.engine_kind);
        set.bundle = Some(spec);
        set.bundle_digest = Some(digest(bytes));
        Ok(set)
    }

    /// Decides with `kind`. For [`PolicyEngine::Compiled`] the entry rule is compiled to the VM
    /// now (the redaction rule always runs on the interpreter, which fails closed); if the VM
    /// compiler does not support something the policy uses, the set logs why and keeps evaluating
    /// that rule with the interpreter. For [`PolicyEngine::Auto`] it is compiled only when
    /// [`safety`] proves that no rule the decision uses can raise on validated input (see
    /// [`PolicySet::with_input_facts`]); [`PolicySet::not_compiled`] says why not. The choice is
    /// logged.
    pub fn with_engine(mut self, kind: PolicyEngine) -> Self {
        self.engine_kind = kind;
        let mut reasons = Vec::new();
        let mut wire = Vec::new();
        self.compiled = match kind {
            PolicyEngine::Interpreter => None,
            PolicyEngine::Compiled => self.compile_rule(&self.entry),
            PolicyEngine::Auto => {
                reasons = self.proof(&self.facts);
                if reasons.is_empty() && self.facts.registry() {
                    wire = self.proof(&self.facts.without_data());
                }
                if reasons.is_empty() {
                    compiled::Compiled::build(&self.engine, &self.entry)
                        .map_err(|e| {
                            reasons.push(format!(
                                "the compiled engine cannot compile {}: {e}",
                                self.entry
                            ))
                        })
                        .ok()
                } else {
                    None
                }
            }
        };
        self.not_compiled = Arc::from(reasons);
        self.not_compiled_wire = Arc::from(if self.compiled.is_some() {
            wire
        } else {
            Vec::new()
        });
        telemetry::PolicyEngineChosen {
            revision: &self.revision,
            configured: kind,
            deciding: self.engine(),
            reasons: &self.not_compiled,
            wire: &self.not_compiled_wire,
        }
        .emit();
        self
    }

    /// Why the entry rule may raise on input `facts` describes (empty: compiled-safe).
    fn proof(&self, facts: &InputFacts) -> Vec<String> {
        let ast = match self.engine.get_ast_as_json() {
            Ok(ast) => ast,
            Err(e) => return vec![format!("the syntax tree cannot be read: {e}")],
        };
        safety::prove(&ast, &self.entry, &self.data(), facts, &self.dir)
            .unwrap_or_else(|e| vec![format!("the syntax tree cannot be analysed: {e}")])
    }

    /// Proves compiled-safety against `facts` (what admission guarantees about the input; by
    /// default the envelope alone). Call before [`PolicySet::with_engine`]; kept on reload.
    pub fn with_input_facts(mut self, facts: InputFacts) -> Self {
        self.facts = facts;
        self
    }

    /// Decides one compiled decision in `every` with the interpreter too, counts and logs any
    /// disagreement, and keeps the interpreter's decision then (0: never). Kept on reload.
    pub fn with_cross_check(mut self, every: u64) -> Self {
        self.cross_check_every = every;
        self
    }

    /// Why `engine = "auto"` decides this set with the interpreter: each rule expression that
    /// may raise, as `file:line: what`. Empty when it decides with the compiled engine, or when
    /// the engine was chosen explicitly.
    pub fn not_compiled(&self) -> &[String] {
        &self.not_compiled
    }

    /// Why `engine = "auto"`, although it compiles this set, decides wire-format records (whose
    /// data a registry's schema validated, not the schema files) with the interpreter. Empty when
    /// the compiled engine decides every record.
    pub fn not_compiled_wire(&self) -> &[String] {
        &self.not_compiled_wire
    }

    /// The engine as configured (`auto`, `interpreter`, `compiled`).
    pub fn configured_engine(&self) -> PolicyEngine {
        self.engine_kind
    }

    /// `rule` compiled to the VM, if it compiles (else logged).
    fn compile_rule(&self, rule: &str) -> Option<compiled::Compiled> {
        compiled::Compiled::build(&self.engine, rule)
            .inspect_err(|error| {
                tracing::warn!(
                    rule,
                    %error,
                    "the policy rule does not compile to regorus's VM; evaluating it with the interpreter"
                );
            })
            .ok()
    }

    /// Redacts with `rule` (`[policy] redact`, e.g. [`redaction::DEFAULT_RULE`]; `""`: no
    /// redaction). The set is refused unless a module defines the rule and it, and every rule it
    /// uses, reads nothing of the input but `input.event` (nor the clock or randomness): see
    /// [`redaction`].
    pub fn with_redaction(mut self, rule: &str) -> Result<Self, PolicyError> {
        if rule.is_empty() {
            self.redaction = None;
            return Ok(self);
        }
        let ast = self
            .engine
            .get_ast_as_json()
            .map_err(|e| PolicyError::Analysis {
                rule: rule.to_owned(),
                message: e.to_string(),
            })?;
        self.redaction = Some(Arc::new(redaction::analyse(&ast, rule, &self.dir)?));
        Ok(self)
    }

    /// Loads the policy set in `dir` with the same entry rule, redaction rule, time limit and
    /// engine as this one.
    pub fn reload_from(&self, dir: &Path) -> Result<Self, PolicyError> {
        let redact = self.redaction.as_ref().map_or("", |r| r.entry.as_str());
        Ok(Self::load(dir, &self.entry, self.timeout)?
            .with_redaction(redact)?
            .with_input_facts(self.facts.clone())
            .with_cross_check(self.cross_check_every)
            .with_engine(self.engine_kind))
    }

    /// The content hash of every production policy and data file.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The evaluator deciding the entry rule: [`PolicyEngine::Compiled`] or
    /// [`PolicyEngine::Interpreter`] (what `auto` chose; see [`PolicySet::configured_engine`]).
    pub fn engine(&self) -> PolicyEngine {
        if self.compiled.is_some() {
            PolicyEngine::Compiled
        } else {
            PolicyEngine::Interpreter
        }
    }

    /// The Rego modules loaded.
    pub fn modules(&self) -> &[PathBuf] {
        &self.modules
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry rule.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// The redaction rule and the event fields it reads (`None`: no redaction configured).
    pub fn redaction(&self) -> Option<&RedactionRule> {
        self.redaction.as_deref()
    }

    /// The packages its modules define (`data.…`).
    pub fn packages(&self) -> Vec<String> {
        self.engine.get_packages().unwrap_or_default()
    }

    /// The data document (every data file merged).
    pub fn data(&self) -> Value {
        serde_json::to_value(self.engine.get_data()).unwrap_or(Value::Null)
    }

    /// Whether the entry rule is decided by the compiled VM (else by the interpreter; see
    /// [`PolicySet::with_engine`]).
    pub fn is_compiled(&self) -> bool {
        self.compiled.is_some()
    }

    /// What of the input document the entry rule can read (see [`projection`]); `None` when it
    /// may read all of it.
    pub fn input_reads(&self) -> Option<&Projection> {
        self.reads.as_deref()
    }

    /// An evaluator that decides (and redacts) with the interpreter even when the rules are
    /// compiled (for comparisons: benchmarks, and checking that both decide the same).
    pub fn interpreter(&self) -> Evaluator {
        Evaluator {
            machine: None,
            cross_check_every: 0,
            redactor: redaction::Redactor::new(self.redaction.clone()),
            ..self.evaluator()
        }
    }

    /// A per-worker evaluator with its own copy of the engine (and of the VM, if compiled).
    pub fn evaluator(&self) -> Evaluator {
        let machine = self.compiled.as_ref().and_then(|c| {
            c.machine(self.timeout)
                .inspect_err(|error| {
                    tracing::warn!(%error, "cannot set up the policy VM; deciding with the interpreter")
                })
                .ok()
        });
        Evaluator {
            engine: Some(self.engine.clone()),
            machine,
            machine_for_wire: self.not_compiled_wire.is_empty(),
            cross_check_every: self.cross_check_every,
            decisions: 0,
            last_input: None,
            reads: self.reads.clone(),
            entry: self.entry.clone(),
            revision: self.revision.clone(),
            redactor: redaction::Redactor::new(self.redaction.clone()),
        }
    }
}

/// Evaluates the entry rule and the redaction rule; owned by one worker, reused for every event.
pub struct Evaluator {
    engine: Option<regorus::Engine>,
    machine: Option<compiled::Machine>,
    /// Whether the VM decides wire-format records too ([`PolicySet::not_compiled_wire`]).
    machine_for_wire: bool,
    /// One VM decision in this many is also decided by the interpreter (0: none).
    cross_check_every: u64,
    /// VM decisions so far.
    decisions: u64,
    /// The input of the last VM decision, handed to the interpreter by [`Evaluator::eval_rule`].
    last_input: Option<regorus::Value>,
    /// What of the input the entry rule can read ([`PolicySet::input_reads`]).
    reads: Option<Arc<Projection>>,
    entry: String,
    revision: String,
    redactor: redaction::Redactor,
}

impl Evaluator {
    /// An evaluator without a policy: every decision is a [`Failure::NoPolicy`] deny.
    pub fn unloaded() -> Self {
        Self {
            engine: None,
            machine: None,
            machine_for_wire: false,
            cross_check_every: 0,
            decisions: 0,
            last_input: None,
            reads: None,
            entry: String::new(),
            revision: NO_REVISION.to_owned(),
            redactor: redaction::Redactor::new(None),
        }
    }

    /// The revision this evaluator runs.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The paths to redact from every copy of `event` reflex writes (the audit record's
    /// obligations, emitted events, action bodies, lake rows), from the redaction rule alone.
    /// Empty when no redaction rule is configured. An error means the rule could not say
    /// (undefined, an error, the time limit, not a list of strings, no policy loaded): the
    /// caller must then write none of the event's data. Answers are cached per value of the
    /// fields the rule reads ([`RedactionRule::reads`]), for this revision only.
    pub fn redaction(&mut self, event: &CloudEvent) -> Result<Arc<[String]>, RedactionFailed> {
        self.redactor
            .paths(self.engine.as_ref(), event)
            .inspect_err(redaction::failed_closed)
    }

    /// How often this evaluator evaluated the redaction rule, and how often its cache answered.
    pub fn redaction_stats(&self) -> RedactionStats {
        self.redactor.stats()
    }

    /// Decides on one input document, failing closed. With the compiled engine, one decision in
    /// `[policy] cross_check_every` is decided by the interpreter too; when they disagree the
    /// interpreter's decision is the one returned (see [`Evaluator::cross_check`]).
    pub fn decide(&mut self, input: regorus::Value) -> Decision {
        self.decide_record(input, false)
    }

    /// [`Evaluator::decide`] for an admitted record; `wire`: its data arrived in the Confluent
    /// wire format and was validated against the registry's schema, not the schema files, so
    /// the VM decides it only if the set is proved compiled-safe without the data schemas.
    pub fn decide_record(&mut self, input: regorus::Value, wire: bool) -> Decision {
        self.decide_with(|_| input.clone(), wire)
    }

    /// [`Evaluator::decide_record`] on the input `build` makes: given the parts the entry rule
    /// can read ([`PolicySet::input_reads`]), it may build only those; given `None`, it builds
    /// the whole document. A cross-checked decision is decided by the interpreter on the whole
    /// document, so the check covers the projection too.
    pub fn decide_with(
        &mut self,
        build: impl Fn(Option<&Projection>) -> regorus::Value,
        wire: bool,
    ) -> Decision {
        let reads = self.reads.clone();
        let input = build(reads.as_deref());
        if wire && !self.machine_for_wire && self.machine.is_some() {
            let decision = to_decision(self.interpret(input));
            if let Some(failure) = decision.failure {
                telemetry::PolicyFailedClosed { failure }.emit();
            }
            return decision;
        }
        let checked = self.machine.is_some() && self.cross_check_every > 0 && {
            let due = self.decisions % self.cross_check_every == 0;
            self.decisions = self.decisions.wrapping_add(1);
            due
        };
        let decision = if checked {
            let whole = if reads.is_some() {
                build(None)
            } else {
                input.clone()
            };
            let compiled = to_decision(self.evaluate(input));
            self.cross_check(whole, compiled)
        } else {
            to_decision(self.evaluate(input))
        };
        if let Some(failure) = decision.failure {
            telemetry::PolicyFailedClosed { failure }.emit();
        }
        decision
    }

    /// Decides `input` with the interpreter and compares with the compiled engine's decision;
    /// a disagreement is counted and logged with the event id and both decisions, and the
    /// interpreter's decision (which fails closed on errors) is returned.
    pub fn cross_check(&mut self, input: regorus::Value, compiled: Decision) -> Decision {
        let id = match &input["event"]["id"] {
            regorus::Value::String(id) => id.to_string(),
            _ => String::new(),
        };
        let interpreted = to_decision(self.interpret(input));
        let timed_out = [&compiled, &interpreted]
            .iter()
            .any(|d| d.failure == Some(Failure::Timeout));
        let agree = same_decision(&compiled, &interpreted);
        telemetry::EnginesCompared {
            agree: agree || timed_out,
            event_id: &id,
            revision: &self.revision,
            compiled: &compiled,
            interpreted: &interpreted,
        }
        .emit();
        if agree {
            compiled
        } else {
            interpreted
        }
    }

    /// The entry rule's raw value (as JSON) for `input`, or the fail-closed deny.
    pub fn evaluate(&mut self, input: regorus::Value) -> Result<Value, Decision> {
        if let Some(machine) = self.machine.as_mut() {
            self.last_input = Some(input.clone());
            return match machine.eval(input) {
                Ok(value) => document(&value),
                Err(compiled::MachineError::Timeout(e)) => {
                    Err(Decision::failed(Failure::Timeout, Some(e)))
                }
                Err(compiled::MachineError::Failed(e)) => {
                    Err(Decision::failed(Failure::Error, Some(e)))
                }
            };
        }
        self.interpret(input)
    }

    /// The entry rule's value decided by the interpreter.
    fn interpret(&mut self, input: regorus::Value) -> Result<Value, Decision> {
        let Some(engine) = self.engine.as_mut() else {
            return Err(Decision::failed(Failure::NoPolicy, None));
        };
        self.last_input = None;
        engine.set_input(input);
        match engine.eval_rule(self.entry.clone()) {
            Ok(value) => document(&value),
            Err(e) => Err(Decision::failed(
                interpreter_failure(&e),
                Some(e.to_string()),
            )),
        }
    }

    /// Evaluates the entry rule on `input` with every engine this evaluator may decide with (the
    /// VM, and the interpreter that serves cross-checks, wire-format records and redaction),
    /// so that what the engines set up on their first evaluation is done before the first
    /// record. The answer is thrown away: nothing is counted, sampled or logged, and a failure
    /// (likely on a made-up input) is no decision. Returns how many engines evaluated.
    pub fn warm(&mut self, input: regorus::Value) -> usize {
        let mut engines = 0;
        if let Some(machine) = self.machine.as_mut() {
            let _ = machine.eval(input.clone());
            engines += 1;
        }
        if let Some(engine) = self.engine.as_mut() {
            engine.set_input(input);
            let _ = engine.eval_rule(self.entry.clone());
            engines += 1;
        }
        self.last_input = None;
        engines
    }

    /// Evaluates another rule (e.g. `data.reflex.business.deny`) on the last input.
    pub fn eval_rule(&mut self, rule: &str) -> Option<Value> {
        let engine = self.engine.as_mut()?;
        if let Some(input) = self.last_input.take() {
            engine.set_input(input);
        }
        match engine.eval_rule(rule.to_owned()) {
            Ok(regorus::Value::Undefined) | Err(_) => None,
            Ok(v) => serde_json::to_value(&v).ok(),
        }
    }
}

/// What of the input `entry` can read, when that is less than all of it (see [`projection`]).
fn input_reads(engine: &regorus::Engine, entry: &str) -> Option<Arc<Projection>> {
    let reads = engine
        .get_ast_as_json()
        .map_err(|e| e.to_string())
        .and_then(|ast| Projection::of_rule(&ast, entry));
    match reads {
        Ok(reads) if !reads.is_whole() => {
            tracing::debug!(entry, reads = ?reads, "the decision reads only these parts of the input");
            Some(Arc::new(reads))
        }
        Ok(_) => None,
        Err(error) => {
            tracing::debug!(entry, %error, "what the decision reads is not known: it gets the whole input");
            None
        }
    }
}

/// A decision from an entry rule's value, or the fail-closed deny.
fn to_decision(value: Result<Value, Decision>) -> Decision {
    match value {
        Ok(doc) => Decision::from_document(&doc),
        Err(failed) => failed,
    }
}

/// Whether two engines decided alike: allow, reasons and obligations (not the error text).
fn same_decision(a: &Decision, b: &Decision) -> bool {
    a.allow == b.allow && a.reasons == b.reasons && a.obligations == b.obligations
}

/// The SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).to_vec()
}

/// The failure an interpreter error stands for: the time limit, or any other error.
fn interpreter_failure(e: &anyhow::Error) -> Failure {
    let timed_out = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<regorus::LimitError>(),
            Some(regorus::LimitError::TimeLimitExceeded { .. })
        )
    }) || e.to_string().contains("exceeded time limit");
    if timed_out {
        Failure::Timeout
    } else {
        Failure::Error
    }
}

/// The entry rule's value as JSON; undefined is a [`Failure::Undefined`] deny.
fn document(value: &regorus::Value) -> Result<Value, Decision> {
    match value {
        regorus::Value::Undefined => Err(Decision::failed(Failure::Undefined, None)),
        value => serde_json::to_value(value)
            .map_err(|e| Decision::failed(Failure::Malformed, Some(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(files: &[(&str, &str)], timeout: Duration) -> Result<PolicySet, PolicyError> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write policy");
        }
        PolicySet::load(dir.path(), "data.reflex.decision", timeout)
    }

    const POLICY: &str = r#"package reflex
decision := {"allow": count(deny) == 0, "reasons": deny, "obligations": {}}
deny contains "too big" if input.amount > data.limits.max
deny contains msg if { input.amount == 13; msg := sprintf("%v", [1 / 0]) }
"#;

    fn input(v: Value) -> regorus::Value {
        regorus::Value::from(v)
    }

    #[test]
    fn allows_and_denies_with_data() {
        let set = set(
            &[
                ("p.rego", POLICY),
                ("limits.json", r#"{"limits":{"max":10}}"#),
            ],
            Duration::from_secs(1),
        )
        .expect("loads");
        assert!(set.revision().starts_with("sha256:"));
        let mut ev = set.evaluator();
        let d = ev.decide(input(json!({"amount": 5})));
        assert!(
            d.allow && d.reasons.is_empty() && d.failure.is_none(),
            "{d:?}"
        );
        let d = ev.decide(input(json!({"amount": 50})));
        assert!(!d.allow);
        assert_eq!(d.reasons, ["too big"]);
    }

    #[test]
    fn fails_closed() {
        let undefined = "package reflex\ndecision := {\"allow\": true} if input.x == 1\n";
        let mut ev = set(&[("p.rego", undefined)], Duration::from_secs(1))
            .expect("loads")
            .evaluator();
        let d = ev.decide(input(json!({"x": 2})));
        assert_eq!((d.allow, d.failure), (false, Some(Failure::Undefined)));
        let malformed = "package reflex\ndecision := {\"allow\": \"yes\"}\n";
        let mut ev = set(&[("p.rego", malformed)], Duration::from_secs(1))
            .expect("loads")
            .evaluator();
        assert_eq!(
            ev.decide(input(json!({}))).failure,
            Some(Failure::Malformed)
        );
    }

    #[test]
    fn each_failure_kind_is_its_own_reason_and_counter() {
        let slow = "package reflex\ndecision := {\"allow\": count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 1000); x == y + 1000000000]) > 0}\n";
        let mut ev = set(&[("p.rego", slow)], Duration::from_millis(5))
            .expect("loads")
            .evaluator();
        let before = telemetry::failures(Failure::Timeout);
        let d = ev.decide(input(json!({})));
        assert_eq!(d.failure, Some(Failure::Timeout), "{d:?}");
        assert_eq!(d.reasons, ["policy_timeout"]);
        assert!(telemetry::failures(Failure::Timeout) > before);

        let mut none = Evaluator::unloaded();
        let before = telemetry::failures(Failure::NoPolicy);
        let d = none.decide(input(json!({})));
        assert_eq!((d.allow, d.failure), (false, Some(Failure::NoPolicy)));
        assert_eq!(none.revision(), NO_REVISION);
        assert!(telemetry::failures(Failure::NoPolicy) > before);
    }

    #[test]
    fn the_compiled_engine_decides_the_same_except_on_errors_in_rule_bodies() {
        let set = set(
            &[
                ("p.rego", POLICY),
                ("limits.json", r#"{"limits":{"max":20}}"#),
            ],
            Duration::from_secs(1),
        )
        .expect("loads")
        .with_engine(PolicyEngine::Compiled);
        assert!(set.is_compiled());
        let (mut vm, mut interpreter) = (set.evaluator(), set.interpreter());
        for amount in [5, 50] {
            let i = input(json!({"amount": amount}));
            assert_eq!(vm.decide(i.clone()), interpreter.decide(i));
        }
        // `1 / 0` in a deny rule: the interpreter fails closed, the VM drops that rule body.
        let i = input(json!({"amount": 13}));
        assert_eq!(interpreter.decide(i.clone()).failure, Some(Failure::Error));
        let d = vm.decide(i);
        assert!(d.allow && d.failure.is_none(), "{d:?}");
        // A reload keeps the engine (the repo's policies compile to the VM).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let repo = PolicySet::load(&dir, "data.reflex.decision", Duration::from_secs(1))
            .expect("the repo's policies load")
            .with_engine(PolicyEngine::Compiled);
        assert!(repo.is_compiled());
        assert!(repo.reload_from(&dir).expect("reloads").is_compiled());
    }

    #[test]
    fn revision_changes_with_content() {
        let a = set(
            &[
                ("p.rego", POLICY),
                ("limits.json", r#"{"limits":{"max":10}}"#),
            ],
            Duration::from_secs(1),
        )
        .expect("loads");
        let b = set(
            &[
                ("p.rego", POLICY),
                ("limits.json", r#"{"limits":{"max":11}}"#),
            ],
            Duration::from_secs(1),
        )
        .expect("loads");
        assert_ne!(a.revision(), b.revision());
    }

    #[test]
    fn load_errors_name_the_problem() {
        let err = set(
            &[("bad.rego", "package reflex\ndecision := {")],
            Duration::from_secs(1),
        )
        .expect_err("parse");
        assert!(err.to_string().contains("bad.rego"), "{err}");
        let err = set(
            &[("other.rego", "package other\nx := 1\n")],
            Duration::from_secs(1),
        )
        .expect_err("no entry");
        assert!(
            err.to_string().contains("data.reflex") && err.to_string().contains("data.other"),
            "{err}"
        );
        let err = set(&[], Duration::from_secs(1)).expect_err("empty");
        assert!(err.to_string().contains("no *.rego"), "{err}");
    }
}

//! The `reflex` command line: parses arguments, sets up logging, loads the configuration,
//! calls into the library and maps the result to an exit code.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use reflex::config::{Config, PolicySettings};
use reflex::policy::{explain, testing, PolicySet};
use reflex::produce::{self, ProduceOptions};
use reflex::registry::manage;
use reflex::replay::ReplayOptions;
use reflex::role::actions::{self as actions_role, RunOptions};
use reflex::role::lake::LakeRunOptions;

/// Governed, audited actions from business events on Kafka.
#[derive(Debug, Parser)]
#[command(name = "reflex", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "REFLEX_CONFIG",
        default_value = "config/reflex.toml"
    )]
    config: PathBuf,
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `reflex=debug`.
    #[arg(long, global = true, env = "REFLEX_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, global = true, env = "REFLEX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Actions,
    Lake,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker role until SIGINT or SIGTERM.
    Run {
        /// The role to run.
        #[arg(long, env = "REFLEX_ROLE", value_enum, default_value_t = Role::Actions)]
        role: Role,
        /// Stop once every assigned partition is consumed to its end, then print the summary.
        #[arg(long)]
        drain: bool,
        /// Worker id recorded in audit records (default: host name and process id).
        #[arg(long)]
        worker_id: Option<String>,
    },
    /// Validate the configuration, schemas, policies and actions without a broker.
    Check {
        /// Also try every configured endpoint (brokers, registry, object store, HTTP services)
        /// and report each; exit 1 if any fails.
        #[arg(long)]
        connect: bool,
    },
    /// Publish CloudEvents from JSON lines (a file, or `-` for standard input).
    Produce {
        /// Destination topic.
        #[arg(long, short)]
        topic: String,
        /// Send lines as they are, without validating them.
        #[arg(long)]
        no_validate: bool,
        /// Send in binary content mode (`ce_*` headers, data as the value).
        #[arg(long)]
        binary: bool,
        /// Input file; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
    /// Create the configured topics that do not exist yet.
    Topics,
    /// Keep the schema registry in step with `schemas/` (needs `[registry] url`).
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Check, test, explain and shadow-evaluate the policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Data lake commands.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// Summarise the dead-letter topic, or send its records back through the pipeline.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Dead letters by event type and reason, with counts, first and last time, latest error.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send the matching dead letters back to their source topics, once the cause is fixed.
    Replay {
        #[command(flatten)]
        filter: DlqFilter,
        /// Only count what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Also send dead letters that were replayed before (the audit trail names them).
        #[arg(long)]
        again: bool,
    },
}

#[derive(Debug, clap::Args)]
struct DlqFilter {
    /// Only this event type.
    #[arg(long = "type")]
    ty: Option<String>,
    /// Only this reason code (action_failed, schema_invalid, …).
    #[arg(long)]
    reason: Option<String>,
    /// Only dead letters written since this RFC 3339 time or this long ago (90m, 2h, 1d).
    #[arg(long)]
    since: Option<String>,
}

impl DlqFilter {
    fn build(self) -> anyhow::Result<reflex::dlq::Filter> {
        let since_ms = self
            .since
            .map(|s| reflex::dlq::parse_since(&s, chrono::Utc::now()))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        Ok(reflex::dlq::Filter {
            ty: self.ty,
            reason: self.reason,
            since_ms,
        })
    }
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Each local schema, and its subject's versions in the registry.
    List,
    /// Check every local schema against its subject's latest version (exit 1 if incompatible).
    Check,
    /// Register every local schema under its subject (idempotent); prints subject, version, id.
    Register,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Compile the policy set and print its revision; exits non-zero if it does not compile
    /// (a worker would refuse it and keep its running revision).
    Check {
        /// Policy directory (default: `[policy] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The revision in the policy directory (and whether it compiles) against the revisions
    /// workers decide with, read from the tail of the audit topic.
    Status {
        /// Audit records read per partition, from the end.
        #[arg(long, default_value_t = 1000)]
        tail: i64,
    },
    /// Run the Rego `test_*` rules and the cases in `tests/*.yaml`; exits non-zero on a failure.
    Test {
        /// Policy directory (default: `[policy] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Decide on one event (a CloudEvent, or a full policy input `{event, context}`) and say why.
    Eval {
        /// JSON file; `-` reads standard input.
        #[arg(long, short)]
        input: PathBuf,
        /// Policy directory (default: `[policy] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The decision moment (`context.now`, RFC 3339) for a bare CloudEvent; default: now.
        #[arg(long)]
        now: Option<String>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-decide recorded events with a candidate policy set and show what would change
    /// against the decisions in the audit topic.
    Replay {
        /// The candidate policy directory.
        #[arg(long)]
        candidate: PathBuf,
        /// Event topic to replay (repeatable; default: the configured event topics).
        #[arg(long)]
        topic: Vec<String>,
        /// First offset to replay in every partition (default: the beginning).
        #[arg(long)]
        from_offset: Option<i64>,
        /// Stop after this many events per topic.
        #[arg(long)]
        max_events: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LakeCommand {
    /// Print SQL that creates one DuckDB view per lake table (`duckdb -init <file>`).
    Views,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Policy { command } = &cli.command {
        if !matches!(command, PolicyCommand::Replay { .. }) {
            return policy_command(&cli.config, command);
        }
    }
    let config = Config::load(&cli.config)
        .with_context(|| format!("configuration {} is not usable", cli.config.display()))?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Check { connect } => {
            println!("{}: ok", config.path.display());
            for warning in &config.warnings {
                println!("  warning: {warning}");
            }
            println!(
                "  schemas   {} ({} types)",
                config.schema_dir.display(),
                config.schemas.types().count()
            );
            println!(
                "  policies  {} ({} modules, revision {})",
                config.policy_dir.display(),
                config.policy.modules().len(),
                config.policy.revision()
            );
            for (ty, action) in config.actions.iter() {
                match action.http() {
                    Some(http) => println!(
                        "  {ty} -> {} (http {} {}, {} attempts)",
                        action.name,
                        http.method,
                        http.url.as_str(),
                        http.retry.max_attempts
                    ),
                    None => println!("  {ty} -> {} ({})", action.name, action.kind.name()),
                }
                for lookup in config.enrichment.get(ty) {
                    println!(
                        "    enrichment {}: GET {} (timeout {}, cached {}, on_error = {})",
                        lookup.name,
                        lookup.url.as_str(),
                        humantime::format_duration(lookup.timeout),
                        humantime::format_duration(lookup.ttl),
                        lookup.on_error.name()
                    );
                }
            }
            if connect {
                println!("  endpoints");
                let endpoints = runtime.block_on(reflex::connectivity::check(&config));
                for endpoint in &endpoints {
                    println!("{endpoint}");
                }
                if !endpoints.iter().all(reflex::connectivity::Endpoint::ok) {
                    return Ok(ExitCode::FAILURE);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics => {
            let created = runtime.block_on(reflex::kafka::ensure_topics(
                &config.kafka,
                &config.topics,
                &[],
            ))?;
            if created.is_empty() {
                println!("all topics exist");
            }
            for topic in created {
                println!("created {topic}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            role: Role::Actions,
            drain,
            worker_id,
        } => {
            let worker_id = worker_id.unwrap_or_else(default_worker_id);
            let shutdown = CancellationToken::new();
            let summary = runtime.block_on(async {
                tokio::spawn(signal_shutdown(shutdown.clone()));
                actions_role::run(&config, RunOptions { worker_id, drain }, shutdown).await
            })?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas { command } => {
            let Some(registry) = config.registry.clone() else {
                anyhow::bail!("no schema registry configured: set [registry] url in {} or REFLEX_REGISTRY_URL", config.path.display());
            };
            let local = config.schemas.clone();
            match command {
                SchemasCommand::List => {
                    for state in runtime.block_on(manage::list(&local, &registry))? {
                        println!("{state}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                SchemasCommand::Register => {
                    for v in runtime.block_on(manage::register(&local, &registry))? {
                        println!("{:<24} version {:<3} id {}", v.subject, v.version, v.id);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                SchemasCommand::Check => {
                    let problems = runtime.block_on(manage::check(&local, &registry))?;
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    let total = local.types().count();
                    println!(
                        "{} of {total} schemas compatible with {}",
                        total - problems.len(),
                        registry.url()
                    );
                    // A schema must also keep the types of the columns the lake already has.
                    let lake = runtime.block_on(reflex::lake::check_schemas(&config));
                    match &lake {
                        Ok(()) => println!(
                            "lake columns compatible in {}",
                            reflex::lake::store::describe(&config.lake.location)
                        ),
                        Err(e) => eprintln!("{e}"),
                    }
                    Ok(if problems.is_empty() && lake.is_ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        }
        Command::Policy {
            command:
                PolicyCommand::Replay {
                    candidate,
                    topic,
                    from_offset,
                    max_events,
                    json,
                },
        } => {
            let options = ReplayOptions {
                candidate,
                topics: topic,
                from_offset,
                max_events,
            };
            let report = runtime.block_on(reflex::replay::replay(&config, &options))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => policy_command(&cli.config, &command),
        Command::Run {
            role: Role::Lake,
            drain,
            worker_id: _,
        } => {
            let shutdown = CancellationToken::new();
            let summary = runtime.block_on(async {
                tokio::spawn(signal_shutdown(shutdown.clone()));
                reflex::role::lake::run(&config, LakeRunOptions { drain }, shutdown).await
            })?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq {
            command: DlqCommand::List { filter, json },
        } => {
            let listing = reflex::dlq::list(&config, &filter.build()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                println!("{listing}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    filter,
                    dry_run,
                    again,
                },
        } => {
            let filter = filter.build()?;
            let replayed =
                runtime.block_on(reflex::dlq::replay(&config, &filter, dry_run, again))?;
            if dry_run {
                for (why, n) in &replayed.skipped {
                    println!("would skip {n}: {why}");
                }
                println!("{}", replayed.sent);
                println!("dry run: nothing was sent");
            } else {
                println!("{replayed}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lake {
            command: LakeCommand::Views,
        } => {
            print!("{}", runtime.block_on(reflex::lake::views_sql(&config))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce {
            topic,
            no_validate,
            binary,
            file,
        } => {
            let options = ProduceOptions {
                topic,
                validate: !no_validate,
                binary,
            };
            let report = match file.filter(|f| f.as_os_str() != "-") {
                Some(path) => {
                    let f = std::fs::File::open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    runtime.block_on(produce::produce(&config, &options, BufReader::new(f)))?
                }
                None => runtime.block_on(produce::produce(
                    &config,
                    &options,
                    std::io::stdin().lock(),
                ))?,
            };
            for (line, reason) in report.rejected.iter().take(20) {
                eprintln!("line {line}: rejected: {reason}");
            }
            for (line, error) in report.failed.iter().take(20) {
                eprintln!("line {line}: not delivered: {error}");
            }
            eprintln!("{report}");
            let ok = report.rejected.is_empty() && report.failed.is_empty();
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `reflex policy check|test|eval`: these need only the `[policy]` table, so they work on a
/// policy set that does not compile.
fn policy_command(config: &Path, command: &PolicyCommand) -> anyhow::Result<ExitCode> {
    let settings = PolicySettings::load(config)
        .with_context(|| format!("configuration {} is not usable", config.display()))?;
    let dir_or = |dir: &Option<PathBuf>| dir.clone().unwrap_or_else(|| settings.dir.clone());
    match command {
        PolicyCommand::Check { dir } => {
            let dir = dir_or(dir);
            match PolicySet::load(&dir, &settings.entry, settings.timeout) {
                Ok(set) => {
                    println!("{}: ok, revision {}", dir.display(), set.revision());
                    println!("  entry     {}", set.entry());
                    println!("  modules   {}", set.modules().len());
                    println!("  packages  {}", set.packages().join(", "));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    let revision = reflex::policy::files::revision(&dir)
                        .unwrap_or_else(|_| "unreadable".into());
                    println!("{}: REFUSED, revision {revision}", dir.display());
                    println!("  {e}");
                    println!("  running workers keep their revision until this compiles");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PolicyCommand::Test { dir } => {
            let dir = dir_or(dir);
            let report = testing::run(&dir, &settings.entry, settings.timeout)?;
            println!("{report}");
            Ok(if report.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::Eval {
            input,
            dir,
            now,
            json,
        } => {
            let dir = dir_or(dir);
            let set = PolicySet::load(&dir, &settings.entry, settings.timeout)?;
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(input)
                    .with_context(|| format!("cannot read {}", input.display()))?
            };
            let document = eval_input(&text, now.as_deref())
                .with_context(|| format!("{} is not a usable input", input.display()))?;
            let explanation = explain::explain(&set, &document);
            if *json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                println!("{explanation}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Status { tail } => {
            let status = reflex::replay::status::status(&settings, *tail)?;
            println!("{status}");
            Ok(if status.refused.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Replay { .. } => Ok(ExitCode::FAILURE),
    }
}

/// The policy input for `reflex policy eval`: a full input as given, or a CloudEvent decoded as
/// the worker decodes it and wrapped as the worker wraps it.
fn eval_input(text: &str, now: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    if value.get("event").is_some() {
        return Ok(value);
    }
    let (event, mode) = reflex::event::CloudEvent::decode(Some(text.as_bytes()), &[])?;
    let now = match now {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("--now {t} is not an RFC 3339 time"))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let input = reflex::ingest::Input {
        topic: "(eval)",
        partition: 0,
        offset: 0,
        key: None,
        value: Some(text.as_bytes()),
        headers: &[],
        timestamp_ms: None,
    };
    Ok(reflex::ingest::policy_document(
        &event,
        mode,
        &input,
        &now,
        &serde_json::Map::new(),
    ))
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "reflex".into());
    format!("{host}-{}", std::process::id())
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn signal_shutdown(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown requested; draining in-flight work");
    token.cancel();
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

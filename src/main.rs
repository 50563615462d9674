//! The `reflex` command line: parses arguments, sets up logging, loads the configuration,
//! calls into the library and maps the result to an exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use reflex::cli::{self, Report};
use reflex::config::{Config, PolicySettings};
use reflex::produce::ProduceOptions;
use reflex::replay::ReplayOptions;
use reflex::role::actions::{self as actions_role, RunOptions};
use reflex::role::lake::LakeRunOptions;

/// mimalloc as the global allocator: a record allocates and frees many small buffers, often on
/// different threads (the README's performance section gives what it saves, measured). Built
/// with mimalloc's `override`, it is also the process's `malloc`, so librdkafka's buffers come
/// from it rather than from glibc's per-thread arenas.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// How a command prints its report.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Output {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Actions,
    Lake,
    Analytics,
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
        /// Static group membership (`group.instance.id`): a stable name per replica, such as a
        /// pod name. A worker restarted under the same name within the session timeout gets its
        /// partitions back without a rebalance; two live workers must never share one.
        #[arg(long, env = "REFLEX_INSTANCE_ID")]
        instance_id: Option<String>,
        /// Also write the summary as JSON to this file when the worker stops (records, busy
        /// seconds from the first record received to the last one done, the CPU seconds used
        /// before the first record arrived, counts), for benchmarks and scripts.
        #[arg(long, value_name = "FILE")]
        summary_json: Option<PathBuf>,
    },
    /// Validate the configuration, schemas, policies and actions without a broker.
    Check {
        /// Also try every configured endpoint (brokers, registry, object store, HTTP services)
        /// and report each; exit 1 if any fails.
        #[arg(long)]
        connect: bool,
        #[command(flatten)]
        output: Output,
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
        /// Print the summary as JSON on standard output (the text goes to standard error).
        #[arg(long)]
        json: bool,
    },
    /// Print the `publisher-signature` header value of one record (a publisher's tool; it
    /// reads no configuration), or make a new Ed25519 key with --new-key.
    Sign {
        /// The key id the header names (`[publishers.<id>]` on the consuming side).
        #[arg(long, required_unless_present = "new_key")]
        key_id: Option<String>,
        /// The key's algorithm.
        #[arg(long, value_enum, default_value_t = SignAlgorithm::Ed25519)]
        algorithm: SignAlgorithm,
        /// The HMAC secret, or the Ed25519 private key seed (base64): `env:VAR` or `file:PATH`.
        #[arg(long, required_unless_present = "new_key")]
        secret: Option<String>,
        /// The record key.
        #[arg(long)]
        key: Option<String>,
        /// A record header, NAME=VALUE (repeatable); `ce_*` and `content-type` are signed.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// The record value, signed byte for byte as read; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Write a new Ed25519 private key seed to this file (it must not exist) and print
        /// the public key for `[publishers.<id>] public_key`.
        #[arg(long, conflicts_with_all = ["key_id", "secret", "key", "headers", "file"])]
        new_key: Option<PathBuf>,
    },
    /// Create the configured topics that do not exist yet.
    Topics {
        #[command(flatten)]
        output: Output,
    },
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
    /// Run the analyses offline: their test cases, or the findings over a file of events.
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
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
    /// One event's story: its audit records, dead letters and replays, the events it caused
    /// and the lake files holding it. Exit status: 0 found, 1 no record of the event, 2 the
    /// search could not run (a bad --since, a topic or the lake unreadable).
    Trace {
        /// The event id (CloudEvents `id`).
        id: String,
        /// Read Kafka from this RFC 3339 time or this long ago (90m, 2h, 7d); default 24h.
        /// When given, lake files in `date=` partitions before it are not searched either
        /// (without it every lake file is, through its bloom filters).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

/// `reflex sign --algorithm`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SignAlgorithm {
    /// Ed25519 (the publisher keeps the private key; reflex gets the public key).
    Ed25519,
    /// HMAC-SHA256 with a shared secret.
    HmacSha256,
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
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Check every local schema against its subject's latest version (exit 1 if incompatible).
    Check {
        #[command(flatten)]
        output: Output,
    },
    /// Register every local schema under its subject (idempotent); prints subject, version, id.
    Register {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Compile the policy set and print its revision; exits non-zero if it does not compile
    /// (a worker would refuse it and keep its running revision).
    Check {
        /// Policy directory (default: `[policy] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// The revision workers should decide with (the policy directory's, or the bundle's at
    /// `[policy.bundle] url`, fetched and verified) and whether it compiles, against the
    /// revisions workers decide with, read from the tail of the audit topic.
    Status {
        /// Audit records read per partition, from the end.
        #[arg(long, default_value_t = 1000)]
        tail: i64,
        #[command(flatten)]
        output: Output,
    },
    /// Run the Rego `test_*` rules and the cases in `tests/*.yaml`; exits non-zero on a failure.
    Test {
        /// Policy directory (default: `[policy] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// Decide on one event (a CloudEvent, or a full policy input `{event, publisher, context}`)
    /// and say why.
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
        /// Decide a bare CloudEvent as if its publisher signature verified for this key id
        /// (default: unsigned).
        #[arg(long, value_name = "KEY_ID")]
        signed_by: Option<String>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// OPA-format policy bundles, for workers that load policies from a URL.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
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
enum AnalyticsCommand {
    /// Run the cases in `<dir>/tests/*.yaml`; exits non-zero on a failure.
    Test {
        /// Analyses directory (default: `[analytics] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// Print the findings of the analyses over a JSON-lines file of events (closing every
    /// window at its end), one CloudEvent per line.
    Eval {
        /// JSON-lines file of CloudEvents, in arrival order.
        #[arg(long, short)]
        input: PathBuf,
        /// Analyses directory (default: `[analytics] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Compile the policy directory and write it as a bundle (gzipped tar: .manifest with
    /// revision and roots, the production *.rego modules, data.json), optionally signed.
    Build {
        /// Policy directory (default: `[policy] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The bundle file to write.
        #[arg(long, short, default_value = "bundle.tar.gz")]
        output: PathBuf,
        /// The manifest revision (default: the content hash of the policy files).
        #[arg(long, default_value = "")]
        revision: String,
        /// A manifest root, a path under `data` the bundle owns (repeatable; default: all).
        #[arg(long = "root")]
        roots: Vec<String>,
        /// Sign with this key, `env:VAR` or `file:PATH`: the shared secret for HS256, a PEM
        /// private key for RS256 and ES256.
        #[arg(long, value_name = "REF")]
        signing_key: Option<reflex::secret::SecretRef>,
        /// The signature algorithm: HS256, RS256 or ES256.
        #[arg(long, default_value = "RS256")]
        signing_alg: String,
        /// The key id written into the signature.
        #[arg(long, default_value = "")]
        key_id: String,
        #[command(flatten)]
        output_format: Output,
    },
}

#[derive(Debug, Subcommand)]
enum LakeCommand {
    /// Print SQL that creates one DuckDB view per lake table (`duckdb -init <file>`).
    Views,
}

/// Keeps transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` is set (then
/// mimalloc's own setting applies). mimalloc asks the kernel for huge pages on its arenas
/// (`MADV_HUGEPAGE`), and the kernel then zeroes a whole 2 MiB page whenever the allocator
/// touches fresh memory, which the lake's column buffers and the analytics role's state cycle
/// through: in A/B drains, 0.63× the lake role's CPU per record and 0.79× the analytics role's,
/// the actions role's unchanged (the README's performance section).
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
fn transparent_huge_pages_off() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Refused only by kernels older than 3.15, where nothing changes.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

fn main() -> ExitCode {
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    transparent_huge_pages_off();
    let args = Cli::parse();
    init_logging(&args.log, args.log_format);
    match real_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Sign { .. } = &args.command {
        return sign_command(args.command);
    }
    if let Command::Policy { command } = &args.command {
        if !matches!(command, PolicyCommand::Replay { .. }) {
            return policy_command(&args.config, command);
        }
    }
    let mut config = Config::load(&args.config)
        .with_context(|| format!("configuration {} is not usable", args.config.display()))?;
    if let Command::Run {
        instance_id: Some(id),
        ..
    } = &args.command
    {
        anyhow::ensure!(
            !id.trim().is_empty(),
            "--instance-id (REFLEX_INSTANCE_ID) is empty; give each replica a stable, unique name or leave it unset"
        );
        config.kafka.group.instance_id = Some(id.clone());
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        Command::Check { connect, output } => {
            let mut report = cli::check::report(&config);
            if connect {
                report.endpoints = Some(runtime.block_on(reflex::connectivity::check(&config)));
            }
            print(&report, output)
        }
        Command::Topics { output } => {
            let report = runtime.block_on(cli::topics::report(&config))?;
            print(&report, output)
        }
        Command::Run {
            role: Role::Actions,
            drain,
            worker_id,
            instance_id: _,
            summary_json,
        } => {
            let worker_id = worker_id.unwrap_or_else(default_worker_id);
            let shutdown = CancellationToken::new();
            let summary = runtime.block_on(async {
                tokio::spawn(signal_shutdown(shutdown.clone()));
                actions_role::run(&config, RunOptions { worker_id, drain }, shutdown).await
            })?;
            if let Some(path) = summary_json {
                write_summary(
                    &path,
                    serde_json::json!({
                        "role": "actions",
                        "records": summary.total(),
                        "read_again": summary.read_again,
                        "busy_seconds": summary.busy_ms as f64 / 1000.0,
                        "startup_cpu_seconds": summary.startup_cpu.map(|d| d.as_secs_f64()),
                        "types": summary.types,
                    }),
                )?;
            }
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas { command } => match command {
            SchemasCommand::List { output } => {
                print(&runtime.block_on(cli::schemas::list(&config))?, output)
            }
            SchemasCommand::Register { output } => {
                print(&runtime.block_on(cli::schemas::register(&config))?, output)
            }
            SchemasCommand::Check { output } => {
                print(&runtime.block_on(cli::schemas::check(&config))?, output)
            }
        },
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
        Command::Policy { command } => policy_command(&args.config, &command),
        Command::Run {
            role: Role::Lake,
            drain,
            worker_id: _,
            instance_id: _,
            summary_json,
        } => {
            let shutdown = CancellationToken::new();
            let summary = runtime.block_on(async {
                tokio::spawn(signal_shutdown(shutdown.clone()));
                reflex::role::lake::run(&config, LakeRunOptions { drain }, shutdown).await
            })?;
            if let Some(path) = summary_json {
                let mut json = serde_json::to_value(&summary)?;
                if let Some(fields) = json.as_object_mut() {
                    fields.insert("role".into(), "lake".into());
                    fields.insert(
                        "busy_seconds".into(),
                        (summary.busy_ms as f64 / 1000.0).into(),
                    );
                    fields.insert(
                        "startup_cpu_seconds".into(),
                        summary.startup_cpu.map(|d| d.as_secs_f64()).into(),
                    );
                }
                write_summary(&path, json)?;
            }
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            role: Role::Analytics,
            drain,
            worker_id,
            instance_id: _,
            summary_json,
        } => {
            let options = reflex::role::analytics::AnalyticsRunOptions {
                drain,
                worker_id: worker_id.unwrap_or_else(default_worker_id),
            };
            let shutdown = CancellationToken::new();
            let summary = runtime.block_on(async {
                tokio::spawn(signal_shutdown(shutdown.clone()));
                reflex::role::analytics::run(&config, options, shutdown).await
            })?;
            if let Some(path) = summary_json {
                let mut json = serde_json::to_value(&summary)?;
                if let Some(fields) = json.as_object_mut() {
                    fields.insert("role".into(), "analytics".into());
                    fields.insert(
                        "busy_seconds".into(),
                        (summary.busy_ms as f64 / 1000.0).into(),
                    );
                    fields.insert(
                        "startup_cpu_seconds".into(),
                        summary.startup_cpu.map(|d| d.as_secs_f64()).into(),
                    );
                }
                write_summary(&path, json)?;
            }
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
            println!("{replayed}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace { id, since, output } => {
            // Exit status 1 means "no record"; a search that could not run is 2.
            let options =
                match reflex::trace::TraceOptions::new(id, since.as_deref(), chrono::Utc::now()) {
                    Ok(options) => options,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::from(2));
                    }
                };
            match runtime.block_on(reflex::trace::trace(&config, &options)) {
                Ok(trace) => print(&trace, output),
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Sign { .. } => sign_command(args.command),
        Command::Analytics {
            command: AnalyticsCommand::Test { dir, output },
        } => print(&cli::analytics::test(&config, dir.as_deref())?, output),
        Command::Analytics {
            command: AnalyticsCommand::Eval { input, dir, output },
        } => print(
            &cli::analytics::eval(&config, dir.as_deref(), &input)?,
            output,
        ),
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
            json,
        } => {
            let options = ProduceOptions {
                topic,
                validate: !no_validate,
                binary,
            };
            let summary =
                runtime.block_on(cli::produce::report(&config, &options, file.as_deref()))?;
            // The text goes to standard error, as the progress does; JSON to standard output.
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                eprintln!("{summary}");
            }
            Ok(exit_code(summary.success()))
        }
    }
}

/// `reflex policy check|status|test|eval`: these need only the `[policy]` table, so they work on a
/// policy set that does not compile.
/// `reflex sign`, which reads no configuration.
fn sign_command(command: Command) -> anyhow::Result<ExitCode> {
    use reflex::cli::sign;
    use reflex::publisher::Algorithm;
    let Command::Sign {
        key_id,
        algorithm,
        secret,
        key,
        headers,
        file,
        new_key,
    } = command
    else {
        unreachable!("only called for `reflex sign`");
    };
    if let Some(path) = new_key {
        let public = sign::new_key(&path)?;
        eprintln!(
            "wrote a new Ed25519 private key to {}; keep it with the publisher",
            path.display()
        );
        println!("public_key = \"{public}\"");
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(key_id), Some(secret)) = (key_id, secret) else {
        anyhow::bail!("reflex sign needs --key-id and --secret (or --new-key FILE)");
    };
    let secret = secret
        .parse()
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    let headers = headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .with_context(|| format!("--header \"{h}\" must be NAME=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let value = match file.as_deref() {
        None => read_stdin()?,
        Some(path) if path.as_os_str() == "-" => read_stdin()?,
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
    };
    let request = sign::SignRequest {
        key_id,
        algorithm: match algorithm {
            SignAlgorithm::Ed25519 => Algorithm::Ed25519,
            SignAlgorithm::HmacSha256 => Algorithm::HmacSha256,
        },
        secret,
        key,
        headers,
        value,
    };
    println!("{}", sign::sign(&request)?);
    Ok(ExitCode::SUCCESS)
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
        .context("cannot read standard input")?;
    Ok(bytes)
}

fn policy_command(config: &Path, command: &PolicyCommand) -> anyhow::Result<ExitCode> {
    let settings = PolicySettings::load(config)
        .with_context(|| format!("configuration {} is not usable", config.display()))?;
    let dir_or = |dir: &Option<PathBuf>| dir.clone().unwrap_or_else(|| settings.dir.clone());
    match command {
        PolicyCommand::Check { dir, output } => {
            print(&cli::policy::check(&dir_or(dir), &settings), *output)
        }
        PolicyCommand::Test { dir, output } => {
            print(&cli::policy::test(&dir_or(dir), &settings)?, *output)
        }
        PolicyCommand::Eval {
            input,
            dir,
            now,
            signed_by,
            json,
        } => {
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(input)
                    .with_context(|| format!("cannot read {}", input.display()))?
            };
            let explanation = cli::policy::eval(
                &dir_or(dir),
                &settings,
                &text,
                now.as_deref(),
                signed_by.as_deref(),
            )
            .with_context(|| format!("{} is not a usable input", input.display()))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                println!("{explanation}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Status { tail, output } => {
            print(&cli::policy::status(&settings, *tail)?, *output)
        }
        PolicyCommand::Bundle {
            command:
                BundleCommand::Build {
                    dir,
                    output,
                    revision,
                    roots,
                    signing_key,
                    signing_alg,
                    key_id,
                    output_format,
                },
        } => {
            let options = cli::bundle::BuildOptions {
                dir: dir_or(dir),
                output: output.clone(),
                revision: revision.clone(),
                roots: roots.clone(),
                signing_key: signing_key.clone(),
                algorithm: signing_alg.clone(),
                key_id: key_id.clone(),
            };
            let report = cli::bundle::build(&options, &settings, Path::new("."))?;
            print(&report, *output_format)
        }
        PolicyCommand::Replay { .. } => Ok(ExitCode::FAILURE),
    }
}

/// Prints `report` on standard output, as JSON or as text; its success is the exit status.
fn print<R: Report>(report: &R, output: Output) -> anyhow::Result<ExitCode> {
    if output.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(exit_code(report.success()))
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes a worker's summary as JSON (`run --summary-json`).
fn write_summary(path: &std::path::Path, summary: serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write the summary to {}", path.display()))
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "reflex".into());
    format!("{host}-{}", std::process::id())
}

/// Cancels `token` on SIGINT or SIGTERM. A signal that cannot be listened for is logged at
/// ERROR and left out (the worker then stops gracefully only on the other one), rather than
/// ending the wait at once or silently.
async fn signal_shutdown(token: CancellationToken) {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT (Ctrl-C); only SIGTERM stops this process gracefully");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT (Ctrl-C) stops this process gracefully");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; draining in-flight work");
    token.cancel();
}

/// Logs to standard error; a `--log` filter that does not parse falls back to `info`, with a
/// warning naming it.
fn init_logging(filter: &str, format: LogFormat) {
    let (env_filter, bad) = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("info"), Some(e)),
    };
    // Colours only on a terminal: a pipe or file (a container's log, a test's) gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(error) = bad {
        tracing::warn!(filter, %error, "the log filter (--log, REFLEX_LOG) is not valid; logging at info");
    }
}

//! The `reflex` command line: parses arguments, sets up logging, loads the configuration,
//! calls into the library and maps the result to an exit code.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use reflex::config::Config;
use reflex::lake::role::LakeRunOptions;
use reflex::produce::{self, ProduceOptions};
use reflex::worker::{self, RunOptions};

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
    Check,
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
    /// Data lake commands.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
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
    let config = Config::load(&cli.config)
        .with_context(|| format!("configuration {} is not usable", cli.config.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Check => {
            println!("{}: ok", config.path.display());
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
                println!("  {ty} -> {} ({})", action.name, action.kind.name());
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
                worker::run(&config, RunOptions { worker_id, drain }, shutdown).await
            })?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            role: Role::Lake,
            drain,
            worker_id: _,
        } => {
            let shutdown = CancellationToken::new();
            let summary = runtime.block_on(async {
                tokio::spawn(signal_shutdown(shutdown.clone()));
                reflex::lake::role::run(&config, LakeRunOptions { drain }, shutdown).await
            })?;
            println!("{summary}");
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

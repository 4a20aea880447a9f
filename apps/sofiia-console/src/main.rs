//! The `sofiia-console` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slog::{error, info};
use sofiia_console::config::Settings;
use sofiia_console::server;
use sofiia_console::telemetry::json_logger;

/// mimalloc rather than the system allocator: a send allocates on the HTTP
/// workers, the send runtime and the SQLite writer thread and often frees
/// on another, which glibc's arenas serve with locks; see
/// docs/benchmarks.md for what it bought.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The operator console for the agent Sofiia.
///
/// Every setting is an environment variable (see the README); `--config`
/// adds an env file whose values the environment overrides.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// An env file of `SOFIIA_*=value` lines.
    #[arg(long, env = "SOFIIA_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Delete audit events older than the retention period, in batches.
    PruneAudit(PruneArgs),
    /// Verify the audit trail's hash chain; exit 1 at the first broken event.
    AuditVerify,
    /// Validate the configuration exactly as `serve` would and print the
    /// effective settings (without secrets) as JSON; exit 2 if invalid.
    CheckConfig(CheckConfigArgs),
    /// Copy the chat index from one backend to another, then verify that
    /// both hold the same chats and messages; exit 1 on any difference.
    ///
    /// Reads the SQLite chat index (`$SOFIIA_DATA_DIR/sofiia.db`) or the Redis
    /// one (`SOFIIA_REDIS_URL`, `SOFIIA_REDIS_PREFIX`) and writes to Redis or
    /// to PostgreSQL (`SOFIIA_POSTGRES_URL`). Idempotent and resumable: run
    /// it again after a failure or a kill and it finishes the job; run it on
    /// a finished migration and it changes nothing.
    MigrateChatIndex(MigrateArgs),
    /// Copy the SQLite audit trail into the PostgreSQL one, keeping every
    /// event's id and hashes, then verify the chain there; exit 1 if it
    /// does not verify.
    ///
    /// The PostgreSQL trail must be empty (or hold this trail already, when
    /// nothing is done). All or nothing: run it again after a failure.
    MigrateAudit(MigrateAuditArgs),
}

#[derive(Debug, clap::Args)]
struct CheckConfigArgs {
    /// Also bring the schema of every PostgreSQL store to this release's
    /// version (as `serve` does at start) and report it under
    /// `postgres_schema`; exit 1 if that fails.
    #[arg(long)]
    migrate: bool,
}

#[derive(Debug, clap::Args)]
struct MigrateAuditArgs {
    /// The trail to read: `sqlite` (`$SOFIIA_DATA_DIR/sofiia.db`).
    #[arg(long, value_parser = ["sqlite"])]
    from: String,
    /// The trail to write: `postgres` (`SOFIIA_POSTGRES_URL`).
    #[arg(long, value_parser = ["postgres"])]
    to: String,
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The backend to read.
    #[arg(long, value_enum)]
    from: MigrateFrom,
    /// The backend to write.
    #[arg(long, value_enum)]
    to: MigrateTo,
    /// Messages per atomic import.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=200))]
    batch_size: u64,
    /// Compare the two indexes only; write nothing.
    #[arg(long)]
    verify_only: bool,
}

/// Backends `migrate-chat-index` reads.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MigrateFrom {
    /// `$SOFIIA_DATA_DIR/sofiia.db`.
    Sqlite,
    /// `SOFIIA_REDIS_URL`, under `SOFIIA_REDIS_PREFIX`.
    Redis,
}

/// Backends `migrate-chat-index` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MigrateTo {
    /// `SOFIIA_REDIS_URL`, under `SOFIIA_REDIS_PREFIX`.
    Redis,
    /// `SOFIIA_POSTGRES_URL`.
    Postgres,
}

#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep this many days (default: SOFIIA_AUDIT_RETENTION_DAYS, or 90).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    retention_days: Option<u32>,
    /// Events deleted per transaction.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch_size: u32,
    /// Pause between batches, so a running console keeps writing.
    #[arg(long, default_value_t = 50)]
    pause_ms: u64,
    /// Rebuild the file afterwards to return freed space to the disk.
    #[arg(long)]
    vacuum: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (logger, guard) = json_logger(std::io::stdout());
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            error!(logger, "invalid configuration"; "error" => e.to_string());
            drop(guard);
            #[allow(clippy::print_stderr)]
            {
                eprintln!("sofiia-console: invalid configuration: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let code = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings, logger),
        Command::PruneAudit(args) => run_tool(&logger, prune_audit(&settings, &args)),
        Command::AuditVerify => run_tool(&logger, audit_verify(&settings)),
        Command::CheckConfig(args) => check_config(&settings, &args, &logger),
        Command::MigrateChatIndex(args) => run_tool(&logger, migrate_chat_index(&settings, &args)),
        Command::MigrateAudit(_) => run_tool(&logger, migrate_audit(&settings)),
    };
    drop(guard);
    code
}

fn serve(settings: Settings, logger: slog::Logger) -> ExitCode {
    // Sends run on this runtime's workers, beside the HTTP workers: they
    // outlive the connection that started them, until the stop drains them.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sofiia-send")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(logger, "cannot start a runtime"; "error" => e.to_string());
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let state = server::build_state(&settings, logger.clone()).await?;
        let running = server::start(&settings, state)?;
        running.wait().await.map_err(server::StartError::Serve)
    });
    match result {
        Ok(()) => {
            info!(logger, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(logger, "cannot start"; "error" => e.to_string());
            #[allow(clippy::print_stderr)]
            {
                eprintln!("sofiia-console: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs an offline command on a runtime of its own and reports its error.
fn run_tool(
    logger: &slog::Logger,
    tool: impl std::future::Future<Output = Result<ExitCode, String>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(logger, "cannot start a runtime"; "error" => e.to_string());
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tool) {
        Ok(code) => code,
        Err(e) => {
            error!(logger, "command failed"; "error" => e.as_str());
            #[allow(clippy::print_stderr)]
            {
                eprintln!("sofiia-console: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn prune_audit(settings: &Settings, args: &PruneArgs) -> Result<ExitCode, String> {
    let retention_days = args.retention_days.unwrap_or(settings.audit_retention_days);
    let report = sofiia_console::tools::prune_audit(
        settings,
        &sofiia_console::tools::PruneOptions {
            dry_run: args.dry_run,
            retention_days,
            batch_size: args.batch_size,
            pause: std::time::Duration::from_millis(args.pause_ms),
            vacuum: args.vacuum,
        },
    )
    .await
    .map_err(|e| sofiia_console::problem::error_chain(&*e))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate_audit(settings: &Settings) -> Result<ExitCode, String> {
    let intact = sofiia_console::tools::migrate_audit(settings, &mut std::io::stdout())
        .await
        .map_err(|e| {
            format!(
                "migrate-audit stopped: {}; nothing was written, run it again",
                sofiia_console::problem::error_chain(&*e)
            )
        })?;
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn audit_verify(settings: &Settings) -> Result<ExitCode, String> {
    let (intact, line) = sofiia_console::tools::audit_verify(settings)
        .await
        .map_err(|e| sofiia_console::problem::error_chain(&*e))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn migrate_chat_index(settings: &Settings, args: &MigrateArgs) -> Result<ExitCode, String> {
    use sofiia_console::tools::IndexAt;
    let from = match args.from {
        MigrateFrom::Sqlite => IndexAt::Sqlite,
        MigrateFrom::Redis => IndexAt::Redis,
    };
    let to = match args.to {
        MigrateTo::Redis => IndexAt::Redis,
        MigrateTo::Postgres => IndexAt::Postgres,
    };
    let options = sofiia_console::tools::MigrateOptions {
        batch_size: sofiia_core_domain::PageLimit::new(args.batch_size)
            .map_err(|e| format!("--batch-size: {e}"))?,
        verify_only: args.verify_only,
    };
    let report = sofiia_console::tools::migrate_chat_index(
        settings,
        (from, to),
        &options,
        &mut std::io::stdout(),
    )
    .await
    .map_err(|e| {
        format!(
            "migrate-chat-index stopped: {}; nothing half-written is left, run it again to resume",
            sofiia_console::problem::error_chain(&*e)
        )
    })?;
    if report.verified() {
        Ok(ExitCode::SUCCESS)
    } else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "sofiia-console: migrate-chat-index: verification FAILED: {} difference(s) between {} and {}; the first: {}",
                report.difference_count,
                from.name(),
                to.name(),
                report.differences.first().map_or("", String::as_str)
            );
        }
        Ok(ExitCode::from(1))
    }
}

fn check_config(settings: &Settings, args: &CheckConfigArgs, logger: &slog::Logger) -> ExitCode {
    let mut report = match sofiia_console::tools::config_report(settings) {
        Ok(report) => report,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "sofiia-console: invalid configuration: {}",
                    sofiia_console::problem::error_chain(&*e)
                );
            }
            return ExitCode::from(2);
        }
    };
    if args.migrate {
        let migrated = run_tool(logger, async {
            let versions = sofiia_console::tools::migrate_postgres(settings)
                .await
                .map_err(|e| sofiia_console::problem::error_chain(&*e))?;
            report["postgres_schema"] = versions;
            Ok(ExitCode::SUCCESS)
        });
        if migrated != ExitCode::SUCCESS {
            return migrated;
        }
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}

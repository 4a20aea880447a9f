//! The `sofiia-console` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slog::{error, info};
use sofiia_console::config::Settings;
use sofiia_console::server;
use sofiia_console::telemetry::json_logger;

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
    };
    drop(guard);
    code
}

fn serve(settings: Settings, logger: slog::Logger) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(async {
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

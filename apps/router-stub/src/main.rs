//! `sofiia-router-stub`: runs one stub inference node until SIGTERM or SIGINT.
//!
//! On start it prints one JSON line to stdout,
//! `{"msg":"listening","addr":"127.0.0.1:PORT","node":"NODA1"}`, so a script
//! that asked for port 0 can read the port; on a signal it stops gracefully,
//! prints `{"msg":"stopped",...}` and exits 0.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use sofiia_core_domain::NodeId;
use sofiia_router_stub::{ReplyMode, StreamConfig, StubConfig, StubNode};

/// A stub inference node speaking the sofiia node protocol.
#[derive(Debug, Parser)]
#[command(name = "sofiia-router-stub", version, about)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (see the listening line).
    #[arg(long, env = "SOFIIA_STUB_BIND", default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// The node's name, e.g. NODA1.
    #[arg(long, env = "SOFIIA_STUB_NAME")]
    name: NodeId,
    /// Delay before each infer answer, in milliseconds.
    #[arg(long, env = "SOFIIA_STUB_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
    /// Answer every infer call with this HTTP status (200..=599) instead of a reply.
    #[arg(long, env = "SOFIIA_STUB_FAIL_STATUS", value_parser = clap::value_parser!(u16).range(200..=599))]
    fail_status: Option<u16>,
    /// Answer infer calls with a 200 whose body is not JSON.
    #[arg(long, env = "SOFIIA_STUB_INVALID_REPLY")]
    invalid_reply: bool,
    /// HTTP worker threads.
    #[arg(long, env = "SOFIIA_STUB_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Into how many `delta` events a streamed reply is cut.
    #[arg(long, env = "SOFIIA_STUB_CHUNKS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    chunks: u16,
    /// Pause before each `delta` event of a streamed reply, in milliseconds.
    #[arg(long, env = "SOFIIA_STUB_CHUNK_DELAY_MS", default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Answer JSON even when asked for a stream (a node that does not stream).
    #[arg(long, env = "SOFIIA_STUB_NO_STREAM")]
    no_stream: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = StubConfig::new(cli.name.clone())
        .with_delay(Duration::from_millis(cli.delay_ms))
        .with_fail_status(cli.fail_status)
        .with_reply(if cli.invalid_reply {
            ReplyMode::NotJson
        } else {
            ReplyMode::Echo
        })
        .with_workers(usize::from(cli.workers))
        .with_stream({
            let mut stream = StreamConfig::default();
            stream.enabled = !cli.no_stream;
            stream.chunks = usize::from(cli.chunks);
            stream.chunk_delay = Duration::from_millis(cli.chunk_delay_ms);
            stream
        });

    // A small runtime of its own on this thread for the signals; the server
    // runs on the stub's thread.
    let runtime = actix_web::rt::System::new();
    let result: io::Result<&'static str> = runtime.block_on(async move {
        // Installed before the listening line: a script that signals as soon
        // as it has read the line must get a graceful stop, not the default
        // action of the signal.
        let mut signals = Signals::install()?;
        let stub = StubNode::spawn(cli.bind, config)?;
        emit(&StatusLine {
            msg: "listening",
            node: stub.name(),
            addr: Some(stub.addr()),
            signal: None,
            error: None,
        })?;
        let signal = signals.next().await;
        stub.stop().await;
        Ok(signal)
    });
    match result {
        Ok(signal) => {
            // stdout may be closed by then; the stop itself went fine.
            let _ = emit(&StatusLine {
                msg: "stopped",
                node: &cli.name,
                addr: None,
                signal: Some(signal),
                error: None,
            });
            ExitCode::SUCCESS
        }
        Err(e) => {
            let line = StatusLine {
                msg: "failed",
                node: &cli.name,
                addr: None,
                signal: None,
                error: Some(e.to_string()),
            };
            eprintln!("{}", serde_json::to_string(&line).unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}

/// One JSON status line; a struct rather than `json!` so `msg` comes first
/// whatever serde_json's map ordering.
#[derive(Serialize)]
struct StatusLine<'a> {
    msg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    node: &'a NodeId,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Writes one JSON status line to stdout: this binary's interface. Not
/// `println!`, which panics when a script has closed the pipe.
fn emit(line: &StatusLine<'_>) -> io::Result<()> {
    let line = serde_json::to_string(line).map_err(io::Error::other)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    // Scripts block on this line; a pipe is block-buffered otherwise.
    stdout.flush()
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Signals)
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl_c"
    }
}

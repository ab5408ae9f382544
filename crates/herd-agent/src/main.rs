//! `herd-agent`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use herd_agent::daemon::{self, Mode, RunError};
use herd_agent::settings::Settings;

/// The Herd device agent: keeps this device connected to Herd, reports its facts and health.
#[derive(Debug, Parser)]
#[command(name = "herd-agent", version)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, env = "HERD_AGENT_CONFIG", default_value = "/etc/herd/agent.toml")]
    config: PathBuf,
    /// Send the device facts and one heartbeat, wait for the server to acknowledge them, exit.
    #[arg(long)]
    once: bool,
    /// With --once: give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Log filter (RUST_LOG syntax), e.g. `info` or `device_agent=debug`.
    #[arg(long, env = "HERD_AGENT_LOG", default_value = "info")]
    log: String,
}

/// Exit codes: 0 done, 1 failed at run time (timed out, I/O), 2 bad configuration or usage,
/// 3 refused by the server.
fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => return fail(&format!("{e:#}"), 2),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
    };
    let mode = if cli.once {
        Mode::Once { timeout: Duration::from_secs(cli.timeout_secs) }
    } else {
        Mode::Daemon
    };
    // Signals are handled from the start (see `shutdown_signal`).
    let run = async {
        let shutdown = shutdown_signal();
        daemon::run(&settings, mode, shutdown).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (RunError::Refused(_) | RunError::RegistrationRefused(_))) => {
            fail(&e.to_string(), 3)
        }
        Err(e) => fail(&format!("{e:#}"), 1),
    }
}

#[expect(clippy::print_stderr, reason = "the CLI's error message")]
fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("herd-agent: {message}");
    ExitCode::from(code)
}

/// A future that completes on SIGTERM or SIGINT. The handlers are installed when this is called
/// (inside the runtime), so a signal that comes before the future is first polled still stops the
/// agent gracefully instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(interrupt) => {}
            () = wait(terminate) => {}
        }
    }
}

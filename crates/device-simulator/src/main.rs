//! `herd-sim`: simulated Herd devices. Everything lives in the `device_simulator` library; this
//! file parses the command line, builds the runtime and turns the outcome into an exit code.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use device_simulator::cli::{self, Cli};

/// Two workers: the machines this runs on have two cores, shared with the server under test.
const WORKER_THREADS: usize = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "herd-sim: error: failed to start the runtime: {error}"
            );
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(cli::execute(cli));
    // Without waiting for blocking work still running: a child process's read of its stdin
    // (see `cli`) only ends when the parent closes it.
    runtime.shutdown_background();
    code
}

//! `herd`: Herd's server and operator CLI. Everything lives in the `server` library; this file
//! only parses the command line and turns the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    server::cli::execute(server::cli::Cli::parse())
}

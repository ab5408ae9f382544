//! Repository automation, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! `cargo xtask bench` (alias `mqtt-bench`): the MQTT gateway of `target/release/herd` against
//! Mosquitto. It builds Herd in release mode, then, `--runs N` times (default 3), starts both
//! brokers afresh on free ports and drives them one after the other with the same load from this
//! process (`rumqttc` clients): idle connections, connect rate, QoS 0 / QoS 1 throughput 1 → 1
//! with broker CPU per message, QoS 1 fan-in 100 → 1, QoS 1 latency at a fixed rate. It then
//! writes the medians, per-run values and Herd / Mosquitto ratios into the MQTT section of
//! `docs/benchmarks.md`, between the `mqtt-bench` markers.
//!
//! Modules: [`brokers`] starts the brokers and reads their processes, [`scenarios`] drives them,
//! [`suite`] runs the scenarios, [`report`] computes medians and writes the section.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask is a developer tool: it prints its progress and report (STYLE §1)"
)]
#![cfg_attr(test, allow(clippy::unwrap_used, reason = "tests"))]

mod brokers;
mod report;
mod scenarios;
mod suite;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::brokers::repo_root;
use crate::suite::{Options, SCENARIOS, Sizes};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  bench [--quick] [--runs N] [--only idle,connect,qos0,qos1,fan-in,latency] [--idle N]
        [--connect N] [--write | --no-write] [--no-build]
      Herd's MQTT gateway vs Mosquitto (needs `mosquitto` on the PATH). Builds
      `cargo build --release -p server`, runs the suite N times (default 3; --quick: a smaller
      suite, 1 run) and writes the medians into docs/benchmarks.md (--quick or --only: printed
      only, unless --write).
  mqtt-bench ...
      The same as bench.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench" | "mqtt-bench") => {
            let (options, build) = parse_bench(&args)?;
            if build {
                build_herd()?;
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(suite::bench(options))
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// Parses `bench …`; returns the options and whether to build Herd first.
fn parse_bench(args: &[String]) -> Result<(Options, bool)> {
    let flags = &args[1..];
    // `--quick` first, so that sizes given win whatever the order.
    let quick = flags.iter().any(|a| a == "--quick");
    let mut sizes = Sizes::new(quick);
    let mut runs = if quick { 1 } else { 3 };
    let mut write = None;
    let mut build = true;
    let mut rest = flags.iter();
    let number = |flag: &str, value: Option<&String>| -> Result<usize> {
        value
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .with_context(|| format!("{flag} needs a positive number"))
    };
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => {}
            "--only" => {
                let list = rest.next().map(String::as_str).unwrap_or_default();
                sizes.only = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = sizes.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    bail!("unknown scenario {bad:?}; scenarios: {}", SCENARIOS.join(","));
                }
            }
            "--idle" => sizes.idle = number("--idle", rest.next())?,
            "--connect" => sizes.connect = number("--connect", rest.next())?,
            "--runs" => runs = number("--runs", rest.next())?,
            "--write" => write = Some(true),
            "--no-write" => write = Some(false),
            "--no-build" => build = false,
            bad => bail!("unknown option {bad}\n\n{USAGE}"),
        }
    }
    let write = write.unwrap_or(!quick && sizes.only.is_empty());
    let command = format!("cargo xtask {}", args.join(" "));
    Ok((Options { sizes, runs, write, command }, build))
}

/// `cargo build --release -p server`, its output streamed.
fn build_herd() -> Result<()> {
    println!("building herd: cargo build --release -p server");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "server"])
        .current_dir(repo_root())
        .status()
        .context("run cargo build --release -p server")?;
    if !status.success() {
        bail!("cargo build --release -p server failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> (Options, bool) {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse_bench(&args).unwrap()
    }

    #[test]
    fn full_bench_writes_three_runs() {
        let (o, build) = parse("bench");
        assert!(build && o.write);
        assert_eq!(o.runs, 3);
        assert_eq!(o.sizes.connect, 2_000);
    }

    #[test]
    fn quick_bench_prints_one_run_unless_told() {
        let (o, _) = parse("mqtt-bench --idle 42 --quick");
        assert!(!o.write);
        assert_eq!((o.runs, o.sizes.idle, o.sizes.connect), (1, 42, 300));
        let (o, _) = parse("bench --quick --write --runs 2 --no-build");
        assert!(o.write);
        assert_eq!(o.runs, 2);
        assert_eq!(o.command, "cargo xtask bench --quick --write --runs 2 --no-build");
    }

    #[test]
    fn a_subset_is_not_written_unless_told() {
        assert!(!parse("bench --only idle").0.write);
        assert!(!parse("bench --no-write").0.write);
    }

    #[test]
    fn bad_options_are_refused() {
        for line in ["bench --only nope", "bench --runs 0", "bench --idle", "bench --fast"] {
            let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            assert!(parse_bench(&args).is_err(), "{line}");
        }
    }
}

//! The `herd-sim` command line: flags, their translation into a [`SimConfig`], the flags a
//! parent gives its child processes, and what is printed where.
//!
//! stdout carries only the JSON summary (or, in a child process, JSON lines for the parent);
//! the progress line and notes go to stderr.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use device_agent::Protocol;

use crate::config::SimConfig;
use crate::fleet::{self, Report};
use crate::processes::{self, ChildMessage};
use crate::profile::{JobBehaviour, Metric, Profile, TwinBehaviour};
use crate::shard::Shard;
use crate::summary::{Progress, Summary};

/// Simulates many Herd devices: creates (or reuses) them and their credentials through the REST
/// API, connects them over MQTT at a ramp rate, sends telemetry and events, injects failures,
/// and prints a JSON summary on stdout at the end. Exit code: 0 when no device failed, 1 when
/// some did, 2 when the run could not start.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "herd-sim", version)]
pub struct Cli {
    /// The REST API's base URL.
    #[arg(long, env = "HERD_URL", default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub server: String,
    /// The MQTT (TCP) listener, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    pub mqtt: String,
    /// An admin or operator API token, to create devices and credentials.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Devices in the fleet (all processes together).
    #[arg(long, default_value_t = 100)]
    pub devices: u64,
    /// Device id prefix: devices are PREFIX00001, PREFIX00002, …
    #[arg(long, default_value = "sim-")]
    pub prefix: String,
    /// Seconds to run once the first device started (0: until Ctrl-C).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub duration: f64,
    /// Connections started per second (all processes together).
    #[arg(long, default_value_t = 500.0, value_name = "PER_SEC")]
    pub ramp_rate: f64,
    /// Seconds between two telemetry messages of one device (fractions allowed).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub telemetry_interval: f64,
    /// Telemetry fields, comma-separated: temperature, humidity, battery, rssi, or any other name
    /// (a generic sine).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "temperature,humidity,battery,rssi",
        value_name = "NAMES"
    )]
    pub metrics: Vec<String>,
    /// Random events per device per hour (door_opened, motion_detected, …; low_battery comes on
    /// its own when a battery falls below 20 %).
    #[arg(long, default_value_t = 2.0, value_name = "PER_HOUR")]
    pub event_rate: f64,
    /// Random disconnections per device per hour (cut without DISCONNECT, back after 1–10 s).
    #[arg(long, default_value_t = 0.0, value_name = "PER_HOUR")]
    pub disconnect_rate: f64,
    /// Percentage of flaky devices: they also lose their connection every 30 s on average.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    pub flaky_percent: f64,
    /// Percentage of devices that drop offline once, between a quarter and a half of the run.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    pub offline_percent: f64,
    /// Percentage of command answers that are `failed` instead of `succeeded` (seeded,
    /// deterministic: see --seed).
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    pub command_failure_pct: f64,
    /// Milliseconds a device takes to answer a command.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub command_delay_ms: u64,
    /// Seconds a device that drops offline stays away (default: until the end of the run).
    #[arg(long, value_name = "SECS")]
    pub offline_secs: Option<f64>,
    /// Run fleet jobs: devices subscribe to their jobs and finish each command this many
    /// milliseconds after receiving it (without this flag or --job-failure-pct they ignore jobs).
    #[arg(long, value_name = "MS")]
    pub job_delay_ms: Option<u64>,
    /// Percentage of job executions that fail (decided by the seed, per device, job and attempt).
    #[arg(long, value_name = "PERCENT")]
    pub job_failure_pct: Option<f64>,
    /// Follow desired state: devices ask for their twin after each connection and report every
    /// delta as applied this many milliseconds after receiving it (without this flag or
    /// --twin-drift-pct they ignore their twin).
    #[arg(long, value_name = "MS")]
    pub twin_delay_ms: Option<u64>,
    /// Percentage of devices that report something else than their desired state (drifted).
    #[arg(long, value_name = "PERCENT")]
    pub twin_drift_pct: Option<f64>,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "5", value_parser = ["3.1.1", "5"])]
    pub protocol: String,
    /// Keep-alive of the devices, in seconds (0: none).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub keep_alive: u16,
    /// Session expiry the devices ask for, in seconds (MQTT 5; 0: no session kept).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub session_expiry: u32,
    /// Messages a disconnected device buffers (then the oldest are dropped).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub offline_buffer: usize,
    /// Spread connections over 127.0.0.1..=127.0.0.N (0: the system chooses; default: one
    /// address per 25,000 devices, none up to 25,000). Needs a server on loopback.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8))]
    pub source_addresses: Option<u8>,
    /// Processes to run the devices in (default: one per 18,000 devices). The first process
    /// provisions every device, then starts the others as children.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
    pub processes: Option<u32>,
    /// Run only shard I of P (0-based) of the fleet: its devices are the I-th of P equal slices.
    #[arg(long, value_name = "I/P")]
    pub shard: Option<Shard>,
    /// Seed of the devices' behaviour (values, events, failures); random by default, and printed
    /// in the summary.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep device credentials in this JSON file (mode 0600) and reuse them in later runs,
    /// instead of issuing new credentials every run. Delete it when the server's data is reset.
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Zero-touch: devices without a cached credential register themselves through this
    /// symmetric-key enrollment group (no device id template) over HTTP(S) with keys derived in
    /// bulk, instead of a bulk import and one credential request each. Needs --token.
    #[arg(long, value_name = "GROUP")]
    pub zero_touch: Option<String>,
    /// Zero-touch registrations in flight at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub register_concurrency: usize,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Internal: run as a child of a multi-process run (credentials only from
    /// --credentials-file, JSON lines on stdout, stop when stdin closes).
    #[arg(long, hide = true)]
    pub child: bool,
}

impl Cli {
    /// The validated configuration.
    ///
    /// # Errors
    /// Every problem found, one per line.
    pub fn to_config(&self) -> anyhow::Result<SimConfig> {
        let mut problems = Vec::new();
        let (host, port) = match split_host_port(&self.mqtt) {
            Some(hp) => hp,
            None => {
                problems.push(format!("--mqtt must be HOST:PORT, got {:?}", self.mqtt));
                (String::new(), 0)
            }
        };
        let seconds = |name: &str, v: f64, zero_ok: bool, problems: &mut Vec<String>| {
            if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v < 1e9 {
                Some(Duration::from_secs_f64(v))
            } else {
                problems.push(format!("--{name} must be a positive number of seconds, got {v}"));
                None
            }
        };
        let duration =
            seconds("duration", self.duration, true, &mut problems).filter(|d| !d.is_zero());
        let telemetry_interval =
            seconds("telemetry-interval", self.telemetry_interval, false, &mut problems)
                .unwrap_or(Duration::from_secs(10));
        let offline_for =
            self.offline_secs.and_then(|s| seconds("offline-secs", s, false, &mut problems));
        let mut rate = |name: &str, v: f64| {
            if !(v.is_finite() && v >= 0.0) {
                problems.push(format!("--{name} must be zero or more, got {v}"));
            }
        };
        rate("event-rate", self.event_rate);
        rate("disconnect-rate", self.disconnect_rate);
        if !(self.ramp_rate.is_finite() && self.ramp_rate > 0.0) {
            problems.push(format!("--ramp-rate must be more than zero, got {}", self.ramp_rate));
        }
        for (name, v) in [
            ("flaky-percent", self.flaky_percent),
            ("offline-percent", self.offline_percent),
            ("job-failure-pct", self.job_failure_pct.unwrap_or(0.0)),
            ("twin-drift-pct", self.twin_drift_pct.unwrap_or(0.0)),
        ] {
            if !(0.0..=100.0).contains(&v) {
                problems.push(format!("--{name} must be between 0 and 100, got {v}"));
            }
        }
        let metrics: Vec<Metric> = self
            .metrics
            .iter()
            .filter_map(|m| m.parse().map_err(|e| problems.push(format!("--metrics: {e}"))).ok())
            .collect();
        if self.prefix.is_empty()
            || !self.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
        {
            problems.push(format!(
                "--prefix must be letters, digits and . _ : - (it starts device ids), got {:?}",
                self.prefix
            ));
        }
        if self.devices == 0 {
            problems.push("--devices must be at least 1".to_owned());
        }
        if self.register_concurrency == 0 {
            problems.push("--register-concurrency must be at least 1".to_owned());
        }
        if self.zero_touch.as_deref().is_some_and(str::is_empty) {
            problems.push("--zero-touch needs an enrollment group name".to_owned());
        }
        if self.child && self.credentials_file.is_none() {
            problems.push("--child needs --credentials-file".to_owned());
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        let mut config = SimConfig::new(self.server.clone(), host, port, self.devices);
        config.token = self.token.clone().filter(|t| !t.is_empty());
        config.prefix.clone_from(&self.prefix);
        config.duration = duration;
        config.ramp_rate = self.ramp_rate;
        config.protocol = if self.protocol == "3.1.1" { Protocol::V311 } else { Protocol::V5 };
        config.keep_alive = Duration::from_secs(self.keep_alive.into());
        config.session_expiry = Duration::from_secs(self.session_expiry.into());
        config.offline_buffer = self.offline_buffer.max(1);
        config.profile = Profile {
            telemetry_interval,
            metrics,
            event_rate_per_hour: self.event_rate,
            disconnect_rate_per_hour: self.disconnect_rate,
            flaky_percent: self.flaky_percent,
            offline_percent: self.offline_percent,
            offline_for,
            jobs: (self.job_delay_ms.is_some() || self.job_failure_pct.is_some()).then(|| {
                JobBehaviour {
                    delay: Duration::from_millis(self.job_delay_ms.unwrap_or(0)),
                    failure_percent: self.job_failure_pct.unwrap_or(0.0),
                }
            }),
            twin: (self.twin_delay_ms.is_some() || self.twin_drift_pct.is_some()).then(|| {
                TwinBehaviour {
                    delay: Duration::from_millis(self.twin_delay_ms.unwrap_or(0)),
                    drift_percent: self.twin_drift_pct.unwrap_or(0.0),
                }
            }),
        };
        config.source_addresses = self.source_addresses;
        config.processes = self.processes;
        config.shard = self.shard.unwrap_or(Shard::WHOLE);
        config.seed = self.seed;
        config.credentials_file.clone_from(&self.credentials_file);
        config.provision = !self.child;
        config.zero_touch = if self.child { None } else { self.zero_touch.clone() };
        config.register_concurrency = self.register_concurrency;
        config.command_failure_pct = self.command_failure_pct;
        config.command_delay = Duration::from_millis(self.command_delay_ms);
        Ok(config)
    }
}

/// The arguments of child `shard` of a multi-process run of `config`: every setting explicit,
/// the credentials from `credentials`, no token (children do not provision).
#[must_use]
pub fn child_args(config: &SimConfig, shard: Shard, credentials: &Path, seed: u64) -> Vec<String> {
    let secs = |d: Duration| d.as_secs_f64().to_string();
    let p = &config.profile;
    let mut args = vec![
        "--child".to_owned(),
        "--quiet".to_owned(),
        format!("--server={}", config.server),
        format!("--mqtt={}", join_host_port(&config.mqtt_host, config.mqtt_port)),
        format!("--devices={}", config.devices),
        format!("--prefix={}", config.prefix),
        format!("--duration={}", config.duration.map_or_else(|| "0".to_owned(), secs)),
        format!("--ramp-rate={}", config.ramp_rate),
        format!("--telemetry-interval={}", secs(p.telemetry_interval)),
        format!("--metrics={}", p.metrics.iter().map(Metric::name).collect::<Vec<_>>().join(",")),
        format!("--event-rate={}", p.event_rate_per_hour),
        format!("--disconnect-rate={}", p.disconnect_rate_per_hour),
        format!("--flaky-percent={}", p.flaky_percent),
        format!("--offline-percent={}", p.offline_percent),
        format!(
            "--protocol={}",
            match config.protocol {
                Protocol::V311 => "3.1.1",
                Protocol::V5 => "5",
            }
        ),
        format!("--keep-alive={}", config.keep_alive.as_secs()),
        format!("--session-expiry={}", config.session_expiry.as_secs()),
        format!("--offline-buffer={}", config.offline_buffer),
        format!("--source-addresses={}", config.source_address_count()),
        format!("--shard={shard}"),
        format!("--seed={seed}"),
        format!("--credentials-file={}", credentials.display()),
        format!("--register-concurrency={}", config.register_concurrency),
        format!("--command-failure-pct={}", config.command_failure_pct),
        format!("--command-delay-ms={}", config.command_delay.as_millis()),
    ];
    if let Some(offline_for) = p.offline_for {
        args.push(format!("--offline-secs={}", secs(offline_for)));
    }
    if let Some(jobs) = p.jobs {
        args.push(format!("--job-delay-ms={}", jobs.delay.as_millis()));
        args.push(format!("--job-failure-pct={}", jobs.failure_percent));
    }
    if let Some(twin) = p.twin {
        args.push(format!("--twin-delay-ms={}", twin.delay.as_millis()));
        args.push(format!("--twin-drift-pct={}", twin.drift_percent));
    }
    args
}

/// Runs `herd-sim` as the command line asked; the exit code: 0 when no device failed, 1 when
/// some did, 2 when the run could not start.
pub async fn execute(cli: Cli) -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match run(&cli).await {
        Ok(summary) => {
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr().lock(), "herd-sim: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<Summary> {
    let config = cli.to_config()?;
    if cli.child {
        let mut report = ChildReport;
        let summary = fleet::run(&config, &mut report, child_shutdown()).await?;
        ChildReport::send(&ChildMessage::Summary(summary.clone()));
        return Ok(summary);
    }
    let mut report = Stderr::new(cli.quiet);
    let processes = config.process_count();
    let summary = if processes > 1 {
        processes::run(&config, processes, &mut report, ctrl_c()).await?
    } else {
        fleet::run(&config, &mut report, ctrl_c()).await?
    };
    report.end();
    let json = serde_json::to_string_pretty(&summary).context("failed to serialize the summary")?;
    writeln!(std::io::stdout().lock(), "{json}").context("failed to write the summary")?;
    Ok(summary)
}

/// Completes at Ctrl-C (SIGINT); never if the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A child stops at Ctrl-C or when its parent closes its stdin (or dies).
async fn child_shutdown() {
    let stdin_closed = async {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut sink).await;
    };
    tokio::select! {
        () = ctrl_c() => {}
        () = stdin_closed => {}
    }
}

/// The progress line and notes on stderr: overwritten in place on a terminal, one line a second
/// otherwise.
#[derive(Debug)]
struct Stderr {
    quiet: bool,
    tty: bool,
    /// The previous snapshot's time and acknowledgements, for the rate.
    last: Option<(f64, u64)>,
    /// Whether a `\r` line is on screen and must be ended before anything else is written.
    open_line: bool,
}

impl Stderr {
    fn new(quiet: bool) -> Self {
        Self { quiet, tty: std::io::stderr().is_terminal(), last: None, open_line: false }
    }

    fn end(&mut self) {
        if self.open_line {
            let _ = writeln!(std::io::stderr().lock());
            self.open_line = false;
        }
    }
}

impl Report for Stderr {
    fn progress(&mut self, p: &Progress) {
        let rate = match self.last {
            Some((t, acked)) if p.elapsed_secs > t => {
                #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
                let delta = p.acked.saturating_sub(acked) as f64;
                delta / (p.elapsed_secs - t)
            }
            _ => 0.0,
        };
        self.last = Some((p.elapsed_secs, p.acked));
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            self.open_line = true;
            write!(err, "\r{}\x1b[K", p.line(rate))
        } else {
            writeln!(err, "{}", p.line(rate))
        };
    }

    fn note(&mut self, message: &str) {
        self.end();
        let _ = writeln!(std::io::stderr().lock(), "herd-sim: {message}");
    }
}

/// A child's reports: JSON lines on stdout for the parent; notes on stderr.
#[derive(Debug)]
struct ChildReport;

impl ChildReport {
    fn send(message: &ChildMessage) {
        if let Ok(line) = serde_json::to_string(message) {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

impl Report for ChildReport {
    fn progress(&mut self, progress: &Progress) {
        Self::send(&ChildMessage::Progress(*progress));
    }

    fn note(&mut self, message: &str) {
        let _ = writeln!(std::io::stderr().lock(), "herd-sim: {message}");
    }
}

/// `HOST:PORT` or `[IPV6]:PORT`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herd-sim").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_make_a_valid_config() {
        let c = parse(&["--token", "t"]).to_config().unwrap();
        assert_eq!((c.mqtt_host.as_str(), c.mqtt_port), ("127.0.0.1", 1883));
        assert_eq!(c.duration, Some(Duration::from_secs(60)));
        assert_eq!(c.profile.metrics, Metric::defaults());
        assert_eq!(c.protocol, Protocol::V5);
        assert_eq!(c.process_count(), 1);
        assert_eq!(c.source_address_count(), 0);
        assert!(c.provision);
    }

    #[test]
    fn bad_flags_are_all_reported() {
        let cli = parse(&[
            "--mqtt",
            "nope",
            "--duration=-1",
            "--flaky-percent",
            "101",
            "--prefix",
            "a/b",
            "--ramp-rate",
            "0",
        ]);
        let message = cli.to_config().unwrap_err().to_string();
        for needle in ["--mqtt", "--duration", "--flaky-percent", "--prefix", "--ramp-rate"] {
            assert!(message.contains(needle), "{needle} in {message}");
        }
    }

    #[test]
    fn a_large_fleet_is_split_automatically() {
        let c = parse(&["--devices", "19000"]).to_config().unwrap();
        assert_eq!(c.process_count(), 2);
        let c = parse(&["--devices", "19000", "--shard", "1/2"]).to_config().unwrap();
        assert_eq!(c.process_count(), 1);
        let c = parse(&["--devices", "60000"]).to_config().unwrap();
        assert_eq!((c.process_count(), c.source_address_count()), (4, 3));
    }

    #[test]
    fn child_arguments_repeat_the_configuration() {
        let cli = parse(&[
            "--server",
            "http://h:1/",
            "--mqtt",
            "[::1]:1884",
            "--devices",
            "19000",
            "--prefix",
            "lab-",
            "--duration",
            "0",
            "--ramp-rate",
            "250.5",
            "--telemetry-interval",
            "0.5",
            "--metrics",
            "temperature,co2",
            "--event-rate",
            "3",
            "--disconnect-rate",
            "1.5",
            "--flaky-percent",
            "2",
            "--offline-percent",
            "1",
            "--offline-secs",
            "30",
            "--protocol",
            "3.1.1",
            "--keep-alive",
            "45",
            "--session-expiry",
            "60",
            "--offline-buffer",
            "7",
            "--source-addresses",
            "3",
            "--credentials-file",
            "/tmp/ignored.json",
        ]);
        let parent = cli.to_config().unwrap();
        let shard = Shard::new(1, 2).unwrap();
        let args = child_args(&parent, shard, Path::new("/tmp/c.json"), 77);
        let child = Cli::try_parse_from(std::iter::once("herd-sim".to_owned()).chain(args))
            .unwrap()
            .to_config()
            .unwrap();
        let expected = SimConfig {
            shard,
            seed: Some(77),
            credentials_file: Some(PathBuf::from("/tmp/c.json")),
            provision: false,
            token: None,
            zero_touch: None,
            ..parent
        };
        assert_eq!(child, expected);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("a:1"), Some(("a".to_owned(), 1)));
        assert_eq!(split_host_port("[::1]:2"), Some(("::1".to_owned(), 2)));
        assert_eq!(split_host_port(":2"), None);
        assert_eq!(split_host_port("a"), None);
        assert_eq!(join_host_port("::1", 2), "[::1]:2");
    }
}

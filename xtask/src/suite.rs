//! The benchmark suite: which scenarios run and how big they are, one run of all of them on a
//! fresh pair of brokers, and `cargo xtask bench` itself (runs, medians, report).

use std::ops::Range;
use std::path::Path;

use anyhow::{Result, bail};
use rumqttc::QoS;

use crate::brokers::{Broker, clock_ticks, repo_root, start_herd, start_mosquitto};
use crate::report::{self, Machine, thousands};
use crate::scenarios::{
    CONNECT_IN_FLIGHT, FAN_IN_PUBLISHERS, Figure, LATENCY_RATE, connect_rate, fan_in, idle,
    latency, throughput,
};

/// The scenarios `--only` can pick.
pub(crate) const SCENARIOS: [&str; 6] = ["idle", "connect", "qos0", "qos1", "fan-in", "latency"];

/// Idle connections in a full run: as many as the file limit of 20,000 allows with room to spare.
const FULL_IDLE: usize = 19_000;

/// How much work each scenario does, and which scenarios run (all when `only` is empty).
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub(crate) only: Vec<String>,
    pub(crate) idle: usize,
    pub(crate) connect: usize,
    pub(crate) one_to_one: usize,
    pub(crate) fan_in_each: usize,
    pub(crate) latency_secs: u64,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                only: Vec::new(),
                idle: 500,
                connect: 300,
                one_to_one: 20_000,
                fan_in_each: 200,
                latency_secs: 2,
            }
        } else {
            Self {
                only: Vec::new(),
                idle: full_idle(),
                connect: 2_000,
                one_to_one: 100_000,
                fan_in_each: 1_000,
                latency_secs: 5,
            }
        }
    }

    pub(crate) fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    /// The devices of the connect-rate scenario: after those of every other scenario, so that on
    /// Herd each connects for the first time (its credential not yet in the cache).
    fn connect_range(&self) -> Range<usize> {
        let start = self.others();
        start..start + self.connect
    }

    /// Devices to provision on Herd.
    fn devices(&self) -> usize {
        if self.runs("connect") { self.connect_range().end } else { self.others() }
    }

    /// Devices used by the scenarios other than connect rate: `0..others()` (the fan-in
    /// publishers and Mosquitto's fan-in subscriber, the idle connections).
    fn others(&self) -> usize {
        let idle = if self.runs("idle") { self.idle } else { 0 };
        idle.max(FAN_IN_PUBLISHERS + 1)
    }
}

/// [`FULL_IDLE`], or fewer when this process may open fewer files (each connection is one file
/// here and one in the broker).
fn full_idle() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse::<usize>().ok()
    });
    match limit {
        Some(limit) if limit < FULL_IDLE + 1_000 => {
            let idle = limit.saturating_sub(1_000).max(1_000);
            eprintln!(
                "warning: the open-file limit is {limit}; {idle} idle connections instead of \
                 {FULL_IDLE} (raise it with `ulimit -n 20000`)"
            );
            idle
        }
        _ => FULL_IDLE,
    }
}

/// What `cargo xtask bench` was asked to do.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) sizes: Sizes,
    pub(crate) runs: usize,
    /// Write the section of `docs/benchmarks.md` (otherwise print it).
    pub(crate) write: bool,
    /// The command as typed, for the report.
    pub(crate) command: String,
}

/// How a measure is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unit {
    pub(crate) text: &'static str,
    pub(crate) higher_is_better: bool,
}

const BYTES: Unit = Unit { text: "bytes", higher_is_better: false };
const CONN_PER_SEC: Unit = Unit { text: "conn/s", higher_is_better: true };
const MSG_PER_SEC: Unit = Unit { text: "msg/s", higher_is_better: true };
const CPU_PER_MSG: Unit = Unit { text: "µs CPU/msg", higher_is_better: false };
const MICROS: Unit = Unit { text: "µs", higher_is_better: false };

/// One measure of one run on both brokers; a failed measure holds its error.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) measure: String,
    pub(crate) unit: Unit,
    pub(crate) herd: Result<Figure, String>,
    pub(crate) mosquitto: Result<Figure, String>,
}

/// One run of the suite.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) rows: Vec<Row>,
    /// Broker RSS at the end of the run, and the like.
    pub(crate) notes: Vec<String>,
}

/// `cargo xtask bench`: `runs` runs, each on fresh brokers, then the report.
pub(crate) async fn bench(options: Options) -> Result<()> {
    let sizes = &options.sizes;
    println!(
        "bench: {} run(s); idle {}, connect {} ({CONNECT_IN_FLIGHT} in flight), 1→1 {} msgs, \
         fan-in {FAN_IN_PUBLISHERS}×{} msgs, latency {} s at {LATENCY_RATE} msg/s; CPU time in \
         ticks of 1/{} s",
        options.runs,
        sizes.idle,
        sizes.connect,
        sizes.one_to_one,
        sizes.fan_in_each,
        sizes.latency_secs,
        clock_ticks()
    );
    let machine = Machine::detect();
    let mut runs = Vec::with_capacity(options.runs);
    for n in 1..=options.runs {
        println!("== run {n} of {} ==", options.runs);
        runs.push(run_once(sizes).await?);
    }
    let summaries = report::summarize(&runs);
    let section = report::section(&options, &machine, &runs, &summaries);
    let failures: Vec<&str> =
        summaries.iter().flat_map(|s| &s.failures).map(String::as_str).collect();
    println!();
    println!("{section}");
    if !failures.is_empty() {
        bail!(
            "{} measure(s) failed, docs/benchmarks.md left as it was:\n- {}",
            failures.len(),
            failures.join("\n- ")
        );
    }
    if options.write {
        let doc = repo_root().join("docs/benchmarks.md");
        report::write_section(&doc, &section)?;
        println!("wrote the MQTT section of {}", doc.display());
    } else {
        println!("(docs/benchmarks.md not written: pass --write to write it)");
    }
    Ok(())
}

/// All selected scenarios once, on a fresh Herd (fresh data directory, devices provisioned) and a
/// fresh Mosquitto. A scenario that fails on one broker is recorded as failed; the run goes on.
async fn run_once(sizes: &Sizes) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let herd = start_herd(dir.path(), sizes.devices()).await?;
    let mosquitto = start_mosquitto(dir.path()).await?;
    let brokers = [&herd, &mosquitto];
    let mut rows = Vec::new();

    if sizes.runs("idle") {
        let results =
            on_both(brokers, "idle connections", async |b| Ok([idle(b, sizes.idle).await?])).await;
        let measure = format!("idle connections ({}), RSS per connection", thousands(sizes.idle));
        push_rows(&mut rows, [(measure, BYTES)], results);
    }

    if sizes.runs("connect") {
        let range = sizes.connect_range();
        let results =
            on_both(brokers, "connect rate", async |b| Ok([connect_rate(b, range.clone()).await?]))
                .await;
        let measure = format!(
            "connect rate ({} clients, {CONNECT_IN_FLIGHT} in flight)",
            thousands(sizes.connect)
        );
        push_rows(&mut rows, [(measure, CONN_PER_SEC)], results);
    }

    for (qos, label, name) in
        [(QoS::AtMostOnce, "QoS 0", "qos0"), (QoS::AtLeastOnce, "QoS 1", "qos1")]
    {
        if !sizes.runs(name) {
            continue;
        }
        let results = on_both(brokers, &format!("{label} 1→1"), async |b| {
            throughput(b, qos, sizes.one_to_one).await
        })
        .await;
        push_rows(
            &mut rows,
            [
                (format!("{label} throughput 1→1"), MSG_PER_SEC),
                (format!("{label} 1→1, broker CPU per message"), CPU_PER_MSG),
            ],
            results,
        );
    }

    if sizes.runs("fan-in") {
        let results =
            on_both(brokers, &format!("QoS 1 fan-in {FAN_IN_PUBLISHERS}→1"), async |b| {
                fan_in(b, sizes.fan_in_each).await
            })
            .await;
        push_rows(
            &mut rows,
            [
                (format!("QoS 1 fan-in {FAN_IN_PUBLISHERS}→broker (all PUBACKs)"), MSG_PER_SEC),
                (
                    format!("QoS 1 fan-in {FAN_IN_PUBLISHERS}→1 subscriber (all delivered)"),
                    MSG_PER_SEC,
                ),
                (
                    format!("QoS 1 fan-in {FAN_IN_PUBLISHERS}→1, broker CPU per message"),
                    CPU_PER_MSG,
                ),
            ],
            results,
        );
    }

    if sizes.runs("latency") {
        let results =
            on_both(brokers, &format!("QoS 1 latency at {LATENCY_RATE} msg/s"), async |b| {
                latency(b, sizes.latency_secs).await
            })
            .await;
        let rate = thousands(LATENCY_RATE as usize);
        push_rows(
            &mut rows,
            [
                (format!("QoS 1 latency p50 at {rate} msg/s"), MICROS),
                (format!("QoS 1 latency p99 at {rate} msg/s"), MICROS),
            ],
            results,
        );
    }

    let mut notes = Vec::new();
    if let (Ok(h), Ok(m)) = (herd.rss_kib(), mosquitto.rss_kib()) {
        notes.push(format!(
            "broker RSS at the end: Herd {:.1} MiB, Mosquitto {:.1} MiB",
            h as f64 / 1024.0,
            m as f64 / 1024.0
        ));
    }
    drop(herd);
    drop(mosquitto);
    keep_logs_of_failures(dir.path(), &rows);
    Ok(Run { rows, notes })
}

/// Runs `scenario` on Herd, then on Mosquitto; an error becomes that broker's failed result.
async fn on_both<const N: usize>(
    brokers: [&Broker; 2],
    what: &str,
    scenario: impl AsyncFn(&Broker) -> Result<[Figure; N]>,
) -> [Result<[Figure; N], String>; 2] {
    let mut results = [Err(String::new()), Err(String::new())];
    for (slot, b) in results.iter_mut().zip(brokers) {
        if !b.settle().await {
            println!("{}: still busy after 15 s; measuring anyway", b.name);
        }
        println!("{}: {what} …", b.name);
        *slot = scenario(b).await.map_err(|e| format!("{}: {what}: {e:#}", b.name));
        if let Err(e) = slot {
            eprintln!("error: {e}");
        }
    }
    results
}

/// One row per measure of a scenario, in order.
fn push_rows<const N: usize>(
    rows: &mut Vec<Row>,
    measures: [(String, Unit); N],
    results: [Result<[Figure; N], String>; 2],
) {
    let [herd, mosquitto] = results;
    for (i, (measure, unit)) in measures.into_iter().enumerate() {
        let pick = |r: &Result<[Figure; N], String>| match r {
            Ok(figures) => Ok(figures[i].clone()),
            Err(e) => Err(e.clone()),
        };
        rows.push(Row { measure, unit, herd: pick(&herd), mosquitto: pick(&mosquitto) });
    }
}

/// When a measure failed, copies the brokers' logs out of the run's temporary directory (which is
/// deleted with it) into `target/bench-logs/`, and says where.
fn keep_logs_of_failures(dir: &Path, rows: &[Row]) {
    if rows.iter().all(|r| r.herd.is_ok() && r.mosquitto.is_ok()) {
        return;
    }
    let keep = repo_root().join("target/bench-logs");
    if std::fs::create_dir_all(&keep).is_err() {
        return;
    }
    for log in ["herd.log", "mosquitto.log"] {
        let to = keep.join(log);
        if std::fs::copy(dir.join(log), &to).is_ok() {
            eprintln!("kept {}", to.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_rate_uses_devices_no_other_scenario_used() {
        let mut sizes = Sizes::new(true);
        assert_eq!(sizes.connect_range(), 500..800);
        assert_eq!(sizes.devices(), 800);
        sizes.only = vec!["connect".to_owned()];
        assert_eq!(sizes.connect_range(), 101..401);
        sizes.only = vec!["qos0".to_owned()];
        assert_eq!(sizes.devices(), 101);
    }
}

//! The report of `cargo xtask bench`: medians over runs, the machine it ran on, and the generated
//! MQTT section of `docs/benchmarks.md` (between [`BEGIN`] and [`END`]).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::brokers::{INFLIGHT, STALL, WRAPPER_VAR, clock_ticks, repo_root};
use crate::scenarios::{
    CONNECT_IN_FLIGHT, FAN_IN_PUBLISHERS, Figure, IDLE_IN_FLIGHT, LATENCY_RATE, PAYLOAD,
};
use crate::suite::{Options, Run, Unit};

/// The generated section starts after this line…
pub(crate) const BEGIN: &str = "<!-- mqtt-bench:begin -->";
/// …and ends before this one.
pub(crate) const END: &str = "<!-- mqtt-bench:end -->";
/// The heading of the section, found when the markers are not there yet.
const HEADING: &str = "## MQTT broker vs Mosquitto";
/// The target for an idle connection, in bytes of broker RSS.
const IDLE_TARGET: f64 = 2048.0;

/// Where the benchmark ran.
#[derive(Debug)]
pub(crate) struct Machine {
    date: String,
    cores: String,
    memory: String,
    cpu: String,
    kernel: String,
    mosquitto: String,
    commit: String,
    rustc: String,
    rumqttc: String,
}

impl Machine {
    /// Reads the machine, tools and commit; what cannot be read is "unknown".
    pub(crate) fn detect() -> Self {
        let unknown = || "unknown".to_owned();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.1} GiB RAM", kib / (1024.0 * 1024.0)))
            })
            .unwrap_or_else(|| "unknown RAM".to_owned());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                let line = c.lines().find(|l| l.starts_with("model name"))?;
                Some(line.split_once(':')?.1.trim().to_owned())
            })
            .unwrap_or_else(unknown);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| unknown());
        let commit = match first_line("git", &["rev-parse", "--short", "HEAD"]) {
            Some(commit) => {
                let changes = Command::new("git")
                    .args(["status", "--porcelain", "--untracked-files=no"])
                    .current_dir(repo_root())
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty());
                if changes {
                    format!("{commit} with uncommitted changes in the working tree")
                } else {
                    commit
                }
            }
            None => unknown(),
        };
        let rumqttc = std::fs::read_to_string(repo_root().join("Cargo.lock"))
            .ok()
            .and_then(|lock| {
                let (_, after) = lock.split_once("name = \"rumqttc\"\nversion = \"")?;
                Some(after.split_once('"')?.0.to_owned())
            })
            .unwrap_or_else(unknown);
        Self {
            date: first_line("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(unknown),
            cores: first_line("nproc", &[]).unwrap_or_else(unknown),
            memory,
            cpu,
            kernel,
            mosquitto: first_line("mosquitto", &["-h"])
                .map(|l| l.trim_start_matches("mosquitto version ").to_owned())
                .unwrap_or_else(unknown),
            commit,
            rustc: first_line("rustc", &["--version"]).unwrap_or_else(unknown),
            rumqttc,
        }
    }
}

/// The first non-empty line a command prints (on stdout, else stderr), whatever its exit status:
/// `mosquitto -h` prints its version and exits with 3.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).current_dir(repo_root()).output().ok()?;
    [out.stdout, out.stderr].iter().find_map(|bytes| {
        let text = String::from_utf8_lossy(bytes);
        text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_owned)
    })
}

/// One measure over all runs.
#[derive(Debug)]
pub(crate) struct Summary {
    measure: String,
    unit: Unit,
    /// Per run; `None` where the measure failed.
    herd: Vec<Option<f64>>,
    mosquitto: Vec<Option<f64>>,
    /// Herd / Mosquitto per run, where both were measured.
    ratios: Vec<Option<f64>>,
    /// Errors of failed measures, with their run and broker.
    pub(crate) failures: Vec<String>,
    /// Runs where work was lost (undelivered messages, refused connections).
    shortfalls: Vec<String>,
    /// What each run measured, broker by broker.
    notes: Vec<String>,
}

impl Summary {
    fn herd_median(&self) -> Option<f64> {
        median(&self.herd)
    }
}

/// Groups the rows of all runs by measure, in the order of the first run.
pub(crate) fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut summaries: Vec<Summary> = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        for row in &run.rows {
            let i = match summaries.iter().position(|s| s.measure == row.measure) {
                Some(i) => i,
                None => {
                    summaries.push(Summary {
                        measure: row.measure.clone(),
                        unit: row.unit,
                        herd: vec![None; runs.len()],
                        mosquitto: vec![None; runs.len()],
                        ratios: vec![None; runs.len()],
                        failures: Vec::new(),
                        shortfalls: Vec::new(),
                        notes: Vec::new(),
                    });
                    summaries.len() - 1
                }
            };
            let s = &mut summaries[i];
            let run_no = r + 1;
            let mut notes = Vec::new();
            for (name, result, values) in
                [("Herd", &row.herd, &mut s.herd), ("Mosquitto", &row.mosquitto, &mut s.mosquitto)]
            {
                match result {
                    Ok(Figure { value, note, shortfall }) => {
                        values[r] = Some(*value);
                        notes.push(format!("{name}: {note}"));
                        if let Some(short) = shortfall {
                            s.shortfalls.push(format!("run {run_no}, {name}: {short}"));
                        }
                    }
                    Err(e) => {
                        notes.push(format!("{name}: failed"));
                        s.failures.push(format!("run {run_no}: {e}"));
                    }
                }
            }
            s.ratios[r] = match (s.herd[r], s.mosquitto[r]) {
                (Some(h), Some(m)) if m > 0.0 => Some(h / m),
                _ => None,
            };
            s.notes.push(format!("run {run_no} — {}", notes.join("; ")));
        }
    }
    summaries
}

/// The median of the values present (the mean of the middle two for an even count).
fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// The generated MQTT section (without the markers).
pub(crate) fn section(
    options: &Options,
    machine: &Machine,
    runs: &[Run],
    summaries: &[Summary],
) -> String {
    let sizes = &options.sizes;
    let n = runs.len();
    let mut s = String::new();
    let mut line = |text: &str| {
        s.push_str(text);
        s.push('\n');
    };
    line(HEADING);
    line("");
    line(
        "<!-- Generated by `cargo xtask bench` (xtask/src/report.rs): edit the generator, not this \
         section; text outside the mqtt-bench markers is kept. -->",
    );
    line("");
    line(&format!(
        "Command: `{}` (measured {}). `cargo xtask bench` builds Herd first (`cargo build --release \
         -p server`), then runs the whole suite `--runs N` times (default 3), each run on a freshly \
         started Herd and Mosquitto, and writes this section; `--quick` is a smaller smoke run \
         (1 run, printed, not written unless `--write`), `--no-write` prints instead of writing, \
         `--only idle,connect,qos0,qos1,fan-in,latency` picks scenarios, `--idle N` and \
         `--connect N` size those two, `--no-build` skips the build, and \
         `{WRAPPER_VAR}=\"heaptrack\"` or `\"perf record -g --\"` runs Herd under a profiler. It \
         needs `mosquitto` on the PATH.",
        options.command, machine.date
    ));
    line("");
    line(&format!(
        "Machine: {} cores ({}), {}, Linux {}. **The {} cores are shared by the load generator and \
         both brokers** (each broker runs its scenario while the other is idle), so every figure \
         includes the load generator's competition for CPU. Herd at commit {} (release build, {}); \
         Mosquitto {}; load generator `rumqttc` {}.",
        machine.cores,
        machine.cpu,
        machine.memory,
        machine.kernel,
        machine.cores,
        machine.commit,
        machine.rustc,
        machine.mosquitto,
        machine.rumqttc
    ));
    line("");
    if n == 1 {
        line(
            "1 run, so each \"median\" is that run's value. \"better\" says which direction is \
             better for that measure.",
        );
    } else {
        line(&format!(
            "{n} runs: the median of the runs for each broker, and the median of the per-run Herd / \
             Mosquitto ratios (so the ratio column is not the quotient of the two median columns). \
             \"better\" says which direction is better for that measure."
        ));
    }
    line("");
    line(
        "| measure | unit | better | Herd (median) | Mosquitto (median) | Herd / Mosquitto \
         (median) | Herd per run | Mosquitto per run |",
    );
    line("|---|---|---|---:|---:|---:|---|---|");
    for m in summaries {
        let per_run = |values: &[Option<f64>]| {
            values
                .iter()
                .map(|v| v.map_or_else(|| "failed".to_owned(), |v| fmt_value(v, m.unit)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let show = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| fmt_value(v, m.unit));
        line(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            m.measure,
            m.unit.text,
            if m.unit.higher_is_better { "higher" } else { "lower" },
            show(m.herd_median()),
            show(median(&m.mosquitto)),
            median(&m.ratios).map_or_else(|| "—".to_owned(), |r| format!("{r:.2}")),
            per_run(&m.herd),
            per_run(&m.mosquitto),
        ));
    }
    line("");

    let shortfalls: Vec<String> = summaries
        .iter()
        .flat_map(|m| m.shortfalls.iter().map(move |s| format!("{}: {s}", m.measure)))
        .collect();
    if shortfalls.is_empty() {
        line(
            "Every message was delivered and every connection accepted, in every run, on both \
             brokers.",
        );
    } else {
        line(
            "Not everything arrived in these runs (a rate then counts only what arrived, and is not \
             comparable):",
        );
        line("");
        for short in &shortfalls {
            line(&format!("- {short}"));
        }
    }
    if let Some(idle) = summaries.iter().find(|m| m.measure.starts_with("idle connections"))
        && let Some(herd) = idle.herd_median()
    {
        line(&format!(
            "The issue's target of at most 2 KiB (2,048 bytes) of broker RSS per idle connection is \
             {} at the median ({} bytes).",
            if herd <= IDLE_TARGET { "met" } else { "**not met**" },
            fmt_num(herd)
        ));
    }
    line("");

    line("How it is measured:");
    line("");
    line(
        "- Herd: `herd serve` on a fresh SQLite data directory with its defaults (log level \
         `info`) except `--mqtt-listen 127.0.0.1:<free port>`, the per-device publish rate limit \
         off (`mqtt.publish_rate_per_sec = 0`: the scenarios publish as fast as one device can, \
         which the default 1,000 msg/s would throttle), `mqtt.max_connections = 20000`, \
         `mqtt.max_queued_messages = 200000`, and one application (`[[mqtt.applications]]`, user \
         name `bench-subscriber`, secret in a 0600 file) allowed to subscribe to \
         `devices/+/telemetry`. Each run provisions its devices over the REST API (one CSV import \
         of active devices, then one credential each); a device authenticates with its \
         credential. A device may use only `devices/{its id}/` on Herd, so the scenarios are \
         shaped around that.",
    );
    line(
        "- Mosquitto: `mosquitto -c` with `listener <free port> 127.0.0.1`, `allow_anonymous \
         true`, `persistence false`, `max_connections -1`, `max_queued_messages 200000`, \
         otherwise defaults; the same clients connect anonymously with the same client ids.",
    );
    line(&format!(
        "- Load generator: `rumqttc` (MQTT 3.1.1, `TCP_NODELAY`, {INFLIGHT} QoS 1 messages in \
         flight per client, {PAYLOAD}-byte payloads) in one process (`xtask`) for both brokers, \
         on the same cores as the brokers. Before each scenario the broker is given up to 15 s to \
         become idle (under 20 ms of CPU in 500 ms), so the previous scenario's clean-up (closing \
         19,000 connections, presence writes) does not run during the next. A scenario gives up \
         on a stream when nothing has arrived for {} s.",
        STALL.as_secs()
    ));
    line(&format!(
        "- **idle**: {} connections (keep-alive 600 s) opened {IDLE_IN_FLIGHT} at a time; broker \
         `VmRSS` growth from before the first connect to 3 s after the last CONNACK, divided by \
         the connections. On Herd the figure includes each device's credential-cache entry and \
         presence.",
        thousands(sizes.idle)
    ));
    line(&format!(
        "- **connect rate**: {} more devices (ones the run has not connected before, so Herd's \
         credential cache is cold: each CONNECT is a SHA-256 of the secret and a store read) \
         connect as fast as they can with at most {CONNECT_IN_FLIGHT} waiting for their CONNACK at \
         a time (TCP connect + CONNECT → CONNACK); connections per second from the first connect \
         to the last CONNACK. They stay connected until the last is in, then send DISCONNECT.",
        thousands(sizes.connect)
    ));
    line(&format!(
        "- **1→1** (QoS 0 and QoS 1): one connection subscribed to its own `devices/{{id}}/bench` \
         publishes {} messages to it as fast as the client can (publish → route → deliver back on \
         the same socket); rate = messages received / time to the last one.",
        thousands(sizes.one_to_one)
    ));
    line(&format!(
        "- **fan-in**: {FAN_IN_PUBLISHERS} devices each publish {} QoS 1 messages to their own \
         `devices/{{id}}/telemetry`, and one subscriber on `devices/+/telemetry` (Herd: the \
         application; Mosquitto: an anonymous client) receives them. Two rates: ingest (all \
         PUBACKs received by the publishers; on Herd cross-checked with \
         `mqtt_messages_received_total` on `/metrics`) and delivery (all messages received by the \
         subscriber; the raised `max_queued_messages` on both brokers keeps their default queue \
         limit of 1,000 from dropping most of the burst, so this measures routing, not the \
         limit).",
        thousands(sizes.fan_in_each)
    ));
    line(&format!(
        "- **broker CPU per message** (1→1 and fan-in): the broker process's user + system CPU \
         time (all its threads; not the load generator's) from `/proc/PID/stat`, read just before \
         the first publish and just after the last message arrived, divided by the messages \
         received (1→1) or acknowledged (fan-in, where it also pays for delivering each one to the \
         subscriber; Herd stores no telemetry yet). The kernel counts it in \
         clock ticks of 1/{} s (`getconf CLK_TCK`), so a run that uses under a second of broker \
         CPU is only a few percent precise.",
        clock_ticks()
    ));
    line(&format!(
        "- **latency**: the 1→1 loopback with QoS 1, paced at {} msg/s for {} s (bursts of ~10 per \
         millisecond, tokio timer resolution); send timestamp in the payload, p50/p99 over all \
         messages received.",
        thousands(LATENCY_RATE as usize),
        sizes.latency_secs
    ));
    line(
        "- Caveats: one process generates all load; MQTT 3.1.1 only; throughput varies by up to \
         ±30% between runs on this shared machine (the per-run columns show it), the ratios less.",
    );
    line("");
    line("Hand-written notes (from earlier rounds; not re-measured by this command):");
    line("");
    line(
        "- Where Herd's ~2 KiB per idle connection went at commit 9291659, estimated from the \
         measured sizes of the connection's futures and an earlier (partial) heap profile, so \
         approximate: the connection's task (~1.1 KiB: the main loop's future with the session \
         state, the socket and the select over mailbox, socket and timer), tokio's socket \
         registration (~0.5 KiB), the broker's session entry and client-id maps (~0.3 KiB), the \
         mailbox, identity and ACL (~0.2 KiB), and the credential cache entry (a share of at most \
         `mqtt.auth_cache_entries` = 10,000 entries). An idle connection holds no read or write \
         buffer. Mosquitto was 2.5–2.9× leaner then.",
    );
    line(
        "- Before that round (commit ff7b846, same machine) Herd used 12.3 KiB per idle connection \
         and delivered QoS 0 1→1 at 0.25–0.34× Mosquitto, dropping most messages; see the git \
         history of this file.",
    );
    line("");
    line("<details><summary>Per-run details</summary>");
    line("");
    for (r, run) in runs.iter().enumerate() {
        for note in &run.notes {
            line(&format!("- run {}: {note}", r + 1));
        }
    }
    for m in summaries {
        for note in &m.notes {
            line(&format!("- {}, {note}", m.measure));
        }
        for failure in &m.failures {
            line(&format!("- {}, failed: {failure}", m.measure));
        }
    }
    line("");
    line("</details>");
    s
}

/// Replaces the text between [`BEGIN`] and [`END`] in `doc` with `section`; the first time, the
/// whole `## MQTT broker vs Mosquitto` section (up to the next `## ` heading), or the end of the
/// file when there is no such section.
pub(crate) fn write_section(doc: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(doc).with_context(|| format!("read {}", doc.display()))?;
    let new = splice(&text, section)?;
    let tmp = doc.with_extension("md.tmp");
    std::fs::write(&tmp, new).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, doc).with_context(|| format!("replace {}", doc.display()))
}

fn splice(text: &str, section: &str) -> Result<String> {
    let block = format!("{BEGIN}\n{}\n{END}", section.trim_end());
    let (start, end) = match (text.find(BEGIN), text.find(END)) {
        (Some(start), Some(end)) if start < end => (start, end + END.len()),
        (None, None) => match find_heading(text, HEADING) {
            Some(start) => {
                let after = start + HEADING.len();
                let end = find_heading(&text[after..], "## ").map_or(text.len(), |e| after + e);
                // Keep the blank line before the next section.
                let end = text[..end].trim_end().len();
                (start, end)
            }
            None => {
                let mut out = text.trim_end().to_owned();
                write!(out, "\n\n{block}\n")?;
                return Ok(out);
            }
        },
        _ => bail!(
            "docs/benchmarks.md has one mqtt-bench marker without the other, or in the wrong order"
        ),
    };
    let mut out = String::with_capacity(text.len() + block.len());
    out.push_str(&text[..start]);
    out.push_str(&block);
    let rest = &text[end..];
    if rest.is_empty() {
        out.push('\n');
    } else {
        out.push_str(rest);
    }
    Ok(out)
}

/// The byte offset of the first line that starts with `prefix`.
fn find_heading(text: &str, prefix: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with(prefix) {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// A measured value as the table shows it: small values with decimals, large ones grouped.
fn fmt_value(v: f64, unit: Unit) -> String {
    if unit.text.contains("CPU") && v < 10.0 { format!("{v:.2}") } else { fmt_num(v) }
}

/// `181934.4` → `181,934`; below 100, one decimal.
pub(crate) fn fmt_num(v: f64) -> String {
    if v >= 100.0 { thousands(v.round() as usize) } else { format!("{v:.1}") }
}

/// `19000` → `19,000`.
pub(crate) fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_present_values() {
        assert_eq!(median(&[Some(3.0), Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(3.0), None, Some(1.0)]), Some(2.0));
        assert_eq!(median(&[None]), None);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(19_000), "19,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(fmt_num(181_934.4), "181,934");
        assert_eq!(fmt_num(2.04), "2.0");
    }

    #[test]
    fn first_splice_wraps_the_existing_section_and_keeps_the_others() {
        let doc = "# B\n\n## A\n\na\n\n## MQTT broker vs Mosquitto\n\nold\n\n## C\n\nc\n";
        let out = splice(doc, "## MQTT broker vs Mosquitto\n\nnew\n").unwrap();
        assert_eq!(
            out,
            format!(
                "# B\n\n## A\n\na\n\n{BEGIN}\n## MQTT broker vs Mosquitto\n\nnew\n{END}\n\n## C\n\nc\n"
            )
        );
        // Later splices replace only what is between the markers.
        let again = splice(&out, "## MQTT broker vs Mosquitto\n\nnewer").unwrap();
        assert!(again.contains("newer\n") && !again.contains("\nnew\n"));
        assert!(
            again.starts_with("# B\n\n## A\n\na\n\n")
                && again.ends_with(&format!("{END}\n\n## C\n\nc\n"))
        );
    }

    #[test]
    fn first_splice_of_a_last_section_ends_the_file() {
        let doc = "# B\n\n## MQTT broker vs Mosquitto\n\nold\n";
        let out = splice(doc, "## MQTT broker vs Mosquitto\n\nnew\n").unwrap();
        assert_eq!(out, format!("# B\n\n{BEGIN}\n## MQTT broker vs Mosquitto\n\nnew\n{END}\n"));
    }

    #[test]
    fn splice_appends_when_there_is_no_section() {
        let out = splice("# B\n", "## MQTT broker vs Mosquitto\n").unwrap();
        assert_eq!(out, format!("# B\n\n{BEGIN}\n## MQTT broker vs Mosquitto\n{END}\n"));
    }

    #[test]
    fn a_lone_marker_is_an_error() {
        assert!(splice(&format!("{END}\n{BEGIN}\n"), "x").is_err());
        assert!(splice(&format!("{BEGIN}\n"), "x").is_err());
    }

    #[test]
    fn splicing_the_real_doc_keeps_the_other_sections() {
        let doc = std::fs::read_to_string(repo_root().join("docs/benchmarks.md")).unwrap();
        let out = splice(&doc, &format!("{HEADING}\n\ngenerated\n")).unwrap();
        let start = out.find(BEGIN).unwrap();
        assert_eq!(&out[..start], &doc[..start]);
        assert!(out.contains(&format!("{BEGIN}\n{HEADING}\n\ngenerated\n{END}\n")));
        let tail = &out[out.find(END).unwrap() + END.len()..];
        assert!(doc.ends_with(tail));
        assert_eq!(splice(&out, &format!("{HEADING}\n\ngenerated\n")).unwrap(), out);
    }

    fn figure(value: f64) -> Result<Figure, String> {
        Ok(Figure { value, note: String::new(), shortfall: None })
    }

    #[test]
    fn a_failed_measure_is_left_out_of_the_medians_and_reported() {
        let unit = Unit { text: "msg/s", higher_is_better: true };
        let row =
            |herd, mosquitto| crate::suite::Row { measure: "m".to_owned(), unit, herd, mosquitto };
        let runs = [
            Run { rows: vec![row(figure(10.0), figure(5.0))], notes: Vec::new() },
            Run {
                rows: vec![row(Err("Herd: m: boom".to_owned()), figure(4.0))],
                notes: Vec::new(),
            },
            Run { rows: vec![row(figure(30.0), figure(6.0))], notes: Vec::new() },
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].herd_median(), Some(20.0));
        assert_eq!(median(&s[0].mosquitto), Some(5.0));
        assert_eq!(s[0].ratios, [Some(2.0), None, Some(5.0)]);
        assert_eq!(median(&s[0].ratios), Some(3.5));
        assert_eq!(s[0].failures, ["run 2: Herd: m: boom"]);
    }
}

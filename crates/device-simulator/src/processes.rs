//! Multi-process runs: one process holds at most ~19,000 sockets here, so a larger fleet runs in
//! several.
//!
//! The parent provisions every device itself and writes the credentials to a file (the
//! `--credentials-file`, or a private temporary one), then re-executes its own binary once per
//! shard with `--child --shard I/P` and every setting spelled out ([`crate::cli::child_args`]).
//! Each child runs its slice and reports on stdout in JSON lines ([`ChildMessage`]): its progress
//! every second, then its summary. The parent adds the children's progress into one line and
//! their summaries into its own. Closing a child's stdin asks it to stop early (the parent does
//! so at Ctrl-C, and a child whose parent died stops too).

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::config::SimConfig;
use crate::fleet::Report;
use crate::shard::{self, Shard};
use crate::summary::{ErrorKind, Progress, Summary};

/// Messages from the children waiting for the parent; a child waits when it is full (it writes
/// two a second at most).
const CHILD_MESSAGES: usize = 256;

/// What a child tells its parent, one JSON object per line on its stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildMessage {
    /// Once a second.
    Progress(Progress),
    /// At the end.
    Summary(Summary),
}

/// Provisions the fleet, runs it in `processes` child processes, and sums up.
///
/// # Errors
/// When provisioning fails as a whole, or a child cannot be started.
pub async fn run(
    config: &SimConfig,
    processes: u32,
    report: &mut dyn Report,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let seed = config.seed.unwrap_or_else(crate::profile::random_seed);
    // Without a credentials file of the user's, a private temporary one carries the secrets to
    // the children; it goes when the run ends.
    let temporary = tempfile::Builder::new()
        .prefix("herd-sim-")
        .tempdir()
        .context("failed to create a temporary directory")?;
    let credentials = config
        .credentials_file
        .clone()
        .unwrap_or_else(|| temporary.path().join("credentials.json"));

    let started = tokio::time::Instant::now();
    let ids: Vec<String> =
        (0..config.devices).map(|i| shard::device_id(&config.prefix, i)).collect();
    let provisioning = SimConfig { credentials_file: Some(credentials.clone()), ..config.clone() };
    // Zero-touch too: the parent registers every device and hands the secrets to the children
    // through the credentials file, like the credentials it issues otherwise.
    let (_, zero_touch) = crate::fleet::credentials(&provisioning, &ids, report).await?;
    let provision_secs = started.elapsed().as_secs_f64();

    report.note(&format!("starting {processes} processes"));
    let exe = std::env::current_exe().context("failed to find the herd-sim executable")?;
    let (tx, mut rx) = mpsc::channel(CHILD_MESSAGES);
    let mut children: Vec<Child> = Vec::new();
    let mut stdins: Vec<Option<ChildStdin>> = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..processes {
        let shard = Shard::new(i, processes).expect("i < processes");
        let mut child = Command::new(&exe)
            .args(crate::cli::child_args(config, shard, &credentials, seed))
            .env_remove("HERD_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start child process {shard}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        stdins.push(child.stdin.take());
        children.push(child);
        let tx = tx.clone();
        readers.spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Anything that is not a message (there should be nothing) is skipped.
                if let Ok(message) = serde_json::from_str::<ChildMessage>(&line)
                    && tx.send((i as usize, message)).await.is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);

    let n = processes as usize;
    let mut progress: Vec<Progress> = vec![Progress::default(); n];
    let mut summaries: Vec<Option<Summary>> = vec![None; n];
    let mut max_connected = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some((i, ChildMessage::Progress(p))) => {
                    progress[i] = p;
                    max_connected = max_connected.max(progress.iter().map(|p| p.connected).sum());
                }
                Some((i, ChildMessage::Summary(s))) => {
                    summaries[i] = Some(s);
                    // Done: its stdin is no longer needed to stop it.
                    stdins[i] = None;
                }
                // Every child closed its stdout: they are ending.
                None => break,
            },
            _ = tick.tick() => {
                let combined = Progress { devices: config.devices, ..Progress::combine(&progress) };
                report.progress(&combined);
            }
            () = &mut shutdown, if !stopping => {
                stopping = true;
                stdins.iter_mut().for_each(|s| *s = None);
            }
        }
    }
    while readers.join_next().await.is_some() {}
    drop(stdins);
    for (i, child) in children.iter_mut().enumerate() {
        let status = child.wait().await;
        if summaries[i].is_none() {
            report.note(&format!(
                "child process {i}/{processes} ended without a summary: {status:?}"
            ));
        }
    }

    let done: Vec<Summary> = summaries.iter().flatten().cloned().collect();
    let mut summary = Summary::combine(&done, max_connected);
    for (i, s) in summaries.iter().enumerate() {
        if s.is_none() {
            let shard = Shard::new(u32::try_from(i).expect("fewer than u32::MAX"), processes)
                .expect("i < processes");
            let slice = shard.slice(config.devices);
            summary.devices += slice.end - slice.start;
            summary.add_failure(ErrorKind::ChildProcess, slice.end - slice.start);
        }
    }
    summary.processes = processes;
    summary.provision_secs = provision_secs;
    summary.zero_touch = zero_touch;
    summary.seed = seed;
    summary.source_addresses = config.source_address_count();
    Ok(summary)
}

//! One process's devices: provisioning, the connection ramp, each device's behaviour, progress
//! sampling, the graceful end and the summary.
//!
//! Each device is two tasks: the device agent's task (its MQTT connection) and a behaviour task
//! that sends telemetry and events and injects disconnections through its `DeviceHandle`. The
//! run's own loop starts devices at the ramp rate and samples every device's `Stats` four times a
//! second (a read of a `watch` value each: cheap even for tens of thousands of devices).
//!
//! The end is fixed: behaviour tasks stop, a last sample is taken (the summary's `connected`),
//! every device is told to shut down (MQTT DISCONNECT) and given [`SHUTDOWN_GRACE`] to do so; a
//! device still running then is aborted.

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use device_agent::commands::{Answer, COMMANDS_SUBSCRIPTION, Commands, Received};
use device_agent::{AgentError, Backoff, Device, DeviceConfig, DeviceHandle, Stopped};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::SimConfig;
use crate::profile::{DeviceModel, JobBehaviour, Profile};
use crate::provision::{Api, CredentialCache, provision, zero_touch};
use crate::shard;
use crate::summary::{ErrorCounts, ErrorKind, Progress, Summary, ZeroTouch};

/// How long devices get to send DISCONNECT and stop at the end of a run.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often device counters are sampled (for `max_connected`); every fourth sample is reported.
const SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// Files a process keeps open besides its devices' sockets (runtime, HTTP client, streams).
const SPARE_FILES: u64 = 200;

/// Where a run reports to while it goes on.
pub trait Report {
    /// Called once a second with the run's state.
    fn progress(&mut self, progress: &Progress);
    /// A one-line note for the operator (provisioning done, a warning).
    fn note(&mut self, message: &str);
}

/// A [`Report`] that ignores everything (tests, `--quiet` children).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Report for Silent {
    fn progress(&mut self, _: &Progress) {}
    fn note(&mut self, _: &str) {}
}

/// Runs this process's part of the fleet (`config.shard`): provisions its devices (unless
/// `config.provision` is off), connects them at the ramp rate, runs their behaviour until
/// `config.duration` has passed or `shutdown` completes, stops them and sums up.
///
/// # Errors
/// When the run cannot start: the import fails as a whole, the credentials file cannot be read
/// or written, no token where one is needed, too many devices for the open-file limit, source
/// addresses with a server that is not on loopback. Failures of single devices are counted in
/// the summary instead.
pub async fn run(
    config: &SimConfig,
    report: &mut dyn Report,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let seed = config.seed.unwrap_or_else(crate::profile::random_seed);
    let slice = config.shard.slice(config.devices);
    let ids: Vec<String> = slice.clone().map(|i| shard::device_id(&config.prefix, i)).collect();
    let source_addresses = config.source_address_count();
    check_open_files(ids.len() as u64)?;
    if source_addresses > 0 {
        check_loopback(&config.mqtt_host, config.mqtt_port).await?;
    }

    let provisioning = Instant::now();
    let (tokens, zero_touch) = credentials(config, &ids, report).await?;
    let provision_secs = provisioning.elapsed().as_secs_f64();

    let devices = slice
        .zip(ids)
        .zip(tokens)
        .map(|((index, id), token)| Pending { index, id, token })
        .collect();
    let mut summary =
        Fleet::new(config, seed, source_addresses).run(devices, report, shutdown).await;
    summary.provision_secs = provision_secs;
    summary.zero_touch = zero_touch;
    Ok(summary)
}

/// The secrets of devices `ids`, provisioning them as configured; with the figures of the
/// registrations in a zero-touch run.
pub(crate) async fn credentials(
    config: &SimConfig,
    ids: &[String],
    report: &mut dyn Report,
) -> anyhow::Result<(Vec<Result<String, String>>, Option<ZeroTouch>)> {
    let (mut cache, note) =
        CredentialCache::load(config.credentials_file.as_deref(), &config.server)?;
    if let Some(note) = note {
        report.note(&note);
    }
    let all_cached = ids.iter().all(|id| cache.get(id).is_some());
    let api = match (&config.token, config.provision) {
        (_, false) => None,
        (Some(token), true) => Some(Api::new(&config.server, token)?),
        (None, true) if all_cached => None,
        (None, true) => bail!(
            "an admin token is needed to create devices and credentials: pass --token or set HERD_TOKEN"
        ),
    };
    if let (Some(api), Some(group)) = (&api, &config.zero_touch) {
        report.note(&format!(
            "zero-touch: {} devices register through enrollment group {group} at {}",
            ids.len(),
            config.server
        ));
        let (tokens, stats) =
            zero_touch(api, group, ids, &mut cache, config.register_concurrency).await?;
        cache.save()?;
        report.note(&format!(
            "zero-touch: {} registered in {:.1} s ({:.0}/s, keys derived in {:.1} s), {} cached, {} failed",
            stats.registrations,
            stats.register_secs,
            stats.rate_per_sec,
            stats.derive_secs,
            stats.cached,
            stats.failures
        ));
        if let Some(Err(reason)) = tokens.iter().find(|t| t.is_err()) {
            report.note(&format!("first registration failure: {reason}"));
        }
        return Ok((tokens, Some(stats)));
    }
    if api.is_some() {
        report.note(&format!("provisioning {} devices through {}", ids.len(), config.server));
    }
    let started = Instant::now();
    let provisioned = provision(api.as_ref(), ids, &mut cache).await?;
    cache.save()?;
    if api.is_some() {
        let failed = provisioned.tokens.iter().filter(|t| t.is_err()).count();
        report.note(&format!(
            "provisioned in {:.1} s: {} created, {} reused, {} new credentials, {} failed",
            started.elapsed().as_secs_f64(),
            provisioned.created,
            provisioned.reused,
            provisioned.issued,
            failed
        ));
        if let Some(Err(reason)) = provisioned.tokens.iter().find(|t| t.is_err()) {
            report.note(&format!("first provisioning failure: {reason}"));
        }
    }
    Ok((provisioned.tokens, None))
}

/// A device waiting for its turn in the ramp.
#[derive(Debug)]
struct Pending {
    index: u64,
    id: String,
    token: Result<String, String>,
}

/// A started device.
#[derive(Debug)]
struct Slot {
    handle: DeviceHandle,
    task: JoinHandle<Result<(), AgentError>>,
    behaviour: JoinHandle<Behaved>,
    /// Answers the device's direct commands; ends when the device task does.
    answers: JoinHandle<()>,
    /// Seen connected (or with signs of having been) by a sample.
    ever_connected: bool,
}

/// What a behaviour task did.
#[derive(Debug, Clone, Copy, Default)]
struct Behaved {
    /// Connections it cut on purpose (random, flaky, offline).
    severs: u64,
    /// Whether it saw the device connected.
    connected: bool,
}

/// Counters the behaviour tasks share with the run loop.
#[derive(Debug, Default)]
struct Live {
    /// Devices that have connected once.
    ever_connected: AtomicU64,
    /// Milliseconds from the start of the run to the latest first connection.
    last_first_connection_ms: AtomicU64,
    /// Connections cut on purpose.
    severs: AtomicU64,
    /// Events handed to the devices.
    events: AtomicU64,
}

/// The run of one process's devices.
#[derive(Debug)]
struct Fleet<'a> {
    config: &'a SimConfig,
    profile: Arc<Profile>,
    seed: u64,
    source_addresses: u8,
    live: Arc<Live>,
    cancel: CancellationToken,
    slots: Vec<Slot>,
    /// Errors of devices that never started (provisioning, configuration).
    early_errors: ErrorCounts,
    /// Devices that never started.
    not_started: u64,
    max_connected: u64,
}

/// Sums over all devices at one moment.
#[derive(Debug, Default)]
struct Sample {
    connected: u64,
    sent: u64,
    acked: u64,
    reconnects: u64,
    dropped: u64,
    /// Connections that ended: each reconnect follows one, plus the devices offline now after
    /// having connected.
    downs: u64,
    /// Device tasks that have ended (during the run, always with an error).
    ended: u64,
}

impl<'a> Fleet<'a> {
    fn new(config: &'a SimConfig, seed: u64, source_addresses: u8) -> Self {
        Self {
            config,
            profile: Arc::new(config.profile.clone()),
            seed,
            source_addresses,
            live: Arc::new(Live::default()),
            cancel: CancellationToken::new(),
            slots: Vec::new(),
            early_errors: ErrorCounts::default(),
            not_started: 0,
            max_connected: 0,
        }
    }

    async fn run(
        mut self,
        devices: Vec<Pending>,
        report: &mut dyn Report,
        shutdown: impl Future<Output = ()>,
    ) -> Summary {
        let total = devices.len() as u64;
        self.slots.reserve(devices.len());
        let mut pending = devices.into_iter();
        let mut started_count = 0u64;
        let start = Instant::now();
        let deadline = self.config.duration.map(|d| start + d);
        let ramp_rate = (self.config.ramp_rate / f64::from(self.config.shard.count())).max(0.001);
        let mut ramp = tokio::time::interval(Duration::from_millis(10));
        ramp.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sampler = tokio::time::interval(SAMPLE_PERIOD);
        sampler.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut samples = 0u64;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = until(deadline) => break,
                _ = ramp.tick(), if started_count < total => {
                    let due = (start.elapsed().as_secs_f64() * ramp_rate).floor();
                    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a count, clamped")]
                    let due = (due as u64 + 1).min(total);
                    while started_count < due {
                        let Some(device) = pending.next() else { break };
                        self.start(device, start);
                        started_count += 1;
                    }
                }
                _ = sampler.tick() => {
                    let sample = self.sample();
                    self.max_connected = self.max_connected.max(sample.connected);
                    samples += 1;
                    if samples.is_multiple_of(4) {
                        report.progress(&self.progress(&sample, start, total, started_count));
                    }
                }
            }
        }
        let elapsed = start.elapsed();
        // Devices the ramp did not reach never connected.
        let never_started: Vec<Pending> = pending.collect();
        self.finish(elapsed, total, never_started.len() as u64).await
    }

    /// Starts one device and its behaviour.
    fn start(&mut self, device: Pending, run_start: Instant) {
        let Ok(token) = device.token else {
            self.early_errors.add(ErrorKind::Provisioning, 1);
            self.not_started += 1;
            return;
        };
        let config = self.device_config(device.index, device.id, token);
        let (handle, inbox, task) = match Device::spawn_with_inbox(config, COMMAND_INBOX) {
            Ok(started) => started,
            Err(error) => {
                tracing::warn!(%error, "device not started");
                self.early_errors.add(ErrorKind::Config, 1);
                self.not_started += 1;
                return;
            }
        };
        let model = DeviceModel::new(self.seed, device.index, &self.profile);
        let behaviour = tokio::spawn(behave(
            handle.clone(),
            model,
            Arc::clone(&self.profile),
            run_start,
            self.config.duration,
            Arc::clone(&self.live),
            self.cancel.clone(),
        ));
        // Job and twin messages come through the same inbox; the command answerer hands them on.
        let twin = self.profile.twin.map(|twin| {
            let (tx, rx) = tokio::sync::mpsc::channel(TWIN_INBOX.get());
            tokio::spawn(follow_twin(
                handle.clone(),
                rx,
                twin.delay,
                twin.drifts(self.seed, device.index),
                self.cancel.clone(),
            ));
            tx
        });
        let jobs = self.profile.jobs.map(|jobs| {
            let (tx, rx) = tokio::sync::mpsc::channel(JOB_INBOX.get());
            tokio::spawn(run_jobs(
                handle.clone(),
                rx,
                jobs,
                self.seed,
                device.index,
                self.cancel.clone(),
            ));
            tx
        });
        let answers = tokio::spawn(answer_commands(
            Commands::new(handle.clone(), inbox),
            Others { jobs, twin },
            CommandBehaviour {
                index: device.index,
                seed: self.seed,
                failure_pct: self.config.command_failure_pct,
                delay: self.config.command_delay,
            },
            self.cancel.clone(),
        ));
        self.slots.push(Slot { handle, task, behaviour, answers, ever_connected: false });
    }

    fn device_config(&self, index: u64, id: String, token: String) -> DeviceConfig {
        let c = self.config;
        let mut config = DeviceConfig::new(c.mqtt_host.clone(), c.mqtt_port, id, token);
        config.protocol = c.protocol;
        config.keep_alive = c.keep_alive;
        config.session_expiry = c.session_expiry;
        config.offline_buffer_capacity =
            NonZeroUsize::new(c.offline_buffer).unwrap_or(NonZeroUsize::MIN);
        // Quicker to come back than the agent's default (60 s at most), so that a short run sees
        // its devices return after a server hiccup.
        config.backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(15),
            jitter: 0.5,
        };
        config.local_address = shard::source_address(index, self.source_addresses);
        config.subscriptions = vec![COMMANDS_SUBSCRIPTION.to_owned()];
        if self.profile.jobs.is_some() {
            config.subscriptions.push(device_agent::jobs::SUBSCRIPTION.to_owned());
        }
        if self.profile.twin.is_some() {
            config.subscriptions.push(device_agent::twin::SUBSCRIPTION.to_owned());
        }
        config
    }

    fn sample(&mut self) -> Sample {
        let mut s = Sample::default();
        for slot in &mut self.slots {
            let stats = slot.handle.stats();
            slot.ever_connected |= stats.connected || stats.reconnects > 0 || stats.acked > 0;
            s.connected += u64::from(stats.connected);
            s.sent += stats.sent;
            s.acked += stats.acked;
            s.reconnects += stats.reconnects;
            s.dropped += stats.dropped;
            s.downs += stats.reconnects + u64::from(slot.ever_connected && !stats.connected);
            s.ended += u64::from(slot.task.is_finished());
        }
        s
    }

    fn progress(&self, sample: &Sample, start: Instant, total: u64, started: u64) -> Progress {
        let severs = self.live.severs.load(Ordering::Relaxed);
        Progress {
            elapsed_secs: start.elapsed().as_secs_f64(),
            devices: total,
            started,
            connected: sample.connected,
            ever_connected: self.live.ever_connected.load(Ordering::Relaxed),
            sent: sample.sent,
            acked: sample.acked,
            reconnects: sample.reconnects,
            errors: self.early_errors.total() + sample.ended + sample.downs.saturating_sub(severs),
        }
    }

    /// Stops everything and sums up.
    async fn finish(mut self, elapsed: Duration, total: u64, never_started: u64) -> Summary {
        let mut errors = self.early_errors.clone();
        errors.add(ErrorKind::NeverConnected, never_started);
        let mut failed = self.not_started + never_started;

        // Behaviour first, so that nothing is published or cut while the devices are counted.
        self.cancel.cancel();
        let grace = Instant::now() + SHUTDOWN_GRACE;
        let mut behaved = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            slot.answers.abort();
            behaved.push(match tokio::time::timeout_at(grace, &mut slot.behaviour).await {
                Ok(Ok(b)) => b,
                Ok(Err(_)) | Err(_) => {
                    slot.behaviour.abort();
                    Behaved::default()
                }
            });
        }

        let last = self.sample();
        let rss_bytes = resident_memory();
        let mut lost = 0;
        let mut reconnects = 0;
        let mut dropped = 0;
        let mut connected_once = Vec::with_capacity(self.slots.len());
        for (slot, b) in self.slots.iter().zip(&behaved) {
            let stats = slot.handle.stats();
            let ever = slot.ever_connected || b.connected;
            let downs = stats.reconnects + u64::from(ever && !stats.connected);
            lost += downs.saturating_sub(b.severs);
            reconnects += stats.reconnects;
            dropped += stats.dropped;
            connected_once.push(ever);
        }
        errors.add(ErrorKind::ConnectionLost, lost);

        // Tell every device to stop, at once; then wait for them, with one deadline for all.
        let grace = Instant::now() + SHUTDOWN_GRACE;
        let stops = futures_util::future::join_all(self.slots.iter().map(|s| async {
            // A device whose task already ended has nothing to stop.
            let _: Result<(), Stopped> = s.handle.shutdown().await;
        }));
        let _ = tokio::time::timeout_at(grace, stops).await;
        for (slot, ever) in self.slots.iter_mut().zip(connected_once) {
            let failure = match tokio::time::timeout_at(grace, &mut slot.task).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(AgentError::Refused(_)))) => Some(ErrorKind::Refused),
                Ok(Err(_)) => Some(ErrorKind::Panicked),
                Err(_) => {
                    slot.task.abort();
                    errors.add(ErrorKind::ShutdownTimeout, 1);
                    None
                }
            };
            match failure {
                Some(kind) => {
                    errors.add(kind, 1);
                    failed += 1;
                }
                None if !ever => {
                    errors.add(ErrorKind::NeverConnected, 1);
                    failed += 1;
                }
                None => {}
            }
        }

        let all_connected = self.live.ever_connected.load(Ordering::Relaxed) == total;
        let first_connections = self.live.last_first_connection_ms.load(Ordering::Relaxed);
        #[expect(clippy::cast_precision_loss, reason = "milliseconds of a run")]
        let connect_time_secs = all_connected.then(|| first_connections as f64 / 1_000.0);
        Summary {
            devices: total,
            connected: last.connected,
            max_connected: self.max_connected.max(last.connected),
            failed,
            messages_sent: last.sent,
            messages_acked: last.acked,
            events_sent: self.live.events.load(Ordering::Relaxed),
            injected_disconnects: self.live.severs.load(Ordering::Relaxed),
            reconnects,
            dropped,
            errors: errors.total(),
            errors_by_kind: errors.to_map(),
            duration_secs: elapsed.as_secs_f64(),
            connect_time_secs,
            provision_secs: 0.0,
            processes: 1,
            source_addresses: self.source_addresses,
            seed: self.seed,
            rss_bytes,
            zero_touch: None,
        }
    }
}

/// One device's behaviour: telemetry every interval, random events, injected disconnections,
/// until `cancel`.
async fn behave(
    handle: DeviceHandle,
    mut model: DeviceModel,
    profile: Arc<Profile>,
    run_start: Instant,
    run_length: Option<Duration>,
    live: Arc<Live>,
    cancel: CancellationToken,
) -> Behaved {
    let mut behaved = Behaved::default();
    let now = Instant::now();
    let interval = profile.telemetry_interval;
    let mut telemetry = tokio::time::interval_at(now + model.telemetry_offset(interval), interval);
    telemetry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_event = model.next_event_in().map(|d| now + d);
    let mut next_cut = model.next_disconnect_in().map(|d| now + d);
    let mut drop_offline = model.drops_offline_at(run_length).map(|d| run_start + d);
    loop {
        let flow = tokio::select! {
            biased;
            () = cancel.cancelled() => ControlFlow::Break(()),
            first = handle.wait_for_stats(|s| s.connected), if !behaved.connected => match first {
                Ok(_) => {
                    behaved.connected = true;
                    let ms = u64::try_from(run_start.elapsed().as_millis()).unwrap_or(u64::MAX);
                    live.ever_connected.fetch_add(1, Ordering::Relaxed);
                    live.last_first_connection_ms.fetch_max(ms, Ordering::Relaxed);
                    ControlFlow::Continue(())
                }
                Err(Stopped) => ControlFlow::Break(()),
            },
            _ = telemetry.tick() => {
                let (message, event) = model.telemetry(&profile.metrics, run_start.elapsed());
                let mut flow = or_cancel(&cancel, handle.telemetry(&message)).await;
                if let (ControlFlow::Continue(()), Some(event)) = (flow, event) {
                    flow = or_cancel(&cancel, handle.event(&event)).await;
                    live.events.fetch_add(u64::from(flow.is_continue()), Ordering::Relaxed);
                }
                flow
            }
            () = until(next_event) => {
                next_event = model.next_event_in().map(|d| Instant::now() + d);
                let event = model.random_event();
                let flow = or_cancel(&cancel, handle.event(&event)).await;
                live.events.fetch_add(u64::from(flow.is_continue()), Ordering::Relaxed);
                flow
            }
            () = until(next_cut) => {
                next_cut = model.next_disconnect_in().map(|d| Instant::now() + d);
                // A device that is offline already is left alone: the cut would do nothing.
                if handle.stats().connected {
                    let offline_for = model.disconnect_offline_for();
                    sever(&handle, &cancel, &live, &mut behaved, offline_for).await
                } else {
                    ControlFlow::Continue(())
                }
            }
            () = until(drop_offline) => {
                if handle.stats().connected {
                    drop_offline = None;
                    // Until the end of the run (and beyond) unless told otherwise.
                    let offline_for = profile.offline_for.unwrap_or_else(|| {
                        run_length.unwrap_or(Duration::from_secs(86_400)) + Duration::from_secs(3_600)
                    });
                    sever(&handle, &cancel, &live, &mut behaved, offline_for).await
                } else {
                    // Try again once it is back.
                    drop_offline = Some(Instant::now() + Duration::from_secs(1));
                    ControlFlow::Continue(())
                }
            }
        };
        if flow.is_break() {
            return behaved;
        }
    }
}

async fn sever(
    handle: &DeviceHandle,
    cancel: &CancellationToken,
    live: &Live,
    behaved: &mut Behaved,
    offline_for: Duration,
) -> ControlFlow<()> {
    let flow = or_cancel(cancel, handle.sever(offline_for)).await;
    if flow.is_continue() {
        behaved.severs += 1;
        live.severs.fetch_add(1, Ordering::Relaxed);
    }
    flow
}

/// Hands a request to the device task unless the run ends first.
async fn or_cancel(
    cancel: &CancellationToken,
    request: impl Future<Output = Result<(), Stopped>>,
) -> ControlFlow<()> {
    tokio::select! {
        () = cancel.cancelled() => ControlFlow::Break(()),
        sent = request => if sent.is_ok() { ControlFlow::Continue(()) } else { ControlFlow::Break(()) },
    }
}

/// Completes at `deadline`, or never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Refuses a run that needs more sockets than this process may open.
fn check_open_files(devices: u64) -> anyhow::Result<()> {
    let Some(limit) = open_file_limit() else { return Ok(()) };
    if devices + SPARE_FILES > limit {
        bail!(
            "{devices} devices need {devices} sockets but this process may open only {limit} files: \
             spread them over more processes (--processes) or raise the limit (ulimit -n)"
        );
    }
    Ok(())
}

/// The soft limit on open files (Linux), `None` where unknown or unlimited.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// The resident memory of this process (Linux), `None` where unknown.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 =
        line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Source addresses `127.0.0.x` can only reach a server on IPv4 loopback.
async fn check_loopback(host: &str, port: u16) -> anyhow::Result<()> {
    let addresses: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("failed to resolve the MQTT host {host}"))?
        .map(|a| a.ip())
        .collect();
    if !addresses.iter().any(|a| a.is_ipv4() && a.is_loopback()) {
        bail!(
            "--source-addresses spreads connections over 127.0.0.x, which only reaches a server \
             on IPv4 loopback, not {host}: use --source-addresses 0"
        );
    }
    Ok(())
}

/// Commands a simulated device's inbox holds before the device task waits for it.
const COMMAND_INBOX: NonZeroUsize = NonZeroUsize::MIN.saturating_add(7);

/// How one simulated device answers direct commands.
#[derive(Debug, Clone, Copy)]
struct CommandBehaviour {
    /// The device's global index.
    index: u64,
    /// The run's seed.
    seed: u64,
    /// Percentage of answers that are `failed`.
    failure_pct: f64,
    /// How long an answer takes.
    delay: Duration,
}

impl CommandBehaviour {
    /// Whether answer `k` (from 0) of this device fails: see `SimConfig::command_failure_pct`.
    fn fails(&self, k: u64) -> bool {
        crate::profile::selected(
            self.index,
            self.failure_pct,
            crate::profile::salt(self.seed, 3_u64.wrapping_add(k)),
        )
    }
}

/// Answers every command the device gets: `ping` and anything else succeed with the payload as
/// result, or fail as [`CommandBehaviour::fails`] says, after the configured delay.
async fn answer_commands(
    mut commands: Commands,
    others: Others,
    b: CommandBehaviour,
    cancel: CancellationToken,
) {
    let mut answered = 0_u64;
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => return,
            received = commands.next() => received,
        };
        let command = match received {
            Some(Received::Command(command)) => command,
            Some(Received::Other(message)) => {
                let to = if message.subtopic().starts_with("twin/") {
                    others.twin.as_ref()
                } else {
                    others.jobs.as_ref()
                };
                if let Some(to) = to {
                    // A runner has stopped only when the run is being cancelled.
                    let _ = to.send(message).await;
                }
                continue;
            }
            Some(_) => continue,
            None => return,
        };
        if !b.delay.is_zero() {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(b.delay) => {}
            }
        }
        let answer = if b.fails(answered) {
            Answer::failed("simulated", "herd-sim --command-failure-pct")
        } else {
            Answer::succeeded(command.payload.clone())
        };
        answered += 1;
        if commands.answer(&command, &answer).await.is_err() {
            return;
        }
    }
}

/// Where a device's messages other than commands go.
struct Others {
    /// Job messages, for the job runner.
    jobs: Option<tokio::sync::mpsc::Sender<device_agent::Incoming>>,
    /// Twin messages, for [`follow_twin`].
    twin: Option<tokio::sync::mpsc::Sender<device_agent::Incoming>>,
}

/// Twin messages waiting for a device's [`follow_twin`].
const TWIN_INBOX: NonZeroUsize = NonZeroUsize::new(16).expect("not zero");

/// Follows a device's desired state: asks for the twin after every connection, and reports each
/// new delta (pushed, or in the answer) after `delay` — as it is, or, for a drifting device,
/// with every property set to `"simulated-drift"`. Reports are not waited for: the next delta
/// or connection brings whatever is still missing.
async fn follow_twin(
    handle: DeviceHandle,
    mut inbox: tokio::sync::mpsc::Receiver<device_agent::Incoming>,
    delay: Duration,
    drifts: bool,
    cancel: CancellationToken,
) {
    use device_agent::twin::{self, TwinMessage};
    use serde_json::{Value, json};
    let asker = tokio::spawn(twin::request_on_each_connection(handle.clone(), "sim-get"));
    // The connection and the newest desired version reported on it.
    let mut reported: Option<(u64, u64)> = None;
    let mut n = 0_u64;
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => break,
            m = inbox.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Some((delta, version)) = TwinMessage::parse(&message).and_then(TwinMessage::into_delta)
        else {
            continue;
        };
        let connection = handle.stats().reconnects;
        if delta.is_empty() || reported.is_some_and(|(c, v)| c == connection && v >= version) {
            continue;
        }
        reported = Some((connection, version));
        if !delay.is_zero() {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let body: Value = if drifts {
            delta.keys().map(|k| (k.clone(), json!("simulated-drift"))).collect()
        } else {
            Value::Object(delta)
        };
        n += 1;
        if twin::report_without_waiting(&handle, body, &format!("sim-report-{n}")).await.is_err() {
            break;
        }
    }
    asker.abort();
}

/// Messages waiting for a job-running device's job runner.
const JOB_INBOX: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// Runs the command jobs device `index` receives: each document is answered after the delay with
/// `succeeded` or (as [`JobBehaviour::fails`] decides) `failed`; pending work is asked for after
/// each connection.
async fn run_jobs(
    handle: DeviceHandle,
    mut inbox: tokio::sync::mpsc::Receiver<device_agent::Incoming>,
    jobs: JobBehaviour,
    seed: u64,
    index: u64,
    cancel: CancellationToken,
) {
    use device_agent::jobs::{self, JobMessage, JobStatus};
    let asker = tokio::spawn(jobs::request_pending_on_each_connection(handle.clone()));
    // Attempts already run, so a document seen twice (notify, get) is run once.
    let mut done: std::collections::HashSet<(String, u64)> = std::collections::HashSet::new();
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => break,
            m = inbox.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let documents = match jobs::parse(&message) {
            Some(JobMessage::Document(d)) => vec![d],
            Some(JobMessage::PendingAnswer { documents, .. }) => documents,
            _ => continue,
        };
        for d in documents {
            if !done.insert((d.job_id.clone(), d.attempt)) {
                continue;
            }
            if !jobs.delay.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(jobs.delay) => {}
                }
            }
            let status = if jobs.fails(seed, index, &d.job_id, d.attempt) {
                JobStatus::Failed
            } else {
                JobStatus::Succeeded
            };
            let mut details = serde_json::Map::new();
            details.insert("simulated".to_owned(), serde_json::Value::Bool(true));
            if jobs::report(&handle, &d.job_id, status, Some(details), None).await.is_err() {
                break;
            }
        }
    }
    asker.abort();
}

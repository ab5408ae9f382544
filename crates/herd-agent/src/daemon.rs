//! The agent's life: connect through the SDK, report facts after every connection, send a
//! heartbeat every interval, stop gracefully.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use device_agent::commands::{Answer, DeviceCommand, answer_command};
use device_agent::identity::{self, Rotate};
use device_agent::twin::{self, TwinMessage};
use device_agent::{
    AgentError, Channel, Device, DeviceConfig, DeviceHandle, Inbox, OfflineJournal, Protocol,
    Stats, TlsOptions, Transport,
};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::desired::{self, Applied};
use crate::renewal::Renewer;
use crate::settings::{Scheme, Settings};

/// Messages from Herd waiting for the agent: answers to renewals, requests to renew, commands and
/// twin messages.
const INBOX_CAPACITY: std::num::NonZeroUsize = std::num::NonZeroUsize::new(32).expect("not zero");
use crate::system::{self, CpuSampler};

/// How the agent runs.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Until a shutdown signal.
    Daemon,
    /// Connect, send the facts and one heartbeat, wait for their acknowledgement, stop; give up
    /// after `timeout`.
    Once {
        /// How long to try.
        timeout: Duration,
    },
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The server refused the device for good (bad credential, unknown or suspended device).
    #[error(
        "the server refused the device: {0:?}; check the device id, its credential and its state"
    )]
    Refused(device_agent::ReasonCode),
    /// The enrollment group refused the registration (wrong key or code, disabled or expired
    /// group, a conflicting device): retrying cannot help.
    #[error("{0}")]
    RegistrationRefused(String),
    /// `--once` could not get its heartbeat acknowledged in time.
    #[error("no acknowledged heartbeat within {0:?}: the server could not be reached")]
    TimedOut(Duration),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The SDK configuration for `settings`.
///
/// # Errors
/// None today; kept fallible for settings the SDK may reject.
pub fn device_config(settings: &Settings) -> anyhow::Result<DeviceConfig> {
    let server = &settings.server;
    let mut config =
        DeviceConfig::new(&server.host, server.port, &settings.device_id, &settings.token);
    let tls = || TlsOptions {
        ca_file: settings.ca_file.clone(),
        server_name: None,
        client_cert: settings.client_cert.clone(),
    };
    config.transport = match server.scheme {
        Scheme::Mqtt => Transport::Tcp,
        Scheme::Mqtts => Transport::Tls(tls()),
        Scheme::Ws => Transport::WebSocket { path: server.path.clone(), tls: None },
        Scheme::Wss => Transport::WebSocket { path: server.path.clone(), tls: Some(tls()) },
    };
    config.protocol = if settings.v311 { Protocol::V311 } else { Protocol::V5 };
    // Herd's answers to renewals, its requests to renew, and direct commands.
    config.subscriptions = vec![
        identity::RESPONSE_SUBTOPIC.to_owned(),
        identity::ROTATE_SUBTOPIC.to_owned(),
        device_agent::commands::COMMANDS_SUBSCRIPTION.to_owned(),
        twin::SUBSCRIPTION.to_owned(),
    ];
    config.keep_alive = settings.keep_alive;
    config.offline_journal = Some(OfflineJournal {
        dir: settings.data_dir.join("journal"),
        max_bytes: settings.offline_buffer_max_bytes,
        sync: settings.offline_buffer_sync,
    });
    Ok(config)
}

/// Runs the agent until `shutdown` completes (daemon) or its one heartbeat is acknowledged (once).
///
/// # Errors
/// [`RunError`].
pub async fn run(
    settings: &Settings,
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!("cannot create the data directory {}", settings.data_dir.display())
    })?;
    tokio::pin!(shutdown);
    let registered = match mode {
        Mode::Once { timeout } => tokio::time::timeout(
            timeout,
            crate::provision::ensure_registered(settings, &mut shutdown),
        )
        .await
        .map_err(|_| RunError::TimedOut(timeout))??,
        Mode::Daemon => crate::provision::ensure_registered(settings, &mut shutdown).await?,
    };
    let Some(registered) = registered else {
        tracing::info!("shut down before the device was registered");
        return Ok(());
    };
    let settings = &registered;
    let config = device_config(settings)?;
    let (device, mut inbox, mut task) =
        Device::spawn_with_inbox(config, INBOX_CAPACITY).context("invalid device configuration")?;
    let mut cpu = CpuSampler::default();
    let mut own = settings.clone();
    let applied = Applied::load(settings);
    own.heartbeat_interval = applied.heartbeat_interval;
    own.renew_before = applied.renew_before;
    let agent = Agent {
        device: &device,
        settings: own,
        desired: DesiredState::default(),
        facts_for: None,
        pending_for: None,
        inbox: &mut inbox,
        running: tokio::task::JoinSet::new(),
        seen: std::collections::VecDeque::new(),
    };
    let outcome = match mode {
        Mode::Once { timeout } => {
            let once = agent.once(&mut cpu);
            tokio::select! {
                result = tokio::time::timeout(timeout, once) => {
                    result.map_err(|_| RunError::TimedOut(timeout)).and_then(|r| r)
                }
                ended = &mut task => return Err(ended_early(ended)),
            }
        }
        Mode::Daemon => {
            tokio::select! {
                result = agent.daemon(&mut cpu, shutdown) => result,
                ended = &mut task => return Err(ended_early(ended)),
            }
        }
    };
    let _ = device.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Err(AgentError::Refused(code)))) => return Err(RunError::Refused(code)),
        Ok(_) => {}
        Err(_) => tracing::warn!("the device task did not stop in time"),
    }
    outcome
}

fn ended_early(ended: Result<Result<(), AgentError>, tokio::task::JoinError>) -> RunError {
    match ended {
        Ok(Err(AgentError::Refused(code))) => RunError::Refused(code),
        Ok(Ok(())) => RunError::Other(anyhow::anyhow!("the device task stopped unexpectedly")),
        Err(e) => RunError::Other(anyhow::anyhow!("the device task failed: {e}")),
    }
}

/// Waits until `device`'s counters satisfy `condition`.
async fn wait_for(
    device: &DeviceHandle,
    condition: impl FnMut(&Stats) -> bool,
) -> Result<Stats, RunError> {
    device
        .wait_for_stats(condition)
        .await
        .map_err(|_| RunError::Other(anyhow::anyhow!("the device task stopped")))
}

struct Agent<'a> {
    device: &'a DeviceHandle,
    /// The configuration, with the settings desired state changed applied.
    settings: Settings,
    /// Where applying desired state stands.
    desired: DesiredState,
    /// Herd's answers to renewals and its requests to renew.
    inbox: &'a mut Inbox,
    /// The connection (its reconnect count) the facts were last sent for.
    facts_for: Option<u64>,
    /// The connection pending commands were last asked for on (once subscribed).
    pending_for: Option<u64>,
    /// Direct commands being carried out, each ending with its id and answer.
    running: tokio::task::JoinSet<(String, Answer)>,
    /// Ids of the last commands started, to skip repeats (Herd may send one again).
    seen: std::collections::VecDeque<String>,
}

/// Where applying desired state stands.
#[derive(Default)]
struct DesiredState {
    /// The desired version last applied on this connection (deltas at or below it are repeats).
    version: Option<u64>,
    /// The hook, while it runs: it ends with the desired version and the reported patch or why
    /// it failed.
    hook: tokio::task::JoinSet<(u64, Result<Value, String>)>,
    /// The newest delta for the hook that arrived while it ran (it supersedes older ones).
    next: Option<(Map<String, Value>, u64)>,
    /// Numbers the agent's twin requests.
    requests: u64,
}

impl Agent<'_> {
    async fn once(mut self, cpu: &mut CpuSampler) -> Result<(), RunError> {
        let stats = self.wait_stats(|s| s.connected).await?;
        self.send_facts(stats.reconnects).await?;
        // A first CPU sample over a short window rather than since boot.
        let _ = cpu.sample();
        tokio::time::sleep(Duration::from_millis(250)).await;
        self.send_heartbeat(cpu).await?;
        let sent = self.device.stats().sent;
        self.wait_stats(|s| s.buffered == 0 && s.acked >= sent && s.acked == s.sent).await?;
        tracing::info!("facts and heartbeat acknowledged");
        Ok(())
    }

    async fn daemon(
        mut self,
        cpu: &mut CpuSampler,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), RunError> {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewal_check = tokio::time::interval(self.settings.renewal_check_interval);
        renewal_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let _ = cpu.sample();
        loop {
            let facts_for = self.facts_for;
            let pending_for = self.pending_for;
            tokio::select! {
                () = &mut shutdown => break,
                stats = wait_for(self.device, move |s| {
                    s.connected && s.subscribed && Some(s.reconnects) != pending_for
                }) => {
                    // A clean session subscribes after CONNACK: ask for what was sent before.
                    self.pending_for = Some(stats?.reconnects);
                    let channel = Channel::subtopic(device_agent::commands::PENDING_SUBTOPIC)
                        .map_err(|e| RunError::Other(anyhow::anyhow!("{e}")))?;
                    self.device
                        .publish(channel, Vec::<u8>::new().into())
                        .await
                        .map_err(|_| RunError::Other(anyhow::anyhow!("the device task stopped")))?;
                    self.sync_twin().await?;
                }
                Some(done) = self.desired.hook.join_next(), if !self.desired.hook.is_empty() => {
                    if let Ok((version, outcome)) = done {
                        self.hook_done(version, outcome).await?;
                    }
                }
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    if let Ok((id, answer)) = done {
                        tracing::info!(command_id = %id, status = answer.status, "command answered");
                        let _ = answer_command(self.device, &id, &answer).await;
                    }
                }
                _ = heartbeat.tick() => self.send_heartbeat(cpu).await?,
                stats = wait_for(self.device, move |s| s.connected && Some(s.reconnects) != facts_for) => {
                    self.send_facts(stats?.reconnects).await?;
                }
                _ = renewal_check.tick(), if self.settings.client_cert.is_some() => {
                    let renewer = Renewer { device: self.device, settings: &self.settings };
                    if renewer.certificate_due() {
                        tracing::info!("the client certificate ends soon; renewing it");
                        if let Err(e) = renewer.renew_certificate(self.inbox).await {
                            tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed");
                        }
                    }
                }
                incoming = self.inbox.recv() => {
                    let Some(incoming) = incoming else { continue };
                    if incoming.topic.ends_with(identity::ROTATE_SUBTOPIC) {
                        self.rotate(&incoming.payload).await;
                    } else if let Some(command) = DeviceCommand::parse(&incoming) {
                        self.start_command(command).await;
                    } else if let Some(message) = TwinMessage::parse(&incoming) {
                        let every = self.settings.heartbeat_interval;
                        self.on_twin(message).await?;
                        if self.settings.heartbeat_interval != every {
                            heartbeat = tokio::time::interval_at(
                                tokio::time::Instant::now() + self.settings.heartbeat_interval,
                                self.settings.heartbeat_interval,
                            );
                            heartbeat.set_missed_tick_behavior(
                                tokio::time::MissedTickBehavior::Delay,
                            );
                        }
                    }
                }
            }
        }
        tracing::info!("shutting down");
        self.desired.hook.shutdown().await;
        let grace = self.settings.shutdown_grace;
        let drained = tokio::time::timeout(
            grace,
            self.wait_stats(|s| !s.connected || (s.buffered == 0 && s.acked == s.sent)),
        )
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "messages still unacknowledged at shutdown; the journal keeps them"
            );
        }
        Ok(())
    }

    /// Starts a direct command on its own task (answered when it ends), unless it is a repeat.
    async fn start_command(&mut self, command: Result<DeviceCommand, String>) {
        let command = match command {
            Ok(command) => command,
            Err(reason) => {
                tracing::warn!(reason, "ignoring a command it cannot read");
                return;
            }
        };
        if self.seen.contains(&command.id) {
            return;
        }
        if self.seen.len() == device_agent::commands::REMEMBERED_IDS {
            self.seen.pop_front();
        }
        self.seen.push_back(command.id.clone());
        if self.running.len() >= crate::commands::MAX_RUNNING {
            let busy = Answer::rejected("busy", "too many commands are running");
            let _ = answer_command(self.device, &command.id, &busy).await;
            return;
        }
        tracing::info!(command_id = %command.id, name = %command.name, "running a command");
        let handlers = self.settings.commands.clone();
        self.running.spawn(async move {
            let answer = crate::commands::execute(&handlers, &command).await;
            (command.id, answer)
        });
    }

    /// Renews what Herd asks for on `identity/rotate`.
    async fn rotate(&mut self, request: &[u8]) {
        let renewer = Renewer { device: self.device, settings: &self.settings };
        let renewed = match Rotate::parse(request) {
            Some(Rotate::Certificate) => renewer.renew_certificate(self.inbox).await,
            Some(Rotate::Credential) => renewer.renew_credential(self.inbox).await,
            None => {
                tracing::warn!("ignoring a rotation request it cannot read");
                return;
            }
        };
        match renewed {
            Ok(()) => tracing::info!("renewed on Herd's request"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "renewal on Herd's request failed"),
        }
    }

    /// After every (re)subscription: report the agent settings it runs with, then ask for the
    /// twin (its answer carries the delta; the delta Herd pushes on arrival may have come before
    /// the subscription).
    async fn sync_twin(&mut self) -> Result<(), RunError> {
        self.desired.version = None;
        let applied = self.applied();
        self.report(json!({ desired::AGENT_KEY: applied.to_json() })).await?;
        self.desired.requests += 1;
        let request = json!({"request_id": format!("agent-get-{}", self.desired.requests)});
        self.publish(twin_channel("twin/get")?, &request).await
    }

    fn applied(&self) -> Applied {
        Applied {
            heartbeat_interval: self.settings.heartbeat_interval,
            renew_before: self.settings.renew_before,
        }
    }

    /// A twin message: a delta pushed, or the answer to the agent's `twin/get` (its delta).
    async fn on_twin(&mut self, message: TwinMessage) -> Result<(), RunError> {
        if let TwinMessage::Answer(answer) = &message
            && answer.get("status").and_then(Value::as_str) == Some("error")
        {
            tracing::warn!(%answer, "Herd refused a twin request");
            return Ok(());
        }
        let Some((delta, version)) = message.into_delta() else { return Ok(()) };
        if self.desired.version.is_some_and(|v| v >= version) || delta.is_empty() {
            return Ok(());
        }
        self.desired.version = Some(version);
        self.apply_delta(delta, version).await
    }

    /// Applies the agent's settings at once and reports them; hands the rest to the hook.
    async fn apply_delta(
        &mut self,
        delta: Map<String, Value>,
        version: u64,
    ) -> Result<(), RunError> {
        let split = desired::split(delta);
        let mut errors = split.errors;
        if !split.agent.is_empty() {
            let mut applied = self.applied();
            let refused = applied.apply(&split.agent);
            for key in split.agent.keys() {
                let pointer = format!("/{}/{key}", desired::AGENT_KEY);
                errors.entry(pointer).or_insert(Value::Null);
            }
            errors.extend(refused);
            if applied != self.applied() {
                tracing::info!(settings = %applied.to_json(), "applying desired agent settings");
                self.settings.heartbeat_interval = applied.heartbeat_interval;
                self.settings.renew_before = applied.renew_before;
                if let Err(e) = applied.save(&self.settings.data_dir) {
                    tracing::warn!(error = %e, "cannot keep the desired agent settings");
                }
            }
            let errors = std::mem::take(&mut errors);
            self.report(json!({
                desired::AGENT_KEY: applied.to_json(),
                desired::ERRORS_KEY: errors,
            }))
            .await?;
        } else if !errors.is_empty() {
            self.report(json!({ desired::ERRORS_KEY: errors })).await?;
        }
        if split.rest.is_empty() {
            return Ok(());
        }
        let Some(hook) = self.settings.desired_hook.clone() else {
            tracing::debug!("no desired_hook: leaving the other desired properties alone");
            return Ok(());
        };
        if self.desired.hook.is_empty() {
            let rest = split.rest;
            self.desired
                .hook
                .spawn(async move { (version, desired::run_hook(&hook, rest, version).await) });
        } else {
            self.desired.next = Some((split.rest, version));
        }
        Ok(())
    }

    /// The hook ended: report what it applied (or why it could not), start the next one.
    async fn hook_done(
        &mut self,
        version: u64,
        outcome: Result<Value, String>,
    ) -> Result<(), RunError> {
        let hook_error = "/hook";
        match outcome {
            Ok(reported) => {
                tracing::info!(version, "the desired_hook applied the desired state");
                let mut patch = match reported {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                patch.insert(desired::ERRORS_KEY.to_owned(), json!({ hook_error: null }));
                self.report(Value::Object(patch)).await?;
            }
            Err(message) => {
                tracing::warn!(version, message, "the desired_hook failed");
                self.report(json!({ desired::ERRORS_KEY: { hook_error: message } })).await?;
                // Tried again with the next delta or connection.
                self.desired.version = None;
            }
        }
        if let Some((rest, version)) = self.desired.next.take()
            && let Some(hook) = self.settings.desired_hook.clone()
        {
            self.desired
                .hook
                .spawn(async move { (version, desired::run_hook(&hook, rest, version).await) });
        }
        Ok(())
    }

    /// Publishes a merge patch of the reported state (its answer is only logged).
    async fn report(&mut self, reported: Value) -> Result<(), RunError> {
        self.desired.requests += 1;
        let id = format!("agent-report-{}", self.desired.requests);
        twin::report_without_waiting(self.device, reported, &id)
            .await
            .map_err(|_| RunError::Other(anyhow::anyhow!("the device task stopped")))
    }

    async fn wait_stats(&self, condition: impl FnMut(&Stats) -> bool) -> Result<Stats, RunError> {
        wait_for(self.device, condition).await
    }

    async fn send_facts(&mut self, reconnects: u64) -> Result<(), RunError> {
        self.facts_for = Some(reconnects);
        let facts = Value::Object(system::facts());
        tracing::debug!(%facts, "sending facts");
        self.publish(Channel::Facts, &facts).await
    }

    async fn send_heartbeat(&self, cpu: &mut CpuSampler) -> Result<(), RunError> {
        let mut health: Map<String, Value> = system::health(cpu, &self.settings.data_dir);
        let stats = self.device.stats();
        if let Ok(ts) = OffsetDateTime::now_utc().format(&Rfc3339) {
            health.insert("ts".to_owned(), json!(ts));
        }
        health.insert("reconnects".to_owned(), json!(stats.reconnects));
        health.insert("buffered".to_owned(), json!(stats.buffered));
        health.insert("dropped".to_owned(), json!(stats.dropped));
        self.publish(Channel::Heartbeat, &Value::Object(health)).await
    }

    async fn publish(&self, channel: Channel, payload: &Value) -> Result<(), RunError> {
        self.device
            .publish(channel, payload.to_string().into())
            .await
            .map_err(|_| RunError::Other(anyhow::anyhow!("the device task stopped")))
    }
}

fn twin_channel(subtopic: &str) -> Result<Channel, RunError> {
    Channel::subtopic(subtopic).map_err(|e| RunError::Other(anyhow::anyhow!("{e}")))
}

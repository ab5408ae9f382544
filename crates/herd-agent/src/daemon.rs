//! The agent's life: connect through the SDK, report facts after every connection, send a
//! heartbeat every interval, stop gracefully.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use device_agent::commands::{Answer, DeviceCommand, answer_command};
use device_agent::identity::{self, Rotate};
use device_agent::{
    AgentError, Channel, Device, DeviceConfig, DeviceHandle, Inbox, OfflineJournal, Protocol,
    Stats, TlsOptions, Transport,
};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::renewal::Renewer;
use crate::settings::{Scheme, Settings};

/// Messages from Herd waiting for the agent: answers to renewals and requests to renew.
const INBOX_CAPACITY: std::num::NonZeroUsize = std::num::NonZeroUsize::new(16).expect("not zero");
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
    let agent = Agent {
        device: &device,
        settings,
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
    settings: &'a Settings,
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
                    let renewer = Renewer { device: self.device, settings: self.settings };
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
                    }
                }
            }
        }
        tracing::info!("shutting down");
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
        let renewer = Renewer { device: self.device, settings: self.settings };
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

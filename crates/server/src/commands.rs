//! Direct commands over MQTT: delivering commands to devices, reading their answers, and the
//! sweep that expires and times out the commands nobody answered.
//!
//! | topic | who publishes | payload |
//! | --- | --- | --- |
//! | `devices/{id}/commands/{command id}` | Herd (QoS 1, never retained) | `{"id", "name", "payload", "timeout_secs", "expires_at"?}`; MQTT 5 also gets Response Topic `…/{command id}/result` and Correlation Data = the id's bytes |
//! | `devices/{id}/commands/{command id}/result` | the device | `{"status": "succeeded" \| "failed" \| "rejected", "result"?: any, "code"?: "…", "message"?: "…"}` |
//! | `devices/{id}/commands/pending/get` | the device (any payload) | Herd sends every pending command again, in order |
//!
//! Herd publishes a command when it is created for a connected device, and on every arrival of
//! the device (`gateway::DeviceArrivals`) and every `pending/get` it sends all the device's pending
//! commands in order (`queued` ones whose window is open, and `delivered` ones not answered yet:
//! a device deduplicates by id). A command is recorded `delivered` when it is handed to the
//! broker for the device's session. Commands past their window are never sent; the sweep (every
//! `commands.sweep_interval_secs`) makes them `expired`, and makes delivered ones past their
//! timeout `timed_out`, waking the requests waiting for them, as answers do. Answers that are not
//! allowed from the command's state (late, duplicate) change nothing.
//!
//! Everything runs on one task, fed by in-process broker subscriptions (each holds
//! `BrokerConfig::internal_subscription_capacity` messages; the broker drops and counts the rest
//! while it is full: a device asks again with `pending/get`, a lost answer ends as `timed_out`) and
//! by the bounded arrivals broadcast.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use domain::{Command, CommandError, CommandId, CommandOutcome, CommandState, DeviceId, Timestamp};
use http_api::{CommandDispatcher, CommandLimits, CommandWaiters, DispatchError};
use mqtt_broker::{BrokerError, BrokerHandle, Message};
use mqtt_codec::{QoS, TopicFilter, TopicName};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{CommandProgress, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::CommandsConfig;
use crate::gateway::ArrivalListener;

/// Where devices answer commands.
pub const RESULT_FILTER: &str = "devices/+/commands/+/result";

/// Where devices ask for their pending commands.
pub const PENDING_FILTER: &str = "devices/+/commands/pending/get";

/// Most pending commands sent to a device at once (the rest follow on its next `pending/get`).
const MAX_PENDING_SENT: u32 = 100;

/// Most commands one sweep transaction ends.
const SWEEP_BATCH: u32 = 1000;

/// Most ended commands one retention pass deletes.
const PRUNE_BATCH: u32 = 10_000;

/// How often the retention bound is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The server's side of commands, lent to the REST API as its [`CommandDispatcher`].
pub struct MqttCommands {
    store: Arc<dyn Store>,
    broker: BrokerHandle,
    limits: CommandLimits,
    waiters: Arc<CommandWaiters>,
}

impl std::fmt::Debug for MqttCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttCommands").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl MqttCommands {
    /// Commands over `broker`, stored in `store`, with the limits of `config`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, broker: BrokerHandle, config: &CommandsConfig) -> Self {
        Self {
            store,
            broker,
            limits: config.limits.clone(),
            waiters: CommandWaiters::new(config.max_sync_waits),
        }
    }

    /// Publishes `command` to its device without recording anything.
    async fn publish(&self, command: &Command) -> Result<(), BrokerError> {
        let base = format!("devices/{}/commands/{}", command.device_id, command.id);
        let (Ok(topic), Ok(response_topic)) =
            (TopicName::new(base.clone()), TopicName::new(format!("{base}/result")))
        else {
            // Device and command ids are valid topic levels; nothing to send otherwise.
            return Ok(());
        };
        let mut body = json!({
            "id": command.id.as_str(),
            "name": command.name.as_str(),
            "payload": command.payload,
            "timeout_secs": command.timeout_secs,
        });
        if let Some(expires_at) = command.expires_at {
            body["expires_at"] = Value::String(expires_at.to_rfc3339());
        }
        let mut message = Message::new(topic, body.to_string());
        message.qos = QoS::AtLeastOnce;
        message.properties.response_topic = Some(response_topic);
        message.properties.correlation_data =
            Some(Bytes::copy_from_slice(command.id.as_str().as_bytes()));
        message.properties.content_type = mqtt_codec::MqttString::new("application/json").ok();
        self.broker.publish(message).await
    }

    /// Publishes `command` and records it delivered (a delivered one is only published again).
    async fn send(&self, command: &Command) -> Result<Command, DispatchError> {
        self.publish(command).await.map_err(|_| DispatchError::Unavailable)?;
        metrics::counter!("commands_sent_total").increment(1);
        if command.state != CommandState::Queued {
            return Ok(command.clone());
        }
        let update = self
            .store
            .advance_command(
                &command.device_id,
                &command.id,
                &CommandProgress::Delivered,
                Timestamp::now(),
            )
            .await?;
        // It may have ended meanwhile (an early answer, a cancel): wake whoever waits.
        self.waiters.notify(&update.command);
        Ok(update.command)
    }

    /// Sends every pending command of `device`, in order.
    async fn send_pending(&self, device: &DeviceId) {
        let pending = match self
            .store
            .pending_commands(
                device,
                Timestamp::now(),
                std::num::NonZeroU32::new(MAX_PENDING_SENT).unwrap_or(std::num::NonZeroU32::MIN),
            )
            .await
        {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%device, error = %error, "cannot read pending commands");
                return;
            }
        };
        for command in &pending {
            if let Err(error) = self.send(command).await {
                tracing::debug!(%device, error = %error, "pending command not sent");
                return;
            }
        }
    }

    /// Records a device's answer from a `…/result` message.
    async fn answer(&self, message: &Message) {
        let mut levels = message.topic.as_str().split('/');
        let (Some(device), Some(id)) = (levels.nth(1), levels.nth(1)) else { return };
        let (Ok(device), Ok(id)) = (DeviceId::new(device), CommandId::new(id)) else {
            metrics::counter!("command_answers_rejected_total", "reason" => "bad_topic")
                .increment(1);
            return;
        };
        let outcome = match parse_answer(&message.payload, self.limits.max_result_bytes) {
            Ok(outcome) => outcome,
            Err(reason) => {
                metrics::counter!("command_answers_rejected_total", "reason" => reason)
                    .increment(1);
                tracing::info!(%device, command_id = %id, reason, "command answer ignored");
                return;
            }
        };
        match self
            .store
            .advance_command(&device, &id, &CommandProgress::Answered(outcome), Timestamp::now())
            .await
        {
            Ok(update) if update.changed => self.waiters.notify(&update.command),
            Ok(update) => {
                tracing::debug!(
                    %device,
                    command_id = %id,
                    state = update.command.state.as_str(),
                    "late or repeated command answer ignored"
                );
            }
            Err(store::StoreError::NotFound { .. }) => {
                metrics::counter!("command_answers_rejected_total", "reason" => "unknown_command")
                    .increment(1);
            }
            Err(error) => {
                tracing::warn!(%device, command_id = %id, error = %error, "cannot record a command answer")
            }
        }
    }

    /// Ends overdue commands and wakes their waiters.
    async fn sweep(&self) {
        loop {
            let limit = std::num::NonZeroU32::new(SWEEP_BATCH).unwrap_or(std::num::NonZeroU32::MIN);
            match self.store.expire_commands(Timestamp::now(), limit).await {
                Ok(ended) => {
                    for command in &ended {
                        self.waiters.notify(command);
                    }
                    if ended.len() < SWEEP_BATCH as usize {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot expire commands");
                    return;
                }
            }
        }
    }

    /// Deletes commands that ended more than `retention` ago.
    async fn prune(&self, retention: Duration) {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let before = Timestamp::from_millis(Timestamp::now().millis().saturating_sub(retention_ms));
        let limit = std::num::NonZeroU32::new(PRUNE_BATCH).unwrap_or(std::num::NonZeroU32::MIN);
        match self.store.prune_commands(before, limit).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted ended commands past their retention"),
            Err(error) => tracing::warn!(error = %error, "cannot delete old commands"),
        }
    }
}

#[async_trait]
impl CommandDispatcher for MqttCommands {
    fn limits(&self) -> &CommandLimits {
        &self.limits
    }

    fn waiters(&self) -> &Arc<CommandWaiters> {
        &self.waiters
    }

    async fn is_online(&self, device: &DeviceId) -> Result<bool, DispatchError> {
        Ok(self.store.presence(device).await?.is_some_and(|p| p.connected))
    }

    async fn deliver(&self, command: &Command) -> Result<Command, DispatchError> {
        self.send(command).await
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Longest `code` and `message` of an answer kept, in characters.
const MAX_ERROR_CHARS: usize = 1024;

/// A device's answer, or why it is ignored.
fn parse_answer(payload: &[u8], max_result_bytes: usize) -> Result<CommandOutcome, &'static str> {
    // The result's own limit plus room for the other members.
    if payload.len() > max_result_bytes.saturating_add(2 * MAX_ERROR_CHARS + 256) {
        return Err("too_large");
    }
    let answer: Answer = serde_json::from_slice(payload).map_err(|_| "malformed")?;
    let state = match answer.status.as_str() {
        "succeeded" => CommandState::Succeeded,
        "failed" => CommandState::Failed,
        "rejected" => CommandState::Rejected,
        _ => return Err("bad_status"),
    };
    if let Some(result) = &answer.result
        && domain::command::check_json_size("result", result, max_result_bytes).is_err()
    {
        return Err("too_large");
    }
    let clip = |s: String| s.chars().take(MAX_ERROR_CHARS).collect::<String>();
    let error = (state != CommandState::Succeeded).then(|| CommandError {
        code: clip(answer.code.unwrap_or_else(|| answer.status.clone())),
        message: clip(answer.message.unwrap_or_default()),
    });
    Ok(CommandOutcome { state, result: answer.result, error })
}

/// The broker subscriptions the command task reads.
#[derive(Debug)]
pub struct CommandFeeds {
    results: mpsc::Receiver<Arc<Message>>,
    pending: mpsc::Receiver<Arc<Message>>,
}

impl CommandFeeds {
    /// Subscribes to answers and pending requests; messages published before are not seen.
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn subscribe(broker: &BrokerHandle) -> Result<Self, BrokerError> {
        let filter = |f: &str| TopicFilter::new(f).expect("the filter constants are valid");
        Ok(Self {
            results: broker.subscribe(filter(RESULT_FILTER)).await?,
            pending: broker.subscribe(filter(PENDING_FILTER)).await?,
        })
    }
}

/// Runs commands' MQTT side until `stop` is cancelled or the broker stops: answers, pending
/// requests, arrivals, the sweep and the retention bound.
pub async fn serve_commands(
    mut feeds: CommandFeeds,
    mut arrivals: ArrivalListener,
    commands: Arc<MqttCommands>,
    sweep_interval: Duration,
    retention: Duration,
    stop: CancellationToken,
) {
    let mut sweep = tokio::time::interval(sweep_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut results_open, mut pending_open, mut arrivals_open) = (true, true, true);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            m = feeds.results.recv(), if results_open => match m {
                Some(m) => commands.answer(&m).await,
                None => results_open = false,
            },
            m = feeds.pending.recv(), if pending_open => match m {
                Some(m) => {
                    let device = m.topic.as_str().split('/').nth(1).and_then(|d| DeviceId::new(d).ok());
                    if let Some(device) = device {
                        commands.send_pending(&device).await;
                    }
                }
                None => pending_open = false,
            },
            d = arrivals.next(), if arrivals_open => match d {
                Some(device) => commands.send_pending(&device).await,
                None => arrivals_open = false,
            },
            _ = sweep.tick() => commands.sweep().await,
            _ = prune.tick() => commands.prune(retention).await,
        }
        if !results_open && !pending_open {
            break;
        }
    }
    tracing::debug!("command service stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let ok = parse_answer(br#"{"status":"succeeded","result":{"up":1}}"#, 100).unwrap();
        assert_eq!(ok.state, CommandState::Succeeded);
        assert_eq!(ok.result, Some(json!({"up": 1})));
        assert_eq!(ok.error, None);
        let failed = parse_answer(br#"{"status":"failed","message":"disk full"}"#, 100).unwrap();
        assert_eq!(
            failed.error,
            Some(CommandError { code: "failed".to_owned(), message: "disk full".to_owned() })
        );
        assert_eq!(parse_answer(b"{", 100).unwrap_err(), "malformed");
        assert_eq!(parse_answer(br#"{"status":"done"}"#, 100).unwrap_err(), "bad_status");
        let big = format!(r#"{{"status":"succeeded","result":"{}"}}"#, "x".repeat(200));
        assert_eq!(parse_answer(big.as_bytes(), 100).unwrap_err(), "too_large");
    }
}

//! Direct commands on the device side (`devices/{id}/commands/…`, see `docs/device-protocol.md`,
//! *Direct commands*): receive typed commands, answer them, and ask for the pending ones after
//! every connection.
//!
//! Subscribe to [`COMMANDS_SUBSCRIPTION`] (put it in [`DeviceConfig::subscriptions`] and start the
//! device with [`Device::spawn_with_inbox`]), then read commands through [`Commands`], which asks
//! Herd for the pending commands once each connection is subscribed (a device on a clean session
//! would otherwise miss those sent before it subscribed), skips commands it already handed out
//! (Herd may send one again: on reconnection, on `pending/get`), and passes other messages of the
//! inbox through. Answer each with [`Commands::answer`].
//!
//! ```no_run
//! use std::num::NonZeroUsize;
//! use device_agent::commands::{Answer, Commands, COMMANDS_SUBSCRIPTION, Received};
//! use device_agent::{Device, DeviceConfig};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = DeviceConfig::new("herd.example.com", 1883, "pump-7", "hdc_0123…");
//! config.subscriptions.push(COMMANDS_SUBSCRIPTION.to_owned());
//! let (handle, inbox, _task) = Device::spawn_with_inbox(config, NonZeroUsize::new(64).unwrap())?;
//! let mut commands = Commands::new(handle, inbox);
//! while let Some(received) = commands.next().await {
//!     let Received::Command(command) = received else { continue };
//!     let answer = match command.name.as_str() {
//!         "ping" => Answer::succeeded(command.payload.clone()),
//!         _ => Answer::rejected("unknown_command", format!("no handler for {}", command.name)),
//!     };
//!     commands.answer(&command, &answer).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`DeviceConfig::subscriptions`]: crate::DeviceConfig::subscriptions
//! [`Device::spawn_with_inbox`]: crate::Device::spawn_with_inbox

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::device::{DeviceHandle, Inbox};
use crate::error::Stopped;
use crate::message::{Channel, Incoming};

/// The subscription (below `devices/{id}/`) that receives commands.
pub const COMMANDS_SUBSCRIPTION: &str = "commands/+";

/// Where a device asks for its pending commands, below `devices/{id}/`.
pub const PENDING_SUBTOPIC: &str = "commands/pending/get";

/// How many command ids [`Commands`] remembers to skip repeats.
pub const REMEMBERED_IDS: usize = 256;

/// A command Herd sent.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCommand {
    /// Its id (`cmd_…`): answer with it.
    pub id: String,
    /// What to do.
    pub name: String,
    /// Arguments (`null` when none).
    pub payload: Value,
    /// Seconds Herd waits for the answer.
    pub timeout_secs: u32,
    /// The end of its delivery window (RFC 3339), when it had one.
    pub expires_at: Option<String>,
}

impl DeviceCommand {
    /// The command in `incoming`: `None` when the message is not on a command topic
    /// (`devices/{id}/commands/{command id}`), `Some(Err(reason))` when it is but does not parse.
    #[must_use]
    pub fn parse(incoming: &Incoming) -> Option<Result<Self, String>> {
        let id = incoming.subtopic().strip_prefix("commands/")?;
        if id.contains('/') || id == "pending" {
            return None;
        }
        let parsed = serde_json::from_slice::<Value>(&incoming.payload)
            .map_err(|e| format!("the command is not JSON: {e}"))
            .and_then(|v| {
                let name = v.get("name").and_then(Value::as_str).ok_or("no name")?.to_owned();
                let timeout_secs = v
                    .get("timeout_secs")
                    .and_then(Value::as_u64)
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(30);
                Ok(Self {
                    id: id.to_owned(),
                    name,
                    payload: v.get("payload").cloned().unwrap_or(Value::Null),
                    timeout_secs,
                    expires_at: v.get("expires_at").and_then(Value::as_str).map(str::to_owned),
                })
            });
        Some(parsed)
    }
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `succeeded`, `failed` or `rejected`.
    pub status: &'static str,
    /// What to return.
    pub result: Option<Value>,
    /// A short code for a failure or refusal.
    pub code: Option<String>,
    /// Words for people.
    pub message: Option<String>,
}

impl Answer {
    /// Done, with an optional result (`null` is sent as no result).
    #[must_use]
    pub fn succeeded(result: Value) -> Self {
        Self {
            status: "succeeded",
            result: (!result.is_null()).then_some(result),
            code: None,
            message: None,
        }
    }

    /// Tried and went wrong.
    #[must_use]
    pub fn failed(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: "failed",
            result: None,
            code: Some(code.into()),
            message: Some(message.into()),
        }
    }

    /// Not carried out (unknown name, bad payload, not now).
    #[must_use]
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: "rejected",
            result: None,
            code: Some(code.into()),
            message: Some(message.into()),
        }
    }

    /// The answer's JSON payload.
    #[must_use]
    pub fn to_payload(&self) -> Bytes {
        let mut v = json!({ "status": self.status });
        if let Some(result) = &self.result {
            v["result"] = result.clone();
        }
        if let Some(code) = &self.code {
            v["code"] = Value::String(code.clone());
        }
        if let Some(message) = &self.message {
            v["message"] = Value::String(message.clone());
        }
        Bytes::from(v.to_string())
    }
}

/// What [`Commands::next`] hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A command not handed out before.
    Command(DeviceCommand),
    /// A message on a command topic that does not parse (it is answered `rejected` by nobody:
    /// log it).
    Malformed {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// Any other message of the inbox.
    Other(Incoming),
}

/// Commands of one device: see the module documentation.
#[derive(Debug)]
pub struct Commands {
    handle: DeviceHandle,
    inbox: Inbox,
    /// The connection (`Stats::reconnects`) pending commands were last asked for on.
    asked_on: Option<u64>,
    seen: VecDeque<String>,
}

impl Commands {
    /// Commands through `handle`, reading `inbox` (which must include [`COMMANDS_SUBSCRIPTION`]).
    #[must_use]
    pub fn new(handle: DeviceHandle, inbox: Inbox) -> Self {
        Self { handle, inbox, asked_on: None, seen: VecDeque::new() }
    }

    /// The device handle.
    #[must_use]
    pub fn handle(&self) -> &DeviceHandle {
        &self.handle
    }

    /// The next command (or other message); `None` once the device task has stopped. Asks for the
    /// pending commands whenever a new connection is subscribed.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message taken from the inbox is returned in the same poll.
    pub async fn next(&mut self) -> Option<Received> {
        loop {
            let asked_on = self.asked_on;
            let handle = self.handle.clone();
            tokio::select! {
                incoming = self.inbox.recv() => {
                    let incoming = incoming?;
                    match DeviceCommand::parse(&incoming) {
                        None => return Some(Received::Other(incoming)),
                        Some(Err(reason)) => {
                            return Some(Received::Malformed { topic: incoming.topic, reason });
                        }
                        Some(Ok(command)) => {
                            if self.seen.contains(&command.id) {
                                continue;
                            }
                            if self.seen.len() == REMEMBERED_IDS {
                                self.seen.pop_front();
                            }
                            self.seen.push_back(command.id.clone());
                            return Some(Received::Command(command));
                        }
                    }
                }
                stats = handle.wait_for_stats(|s| {
                    s.connected && s.subscribed && Some(s.reconnects) != asked_on
                }) => {
                    let stats = stats.ok()?;
                    self.asked_on = Some(stats.reconnects);
                    self.request_pending().await.ok()?;
                }
            }
        }
    }

    /// Asks Herd to send every pending command again.
    ///
    /// # Errors
    /// [`Stopped`] when the device task has ended.
    pub async fn request_pending(&self) -> Result<(), Stopped> {
        let channel = Channel::subtopic(PENDING_SUBTOPIC).map_err(|_| Stopped)?;
        self.handle.publish(channel, Bytes::new()).await
    }

    /// Sends `answer` to `command` (QoS 1, buffered while offline).
    ///
    /// # Errors
    /// [`Stopped`] when the device task has ended.
    pub async fn answer(&self, command: &DeviceCommand, answer: &Answer) -> Result<(), Stopped> {
        answer_command(&self.handle, &command.id, answer).await
    }
}

/// Sends `answer` to the command `command_id` through `handle`.
///
/// # Errors
/// [`Stopped`] when the device task has ended (or the id cannot be a topic level).
pub async fn answer_command(
    handle: &DeviceHandle,
    command_id: &str,
    answer: &Answer,
) -> Result<(), Stopped> {
    let channel =
        Channel::subtopic(format!("commands/{command_id}/result")).map_err(|_| Stopped)?;
    handle.publish(channel, answer.to_payload()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(topic: &str, payload: &str) -> Incoming {
        Incoming {
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_owned()),
            response_topic: None,
            correlation_data: None,
        }
    }

    #[test]
    fn commands_parse_from_their_topic() {
        let c = DeviceCommand::parse(&incoming(
            "devices/d/commands/cmd_1",
            r#"{"id":"cmd_1","name":"ping","payload":{"a":1},"timeout_secs":5}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.id, "cmd_1");
        assert_eq!(c.payload, json!({"a": 1}));
        assert_eq!(c.timeout_secs, 5);
        assert!(DeviceCommand::parse(&incoming("devices/d/identity/rotate", "{}")).is_none());
        assert!(DeviceCommand::parse(&incoming("devices/d/commands/cmd_1/result", "{}")).is_none());
        assert!(
            DeviceCommand::parse(&incoming("devices/d/commands/cmd_2", "nope")).unwrap().is_err()
        );
    }

    #[test]
    fn answers_serialize() {
        let a: Value =
            serde_json::from_slice(&Answer::succeeded(json!({"x": 1})).to_payload()).unwrap();
        assert_eq!(a, json!({"status": "succeeded", "result": {"x": 1}}));
        let a: Value =
            serde_json::from_slice(&Answer::rejected("unknown_command", "no").to_payload())
                .unwrap();
        assert_eq!(a, json!({"status": "rejected", "code": "unknown_command", "message": "no"}));
    }
}

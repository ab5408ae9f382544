//! Direct commands (RPC): an operator asks one device to do something now (`reboot`, `ping`, …)
//! and the device answers with a result.
//!
//! A [`Command`] is queued for its device, delivered over MQTT when the device is online (at once,
//! or when it comes back within its delivery window, `expires_at`), and ends in one of the
//! terminal states of [`CommandState`]. [`CommandState::check_transition`] is the one place the
//! state rules live; stores apply it with an expected-state check, so a late result can never
//! overwrite `timed_out` or `canceled`.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::{DeviceId, InvalidInput, Timestamp};

/// A command's name: 1 to 64 characters of `[A-Za-z0-9_.-]` (`reboot`, `config.reload`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandName(String);

impl CommandName {
    /// Longest name, in characters.
    pub const MAX_LEN: usize = 64;

    /// Validates a command name.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is empty, longer than 64 characters or holds other characters
    /// than ASCII letters, digits, `_`, `.` and `-`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        let ok = (1..=Self::MAX_LEN).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(name))
        } else {
            Err(InvalidInput::new(
                "command name",
                format!("{name:?} is not a command name: use 1 to 64 characters of [A-Za-z0-9_.-]"),
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A command's id: `cmd_`, 12 hex digits of its creation time in milliseconds and 8 random hex
/// digits, so ids sort by creation time (ties in one millisecond: at random).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(String);

impl CommandId {
    /// Validates a command id.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is not `cmd_` followed by 20 lowercase hex digits.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = id.into();
        let ok = id.strip_prefix("cmd_").is_some_and(|h| {
            h.len() == 20 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(id))
        } else {
            Err(InvalidInput::new("command id", format!("{id:?} is not a command id")))
        }
    }

    /// Builds the id of a command created at `at` from 4 random bytes.
    pub fn generate(at: Timestamp, random: [u8; 4]) -> Self {
        // 48 bits of milliseconds last until the year 10889; earlier instants clamp to zero.
        let millis = u64::try_from(at.millis()).unwrap_or(0) & 0xffff_ffff_ffff;
        Self(format!("cmd_{millis:012x}{}", hex::encode(random)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen key that makes creating a command idempotent: 1 to 128 printable ASCII
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest key, in characters.
    pub const MAX_LEN: usize = 128;

    /// Validates a key.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is empty, too long, or not printable ASCII.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidInput> {
        let key = key.into();
        let ok = (1..=Self::MAX_LEN).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if ok {
            Ok(Self(key))
        } else {
            Err(InvalidInput::new(
                "idempotency key",
                "use 1 to 128 printable ASCII characters".to_owned(),
            ))
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandState {
    /// Stored, not yet handed to the device.
    Queued,
    /// Published to the device; Herd waits for its answer.
    Delivered,
    /// The device did it (terminal).
    Succeeded,
    /// The device tried and failed (terminal).
    Failed,
    /// The device refused it: unknown command, bad payload, not now (terminal).
    Rejected,
    /// The device did not answer within the command's timeout after delivery (terminal).
    TimedOut,
    /// The device was not reachable within the delivery window (terminal).
    Expired,
    /// An operator canceled it before it ended (terminal).
    Canceled,
}

/// An attempt to move a command between two states the rules do not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a command cannot go from {from} to {to}")]
pub struct IllegalCommandTransition {
    /// The current state.
    pub from: CommandState,
    /// The requested state.
    pub to: CommandState,
}

impl CommandState {
    /// Every state.
    pub const ALL: [Self; 8] = [
        Self::Queued,
        Self::Delivered,
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
        Self::TimedOut,
        Self::Expired,
        Self::Canceled,
    ];

    /// The state's name as used in the API, on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::TimedOut => "timed_out",
            Self::Expired => "expired",
            Self::Canceled => "canceled",
        }
    }

    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Delivered)
    }

    /// Whether the state is one of a device's answers (`succeeded`, `failed`, `rejected`).
    pub fn is_answer(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Rejected)
    }

    /// Checks a state change: `queued` may become `delivered`, `expired`, `canceled` or an
    /// answer (a result may arrive before the delivery was recorded); `delivered` may become an
    /// answer, `timed_out` or `canceled`; terminal states are final.
    ///
    /// # Errors
    /// [`IllegalCommandTransition`] for any other change, staying in the same state included.
    pub fn check_transition(self, to: Self) -> Result<(), IllegalCommandTransition> {
        let ok = match self {
            Self::Queued => {
                to.is_answer() || matches!(to, Self::Delivered | Self::Expired | Self::Canceled)
            }
            Self::Delivered => to.is_answer() || matches!(to, Self::TimedOut | Self::Canceled),
            _ => false,
        };
        if ok { Ok(()) } else { Err(IllegalCommandTransition { from: self, to }) }
    }
}

impl fmt::Display for CommandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandState {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "command state",
                format!(
                    "{s:?} is not a command state (one of {})",
                    Self::ALL.map(Self::as_str).join(", ")
                ),
            )
        })
    }
}

/// Why a command did not succeed: a stable code and a message, from the device or from Herd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// A short machine-readable code (`failed`, `unknown_command`, `timed_out`, …).
    pub code: String,
    /// Words for people.
    pub message: String,
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// `succeeded`, `failed` or `rejected`.
    pub state: CommandState,
    /// What the device returned, if anything.
    pub result: Option<Value>,
    /// Why it failed or was rejected.
    pub error: Option<CommandError>,
}

/// A command as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Its id.
    pub id: CommandId,
    /// The device it is for.
    pub device_id: DeviceId,
    /// What to do.
    pub name: CommandName,
    /// Arguments (any JSON value, `null` when none).
    pub payload: Value,
    /// Where it is in its life.
    pub state: CommandState,
    /// When it was created.
    pub created_at: Timestamp,
    /// Who created it (the actor's display form).
    pub created_by: String,
    /// How long the device has to answer once delivered, in seconds.
    pub timeout_secs: u32,
    /// The end of its delivery window (from `ttl_secs`); `None`: deliver at once or never (a
    /// command not delivered within its timeout then expires).
    pub expires_at: Option<Timestamp>,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
    /// When it ended.
    pub completed_at: Option<Timestamp>,
    /// What the device returned.
    pub result: Option<Value>,
    /// Why it did not succeed.
    pub error: Option<CommandError>,
    /// The key it was created with.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Its position among its device's commands, from 1: the delivery order.
    pub seq: u64,
}

impl Command {
    /// The last instant a queued command may be delivered: its `expires_at`, or `created_at`
    /// plus its timeout without one.
    pub fn deliver_by(&self) -> Timestamp {
        deliver_by(self.created_at, self.expires_at, self.timeout_secs)
    }

    /// When a delivered command times out.
    pub fn answer_by(&self) -> Option<Timestamp> {
        self.delivered_at.map(|at| add_secs(at, self.timeout_secs))
    }

    /// What the audit log keeps of a command: never its payload nor result (they may hold
    /// anything), only what identifies it and its state.
    pub fn audit_summary(&self) -> Value {
        serde_json::json!({
            "id": self.id.as_str(),
            "name": self.name.as_str(),
            "state": self.state.as_str(),
            "timeout_secs": self.timeout_secs,
            "expires_at": self.expires_at.map(Timestamp::to_rfc3339),
            "idempotency_key": self.idempotency_key.as_ref().map(IdempotencyKey::as_str),
        })
    }
}

/// What it takes to create a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// Its id (see [`CommandId::generate`]).
    pub id: CommandId,
    /// The device it is for.
    pub device_id: DeviceId,
    /// What to do.
    pub name: CommandName,
    /// Arguments.
    pub payload: Value,
    /// How long the device has to answer once delivered, in seconds.
    pub timeout_secs: u32,
    /// The end of its delivery window.
    pub expires_at: Option<Timestamp>,
    /// The key that makes creation idempotent.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl NewCommand {
    /// Whether `existing` was created from the same request (same name and payload): what an
    /// idempotent retry must match.
    pub fn same_request(&self, existing: &Command) -> bool {
        self.name == existing.name && self.payload == existing.payload
    }
}

/// The last instant a queued command may be delivered (see [`Command::deliver_by`]).
pub fn deliver_by(
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
    timeout_secs: u32,
) -> Timestamp {
    expires_at.unwrap_or_else(|| add_secs(created_at, timeout_secs))
}

/// `at` plus `secs` seconds.
pub fn add_secs(at: Timestamp, secs: u32) -> Timestamp {
    Timestamp::from_millis(at.millis().saturating_add(i64::from(secs) * 1000))
}

/// Checks that `value` is at most `max_bytes` long as compact JSON.
///
/// # Errors
/// [`InvalidInput`] for `field` when it is longer.
pub fn check_json_size(
    field: &'static str,
    value: &Value,
    max_bytes: usize,
) -> Result<(), InvalidInput> {
    let len = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if len > max_bytes {
        return Err(InvalidInput::new(
            field,
            format!("it is {len} bytes of JSON, more than the limit of {max_bytes}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_are_validated() {
        assert!(CommandName::new("config.reload-now_2").is_ok());
        for bad in ["", "a b", "ü", &"x".repeat(65)] {
            assert!(CommandName::new(bad).is_err(), "{bad:?}");
        }
        let id = CommandId::generate(Timestamp::from_millis(0x0123_4567_89ab), [1, 2, 3, 0xff]);
        assert_eq!(id.as_str(), "cmd_0123456789ab010203ff");
        assert_eq!(CommandId::new(id.as_str()).unwrap(), id);
        assert!(CommandId::new("cmd_0123").is_err());
        assert!(CommandId::new("cmd_0123456789AB010203ff").is_err());
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let a = CommandId::generate(Timestamp::from_millis(1_780_000_000_000), [0xff; 4]);
        let b = CommandId::generate(Timestamp::from_millis(1_780_000_000_001), [0; 4]);
        assert!(a < b);
    }

    #[test]
    fn transition_matrix() {
        use CommandState::{
            Canceled, Delivered, Expired, Failed, Queued, Rejected, Succeeded, TimedOut,
        };
        let allowed = [
            (Queued, Delivered),
            (Queued, Expired),
            (Queued, Canceled),
            (Queued, Succeeded),
            (Queued, Failed),
            (Queued, Rejected),
            (Delivered, Succeeded),
            (Delivered, Failed),
            (Delivered, Rejected),
            (Delivered, TimedOut),
            (Delivered, Canceled),
        ];
        for from in CommandState::ALL {
            for to in CommandState::ALL {
                let ok = from.check_transition(to).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn states_parse_back() {
        for s in CommandState::ALL {
            assert_eq!(s.as_str().parse::<CommandState>().unwrap(), s);
        }
        assert!("done".parse::<CommandState>().is_err());
    }

    #[test]
    fn json_size_is_checked() {
        assert!(check_json_size("payload", &serde_json::json!({"a": 1}), 7).is_ok());
        assert!(check_json_size("payload", &serde_json::json!({"a": 1}), 6).is_err());
    }
}

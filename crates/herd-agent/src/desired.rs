//! Desired state (`devices/{id}/twin/…`, see `docs/device-protocol.md`, *Device twin*): the agent
//! applies the `agent` object of its desired state itself, hands the rest to an optional hook
//! executable, and reports what it applied, so the twin converges.
//!
//! Settings the agent applies (under `agent` in the desired state; they override the
//! configuration file and are kept in `data_dir/desired-agent.json` across restarts):
//!
//! | key                        | meaning                                        | range        |
//! |----------------------------|------------------------------------------------|--------------|
//! | `heartbeat_interval_secs`  | seconds between heartbeats                     | 1 – 86 400   |
//! | `renew_before_days`        | days before its certificate ends it renews it  | 1 – 3 650    |
//!
//! The agent reports the values it runs with (`reported.agent`) on every connection, so a device
//! restarted with other values shows up as pending and gets the desired ones again. A value it
//! cannot apply (unknown key, wrong type, out of range) is left as it is and explained under
//! `reported.agent_errors` (JSON Pointer → message; `null` once fixed).
//!
//! Everything else goes to the hook, when one is configured:
//!
//! ```toml
//! [desired_hook]
//! program = "/usr/local/lib/herd/apply-config"   # absolute path
//! args = []                                        # optional
//! timeout_secs = 60                                # optional, default 60
//! ```
//!
//! The hook gets `{"delta": {...}, "version": n}` as JSON on standard input (only the properties
//! that differ from what was reported, without `agent`), and runs like a command handler
//! ([`crate::commands`], with `HERD_COMMAND_NAME=desired`). Exit status 0: what it printed, a JSON
//! object, is reported (nothing printed: the delta is reported as applied). Any other exit status
//! or a timeout: nothing is reported for those properties (they stay pending) and the reason is
//! reported under `agent_errors["/hook"]`; the next delta or connection tries again. Without a hook
//! the agent leaves other properties alone: another process on the device may own them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use device_agent::commands::{Answer, DeviceCommand};
use serde_json::{Map, Value, json};

use crate::commands::Handler;
use crate::settings::Settings;

/// The key of the agent's own settings in the desired and reported documents.
pub const AGENT_KEY: &str = "agent";
/// Where refusals are reported.
pub const ERRORS_KEY: &str = "agent_errors";
/// The file in the data directory that keeps the applied agent settings.
pub const STATE_FILE: &str = "desired-agent.json";

/// The agent settings desired state can change, as the agent runs with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Between heartbeats.
    pub heartbeat_interval: Duration,
    /// How long before the client certificate ends it is renewed.
    pub renew_before: Duration,
}

impl Applied {
    /// The configuration file's values, overridden by what desired state set before (kept in the
    /// data directory). A state file that cannot be read is ignored with a warning.
    pub fn load(settings: &Settings) -> Self {
        let mut applied = Self {
            heartbeat_interval: settings.heartbeat_interval,
            renew_before: settings.renew_before,
        };
        let path = state_path(&settings.data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(saved)) => {
                    let _ = applied.apply(&saved);
                }
                _ => tracing::warn!(path = %path.display(), "ignoring an unreadable state file"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the state file")
            }
        }
        applied
    }

    /// Applies the `agent` part of a delta; returns the errors by JSON Pointer (an empty map
    /// when everything applied).
    pub fn apply(&mut self, agent: &Map<String, Value>) -> Map<String, Value> {
        let mut errors = Map::new();
        for (key, value) in agent {
            let pointer = format!("/{AGENT_KEY}/{key}");
            let result = match key.as_str() {
                "heartbeat_interval_secs" => {
                    seconds(value, 1, 86_400).map(|s| self.heartbeat_interval = s)
                }
                "renew_before_days" => seconds(value, 1, 3_650)
                    .map(|d| self.renew_before = Duration::from_secs(d.as_secs() * 86_400)),
                _ => Err("the agent has no such setting".to_owned()),
            };
            if let Err(message) = result {
                errors.insert(pointer, Value::String(message));
            }
        }
        errors
    }

    /// The values as reported (`reported.agent`).
    pub fn to_json(self) -> Value {
        json!({
            "heartbeat_interval_secs": self.heartbeat_interval.as_secs(),
            "renew_before_days": self.renew_before.as_secs() / 86_400,
        })
    }

    /// Keeps the values for the next start.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(self, data_dir: &Path) -> std::io::Result<()> {
        let path = state_path(data_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json().to_string())?;
        std::fs::rename(&tmp, &path)
    }
}

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

/// A whole number within `min..=max`, as a duration of that many seconds (days for the caller
/// to scale).
fn seconds(value: &Value, min: u64, max: u64) -> Result<Duration, String> {
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// A delta split into the agent's settings and the rest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    /// The `agent` object (empty when absent; a non-object `agent` is an error).
    pub agent: Map<String, Value>,
    /// Everything else.
    pub rest: Map<String, Value>,
    /// `/agent` when it is not an object.
    pub errors: Map<String, Value>,
}

/// Splits a delta.
pub fn split(mut delta: Map<String, Value>) -> Split {
    let mut out = Split::default();
    match delta.remove(AGENT_KEY) {
        Some(Value::Object(agent)) => out.agent = agent,
        Some(_) => {
            out.errors.insert(format!("/{AGENT_KEY}"), json!("must be an object"));
        }
        None => {}
    }
    delta.remove(ERRORS_KEY);
    out.rest = delta;
    out
}

/// Runs the hook on the non-agent part of a delta; returns the reported patch for those
/// properties, or why it failed.
///
/// # Errors
/// The hook's failure, as a message.
pub async fn run_hook(
    hook: &Handler,
    rest: Map<String, Value>,
    version: u64,
) -> Result<Value, String> {
    let command = DeviceCommand {
        id: format!("desired-{version}"),
        name: "desired".to_owned(),
        payload: json!({"delta": Value::Object(rest.clone()), "version": version}),
        timeout_secs: u32::try_from(hook.timeout.as_secs()).unwrap_or(u32::MAX),
        expires_at: None,
    };
    let answer: Answer = crate::commands::run(hook, &command).await;
    if answer.status != "succeeded" {
        return Err(answer.message.unwrap_or_else(|| "the hook failed".to_owned()));
    }
    match answer.result {
        Some(Value::Object(reported)) => Ok(Value::Object(reported)),
        Some(Value::Null) | None => Ok(Value::Object(rest)),
        Some(other) => Err(format!("the hook printed {other}, not a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        let Value::Object(m) = v else { panic!("object") };
        m
    }

    #[test]
    fn agent_settings_apply_or_explain() {
        let mut a = Applied {
            heartbeat_interval: Duration::from_secs(60),
            renew_before: Duration::from_secs(30 * 86_400),
        };
        let errors = a.apply(&object(json!({
            "heartbeat_interval_secs": 5,
            "renew_before_days": 0,
            "colour": "red",
        })));
        assert_eq!(a.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(a.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            ["/agent/colour", "/agent/renew_before_days"]
        );
        assert_eq!(a.to_json(), json!({"heartbeat_interval_secs": 5, "renew_before_days": 30}));
    }

    #[test]
    fn split_takes_the_agent_object_apart() {
        let s = split(object(json!({"agent": {"a": 1}, "app": {"b": 2}, "agent_errors": {}})));
        assert_eq!(s.agent, object(json!({"a": 1})));
        assert_eq!(s.rest, object(json!({"app": {"b": 2}})));
        let s = split(object(json!({"agent": 3})));
        assert!(s.errors.contains_key("/agent"));
    }

    #[test]
    fn applied_values_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Applied {
            heartbeat_interval: Duration::from_secs(7),
            renew_before: Duration::from_secs(2 * 86_400),
        };
        a.save(dir.path()).unwrap();
        let saved: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        let mut b = Applied {
            heartbeat_interval: Duration::from_secs(60),
            renew_before: Duration::from_secs(86_400),
        };
        assert!(b.apply(saved.as_object().unwrap()).is_empty());
        assert_eq!(a, b);
    }
}

//! Direct commands (`devices/{id}/commands/…`): the `[commands]` section maps command names to
//! executables, and [`execute`] runs one.
//!
//! ```toml
//! [commands.reboot]
//! program = "/usr/local/lib/herd/reboot"   # absolute path
//! args = ["--delay", "5"]                  # optional
//! timeout_secs = 30                         # optional, default 60
//! ```
//!
//! An executable gets the command's payload as JSON on standard input and runs with the agent's
//! user and environment plus `HERD_COMMAND_ID` and `HERD_COMMAND_NAME`. Exit status 0 means
//! `succeeded`, with its standard output as the result (JSON; other text becomes a JSON string;
//! nothing is no result); any other exit status means `failed` (code `exit_status`, the last line
//! of standard error as message). Past its timeout it is killed and the command `failed` with code
//! `timed_out`. The built-in `ping` (unless configured) answers with its payload. Any other name is
//! `rejected` with code `unknown_command`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::ensure;
use device_agent::commands::{Answer, DeviceCommand};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Default timeout of a handler, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// Most bytes of standard output kept as the result (more fails the command).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Most commands running at once; further ones are rejected with code `busy`.
pub const MAX_RUNNING: usize = 8;

/// One `[commands.<name>]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFile {
    /// The executable (absolute path).
    pub program: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Seconds before it is killed.
    pub timeout_secs: Option<u64>,
}

/// A validated handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// When it is killed.
    pub timeout: Duration,
}

/// Command handlers by command name.
pub type Handlers = BTreeMap<String, Handler>;

/// Validates the `[commands]` section.
///
/// # Errors
/// A relative program path or a zero timeout, naming the command.
pub fn handlers(file: BTreeMap<String, HandlerFile>) -> anyhow::Result<Handlers> {
    file.into_iter()
        .map(|(name, h)| Ok((name.clone(), handler(&format!("commands.{name}"), h)?)))
        .collect()
}

/// Validates one handler table; `section` names it in errors.
///
/// # Errors
/// A relative program path or a zero timeout.
pub fn handler(section: &str, h: HandlerFile) -> anyhow::Result<Handler> {
    ensure!(
        h.program.is_absolute(),
        "{section}.program must be an absolute path, got {}",
        h.program.display()
    );
    let timeout = h.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    ensure!(timeout > 0, "{section}.timeout_secs must be at least 1");
    Ok(Handler { program: h.program, args: h.args, timeout: Duration::from_secs(timeout) })
}

/// Runs `command` with its handler and returns the answer to send.
pub async fn execute(handlers: &Handlers, command: &DeviceCommand) -> Answer {
    match handlers.get(&command.name) {
        Some(handler) => run(handler, command).await,
        None if command.name == "ping" => Answer::succeeded(command.payload.clone()),
        None => Answer::rejected(
            "unknown_command",
            format!("this device has no handler for {:?}", command.name),
        ),
    }
}

/// Runs `handler` for `command`.
pub(crate) async fn run(handler: &Handler, command: &DeviceCommand) -> Answer {
    let mut child = match tokio::process::Command::new(&handler.program)
        .args(&handler.args)
        .env("HERD_COMMAND_ID", &command.id)
        .env("HERD_COMMAND_NAME", &command.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Answer::failed(
                "cannot_start",
                format!("cannot start {}: {e}", handler.program.display()),
            );
        }
    };
    let input = command.payload.to_string();
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Answer::failed("cannot_start", "the handler's pipes are missing");
    };
    let work = async {
        // A handler that does not read its input must not block us: write and close concurrently.
        let write = async move {
            let _ = stdin.write_all(input.as_bytes()).await;
            drop(stdin);
        };
        let read_out = async move {
            let mut out = Vec::new();
            let _ = stdout.take(MAX_OUTPUT_BYTES as u64 + 1).read_to_end(&mut out).await;
            out
        };
        let read_err = async move {
            let mut err = Vec::new();
            let _ = stderr.take(MAX_OUTPUT_BYTES as u64).read_to_end(&mut err).await;
            err
        };
        let ((), out, err) = tokio::join!(write, read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    let Ok((status, out, err)) = tokio::time::timeout(handler.timeout, work).await else {
        // Dropping the future dropped the child: `kill_on_drop` ends it.
        return Answer::failed(
            "timed_out",
            format!("the handler did not finish within {} s", handler.timeout.as_secs()),
        );
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => return Answer::failed("cannot_start", format!("waiting for the handler: {e}")),
    };
    if out.len() > MAX_OUTPUT_BYTES {
        return Answer::failed(
            "result_too_large",
            format!("the output is larger than {MAX_OUTPUT_BYTES} bytes"),
        );
    }
    if status.success() {
        let text = String::from_utf8_lossy(&out);
        let trimmed = text.trim();
        let result = if trimmed.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_owned()))
        };
        return Answer::succeeded(result);
    }
    let err = String::from_utf8_lossy(&err);
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
    let message = match status.code() {
        Some(code) => format!("exit status {code}: {last}"),
        None => format!("killed by a signal: {last}"),
    };
    Answer::failed("exit_status", message)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn command(name: &str, payload: Value) -> DeviceCommand {
        DeviceCommand {
            id: "cmd_1".to_owned(),
            name: name.to_owned(),
            payload,
            timeout_secs: 30,
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn ping_echoes_and_unknown_names_are_rejected() {
        let none = Handlers::new();
        assert_eq!(
            execute(&none, &command("ping", json!({"a": 1}))).await,
            Answer::succeeded(json!({"a": 1}))
        );
        let answer = execute(&none, &command("reboot", Value::Null)).await;
        assert_eq!((answer.status, answer.code.as_deref()), ("rejected", Some("unknown_command")));
    }

    /// A handler running `script` with `sh`.
    fn script(
        dir: &std::path::Path,
        name: &str,
        body: &str,
        timeout_secs: u64,
    ) -> (String, Handler) {
        let path = dir.join(format!("{name}.sh"));
        std::fs::write(&path, body).unwrap();
        let handler = Handler {
            program: PathBuf::from("/bin/sh"),
            args: vec![path.display().to_string()],
            timeout: Duration::from_secs(timeout_secs),
        };
        (name.to_owned(), handler)
    }

    #[tokio::test]
    async fn executables_answer_with_their_output_and_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let handlers = Handlers::from([
            script(
                dir.path(),
                "echo",
                "printf '{\"got\":%s,\"name\":\"%s\"}' \"$(cat)\" \"$HERD_COMMAND_NAME\"",
                10,
            ),
            script(dir.path(), "text", "echo plain words", 10),
            script(
                dir.path(),
                "broken",
                "cat >/dev/null; echo first >&2; echo disk full >&2; exit 3",
                10,
            ),
            script(dir.path(), "slow", "sleep 30", 1),
        ]);
        let answer = execute(&handlers, &command("echo", json!({"n": 1}))).await;
        assert_eq!(answer, Answer::succeeded(json!({"got": {"n": 1}, "name": "echo"})));
        let answer = execute(&handlers, &command("text", Value::Null)).await;
        assert_eq!(answer, Answer::succeeded(json!("plain words")));
        let answer = execute(&handlers, &command("broken", Value::Null)).await;
        assert_eq!(answer, Answer::failed("exit_status", "exit status 3: disk full"));
        let answer = execute(&handlers, &command("slow", Value::Null)).await;
        assert_eq!((answer.status, answer.code.as_deref()), ("failed", Some("timed_out")));
    }

    #[test]
    fn handlers_need_absolute_programs() {
        let file = BTreeMap::from([(
            "x".to_owned(),
            HandlerFile { program: PathBuf::from("bin/x"), args: vec![], timeout_secs: None },
        )]);
        assert!(handlers(file).is_err());
    }
}

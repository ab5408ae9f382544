//! `herd command …`: direct commands to one device (send, optionally waiting for the answer;
//! list; get; cancel).
//!
//! `send --wait` exits non-zero, with the state printed, when the command ends any other way than
//! `succeeded` (`failed`, `rejected`, `timed_out`, `expired`, `canceled`, or still pending when the
//! wait ended).

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value};

use crate::cli::client::{Client, encode};
use crate::cli::commands::{page_items, str_field};
use crate::cli::output::{self, Table};
use crate::cli::{ClientArgs, OutputFormat};

/// `herd command …`
#[derive(Debug, Subcommand)]
pub enum CommandCommand {
    /// Send a command to a device (operator).
    Send {
        /// Device id.
        device: String,
        /// Command name, e.g. reboot.
        name: String,
        /// Payload: JSON text, or @FILE to read it from a file.
        #[arg(long, value_name = "JSON|@FILE")]
        payload: Option<String>,
        /// Seconds the device has to answer once it got the command (server default: 30).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u32>,
        /// Seconds the command may wait for an offline device (default 0: the device must be
        /// connected).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u32>,
        /// Wait for the device's answer; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// Makes retries of this send return the first command (Idempotency-Key header).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a device's commands, newest first.
    List {
        /// Device id.
        device: String,
        /// Only commands in this state (queued, delivered, succeeded, failed, rejected,
        /// timed_out, expired, canceled).
        #[arg(long)]
        state: Option<String>,
        /// Most commands to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one command.
    Get {
        /// Device id.
        device: String,
        /// Command id.
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued or delivered command (operator).
    Cancel {
        /// Device id.
        device: String,
        /// Command id.
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs `herd command …`.
pub(super) async fn command(cmd: CommandCommand) -> anyhow::Result<()> {
    match cmd {
        CommandCommand::Send {
            device,
            name,
            payload,
            timeout,
            ttl,
            wait,
            idempotency_key,
            client,
        } => {
            let mut body = Map::new();
            body.insert("name".to_owned(), Value::String(name));
            if let Some(payload) = payload {
                body.insert("payload".to_owned(), read_payload(&payload)?);
            }
            if let Some(t) = timeout {
                body.insert("timeout_secs".to_owned(), t.into());
            }
            if let Some(t) = ttl {
                body.insert("ttl_secs".to_owned(), t.into());
            }
            if wait {
                body.insert("wait".to_owned(), Value::Bool(true));
            }
            let http = Client::new(&client)?;
            let mut req = http
                .request(Method::POST, &format!("/api/v1/devices/{}/commands", encode(&device)))?
                .json(&Value::Object(body));
            if let Some(key) = &idempotency_key {
                req = req.header(http_api::IDEMPOTENCY_KEY_HEADER, key);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| anyhow!("request to {} failed: {e}", client.server))?;
            let status = resp.status();
            let bytes = resp.bytes().await.context("failed to read the server's response")?;
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            // A synchronous wait that ended without an answer carries the command in its problem.
            let command = if status.is_success() || value.get("state").is_some() {
                value
            } else {
                return Err(problem_error(&value, status.as_u16()));
            };
            show(&client, &command)?;
            let state = str_field(&command, "state");
            if wait && state != "succeeded" {
                let detail = command
                    .get("error")
                    .map(|e| format!(": {} {}", str_field(e, "code"), str_field(e, "message")))
                    .unwrap_or_default();
                return Err(anyhow!("command {} ended {state}{detail}", str_field(&command, "id")));
            }
            Ok(())
        }
        CommandCommand::List { device, state, limit, client } => {
            let http = Client::new(&client)?;
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            while items.len() < limit as usize {
                let mut path = format!(
                    "/api/v1/devices/{}/commands?limit={}",
                    encode(&device),
                    (limit as usize - items.len()).min(1000)
                );
                if let Some(s) = &state {
                    path.push_str(&format!("&state={}", encode(s)));
                }
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={}", encode(c)));
                }
                let page = http.get(&path).await?;
                items.extend(page_items(&page));
                match page.get("next_cursor").and_then(Value::as_str) {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            if client.output == OutputFormat::Json {
                return output::write_json(&Value::Array(items));
            }
            let mut table = Table::new(&["ID", "NAME", "STATE", "CREATED", "COMPLETED"]);
            for c in &items {
                table.row(vec![
                    str_field(c, "id"),
                    str_field(c, "name"),
                    str_field(c, "state"),
                    str_field(c, "created_at"),
                    str_field(c, "completed_at"),
                ]);
            }
            output::write_raw(&table.render())
        }
        CommandCommand::Get { device, id, client } => {
            let http = Client::new(&client)?;
            let c = http
                .get(&format!("/api/v1/devices/{}/commands/{}", encode(&device), encode(&id)))
                .await?;
            show(&client, &c)
        }
        CommandCommand::Cancel { device, id, client } => {
            let http = Client::new(&client)?;
            let c = http
                .post(
                    &format!("/api/v1/devices/{}/commands/{}/cancel", encode(&device), encode(&id)),
                    &Value::Object(Map::new()),
                )
                .await?;
            show(&client, &c)
        }
    }
}

/// The payload argument: JSON text or `@FILE`.
fn read_payload(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the payload file {path}"))?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).context("--payload is not valid JSON")
}

fn problem_error(problem: &Value, status: u16) -> anyhow::Error {
    let field = |k: &str| problem.get(k).and_then(Value::as_str).map(str::to_owned);
    let message = field("detail").unwrap_or_else(|| "request failed".to_owned());
    match field("code") {
        Some(code) => anyhow!("{message} ({code}, HTTP {status})"),
        None => anyhow!("{message} (HTTP {status})"),
    }
}

/// Prints one command: its JSON, or a few lines for people.
fn show(client: &ClientArgs, c: &Value) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(c);
    }
    let mut lines = vec![
        format!("id:        {}", str_field(c, "id")),
        format!("device:    {}", str_field(c, "device_id")),
        format!("name:      {}", str_field(c, "name")),
        format!("state:     {}", str_field(c, "state")),
        format!("created:   {}", str_field(c, "created_at")),
    ];
    for (label, key) in [
        ("expires:   ", "expires_at"),
        ("delivered: ", "delivered_at"),
        ("completed: ", "completed_at"),
    ] {
        let v = str_field(c, key);
        if !v.is_empty() {
            lines.push(format!("{label}{v}"));
        }
    }
    if let Some(result) = c.get("result").filter(|r| !r.is_null()) {
        lines.push(format!("result:    {result}"));
    }
    if let Some(error) = c.get("error").filter(|e| !e.is_null()) {
        lines.push(format!(
            "error:     {} {}",
            str_field(error, "code"),
            str_field(error, "message")
        ));
    }
    output::write_raw(&lines.join("\n"))
}

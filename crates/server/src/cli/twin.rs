//! `herd twin …`: read a device's twin, change its desired state and tags (JSON merge patches,
//! optionally guarded by the ETag), show what the device has not applied yet, its history, and
//! its effective desired state with the configuration profile (or its own layer) behind each
//! property.

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Map, Value};

use crate::cli::client::{Client, encode};
use crate::cli::output::{self, Table};
use crate::cli::{ClientArgs, OutputFormat};

/// A twin section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SectionArg {
    /// What operators want.
    Desired,
    /// What the device reported.
    Reported,
    /// Operators' metadata, never sent to the device.
    Tags,
}

impl SectionArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Desired => "desired",
            Self::Reported => "reported",
            Self::Tags => "tags",
        }
    }
}

/// `herd twin …`
#[derive(Debug, Subcommand)]
pub enum TwinCommand {
    /// Show a device's twin (or one section of it).
    Get {
        /// Device id.
        id: String,
        /// Only this section's document.
        #[arg(long, value_enum)]
        section: Option<SectionArg>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a device's desired state and/or tags with JSON merge patches (`null` deletes).
    Set {
        /// Device id.
        id: String,
        /// Merge patch of the desired state: JSON text, or @FILE.
        #[arg(long, value_name = "JSON|@FILE")]
        desired: Option<String>,
        /// Merge patch of the tags: JSON text, or @FILE.
        #[arg(long, value_name = "JSON|@FILE")]
        tags: Option<String>,
        /// Apply only if the twin's ETag is still this (`"3.1"` or 3.1, from `herd twin get`).
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        /// Show how the effective desired state and the tags would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show what the device has not applied yet (the delta) and its convergence status.
    Diff {
        /// Device id.
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a device's effective desired state, computed now from its configuration profiles
    /// and its own layer.
    Effective {
        /// Device id.
        id: String,
        /// Also show where each property comes from (a table: pointer, value, source).
        #[arg(long)]
        explain: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a twin's changes, newest first.
    History {
        /// Device id.
        id: String,
        /// Only changes of this section.
        #[arg(long, value_enum)]
        section: Option<SectionArg>,
        /// At most this many entries (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn twin_path(id: &str) -> String {
    format!("/api/v1/devices/{}/twin", encode(id))
}

/// A JSON argument given inline or as `@file`.
fn json_arg(flag: &str, raw: &str) -> anyhow::Result<Value> {
    let text = match raw.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--{flag}: cannot read {path}"))?,
        None => raw.to_owned(),
    };
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("--{flag} is not valid JSON"))?;
    if !value.is_object() {
        bail!("--{flag} must be a JSON object (a merge patch)");
    }
    Ok(value)
}

fn pretty(v: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

fn status_line(twin: &Value) -> String {
    let state = twin["status"]["state"].as_str().unwrap_or("unknown");
    match twin["status"]["since"].as_str() {
        Some(since) => format!("status: {state} since {since}"),
        None => format!("status: {state}"),
    }
}

/// Runs `herd twin …`.
pub(crate) async fn twin(cmd: TwinCommand) -> anyhow::Result<()> {
    match cmd {
        TwinCommand::Get { id, section, client } => {
            let twin = Client::new(&client)?.get(&twin_path(&id)).await?;
            match (section, client.output) {
                (Some(s), OutputFormat::Json) => output::write_json(&twin[s.as_str()]),
                (Some(s), OutputFormat::Table) => {
                    output::write_raw(&pretty(&twin[s.as_str()]["document"])?)
                }
                (None, OutputFormat::Json) => output::write_json(&twin),
                (None, OutputFormat::Table) => {
                    let mut text = format!("device: {id}\netag: {}\n", twin["etag"]);
                    for s in ["desired", "reported", "tags"] {
                        text.push_str(&format!(
                            "{s} (version {}):\n{}\n",
                            twin[s]["version"],
                            pretty(&twin[s]["document"])?
                        ));
                    }
                    text.push_str(&status_line(&twin));
                    output::write_raw(&text)
                }
            }
        }
        TwinCommand::Set { id, desired, tags, if_match, dry_run, client } => {
            let mut body = Map::new();
            if let Some(d) = desired {
                body.insert("desired".into(), json_arg("desired", &d)?);
            }
            if let Some(t) = tags {
                body.insert("tags".into(), json_arg("tags", &t)?);
            }
            if body.is_empty() {
                bail!("nothing to change: give --desired and/or --tags");
            }
            let api = Client::new(&client)?;
            let path =
                if dry_run { format!("{}?dry_run=true", twin_path(&id)) } else { twin_path(&id) };
            let mut req = api
                .request(Method::PATCH, &path)?
                .header("content-type", "application/merge-patch+json")
                .body(Value::Object(body).to_string());
            if let Some(etag) = if_match {
                let etag = etag.trim();
                let quoted = if etag.starts_with('"') || etag == "*" {
                    etag.to_owned()
                } else {
                    format!("\"{etag}\"")
                };
                req = req.header("if-match", quoted);
            }
            let twin = api.send(req).await?;
            if dry_run {
                if client.output == OutputFormat::Json {
                    return output::write_json(&twin);
                }
                return output::write_raw(&format!(
                    "desired changes: {}\ntags changes: {}\ndry run: nothing was changed",
                    serde_json::to_string_pretty(&twin["desired_changes"])?,
                    serde_json::to_string_pretty(&twin["tags_changes"])?,
                ));
            }
            match client.output {
                OutputFormat::Json => output::write_json(&twin),
                OutputFormat::Table => output::write_raw(&format!(
                    "etag: {}\n{}",
                    twin["etag"].as_str().unwrap_or_default(),
                    status_line(&twin)
                )),
            }
        }
        TwinCommand::Diff { id, client } => {
            let twin = Client::new(&client)?.get(&twin_path(&id)).await?;
            match client.output {
                OutputFormat::Json => output::write_json(&serde_json::json!({
                    "delta": twin["delta"],
                    "status": twin["status"],
                })),
                OutputFormat::Table => output::write_raw(&format!(
                    "{}\ndelta:\n{}",
                    status_line(&twin),
                    pretty(&twin["delta"])?
                )),
            }
        }
        TwinCommand::Effective { id, explain, client } => {
            let mut path = format!("{}/effective", twin_path(&id));
            if explain {
                path.push_str("?explain=true");
            }
            let eff = Client::new(&client)?.get(&path).await?;
            match client.output {
                OutputFormat::Json => output::write_json(&eff),
                OutputFormat::Table => output::write_raw(&effective_text(&eff, explain)?),
            }
        }
        TwinCommand::History { id, section, limit, client } => {
            let mut path = format!("{}/history?limit={limit}", twin_path(&id));
            if let Some(s) = section {
                path.push_str(&format!("&section={}", s.as_str()));
            }
            let page = Client::new(&client)?.get(&path).await?;
            match client.output {
                OutputFormat::Json => output::write_json(&page),
                OutputFormat::Table => {
                    let mut table =
                        Table::new(&["SEQ", "AT", "SECTION", "VERSION", "ACTOR", "PATCH"]);
                    for e in page["items"].as_array().into_iter().flatten() {
                        let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                        table.row(vec![
                            e["seq"].to_string(),
                            s("at"),
                            s("section"),
                            e["version"].to_string(),
                            s("actor"),
                            e["patch"].to_string(),
                        ]);
                    }
                    output::write_raw(&table.render())
                }
            }
        }
    }
}

/// `herd twin effective` for people: the document, and with `--explain` one row per leaf
/// property with the layer that set it.
fn effective_text(eff: &Value, explain: bool) -> anyhow::Result<String> {
    let mut text = format!(
        "device: {}\nstored desired version: {}\npending recompute: {}\n",
        eff["device_id"].as_str().unwrap_or_default(),
        eff["stored_version"],
        eff["pending_recompute"],
    );
    if !explain {
        text.push_str(&format!("desired:\n{}", pretty(&eff["desired"])?));
        return Ok(text);
    }
    let mut table = Table::new(&["POINTER", "VALUE", "SOURCE"]);
    let desired = eff["desired"].as_object().cloned().unwrap_or_default();
    for (pointer, value) in domain::twin::leaves(&desired) {
        let source = eff["sources"][&pointer].as_str().unwrap_or_default().to_owned();
        table.row(vec![pointer, value.to_string(), source]);
    }
    text.push_str(&table.render());
    Ok(text)
}

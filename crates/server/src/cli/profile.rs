//! `herd config profile …`: configuration profiles, the desired configuration of the whole fleet
//! or of a group, merged under each device's own desired layer. Create, list, show, change
//! (description, target, priority, a merge patch of the document) and delete them; `--dry-run`
//! shows what a change would reach and writes nothing.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::cli::client::{Client, encode};
use crate::cli::commands::{done, page_items, str_field};
use crate::cli::job::preview_table;
use crate::cli::output::{self, Table};
use crate::cli::{ClientArgs, OutputFormat};

/// `herd config profile …`
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Create a profile (operator).
    Create {
        /// Unique name: 1–64 characters of [A-Za-z0-9._-].
        name: String,
        /// What it applies to: `fleet` or `group:<name>`.
        #[arg(long, value_name = "fleet|group:G")]
        target: String,
        /// Among profiles of the same kind, a higher priority wins (default 0).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        priority: Option<i64>,
        /// Free text.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// The desired configuration: a JSON object in FILE, or `-` for standard input.
        #[arg(long, value_name = "FILE|-")]
        document: String,
        /// Show what it would reach and create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List profiles by name.
    List {
        /// Only profiles with this target: `fleet` or `group:<name>`.
        #[arg(long, value_name = "fleet|group:G")]
        target: Option<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a profile and its document.
    Get {
        /// Profile name.
        name: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a profile (operator): the flags given replace the current values; the document is
    /// changed by a JSON merge patch (`null` deletes a property).
    Set {
        /// Profile name.
        name: String,
        /// New target: `fleet` or `group:<name>`.
        #[arg(long, value_name = "fleet|group:G")]
        target: Option<String>,
        /// New priority.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        priority: Option<i64>,
        /// New description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// A merge patch of the document: a JSON object in FILE, or `-` for standard input.
        #[arg(long, value_name = "FILE|-")]
        document_patch: Option<String>,
        /// Show what the change would do and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a profile (operator); its devices lose what it set.
    Delete {
        /// Profile name.
        name: String,
        /// Show what it reaches now and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

const PROFILES: &str = "/api/v1/config-profiles";

fn profile_path(name: &str) -> String {
    format!("{PROFILES}/{}", encode(name))
}

/// A JSON object read from `FILE`, or from standard input for `-`.
fn json_object(flag: &str, source: &str) -> anyhow::Result<Value> {
    let text = if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .with_context(|| format!("--{flag}: cannot read standard input"))?;
        text
    } else {
        std::fs::read_to_string(source)
            .with_context(|| format!("--{flag}: cannot read {source}"))?
    };
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("--{flag}: {source} is not valid JSON"))?;
    if !value.is_object() {
        bail!("--{flag}: {source} must hold a JSON object");
    }
    Ok(value)
}

/// Runs `herd config profile …`.
///
/// # Errors
/// The server's message when a request fails, or a bad flag or file.
pub(crate) async fn profile(cmd: ProfileCommand) -> anyhow::Result<()> {
    match cmd {
        ProfileCommand::Create {
            name,
            target,
            priority,
            description,
            document,
            dry_run,
            client,
        } => {
            let mut body = json!({
                "name": name,
                "target": target,
                "document": json_object("document", &document)?,
            });
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let c = Client::new(&client)?;
            let path =
                if dry_run { format!("{PROFILES}?dry_run=true") } else { PROFILES.to_owned() };
            let answer = c.post(&path, &body).await?;
            show_answer(&client, &answer, dry_run, "nothing was created")
        }
        ProfileCommand::List { target, client } => list(&client, target.as_deref()).await,
        ProfileCommand::Get { name, client } => {
            let profile = Client::new(&client)?.get(&profile_path(&name)).await?;
            match client.output {
                OutputFormat::Json => output::write_json(&profile),
                OutputFormat::Table => print_profile(&profile),
            }
        }
        ProfileCommand::Set {
            name,
            target,
            priority,
            description,
            document_patch,
            dry_run,
            client,
        } => {
            let mut body = Map::new();
            if let Some(t) = target {
                body.insert("target".into(), json!(t));
            }
            if let Some(p) = priority {
                body.insert("priority".into(), json!(p));
            }
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            if let Some(source) = document_patch {
                body.insert("document".into(), json_object("document-patch", &source)?);
            }
            if body.is_empty() {
                bail!(
                    "nothing to change: give --target, --priority, --description or --document-patch"
                );
            }
            let c = Client::new(&client)?;
            let mut path = profile_path(&name);
            if dry_run {
                path.push_str("?dry_run=true");
            }
            let req = c
                .request(Method::PATCH, &path)?
                .header("content-type", "application/merge-patch+json")
                .body(Value::Object(body).to_string());
            let answer = c.send(req).await?;
            show_answer(&client, &answer, dry_run, "nothing was changed")
        }
        ProfileCommand::Delete { name, dry_run, client } => {
            let c = Client::new(&client)?;
            if dry_run {
                let answer = c.delete(&format!("{}?dry_run=true", profile_path(&name))).await?;
                return show_answer(&client, &answer, true, "nothing was deleted");
            }
            c.delete(&profile_path(&name)).await?;
            done(&client, &format!("profile {name} deleted"))
        }
    }
}

/// Prints a created or changed profile, or a dry run.
fn show_answer(
    client: &ClientArgs,
    answer: &Value,
    dry_run: bool,
    nothing: &str,
) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(answer);
    }
    if !dry_run {
        return print_profile(answer);
    }
    let profile = &answer["profile"];
    let mut text = format!(
        "profile {} (target {}, priority {}, version {})\n",
        str_field(profile, "name"),
        str_field(profile, "target"),
        str_field(profile, "priority"),
        str_field(profile, "version"),
    );
    text.push_str(&format!(
        "document changes:\n{}\n",
        serde_json::to_string_pretty(&answer["document_changes"])?
    ));
    text.push_str("affected devices:\n");
    text.push_str(&preview_table(&answer["affected"]).render());
    if let Some(before) = answer.get("previously_affected").filter(|v| !v.is_null()) {
        text.push_str("previously affected devices (old target):\n");
        text.push_str(&preview_table(before).render());
    }
    text.push_str(&format!("dry run: {nothing}"));
    output::write_raw(&text)
}

fn print_profile(profile: &Value) -> anyhow::Result<()> {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for k in ["name", "target", "priority", "description", "version", "created_at", "updated_at"] {
        t.row(vec![k.to_owned(), str_field(profile, k)]);
    }
    output::write_raw(&format!(
        "{}document:\n{}",
        t.render(),
        serde_json::to_string_pretty(&profile["document"])?
    ))
}

async fn list(client: &ClientArgs, target: Option<&str>) -> anyhow::Result<()> {
    let c = Client::new(client)?;
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec!["limit=1000".to_owned()];
        if let Some(t) = target {
            q.push(format!("target={}", encode(t)));
        }
        if let Some(a) = &after {
            q.push(format!("after={}", encode(a)));
        }
        let page = c.get(&format!("{PROFILES}?{}", q.join("&"))).await?;
        items.extend(page_items(&page));
        match page.get("next_after").and_then(Value::as_str) {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    if client.output == OutputFormat::Json {
        return output::write_json(&json!({ "items": items }));
    }
    let mut t = Table::new(&["NAME", "TARGET", "PRIORITY", "VERSION", "DESCRIPTION"]);
    for p in &items {
        t.row(vec![
            str_field(p, "name"),
            str_field(p, "target"),
            str_field(p, "priority"),
            str_field(p, "version"),
            str_field(p, "description"),
        ]);
    }
    output::write_raw(&t.render())
}

//! `herd job …`: fleet jobs: create one from a spec file or from flags (optionally as a dry run
//! that shows what it would touch), list them, show one (with `--watch`, a live progress bar until
//! the job ends), pause, resume and cancel.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::client::{Client, encode};
use crate::cli::commands::{done, page_items, str_field};
use crate::cli::output::{self, Table};
use crate::cli::{ClientArgs, OutputFormat};

/// How often `herd job show --watch` polls.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// `herd job …`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job from a spec file or from flags (operator).
    Create(Box<CreateArgs>),
    /// List jobs.
    List {
        /// Only jobs in this state (in_progress, paused, canceled, aborted, completed).
        #[arg(long)]
        state: Option<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a job and its counters.
    Show {
        /// Job id.
        id: String,
        /// Follow its progress with a live bar until it ends (canceled, aborted or completed).
        #[arg(long)]
        watch: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause a job: nothing more starts (operator).
    Pause {
        /// Job id.
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused job (operator).
    Resume {
        /// Job id.
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job: queued executions are canceled, running ones may finish (operator).
    Cancel {
        /// Job id.
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Flags of `herd job create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A job spec (JSON, as `POST /api/v1/jobs` takes it); the other spec flags are then not used.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["command", "group", "filter", "devices"])]
    pub file: Option<PathBuf>,
    /// Job id (default: the command's name and the current time).
    #[arg(long)]
    pub id: Option<String>,
    /// The command each device runs.
    #[arg(long, value_name = "NAME")]
    pub command: Option<String>,
    /// The command's payload (JSON).
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// Target: the members of a group.
    #[arg(long, conflicts_with_all = ["filter", "devices"])]
    pub group: Option<String>,
    /// Target: the devices a filter matches, e.g. "tags.site = 'berlin'".
    #[arg(long, value_name = "EXPR", conflicts_with = "devices")]
    pub filter: Option<String>,
    /// Target: these devices, comma-separated.
    #[arg(long, value_name = "ID,ID", value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// Devices joining the target later get the job too (group or filter targets).
    #[arg(long)]
    pub continuous: bool,
    /// Executions started per minute.
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,
    /// Abort when at least this percentage of finished executions failed (or timed out)...
    #[arg(long, value_name = "PCT", requires = "abort_min")]
    pub abort_pct: Option<f64>,
    /// ... once at least this many finished.
    #[arg(long, value_name = "N", requires = "abort_pct")]
    pub abort_min: Option<u64>,
    /// Seconds a device may stay in progress before its execution times out.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u32>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Show what the job would touch and create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Server, token and output options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs a `herd job` command.
///
/// # Errors
/// The server's message when a request fails, or a bad flag or file.
pub(crate) async fn job(cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Create(args) => create(&args).await,
        JobCommand::List { state, client } => list(&client, state.as_deref()).await,
        JobCommand::Show { id, watch, client } => show(&client, &id, watch).await,
        JobCommand::Pause { id, client } => act(&client, &id, "pause").await,
        JobCommand::Resume { id, client } => act(&client, &id, "resume").await,
        JobCommand::Cancel { id, client } => act(&client, &id, "cancel").await,
    }
}

/// The spec `herd job create`'s flags describe.
fn spec_from_flags(a: &CreateArgs) -> anyhow::Result<Value> {
    let Some(command) = &a.command else {
        bail!(
            "give --file SPEC.json, or --command NAME with a target (--group, --filter or --devices)"
        );
    };
    let payload = match &a.payload {
        Some(p) => serde_json::from_str::<Value>(p).context("--payload is not JSON")?,
        None => Value::Null,
    };
    let target = match (&a.group, &a.filter, &a.devices) {
        (Some(g), None, None) => json!({"group": g}),
        (None, Some(f), None) => json!({"filter": f}),
        (None, None, Some(d)) => json!({"devices": d}),
        _ => bail!("give exactly one target: --group, --filter or --devices"),
    };
    let id = a.id.clone().unwrap_or_else(|| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let name: String = command
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .take(40)
            .collect();
        format!("{name}-{now}")
    });
    let mut spec = json!({
        "id": id,
        "operation": {"command": {"name": command, "payload": payload}},
        "target": target,
        "selection": if a.continuous { "continuous" } else { "snapshot" },
    });
    if let Some(d) = &a.description {
        spec["description"] = json!(d);
    }
    if let Some(r) = a.rate {
        spec["rollout"] = json!({"max_per_minute": r});
    }
    if let Some(t) = a.timeout {
        spec["in_progress_timeout_secs"] = json!(t);
    }
    if let (Some(pct), Some(min)) = (a.abort_pct, a.abort_min) {
        spec["abort"] = json!([{
            "failure_types": ["failed", "timed_out"],
            "min_finished": min,
            "threshold_pct": pct,
        }]);
    }
    Ok(spec)
}

async fn create(a: &CreateArgs) -> anyhow::Result<()> {
    let spec = match &a.file {
        Some(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => spec_from_flags(a)?,
    };
    let c = Client::new(&a.client)?;
    if a.dry_run {
        let preview = c.post("/api/v1/jobs?dry_run=true", &spec).await?;
        if a.client.output == OutputFormat::Json {
            return output::write_json(&preview);
        }
        output::write_raw(&preview_table(&preview).render())?;
        return output::write_raw("dry run: nothing was created");
    }
    let job = c.post("/api/v1/jobs", &spec).await?;
    if a.client.output == OutputFormat::Json {
        return output::write_json(&job);
    }
    print_job(&job)?;
    output::note(&format!("follow it with: herd job show {} --watch", str_field(&job, "id")));
    Ok(())
}

/// A target preview (a job's or a configuration profile's dry run) as a table: devices, online
/// and offline, by state, by group, and a sample of ids.
pub(crate) fn preview_table(preview: &Value) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["devices".into(), str_field(preview, "total")]);
    t.row(vec![
        "online / offline".into(),
        format!("{} / {}", str_field(preview, "online"), str_field(preview, "offline")),
    ]);
    if let Some(states) = preview.get("by_state").and_then(Value::as_object) {
        let text: Vec<String> = states.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        t.row(vec!["by state".into(), text.join(", ")]);
    }
    if let Some(groups) = preview.get("by_group").and_then(Value::as_array) {
        let mut text: Vec<String> = groups
            .iter()
            .map(|g| format!("{}: {}", str_field(g, "group"), str_field(g, "devices")))
            .collect();
        if preview.get("groups_truncated").and_then(Value::as_bool) == Some(true) {
            text.push("…".to_owned());
        }
        t.row(vec!["by group".into(), text.join(", ")]);
    }
    if let Some(sample) = preview.get("sample").and_then(Value::as_array) {
        let text: Vec<&str> = sample.iter().filter_map(Value::as_str).collect();
        t.row(vec!["sample".into(), text.join(", ")]);
    }
    t
}

async fn list(client: &ClientArgs, state: Option<&str>) -> anyhow::Result<()> {
    let c = Client::new(client)?;
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec!["limit=1000".to_owned()];
        if let Some(s) = state {
            q.push(format!("state={}", encode(s)));
        }
        if let Some(cur) = &cursor {
            q.push(format!("cursor={}", encode(cur)));
        }
        let page = c.get(&format!("/api/v1/jobs?{}", q.join("&"))).await?;
        items.extend(page_items(&page));
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    if client.output == OutputFormat::Json {
        return output::write_json(&json!({"items": items}));
    }
    let mut t = Table::new(&["ID", "STATE", "OPERATION", "DONE", "TOTAL", "FAILED", "CREATED"]);
    for j in &items {
        let counters = j.get("counters").cloned().unwrap_or(Value::Null);
        t.row(vec![
            str_field(j, "id"),
            str_field(j, "state"),
            operation_text(j),
            finished(&counters).to_string(),
            str_field(&counters, "total"),
            failures(&counters).to_string(),
            str_field(j, "created_at"),
        ]);
    }
    output::write_raw(&t.render())
}

fn count(counters: &Value, k: &str) -> u64 {
    counters.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Executions that ended.
fn finished(c: &Value) -> u64 {
    ["succeeded", "failed", "rejected", "timed_out", "canceled", "removed"]
        .iter()
        .map(|k| count(c, k))
        .sum()
}

fn failures(c: &Value) -> u64 {
    ["failed", "rejected", "timed_out"].iter().map(|k| count(c, k)).sum()
}

fn operation_text(job: &Value) -> String {
    let op = &job["spec"]["operation"];
    if let Some(name) = op["command"]["name"].as_str() {
        format!("command {name}")
    } else if op.get("desired_patch").is_some() {
        "desired patch".to_owned()
    } else {
        String::new()
    }
}

fn print_job(job: &Value) -> anyhow::Result<()> {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for k in ["id", "state", "version", "created_at", "updated_at"] {
        t.row(vec![k.to_owned(), str_field(job, k)]);
    }
    t.row(vec!["operation".into(), operation_text(job)]);
    t.row(vec!["target".into(), job["spec"]["target"].to_string()]);
    t.row(vec!["selection".into(), str_field(&job["spec"], "selection")]);
    if let Some(c) = job.get("counters").and_then(Value::as_object) {
        let text: Vec<String> = c.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        t.row(vec!["executions".into(), text.join(", ")]);
    }
    if let Some(i) = job.get("aborted_by").and_then(Value::as_u64) {
        t.row(vec!["aborted by".into(), job["spec"]["abort"][i as usize].to_string()]);
    }
    output::write_raw(&t.render())
}

fn is_terminal(job: &Value) -> bool {
    matches!(job["state"].as_str(), Some("canceled" | "aborted" | "completed"))
}

async fn show(client: &ClientArgs, id: &str, watch: bool) -> anyhow::Result<()> {
    let c = Client::new(client)?;
    let path = format!("/api/v1/jobs/{}", encode(id));
    let mut job = c.get(&path).await?;
    if watch && !is_terminal(&job) {
        let bar = indicatif::ProgressBar::new(count(&job["counters"], "total"));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} finished ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        loop {
            let counters = &job["counters"];
            bar.set_length(count(counters, "total"));
            bar.set_position(finished(counters));
            bar.set_message(format!(
                "{} · {} running · {} succeeded · {} failed",
                str_field(&job, "state"),
                count(counters, "in_progress"),
                count(counters, "succeeded"),
                failures(counters),
            ));
            if is_terminal(&job) {
                break;
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
            job = c.get(&path).await?;
        }
        bar.finish();
    }
    if client.output == OutputFormat::Json {
        return output::write_json(&job);
    }
    print_job(&job)
}

async fn act(client: &ClientArgs, id: &str, action: &str) -> anyhow::Result<()> {
    let c = Client::new(client)?;
    let job = c.post(&format!("/api/v1/jobs/{}/{action}", encode(id)), &json!({})).await?;
    if client.output == OutputFormat::Json {
        return output::write_json(&job);
    }
    done(client, &format!("job {id}: {}", str_field(&job, "state")))
}

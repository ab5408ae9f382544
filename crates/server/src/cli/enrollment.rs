//! `herd enrollment …`: enrollment groups (zero-touch provisioning), device keys derived from a
//! symmetric-key group for factory scripts (one, or a CSV manifest for a batch), and claim codes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::cli::client::{Client, encode};
use crate::cli::commands::{done, page_items, parse_tags, str_field, tags_text};
use crate::cli::output::{self, Table};
use crate::cli::{ClientArgs, OutputFormat};

/// How devices of an enrollment group prove they belong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttestationArg {
    /// A key derived from the group's secret (`herd enrollment derive-key`).
    SymmetricKey,
    /// A certificate from Herd's CA, or from `--ca-file`.
    X509,
    /// A claim code (`herd enrollment claim-codes create`).
    ClaimCode,
}

impl AttestationArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::SymmetricKey => "symmetric_key",
            Self::X509 => "x509",
            Self::ClaimCode => "claim_code",
        }
    }
}

/// `herd enrollment …`
#[derive(Debug, Subcommand)]
pub enum EnrollmentCommand {
    /// Create an enrollment group (admin).
    Create {
        /// Group name.
        name: String,
        /// How devices prove they belong.
        #[arg(long, value_enum)]
        attestation: AttestationArg,
        /// x509 only: the CA certificate (PEM) device certificates must chain to (default:
        /// Herd's own CA).
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
        /// Tag of new devices, KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Static group new devices join (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Attribute of new devices, KEY=JSON (repeatable), e.g. batch=7 or fw='"1.2"'.
        #[arg(long = "attribute", value_name = "KEY=JSON")]
        attributes: Vec<String>,
        /// Device id template, e.g. 'plant-{registration_id}'.
        #[arg(long, value_name = "TEMPLATE")]
        id_template: Option<String>,
        /// Stop accepting registrations at this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        expires: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List enrollment groups.
    List {
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one enrollment group.
    Show {
        /// Group name.
        name: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Accept registrations through a group again.
    Enable {
        /// Group name.
        name: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop accepting registrations through a group.
    Disable {
        /// Group name.
        name: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an enrollment group and its claim codes (its devices stay).
    Delete {
        /// Group name.
        name: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a device's key derived from a symmetric-key group (only the key, base64).
    DeriveKey {
        /// Group name.
        group: String,
        /// The device id (after the group's template).
        device_id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a factory manifest `device_id,derived_key` for the device ids in a file (one a
    /// line; blank lines and lines starting with # are skipped).
    DeriveKeys {
        /// Group name.
        group: String,
        /// The file of device ids (`-` reads stdin).
        #[arg(long, value_name = "FILE")]
        ids: PathBuf,
        /// The CSV file to write (created with mode 0600: it holds secrets).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Claim codes of a claim-code group.
    #[command(subcommand)]
    ClaimCodes(ClaimCodesCommand),
}

/// `herd enrollment claim-codes …`
#[derive(Debug, Subcommand)]
pub enum ClaimCodesCommand {
    /// Make claim codes; they are printed once.
    Create {
        /// Group name.
        group: String,
        /// How many codes.
        #[arg(long)]
        count: u32,
        /// How many devices each code may enroll.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// When the codes stop working (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        expires: Option<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a group's claim codes (never the codes).
    List {
        /// Group name.
        group: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

const BASE: &str = "/api/v1/enrollment-groups";

fn group_path(name: &str) -> String {
    format!("{BASE}/{}", encode(name))
}

/// Runs `herd enrollment …`.
pub(crate) async fn enrollment(cmd: EnrollmentCommand) -> anyhow::Result<()> {
    match cmd {
        EnrollmentCommand::Create {
            name,
            attestation,
            ca_file,
            tags,
            groups,
            attributes,
            id_template,
            expires,
            disabled,
            client,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), name.into());
            body.insert("attestation".into(), attestation.as_str().into());
            if let Some(file) = ca_file {
                let pem = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                body.insert("ca_certificate".into(), pem.into());
            }
            if !tags.is_empty() {
                body.insert("tags".into(), parse_tags(&tags)?);
            }
            if !groups.is_empty() {
                body.insert("groups".into(), groups.into());
            }
            if !attributes.is_empty() {
                body.insert("attributes".into(), parse_attributes(&attributes)?);
            }
            if let Some(t) = id_template {
                body.insert("device_id_template".into(), t.into());
            }
            if let Some(e) = expires {
                body.insert("expires_at".into(), e.into());
            }
            if disabled {
                body.insert("enabled".into(), false.into());
            }
            let g = Client::new(&client)?.post(BASE, &Value::Object(body)).await?;
            print_group(&client, &g)
        }
        EnrollmentCommand::List { client } => {
            let c = Client::new(&client)?;
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(cur) => format!("{BASE}?limit=1000&cursor={}", encode(cur)),
                    None => format!("{BASE}?limit=1000"),
                };
                let page = c.get(&path).await?;
                items.extend(page_items(&page));
                match page.get("next_cursor").and_then(Value::as_str) {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            if client.output == OutputFormat::Json {
                return output::write_json(&json!({ "items": items }));
            }
            let mut t =
                Table::new(&["NAME", "ATTESTATION", "ENABLED", "EXPIRES", "DEVICES", "TAGS"]);
            for g in &items {
                t.row(vec![
                    str_field(g, "name"),
                    str_field(g, "attestation"),
                    str_field(g, "enabled"),
                    str_field(g, "expires_at"),
                    str_field(g, "registrations"),
                    tags_text(g.get("tags")),
                ]);
            }
            output::write_raw(&t.render())
        }
        EnrollmentCommand::Show { name, client } => {
            let g = Client::new(&client)?.get(&group_path(&name)).await?;
            print_group(&client, &g)
        }
        EnrollmentCommand::Enable { name, client } => set_enabled(&name, true, &client).await,
        EnrollmentCommand::Disable { name, client } => set_enabled(&name, false, &client).await,
        EnrollmentCommand::Delete { name, client } => {
            Client::new(&client)?.delete(&group_path(&name)).await?;
            done(&client, &format!("deleted enrollment group {name}"))
        }
        EnrollmentCommand::DeriveKey { group, device_id, client } => {
            let k = derive(&Client::new(&client)?, &group, &device_id).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&k);
            }
            output::write_raw(&str_field(&k, "derived_key"))
        }
        EnrollmentCommand::DeriveKeys { group, ids, out, client } => {
            derive_manifest(&group, &ids, &out, &client).await
        }
        EnrollmentCommand::ClaimCodes(cmd) => claim_codes(cmd).await,
    }
}

async fn set_enabled(name: &str, enabled: bool, client: &ClientArgs) -> anyhow::Result<()> {
    let c = Client::new(client)?;
    let req = c.request(Method::PATCH, &group_path(name))?.json(&json!({ "enabled": enabled }));
    let g = c.send(req).await?;
    if client.output == OutputFormat::Json {
        return output::write_json(&g);
    }
    let what = if enabled { "enabled" } else { "disabled" };
    output::write_raw(&format!("{what} enrollment group {name}"))
}

async fn derive(c: &Client, group: &str, device_id: &str) -> anyhow::Result<Value> {
    c.post(&format!("{}/derive-key", group_path(group)), &json!({ "device_id": device_id })).await
}

/// Writes `device_id,derived_key` for every id in `ids` to `out` (mode 0600), one request each.
async fn derive_manifest(
    group: &str,
    ids: &Path,
    out: &Path,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let text = if ids.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read device ids from stdin")?
    } else {
        std::fs::read_to_string(ids).with_context(|| format!("cannot read {}", ids.display()))?
    };
    let device_ids: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    if device_ids.is_empty() {
        bail!("{} holds no device ids", ids.display());
    }
    let c = Client::new(client)?;
    let mut csv = String::from("device_id,derived_key\n");
    for id in &device_ids {
        let k = derive(&c, group, id).await.with_context(|| format!("device id {id:?}"))?;
        csv.push_str(&format!("{},{}\n", str_field(&k, "device_id"), str_field(&k, "derived_key")));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(out).with_context(|| format!("cannot write {}", out.display()))?;
    file.write_all(csv.as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
    done(client, &format!("wrote {} device keys to {}", device_ids.len(), out.display()))
}

async fn claim_codes(cmd: ClaimCodesCommand) -> anyhow::Result<()> {
    match cmd {
        ClaimCodesCommand::Create { group, count, max_uses, expires, client } => {
            let mut body = json!({ "count": count, "max_uses": max_uses });
            if let Some(e) = expires {
                body["expires_at"] = e.into();
            }
            let path = format!("{}/claim-codes", group_path(&group));
            let codes = Client::new(&client)?.post(&path, &body).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&codes);
            }
            output::note("claim codes are shown once; only their hashes are stored");
            let mut t = Table::new(&["ID", "CODE", "MAX USES", "EXPIRES"]);
            for c in page_items(&codes) {
                t.row(vec![
                    str_field(&c, "id"),
                    str_field(&c, "code"),
                    str_field(&c, "max_uses"),
                    str_field(&c, "expires_at"),
                ]);
            }
            output::write_raw(&t.render())
        }
        ClaimCodesCommand::List { group, client } => {
            let path = format!("{}/claim-codes", group_path(&group));
            let list = Client::new(&client)?.get(&path).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&list);
            }
            let mut t = Table::new(&["ID", "USES", "MAX USES", "EXPIRES", "CREATED"]);
            for c in page_items(&list) {
                t.row(vec![
                    str_field(&c, "id"),
                    str_field(&c, "uses"),
                    str_field(&c, "max_uses"),
                    str_field(&c, "expires_at"),
                    str_field(&c, "created_at"),
                ]);
            }
            output::write_raw(&t.render())
        }
    }
}

/// `KEY=JSON` pairs as a JSON object (a value that is not JSON is taken as a string).
fn parse_attributes(pairs: &[String]) -> anyhow::Result<Value> {
    let mut map = Map::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--attribute takes KEY=JSON, got {p:?}");
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        map.insert(k.to_owned(), value);
    }
    Ok(Value::Object(map))
}

fn print_group(client: &ClientArgs, g: &Value) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(g);
    }
    let groups = g
        .get("groups")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let ca = match g.get("ca_certificate") {
        Some(Value::String(_)) => "uploaded",
        _ if str_field(g, "attestation") == "x509" => "herd",
        _ => "",
    };
    let rows = [
        ("name", str_field(g, "name")),
        ("attestation", str_field(g, "attestation")),
        ("ca", ca.to_owned()),
        ("enabled", str_field(g, "enabled")),
        ("expires_at", str_field(g, "expires_at")),
        ("device_id_template", str_field(g, "device_id_template")),
        ("tags", tags_text(g.get("tags"))),
        ("groups", groups),
        ("attributes", g.get("attributes").map(Value::to_string).unwrap_or_default()),
        ("registrations", str_field(g, "registrations")),
        ("created_at", str_field(g, "created_at")),
        ("updated_at", str_field(g, "updated_at")),
    ];
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in rows {
        t.row(vec![k.to_owned(), v]);
    }
    output::write_raw(&t.render())
}

//! `herd enrollment …`: enrollment groups (zero-touch provisioning), device keys derived from a
//! symmetric-key group for factory scripts (one, or a CSV manifest for a batch, fetched
//! [`DERIVE_BATCH`] at a time), factory bundles (one directory per device, ready for
//! `herd-agent`'s zero-touch start), and claim codes.

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
    /// Write a factory bundle: one directory per registration id in a file (one a line; blank
    /// lines and lines starting with # are skipped), each with `agent.toml` (herd-agent
    /// zero-touch: provisioning section, server, data_dir), `derived.key` (mode 0600) and
    /// `ca.pem` when given, and `manifest.csv` at the top. DIR must not exist or be empty.
    Bundle {
        /// Group name (a symmetric-key group).
        group: String,
        /// The file of registration ids, such as serial numbers (`-` reads stdin); the group's
        /// device id template makes the device ids of them.
        #[arg(long, value_name = "FILE")]
        ids: PathBuf,
        /// The directory to write.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The provisioning URL devices register with (Herd's HTTP API as devices reach it,
        /// usually https:// through a TLS proxy). Default: --server.
        #[arg(long, value_name = "URL")]
        server_url: Option<String>,
        /// The MQTT URL devices connect to (mqtt://, mqtts://, ws://, wss://). Default:
        /// mqtt://HOST:1883 with the host of the provisioning URL.
        #[arg(long, value_name = "URL")]
        mqtt_url: Option<String>,
        /// A CA certificate (PEM) devices trust for HTTPS and MQTT over TLS; copied into each
        /// directory as ca.pem.
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
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

/// Device keys asked for in one `derive-keys` request: the server's default limit
/// (`provisioning.max_derived_keys_per_request`); a server configured lower answers 422 and the
/// command says so.
pub(crate) const DERIVE_BATCH: usize = 1000;

/// Where a bundle's files are installed on the device, as its `agent.toml` names them.
const DEVICE_CONFIG_DIR: &str = "/etc/herd";

/// The agent's data directory in a bundle's `agent.toml`.
const DEVICE_DATA_DIR: &str = "/var/lib/herd-agent";

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
        EnrollmentCommand::Bundle { group, ids, out, server_url, mqtt_url, ca_file, client } => {
            let urls = BundleUrls::new(server_url.as_deref().unwrap_or(&client.server), mqtt_url)?;
            bundle(&group, &ids, &out, &urls, ca_file.as_deref(), &client).await
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

/// The ids of a file (`-`: stdin), one a line; blank lines and `#` comments skipped.
fn read_ids(ids: &Path) -> anyhow::Result<Vec<String>> {
    let text = if ids.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read ids from stdin")?
    } else {
        std::fs::read_to_string(ids).with_context(|| format!("cannot read {}", ids.display()))?
    };
    let list: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        bail!("{} holds no ids", ids.display());
    }
    Ok(list)
}

/// The derived keys of `device_ids`, in order, [`DERIVE_BATCH`] per request.
async fn derive_all(
    c: &Client,
    group: &str,
    device_ids: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let path = format!("{}/derive-keys", group_path(group));
    let mut keys = Vec::with_capacity(device_ids.len());
    for (n, batch) in device_ids.chunks(DERIVE_BATCH).enumerate() {
        let answer = c.post(&path, &json!({ "device_ids": batch })).await.with_context(|| {
            let first = n * DERIVE_BATCH;
            format!("deriving the keys of device ids {} to {}", first + 1, first + batch.len())
        })?;
        let items = page_items(&answer);
        if items.len() != batch.len() {
            bail!("the server answered {} keys for {} device ids", items.len(), batch.len());
        }
        for k in items {
            keys.push((str_field(&k, "device_id"), str_field(&k, "derived_key")));
        }
    }
    Ok(keys)
}

/// Writes a file only its owner may read or write.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file =
        options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `device_id,derived_key` for every id in `ids` to `out` (mode 0600).
async fn derive_manifest(
    group: &str,
    ids: &Path,
    out: &Path,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let device_ids = read_ids(ids)?;
    let keys = derive_all(&Client::new(client)?, group, &device_ids).await?;
    let mut csv = String::from("device_id,derived_key\n");
    for (device_id, key) in &keys {
        csv.push_str(&format!("{device_id},{key}\n"));
    }
    write_private(out, csv.as_bytes())?;
    done(client, &format!("wrote {} device keys to {}", keys.len(), out.display()))
}

/// The URLs a bundle's devices use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BundleUrls {
    /// Where devices register (`http(s)://…`).
    provisioning: String,
    /// Where devices connect over MQTT.
    mqtt: String,
}

impl BundleUrls {
    fn new(provisioning: &str, mqtt: Option<String>) -> anyhow::Result<Self> {
        let provisioning = provisioning.trim_end_matches('/').to_owned();
        let Some(rest) =
            provisioning.strip_prefix("https://").or_else(|| provisioning.strip_prefix("http://"))
        else {
            bail!("--server-url must start with https:// or http://, got {provisioning:?}");
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_owned(),
        };
        if host.is_empty() || host == "[]" {
            bail!("--server-url has no host: {provisioning:?}");
        }
        let mqtt = match mqtt {
            Some(url) => {
                let known = ["mqtt://", "mqtts://", "ws://", "wss://"];
                if !known.iter().any(|s| url.starts_with(s)) {
                    bail!(
                        "--mqtt-url must start with mqtt://, mqtts://, ws:// or wss://, got {url:?}"
                    );
                }
                url
            }
            None => format!("mqtt://{host}:1883"),
        };
        Ok(Self { provisioning, mqtt })
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The `agent.toml` of one device of a bundle.
fn bundle_agent_toml(
    group: &str,
    registration_id: &str,
    device_id: &str,
    urls: &BundleUrls,
    with_ca: bool,
) -> String {
    let mut toml = format!(
        "# herd-agent configuration for {registration_id} (device {device_id}), enrollment group \
         {group}.\n# Install this file, derived.key{} in {DEVICE_CONFIG_DIR}/; on its first start the \
         agent registers\n# and writes the credential it receives to credential_file.\n\
         server = {}\ncredential_file = {}\ndata_dir = {}\n",
        if with_ca { " and ca.pem" } else { "" },
        toml_str(&urls.mqtt),
        toml_str(&format!("{DEVICE_CONFIG_DIR}/credential")),
        toml_str(DEVICE_DATA_DIR),
    );
    if with_ca {
        toml.push_str(&format!("ca_file = {}\n", toml_str(&format!("{DEVICE_CONFIG_DIR}/ca.pem"))));
    }
    toml.push_str(&format!(
        "\n[provisioning]\nurl = {}\nenrollment_group = {}\nregistration_id = {}\n\
         derived_key_file = {}\n",
        toml_str(&urls.provisioning),
        toml_str(group),
        toml_str(registration_id),
        toml_str(&format!("{DEVICE_CONFIG_DIR}/derived.key")),
    ));
    toml
}

/// Writes a factory bundle for the registration ids in `ids` to `out`.
async fn bundle(
    group: &str,
    ids: &Path,
    out: &Path,
    urls: &BundleUrls,
    ca_file: Option<&Path>,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let registration_ids = read_ids(ids)?;
    let mut seen = std::collections::HashSet::new();
    for id in &registration_ids {
        let valid = (1..=128).contains(&id.len())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
            // Each id names a directory of the bundle.
            && id != "."
            && id != "..";
        if !valid {
            bail!("registration id {id:?}: use 1 to 128 characters of A-Z a-z 0-9 . _ : -");
        }
        if !seen.insert(id.as_str()) {
            bail!("registration id {id:?} appears twice in {}", ids.display());
        }
    }
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} is not empty: give a new or empty directory", out.display());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", out.display())),
    }
    let ca_pem = ca_file
        .map(|f| std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display())))
        .transpose()?;
    if let Some(pem) = &ca_pem
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        bail!(
            "{} holds no PEM certificate",
            ca_file.map(Path::display).map(|d| d.to_string()).unwrap_or_default()
        );
    }
    let c = Client::new(client)?;
    let g = c.get(&group_path(group)).await?;
    if str_field(&g, "attestation") != "symmetric_key" {
        bail!(
            "enrollment group {group} uses {} attestation: bundles are for symmetric_key groups",
            str_field(&g, "attestation")
        );
    }
    let template = g.get("device_id_template").and_then(Value::as_str);
    let device_ids: Vec<String> = registration_ids
        .iter()
        .map(|r| template.map_or_else(|| r.clone(), |t| t.replace("{registration_id}", r)))
        .collect();
    let keys = derive_all(&c, group, &device_ids).await?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut manifest = String::from("registration_id,device_id,directory\n");
    for (registration_id, (device_id, key)) in registration_ids.iter().zip(&keys) {
        let dir = out.join(registration_id);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let toml = bundle_agent_toml(group, registration_id, device_id, urls, ca_pem.is_some());
        std::fs::write(dir.join("agent.toml"), toml)
            .with_context(|| format!("cannot write {}", dir.join("agent.toml").display()))?;
        write_private(&dir.join("derived.key"), format!("{key}\n").as_bytes())?;
        if let Some(pem) = &ca_pem {
            std::fs::write(dir.join("ca.pem"), pem)
                .with_context(|| format!("cannot write {}", dir.join("ca.pem").display()))?;
        }
        manifest.push_str(&format!("{registration_id},{device_id},{registration_id}\n"));
    }
    std::fs::write(out.join("manifest.csv"), manifest)
        .with_context(|| format!("cannot write {}", out.join("manifest.csv").display()))?;
    done(
        client,
        &format!("wrote {} device directories and manifest.csv to {}", keys.len(), out.display()),
    )
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

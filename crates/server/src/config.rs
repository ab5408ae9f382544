//! Configuration: the commented default file, the overlay of file, environment and flags, and
//! validation into a typed [`Config`].
//!
//! The embedded `default.toml` is the single source of defaults: it is what `herd config default`
//! prints, and every layer above it (a `--config` file, `HERD_SECTION__KEY` variables, flags) may
//! only set keys it has, with values of the same type. Validation collects every problem before
//! reporting, so an operator fixes a broken file in one round.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use domain::TokenHash;
use serde::Deserialize;
use toml::{Table, Value};

use crate::gateway::{Application, TopicRules};

/// The commented default configuration, embedded in the binary.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A value given on the command line for one key (re-exported so callers need not depend on `toml`).
pub type FlagValue = toml::Value;

/// The environment prefix of configuration variables (`HERD_HTTP__LISTEN`).
pub const ENV_PREFIX: &str = "HERD_";

/// Where MQTT over TLS listens when a certificate and key are configured and `mqtt.tls_listen` is
/// empty (8883 is the IANA port of MQTT over TLS).
pub const DEFAULT_MQTT_TLS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8883);

/// Fewest characters of an application secret read from `secret_file`.
const MIN_APPLICATION_SECRET_CHARS: usize = 16;

/// Validated configuration of `herd serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where data lives.
    pub data_dir: PathBuf,
    /// How long shutdown may take before the rest is aborted.
    pub shutdown_timeout: Duration,
    /// HTTP listener address.
    pub http_listen: SocketAddr,
    /// Limits of the REST API.
    pub api: http_api::ApiConfig,
    /// Storage backend.
    pub store: StoreConfig,
    /// The MQTT device gateway.
    pub mqtt: MqttConfig,
    /// Device certificates: the CA and their lifetime.
    pub identity: IdentityConfig,
    /// Direct commands to devices (`[commands]`).
    pub commands: CommandsConfig,
    /// Device twins: limits and history (`[twin]`).
    pub twin: TwinConfig,
    /// Fleet jobs: the scheduler's pace and limits (`[jobs]`).
    pub jobs: crate::jobs::JobsConfig,
    /// Log output.
    pub log: LogConfig,
    /// The first admin token's secret, when it is given rather than generated (`HERD_ADMIN_TOKEN`).
    pub bootstrap_admin_token: Option<String>,
}

/// The MQTT device gateway: where it listens and the broker's limits.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// MQTT over TCP listener address; `None` (an empty `mqtt.listen`) disables MQTT.
    pub listen: Option<SocketAddr>,
    /// MQTT over TLS listener and its certificate; `None` (an empty `mqtt.tls_listen`) disables it.
    pub tls: Option<MqttTlsConfig>,
    /// Most MQTT connections at once, over TCP, TLS and WebSocket together; one more is closed as
    /// soon as it is accepted.
    pub max_connections: usize,
    /// Limits of the broker core.
    pub broker: mqtt_broker::BrokerConfig,
    /// Clients that send neither user name nor password: `None` refuses them
    /// (`mqtt.allow_anonymous = false`); otherwise the rules that bound them (`[mqtt.anonymous]`).
    pub anonymous: Option<Arc<TopicRules>>,
    /// Integration applications (`[[mqtt.applications]]`), names unique.
    pub applications: Vec<Application>,
    /// The device credential cache.
    pub auth_cache: AuthCacheConfig,
    /// Largest agent report (`devices/{id}/facts`, `devices/{id}/heartbeat` payload) recorded, in
    /// bytes (`mqtt.agent_report_max_bytes`); larger ones are ignored and counted.
    pub agent_report_max_bytes: usize,
    /// Zero-touch provisioning over MQTT (the `$provision` bootstrap login, from the
    /// `[provisioning]` section); `None` when `provisioning.mqtt_enabled` is false.
    pub provisioning: Option<MqttProvisioningConfig>,
}

/// Direct commands to devices (`[commands]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandsConfig {
    /// What requests are checked against (`commands.default_timeout_secs`, `max_timeout_secs`,
    /// `max_ttl_secs`, `max_payload_bytes`, `max_result_bytes`, `idempotency_window_secs`).
    pub limits: http_api::CommandLimits,
    /// Most synchronous waits at once (`commands.max_sync_waits`).
    pub max_sync_waits: usize,
    /// How often overdue commands are expired or timed out (`commands.sweep_interval_secs`).
    pub sweep_interval: Duration,
    /// How long ended commands are kept (`commands.retention_days`).
    pub retention: Duration,
}

/// Zero-touch provisioning over MQTT: who may log in as the bootstrap user `$provision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttProvisioningConfig {
    /// SHA-256 of `provisioning.mqtt_bootstrap_password` (or of the content of
    /// `provisioning.mqtt_bootstrap_password_file`); `None` (both empty) accepts any password or
    /// none, the registration proof being what authenticates.
    pub password: Option<TokenHash>,
    /// Most bootstrap clients whose address is remembered for rate limiting
    /// (`provisioning.mqtt_max_bootstrap_clients`); the oldest is forgotten when it is full.
    pub max_tracked_clients: usize,
}

/// Device twins (`[twin]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinConfig {
    /// Section size and depth limits and history kept per device (`twin.max_section_bytes`,
    /// `twin.max_depth`, `twin.history_per_device`).
    pub policy: domain::TwinPolicy,
    /// Largest MQTT twin request a device may publish (`twin.max_request_bytes`).
    pub max_request_bytes: usize,
    /// How often the recompute task drains the recompute queue when nothing wakes it
    /// (`twin.recompute_interval_ms`).
    pub recompute_interval: Duration,
    /// Most devices recomputed per store call (`twin.recompute_batch`).
    pub recompute_batch: NonZeroU32,
}

/// Device certificates (`[identity]`): which CA signs them and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Where the CA comes from.
    pub ca: CaSource,
    /// Lifetime of the device certificates Herd issues (`identity.certificate_lifetime_days`).
    pub certificate_lifetime: Duration,
    /// How many usable certificates, and how many usable credentials, a device may hold when it
    /// asks for a new one over MQTT (`identity.max_credentials_per_device`, 1 to 16): two lets it
    /// rotate, holding the old one and the new one.
    pub max_credentials_per_device: usize,
    /// How often the TLS listener re-reads the CA certificates of X.509 enrollment groups it
    /// trusts besides the device CA (`identity.trust_refresh_secs`, 1 to 3600).
    pub trust_refresh: Duration,
    /// The master key sealing enrollment secrets (`identity.master_key_file`, default
    /// `<data_dir>/identity/master.key`), created on first start.
    pub master_key_file: PathBuf,
}

/// Where the device CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Herd's own CA in this directory (`<data_dir>/ca`), created on first start.
    Internal {
        /// The directory holding `ca.pem` and `ca.key`.
        dir: PathBuf,
    },
    /// An external CA (`identity.ca_cert_file` and `identity.ca_key_file`).
    External {
        /// PEM file of the CA certificate.
        cert_file: PathBuf,
        /// PEM file of the CA private key, readable only by its owner.
        key_file: PathBuf,
    },
}

/// The cache of successful device credential lookups (`mqtt.auth_cache_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthCacheConfig {
    /// Most cached credentials; the oldest goes when it is full. 0 disables the cache.
    pub entries: usize,
    /// Longest time a credential stays cached (it never outlives the credential's expiry, and a
    /// revocation, suspension or deletion drops it at once).
    pub ttl: Duration,
}

/// The MQTT over TLS listener: its address and the server certificate it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTlsConfig {
    /// Listen address (`mqtt.tls_listen`).
    pub listen: SocketAddr,
    /// PEM file with the server certificate chain, leaf first (`mqtt.tls_cert_file`).
    pub cert_file: PathBuf,
    /// PEM file with the server's private key (`mqtt.tls_key_file`), readable only by its owner.
    pub key_file: PathBuf,
}

/// Which backend stores Herd's state, and its settings.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Embedded SQLite.
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// Durability level.
        synchronous: store_sqlite::Synchronous,
        /// Reader connections.
        readers: u32,
    },
    /// PostgreSQL.
    Postgres {
        /// Connection URL (may hold a password: never logged whole).
        url: String,
        /// Pool size.
        max_connections: u32,
    },
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Log settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Filter directives.
    pub level: String,
}

/// Every problem found in the configuration, reported together.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The layers a configuration is built from, lowest precedence first after the defaults.
#[derive(Debug, Default)]
pub struct Sources {
    /// Path of a TOML file (`--config`).
    pub file: Option<PathBuf>,
    /// Environment variables (name, value); only `HERD_SECTION__KEY` names are configuration.
    pub env: Vec<(String, String)>,
    /// Values from flags, as (section, key, value).
    pub flags: Vec<(&'static str, &'static str, Value)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    http: RawHttp,
    store: RawStore,
    mqtt: RawMqtt,
    identity: RawIdentity,
    provisioning: RawProvisioning,
    commands: RawCommands,
    twin: RawTwin,
    jobs: RawJobs,
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommands {
    default_timeout_secs: u64,
    max_timeout_secs: u64,
    max_ttl_secs: u64,
    max_payload_bytes: u64,
    max_result_bytes: u64,
    max_sync_waits: u64,
    sweep_interval_secs: u64,
    retention_days: u64,
    idempotency_window_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwin {
    max_section_bytes: u64,
    max_depth: u64,
    history_per_device: u64,
    max_request_bytes: u64,
    recompute_interval_ms: u64,
    recompute_batch: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    tick_ms: u64,
    continuous_sync_secs: u64,
    max_starts_per_tick: u64,
    max_jobs_per_tick: u64,
    timeout_batch: u64,
    max_request_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvisioning {
    max_proof_lifetime_secs: u64,
    max_failures_per_minute: u64,
    max_tracked_clients: u64,
    max_claim_codes_per_request: u64,
    mqtt_enabled: bool,
    mqtt_bootstrap_password: String,
    mqtt_bootstrap_password_file: String,
    mqtt_max_bootstrap_clients: u64,
    max_derived_keys_per_request: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    ca_cert_file: String,
    ca_key_file: String,
    certificate_lifetime_days: u64,
    max_credentials_per_device: u64,
    trust_refresh_secs: u64,
    master_key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    data_dir: PathBuf,
    shutdown_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    max_body_bytes: u64,
    max_import_bytes: u64,
    import_batch_size: u64,
    max_atomic_import_rows: u64,
    max_attributes_bytes: u64,
    default_page_size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: String,
    sqlite_synchronous: String,
    sqlite_readers: u64,
    postgres_max_connections: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    listen: String,
    tls_listen: String,
    tls_cert_file: String,
    tls_key_file: String,
    max_connections: u64,
    connect_timeout_secs: u64,
    max_packet_size: u64,
    max_keep_alive_secs: u64,
    receive_maximum: u64,
    max_inflight: u64,
    max_queued_messages: u64,
    max_subscriptions_per_session: u64,
    max_session_expiry_secs: u64,
    max_retained_messages: u64,
    outbound_buffer_bytes: u64,
    connection_queue_messages: u64,
    session_store_queue: u64,
    outbound_topic_aliases: u64,
    publish_rate_per_sec: f64,
    publish_burst: u64,
    allow_anonymous: bool,
    auth_cache_entries: u64,
    auth_cache_ttl_secs: u64,
    agent_report_max_bytes: u64,
    /// Each entry is deserialized on its own, so that every broken application is reported.
    applications: Vec<Value>,
    anonymous: RawTopicRules,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopicRules {
    publish: Vec<String>,
    subscribe: Vec<String>,
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: String,
    secret_sha256: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: String,
    level: String,
}

/// Builds and validates the configuration from its layers.
///
/// # Errors
/// [`ConfigErrors`] listing every problem: unreadable file, unknown keys, wrong types, invalid values.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let defaults: Table =
        DEFAULT_CONFIG.parse().expect("the embedded default configuration is valid TOML");
    let mut merged = defaults.clone();

    if let Some(path) = &sources.file {
        match std::fs::read_to_string(path) {
            Ok(text) => match text.parse::<Table>() {
                Ok(table) => overlay(
                    &defaults,
                    &mut merged,
                    &table,
                    &format!("{}", path.display()),
                    &mut problems,
                ),
                Err(e) => {
                    problems.push(format!("{}: not valid TOML: {}", path.display(), e.message()))
                }
            },
            Err(e) => problems.push(format!("cannot read config file {}: {e}", path.display())),
        }
    }

    let mut env_table = Table::new();
    let mut env_names = Vec::new();
    for (name, value) in &sources.env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let Some((section, key)) = rest.split_once("__") else { continue };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        env_names.push(name.clone());
        let section_table =
            env_table.entry(section).or_insert_with(|| Value::Table(Table::new())).as_table_mut();
        if let Some(t) = section_table {
            t.insert(key, env_value(value));
        }
    }
    overlay(&defaults, &mut merged, &env_table, "environment (HERD_SECTION__KEY)", &mut problems);

    let mut flag_table = Table::new();
    for (section, key, value) in &sources.flags {
        if let Some(t) =
            flag_table.entry(*section).or_insert_with(|| Value::Table(Table::new())).as_table_mut()
        {
            t.insert((*key).to_owned(), value.clone());
        }
    }
    overlay(&defaults, &mut merged, &flag_table, "flags", &mut problems);

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let raw: RawConfig = match RawConfig::deserialize(Value::Table(merged)) {
        Ok(raw) => raw,
        Err(e) => return Err(ConfigErrors(vec![e.to_string()])),
    };
    let admin = sources.env.iter().find(|(n, _)| n == "HERD_ADMIN_TOKEN").map(|(_, v)| v.clone());
    let admin_file = sources
        .env
        .iter()
        .find(|(n, _)| n == "HERD_ADMIN_TOKEN_FILE")
        .map(|(_, v)| PathBuf::from(v));
    validate(raw, admin, admin_file.as_deref())
}

/// Reads an environment value as TOML (numbers, booleans) and falls back to a plain string.
fn env_value(text: &str) -> Value {
    match format!("v = {text}").parse::<Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (Value::Integer(_) | Value::Boolean(_) | Value::Float(_) | Value::String(_)),
            ) => v,
            _ => Value::String(text.to_owned()),
        },
        Err(_) => Value::String(text.to_owned()),
    }
}

/// Lays `layer` over `merged`, accepting only keys the defaults have, with the defaults' types.
fn overlay(
    defaults: &Table,
    merged: &mut Table,
    layer: &Table,
    origin: &str,
    problems: &mut Vec<String>,
) {
    for (section, value) in layer {
        let Some(default_section) = defaults.get(section).and_then(Value::as_table) else {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            problems.push(format!(
                "{origin}: unknown section [{section}] (sections are {})",
                known.join(", ")
            ));
            continue;
        };
        let Some(table) = value.as_table() else {
            problems.push(format!("{origin}: [{section}] must be a table"));
            continue;
        };
        if let Some(t) = merged.get_mut(section).and_then(Value::as_table_mut) {
            overlay_keys(default_section, t, table, section, origin, problems);
        }
    }
}

/// Lays the keys of `layer` over `merged`, the table at `path` (`mqtt`, `mqtt.anonymous`), whose
/// defaults are `defaults`. A table inside is merged key by key in turn, so a file may set one key
/// of `[mqtt.anonymous]` and keep the defaults of the others.
fn overlay_keys(
    defaults: &Table,
    merged: &mut Table,
    layer: &Table,
    path: &str,
    origin: &str,
    problems: &mut Vec<String>,
) {
    for (key, v) in layer {
        let Some(default) = defaults.get(key) else {
            problems.push(format!("{origin}: unknown key {path}.{key}"));
            continue;
        };
        let v = match (default, v) {
            (Value::Table(default), Value::Table(layer)) => {
                if let Some(t) = merged.get_mut(key).and_then(Value::as_table_mut) {
                    overlay_keys(default, t, layer, &format!("{path}.{key}"), origin, problems);
                }
                continue;
            }
            // An integer key set from the environment as a string that is not a number.
            (Value::Integer(_), Value::String(s)) => match s.parse::<i64>() {
                Ok(i) => Value::Integer(i),
                Err(_) => {
                    problems.push(format!("{origin}: {path}.{key} must be an integer, got {s:?}"));
                    continue;
                }
            },
            // A string key whose environment value happened to look like a number.
            (Value::String(_), Value::Integer(i)) => Value::String(i.to_string()),
            (d, v) if d.type_str() == v.type_str() => v.clone(),
            (d, v) => {
                problems.push(format!(
                    "{origin}: {path}.{key} must be a {}, got a {}",
                    d.type_str(),
                    v.type_str()
                ));
                continue;
            }
        };
        merged.insert(key.clone(), v);
    }
}

fn validate(
    raw: RawConfig,
    admin: Option<String>,
    admin_file: Option<&Path>,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let mut positive = |what: &str, v: u64, max: u64| -> u64 {
        if v == 0 || v > max {
            problems.push(format!("{what} must be between 1 and {max}, got {v}"));
            1
        } else {
            v
        }
    };
    let shutdown_timeout = Duration::from_secs(positive(
        "server.shutdown_timeout_secs",
        raw.server.shutdown_timeout_secs,
        3600,
    ));
    let max_body_bytes = positive("http.max_body_bytes", raw.http.max_body_bytes, 1 << 30);
    let max_import_bytes = positive("http.max_import_bytes", raw.http.max_import_bytes, 1 << 40);
    let import_batch_size = positive("http.import_batch_size", raw.http.import_batch_size, 100_000);
    let max_atomic_import_rows =
        positive("http.max_atomic_import_rows", raw.http.max_atomic_import_rows, 100_000_000);
    let max_attributes_bytes =
        positive("http.max_attributes_bytes", raw.http.max_attributes_bytes, 1 << 24);
    let default_page_size = positive("http.default_page_size", raw.http.default_page_size, 1000);
    let p = &raw.provisioning;
    let max_proof_lifetime_secs =
        positive("provisioning.max_proof_lifetime_secs", p.max_proof_lifetime_secs, 86_400);
    let max_failures_per_minute =
        positive("provisioning.max_failures_per_minute", p.max_failures_per_minute, 1_000_000);
    let max_tracked_clients =
        positive("provisioning.max_tracked_clients", p.max_tracked_clients, 10_000_000);
    let max_claim_codes_per_request = positive(
        "provisioning.max_claim_codes_per_request",
        p.max_claim_codes_per_request,
        100_000,
    );
    let max_derived_keys_per_request = positive(
        "provisioning.max_derived_keys_per_request",
        p.max_derived_keys_per_request,
        100_000,
    );
    let c = &raw.commands;
    let max_timeout_secs = positive("commands.max_timeout_secs", c.max_timeout_secs, 86_400);
    let default_timeout_secs =
        positive("commands.default_timeout_secs", c.default_timeout_secs, max_timeout_secs);
    let max_payload_bytes = positive("commands.max_payload_bytes", c.max_payload_bytes, 1 << 20);
    let max_result_bytes = positive("commands.max_result_bytes", c.max_result_bytes, 1 << 20);
    let max_sync_waits = positive("commands.max_sync_waits", c.max_sync_waits, 1_000_000);
    let sweep_interval_secs = positive("commands.sweep_interval_secs", c.sweep_interval_secs, 3600);
    let retention_days = positive("commands.retention_days", c.retention_days, 3650);
    let idempotency_window_secs =
        positive("commands.idempotency_window_secs", c.idempotency_window_secs, 604_800);
    // Checked below, once `positive` no longer borrows `problems`.
    let max_ttl_secs = c.max_ttl_secs.min(31_536_000);
    let commands = CommandsConfig {
        limits: http_api::CommandLimits {
            default_timeout_secs: default_timeout_secs as u32,
            max_timeout_secs: max_timeout_secs as u32,
            max_ttl_secs: max_ttl_secs as u32,
            max_payload_bytes: max_payload_bytes as usize,
            max_result_bytes: max_result_bytes as usize,
            idempotency_window_secs: idempotency_window_secs as u32,
        },
        max_sync_waits: max_sync_waits as usize,
        sweep_interval: Duration::from_secs(sweep_interval_secs),
        retention: Duration::from_secs(retention_days * 86_400),
    };
    let sqlite_readers = positive("store.sqlite_readers", raw.store.sqlite_readers, 64);
    let postgres_max_connections =
        positive("store.postgres_max_connections", raw.store.postgres_max_connections, 1000);

    if raw.commands.max_ttl_secs > 31_536_000 {
        problems.push(format!(
            "commands.max_ttl_secs must be between 0 and 31536000, got {}",
            raw.commands.max_ttl_secs
        ));
    }
    let mut mqtt = validate_mqtt(&raw.mqtt, &mut problems);
    mqtt.provisioning = validate_mqtt_provisioning(&raw.provisioning, &mut problems);
    let identity = validate_identity(&raw.identity, &raw.server.data_dir, &mut problems);
    let twin = validate_twin(&raw.twin, &mut problems);
    let j = &raw.jobs;
    let tick_ms = j.tick_ms;
    if !(10..=60_000).contains(&tick_ms) {
        problems.push(format!("jobs.tick_ms must be between 10 and 60000, got {tick_ms}"));
    }
    let mut positive = |what: &str, v: u64, max: u64| -> u64 {
        if v == 0 || v > max {
            problems.push(format!("{what} must be between 1 and {max}, got {v}"));
            1
        } else {
            v
        }
    };
    let jobs = crate::jobs::JobsConfig {
        tick: Duration::from_millis(tick_ms.clamp(10, 60_000)),
        continuous_sync: Duration::from_secs(positive(
            "jobs.continuous_sync_secs",
            j.continuous_sync_secs,
            3600,
        )),
        max_starts_per_tick: positive("jobs.max_starts_per_tick", j.max_starts_per_tick, 100_000)
            as u32,
        max_jobs_per_tick: nonzero_u32(positive(
            "jobs.max_jobs_per_tick",
            j.max_jobs_per_tick,
            10_000,
        )),
        timeout_batch: nonzero_u32(positive("jobs.timeout_batch", j.timeout_batch, 100_000)),
        max_request_bytes: positive("jobs.max_request_bytes", j.max_request_bytes, 1_048_576)
            as usize,
    };

    let http_listen = match raw.http.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            problems.push(format!(
                "http.listen: {:?} is not an address like 127.0.0.1:8080 (flag --http-listen, env HERD_HTTP__LISTEN)",
                raw.http.listen
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };

    let synchronous = match raw.store.sqlite_synchronous.as_str() {
        "normal" => store_sqlite::Synchronous::Normal,
        "full" => store_sqlite::Synchronous::Full,
        other => {
            problems.push(format!(
                "store.sqlite_synchronous must be \"normal\" or \"full\", got {other:?}"
            ));
            store_sqlite::Synchronous::Normal
        }
    };
    let store = if raw.store.url.is_empty() {
        StoreConfig::Sqlite {
            path: raw.server.data_dir.join("herd.db"),
            synchronous,
            readers: sqlite_readers as u32,
        }
    } else if let Some(path) = raw.store.url.strip_prefix("sqlite://") {
        if path.is_empty() {
            problems.push(
                "store.url: sqlite:// needs a file path, e.g. sqlite://./herd-data/herd.db"
                    .to_owned(),
            );
        }
        StoreConfig::Sqlite {
            path: PathBuf::from(path),
            synchronous,
            readers: sqlite_readers as u32,
        }
    } else if raw.store.url.starts_with("postgres://") || raw.store.url.starts_with("postgresql://")
    {
        StoreConfig::Postgres {
            url: raw.store.url.clone(),
            max_connections: postgres_max_connections as u32,
        }
    } else {
        problems.push(format!(
            "store.url must start with sqlite:// or postgres://, got {:?} (flag --database-url)",
            redact_url(&raw.store.url)
        ));
        StoreConfig::Sqlite { path: raw.server.data_dir.join("herd.db"), synchronous, readers: 1 }
    };

    let format = match raw.log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            problems.push(format!(
                "log.format must be \"text\" or \"json\", got {other:?} (flag --log-format)"
            ));
            LogFormat::Text
        }
    };
    if raw.log.level.trim().is_empty() {
        problems.push("log.level must not be empty (e.g. \"info\")".to_owned());
    }

    let bootstrap_admin_token = match (admin, admin_file) {
        (Some(_), Some(_)) => {
            problems.push("set only one of HERD_ADMIN_TOKEN and HERD_ADMIN_TOKEN_FILE".to_owned());
            None
        }
        (Some(t), None) => Some(t),
        (None, Some(path)) => match read_secret_file(path) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        (None, None) => None,
    };
    if let Some(t) = &bootstrap_admin_token
        && (t.len() < 16 || t.len() > 256 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        problems.push(
            "the admin token (HERD_ADMIN_TOKEN) must be 16 to 256 characters without spaces"
                .to_owned(),
        );
    }

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(Config {
        data_dir: raw.server.data_dir,
        shutdown_timeout,
        http_listen,
        api: http_api::ApiConfig {
            max_body_bytes: max_body_bytes as usize,
            max_import_bytes,
            import_batch_size: import_batch_size as usize,
            max_atomic_import_rows: max_atomic_import_rows as usize,
            max_attributes_bytes: max_attributes_bytes as usize,
            default_page_size: default_page_size as u32,
            max_claim_codes_per_request: max_claim_codes_per_request as u32,
            max_derived_keys_per_request: max_derived_keys_per_request as usize,
            provisioning_max_proof_lifetime_secs: max_proof_lifetime_secs,
            provisioning_max_failures_per_minute: max_failures_per_minute as u32,
            provisioning_max_tracked_clients: max_tracked_clients as usize,
        },
        store,
        mqtt,
        identity,
        commands,
        twin,
        jobs,
        log: LogConfig { format, level: raw.log.level },
        bootstrap_admin_token,
    })
}

/// Validates the `[mqtt]` section, adding what is wrong to `problems`.
fn validate_mqtt(raw: &RawMqtt, problems: &mut Vec<String>) -> MqttConfig {
    let listen = if raw.listen.trim().is_empty() {
        None
    } else if let Ok(a) = raw.listen.parse::<SocketAddr>() {
        Some(a)
    } else {
        problems.push(format!(
            "mqtt.listen: {:?} is not an address like 127.0.0.1:1883, nor empty to disable MQTT \
             (flag --mqtt-listen, env HERD_MQTT__LISTEN)",
            raw.listen
        ));
        None
    };
    let tls = validate_mqtt_tls(raw, problems);
    let mut range = |what: &str, v: u64, min: u64, max: u64| -> u64 {
        if (min..=max).contains(&v) {
            v
        } else {
            problems.push(format!("{what} must be between {min} and {max}, got {v}"));
            min.max(1)
        }
    };
    let max_connections = range("mqtt.max_connections", raw.max_connections, 1, 1_000_000);
    let connect_timeout = range("mqtt.connect_timeout_secs", raw.connect_timeout_secs, 1, 3600);
    let max_packet_size = range(
        "mqtt.max_packet_size",
        raw.max_packet_size,
        64,
        u64::from(mqtt_codec::MAX_PACKET_SIZE),
    );
    let max_keep_alive = range("mqtt.max_keep_alive_secs", raw.max_keep_alive_secs, 0, 65_535);
    let receive_maximum = range("mqtt.receive_maximum", raw.receive_maximum, 1, 65_535);
    let max_inflight = range("mqtt.max_inflight", raw.max_inflight, 1, 65_535);
    let max_queued_messages =
        range("mqtt.max_queued_messages", raw.max_queued_messages, 0, 10_000_000);
    let max_subscriptions =
        range("mqtt.max_subscriptions_per_session", raw.max_subscriptions_per_session, 1, 100_000);
    let max_session_expiry =
        range("mqtt.max_session_expiry_secs", raw.max_session_expiry_secs, 0, u64::from(u32::MAX));
    let max_retained =
        range("mqtt.max_retained_messages", raw.max_retained_messages, 0, 100_000_000);
    let outbound_buffer =
        range("mqtt.outbound_buffer_bytes", raw.outbound_buffer_bytes, 1024, 1 << 30);
    let connection_queue =
        range("mqtt.connection_queue_messages", raw.connection_queue_messages, 1, 1_000_000);
    let session_store_queue =
        range("mqtt.session_store_queue", raw.session_store_queue, 1, 1_000_000);
    let outbound_aliases =
        range("mqtt.outbound_topic_aliases", raw.outbound_topic_aliases, 0, 65_535);
    let publish_burst = range("mqtt.publish_burst", raw.publish_burst, 1, 1_000_000);
    let rate = raw.publish_rate_per_sec;
    let rate_problem = (!rate.is_finite() || rate < 0.0).then(|| {
        format!(
            "mqtt.publish_rate_per_sec must be a number of messages per second, 0 or more (0: no \
             limit), got {rate}"
        )
    });
    let publish_rate = if rate_problem.is_some() || rate == 0.0 {
        None
    } else {
        Some(mqtt_broker::PublishRate {
            per_second: raw.publish_rate_per_sec,
            burst: u32::try_from(publish_burst).unwrap_or(u32::MAX),
        })
    };

    let broker = mqtt_broker::BrokerConfig {
        connect_timeout: Duration::from_secs(connect_timeout),
        max_keep_alive: u16::try_from(max_keep_alive).unwrap_or(u16::MAX),
        max_packet_size: nonzero_u32(max_packet_size),
        receive_maximum: nonzero_u16(receive_maximum),
        max_inflight: nonzero_u16(max_inflight),
        max_queued_messages: max_queued_messages as usize,
        max_subscriptions_per_session: max_subscriptions as usize,
        max_session_expiry: u32::try_from(max_session_expiry).unwrap_or(u32::MAX),
        max_retained_messages: max_retained as usize,
        outbound_buffer_high_water: outbound_buffer as usize,
        connection_channel_capacity: nonzero_usize(connection_queue),
        session_store_queue_capacity: nonzero_usize(session_store_queue),
        outbound_topic_aliases: u16::try_from(outbound_aliases).unwrap_or(u16::MAX),
        publish_rate,
        ..mqtt_broker::BrokerConfig::default()
    };
    let auth_cache_entries =
        range("mqtt.auth_cache_entries", raw.auth_cache_entries, 0, 10_000_000);
    let auth_cache_ttl = range("mqtt.auth_cache_ttl_secs", raw.auth_cache_ttl_secs, 1, 86_400);
    let agent_report_max_bytes =
        range("mqtt.agent_report_max_bytes", raw.agent_report_max_bytes, 2, 1 << 24);
    problems.extend(rate_problem);
    let auth_cache = AuthCacheConfig {
        entries: auth_cache_entries as usize,
        ttl: Duration::from_secs(auth_cache_ttl),
    };
    let anonymous = match TopicRules::new(
        &raw.anonymous.publish,
        &raw.anonymous.subscribe,
        &raw.anonymous.deny,
    ) {
        Ok(rules) => raw.allow_anonymous.then(|| Arc::new(rules)),
        Err(errors) => {
            problems.extend(errors.into_iter().map(|e| format!("mqtt.anonymous.{e}")));
            None
        }
    };
    let applications = validate_applications(&raw.applications, problems);
    MqttConfig {
        listen,
        tls,
        max_connections: max_connections as usize,
        broker,
        anonymous,
        applications,
        auth_cache,
        agent_report_max_bytes: agent_report_max_bytes as usize,
        provisioning: None,
    }
}

/// Validates the MQTT settings of `[provisioning]`, adding what is wrong to `problems`; `None`
/// when provisioning over MQTT is off.
fn validate_mqtt_provisioning(
    raw: &RawProvisioning,
    problems: &mut Vec<String>,
) -> Option<MqttProvisioningConfig> {
    let max = raw.mqtt_max_bootstrap_clients;
    if !(1..=10_000_000).contains(&max) {
        problems.push(format!(
            "provisioning.mqtt_max_bootstrap_clients must be between 1 and 10000000, got {max}"
        ));
    }
    let password =
        match (raw.mqtt_bootstrap_password.as_str(), raw.mqtt_bootstrap_password_file.trim()) {
            ("", "") => None,
            (password, "") => Some(TokenHash::of_secret(password)),
            ("", path) => match read_secret_file(Path::new(path)) {
                Ok(password) if !password.is_empty() => Some(TokenHash::of_secret(&password)),
                Ok(_) => {
                    problems.push(format!(
                        "provisioning.mqtt_bootstrap_password_file: {path} is empty"
                    ));
                    None
                }
                Err(e) => {
                    problems.push(format!("provisioning.mqtt_bootstrap_password_file: {e}"));
                    None
                }
            },
            (_, _) => {
                problems.push(
                    "set only one of provisioning.mqtt_bootstrap_password and \
                 provisioning.mqtt_bootstrap_password_file"
                        .to_owned(),
                );
                None
            }
        };
    raw.mqtt_enabled.then(|| MqttProvisioningConfig {
        password,
        max_tracked_clients: usize::try_from(max.clamp(1, 10_000_000)).unwrap_or(1),
    })
}

/// Validates `[[mqtt.applications]]`: each entry's keys, name (unique), secret and rules.
fn validate_applications(raw: &[Value], problems: &mut Vec<String>) -> Vec<Application> {
    let mut applications: Vec<Application> = Vec::with_capacity(raw.len());
    let mut names = std::collections::HashSet::new();
    for (i, value) in raw.iter().enumerate() {
        let at = format!("mqtt.applications[{i}]");
        let app = match RawApplication::deserialize(value.clone()) {
            Ok(app) => app,
            Err(e) => {
                problems.push(format!("{at}: {}", e.message()));
                continue;
            }
        };
        let at = format!("{at} ({:?})", app.name);
        let unique = names.insert(app.name.clone());
        if !unique {
            problems.push(format!("{at}: another application has this name"));
        }
        let secret = match (&app.secret_sha256, &app.secret_file) {
            (Some(hex), None) => application_secret_hash(hex),
            (None, Some(path)) => application_secret_file(path),
            (Some(_), Some(_)) => Err("set only one of secret_sha256 and secret_file".to_owned()),
            (None, None) => Err("needs secret_sha256 (see `herd config hash-secret`) or \
                                 secret_file"
                .to_owned()),
        };
        let secret = secret.map_err(|e| problems.push(format!("{at}: {e}"))).ok();
        let rules = TopicRules::new(&app.publish, &app.subscribe, &app.deny)
            .map_err(|errors| problems.extend(errors.into_iter().map(|e| format!("{at}.{e}"))))
            .ok();
        let (Some(secret), Some(rules)) = (secret, rules) else { continue };
        match Application::new(app.name, secret, rules) {
            Ok(application) if unique => applications.push(application),
            Ok(_) => {}
            Err(e) => problems.push(format!("mqtt.applications[{i}]: {e}")),
        }
    }
    applications
}

/// An application's `secret_sha256`: 64 hex digits.
fn application_secret_hash(hex: &str) -> Result<TokenHash, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut bytes).map_err(|_| {
        "secret_sha256 must be 64 hex digits, the SHA-256 of the secret (`herd config \
         hash-secret` prints it)"
            .to_owned()
    })?;
    Ok(TokenHash::from_bytes(bytes))
}

/// The hash of the secret in an application's `secret_file`, a file only its owner may read.
fn application_secret_file(path: &Path) -> Result<TokenHash, String> {
    let secret = read_secret_file(path).map_err(|e| format!("secret_file: {e}"))?;
    check_application_secret(&secret)
        .map_err(|e| format!("secret_file {}: {e}", path.display()))?;
    Ok(TokenHash::of_secret(&secret))
}

/// Checks that an application secret can be sent as an MQTT password and is long enough.
///
/// # Errors
/// A message saying what is wrong with it (never the secret itself).
pub fn check_application_secret(secret: &str) -> Result<(), String> {
    if secret.chars().count() < MIN_APPLICATION_SECRET_CHARS {
        return Err(format!(
            "the secret must be at least {MIN_APPLICATION_SECRET_CHARS} characters"
        ));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the secret must not contain spaces or control characters".to_owned());
    }
    Ok(())
}

/// Validates `mqtt.tls_listen`, `mqtt.tls_cert_file` and `mqtt.tls_key_file`: MQTT over TLS is on
/// when the listener or a file is set (on [`DEFAULT_MQTT_TLS_LISTEN`] when only the files are);
/// then both files must be given and readable, and the key file readable only by its owner.
fn validate_mqtt_tls(raw: &RawMqtt, problems: &mut Vec<String>) -> Option<MqttTlsConfig> {
    let files_given = !raw.tls_cert_file.trim().is_empty() || !raw.tls_key_file.trim().is_empty();
    let listen = if raw.tls_listen.trim().is_empty() {
        if !files_given {
            return None;
        }
        Ok(DEFAULT_MQTT_TLS_LISTEN)
    } else {
        raw.tls_listen.parse::<SocketAddr>()
    };
    let listen = match listen {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "mqtt.tls_listen: {:?} is not an address like 127.0.0.1:8883, nor empty (the \
                 default address with a certificate, off without) (flag --mqtts-listen, env \
                 HERD_MQTT__TLS_LISTEN)",
                raw.tls_listen
            ));
            None
        }
    };
    let mut file = |key: &str, value: &str, secret: bool| -> Option<PathBuf> {
        if value.trim().is_empty() {
            problems.push(format!(
                "mqtt.{key} is required for MQTT over TLS (mqtt.tls_listen or the other file is \
                 set; a PEM file; env HERD_MQTT__{})",
                key.to_ascii_uppercase()
            ));
            return None;
        }
        let path = PathBuf::from(value);
        let checked = if secret {
            check_secret_file(&path)
        } else {
            std::fs::File::open(&path)
                .map(drop)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        match checked {
            Ok(()) => Some(path),
            Err(e) => {
                problems.push(format!("mqtt.{key}: {e}"));
                None
            }
        }
    };
    let cert_file = file("tls_cert_file", &raw.tls_cert_file, false);
    let key_file = file("tls_key_file", &raw.tls_key_file, true);
    Some(MqttTlsConfig { listen: listen?, cert_file: cert_file?, key_file: key_file? })
}

/// Validates `[twin]`, adding what is wrong to `problems`.
fn validate_twin(raw: &RawTwin, problems: &mut Vec<String>) -> TwinConfig {
    let mut within = |key: &str, value: u64, min: u64, max: u64| -> u64 {
        if !(min..=max).contains(&value) {
            problems.push(format!("twin.{key} must be between {min} and {max}, got {value}"));
        }
        value.clamp(min, max)
    };
    let max_section_bytes = within("max_section_bytes", raw.max_section_bytes, 1024, 1 << 20);
    let max_depth = within("max_depth", raw.max_depth, 1, 32);
    let history_per_device = within("history_per_device", raw.history_per_device, 1, 10_000);
    let max_request_bytes = within("max_request_bytes", raw.max_request_bytes, 1024, 1 << 20);
    let recompute_interval_ms =
        within("recompute_interval_ms", raw.recompute_interval_ms, 10, 60_000);
    let recompute_batch = within("recompute_batch", raw.recompute_batch, 1, 10_000);
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    TwinConfig {
        policy: domain::TwinPolicy {
            limits: domain::TwinLimits {
                max_section_bytes: size(max_section_bytes),
                max_depth: size(max_depth),
            },
            history_per_device: u32::try_from(history_per_device).unwrap_or(100),
        },
        max_request_bytes: size(max_request_bytes),
        recompute_interval: Duration::from_millis(recompute_interval_ms),
        recompute_batch: nonzero_u32(recompute_batch),
    }
}

/// Validates `[identity]`: an external CA needs both files, readable, the key only by its owner.
fn validate_identity(
    raw: &RawIdentity,
    data_dir: &Path,
    problems: &mut Vec<String>,
) -> IdentityConfig {
    let days = raw.certificate_lifetime_days;
    if !(1..=3650).contains(&days) {
        problems.push(format!(
            "identity.certificate_lifetime_days must be between 1 and 3650, got {days}"
        ));
    }
    let certificate_lifetime = Duration::from_secs(days.clamp(1, 3650) * 86_400);
    let internal = CaSource::Internal { dir: data_dir.join("ca") };
    let (cert, key) = (raw.ca_cert_file.trim(), raw.ca_key_file.trim());
    let ca = match (cert.is_empty(), key.is_empty()) {
        (true, true) => internal,
        (false, true) | (true, false) => {
            let missing = if cert.is_empty() { "ca_cert_file" } else { "ca_key_file" };
            problems.push(format!(
                "identity.{missing} is required for an external CA (the other file is set; set \
                 both or neither; env HERD_IDENTITY__{})",
                missing.to_ascii_uppercase()
            ));
            internal
        }
        (false, false) => {
            let (cert_file, key_file) = (PathBuf::from(cert), PathBuf::from(key));
            if let Err(e) = std::fs::File::open(&cert_file) {
                problems.push(format!(
                    "identity.ca_cert_file: cannot read {}: {e}",
                    cert_file.display()
                ));
            }
            if let Err(e) = check_secret_file(&key_file) {
                problems.push(format!("identity.ca_key_file: {e}"));
            }
            CaSource::External { cert_file, key_file }
        }
    };
    let max = raw.max_credentials_per_device;
    if !(1..=16).contains(&max) {
        problems.push(format!(
            "identity.max_credentials_per_device must be between 1 and 16, got {max}"
        ));
    }
    let max_credentials_per_device = usize::try_from(max.clamp(1, 16)).unwrap_or(2);
    let master_key_file = match raw.master_key_file.trim() {
        "" => data_dir.join("identity").join("master.key"),
        path => PathBuf::from(path),
    };
    let refresh = raw.trust_refresh_secs;
    if !(1..=3600).contains(&refresh) {
        problems
            .push(format!("identity.trust_refresh_secs must be between 1 and 3600, got {refresh}"));
    }
    let trust_refresh = Duration::from_secs(refresh.clamp(1, 3600));
    IdentityConfig {
        ca,
        certificate_lifetime,
        max_credentials_per_device,
        trust_refresh,
        master_key_file,
    }
}

/// `v`, already checked to be between 1 and `u32::MAX`.
fn nonzero_u32(v: u64) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(v).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

/// `v`, already checked to be at least 1.
fn nonzero_usize(v: u64) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(usize::try_from(v).unwrap_or(usize::MAX))
        .unwrap_or(std::num::NonZeroUsize::MIN)
}

/// `v`, already checked to be between 1 and `u16::MAX`.
fn nonzero_u16(v: u64) -> NonZeroU16 {
    NonZeroU16::new(u16::try_from(v).unwrap_or(u16::MAX)).unwrap_or(NonZeroU16::MIN)
}

/// Checks that a secret file exists, is readable, and only its owner may read it.
fn check_secret_file(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{} is readable by other users; run chmod 600 on it",
                path.display()
            ));
        }
    }
    std::fs::File::open(path).map(drop).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Reads a secret from a file that only its owner may read.
fn read_secret_file(path: &Path) -> Result<String, String> {
    check_secret_file(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// A URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn default_config_parses_and_validates() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./herd-data"));
        assert!(matches!(c.store, StoreConfig::Sqlite { .. }));
    }

    #[test]
    fn env_and_flags_override_in_order() {
        let sources = Sources {
            file: None,
            env: env(&[
                ("HERD_HTTP__LISTEN", "127.0.0.1:9000"),
                ("HERD_HTTP__MAX_BODY_BYTES", "2048"),
                ("HERD_URL", "x"),
            ]),
            flags: vec![("server", "data_dir", Value::String("/tmp/x".into()))],
        };
        let c = load(&sources).unwrap();
        assert_eq!(c.http_listen.port(), 9000);
        assert_eq!(c.api.max_body_bytes, 2048);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let sources = Sources {
            env: env(&[("HERD_HTTP__LISTEN", "127.0.0.1:9000")]),
            flags: vec![("http", "listen", Value::String("127.0.0.1:9001".into()))],
            ..Sources::default()
        };
        assert_eq!(load(&sources).unwrap().http_listen.port(), 9001);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herd.toml");
        std::fs::write(
            &file,
            "[http]\nlisten = \"nowhere\"\nbogus = 1\n[log]\nformat = \"xml\"\n[nope]\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(file),
            env: env(&[("HERD_HTTP__MAX_BODY_BYTES", "lots"), ("HERD_STORE__URL", "mysql://x")]),
            flags: vec![],
        };
        let err = load(&sources).unwrap_err().to_string();
        for needle in [
            "unknown key http.bogus",
            "unknown section [nope]",
            "http.max_body_bytes must be an integer",
        ] {
            assert!(err.contains(needle), "{needle} missing in {err}");
        }
        // Type problems stop before value validation; fix them and the value problems show, all together.
        std::fs::write(
            dir.path().join("herd.toml"),
            "[http]\nlisten = \"nowhere\"\n[log]\nformat = \"xml\"\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(dir.path().join("herd.toml")),
            env: env(&[("HERD_STORE__URL", "mysql://x"), ("HERD_HTTP__DEFAULT_PAGE_SIZE", "0")]),
            flags: vec![],
        };
        let err = load(&sources).unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn command_limits_have_defaults_and_are_checked() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(c.commands.limits, http_api::CommandLimits::default());
        assert_eq!(c.commands.max_sync_waits, 1000);
        assert_eq!(c.commands.sweep_interval, Duration::from_secs(1));
        assert_eq!(c.commands.retention, Duration::from_secs(30 * 86_400));
        let sources = Sources {
            env: env(&[
                ("HERD_COMMANDS__MAX_TIMEOUT_SECS", "10"),
                ("HERD_COMMANDS__MAX_TTL_SECS", "0"),
                ("HERD_COMMANDS__MAX_SYNC_WAITS", "5"),
            ]),
            ..Sources::default()
        };
        // The default timeout (30) is above the new maximum.
        let err = load(&sources).unwrap_err().to_string();
        assert!(err.contains("commands.default_timeout_secs must be between 1 and 10"), "{err}");
        let sources = Sources {
            env: env(&[
                ("HERD_COMMANDS__DEFAULT_TIMEOUT_SECS", "5"),
                ("HERD_COMMANDS__MAX_TIMEOUT_SECS", "10"),
                ("HERD_COMMANDS__MAX_TTL_SECS", "0"),
                ("HERD_COMMANDS__SWEEP_INTERVAL_SECS", "0"),
                ("HERD_COMMANDS__RETENTION_DAYS", "4000"),
            ]),
            ..Sources::default()
        };
        let err = load(&sources).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        let sources = Sources {
            env: env(&[
                ("HERD_COMMANDS__MAX_TTL_SECS", "0"),
                ("HERD_COMMANDS__MAX_SYNC_WAITS", "5"),
            ]),
            ..Sources::default()
        };
        let c = load(&sources).unwrap();
        assert_eq!((c.commands.limits.max_ttl_secs, c.commands.max_sync_waits), (0, 5));
    }

    #[test]
    fn mqtt_is_off_by_default_and_configurable() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(c.mqtt.listen, None);
        assert_eq!(c.mqtt.broker.max_packet_size.get(), 1_048_576);
        let sources = Sources {
            env: env(&[("HERD_MQTT__LISTEN", "127.0.0.1:1883"), ("HERD_MQTT__MAX_INFLIGHT", "8")]),
            flags: vec![("mqtt", "max_connections", Value::Integer(5))],
            ..Sources::default()
        };
        let c = load(&sources).unwrap();
        assert_eq!(c.mqtt.listen, Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(c.mqtt.broker.max_inflight.get(), 8);
        assert_eq!(c.mqtt.max_connections, 5);
        let sources = Sources {
            env: env(&[
                ("HERD_MQTT__LISTEN", "port 1883"),
                ("HERD_MQTT__MAX_CONNECTIONS", "0"),
                ("HERD_MQTT__MAX_PACKET_SIZE", "10"),
                ("HERD_MQTT__MAX_KEEP_ALIVE_SECS", "70000"),
            ]),
            ..Sources::default()
        };
        let err = load(&sources).unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(err.to_string().contains("--mqtt-listen"), "{err}");
    }

    #[test]
    fn mqtt_tls_needs_readable_files_and_a_private_key() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(c.mqtt.tls, None);
        // Every problem at once: bad address, missing certificate, missing key.
        let sources =
            Sources { env: env(&[("HERD_MQTT__TLS_LISTEN", "port 8883")]), ..Sources::default() };
        let err = load(&sources).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        let text = err.to_string();
        for needle in
            ["--mqtts-listen", "mqtt.tls_cert_file is required", "mqtt.tls_key_file is required"]
        {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        let files = |listen: &str| Sources {
            env: env(&[
                ("HERD_MQTT__TLS_LISTEN", listen),
                ("HERD_MQTT__TLS_CERT_FILE", &cert.display().to_string()),
                ("HERD_MQTT__TLS_KEY_FILE", &key.display().to_string()),
            ]),
            ..Sources::default()
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load(&files("127.0.0.1:8883")).unwrap_err().to_string();
            assert!(err.contains("mqtt.tls_key_file") && err.contains("chmod 600"), "{err}");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let c = load(&files("127.0.0.1:8883")).unwrap();
        let tls = c.mqtt.tls.unwrap();
        assert_eq!(tls.listen, "127.0.0.1:8883".parse().unwrap());
        assert_eq!((tls.cert_file, tls.key_file), (cert.clone(), key.clone()));
        // A certificate and key without an address: the default address.
        let c = load(&files("")).unwrap();
        assert_eq!(c.mqtt.tls.unwrap().listen, DEFAULT_MQTT_TLS_LISTEN);
        assert_eq!(DEFAULT_MQTT_TLS_LISTEN.to_string(), "127.0.0.1:8883");
        // Only one of them: the other is missing.
        let sources = Sources {
            env: env(&[("HERD_MQTT__TLS_CERT_FILE", &cert.display().to_string())]),
            ..Sources::default()
        };
        let err = load(&sources).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("mqtt.tls_key_file is required"), "{err}");
        std::fs::remove_file(&cert).unwrap();
        let err = load(&files("127.0.0.1:8883")).unwrap_err().to_string();
        assert!(err.contains("mqtt.tls_cert_file: cannot read"), "{err}");
    }

    /// Loads `toml` as the configuration file (in `dir`).
    fn load_file(dir: &Path, toml: &str) -> Result<Config, ConfigErrors> {
        let file = dir.join("herd.toml");
        std::fs::write(&file, toml).unwrap();
        load(&Sources { file: Some(file), ..Sources::default() })
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn mqtt_clients_other_than_devices_are_off_by_default() {
        let c = load(&Sources::default()).unwrap();
        assert!(c.mqtt.anonymous.is_none());
        assert!(c.mqtt.applications.is_empty());
        assert_eq!(
            c.mqtt.auth_cache,
            AuthCacheConfig { entries: 10_000, ttl: Duration::from_secs(60) }
        );
        let dir = tempfile::tempdir().unwrap();
        // One key of [mqtt.anonymous] keeps the defaults of the others.
        let c = load_file(
            dir.path(),
            "[mqtt]\nallow_anonymous = true\nauth_cache_entries = 0\n\
             [mqtt.anonymous]\nsubscribe = [\"public/#\"]\n",
        )
        .unwrap();
        let expected = TopicRules::new(&[] as &[&str], &["public/#"], &[]).unwrap();
        assert_eq!(c.mqtt.anonymous.as_deref(), Some(&expected));
        assert_eq!(c.mqtt.auth_cache.entries, 0);
        // Rules without allow_anonymous admit nobody.
        let c = load_file(dir.path(), "[mqtt.anonymous]\nsubscribe = [\"public/#\"]\n").unwrap();
        assert!(c.mqtt.anonymous.is_none());
        let err =
            load_file(dir.path(), "[mqtt]\nauth_cache_ttl_secs = 0\n[mqtt.anonymous]\nbogus = 1\n")
                .unwrap_err();
        assert!(err.to_string().contains("unknown key mqtt.anonymous.bogus"), "{err}");
    }

    #[test]
    fn applications_are_validated_all_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("grafana.secret");
        std::fs::write(&secret, "grafana-secret-0123456789\n").unwrap();
        #[cfg(unix)]
        chmod(&secret, 0o600);
        let hash = hex::encode(TokenHash::of_secret("node-red-secret-0123").as_bytes());
        let toml = format!(
            "[[mqtt.applications]]\nname = \"grafana\"\nsecret_file = {secret:?}\n\
             subscribe = [\"devices/+/telemetry\"]\n\
             [[mqtt.applications]]\nname = \"node-red\"\nsecret_sha256 = \"{hash}\"\n\
             publish = [\"flows/#\"]\ndeny = [\"flows/admin/#\"]\n",
            secret = secret.display().to_string()
        );
        let c = load_file(dir.path(), &toml).unwrap();
        let apps = &c.mqtt.applications;
        assert_eq!(apps.iter().map(Application::name).collect::<Vec<_>>(), ["grafana", "node-red"]);

        let mut broken = String::new();
        for entry in [
            // 1: an unknown key
            "name = \"a\"\nsecret_sha256 = \"{hash}\"\nsecert_file = \"x\"",
            // 2: a name that cannot be a user name
            "name = \"no spaces\"\nsecret_sha256 = \"{hash}\"",
            // 3: no secret
            "name = \"b\"",
            // 4: two secrets
            "name = \"c\"\nsecret_sha256 = \"{hash}\"\nsecret_file = \"{secret}\"",
            // 5: not a hash
            "name = \"d\"\nsecret_sha256 = \"abc\"",
            // 6, 7: two broken filters
            "name = \"e\"\nsecret_sha256 = \"{hash}\"\nsubscribe = [\"a/#/b\", \"$share/g/x\"]",
            // 8: a duplicate name
            "name = \"e\"\nsecret_sha256 = \"{hash}\"",
        ] {
            broken.push_str("[[mqtt.applications]]\n");
            broken.push_str(
                &entry.replace("{hash}", &hash).replace("{secret}", &secret.display().to_string()),
            );
            broken.push('\n');
        }
        // 9: a broken rule of anonymous clients
        broken.push_str("[mqtt.anonymous]\ndeny = [\"x+\"]\n");
        let err = load_file(dir.path(), &broken).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 9, "{text}");
        for needle in [
            "mqtt.applications[0]: unknown field `secert_file`",
            "mqtt.applications[1]: \"no spaces\" is not an application name",
            "mqtt.applications[2] (\"b\"): needs secret_sha256",
            "mqtt.applications[3] (\"c\"): set only one of secret_sha256 and secret_file",
            "mqtt.applications[4] (\"d\"): secret_sha256 must be 64 hex digits",
            "mqtt.applications[5] (\"e\").subscribe: \"a/#/b\" is not a topic filter",
            "mqtt.applications[5] (\"e\").subscribe: \"$share/g/x\" is a shared subscription",
            "mqtt.applications[6] (\"e\"): another application has this name",
            "mqtt.anonymous.deny: \"x+\" is not a topic filter",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn application_secret_files_are_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("app.secret");
        let toml = format!(
            "[[mqtt.applications]]\nname = \"app\"\nsecret_file = {:?}\n",
            secret.display().to_string()
        );
        std::fs::write(&secret, "long-enough-secret-0123").unwrap();
        chmod(&secret, 0o640);
        let err = load_file(dir.path(), &toml).unwrap_err().to_string();
        assert!(err.contains("readable by other users") && err.contains("chmod 600"), "{err}");
        chmod(&secret, 0o600);
        std::fs::write(&secret, "short").unwrap();
        let err = load_file(dir.path(), &toml).unwrap_err().to_string();
        assert!(err.contains("at least 16 characters"), "{err}");
        assert!(!err.contains("short"), "the secret never appears in messages: {err}");
        std::fs::write(&secret, "long-enough-secret-0123\n").unwrap();
        assert_eq!(load_file(dir.path(), &toml).unwrap().mqtt.applications.len(), 1);
    }

    #[test]
    fn provisioning_over_mqtt_is_on_by_default_and_configurable() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(
            c.mqtt.provisioning,
            Some(MqttProvisioningConfig { password: None, max_tracked_clients: 10_000 })
        );
        let c = load(&Sources {
            env: env(&[
                ("HERD_PROVISIONING__MQTT_BOOTSTRAP_PASSWORD", "factory-pass"),
                ("HERD_PROVISIONING__MQTT_MAX_BOOTSTRAP_CLIENTS", "5"),
            ]),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            c.mqtt.provisioning,
            Some(MqttProvisioningConfig {
                password: Some(TokenHash::of_secret("factory-pass")),
                max_tracked_clients: 5,
            })
        );
        let dir = tempfile::tempdir().unwrap();
        let c = load_file(dir.path(), "[provisioning]\nmqtt_enabled = false\n").unwrap();
        assert_eq!(c.mqtt.provisioning, None);

        // The password from a private file; not both; a bound in range.
        let file = dir.path().join("bootstrap.secret");
        std::fs::write(&file, "from-a-file\n").unwrap();
        chmod(&file, 0o600);
        let toml = format!(
            "[provisioning]\nmqtt_bootstrap_password_file = {:?}\n",
            file.display().to_string()
        );
        let c = load_file(dir.path(), &toml).unwrap();
        assert_eq!(
            c.mqtt.provisioning.unwrap().password,
            Some(TokenHash::of_secret("from-a-file"))
        );
        chmod(&file, 0o644);
        let err = load_file(dir.path(), &toml).unwrap_err().to_string();
        assert!(err.contains("mqtt_bootstrap_password_file"), "{err}");
        chmod(&file, 0o600);
        let both =
            format!("{toml}mqtt_bootstrap_password = \"x\"\nmqtt_max_bootstrap_clients = 0\n");
        let err = load_file(dir.path(), &both).unwrap_err().to_string();
        assert!(err.contains("set only one of provisioning.mqtt_bootstrap_password"), "{err}");
        assert!(err.contains("mqtt_max_bootstrap_clients must be between 1 and"), "{err}");
    }

    #[test]
    fn identity_uses_the_internal_ca_unless_both_files_are_given() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(
            c.identity,
            IdentityConfig {
                ca: CaSource::Internal { dir: PathBuf::from("./herd-data/ca") },
                certificate_lifetime: Duration::from_secs(365 * 86_400),
                max_credentials_per_device: 2,
                trust_refresh: Duration::from_secs(10),
                master_key_file: PathBuf::from("./herd-data/identity/master.key"),
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        #[cfg(unix)]
        chmod(&key, 0o644);
        // Every problem at once: a lifetime out of range, one file without the other.
        let err = load_file(
            dir.path(),
            &format!(
                "[identity]\ncertificate_lifetime_days = 0\nca_cert_file = {:?}\n",
                cert.display().to_string()
            ),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        let text = err.to_string();
        for needle in [
            "certificate_lifetime_days must be between 1 and 3650",
            "identity.ca_key_file is required",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        let both = format!(
            "[identity]\ncertificate_lifetime_days = 30\nca_cert_file = {:?}\nca_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        #[cfg(unix)]
        {
            let err = load_file(dir.path(), &both).unwrap_err().to_string();
            assert!(err.contains("identity.ca_key_file") && err.contains("chmod 600"), "{err}");
            chmod(&key, 0o600);
        }
        let c = load_file(dir.path(), &both).unwrap();
        assert_eq!(c.identity.ca, CaSource::External { cert_file: cert, key_file: key });
        assert_eq!(c.identity.certificate_lifetime, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}

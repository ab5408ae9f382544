//! The command line: `herd serve` and the operator commands.
//!
//! Operator commands are REST clients: they need `--server`/`HERD_URL` and `--token`/`HERD_TOKEN`,
//! print human tables by default and the server's JSON with `--output json`, and exit non-zero with
//! the server's message when a request fails.

mod client;
mod command;
mod commands;
mod enrollment;
mod job;
mod output;
mod profile;
mod twin;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Sources};

pub use command::CommandCommand;
pub use enrollment::{AttestationArg, ClaimCodesCommand, EnrollmentCommand};
pub use job::{CreateArgs as JobCreateArgs, JobCommand};
pub use profile::ProfileCommand;
pub use twin::{SectionArg, TwinCommand};

/// Herd: IoT device management in one binary.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded SQLite under ./herd-data unless configured otherwise).
    Serve(ServeArgs),
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Manage device groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage enrollment groups: how unknown devices provision themselves (zero-touch).
    #[command(subcommand)]
    Enrollment(EnrollmentCommand),
    /// Send direct commands to devices and follow them.
    #[command(subcommand)]
    Command(CommandCommand),
    /// Read and change device twins: desired state, reported state, tags.
    #[command(subcommand)]
    Twin(TwinCommand),
    /// Fleet jobs: a command rolled out to many devices at a bounded rate.
    #[command(subcommand)]
    Job(JobCommand),
    /// Fleet totals: devices by lifecycle state, connected now, ever connected.
    Inventory {
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Configuration helpers, and configuration profiles (desired configuration of the fleet or a
    /// group).
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// Flags of `herd serve`; each overrides the config file and the environment.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see `herd config default`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [server.data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [http.listen].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// MQTT listen address, e.g. 127.0.0.1:1883; empty disables MQTT [mqtt.listen].
    #[arg(long, value_name = "ADDR")]
    pub mqtt_listen: Option<String>,
    /// MQTT over TLS listen address, e.g. 127.0.0.1:8883; needs a certificate [mqtt.tls_listen].
    #[arg(long, value_name = "ADDR")]
    pub mqtts_listen: Option<String>,
    /// Storage URL: sqlite://PATH or postgres://… [store.url].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log format: text or json [log.format].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or debug [log.level].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// How operator commands reach the server and print results.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Server base URL.
    #[arg(long, env = "HERD_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// API token (an admin token is in <data-dir>/admin-token after the first start).
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

/// Output formats of operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// The server's JSON.
    Json,
}

/// `herd device …`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device.
    Create {
        /// Device id (1–128 of A-Z a-z 0-9 . _ : -).
        id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// A tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Attributes as a JSON object.
        #[arg(long = "attributes", value_name = "JSON")]
        attributes: Option<String>,
        /// Initial state: registered (default) or active.
        #[arg(long)]
        state: Option<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one device.
    #[command(visible_alias = "show")]
    Get {
        /// Device id.
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List devices, filtered.
    List {
        /// Filter expression, e.g. "tags.site = 'berlin' and state = 'active'".
        #[arg(long)]
        filter: Option<String>,
        /// Only this lifecycle state.
        #[arg(long)]
        state: Option<String>,
        /// Only devices with this tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Only ids starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Page size (1–1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after this cursor (printed after a page).
        #[arg(long)]
        cursor: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a device (name, tags, attributes, lifecycle state).
    Update {
        /// Device id.
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// Replace all tags with these KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Remove all tags.
        #[arg(long, conflicts_with = "tags")]
        clear_tags: bool,
        /// Replace attributes with this JSON object.
        #[arg(long = "attributes", value_name = "JSON")]
        attributes: Option<String>,
        /// New lifecycle state (registered, active, suspended, decommissioned, retired).
        #[arg(long)]
        state: Option<String>,
        /// Only if the device is still at this version (optimistic concurrency).
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
        /// Show what the change would do (dynamic groups joined and left, configuration
        /// profiles gained and lost, desired-state changes) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a device (its audit history stays).
    Delete {
        /// Device id.
        id: String,
        /// Only if the device is still at this version.
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace a device by another (RMA): the successor takes over its tags, attributes and
    /// static groups; its credentials and certificates are revoked, its live connections closed,
    /// and it is retired. A successor that does not exist is created (registered).
    Replace {
        /// Id of the device to replace.
        id: String,
        /// Id of the successor (an existing device, or a new id to create).
        #[arg(long = "with", value_name = "NEW")]
        with: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import devices from a CSV or JSON Lines file (created or updated by id).
    Import {
        /// The file (.csv, .jsonl or .ndjson).
        file: PathBuf,
        /// File format; guessed from the extension when absent.
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        /// All or nothing: when any line is rejected, nothing is written.
        #[arg(long)]
        atomic: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage the credentials a device connects with.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Manage the certificates a device connects with over mutual TLS.
    #[command(subcommand)]
    Certificate(CertificateCommand),
}

/// `herd device certificate …`
#[derive(Debug, Subcommand)]
pub enum CertificateCommand {
    /// Issue a certificate for a device from its certificate signing request (PEM). The
    /// certificate (PEM) is printed; its subject is the device, whatever the request says.
    Issue {
        /// Device id.
        device: String,
        /// The certificate signing request, PEM (`-` reads stdin).
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Also write the CA certificate (PEM) to this file.
        #[arg(long, value_name = "FILE")]
        ca_out: Option<PathBuf>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a device's certificates.
    List {
        /// Device id.
        device: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a device certificate; the device's live connections are closed.
    Revoke {
        /// Device id.
        device: String,
        /// Certificate serial (lowercase hex).
        serial: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the certificates of every device that end within some days (expired ones included,
    /// revoked ones not), soonest first: what needs renewing.
    Expiring {
        /// How many days ahead to look (0 to 3650).
        #[arg(long, default_value_t = 30)]
        within_days: u32,
        /// Most certificates listed (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `herd device credential …`
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Issue a credential for a device; its secret is printed once.
    Create {
        /// Device id.
        device: String,
        /// Expire after this many days.
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a device's credentials (never their secrets).
    List {
        /// Device id.
        device: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a device credential; the device's live connections are closed.
    Revoke {
        /// Device id.
        device: String,
        /// Credential id (cred_…).
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask a device to renew its certificate or credential now (it must be connected, or have a
    /// persistent session to get the request when it is back); the old one keeps working until
    /// revoked.
    Rotate {
        /// Device id.
        device: String,
        /// What to renew.
        #[arg(long, value_enum)]
        kind: RotateKind,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `rotate` asks devices to renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RotateKind {
    /// The client certificate.
    Certificate,
    /// The credential.
    Credential,
}

impl RotateKind {
    /// The name in the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Credential => "credential",
        }
    }
}

/// Import file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// `herd group …`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a static group, or a dynamic one with --filter.
    Create {
        /// Group name.
        name: String,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// Make it dynamic: members are the devices this filter matches.
        #[arg(long)]
        filter: Option<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one group.
    Get {
        /// Group name.
        name: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List groups.
    List {
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a group's description or (dynamic) filter.
    Update {
        /// Group name.
        name: String,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New filter (dynamic groups).
        #[arg(long)]
        filter: Option<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a group (not its devices).
    Delete {
        /// Group name.
        name: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add devices to a static group.
    Add {
        /// Group name.
        name: String,
        /// Device ids.
        #[arg(required = true)]
        devices: Vec<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove devices from a static group.
    Remove {
        /// Group name.
        name: String,
        /// Device ids.
        #[arg(required = true)]
        devices: Vec<String>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a group's devices.
    Devices {
        /// Group name.
        name: String,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask every active device of a group to renew its certificate or credential now.
    RotateCredentials {
        /// Group name.
        name: String,
        /// What to renew.
        #[arg(long, value_enum)]
        kind: RotateKind,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `herd token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// What the token is for.
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        /// Expire after this many days.
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tokens (never their secrets).
    List {
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id (tok_…).
        id: String,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the token in use.
    Whoami {
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `herd audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records.
    List {
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// How many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check the whole hash chain and name the first broken record.
    Verify {
        /// Server, token and output options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `herd config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Read a secret from standard input and print its hex SHA-256, the `secret_sha256` of an
    /// `[[mqtt.applications]]` entry (surrounding whitespace, like the newline of `echo`, is
    /// ignored, as in a `secret_file`).
    HashSecret,
    /// Configuration profiles: desired configuration for the fleet or a group, merged under each
    /// device's own desired state.
    #[command(subcommand)]
    Profile(ProfileCommand),
}

/// Runs a parsed command line and returns the process exit code.
pub fn execute(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => return serve(&args),
        Command::Config(ConfigCommand::Default) => output::write_raw(config::DEFAULT_CONFIG),
        Command::Config(ConfigCommand::HashSecret) => hash_secret(),
        Command::Config(ConfigCommand::Profile(cmd)) => block_on(profile::profile(cmd)),
        Command::Device(cmd) => block_on(commands::device(cmd)),
        Command::Group(cmd) => block_on(commands::group(cmd)),
        Command::Token(cmd) => block_on(commands::token(cmd)),
        Command::Audit(cmd) => block_on(commands::audit(cmd)),
        Command::Enrollment(cmd) => block_on(enrollment::enrollment(cmd)),
        Command::Command(cmd) => block_on(command::command(cmd)),
        Command::Twin(cmd) => block_on(twin::twin(cmd)),
        Command::Job(cmd) => block_on(job::job(cmd)),
        Command::Inventory { client } => block_on(commands::inventory(client)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// `herd config hash-secret`: the hex SHA-256 of the secret on standard input.
fn hash_secret() -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut text = String::new();
    std::io::stdin()
        .lock()
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("cannot read the secret from standard input: {e}"))?;
    let secret = text.trim();
    config::check_application_secret(secret).map_err(anyhow::Error::msg)?;
    output::write_raw(&hex::encode(domain::TokenHash::of_secret(secret).as_bytes()))
}

/// Runs an operator command on a small single-threaded runtime.
fn block_on(f: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn serve(args: &ServeArgs) -> ExitCode {
    let mut flags = Vec::new();
    if let Some(d) = &args.data_dir {
        flags.push(("server", "data_dir", toml::Value::String(d.display().to_string())));
    }
    let strings = [
        ("http", "listen", &args.http_listen),
        ("mqtt", "listen", &args.mqtt_listen),
        ("mqtt", "tls_listen", &args.mqtts_listen),
        ("store", "url", &args.database_url),
        ("log", "format", &args.log_format),
        ("log", "level", &args.log_level),
    ];
    for (section, key, value) in strings {
        if let Some(v) = value {
            flags.push((section, key, toml::Value::String(v.clone())));
        }
    }
    let sources = Sources { file: args.config.clone(), env: std::env::vars().collect(), flags };
    let config = match config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            output::error(&e.to_string());
            return ExitCode::from(2);
        }
    };
    crate::serve::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            output::error(&format!("failed to start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // Signals are handled from here on, before anything starts (see `shutdown_signal`).
        let shutdown = crate::serve::shutdown_signal();
        let listener = crate::serve::bind_http(config.http_listen).await?;
        let mqtt = crate::gateway::bind_mqtt_listeners(&config.mqtt).await?;
        crate::serve::run(config, listener, mqtt, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "herd stopped with an error");
            output::error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

//! The agent's configuration file and what it becomes: a validated [`Settings`].
//!
//! ```toml
//! server = "mqtt://herd.example.com:1883"     # mqtt://, mqtts://, ws://…/mqtt or wss://…/mqtt
//! device_id = "gw-17"
//! credential_file = "/etc/herd/credential"     # the device credential (hdc_…), mode 0600
//! data_dir = "/var/lib/herd-agent"
//! ```
//!
//! A device with a client certificate (`client_cert_file`, `client_key_file`, `mqtts://` or
//! `wss://`) needs no credential file; the agent renews that certificate `renew_before_days`
//! before it ends. The agent rewrites the credential, certificate and key files it renews.
//!
//! A device that provisions itself (zero-touch) has a `[provisioning]` section instead of a
//! credential: while `credential_file` does not exist (or, with `csr = true`, the client
//! certificate), the agent registers through the enrollment group first ([`crate::provision`]),
//! and `device_id` may be left out (the registration names it; it is kept in
//! `data_dir/device_id`).
//!
//! ```toml
//! server = "mqtts://herd.example.com"
//! credential_file = "/etc/herd/credential"    # written by the registration
//! data_dir = "/var/lib/herd-agent"
//!
//! [provisioning]
//! url = "https://herd.example.com"
//! enrollment_group = "factory-a"
//! derived_key_file = "/etc/herd/derived.key"  # or claim_code_file; mode 0600
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;

/// The configuration file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where Herd's MQTT listener is: `mqtt://HOST[:PORT]` (TCP, port 1883 by default),
    /// `mqtts://HOST[:PORT]` (TLS, 8883), `ws://HOST[:PORT]/PATH` or `wss://HOST[:PORT]/PATH`
    /// (WebSocket, 80/443).
    pub server: String,
    /// The device id; optional with `[provisioning]` (the registration gives it).
    #[serde(default)]
    pub device_id: Option<String>,
    /// A file holding only the device credential secret; must not be readable by group or others.
    /// Optional for a device that logs in with a client certificate. With `[provisioning]`, where
    /// the registration writes the credential.
    #[serde(default)]
    pub credential_file: Option<PathBuf>,
    /// Where the agent keeps its offline journal.
    pub data_dir: PathBuf,
    /// `5` (default) or `3.1.1`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate, for `mqtts://` and `wss://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) for mutual TLS, with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM), with `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Seconds between heartbeats (default 60).
    #[serde(default)]
    pub heartbeat_interval_secs: Option<u64>,
    /// MQTT keep-alive seconds (default 30).
    #[serde(default)]
    pub keep_alive_secs: Option<u64>,
    /// The most bytes of unsent messages kept on disk (default 16 MiB); beyond, the oldest go.
    #[serde(default)]
    pub offline_buffer_max_bytes: Option<u64>,
    /// Whether journal writes are flushed to the disk before they count (default true).
    #[serde(default)]
    pub offline_buffer_sync: Option<bool>,
    /// Seconds the agent waits at shutdown for unacknowledged messages (default 5).
    #[serde(default)]
    pub shutdown_grace_secs: Option<u64>,
    /// Days before its client certificate ends that the agent asks for a new one (default 30).
    #[serde(default)]
    pub renew_before_days: Option<u64>,
    /// Seconds between checks of the client certificate's end (default 3600).
    #[serde(default)]
    pub renewal_check_interval_secs: Option<u64>,
    /// Zero-touch provisioning: register through an enrollment group on the first start.
    #[serde(default)]
    pub provisioning: Option<ProvisioningFile>,
    /// `[commands.<name>]`: executables answering direct commands (see `crate::commands`).
    #[serde(default)]
    pub commands: BTreeMap<String, crate::commands::HandlerFile>,
    /// `[desired_hook]`: an executable applying desired state beyond the agent's own settings
    /// (see `crate::desired`).
    #[serde(default)]
    pub desired_hook: Option<crate::commands::HandlerFile>,
}

/// The `[provisioning]` section, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningFile {
    /// Herd's HTTP API as the device reaches it: `https://HOST[:PORT]` (or `http://` on a
    /// trusted network). Without it the device registers over MQTT, on `server`, with the
    /// bootstrap login (the only way for an X.509 group).
    #[serde(default)]
    pub url: Option<String>,
    /// The enrollment group's name.
    pub enrollment_group: String,
    /// What the device calls itself; default: the machine id (`/etc/machine-id`), else the host
    /// name.
    #[serde(default)]
    pub registration_id: Option<String>,
    /// A file holding the device's derived key (base64), for a symmetric-key group; mode 0600.
    #[serde(default)]
    pub derived_key_file: Option<PathBuf>,
    /// A file holding a claim code, for a claim-code group; mode 0600.
    #[serde(default)]
    pub claim_code_file: Option<PathBuf>,
    /// The maker's certificate (PEM, with its chain) for an X.509 group, presented over mutual
    /// TLS (`server` must be `mqtts://` or `wss://`, `url` unset), with `factory_key_file`.
    #[serde(default)]
    pub factory_cert_file: Option<PathBuf>,
    /// The private key of `factory_cert_file` (PEM); mode 0600.
    #[serde(default)]
    pub factory_key_file: Option<PathBuf>,
    /// Also ask for a client certificate (written to `client_cert_file` and `client_key_file`).
    #[serde(default)]
    pub csr: Option<bool>,
    /// The CA certificate (PEM) of the HTTPS server; default: `ca_file`, else the system's bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds one registration attempt may take (default 30).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Longest wait between two attempts, in seconds (default 300); the wait doubles from 1 s.
    #[serde(default)]
    pub retry_max_secs: Option<u64>,
    /// Seconds a symmetric-key proof stays valid (default 300; at most the server's
    /// `provisioning.max_proof_lifetime_secs`).
    #[serde(default)]
    pub proof_lifetime_secs: Option<u64>,
}

/// How the device proves it belongs to its enrollment group.
#[derive(Clone)]
pub enum ProvisioningProof {
    /// The derived key (32 bytes).
    DerivedKey(Vec<u8>),
    /// The claim code.
    ClaimCode(String),
    /// The maker's certificate and its key, presented over mutual TLS.
    X509 {
        /// The certificate (PEM, with its chain).
        cert_file: PathBuf,
        /// Its key (PEM).
        key_file: PathBuf,
    },
}

impl std::fmt::Debug for ProvisioningProof {
    /// Never shows the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DerivedKey(_) => "DerivedKey",
            Self::ClaimCode(_) => "ClaimCode",
            Self::X509 { .. } => "X509",
        })
    }
}

/// The validated `[provisioning]` section.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// Herd's HTTP API; `None`: register over MQTT on the server.
    pub url: Option<String>,
    /// The enrollment group.
    pub enrollment_group: String,
    /// The registration id.
    pub registration_id: String,
    /// The proof's secret, read from its file.
    pub proof: ProvisioningProof,
    /// Whether to ask for a client certificate too.
    pub csr: bool,
    /// The HTTPS server's CA.
    pub ca_file: Option<PathBuf>,
    /// One attempt's limit.
    pub timeout: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// A symmetric-key proof's validity.
    pub proof_lifetime: Duration,
    /// Whether the device must register before it can connect: the credential (or certificate)
    /// does not exist yet.
    pub pending: bool,
}

/// The file in the data directory that keeps the device id a registration gave.
pub const DEVICE_ID_FILE: &str = "device_id";

/// The transport the server URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `mqtt://`
    Mqtt,
    /// `mqtts://`
    Mqtts,
    /// `ws://`
    Ws,
    /// `wss://`
    Wss,
}

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The transport.
    pub scheme: Scheme,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port, the scheme's default when not given.
    pub port: u16,
    /// The WebSocket path (`/mqtt` by default); `/` for MQTT schemes.
    pub path: String,
}

impl ServerUrl {
    /// Parses `mqtt://host:port`, `mqtts://…`, `ws://host:port/path`, `wss://…`.
    ///
    /// # Errors
    /// When the scheme is unknown, the host is missing or the port is not a number.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = url.split_once("://").with_context(|| {
            format!("server URL {url:?} has no scheme (mqtt://, mqtts://, ws://, wss://)")
        })?;
        let (scheme, default_port) = match scheme {
            "mqtt" | "tcp" => (Scheme::Mqtt, 1883),
            "mqtts" | "ssl" | "tls" => (Scheme::Mqtts, 8883),
            "ws" => (Scheme::Ws, 80),
            "wss" => (Scheme::Wss, 443),
            other => bail!("server URL {url:?}: unknown scheme {other:?} (mqtt, mqtts, ws or wss)"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .with_context(|| format!("server URL {url:?}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        ensure!(!host.is_empty(), "server URL {url:?} has no host");
        let port = match port {
            Some(p) => p.parse().with_context(|| format!("server URL {url:?}: bad port {p:?}"))?,
            None => default_port,
        };
        let path = match (&scheme, path) {
            (Scheme::Ws | Scheme::Wss, "") => "/mqtt".to_owned(),
            (Scheme::Ws | Scheme::Wss, p) => p.to_owned(),
            (_, "" | "/") => "/".to_owned(),
            (_, p) => bail!("server URL {url:?}: an MQTT URL has no path (got {p:?})"),
        };
        Ok(Self { scheme, host: host.to_owned(), port, path })
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the server is.
    pub server: ServerUrl,
    /// The device id.
    pub device_id: String,
    /// The credential secret, read from the credential file (empty without one).
    pub token: String,
    /// The credential file, rewritten when the credential is renewed.
    pub credential_file: Option<PathBuf>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// MQTT 3.1.1 instead of 5.
    pub v311: bool,
    /// CA for TLS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Between heartbeats.
    pub heartbeat_interval: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Journal bound.
    pub offline_buffer_max_bytes: u64,
    /// Journal fsync.
    pub offline_buffer_sync: bool,
    /// Wait for acknowledgements at shutdown.
    pub shutdown_grace: Duration,
    /// How long before the client certificate ends it is renewed.
    pub renew_before: Duration,
    /// Between checks of the client certificate's end.
    pub renewal_check_interval: Duration,
    /// Zero-touch provisioning, when configured.
    pub provisioning: Option<Provisioning>,
    /// Direct command handlers by command name.
    pub commands: crate::commands::Handlers,
    /// The executable applying desired state beyond the agent's settings.
    pub desired_hook: Option<crate::commands::Handler>,
}

impl Settings {
    /// Reads and validates the configuration file at `path`, and the credential file it names.
    ///
    /// # Errors
    /// A message naming the file and what is wrong with it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))?;
        Self::from_file(file)
    }

    /// Validates a parsed configuration file.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_file(mut file: ConfigFile) -> anyhow::Result<Self> {
        let server = ServerUrl::parse(&file.server)?;
        let v311 = match file.protocol.as_deref() {
            None | Some("5" | "5.0") => false,
            Some("3.1.1" | "4") => true,
            Some(other) => bail!("protocol {other:?}: use \"5\" or \"3.1.1\""),
        };
        let client_cert = match (file.client_cert_file, file.client_key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("client_cert_file and client_key_file go together"),
        };
        let section = file.provisioning.take();
        let provisioning = section
            .map(|p| {
                provisioning(
                    p,
                    Paths {
                        credential_file: file.credential_file.as_deref(),
                        ca_file: file.ca_file.as_deref(),
                    },
                    client_cert.as_ref(),
                )
            })
            .transpose()?;
        let pending = provisioning.as_ref().is_some_and(|p| p.pending);
        let token = match (&file.credential_file, &client_cert) {
            (Some(_), _) if pending => String::new(),
            (Some(path), _) => read_credential(path)?,
            (None, Some(_)) => String::new(),
            (None, None) => {
                bail!(
                    "credential_file is required unless client_cert_file and client_key_file are set"
                )
            }
        };
        let device_id = match (file.device_id, &provisioning) {
            (Some(id), _) => id,
            (None, Some(p)) if p.pending => String::new(),
            (None, Some(_)) => {
                let path = file.data_dir.join(DEVICE_ID_FILE);
                let id = fs::read_to_string(&path).with_context(|| {
                    format!(
                        "device_id is not set and {} cannot be read (it is written when the \
                         device registers)",
                        path.display()
                    )
                })?;
                id.trim().to_owned()
            }
            (None, None) => bail!("device_id is required unless [provisioning] is set"),
        };
        let renew_before_days = file.renew_before_days.unwrap_or(30);
        ensure!(
            (1..=3650).contains(&renew_before_days),
            "renew_before_days must be between 1 and 3650"
        );
        let check = file.renewal_check_interval_secs.unwrap_or(3600);
        ensure!(check > 0, "renewal_check_interval_secs must be at least 1");
        let heartbeat = file.heartbeat_interval_secs.unwrap_or(60);
        ensure!(heartbeat > 0, "heartbeat_interval_secs must be at least 1");
        Ok(Self {
            server,
            device_id,
            token,
            credential_file: file.credential_file,
            data_dir: file.data_dir,
            v311,
            ca_file: file.ca_file,
            client_cert,
            heartbeat_interval: Duration::from_secs(heartbeat),
            keep_alive: Duration::from_secs(file.keep_alive_secs.unwrap_or(30)),
            offline_buffer_max_bytes: file.offline_buffer_max_bytes.unwrap_or(16 * 1024 * 1024),
            offline_buffer_sync: file.offline_buffer_sync.unwrap_or(true),
            shutdown_grace: Duration::from_secs(file.shutdown_grace_secs.unwrap_or(5)),
            renew_before: Duration::from_secs(renew_before_days * 86_400),
            renewal_check_interval: Duration::from_secs(check),
            provisioning,
            commands: crate::commands::handlers(std::mem::take(&mut file.commands))?,
            desired_hook: file
                .desired_hook
                .take()
                .map(|h| crate::commands::handler("desired_hook", h))
                .transpose()?,
        })
    }
}

/// The files of the configuration `[provisioning]` depends on.
#[derive(Debug, Clone, Copy)]
struct Paths<'a> {
    credential_file: Option<&'a Path>,
    ca_file: Option<&'a Path>,
}

/// Validates the `[provisioning]` section of `file` and reads its secret.
fn provisioning(
    p: ProvisioningFile,
    file: Paths<'_>,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> anyhow::Result<Provisioning> {
    if let Some(url) = &p.url {
        ensure!(
            url.starts_with("https://") || url.starts_with("http://"),
            "provisioning.url must start with https:// or http://, got {url:?}"
        );
    }
    ensure!(!p.enrollment_group.trim().is_empty(), "provisioning.enrollment_group is empty");
    let proof = match (&p.derived_key_file, &p.claim_code_file, &p.factory_cert_file) {
        (Some(path), None, None) => {
            let text = read_secret_file(path, "derived key")?;
            let key = device_agent::provisioning::decode_derived_key(&text)
                .with_context(|| format!("the derived key file {}", path.display()))?;
            ProvisioningProof::DerivedKey(key)
        }
        (None, Some(path), None) => {
            ProvisioningProof::ClaimCode(read_secret_file(path, "claim code")?)
        }
        (None, None, Some(cert_file)) => {
            let Some(key_file) = &p.factory_key_file else {
                bail!("provisioning.factory_cert_file needs factory_key_file");
            };
            ensure!(
                p.url.is_none(),
                "an X.509 registration (factory_cert_file) goes over MQTT: leave provisioning.url unset"
            );
            // The key is a secret like the others: only its owner may read it.
            read_secret_file(key_file, "factory key")?;
            ProvisioningProof::X509 { cert_file: cert_file.clone(), key_file: key_file.clone() }
        }
        _ => bail!(
            "[provisioning] needs exactly one of derived_key_file, claim_code_file and \
             factory_cert_file"
        ),
    };
    let csr = p.csr.unwrap_or(false);
    ensure!(
        !csr || client_cert.is_some(),
        "provisioning.csr = true needs client_cert_file and client_key_file (where the certificate \
         and its key are written)"
    );
    let Some(credential_file) = file.credential_file else {
        bail!("[provisioning] needs credential_file: where the registration writes the credential");
    };
    let pending = !credential_file.exists()
        || (csr && client_cert.is_some_and(|(cert, key)| !cert.exists() || !key.exists()));
    let registration_id = match p.registration_id {
        Some(id) => id,
        None => default_registration_id()?,
    };
    let valid = (1..=128).contains(&registration_id.len())
        && registration_id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    ensure!(
        valid,
        "provisioning.registration_id {registration_id:?}: use 1 to 128 characters of A-Z a-z 0-9 . _ : -"
    );
    let timeout = p.timeout_secs.unwrap_or(30);
    ensure!(timeout > 0, "provisioning.timeout_secs must be at least 1");
    let retry_max = p.retry_max_secs.unwrap_or(300);
    ensure!(retry_max > 0, "provisioning.retry_max_secs must be at least 1");
    let lifetime = p.proof_lifetime_secs.unwrap_or(300);
    ensure!(
        (1..=86_400).contains(&lifetime),
        "provisioning.proof_lifetime_secs must be between 1 and 86400"
    );
    Ok(Provisioning {
        url: p.url,
        enrollment_group: p.enrollment_group,
        registration_id,
        proof,
        csr,
        ca_file: p.ca_file.or_else(|| file.ca_file.map(Path::to_path_buf)),
        timeout: Duration::from_secs(timeout),
        retry_max: Duration::from_secs(retry_max),
        proof_lifetime: Duration::from_secs(lifetime),
        pending,
    })
}

/// The machine id (`/etc/machine-id`), else the host name.
fn default_registration_id() -> anyhow::Result<String> {
    let read = |path: &str| fs::read_to_string(path).ok().map(|s| s.trim().to_owned());
    read("/etc/machine-id")
        .filter(|s| !s.is_empty())
        .or_else(|| read("/proc/sys/kernel/hostname").filter(|s| !s.is_empty()))
        .context("provisioning.registration_id is not set and neither /etc/machine-id nor the host name can be read")
}

/// Reads a secret from `path`, refusing a file that group or others may access.
fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    read_private(path, what)
}

/// Reads the credential secret from `path`, refusing a file that group or others may access.
///
/// # Errors
/// When the file cannot be read, is not a regular file, has permissions beyond the owner's, or is
/// empty.
pub fn read_credential(path: &Path) -> anyhow::Result<String> {
    read_private(path, "credential")
}

/// Reads the secret `what` from `path` (trimmed), refusing a file group or others may access.
fn read_private(path: &Path, what: &str) -> anyhow::Result<String> {
    let meta = fs::metadata(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    ensure!(meta.is_file(), "the {what} file {} is not a regular file", path.display());
    let mode = meta.permissions().mode() & 0o777;
    ensure!(
        mode & 0o077 == 0,
        "the {what} file {} has mode {mode:o}: group and others must have no access (chmod 600 {})",
        path.display(),
        path.display()
    );
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    let token = text.trim();
    ensure!(!token.is_empty(), "the {what} file {} is empty", path.display());
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn url(s: &str, scheme: Scheme, host: &str, port: u16, path: &str) {
        assert_eq!(
            ServerUrl::parse(s).unwrap(),
            ServerUrl { scheme, host: host.to_owned(), port, path: path.to_owned() }
        );
    }

    #[test]
    fn server_urls() {
        url("mqtt://h", Scheme::Mqtt, "h", 1883, "/");
        url("mqtt://h:1884/", Scheme::Mqtt, "h", 1884, "/");
        url("mqtts://10.0.0.1", Scheme::Mqtts, "10.0.0.1", 8883, "/");
        url("ws://h:8080", Scheme::Ws, "h", 8080, "/mqtt");
        url("wss://h/x/mqtt", Scheme::Wss, "h", 443, "/x/mqtt");
        url("mqtt://[::1]:99", Scheme::Mqtt, "::1", 99, "/");
        for bad in
            ["h:1883", "http://h", "mqtt://", "mqtt://h:x", "mqtt://h/path", "mqtt://h:70000"]
        {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_file_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        fs::write(&path, "hdc_secret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_credential(&path).unwrap_err().to_string();
        assert!(err.contains("mode 644") && err.contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_credential(&path).unwrap(), "hdc_secret");
        fs::write(&path, "  \n").unwrap();
        assert!(read_credential(&path).unwrap_err().to_string().contains("empty"));
        assert!(read_credential(&dir.path().join("missing")).is_err());
        assert!(read_credential(dir.path()).is_err());
    }
}

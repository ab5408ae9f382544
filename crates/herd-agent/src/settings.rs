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
    /// The device id.
    pub device_id: String,
    /// A file holding only the device credential secret; must not be readable by group or others.
    /// Optional for a device that logs in with a client certificate.
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
}

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
    pub fn from_file(file: ConfigFile) -> anyhow::Result<Self> {
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
        let token = match (&file.credential_file, &client_cert) {
            (Some(path), _) => read_credential(path)?,
            (None, Some(_)) => String::new(),
            (None, None) => {
                bail!(
                    "credential_file is required unless client_cert_file and client_key_file are set"
                )
            }
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
            device_id: file.device_id,
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
        })
    }
}

/// Reads the credential secret from `path`, refusing a file that group or others may access.
///
/// # Errors
/// When the file cannot be read, is not a regular file, has permissions beyond the owner's, or is
/// empty.
pub fn read_credential(path: &Path) -> anyhow::Result<String> {
    let meta = fs::metadata(path)
        .with_context(|| format!("cannot read the credential file {}", path.display()))?;
    ensure!(meta.is_file(), "the credential file {} is not a regular file", path.display());
    let mode = meta.permissions().mode() & 0o777;
    ensure!(
        mode & 0o077 == 0,
        "the credential file {} has mode {mode:o}: group and others must have no access (chmod 600 {})",
        path.display(),
        path.display()
    );
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the credential file {}", path.display()))?;
    let token = text.trim();
    ensure!(!token.is_empty(), "the credential file {} is empty", path.display());
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

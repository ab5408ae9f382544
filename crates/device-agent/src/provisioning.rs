//! Zero-touch provisioning: a device Herd has never seen registers itself through an enrollment
//! group over HTTPS and receives its credential (`docs/device-protocol.md`, *Provisioning
//! (zero-touch)* and *Register over HTTPS*).
//!
//! A device proves it belongs to the group with a [`Proof`]: for a symmetric-key group the
//! signature [`symmetric_key_proof`] makes with the key derived for it (the factory wrote it on
//! the device), for a claim-code group the code it was given. It may add a certificate signing
//! request ([`RegisterRequest::with_csr`], made by [`CertificateRequest::generate`]) to get a
//! certificate as well.
//!
//! [`register_mqtt`] registers over MQTT instead, with the bootstrap login (`$provision`), on
//! the same listeners devices connect to; it is the way for an X.509 group, whose devices present
//! their maker's certificate ([`Proof::X509`]) over mutual TLS.
//!
//! [`ProvisioningClient`] sends the request (`POST /provision/v1/register`) over HTTPS (rustls
//! with the aws-lc-rs provider and the device's [`TlsOptions`], as for MQTT) or plain HTTP, and
//! returns the [`Registration`]; [`register_https`] does both in one call. A refusal comes back as
//! [`ProvisionError::Refused`] with the problem's stable `code` and, for 429, its `Retry-After`;
//! [`ProvisionError::is_retryable`] tells the device whether trying again later can help.
//!
//! ```no_run
//! use std::time::Duration;
//! use device_agent::TlsOptions;
//! use device_agent::provisioning::{Proof, RegisterRequest, register_https};
//!
//! # async fn example(derived_key: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let proof = Proof::symmetric_key(derived_key, "SN-0042", Duration::from_secs(300))?;
//! let request = RegisterRequest::new("SN-0042", "factory-a", proof);
//! let registration =
//!     register_https("https://herd.example.com", &request, &TlsOptions::default()).await?;
//! println!("registered as {}", registration.device_id);
//! # Ok(())
//! # }
//! ```
//!
//! [`CertificateRequest::generate`]: crate::identity::CertificateRequest::generate

use std::net::Ipv6Addr;
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{self, HeaderValue};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::ConfigError;
use crate::transport::{TlsClient, TlsOptions};

/// The path of the registration endpoint, below the server's base URL.
pub const REGISTER_PATH: &str = "/provision/v1/register";

/// How long a registration (connection, TLS, request and answer) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read: a credential, a certificate and its CA are a few KiB.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest a symmetric-key proof may be valid by the server's default
/// (`provisioning.max_proof_lifetime_secs`).
pub const DEFAULT_PROOF_LIFETIME: Duration = Duration::from_secs(300);

/// Signs a symmetric-key registration: `base64(HMAC-SHA256(derived_key,
/// "<registration_id>\n<expires_at>"))`, with `expires_at` in Unix seconds. Returns
/// `(expires_at, signature)`, the two fields of the proof.
#[must_use]
pub fn symmetric_key_proof(
    derived_key: &[u8],
    registration_id: &str,
    expires_at: u64,
) -> (u64, String) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived_key);
    let tag = hmac::sign(&key, format!("{registration_id}\n{expires_at}").as_bytes());
    (expires_at, BASE64.encode(tag.as_ref()))
}

/// Decodes a derived key as Herd shows it (base64 of 32 bytes, surrounding white space ignored).
///
/// # Errors
/// [`ProvisionError::InvalidKey`] when it is not base64 or not 32 bytes.
pub fn decode_derived_key(text: &str) -> Result<Vec<u8>, ProvisionError> {
    let key = BASE64
        .decode(text.trim())
        .map_err(|_| ProvisionError::InvalidKey("the derived key is not base64".to_owned()))?;
    if key.len() != 32 {
        return Err(ProvisionError::InvalidKey(format!(
            "the derived key is {} bytes, not 32",
            key.len()
        )));
    }
    Ok(key)
}

/// How a device proves it belongs to its enrollment group.
#[derive(Clone, PartialEq, Eq)]
pub enum Proof {
    /// For a `symmetric_key` group: see [`symmetric_key_proof`].
    SymmetricKey {
        /// Unix seconds after which the server refuses the proof.
        expires_at: u64,
        /// Base64 of the HMAC-SHA256.
        signature: String,
    },
    /// For a `claim_code` group: the code as given (`XXXX-XXXX-XXXX`; case, spaces and dashes do
    /// not matter).
    ClaimCode {
        /// The code.
        code: String,
    },
    /// For an `x509` group: the maker's certificate the device presents over mutual TLS (its
    /// [`TlsOptions::client_cert`]); registers over MQTT only ([`register_mqtt`]).
    X509,
}

impl std::fmt::Debug for Proof {
    /// Never shows the code: it enrolls devices.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SymmetricKey { expires_at, .. } => {
                f.debug_struct("SymmetricKey").field("expires_at", expires_at).finish()
            }
            Self::ClaimCode { .. } => f.write_str("ClaimCode"),
            Self::X509 => f.write_str("X509"),
        }
    }
}

impl Proof {
    /// A symmetric-key proof for `registration_id`, valid for `lifetime` from now (at most the
    /// server's `provisioning.max_proof_lifetime_secs`; [`DEFAULT_PROOF_LIFETIME`] is safe).
    ///
    /// # Errors
    /// [`ProvisionError::Clock`] when the system clock is before 1970.
    pub fn symmetric_key(
        derived_key: &[u8],
        registration_id: &str,
        lifetime: Duration,
    ) -> Result<Self, ProvisionError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| ProvisionError::Clock)?;
        let expires_at = now.saturating_add(lifetime).as_secs();
        let (expires_at, signature) = symmetric_key_proof(derived_key, registration_id, expires_at);
        Ok(Self::SymmetricKey { expires_at, signature })
    }

    /// A claim-code proof.
    #[must_use]
    pub fn claim_code(code: &str) -> Self {
        Self::ClaimCode { code: code.trim().to_owned() }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::SymmetricKey { expires_at, signature } => {
                json!({"type": "symmetric_key", "expires_at": expires_at, "signature": signature})
            }
            Self::ClaimCode { code } => json!({"type": "claim_code", "code": code}),
            Self::X509 => json!({"type": "x509"}),
        }
    }
}

/// The body of `POST /provision/v1/register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// What the device calls itself (its serial number, say): 1–128 characters of
    /// `[A-Za-z0-9._:-]`.
    pub registration_id: String,
    /// The enrollment group's name.
    pub enrollment_group: String,
    /// The proof.
    pub proof: Proof,
    /// A PEM certificate signing request, to get a certificate too.
    pub csr: Option<String>,
}

impl RegisterRequest {
    /// A request without a CSR.
    #[must_use]
    pub fn new(registration_id: &str, enrollment_group: &str, proof: Proof) -> Self {
        Self {
            registration_id: registration_id.to_owned(),
            enrollment_group: enrollment_group.to_owned(),
            proof,
            csr: None,
        }
    }

    /// The same request asking for a certificate for the key of `csr_pem` (see
    /// [`CertificateRequest::generate`](crate::identity::CertificateRequest::generate)).
    #[must_use]
    pub fn with_csr(mut self, csr_pem: &str) -> Self {
        self.csr = Some(csr_pem.to_owned());
        self
    }

    /// The JSON body, exactly as documented.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "registration_id": self.registration_id,
            "enrollment_group": self.enrollment_group,
            "proof": self.proof.to_json(),
        });
        if let Some(csr) = &self.csr {
            body["csr"] = csr.as_str().into();
        }
        body
    }
}

/// What a registered device receives.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    /// The device id (the group's template applied to the registration id).
    pub device_id: String,
    /// Whether this registration created the device (`false`: it was registered before, and this
    /// is a new credential).
    pub created: bool,
    /// The credential secret: the MQTT password. Keep it secret (a file only the owner reads).
    pub secret: String,
    /// The device certificate (PEM), when a CSR was sent.
    pub certificate_pem: Option<String>,
    /// The CA certificate (PEM) the device certificate chains to, when one was issued.
    pub ca_pem: Option<String>,
    /// The MQTT client identifier to use.
    pub client_id: String,
    /// The MQTT user name to use.
    pub username: String,
}

impl std::fmt::Debug for Registration {
    /// Never shows the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("device_id", &self.device_id)
            .field("created", &self.created)
            .field("certificate", &self.certificate_pem.is_some())
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Registration {
    fn parse(body: &[u8]) -> Result<Self, ProvisionError> {
        let bad = |what: &str| ProvisionError::InvalidAnswer(what.to_owned());
        let v: Value = serde_json::from_slice(body).map_err(|_| bad("the answer is not JSON"))?;
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let device_id = text(&v, "device_id").ok_or_else(|| bad("no device_id in the answer"))?;
        let credential = v.get("credential").ok_or_else(|| bad("no credential in the answer"))?;
        let secret =
            text(credential, "secret").ok_or_else(|| bad("no credential secret in the answer"))?;
        let mqtt = v.get("mqtt");
        Ok(Self {
            created: v.get("created").and_then(Value::as_bool).unwrap_or(false),
            secret,
            certificate_pem: text(&v, "certificate_pem"),
            ca_pem: text(&v, "ca_pem"),
            client_id: mqtt.and_then(|m| text(m, "client_id")).unwrap_or_else(|| device_id.clone()),
            username: mqtt.and_then(|m| text(m, "username")).unwrap_or_else(|| device_id.clone()),
            device_id,
        })
    }
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The server answered with an error (`application/problem+json`).
    #[error("the server refused the registration: {status} {code}: {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem's stable code (`invalid_proof`, `enrollment_disabled`,
        /// `too_many_attempts`, …), or `http_<status>` when the body is not a problem.
        code: String,
        /// What the server says went wrong.
        detail: String,
        /// When to try again (`Retry-After`, in seconds), when the server said.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached, or the exchange broke off.
    #[error("cannot reach the provisioning service: {0}")]
    Transport(String),
    /// No answer within the time given.
    #[error("no answer from the provisioning service within {0:?}")]
    TimedOut(Duration),
    /// The answer is not a registration.
    #[error("unexpected answer from the provisioning service: {0}")]
    InvalidAnswer(String),
    /// The base URL is not `http://HOST[:PORT][/PATH]` or `https://…`.
    #[error("invalid provisioning URL {0:?}: use https://HOST[:PORT] or http://HOST[:PORT]")]
    InvalidUrl(String),
    /// The TLS settings cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The derived key cannot be used.
    #[error("{0}")]
    InvalidKey(String),
    /// The system clock is before 1970: no proof can be dated.
    #[error("the system clock is before 1970")]
    Clock,
    /// The MQTT bootstrap login (`$provision`) was refused (MQTT 3.1.1 return codes are given as
    /// their MQTT 5 reason).
    #[error("the server refused the bootstrap login: {0:?}")]
    LoginRefused(mqtt_codec::ReasonCode),
    /// An X.509 proof over HTTPS: it needs mutual TLS, which registers over MQTT.
    #[error("an x509 proof registers over MQTT (register_mqtt), not over HTTPS")]
    X509OverHttps,
}

impl ProvisionError {
    /// Whether trying again later may succeed: transport errors, time-outs, 5xx, 429 and a 408.
    /// A refusal (401, 403, 409, 4xx) needs someone to change something first.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Refused { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::Transport(_) | Self::TimedOut(_) | Self::InvalidAnswer(_) => true,
            Self::LoginRefused(code) => *code == mqtt_codec::ReasonCode::ServerUnavailable,
            Self::InvalidUrl(_)
            | Self::Config(_)
            | Self::InvalidKey(_)
            | Self::Clock
            | Self::X509OverHttps => false,
        }
    }

    /// The server's `Retry-After`, when it sent one.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The problem's stable code, for a refusal.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A parsed base URL.
#[derive(Debug, Clone)]
struct BaseUrl {
    tls: bool,
    host: String,
    port: u16,
    /// Without a trailing `/`.
    path: String,
}

impl BaseUrl {
    fn parse(url: &str) -> Result<Self, ProvisionError> {
        let invalid = || ProvisionError::InvalidUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "https" => (true, 443),
            "http" => (false, 80),
            _ => return Err(invalid()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(invalid)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
            return Err(invalid());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| invalid())?,
            None => default_port,
        };
        Ok(Self { tls, host: host.to_owned(), port, path: path.trim_end_matches('/').to_owned() })
    }

    /// The `Host` header.
    fn authority(&self) -> String {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Registers devices with one Herd server: the URL checked and the TLS settings loaded once, so
/// many registrations (a simulator's fleet) share them.
#[derive(Debug, Clone)]
pub struct ProvisioningClient {
    base: BaseUrl,
    tls: Option<TlsClient>,
    timeout: Duration,
}

impl ProvisioningClient {
    /// A client for the server at `base_url` (`https://HOST[:PORT][/PATH]`, or `http://` behind
    /// a trusted network), verifying an HTTPS server with `tls` ([`TlsOptions::ca_file`], or the
    /// system's bundle). `tls` is not used for `http://`.
    ///
    /// # Errors
    /// [`ProvisionError::InvalidUrl`], [`ProvisionError::Config`] (a TLS file cannot be used).
    pub fn new(base_url: &str, tls: &TlsOptions) -> Result<Self, ProvisionError> {
        let base = BaseUrl::parse(base_url)?;
        let tls = if base.tls { Some(TlsClient::new(tls, &base.host)?) } else { None };
        Ok(Self { base, tls, timeout: DEFAULT_TIMEOUT })
    }

    /// The same client giving up after `timeout` per registration.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `request` and reads the answer.
    ///
    /// # Errors
    /// [`ProvisionError`]: see [`ProvisionError::is_retryable`].
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<Registration, ProvisionError> {
        if request.proof == Proof::X509 {
            return Err(ProvisionError::X509OverHttps);
        }
        let body = Bytes::from(request.to_json().to_string());
        let exchange = async {
            let tcp = TcpStream::connect((self.base.host.as_str(), self.base.port))
                .await
                .map_err(|e| ProvisionError::Transport(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                Some(tls) => {
                    let stream = tls
                        .handshake(tcp)
                        .await
                        .map_err(|e| ProvisionError::Transport(e.to_string()))?;
                    self.post(stream, body).await
                }
                None => self.post(tcp, body).await,
            }
        };
        let (status, retry_after, answer) =
            tokio::time::timeout(self.timeout, exchange)
                .await
                .map_err(|_| ProvisionError::TimedOut(self.timeout))??;
        if (200..300).contains(&status) {
            return Registration::parse(&answer);
        }
        let problem: Option<Value> = serde_json::from_slice(&answer).ok();
        let field = |key: &str| {
            problem.as_ref().and_then(|p| p.get(key)).and_then(Value::as_str).map(str::to_owned)
        };
        Err(ProvisionError::Refused {
            status,
            code: field("code").unwrap_or_else(|| format!("http_{status}")),
            detail: field("detail").unwrap_or_else(|| {
                String::from_utf8_lossy(&answer).chars().take(200).collect::<String>()
            }),
            retry_after,
        })
    }

    /// One HTTP/1.1 `POST` on `stream`; returns the status, `Retry-After` and the body.
    async fn post<S>(
        &self,
        stream: S,
        body: Bytes,
    ) -> Result<(u16, Option<Duration>, Bytes), ProvisionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let transport = |e: hyper::Error| ProvisionError::Transport(e.to_string());
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(transport)?;
        let request = hyper::Request::post(format!("{}{REGISTER_PATH}", self.base.path))
            .header(header::HOST, self.base.authority())
            .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .header(header::CONNECTION, HeaderValue::from_static("close"))
            .body(Full::new(body))
            .map_err(|e| ProvisionError::InvalidUrl(e.to_string()))?;
        let exchange = async move {
            let response = sender.send_request(request).await.map_err(transport)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| ProvisionError::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, retry_after, answer))
        };
        // The connection future drives the socket; it ends once the answer is read and the
        // sender dropped (`Connection: close`).
        let (answer, _) = tokio::join!(exchange, connection);
        answer
    }
}

/// Registers with the server at `base_url` in one call (see [`ProvisioningClient`]).
///
/// # Errors
/// [`ProvisionError`].
pub async fn register_https(
    base_url: &str,
    request: &RegisterRequest,
    tls: &TlsOptions,
) -> Result<Registration, ProvisionError> {
    ProvisioningClient::new(base_url, tls)?.register(request).await
}

/// The user name of the bootstrap login.
pub const BOOTSTRAP_USERNAME: &str = "$provision";

/// Registers over MQTT with the bootstrap login (`docs/device-protocol.md`, *Register over MQTT*):
/// connects as `config` says (its host, port, protocol and transport; for an [`Proof::X509`] proof
/// the transport must be TLS with the maker's certificate as [`TlsOptions::client_cert`]), with
/// the registration id as client identifier, user name `$provision`, the bootstrap password
/// `bootstrap_password` if the server has one, and a clean session; subscribes to its answer
/// topic, publishes `request` and waits for the answer, all within `timeout`.
///
/// # Errors
/// [`ProvisionError::LoginRefused`] when the login is refused, [`ProvisionError::Refused`] with the
/// answer's stable `code` (and an HTTP-like status for [`ProvisionError::is_retryable`]), or a
/// transport error or time-out.
pub async fn register_mqtt(
    config: &crate::DeviceConfig,
    request: &RegisterRequest,
    bootstrap_password: Option<&str>,
    timeout: Duration,
) -> Result<Registration, ProvisionError> {
    tokio::time::timeout(timeout, bootstrap_exchange(config, request, bootstrap_password))
        .await
        .map_err(|_| ProvisionError::TimedOut(timeout))?
}

async fn bootstrap_exchange(
    config: &crate::DeviceConfig,
    request: &RegisterRequest,
    bootstrap_password: Option<&str>,
) -> Result<Registration, ProvisionError> {
    use mqtt_codec::{
        Connect, Delivery, Disconnect, MqttString, Packet, PacketId, PubAck, Publish, QoS,
        ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
    };
    let transport = |e: crate::link::LinkError| ProvisionError::Transport(e.to_string());
    let mut config = config.clone();
    config.device_id.clone_from(&request.registration_id);
    config.subscriptions = Vec::new();
    let validated = crate::config::Validated::new(config)?;
    let mut link = crate::link::Link::open(&validated).await.map_err(transport)?;
    let mut connect =
        Connect::new(validated.version, validated.client_id.clone(), validated.keep_alive_secs);
    connect.clean_start = true;
    connect.username =
        Some(MqttString::new(BOOTSTRAP_USERNAME).expect("the bootstrap user name is valid"));
    connect.password = bootstrap_password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    link.send(&Packet::Connect(Box::new(connect))).await.map_err(transport)?;
    match link.recv().await.map_err(transport)? {
        Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => {}
        Packet::ConnAck(ack) => return Err(ProvisionError::LoginRefused(ack.reason_code)),
        other => {
            return Err(ProvisionError::InvalidAnswer(format!(
                "expected CONNACK, got {:?}",
                other.packet_type()
            )));
        }
    }
    let id = &request.registration_id;
    let invalid = |what: &str| ProvisionError::InvalidAnswer(what.to_owned());
    let response = TopicFilter::new(format!("$herd/provision/{id}/response"))
        .map_err(|_| invalid("the registration id makes no topic"))?;
    let register = TopicName::new(format!("$herd/provision/{id}/register"))
        .map_err(|_| invalid("the registration id makes no topic"))?;
    let subscribe = Subscribe {
        packet_id: PacketId::new(1).expect("1 is a packet id"),
        properties: mqtt_codec::Properties::default(),
        subscriptions: vec![Subscription {
            filter: response,
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
        }],
    };
    link.send(&Packet::Subscribe(subscribe)).await.map_err(transport)?;
    match link.recv().await.map_err(transport)? {
        Packet::SubAck(ack) if ack.reason_codes.iter().all(|c| !c.is_error()) => {}
        _ => return Err(invalid("the answer topic could not be subscribed to")),
    }
    let request_id = {
        let bytes: [u8; 8] = rand::random();
        hex::encode(bytes)
    };
    let mut body = request.to_json();
    if let Some(object) = body.as_object_mut() {
        // The topic names the registration id.
        object.remove("registration_id");
        object.insert("request_id".to_owned(), Value::String(request_id.clone()));
    }
    let mut publish = Publish::new(register, Bytes::from(body.to_string()));
    publish.delivery = Delivery::AtLeastOnce {
        packet_id: PacketId::new(2).expect("2 is a packet id"),
        dup: false,
    };
    link.send(&Packet::Publish(publish)).await.map_err(transport)?;
    let answer = loop {
        match link.recv().await.map_err(transport)? {
            Packet::PubAck(_) => {}
            Packet::Publish(p) => {
                if let Delivery::AtLeastOnce { packet_id, .. } = p.delivery {
                    link.send(&Packet::PubAck(PubAck::new(packet_id))).await.map_err(transport)?;
                }
                let v: Value = serde_json::from_slice(&p.payload)
                    .map_err(|_| invalid("the answer is not JSON"))?;
                if v.get("request_id").and_then(Value::as_str) == Some(request_id.as_str()) {
                    break (p.payload, v);
                }
            }
            other => {
                return Err(ProvisionError::InvalidAnswer(format!(
                    "unexpected {:?}",
                    other.packet_type()
                )));
            }
        }
    };
    let _ = link.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
    let (payload, v) = answer;
    if v.get("status").and_then(Value::as_str) == Some("registered") {
        return Registration::parse(&payload);
    }
    let code = v.get("code").and_then(Value::as_str).unwrap_or("error").to_owned();
    let retry_after = v.get("retry_after_secs").and_then(Value::as_u64).map(Duration::from_secs);
    Err(ProvisionError::Refused {
        // The HTTP status the same refusal has over HTTPS, so `is_retryable` holds for both.
        status: match code.as_str() {
            "invalid_request" | "invalid_csr" => 400,
            "invalid_proof" => 401,
            "enrollment_disabled"
            | "enrollment_expired"
            | "claim_code_exhausted"
            | "claim_code_expired" => 403,
            "device_conflict" => 409,
            "validation_failed" => 422,
            "too_many_attempts" => 429,
            _ => 503,
        },
        detail: v.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
        code,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_matches_the_worked_example_of_the_protocol() {
        let key = decode_derived_key("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=").unwrap();
        assert_eq!(key, vec![0xab; 32]);
        assert_eq!(
            symmetric_key_proof(&key, "SN-0042", 1_795_698_000),
            (1_795_698_000, "wxjn2Snje8XFdmJzxFfoWul8Z85+NacF9NmPMfaDAes=".to_owned())
        );
        let Proof::SymmetricKey { expires_at, signature } =
            Proof::symmetric_key(&key, "SN-0042", Duration::from_secs(60)).unwrap()
        else {
            panic!("a symmetric-key proof")
        };
        assert_eq!(symmetric_key_proof(&key, "SN-0042", expires_at).1, signature);
        assert!(decode_derived_key("not base64!").is_err());
        assert!(decode_derived_key("q6urq6s=").unwrap_err().to_string().contains("not 32"));
    }

    #[test]
    fn requests_are_the_documented_json() {
        let request = RegisterRequest::new(
            "SN-0042",
            "factory-a",
            Proof::SymmetricKey { expires_at: 1_795_698_000, signature: "c2ln".to_owned() },
        );
        assert_eq!(
            request.to_json(),
            json!({"registration_id": "SN-0042", "enrollment_group": "factory-a",
                   "proof": {"type": "symmetric_key", "expires_at": 1_795_698_000_u64, "signature": "c2ln"}})
        );
        let request = RegisterRequest::new("SN-1", "g", Proof::claim_code(" 7KQ4-M9XP-3HTW\n"))
            .with_csr("CSR");
        assert_eq!(
            request.to_json(),
            json!({"registration_id": "SN-1", "enrollment_group": "g",
                   "proof": {"type": "claim_code", "code": "7KQ4-M9XP-3HTW"}, "csr": "CSR"})
        );
        assert!(!format!("{request:?}").contains("7KQ4"));
    }

    #[test]
    fn answers_are_read_and_the_secret_is_never_shown() {
        let answer = br#"{"device_id":"fa-SN-1","created":true,"credential":{"type":"token","secret":"hdc_x"},"mqtt":{"client_id":"fa-SN-1","username":"fa-SN-1"}}"#;
        let r = Registration::parse(answer).unwrap();
        assert_eq!(
            (r.device_id.as_str(), r.created, r.secret.as_str()),
            ("fa-SN-1", true, "hdc_x")
        );
        assert_eq!(r.certificate_pem, None);
        assert!(!format!("{r:?}").contains("hdc_x"));
        assert!(matches!(Registration::parse(b"{}"), Err(ProvisionError::InvalidAnswer(_))));
        assert!(matches!(Registration::parse(b"<html>"), Err(ProvisionError::InvalidAnswer(_))));
    }

    #[test]
    fn urls_and_retryable_errors() {
        let u = BaseUrl::parse("https://herd.example.com").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, ""));
        let u = BaseUrl::parse("http://[::1]:8080/herd/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "::1", 8080, "/herd")
        );
        assert_eq!(u.authority(), "[::1]:8080");
        for bad in ["mqtt://h", "h:80", "http://", "http://h:x", "http://u@h", "http://h/?q"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
        let refused = |status| ProvisionError::Refused {
            status,
            code: "c".to_owned(),
            detail: String::new(),
            retry_after: None,
        };
        assert!(refused(429).is_retryable() && refused(503).is_retryable());
        assert!(!refused(401).is_retryable() && !refused(403).is_retryable());
        assert!(!refused(409).is_retryable());
        assert!(ProvisionError::Transport("x".to_owned()).is_retryable());
    }
}

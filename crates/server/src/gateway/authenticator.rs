//! Who an MQTT client is: a device, an integration application, or an anonymous client.
//!
//! [`GatewayAuthenticator`] decides at CONNECT, by the user name and password:
//!
//! | CONNECT | the client is | checked against |
//! | --- | --- | --- |
//! | user name = `$provision` ([`BOOTSTRAP_USERNAME`]) | a device provisioning itself | `provisioning.mqtt_bootstrap_password` when set (SHA-256, constant time) |
//! | user name = the name of a configured application | that application | its secret (SHA-256, constant time) |
//! | neither user name nor password | anonymous | `mqtt.allow_anonymous` |
//! | anything else | a device: client id = device id | a device credential in the store (through the cache) |
//!
//! An application name therefore wins over a device id equal to it in the user name; such a device
//! still connects by leaving the user name out (its client id names it). Applications and
//! anonymous clients may not take a client id that names a device: the broker keys sessions by
//! client id, and they must never take over, or pick up, a device's session.
//!
//! Devices get a [`DeviceAcl`] (their own subtree); applications and anonymous clients get their
//! [`TopicRules`].
//!
//! A bootstrap client (provisioning over MQTT, see `identity::provision_mqtt`) gets a
//! [`BootstrapAcl`]: publish to `$herd/provision/{client id}/register` and subscribe to
//! `$herd/provision/{client id}/response`, nothing else. Its client identifier must be a valid
//! registration id and may name no existing device except one in state `registered` (which never
//! had a session: it could not connect), so that it never takes over or resumes a device's
//! session; and its own session may not outlive the connection (Clean Start, no Session Expiry),
//! since the answers it receives carry a secret. Its peer address is remembered by client id (bounded, see [`BootstrapLogins`]) so that
//! the responder, which sees only the published message, counts failures per address too; and its
//! connection is not device presence (see `gateway::record_presence`).
//!
//! Failed logins are cheap on purpose: one SHA-256 and at most one indexed store read (none when
//! the password is not shaped like a device credential), no deliberate delay, nothing cached.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::collections::VecDeque;
use std::net::IpAddr;

use domain::{DeviceAccessChange, DeviceId, LifecycleState, RegistrationId, Timestamp, TokenHash};
use mqtt_broker::{Acl, Authenticator, Identity};
use mqtt_codec::{ClientId, Connect, ReasonCode, TopicFilter, TopicName};
use store::Store;
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{MqttConfig, MqttProvisioningConfig};
use crate::gateway::client_cert::{CertificateChain, PresentedCertificate};
use crate::gateway::credential_cache::{CachedCredential, CredentialCache, Lookup};
use crate::gateway::topic_rules::TopicRules;

/// The identity name of anonymous clients.
const ANONYMOUS: &str = "anonymous";

/// The user name of the bootstrap login of provisioning over MQTT (`$` cannot start an application
/// name or a device id, so it names neither).
pub const BOOTSTRAP_USERNAME: &str = "$provision";

/// The topic a bootstrap client publishes its registration to, for client id `id`.
pub fn bootstrap_register_topic(id: &str) -> String {
    format!("$herd/provision/{id}/register")
}

/// The topic a bootstrap client reads its answer on, for client id `id`.
pub fn bootstrap_response_topic(id: &str) -> String {
    format!("$herd/provision/{id}/response")
}

/// How long a successful device login may wait for its `Connected` event before it is forgotten
/// (see [`GatewayAuthenticator::confirm_device_login`]). Far longer than a connection takes to
/// register (`mqtt.connect_timeout_secs` at most) plus any presence backlog; it only bounds the
/// memory of logins that never registered (refused after authentication, or whose event the
/// broker dropped under overload).
const UNCONFIRMED_LOGIN_HORIZON: Duration = Duration::from_secs(600);

/// An integration application: a named client with a secret and topic rules
/// (`[[mqtt.applications]]`).
#[derive(Debug, Clone)]
pub struct Application {
    name: String,
    secret_hash: TokenHash,
    rules: Arc<TopicRules>,
}

impl Application {
    /// Longest application name.
    pub const MAX_NAME_CHARS: usize = 64;

    /// The application `name` (its MQTT user name), authenticated by the secret whose SHA-256 is
    /// `secret_hash`, bound by `rules`.
    ///
    /// # Errors
    /// When the name is not 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    pub fn new(
        name: impl Into<String>,
        secret_hash: TokenHash,
        rules: TopicRules,
    ) -> Result<Self, String> {
        let name = name.into();
        let valid = (1..=Self::MAX_NAME_CHARS).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(format!(
                "{name:?} is not an application name (1 to {} characters of A-Z a-z 0-9 . _ -)",
                Self::MAX_NAME_CHARS
            ));
        }
        Ok(Self { name, secret_hash, rules: Arc::new(rules) })
    }

    /// The name, which is also the user name the application connects with.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Authenticates MQTT clients (see the module documentation) and remembers each device login until
/// the broker reports the connection registered.
#[derive(Debug)]
pub struct GatewayAuthenticator {
    store: Arc<dyn Store>,
    cache: CredentialCache,
    applications: HashMap<String, Application>,
    /// The rules of anonymous clients; `None` refuses them (`mqtt.allow_anonymous = false`).
    anonymous: Option<Arc<TopicRules>>,
    logins: Mutex<UnconfirmedLogins>,
    /// Provisioning over MQTT; `None` refuses the bootstrap login.
    provisioning: Option<MqttProvisioningConfig>,
    /// Where bootstrap clients connected from, by client id.
    bootstrap: Mutex<BootstrapLogins>,
}

/// What [`GatewayAuthenticator::confirm_device_login`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginCheck {
    /// No device login is waiting for this connection: an application or anonymous client (or a
    /// login forgotten after [`UNCONFIRMED_LOGIN_HORIZON`]).
    NotADeviceLogin,
    /// The device and its credential are still good.
    StillValid,
    /// The device lost its access since it was authenticated (the label says how).
    Lost(&'static str),
}

impl GatewayAuthenticator {
    /// An authenticator checking devices in `store`, applications and anonymous clients as
    /// `config` says, caching credentials as `config` says, and invalidating the cache with the
    /// access changes of the REST API (`access_changes`; see [`Self::next_access_change`]).
    pub fn new(
        store: Arc<dyn Store>,
        config: &MqttConfig,
        access_changes: mpsc::Receiver<DeviceAccessChange>,
    ) -> Self {
        let cache =
            CredentialCache::new(config.auth_cache.entries, config.auth_cache.ttl, access_changes);
        let applications =
            config.applications.iter().map(|a| (a.name.clone(), a.clone())).collect();
        Self {
            store,
            cache,
            applications,
            anonymous: config.anonymous.clone(),
            logins: Mutex::new(UnconfirmedLogins::default()),
            bootstrap: Mutex::new(BootstrapLogins::new(
                config.provisioning.as_ref().map_or(1, |p| p.max_tracked_clients),
            )),
            provisioning: config.provisioning.clone(),
        }
    }

    /// The address the bootstrap client `client_id` last logged in from, when it is remembered.
    pub fn bootstrap_address(&self, client_id: &str) -> Option<IpAddr> {
        self.bootstrap_logins().get(client_id).flatten().map(|peer| peer.ip())
    }

    /// Most bootstrap logins remembered (`provisioning.mqtt_max_bootstrap_clients`).
    pub(crate) fn max_bootstrap_logins(&self) -> usize {
        self.bootstrap_logins().max
    }

    /// The certificate chain the bootstrap client `client_id` presented over mutual TLS at its
    /// last login, if it did (its X.509 registration proof).
    pub fn bootstrap_certificate_chain(&self, client_id: &str) -> Option<CertificateChain> {
        self.bootstrap_logins().chain(client_id)
    }

    /// Whether the connection of `client_id` from `peer` is the last bootstrap login of that
    /// client id (so not a device's connection).
    pub(crate) fn is_bootstrap_login(&self, client_id: &str, peer: Option<SocketAddr>) -> bool {
        self.bootstrap_logins().get(client_id) == Some(peer)
    }

    /// Forgets the bootstrap login of `client_id` from `peer`, whose connection ended (a newer
    /// login of the same client id from elsewhere is kept).
    pub(crate) fn forget_bootstrap_login(&self, client_id: &str, peer: Option<SocketAddr>) {
        self.bootstrap_logins().remove(client_id, peer);
    }

    fn bootstrap_logins(&self) -> std::sync::MutexGuard<'_, BootstrapLogins> {
        // A panic while holding the lock leaves entries that are still usable.
        self.bootstrap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next access change of the REST API, whose device's cached credentials are already
    /// dropped when it is returned; `None` once the REST side is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn next_access_change(&self) -> Option<DeviceAccessChange> {
        self.cache.next_change().await
    }

    /// Checks again, for the connection of `client_id` from `peer` that the broker just
    /// registered, that the device and the credential it logged in with are still good; the login
    /// is forgotten either way. A store error counts as still valid (the login itself was checked
    /// moments ago; the error is logged).
    pub(crate) async fn confirm_device_login(
        &self,
        client_id: &ClientId,
        peer: Option<SocketAddr>,
    ) -> LoginCheck {
        let Ok(device_id) = DeviceId::new(client_id.as_str()) else {
            return LoginCheck::NotADeviceLogin;
        };
        let taken =
            self.logins.lock().unwrap_or_else(PoisonError::into_inner).take(&device_id, peer);
        let Some(proof) = taken else { return LoginCheck::NotADeviceLogin };
        let verified = match &proof {
            LoginProof::Credential(hash) => self.verify_device_credential(&device_id, hash).await,
            LoginProof::Certificate(certificate) => {
                self.verify_device_certificate(&device_id, certificate).await
            }
        };
        match verified {
            Ok(()) => LoginCheck::StillValid,
            Err(refusal) if refusal.code == ReasonCode::ServerUnavailable => LoginCheck::StillValid,
            Err(refusal) => LoginCheck::Lost(refusal.why),
        }
    }

    async fn check(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, Refusal> {
        if connect.username.as_ref().is_some_and(|u| u.as_str() == BOOTSTRAP_USERNAME) {
            return self.check_bootstrap(connect, peer, None).await;
        }
        if let Some(app) = connect.username.as_ref().and_then(|u| self.applications.get(u.as_str()))
        {
            return self.check_application(app, connect).await;
        }
        if connect.username.is_none() && connect.password.is_none() {
            return self.check_anonymous(connect).await;
        }
        self.check_device(connect, peer).await
    }

    /// A device provisioning itself over MQTT (see the module documentation).
    async fn check_bootstrap(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
        chain: Option<CertificateChain>,
    ) -> Result<Identity, Refusal> {
        // 0x87 Not authorized: the login exists but this server does not offer it.
        let Some(provisioning) = &self.provisioning else {
            return Err(Refusal::new(ReasonCode::NotAuthorized, "provisioning_disabled"));
        };
        if let Some(expected) = &provisioning.password {
            let wrong = Refusal::new(ReasonCode::BadUserNameOrPassword, "bootstrap_password");
            let password = connect.password.as_ref().ok_or(wrong)?;
            let password = std::str::from_utf8(password).map_err(|_| wrong)?;
            let presented = TokenHash::of_secret(password);
            let same: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
            if !same {
                return Err(wrong);
            }
        }
        let client_id = RegistrationId::new(connect.client_id.as_str())
            .map_err(|_| Refusal::new(ReasonCode::ClientIdentifierNotValid, "client_id"))?;
        // The answer carries the device's secret: a session that outlived the connection would
        // keep it queued in the store, where Herd keeps only hashes of secrets. 0x87 Not
        // authorized (v3.1.1 return code 5): this login may not have a persistent session.
        if !connect.clean_start || connect.properties.session_expiry_interval.is_some_and(|s| s > 0)
        {
            return Err(Refusal::new(ReasonCode::NotAuthorized, "bootstrap_persistent_session"));
        }
        if let Ok(id) = DeviceId::new(client_id.as_str()) {
            match self.store.device(&id).await {
                Ok(Some(device)) if device.state != LifecycleState::Registered => {
                    return Err(Refusal::new(
                        ReasonCode::ClientIdentifierNotValid,
                        "client_id_names_a_device",
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(Refusal::unavailable(&e)),
            }
        }
        self.bootstrap_logins().insert(client_id.as_str(), peer, chain);
        Ok(Identity::new(
            format!("provision:{}", client_id.as_str()),
            Arc::new(BootstrapAcl::new(client_id.as_str())),
        ))
    }

    async fn check_anonymous(&self, connect: &Connect) -> Result<Identity, Refusal> {
        // MQTT 5 §3.2.2.2: 0x87 Not authorized, "the Client is not authorized to connect" (v3.1.1
        // §3.2.2.3 return code 5). Not 0x86 Bad User Name or Password: that says "the data in the
        // user name or password is malformed", and there is none. Mosquitto answers the same.
        let Some(rules) = &self.anonymous else {
            return Err(Refusal::new(ReasonCode::NotAuthorized, "anonymous"));
        };
        self.check_client_id_is_not_a_device(&connect.client_id).await?;
        Ok(Identity::new(ANONYMOUS, Arc::clone(rules) as Arc<dyn Acl>))
    }

    async fn check_application(
        &self,
        app: &Application,
        connect: &Connect,
    ) -> Result<Identity, Refusal> {
        let wrong = Refusal::new(ReasonCode::BadUserNameOrPassword, "application_secret");
        let password = connect.password.as_ref().ok_or(wrong)?;
        let password = std::str::from_utf8(password).map_err(|_| wrong)?;
        let presented = TokenHash::of_secret(password);
        let same: bool = presented.as_bytes().ct_eq(app.secret_hash.as_bytes()).into();
        if !same {
            return Err(wrong);
        }
        self.check_client_id_is_not_a_device(&connect.client_id).await?;
        Ok(Identity::new(format!("app:{}", app.name), Arc::clone(&app.rules) as Arc<dyn Acl>))
    }

    /// Refuses a non-device client whose client id names a device (0x85 Client Identifier not
    /// valid), so that it can neither take over a device's session nor resume one.
    async fn check_client_id_is_not_a_device(&self, client_id: &ClientId) -> Result<(), Refusal> {
        let Ok(id) = DeviceId::new(client_id.as_str()) else { return Ok(()) };
        match self.store.device(&id).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => {
                Err(Refusal::new(ReasonCode::ClientIdentifierNotValid, "client_id_names_a_device"))
            }
            Err(e) => Err(Refusal::unavailable(&e)),
        }
    }

    async fn check_device(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, Refusal> {
        // The client identifier names the device; an empty one (which would get an assigned
        // identifier) names none.
        let device_id = DeviceId::new(connect.client_id.as_str())
            .map_err(|_| Refusal::new(ReasonCode::ClientIdentifierNotValid, "client_id"))?;
        if let Some(username) = &connect.username
            && username.as_str() != device_id.as_str()
        {
            return Err(Refusal::new(ReasonCode::BadUserNameOrPassword, "username_mismatch"));
        }
        let password = connect
            .password
            .as_ref()
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or(Refusal::new(ReasonCode::BadUserNameOrPassword, "no_password"))?;
        // Every device credential has one shape; anything else is refused without a store read.
        if !is_credential_shaped(password) {
            return Err(Refusal::new(ReasonCode::BadUserNameOrPassword, "malformed_credential"));
        }
        let hash = TokenHash::of_secret(password);
        self.verify_device_credential(&device_id, &hash).await?;
        self.logins.lock().unwrap_or_else(PoisonError::into_inner).insert(
            device_id.clone(),
            peer,
            LoginProof::Credential(hash),
        );
        Ok(Identity::new(device_id.as_str(), Arc::new(DeviceAcl::new(&device_id))))
    }

    /// Authenticates the CONNECT of a client that presented `certificate` over TLS (chained to the
    /// device CA: the handshake checked that): a device logging in with that certificate. The
    /// client identifier names the device; a user name, if any, must name it too; a password is
    /// ignored. See `client_cert` for what the certificate must be.
    pub(crate) async fn authenticate_certificate(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
        certificate: &PresentedCertificate,
        chain: Option<CertificateChain>,
    ) -> Result<Identity, ReasonCode> {
        if connect.username.as_ref().is_some_and(|u| u.as_str() == BOOTSTRAP_USERNAME) {
            // A device onboarding with its maker's certificate: the certificate is its proof,
            // checked by the provisioner against the enrollment group's CA.
            return self.check_bootstrap(connect, peer, chain).await.map_err(refused);
        }
        let checked = async {
            let device_id = DeviceId::new(connect.client_id.as_str())
                .map_err(|_| Refusal::new(ReasonCode::ClientIdentifierNotValid, "client_id"))?;
            if let Some(username) = &connect.username
                && username.as_str() != device_id.as_str()
            {
                return Err(Refusal::new(ReasonCode::BadUserNameOrPassword, "username_mismatch"));
            }
            self.verify_device_certificate(&device_id, certificate).await?;
            self.logins.lock().unwrap_or_else(PoisonError::into_inner).insert(
                device_id.clone(),
                peer,
                LoginProof::Certificate(certificate.clone()),
            );
            Ok(Identity::new(device_id.as_str(), Arc::new(DeviceAcl::new(&device_id))))
        };
        checked.await.map_err(refused)
    }

    /// Checks that `certificate` is a certificate Herd issued to `device_id` (the same DER
    /// encoding, by its SHA-256), usable now (not revoked, within its validity), and that the
    /// device is active: two store reads, nothing cached, so a revocation holds at the next
    /// CONNECT.
    async fn verify_device_certificate(
        &self,
        device_id: &DeviceId,
        certificate: &PresentedCertificate,
    ) -> Result<(), Refusal> {
        // MQTT 5 §3.2.2.2: 0x87 Not authorized for every certificate problem: the client sent no
        // user name or password that could be wrong (v3.1.1: return code 5).
        let stored = self
            .store
            .device_certificate_by_serial(&certificate.serial)
            .await
            .map_err(|e| Refusal::unavailable(&e))?
            .ok_or(Refusal::new(ReasonCode::NotAuthorized, "unknown_certificate"))?;
        let same: bool = stored
            .fingerprint_sha256
            .as_bytes()
            .ct_eq(certificate.fingerprint_sha256.as_bytes())
            .into();
        if !same {
            return Err(Refusal::new(ReasonCode::NotAuthorized, "unknown_certificate"));
        }
        if stored.device_id != *device_id {
            return Err(Refusal::new(ReasonCode::NotAuthorized, "wrong_device"));
        }
        if !stored.is_usable_at(Timestamp::now()) {
            return Err(Refusal::new(ReasonCode::NotAuthorized, "certificate_not_usable"));
        }
        let device = self
            .store
            .device(device_id)
            .await
            .map_err(|e| Refusal::unavailable(&e))?
            .ok_or(Refusal::new(ReasonCode::NotAuthorized, "unknown_certificate"))?;
        check_device_state(device.state)
    }

    /// Checks that the credential whose secret hashes to `hash` belongs to `device_id`, is usable
    /// now, and that the device is active: from the cache when it can, else from one store read
    /// of the credential with its device's state (caching a success).
    async fn verify_device_credential(
        &self,
        device_id: &DeviceId,
        hash: &TokenHash,
    ) -> Result<(), Refusal> {
        let now = Timestamp::now();
        let ticket = match self.cache.lookup(hash, now) {
            Lookup::Hit(cached) if cached.device_id == *device_id => return Ok(()),
            Lookup::Hit(_) => {
                return Err(Refusal::new(ReasonCode::BadUserNameOrPassword, "wrong_device"));
            }
            Lookup::Miss(ticket) => ticket,
        };
        // One read: the credential and its device's state together.
        let login = self
            .store
            .device_login(hash)
            .await
            .map_err(|e| Refusal::unavailable(&e))?
            .ok_or(Refusal::new(ReasonCode::BadUserNameOrPassword, "unknown_credential"))?;
        let credential = login.credential;
        // The store found it by this hash; comparing again in constant time keeps the decision
        // independent of how a backend compares.
        let same_hash: bool = credential.hash.as_bytes().ct_eq(hash.as_bytes()).into();
        if !same_hash || credential.device_id != *device_id {
            return Err(Refusal::new(ReasonCode::BadUserNameOrPassword, "wrong_device"));
        }
        if !credential.is_usable_at(now) {
            return Err(Refusal::new(ReasonCode::BadUserNameOrPassword, "credential_not_usable"));
        }
        check_device_state(login.device_state)?;
        let cached = CachedCredential {
            device_id: device_id.clone(),
            credential_id: credential.id,
            expires_at: credential.expires_at,
        };
        self.cache.insert(ticket, *hash, cached);
        Ok(())
    }
}

/// Whether a device in `state` may connect.
fn check_device_state(state: LifecycleState) -> Result<(), Refusal> {
    match state {
        LifecycleState::Active => Ok(()),
        // MQTT 5 §3.2.2.2: 0x8A Banned, "this Client has been banned by administrative action":
        // an operator took the device out of service.
        LifecycleState::Suspended | LifecycleState::Decommissioned | LifecycleState::Retired => {
            Err(Refusal::new(ReasonCode::Banned, "device_not_active"))
        }
        // 0x87 Not authorized, "the Client is not authorized to connect": a registered device
        // has not been activated yet (return code 5, refused, not authorized, on v3.1.1, as is
        // 0x8A). A deleted device has no credentials left: its CONNECT is refused as an unknown
        // credential or certificate.
        LifecycleState::Registered => {
            Err(Refusal::new(ReasonCode::NotAuthorized, "device_not_active"))
        }
    }
}

impl Authenticator for GatewayAuthenticator {
    async fn authenticate(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, ReasonCode> {
        self.check(connect, peer).await.map_err(refused)
    }
}

/// Counts and logs a refused CONNECT; its reason code.
fn refused(refusal: Refusal) -> ReasonCode {
    metrics::counter!("mqtt_auth_failures_total", "reason" => refusal.why).increment(1);
    tracing::info!(reason = refusal.why, code = ?refusal.code, "MQTT authentication refused");
    refusal.code
}

/// Whether `password` has the shape of every device credential secret: `hdc_` and 64 lowercase
/// hex digits (see `http_api::auth::generate_credential_secret`).
fn is_credential_shaped(password: &str) -> bool {
    password.strip_prefix(http_api::auth::CREDENTIAL_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Why a CONNECT was refused: the reason code the client gets and a label for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    code: ReasonCode,
    why: &'static str,
}

impl Refusal {
    fn new(code: ReasonCode, why: &'static str) -> Self {
        Self { code, why }
    }

    /// The store failed: 0x88 Server unavailable (v3.1.1 return code 3), so the device retries.
    fn unavailable(error: &store::StoreError) -> Self {
        tracing::error!(error = %error, "MQTT authentication failed: store error");
        Self::new(ReasonCode::ServerUnavailable, "store_error")
    }
}

/// What a device logged in with: the hash of a credential's secret, or a certificate.
#[derive(Debug, Clone)]
enum LoginProof {
    Credential(TokenHash),
    Certificate(PresentedCertificate),
}

/// Device logins the broker has not yet reported registered: (device, peer) → what it logged in
/// with.
#[derive(Debug, Default)]
struct UnconfirmedLogins {
    logins: HashMap<(DeviceId, Option<SocketAddr>), (LoginProof, Instant)>,
    /// Size at which the next sweep of logins older than [`UNCONFIRMED_LOGIN_HORIZON`] runs;
    /// doubling it after each sweep keeps the sweeps amortized constant time per login.
    sweep_at: usize,
}

impl UnconfirmedLogins {
    /// Least size at which a sweep runs.
    const MIN_SWEEP: usize = 1024;

    fn insert(&mut self, device: DeviceId, peer: Option<SocketAddr>, proof: LoginProof) {
        let now = Instant::now();
        if self.logins.len() >= self.sweep_at.max(Self::MIN_SWEEP) {
            self.logins.retain(|_, (_, at)| now.duration_since(*at) < UNCONFIRMED_LOGIN_HORIZON);
            self.sweep_at = 2 * self.logins.len();
        }
        self.logins.insert((device, peer), (proof, now));
    }

    fn take(&mut self, device: &DeviceId, peer: Option<SocketAddr>) -> Option<LoginProof> {
        // The key is owned; build it once per confirmation.
        self.logins.remove(&(device.clone(), peer)).map(|(proof, _)| proof)
    }
}

/// Where bootstrap clients logged in from, by client id: at most `max` entries, the oldest login
/// forgotten when a new one needs room (its registrations are then rate-limited by registration id
/// only). An entry goes when its connection ends (`gateway::record_presence`).
#[derive(Debug)]
pub(crate) struct BootstrapLogins {
    /// Client id → (peer, the login's sequence number, the certificate chain it presented over
    /// mutual TLS).
    entries: HashMap<String, (Option<SocketAddr>, u64, Option<CertificateChain>)>,
    /// Client ids in login order with the sequence number of that login; stale pairs (the client
    /// id logged in again, or was forgotten) are skipped when met.
    order: VecDeque<(String, u64)>,
    next: u64,
    max: usize,
}

impl BootstrapLogins {
    fn new(max: usize) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), next: 0, max: max.max(1) }
    }

    fn insert(
        &mut self,
        client_id: &str,
        peer: Option<SocketAddr>,
        chain: Option<CertificateChain>,
    ) {
        if !self.entries.contains_key(client_id) {
            while self.entries.len() >= self.max {
                let Some((oldest, seq)) = self.order.pop_front() else { break };
                if self.entries.get(&oldest).is_some_and(|(_, s, _)| *s == seq) {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.next += 1;
        self.entries.insert(client_id.to_owned(), (peer, self.next, chain));
        self.order.push_back((client_id.to_owned(), self.next));
        // Re-logins and forgotten entries leave stale pairs behind: drop them once they
        // outnumber the live ones, so the queue stays within twice the bound (amortized O(1)).
        if self.order.len() > 2 * self.max {
            let entries = &self.entries;
            self.order.retain(|(id, seq)| entries.get(id).is_some_and(|(_, s, _)| s == seq));
        }
    }

    fn get(&self, client_id: &str) -> Option<Option<SocketAddr>> {
        self.entries.get(client_id).map(|(peer, _, _)| *peer)
    }

    fn chain(&self, client_id: &str) -> Option<CertificateChain> {
        self.entries.get(client_id).and_then(|(_, _, chain)| chain.clone())
    }

    fn remove(&mut self, client_id: &str, peer: Option<SocketAddr>) {
        if self.get(client_id) == Some(peer) {
            self.entries.remove(client_id);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A bootstrap client's ACL: publish its registration to `$herd/provision/{client id}/register`
/// and subscribe to `$herd/provision/{client id}/response`, exactly (no wildcard, no shared
/// subscription); nothing else.
#[derive(Debug, Clone)]
pub struct BootstrapAcl {
    register: String,
    response: String,
}

impl BootstrapAcl {
    /// The ACL of the bootstrap client `client_id` (a registration id: no wildcard, no `/`).
    pub fn new(client_id: &str) -> Self {
        Self {
            register: bootstrap_register_topic(client_id),
            response: bootstrap_response_topic(client_id),
        }
    }
}

impl Acl for BootstrapAcl {
    fn may_publish(&self, topic: &TopicName) -> bool {
        topic.as_str() == self.register
    }

    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        filter.share_name().is_none() && filter.filter() == self.response
    }
}

/// A device's ACL: publish and subscribe only under `devices/{its id}/`.
///
/// Device ids hold only `[A-Za-z0-9._:-]`, so the prefix has no wildcard or separator of its own: a
/// filter that starts with it can only match topics inside the subtree, whatever wildcards follow.
#[derive(Debug, Clone)]
pub struct DeviceAcl {
    /// `devices/{id}/`.
    prefix: String,
}

impl DeviceAcl {
    /// The ACL of device `id`.
    pub fn new(id: &DeviceId) -> Self {
        Self { prefix: format!("devices/{}/", id.as_str()) }
    }
}

impl Acl for DeviceAcl {
    fn may_publish(&self, topic: &TopicName) -> bool {
        topic.as_str().starts_with(&self.prefix)
    }

    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        // For `$share/{group}/{filter}` this is the inner filter, so a shared subscription is allowed
        // exactly when the same filter would be.
        filter.filter().starts_with(&self.prefix)
    }
}

#[cfg(test)]
mod tests;

//! The MQTT gateway of `herd serve`: the TCP and TLS listeners, client authentication and ACLs,
//! and enforcement of access changes on live connections.
//!
//! - [`bind_mqtt_listeners`] binds the TCP listener ([`bind_mqtt`]) and the TLS listener
//!   ([`bind_mqtt_tls`], which also loads the certificate) before [`crate::serve::run`] starts,
//!   like HTTP.
//! - [`accept_loop`] accepts sockets until told to stop, holding one permit of a semaphore per
//!   connection (`mqtt.max_connections`, shared by TCP, TLS and WebSocket), and serves each with
//!   [`BrokerHandle::serve`] in a tracked task; on the TLS listener the task first completes the
//!   TLS handshake within `mqtt.connect_timeout_secs`, so a slow handshake never delays accepting.
//!   MQTT over WebSocket (`GET /mqtt` on the HTTP listener) is in [`crate::websocket`].
//! - [`GatewayAuthenticator`] (in `authenticator`) checks a CONNECT: devices (client identifier =
//!   device id, password = a device credential of an `active` device, looked up through the
//!   credential cache of `credential_cache`) get a [`DeviceAcl`], their own subtree
//!   `devices/{id}/`; integration [`Application`]s (`[[mqtt.applications]]`) and anonymous
//!   clients (`mqtt.allow_anonymous`) get their [`TopicRules`] (in `topic_rules`).
//! - [`enforce_access_changes`] closes the live connection of a device whose access the REST API has
//!   taken away (suspended, deleted, credential revoked); its next CONNECT is checked again.
//! - [`record_presence`] turns the broker's connection events into presence records in the store
//!   (`connected`, since when, from where, over which protocol, why the last connection ended),
//!   written in batches of whatever has queued up, and checks each device connection once more
//!   when it is registered (see there why).
//! - [`record_agent_reports`] (in `agent_reports`) records what devices' agents publish about
//!   themselves on `devices/{id}/facts` and `devices/{id}/heartbeat`, read through in-process broker
//!   subscriptions ([`AgentReportFeeds`]) and written to the store in batches.

mod agent_reports;
mod arrivals;
mod authenticator;
pub mod client_cert;
mod credential_cache;
mod topic_rules;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use domain::{DeviceId, Timestamp};
use futures_util::FutureExt as _;
use mqtt_broker::{BrokerHandle, ConnectionEvent, DisconnectReason, protocol_label};
use mqtt_codec::ReasonCode;
use rustls::server::danger::ClientCertVerifier;
use store::{PresenceEvent, Store};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{MqttConfig, MqttTlsConfig};
pub use crate::gateway::agent_reports::{
    AgentReportFeeds, FACTS_FILTER, HEARTBEAT_FILTER, record_agent_reports,
};
pub use crate::gateway::arrivals::{ARRIVALS_CAPACITY, ArrivalListener, DeviceArrivals};
use crate::gateway::authenticator::LoginCheck;
pub use crate::gateway::authenticator::{
    Application, BOOTSTRAP_USERNAME, BootstrapAcl, DeviceAcl, GatewayAuthenticator,
    bootstrap_register_topic, bootstrap_response_topic,
};
pub use crate::gateway::topic_rules::{TopicRules, filter_covers, filters_overlap};

/// Capacity of the channel of access-change events from the REST API to the gateway. When it is full
/// the REST requests that revoke access wait for room (http-api never drops an event); the gateway
/// empties it as fast as the broker takes disconnect commands.
pub const ACCESS_EVENTS_CAPACITY: usize = 256;

/// Capacity of the channel of connection events from the broker to [`record_presence`]. When it is
/// full (the store is slower than connections come and go) the broker drops further events and
/// counts them in `mqtt_presence_events_dropped_total`: presence can then be stale for a device until
/// its next connect or disconnect, and the broker never waits for the store.
pub const PRESENCE_EVENTS_CAPACITY: usize = 4096;

/// Most presence events [`record_presence`] writes in one store transaction. Bigger batches commit
/// less often; this bound keeps one transaction short (the SQLite writer is shared with every other
/// write) and the memory of one batch small.
const MAX_PRESENCE_BATCH: usize = 512;

/// How long the accept loop pauses after an accept error (such as running out of file descriptors),
/// so that it does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Binds the MQTT listener, naming the address and the setting to change when it fails.
///
/// # Errors
/// When the address is in use (Mosquitto often holds 127.0.0.1:1883), not local, or not permitted.
pub async fn bind_mqtt(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    bind(
        addr,
        "MQTT",
        "--mqtt-listen, HERD_MQTT__LISTEN or mqtt.listen in the config file (empty disables MQTT)",
    )
    .await
}

/// Binds `addr` for `what`, naming the address and `settings` (where to change it) when it fails.
async fn bind(addr: SocketAddr, what: &str, settings: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the address is already in use by another process (another MQTT broker, such as \
                 Mosquitto?)"
                    .to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".to_owned()
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "the address is not one of this machine's".to_owned()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!(
            "cannot listen for {what} on {addr}: {why}; choose another address with {settings}"
        )
    })
}

/// The bound MQTT listeners of `herd serve`; either may be off.
#[derive(Debug, Default)]
pub struct MqttListeners {
    /// MQTT over TCP (`mqtt.listen`).
    pub tcp: Option<TcpListener>,
    /// MQTT over TLS (`mqtt.tls_listen`).
    pub tls: Option<TlsListener>,
}

/// A bound MQTT over TLS listener with the server certificate it presents.
pub struct TlsListener {
    /// The bound socket.
    pub listener: TcpListener,
    identity: ServerIdentity,
}

impl TlsListener {
    /// The acceptor of this listener's handshakes: its certificate, and client certificates
    /// verified by `clients` (see [`client_cert`]).
    ///
    /// # Errors
    /// When the certificate and key do not fit together.
    pub fn acceptor(&self, clients: Arc<dyn ClientCertVerifier>) -> anyhow::Result<TlsAcceptor> {
        Ok(TlsAcceptor::from(self.identity.server_config(clients)?))
    }
}

/// The certificate chain and private key the MQTT over TLS listener presents.
struct ServerIdentity {
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    /// Named in error messages.
    config: MqttTlsConfig,
}

impl ServerIdentity {
    fn load(config: &MqttTlsConfig) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&config.cert_file)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .with_context(|| {
                format!(
                    "cannot read certificates from {} (mqtt.tls_cert_file)",
                    config.cert_file.display()
                )
            })?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{} (mqtt.tls_cert_file) holds no PEM certificate",
            config.cert_file.display()
        );
        let key = PrivateKeyDer::from_pem_file(&config.key_file).with_context(|| {
            format!(
                "cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM) from {} (mqtt.tls_key_file)",
                config.key_file.display()
            )
        })?;
        let identity = Self { certs, key, config: config.clone() };
        // The key is checked against the certificate now, before any port is bound.
        identity.server_config(Arc::new(rustls::server::NoClientAuth))?;
        Ok(identity)
    }

    fn server_config(
        &self,
        clients: Arc<dyn ClientCertVerifier>,
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let server_config = rustls::ServerConfig::builder_with_provider(tls_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("the TLS provider supports neither TLS 1.2 nor 1.3")?
            .with_client_cert_verifier(clients)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .with_context(|| {
                format!(
                    "the key in {} does not fit the certificate in {}",
                    self.config.key_file.display(),
                    self.config.cert_file.display()
                )
            })?;
        Ok(Arc::new(server_config))
    }
}

/// The TLS provider of every listener: aws-lc-rs.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("listener", &self.listener).finish_non_exhaustive()
    }
}

/// Binds the configured MQTT listeners (TCP and TLS), loading the TLS certificate and key first.
///
/// # Errors
/// When an address cannot be bound or the certificate or key cannot be loaded.
pub async fn bind_mqtt_listeners(config: &MqttConfig) -> anyhow::Result<MqttListeners> {
    let tls = match &config.tls {
        Some(tls) => Some(bind_mqtt_tls(tls).await?),
        None => None,
    };
    let tcp = match config.listen {
        Some(addr) => Some(bind_mqtt(addr).await?),
        None => None,
    };
    Ok(MqttListeners { tcp, tls })
}

/// Loads the certificate and key of `config` and binds the MQTT over TLS listener.
///
/// # Errors
/// When the PEM files hold no usable certificate or key, they do not match, or the address cannot
/// be bound (the message names the address and `--mqtts-listen`).
pub async fn bind_mqtt_tls(config: &MqttTlsConfig) -> anyhow::Result<TlsListener> {
    let identity = ServerIdentity::load(config)?;
    let listener = bind(
        config.listen,
        "MQTT over TLS",
        "--mqtts-listen, HERD_MQTT__TLS_LISTEN or mqtt.tls_listen in the config file (empty \
         disables MQTT over TLS)",
    )
    .await?;
    Ok(TlsListener { listener, identity })
}

/// The rustls server configuration of an MQTT over TLS listener that asks for no client
/// certificate: the aws-lc-rs provider, TLS 1.2 and 1.3, the certificate chain and key of
/// `config`. (`herd serve` also verifies client certificates: [`TlsListener::acceptor`].)
///
/// # Errors
/// When a file cannot be read, holds no certificate or key, or the key does not match.
pub fn tls_server_config(config: &MqttTlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    ServerIdentity::load(config)?.server_config(Arc::new(rustls::server::NoClientAuth))
}

/// How an [`accept_loop`] turns an accepted socket into an MQTT byte stream.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP: the socket is the stream.
    Tcp,
    /// TLS: the handshake must finish within `handshake_timeout`, in the connection's own task.
    Tls {
        /// Performs the server side of the handshake.
        acceptor: TlsAcceptor,
        /// Longest handshake (`mqtt.connect_timeout_secs`).
        handshake_timeout: std::time::Duration,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("Tcp"),
            Self::Tls { handshake_timeout, .. } => {
                f.debug_struct("Tls").field("handshake_timeout", handshake_timeout).finish()
            }
        }
    }
}

/// Accepts MQTT connections on `listener` until `stop` is cancelled, serving each in a task of
/// `connections`.
///
/// Each connection holds one of `permits` (`mqtt.max_connections`, shared by every listener): a
/// socket accepted when none is left is closed at once, before it can send anything, and counted
/// (`mqtt_connections_rejected_total`). Over TLS the handshake runs in the connection's task, so a
/// slow or silent client never delays the next accept; a failed or timed-out handshake closes the
/// socket and is counted (`mqtt_tls_handshake_failures_total`). The connection tasks end by
/// themselves when the broker's shutdown token fires (DISCONNECT 0x8B); handshakes in progress end
/// when `stop` is cancelled. The caller waits for `connections` after cancelling both.
pub async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    broker: BrokerHandle,
    authenticator: Arc<GatewayAuthenticator>,
    permits: Arc<Semaphore>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let max_connections = permits.available_permits();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(error = %error, "failed to accept an MQTT connection");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("mqtt_connections_rejected_total", "reason" => "max_connections")
                .increment(1);
            tracing::warn!(%peer, max_connections, "too many MQTT connections; closing a new one");
            drop(stream);
            continue;
        };
        // Small packets (PUBACK, PINGRESP) go out at once rather than waiting for more.
        let _ = stream.set_nodelay(true);
        if let Transport::Tcp = transport {
            // Spawned as it is: an `async` block around it would hold a second copy of what it
            // moves in, and every idle connection would pay for it.
            let serve = broker.serve_owned(stream, Some(peer), Arc::clone(&authenticator));
            connections.spawn(serve.map(move |_| drop(permit)));
            continue;
        }
        let broker = broker.clone();
        let authenticator = Arc::clone(&authenticator);
        let transport = transport.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            // The connection logs its own end.
            match transport {
                Transport::Tcp => {}
                Transport::Tls { acceptor, handshake_timeout } => {
                    let handshake = tokio::select! {
                        () = stop.cancelled() => return,
                        // Boxed: a TLS handshake's state is large, and the task of every plain TCP
                        // connection would otherwise reserve room for it for its whole life.
                        done = Box::pin(tokio::time::timeout(handshake_timeout, acceptor.accept(stream))) => done,
                    };
                    match handshake {
                        Ok(Ok(tls)) => {
                            // Boxed for the same reason: a TLS connection's future is much larger
                            // than a plain one's.
                            match client_cert::PresentedCertificate::of_connection(tls.get_ref().1) {
                                Some(None) => {
                                    let serve =
                                        broker.serve(tls, Some(peer), authenticator.as_ref());
                                    let _ = Box::pin(serve).await;
                                }
                                Some(Some((certificate, chain))) => {
                                    let login = client_cert::CertificateLogin::new(
                                        authenticator,
                                        certificate,
                                        chain,
                                    );
                                    let _ = Box::pin(broker.serve(tls, Some(peer), &login)).await;
                                }
                                None => {
                                    // The chain verified, yet the certificate is not one a device
                                    // CA issues (its serial): nothing could log in with it.
                                    metrics::counter!("mqtt_tls_handshake_failures_total", "reason" => "certificate")
                                        .increment(1);
                                    tracing::debug!(%peer, "MQTT TLS client certificate unreadable");
                                }
                            }
                        }
                        Ok(Err(error)) => {
                            metrics::counter!("mqtt_tls_handshake_failures_total", "reason" => "error")
                                .increment(1);
                            tracing::debug!(%peer, error = %error, "MQTT TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("mqtt_tls_handshake_failures_total", "reason" => "timeout")
                                .increment(1);
                            tracing::debug!(%peer, "MQTT TLS handshake timed out");
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    tracing::debug!("MQTT listener closed");
}

/// Capacity of the channel of messages from the REST API to devices ([`forward_device_notices`]).
/// When it is full the REST requests that send one wait for room.
pub const DEVICE_NOTICES_CAPACITY: usize = 256;

/// Publishes the messages the REST API sends to devices (QoS 1 to `devices/{id}/{subtopic}`)
/// until `stop` is cancelled or the REST side is gone.
pub async fn forward_device_notices(
    mut notices: mpsc::Receiver<domain::DeviceNotice>,
    broker: BrokerHandle,
    stop: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            () = stop.cancelled() => break,
            notice = notices.recv() => match notice {
                Some(notice) => notice,
                None => break,
            },
        };
        let topic = format!("devices/{}/{}", notice.device_id.as_str(), notice.subtopic);
        let Ok(topic) = mqtt_codec::TopicName::new(topic) else {
            tracing::warn!(device_id = %notice.device_id, "a device notice with an invalid topic");
            continue;
        };
        let mut message = mqtt_broker::Message::new(topic, notice.payload);
        message.qos = mqtt_codec::QoS::AtLeastOnce;
        if let Err(error) = broker.publish(message).await {
            tracing::debug!(error = %error, "broker stopped; device notices no longer sent");
            break;
        }
    }
}

/// Closes the live MQTT connection of each device whose access the REST API took away, with
/// DISCONNECT 0x98 (Administrative action; v3.1.1 clients see the socket close), until `stop` is
/// cancelled or the REST side is gone.
///
/// The events come through `authenticator`, which owns their channel: taking one drops the
/// device's cached credentials in the same step, before its connection is closed here.
pub async fn enforce_access_changes(
    authenticator: Arc<GatewayAuthenticator>,
    broker: BrokerHandle,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = authenticator.next_access_change() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match broker
            .disconnect_client(event.device_id.as_str(), ReasonCode::AdministrativeAction)
            .await
        {
            Ok(connected) => tracing::info!(
                device_id = %event.device_id,
                reason = ?event.reason,
                connected,
                "device access changed; closing its MQTT connection"
            ),
            Err(error) => {
                tracing::debug!(error = %error, "broker stopped; access changes no longer enforced");
                break;
            }
        }
    }
}

/// Records the broker's connection `events` as device presence in `store` until `stop` is
/// cancelled; then records the events already queued (the `server_shutdown` disconnects of a
/// shutdown) and returns. Cancel `stop` only once the connections have ended.
///
/// Events are written in batches: each time one arrives, the events queued behind it (up to
/// `MAX_PRESENCE_BATCH` in all) are taken too and written in one store call, one transaction, in
/// the order they came. A reconnect storm then costs one commit per batch rather than one per
/// event, and the queue ([`PRESENCE_EVENTS_CAPACITY`]) drains faster than it fills.
///
/// Each device connection is also checked once more when the broker reports it registered (see
/// `confirm_connection` for why): as each `Connected` event is taken from the queue, before its
/// batch is written. Client identifiers that are not device ids are ignored (no device can own
/// them), and so are the connections of bootstrap clients (provisioning over MQTT), whose client
/// id may be a device's id: a `Connected` event whose client id and peer are those of the last
/// bootstrap login of that client id is one, and the next `Disconnected` of that client id (the
/// events of one client id come in order) ends it and forgets the login's address. Should the
/// broker drop a bootstrap client's `Connected` event under overload, its `Disconnected` may be
/// recorded for a device of the same id (a disconnect of a device that was not connected). A store error is logged and the batch is lost (each event counted in
/// `mqtt_presence_events_dropped_total{reason="store_error"}`); the next event of a device corrects
/// its presence.
///
/// Once a batch is written, each device connection in it is announced on `arrivals` (see
/// [`DeviceArrivals`]), in order; not during the shutdown drain.
pub async fn record_presence(
    mut events: mpsc::Receiver<ConnectionEvent>,
    store: Arc<dyn Store>,
    authenticator: Arc<GatewayAuthenticator>,
    broker: BrokerHandle,
    arrivals: DeviceArrivals,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_PRESENCE_BATCH);
    let mut arrived = Vec::new();
    let mut bootstrap = BootstrapConnections::default();
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let mut next = Some(first);
        while let Some(event) = next {
            if !bootstrap.takes(&authenticator, &event) {
                if let ConnectionEvent::Connected { client_id, peer, .. } = &event {
                    confirm_connection(&authenticator, &broker, client_id, *peer).await;
                }
                batch.extend(presence_event(event, Timestamp::now()));
            }
            next = if batch.len() < MAX_PRESENCE_BATCH { events.try_recv().ok() } else { None };
        }
        arrived.extend(batch.iter().filter_map(|e| match e {
            PresenceEvent::Connect { device_id, .. } => Some(device_id.clone()),
            PresenceEvent::Disconnect { .. } => None,
        }));
        write_presence(store.as_ref(), &mut batch).await;
        for device in arrived.drain(..) {
            arrivals.announce(device);
        }
    }
    // Stopped: the connections have ended, and what is queued is still recorded.
    loop {
        while batch.len() < MAX_PRESENCE_BATCH {
            let Ok(event) = events.try_recv() else { break };
            if !bootstrap.takes(&authenticator, &event) {
                batch.extend(presence_event(event, Timestamp::now()));
            }
        }
        if batch.is_empty() {
            break;
        }
        write_presence(store.as_ref(), &mut batch).await;
    }
    tracing::debug!("presence recorder stopped");
}

/// The bootstrap clients connected now, as [`record_presence`] follows them: client id → peer.
/// An entry lives from its `Connected` to its `Disconnected`; one left behind by a dropped
/// `Disconnected` goes at the next connection of its client id, and the map never holds more
/// entries than the authenticator remembers bootstrap logins (older ones are dropped first).
#[derive(Debug, Default)]
struct BootstrapConnections {
    live: std::collections::HashMap<mqtt_codec::ClientId, Option<SocketAddr>>,
}

impl BootstrapConnections {
    /// Whether `event` belongs to a bootstrap client's connection (and so is not presence).
    fn takes(&mut self, authenticator: &GatewayAuthenticator, event: &ConnectionEvent) -> bool {
        match event {
            ConnectionEvent::Connected { client_id, peer, .. } => {
                if authenticator.is_bootstrap_login(client_id.as_str(), *peer) {
                    if self.live.len() >= authenticator.max_bootstrap_logins() {
                        // Only connections whose login is still remembered are kept.
                        self.live.retain(|id, peer| {
                            authenticator.is_bootstrap_login(id.as_str(), *peer)
                        });
                    }
                    self.live.insert(client_id.clone(), *peer);
                    true
                } else {
                    self.live.remove(client_id);
                    false
                }
            }
            ConnectionEvent::Disconnected { client_id, .. } => match self.live.remove(client_id) {
                Some(peer) => {
                    authenticator.forget_bootstrap_login(client_id.as_str(), peer);
                    true
                }
                None => false,
            },
        }
    }
}

/// Closes the connection of `client_id` from `peer`, just registered by the broker, when it is a
/// device whose access was taken away after its CONNECT was checked.
///
/// # Why this check is needed, and why it is enough
///
/// A connection is checked at CONNECT (A) and registered by the broker afterwards (R), which then
/// reports `Connected` (V), handled here (K): A < R < V < K. A change that takes a device's access
/// away is committed (C), then its event is sent; [`enforce_access_changes`] takes the event,
/// which drops the device's cached credentials in the same step (I), and then asks the broker to
/// close the device's connection (D): C < I < D.
///
/// The broker handles R and D in some order. When R comes first, D closes the connection. When D
/// comes first, D finds nothing to close (the race this check exists for: A was checked before C,
/// or from a cache entry that C made stale), and then I < D < R < V < K: the check here runs after
/// I, so it cannot be answered from an entry that predates C (I dropped those, and the cache does
/// not keep the result of a store read that began before an invalidation), so it reads the store,
/// sees C, and closes the connection with the same 0x98 as D would have. In both orders the device
/// does not stay connected.
///
/// The check is the credential the connection presented (remembered from A by (device, peer)) and
/// the device's state; in the common case it is a cache hit. When it finds the access gone it
/// closes the device's connection by client id; should a newer connection of the device with a
/// valid credential have taken the session over in between, that one is closed instead and simply
/// reconnects.
pub(crate) async fn confirm_connection(
    authenticator: &GatewayAuthenticator,
    broker: &BrokerHandle,
    client_id: &mqtt_codec::ClientId,
    peer: Option<SocketAddr>,
) {
    let LoginCheck::Lost(why) = authenticator.confirm_device_login(client_id, peer).await else {
        return;
    };
    metrics::counter!("mqtt_access_lost_at_connect_total").increment(1);
    match broker.disconnect_client(client_id.as_str(), ReasonCode::AdministrativeAction).await {
        Ok(connected) => tracing::info!(
            %client_id,
            reason = why,
            connected,
            "device lost its access while connecting; closing its MQTT connection"
        ),
        Err(error) => tracing::debug!(error = %error, "broker stopped; connection not checked"),
    }
}

/// The presence event of a connection `event` taken from the queue `at`; `None` when its client
/// identifier is not a device id.
fn presence_event(event: ConnectionEvent, at: Timestamp) -> Option<PresenceEvent> {
    Some(match event {
        ConnectionEvent::Connected { client_id, peer, protocol } => PresenceEvent::Connect {
            device_id: DeviceId::new(client_id.as_str()).ok()?,
            at,
            remote_addr: peer.map(|p| p.to_string()).unwrap_or_default(),
            protocol: protocol_label(protocol).to_owned(),
        },
        ConnectionEvent::Disconnected { client_id, reason } => PresenceEvent::Disconnect {
            device_id: DeviceId::new(client_id.as_str()).ok()?,
            at,
            reason: presence_reason(reason).to_owned(),
        },
    })
}

/// Writes `batch` in one store call and empties it; on a store error the events are lost, logged
/// and counted.
async fn write_presence(store: &dyn Store, batch: &mut Vec<PresenceEvent>) {
    if batch.is_empty() {
        return;
    }
    if let Err(error) = store.record_presence_events(batch).await {
        metrics::counter!("mqtt_presence_events_dropped_total", "reason" => "store_error")
            .increment(batch.len() as u64);
        tracing::warn!(events = batch.len(), error = %error, "failed to record device presence");
    }
    batch.clear();
}

/// The reason recorded for a device's disconnect: the broker's label, except that the gateway's own
/// administrative disconnect ([`enforce_access_changes`]) is a revocation of access.
fn presence_reason(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::Administrative(ReasonCode::AdministrativeAction) => "revoked",
        other => other.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use domain::{Actor, LifecycleState, Mutation, NewDevice};
    use mqtt_broker::{Broker, BrokerConfig};
    use mqtt_codec::{ClientId, ProtocolVersion};

    use super::*;
    use crate::config::{Sources, load};

    /// A recorder's inputs: a SQLite store holding active devices `d1` and `d2`, and its
    /// authenticator and broker handle (nothing connects through them here).
    async fn presence_fixture()
    -> (Arc<dyn Store>, Arc<GatewayAuthenticator>, BrokerHandle, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let options = store_sqlite::SqliteOptions::new(dir.path().join("herd.db"));
        let store: Arc<dyn Store> =
            Arc::new(store_sqlite::SqliteStore::open(options).await.unwrap());
        let m = Mutation { actor: Actor::system(), at: Timestamp::now() };
        for id in ["d1", "d2"] {
            let device = NewDevice {
                id: DeviceId::new(id).unwrap(),
                name: Default::default(),
                tags: Default::default(),
                attributes: Default::default(),
                state: LifecycleState::Active,
            };
            store.create_device(&device, &m).await.unwrap();
        }
        let config = load(&Sources::default()).unwrap().mqtt;
        let (_changes, rx) = mpsc::channel(1);
        let auth = Arc::new(GatewayAuthenticator::new(Arc::clone(&store), &config, rx));
        let (_broker, handle) = Broker::new(BrokerConfig::default(), CancellationToken::new());
        (store, auth, handle, dir)
    }

    /// Queues 1,001 events, more than one batch: `d1` connects from ports 0, 2, …, 998 and
    /// disconnects after each (for a reason that tells which), then `d2` connects, and a client
    /// whose id is no device id connects and disconnects.
    fn queue_events(events: &mpsc::Sender<ConnectionEvent>) {
        let client = |id: &str| ClientId::new(id).unwrap();
        let (v5, v311) = (ProtocolVersion::V5, ProtocolVersion::V311);
        let mut script = Vec::new();
        for i in 0..500u16 {
            let peer = Some(SocketAddr::from(([10, 0, 0, 1], 2 * i)));
            script.push(ConnectionEvent::Connected { client_id: client("d1"), peer, protocol: v5 });
            let reason =
                [DisconnectReason::Clean, DisconnectReason::KeepAliveTimeout][usize::from(i % 2)];
            script.push(ConnectionEvent::Disconnected { client_id: client("d1"), reason });
        }
        script.push(ConnectionEvent::Connected {
            client_id: client("d2"),
            peer: None,
            protocol: v311,
        });
        let other = client("not a device");
        script.push(ConnectionEvent::Connected {
            client_id: other.clone(),
            peer: None,
            protocol: v5,
        });
        let reason = DisconnectReason::Clean;
        script.push(ConnectionEvent::Disconnected { client_id: other, reason });
        for event in script {
            events.try_send(event).unwrap();
        }
    }

    /// Checks that `store` holds what [`queue_events`] leaves recorded.
    async fn check_recorded(store: &dyn Store) {
        let id = |id: &str| DeviceId::new(id).unwrap();
        let d1 = store.presence(&id("d1")).await.unwrap().expect("d1 has presence");
        assert!(!d1.connected);
        assert_eq!(d1.remote_addr.as_deref(), Some("10.0.0.1:998"));
        assert_eq!(d1.protocol.as_deref(), Some("5"));
        assert_eq!(d1.last_disconnect_reason.as_deref(), Some("keep_alive_timeout"));
        assert!(d1.connected_at <= d1.disconnected_at);
        let d2 = store.presence(&id("d2")).await.unwrap().expect("d2 has presence");
        assert!(d2.connected);
        assert_eq!((d2.remote_addr.as_deref(), d2.protocol.as_deref()), (Some(""), Some("3.1.1")));
        assert_eq!(d2.disconnected_at, None);
    }

    #[tokio::test]
    async fn presence_is_recorded_in_order_across_batches() {
        let (store, auth, broker, _dir) = presence_fixture().await;
        let (tx, rx) = mpsc::channel(PRESENCE_EVENTS_CAPACITY);
        queue_events(&tx);
        // The channel closes once the recorder has taken every event: it then returns.
        drop(tx);
        let recorder = record_presence(
            rx,
            Arc::clone(&store),
            auth,
            broker,
            DeviceArrivals::new(),
            CancellationToken::new(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(20), recorder).await.unwrap();
        check_recorded(store.as_ref()).await;
    }

    #[tokio::test]
    async fn presence_queued_at_shutdown_is_recorded() {
        let (store, auth, broker, _dir) = presence_fixture().await;
        let (tx, rx) = mpsc::channel(PRESENCE_EVENTS_CAPACITY);
        queue_events(&tx);
        // Stopped before it starts, with the channel still open: it records what is queued, in
        // batches, and returns.
        let stop = CancellationToken::new();
        stop.cancel();
        let recorder =
            record_presence(rx, Arc::clone(&store), auth, broker, DeviceArrivals::new(), stop);
        tokio::time::timeout(std::time::Duration::from_secs(20), recorder).await.unwrap();
        check_recorded(store.as_ref()).await;
        drop(tx);
    }

    #[tokio::test]
    async fn a_taken_address_names_the_setting_to_change() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_mqtt(addr).await.unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
        assert!(err.contains("already in use"), "{err}");
        assert!(err.contains("--mqtt-listen") && err.contains("HERD_MQTT__LISTEN"), "{err}");
    }

    #[tokio::test]
    async fn tls_problems_name_the_file_or_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let config = MqttTlsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
        };
        let err = |config: &MqttTlsConfig| format!("{:#}", tls_server_config(config).unwrap_err());
        std::fs::write(&config.cert_file, "not a certificate").unwrap();
        std::fs::write(&config.key_file, "not a key").unwrap();
        let e = err(&config);
        assert!(e.contains("mqtt.tls_cert_file") && e.contains("no PEM certificate"), "{e}");
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&config.cert_file, cert.pem()).unwrap();
        let e = err(&config);
        assert!(e.contains("mqtt.tls_key_file"), "{e}");
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&config.key_file, other.serialize_pem()).unwrap();
        assert!(err(&config).contains("does not fit"), "{}", err(&config));
        std::fs::write(&config.key_file, signing_key.serialize_pem()).unwrap();
        let bound = bind_mqtt_tls(&config).await.unwrap();
        // The address is taken now: the message names it and the TLS setting.
        let taken = MqttTlsConfig { listen: bound.listener.local_addr().unwrap(), ..config };
        let e = format!("{:#}", bind_mqtt_tls(&taken).await.unwrap_err());
        assert!(e.contains(&taken.listen.to_string()) && e.contains("--mqtts-listen"), "{e}");
        assert!(e.contains("HERD_MQTT__TLS_LISTEN"), "{e}");
    }
}

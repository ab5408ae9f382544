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
//!   (`connected`, since when, from where, over which protocol, why the last connection ended), and
//!   checks each device connection once more when it is registered (see there why).
//! - [`record_agent_reports`] (in `agent_reports`) records what devices' agents publish about
//!   themselves on `devices/{id}/facts` and `devices/{id}/heartbeat`, read through in-process broker
//!   subscriptions ([`AgentReportFeeds`]) and written to the store in batches.

mod agent_reports;
mod authenticator;
mod credential_cache;
mod topic_rules;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use domain::{DeviceId, Timestamp};
use futures_util::FutureExt as _;
use mqtt_broker::{BrokerHandle, ConnectionEvent, DisconnectReason, protocol_label};
use mqtt_codec::ReasonCode;
use store::Store;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{MqttConfig, MqttTlsConfig};
pub use crate::gateway::agent_reports::{
    AgentReportFeeds, FACTS_FILTER, HEARTBEAT_FILTER, record_agent_reports,
};
use crate::gateway::authenticator::LoginCheck;
pub use crate::gateway::authenticator::{Application, DeviceAcl, GatewayAuthenticator};
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

/// A bound MQTT over TLS listener with the TLS configuration it serves.
pub struct TlsListener {
    /// The bound socket.
    pub listener: TcpListener,
    /// Performs the server side of each handshake.
    pub acceptor: TlsAcceptor,
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
    let server_config = tls_server_config(config)?;
    let listener = bind(
        config.listen,
        "MQTT over TLS",
        "--mqtts-listen, HERD_MQTT__TLS_LISTEN or mqtt.tls_listen in the config file (empty \
         disables MQTT over TLS)",
    )
    .await?;
    Ok(TlsListener { listener, acceptor: TlsAcceptor::from(server_config) })
}

/// The rustls server configuration of the MQTT over TLS listener: the aws-lc-rs provider, TLS 1.2
/// and 1.3, no client certificates, the certificate chain and key of `config`.
///
/// # Errors
/// When a file cannot be read, holds no certificate or key, or the key does not match.
pub fn tls_server_config(config: &MqttTlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the TLS provider supports neither TLS 1.2 nor 1.3")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key in {} does not fit the certificate in {}",
                config.key_file.display(),
                config.cert_file.display()
            )
        })?;
    Ok(Arc::new(server_config))
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
                            let serve = broker.serve(tls, Some(peer), authenticator.as_ref());
                            let _ = Box::pin(serve).await;
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
/// Each device connection is also checked once more when the broker reports it registered (see
/// `confirm_connection` for why). Client identifiers that are not device ids are ignored (no device can
/// own them). A store error is logged and the event is lost; the next event of the device corrects
/// its presence.
pub async fn record_presence(
    mut events: mpsc::Receiver<ConnectionEvent>,
    store: Arc<dyn Store>,
    authenticator: Arc<GatewayAuthenticator>,
    broker: BrokerHandle,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        if let ConnectionEvent::Connected { client_id, peer, .. } = &event {
            confirm_connection(&authenticator, &broker, client_id, *peer).await;
        }
        record_one(store.as_ref(), event).await;
    }
    while let Ok(event) = events.try_recv() {
        record_one(store.as_ref(), event).await;
    }
    tracing::debug!("presence recorder stopped");
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

async fn record_one(store: &dyn Store, event: ConnectionEvent) {
    let at = Timestamp::now();
    let (client_id, result) = match &event {
        ConnectionEvent::Connected { client_id, peer, protocol } => {
            let Ok(device_id) = DeviceId::new(client_id.as_str()) else { return };
            let remote = peer.map(|p| p.to_string()).unwrap_or_default();
            let protocol = protocol_label(*protocol);
            (client_id, store.record_connect(&device_id, at, &remote, protocol).await)
        }
        ConnectionEvent::Disconnected { client_id, reason } => {
            let Ok(device_id) = DeviceId::new(client_id.as_str()) else { return };
            (client_id, store.record_disconnect(&device_id, at, presence_reason(*reason)).await)
        }
    };
    if let Err(error) = result {
        metrics::counter!("mqtt_presence_events_dropped_total", "reason" => "store_error")
            .increment(1);
        tracing::warn!(%client_id, error = %error, "failed to record device presence");
    }
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
    use super::*;

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

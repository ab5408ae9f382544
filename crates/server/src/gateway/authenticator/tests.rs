//! Tests of client authentication: device ACLs, the credential shape check, the cache under
//! revocation, applications and anonymous clients, and the re-check that closes the race between
//! the check of a CONNECT and the registration of its connection.

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use domain::{
    AccessChangeReason, Actor, Attributes, CredentialId, DisplayName, Mutation, NewDevice,
    NewDeviceCredential, Tags,
};
use mqtt_broker::{Broker, BrokerConfig};
use mqtt_codec::{MAX_PACKET_SIZE, MqttString, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Sources, load};

const WAIT: Duration = Duration::from_secs(20);

#[track_caller]
fn check_subscribe(filter: &str, allowed: bool) {
    let acl = DeviceAcl::new(&DeviceId::new("dev-1").unwrap());
    let f = TopicFilter::new(filter).unwrap();
    assert_eq!(acl.may_subscribe(&f), allowed, "{filter}");
}

#[track_caller]
fn check_publish(topic: &str, allowed: bool) {
    let acl = DeviceAcl::new(&DeviceId::new("dev-1").unwrap());
    let t = TopicName::new(topic).unwrap();
    assert_eq!(acl.may_publish(&t), allowed, "{topic}");
}

#[test]
fn device_subscriptions_stay_in_the_subtree() {
    check_subscribe("devices/dev-1/#", true);
    check_subscribe("devices/dev-1/telemetry", true);
    check_subscribe("devices/dev-1/+/x", true);
    check_subscribe("$share/g/devices/dev-1/#", true);
    check_subscribe("#", false);
    check_subscribe("+/dev-1/#", false);
    check_subscribe("devices/#", false);
    check_subscribe("devices/+/telemetry", false);
    check_subscribe("devices/dev-1", false);
    check_subscribe("devices/dev-10/#", false);
    check_subscribe("devices/dev-2/#", false);
    check_subscribe("$share/g/#", false);
    check_subscribe("$share/g/devices/+/x", false);
    check_subscribe("$share/devices/dev-1/#", false);
    check_subscribe("$SYS/#", false);
}

#[test]
fn device_publishing_stays_in_the_subtree() {
    check_publish("devices/dev-1/telemetry", true);
    check_publish("devices/dev-1/a/b", true);
    check_publish("devices/dev-1", false);
    check_publish("devices/dev-10/telemetry", false);
    check_publish("devices/dev-2/telemetry", false);
    check_publish("other", false);
}

#[test]
fn only_credential_shaped_passwords_reach_the_store() {
    let good = format!("hdc_{}", "0a".repeat(32));
    assert!(is_credential_shaped(&good));
    for bad in [
        "hdc_wrong".to_owned(),
        format!("hdc_{}", "0A".repeat(32)),
        format!("hdc_{}", "0a".repeat(33)),
        format!("hdt_{}", "0a".repeat(32)),
        String::new(),
    ] {
        assert!(!is_credential_shaped(&bad), "{bad}");
    }
}

/// A store in a temporary directory, with one active device `dev-1` holding a credential.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    secret: String,
    credential: CredentialId,
    changes: mpsc::Sender<DeviceAccessChange>,
    auth: Arc<GatewayAuthenticator>,
}

fn mutation() -> Mutation {
    Mutation { actor: Actor::system(), at: Timestamp::now() }
}

impl Fixture {
    async fn new(adjust: impl FnOnce(&mut MqttConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = store_sqlite::SqliteOptions::new(dir.path().join("herd.db"));
        let store: Arc<dyn Store> =
            Arc::new(store_sqlite::SqliteStore::open(options).await.unwrap());
        let device = NewDevice {
            id: DeviceId::new("dev-1").unwrap(),
            name: DisplayName::default(),
            tags: Tags::default(),
            attributes: Attributes::default(),
            state: LifecycleState::Active,
        };
        store.create_device(&device, &mutation()).await.unwrap();
        let secret = format!("hdc_{}", "5e".repeat(32));
        let credential = CredentialId::from_random([7; 8]);
        let new = NewDeviceCredential {
            id: credential.clone(),
            device_id: device.id,
            hash: TokenHash::of_secret(&secret),
            expires_at: None,
        };
        store.create_device_credential(&new, &mutation()).await.unwrap();
        let mut config = load(&Sources::default()).unwrap().mqtt;
        adjust(&mut config);
        let (changes, rx) = mpsc::channel(8);
        let auth = Arc::new(GatewayAuthenticator::new(Arc::clone(&store), &config, rx));
        Self { _dir: dir, store, secret, credential, changes, auth }
    }

    /// Revokes the credential in the store and sends the access change, as the REST API does.
    async fn revoke(&self) {
        let device = DeviceId::new("dev-1").unwrap();
        self.store.revoke_device_credential(&device, &self.credential, &mutation()).await.unwrap();
        let change =
            DeviceAccessChange { device_id: device, reason: AccessChangeReason::CredentialRevoked };
        self.changes.send(change).await.unwrap();
    }

    async fn connect(&self, connect: &Connect) -> Result<String, ReasonCode> {
        self.auth.authenticate(connect, Some(peer())).await.map(|i| i.name().to_owned())
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50_000))
}

fn connect(client_id: &str, username: Option<&str>, password: Option<&str>) -> Connect {
    let mut c = Connect::new(ProtocolVersion::V5, ClientId::new(client_id).unwrap(), 0);
    c.username = username.map(|u| MqttString::new(u).unwrap());
    c.password = password.map(|p| Bytes::from(p.to_owned()));
    c
}

#[tokio::test]
async fn a_cached_credential_is_refused_once_revoked() {
    let f = Fixture::new(|_| {}).await;
    let device = connect("dev-1", Some("dev-1"), Some(&f.secret));
    assert_eq!(f.connect(&device).await, Ok("dev-1".to_owned()));
    assert_eq!(f.auth.cache.len(), 1);
    // Revoked behind the gateway's back (no event): the cache still answers, which shows that
    // the second login did not read the store.
    let id = DeviceId::new("dev-1").unwrap();
    f.store.revoke_device_credential(&id, &f.credential, &mutation()).await.unwrap();
    assert_eq!(f.connect(&device).await, Ok("dev-1".to_owned()));
    // The event is sent: refused at once, even before the enforcer has taken it ...
    let change =
        DeviceAccessChange { device_id: id, reason: AccessChangeReason::CredentialRevoked };
    f.changes.send(change).await.unwrap();
    assert_eq!(f.connect(&device).await, Err(ReasonCode::BadUserNameOrPassword));
    // ... and after.
    f.auth.next_access_change().await.unwrap();
    assert_eq!(f.auth.cache.len(), 0);
    assert_eq!(f.connect(&device).await, Err(ReasonCode::BadUserNameOrPassword));
}

#[tokio::test]
async fn a_login_is_confirmed_against_changes_made_after_it() {
    let f = Fixture::new(|_| {}).await;
    let client = ClientId::new("dev-1").unwrap();
    let device = connect("dev-1", None, Some(&f.secret));
    assert!(f.connect(&device).await.is_ok());
    assert_eq!(f.auth.confirm_device_login(&client, Some(peer())).await, LoginCheck::StillValid);
    // Confirmed once: a second event for the same connection is not a device login any more.
    assert_eq!(
        f.auth.confirm_device_login(&client, Some(peer())).await,
        LoginCheck::NotADeviceLogin
    );
    // Logged in, then revoked before the broker registered the connection.
    assert!(f.connect(&device).await.is_ok());
    f.revoke().await;
    f.auth.next_access_change().await.unwrap();
    assert_eq!(
        f.auth.confirm_device_login(&client, Some(peer())).await,
        LoginCheck::Lost("credential_not_usable")
    );
}

#[tokio::test]
async fn applications_and_anonymous_clients() {
    let rules = TopicRules::new(&[] as &[&str], &["devices/+/telemetry"], &[]).unwrap();
    let app =
        Application::new("grafana", TokenHash::of_secret("grafana-secret-0123"), rules).unwrap();
    let f = Fixture::new(|c| c.applications = vec![app]).await;
    let ok = |name: &str| Ok(name.to_owned());
    assert_eq!(
        f.connect(&connect("g-1", Some("grafana"), Some("grafana-secret-0123"))).await,
        ok("app:grafana")
    );
    for wrong in [Some("grafana-secret-0124"), Some(""), None] {
        assert_eq!(
            f.connect(&connect("g-1", Some("grafana"), wrong)).await,
            Err(ReasonCode::BadUserNameOrPassword)
        );
    }
    // A client id naming a device is refused, so the application cannot take its session over.
    assert_eq!(
        f.connect(&connect("dev-1", Some("grafana"), Some("grafana-secret-0123"))).await,
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    // The device still connects without a user name, or with its own.
    assert_eq!(f.connect(&connect("dev-1", None, Some(&f.secret))).await, ok("dev-1"));
    // Anonymous: refused unless allowed (0x87), and then bound by the same client id rule.
    assert_eq!(f.connect(&connect("viewer", None, None)).await, Err(ReasonCode::NotAuthorized));
    let rules = Arc::new(TopicRules::new(&[] as &[&str], &["public/#"], &[]).unwrap());
    let f = Fixture::new(|c| c.anonymous = Some(rules)).await;
    assert_eq!(f.connect(&connect("viewer", None, None)).await, ok("anonymous"));
    assert_eq!(
        f.connect(&connect("dev-1", None, None)).await,
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    // Anonymous logins are not device logins.
    let client = ClientId::new("viewer").unwrap();
    assert_eq!(
        f.auth.confirm_device_login(&client, Some(peer())).await,
        LoginCheck::NotADeviceLogin
    );
}

#[tokio::test]
async fn bootstrap_logins() {
    let f = Fixture::new(|_| {}).await;
    let ok = |name: &str| Ok(name.to_owned());
    // No password configured: any password or none; the client id must be a registration id.
    for password in [None, Some("whatever"), Some("")] {
        assert_eq!(
            f.connect(&connect("SN-1", Some("$provision"), password)).await,
            ok("provision:SN-1")
        );
    }
    assert_eq!(
        f.connect(&connect("bad/id", Some("$provision"), None)).await,
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    assert_eq!(
        f.connect(&connect("", Some("$provision"), None)).await,
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    // No session that outlives the connection: the answers carry a secret.
    let mut persistent = connect("SN-1", Some("$provision"), None);
    persistent.clean_start = false;
    assert_eq!(f.connect(&persistent).await, Err(ReasonCode::NotAuthorized));
    let mut expiring = connect("SN-1", Some("$provision"), None);
    expiring.properties.session_expiry_interval = Some(60);
    assert_eq!(f.connect(&expiring).await, Err(ReasonCode::NotAuthorized));
    expiring.properties.session_expiry_interval = Some(0);
    assert_eq!(f.connect(&expiring).await, ok("provision:SN-1"));
    // An active device's client id is refused; a registered one (no session ever) is not.
    assert_eq!(
        f.connect(&connect("dev-1", Some("$provision"), None)).await,
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    let pre = NewDevice {
        id: DeviceId::new("pre-1").unwrap(),
        name: DisplayName::default(),
        tags: Tags::default(),
        attributes: Attributes::default(),
        state: LifecycleState::Registered,
    };
    f.store.create_device(&pre, &mutation()).await.unwrap();
    assert_eq!(f.connect(&connect("pre-1", Some("$provision"), None)).await, ok("provision:pre-1"));
    // The address is remembered for the responder, and the connection is not a device login.
    assert_eq!(f.auth.bootstrap_address("pre-1"), Some(peer().ip()));
    assert!(f.auth.is_bootstrap_login("pre-1", Some(peer())));
    assert!(!f.auth.is_bootstrap_login("pre-1", None));
    let client = ClientId::new("pre-1").unwrap();
    assert_eq!(
        f.auth.confirm_device_login(&client, Some(peer())).await,
        LoginCheck::NotADeviceLogin
    );
    f.auth.forget_bootstrap_login("pre-1", None);
    assert!(f.auth.is_bootstrap_login("pre-1", Some(peer())), "another peer's end forgets nothing");
    f.auth.forget_bootstrap_login("pre-1", Some(peer()));
    assert_eq!(f.auth.bootstrap_address("pre-1"), None);

    // A configured password is required, compared on its SHA-256.
    let f = Fixture::new(|c| {
        c.provisioning = Some(MqttProvisioningConfig {
            password: Some(TokenHash::of_secret("factory-pass")),
            max_tracked_clients: 2,
        });
    })
    .await;
    assert_eq!(
        f.connect(&connect("SN-1", Some("$provision"), Some("factory-pass"))).await,
        ok("provision:SN-1")
    );
    for wrong in [Some("factory-pas"), Some(""), None] {
        assert_eq!(
            f.connect(&connect("SN-1", Some("$provision"), wrong)).await,
            Err(ReasonCode::BadUserNameOrPassword)
        );
    }
    // The remembered addresses are bounded: the oldest login is forgotten.
    for id in ["SN-2", "SN-3"] {
        f.connect(&connect(id, Some("$provision"), Some("factory-pass"))).await.unwrap();
    }
    assert_eq!(f.auth.bootstrap_logins().len(), 2);
    assert_eq!(f.auth.bootstrap_address("SN-1"), None);
    assert_eq!(f.auth.bootstrap_address("SN-3"), Some(peer().ip()));

    // Turned off: 0x87.
    let f = Fixture::new(|c| c.provisioning = None).await;
    assert_eq!(
        f.connect(&connect("SN-1", Some("$provision"), None)).await,
        Err(ReasonCode::NotAuthorized)
    );
}

#[test]
fn bootstrap_clients_reach_only_their_own_topics() {
    let acl = BootstrapAcl::new("SN-1");
    let publish = |t: &str| acl.may_publish(&TopicName::new(t).unwrap());
    let subscribe = |f: &str| acl.may_subscribe(&TopicFilter::new(f).unwrap());
    assert!(publish("$herd/provision/SN-1/register"));
    for t in [
        "$herd/provision/SN-1/response",
        "$herd/provision/SN-2/register",
        "$herd/provision/SN-1/register/x",
        "devices/SN-1/telemetry",
        "SN-1",
    ] {
        assert!(!publish(t), "{t}");
    }
    assert!(subscribe("$herd/provision/SN-1/response"));
    for f in [
        "$herd/provision/SN-1/register",
        "$herd/provision/SN-2/response",
        "$herd/provision/+/response",
        "$herd/provision/SN-1/#",
        "$herd/#",
        "#",
        "devices/#",
        "$share/g/$herd/provision/SN-1/response",
    ] {
        assert!(!subscribe(f), "{f}");
    }
}

/// Passes `inner`'s decision on only when told to, so a test can act between the check of a
/// CONNECT and the registration of its connection.
struct PauseAfterCheck {
    inner: Arc<GatewayAuthenticator>,
    checked: Notify,
    resume: Notify,
}

impl Authenticator for PauseAfterCheck {
    async fn authenticate(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, ReasonCode> {
        let decision = self.inner.authenticate(connect, peer).await;
        self.checked.notify_one();
        self.resume.notified().await;
        decision
    }
}

/// Reads the next packet from `io`.
async fn next_packet(io: &mut tokio::io::DuplexStream, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        let decoded = mqtt_codec::decode_buf(buf, ProtocolVersion::V5, MAX_PACKET_SIZE).unwrap();
        if decoded.is_some() {
            return decoded;
        }
        let read = tokio::time::timeout(WAIT, io.read_buf(buf)).await.expect("a packet in time");
        if read.unwrap_or(0) == 0 {
            return None;
        }
    }
}

/// The interleaving that the re-check in `record_presence` exists for: the CONNECT is checked,
/// the credential is revoked and the enforcer finds nothing to disconnect, and only then does the
/// broker register the connection. The device must not stay connected.
#[tokio::test]
async fn a_device_revoked_between_check_and_registration_is_disconnected() {
    let f = Fixture::new(|_| {}).await;
    let stop = CancellationToken::new();
    let (broker, handle) = Broker::new(BrokerConfig::default(), stop.clone());
    let broker_task = tokio::spawn(broker.run());
    let events = handle.connection_events(NonZeroUsize::new(16).unwrap());
    let presence_stop = CancellationToken::new();
    let presence = tokio::spawn(crate::gateway::record_presence(
        events,
        Arc::clone(&f.store),
        Arc::clone(&f.auth),
        handle.clone(),
        crate::gateway::DeviceArrivals::new(),
        presence_stop.clone(),
    ));
    let paused = Arc::new(PauseAfterCheck {
        inner: Arc::clone(&f.auth),
        checked: Notify::new(),
        resume: Notify::new(),
    });
    let (mut client, server_io) = tokio::io::duplex(4096);
    let serving = {
        let (handle, paused) = (handle.clone(), Arc::clone(&paused));
        tokio::spawn(async move { handle.serve(server_io, Some(peer()), paused.as_ref()).await })
    };
    let mut out = BytesMut::new();
    let packet = Packet::Connect(Box::new(connect("dev-1", Some("dev-1"), Some(&f.secret))));
    mqtt_codec::encode(&packet, ProtocolVersion::V5, &mut out).unwrap();
    client.write_all(&out).await.unwrap();

    // A: the CONNECT passed its check.
    tokio::time::timeout(WAIT, paused.checked.notified()).await.unwrap();
    // C, I, D: revoked, the event taken, and the broker has no connection to close yet.
    f.revoke().await;
    let change = f.auth.next_access_change().await.unwrap();
    let closed = handle
        .disconnect_client(change.device_id.as_str(), ReasonCode::AdministrativeAction)
        .await
        .unwrap();
    assert!(!closed, "the connection is not registered yet");
    // R: now it is.
    paused.resume.notify_one();

    let mut buf = BytesMut::new();
    match next_packet(&mut client, &mut buf).await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    match next_packet(&mut client, &mut buf).await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::AdministrativeAction);
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert!(next_packet(&mut client, &mut buf).await.is_none(), "the connection is closed");
    let _ = tokio::time::timeout(WAIT, serving).await.unwrap();
    stop.cancel();
    broker_task.await.unwrap();
    presence_stop.cancel();
    presence.await.unwrap();
}

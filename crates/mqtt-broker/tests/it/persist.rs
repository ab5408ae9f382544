//! Persistence through a `SessionStore` (`Broker::with_store`): what is written, that
//! acknowledgements wait for the commit, and that a broker started from the store's snapshot has the
//! sessions, queued messages and retained messages back. The store is an in-memory fake whose commits
//! can be held back (a closed gate) or made to fail; a "crash" drops the broker without any shutdown
//! step. Nothing here measures time: a closed gate shows that an acknowledgement waits, opening it
//! that it then arrives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mqtt_broker::{
    BoxFuture, Broker, BrokerConfig, PersistError, PersistOp, QueuedMessage, SessionStore,
    Snapshot, StoredMessage, StoredSession, StoredSubscription,
};
use mqtt_codec::{ClientId, Packet, ProtocolVersion, PubComp, PubRec, QoS, ReasonCode};
use tokio::sync::watch;
use tokio::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{TestAuth, TestBroker, V5, V311, WAIT, connect, publish, sub_id, topic};

/// What the fake store holds, keyed like the real tables.
#[derive(Debug, Default, Clone)]
struct Stored {
    /// Client id → (expiry, disconnected at).
    sessions: BTreeMap<String, (u32, Option<u64>)>,
    subscriptions: BTreeMap<(String, String), StoredSubscription>,
    messages: BTreeMap<(String, u64), StoredMessage>,
    retained: BTreeMap<String, StoredMessage>,
    /// Every op committed, in order.
    log: Vec<PersistOp>,
    /// How many batches committed.
    commits: usize,
}

impl Stored {
    fn apply(&mut self, op: &PersistOp) {
        self.log.push(op.clone());
        match op.clone() {
            PersistOp::UpsertSession { client_id, expiry, disconnected_at } => {
                self.sessions.insert(client_id.to_string(), (expiry, disconnected_at));
            }
            PersistOp::DeleteSession { client_id } => {
                let id = client_id.to_string();
                self.sessions.remove(&id);
                self.subscriptions.retain(|(c, _), _| *c != id);
                self.messages.retain(|(c, _), _| *c != id);
            }
            PersistOp::PutSubscription { client_id, subscription } => {
                let id = client_id.to_string();
                if self.sessions.contains_key(&id) {
                    let key = (id, subscription.filter.to_string());
                    self.subscriptions.insert(key, subscription);
                }
            }
            PersistOp::DeleteSubscription { client_id, filter } => {
                self.subscriptions.remove(&(client_id.to_string(), filter.to_string()));
            }
            PersistOp::EnqueueMessage { client_id, seq, message } => {
                let id = client_id.to_string();
                if self.sessions.contains_key(&id) {
                    self.messages.entry((id, seq)).or_insert(message);
                }
            }
            PersistOp::AckMessage { client_id, seq } => {
                self.messages.remove(&(client_id.to_string(), seq));
            }
            PersistOp::PutRetained { message } => {
                self.retained.insert(message.topic.to_string(), message);
            }
            PersistOp::DeleteRetained { topic } => {
                self.retained.remove(topic.as_str());
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let sessions = self
            .sessions
            .iter()
            .map(|(id, &(expiry, disconnected_at))| StoredSession {
                client_id: ClientId::new(id.as_str()).unwrap(),
                expiry,
                disconnected_at,
                subscriptions: self
                    .subscriptions
                    .iter()
                    .filter(|((c, _), _)| c == id)
                    .map(|(_, s)| s.clone())
                    .collect(),
                messages: self
                    .messages
                    .iter()
                    .filter(|((c, _), _)| c == id)
                    .map(|(&(_, seq), m)| QueuedMessage { seq, message: m.clone() })
                    .collect(),
            })
            .collect();
        Snapshot { sessions, retained: self.retained.values().cloned().collect() }
    }

    fn count(&self, what: fn(&PersistOp) -> bool) -> usize {
        self.log.iter().filter(|op| what(op)).count()
    }
}

/// An in-memory `SessionStore`.
#[derive(Debug)]
struct FakeStore {
    state: Mutex<Stored>,
    /// Commits wait while it is `false` (closed): the test decides when batches commit.
    gate: watch::Sender<bool>,
    /// While set, commits fail.
    failing: AtomicBool,
    /// Bumped after each commit.
    commits: watch::Sender<usize>,
}

impl FakeStore {
    fn new() -> Arc<Self> {
        Self::with_gate(true)
    }

    /// A store whose commits wait until [`FakeStore::open`].
    fn closed() -> Arc<Self> {
        Self::with_gate(false)
    }

    fn with_gate(open: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(Stored::default()),
            gate: watch::channel(open).0,
            failing: AtomicBool::new(false),
            commits: watch::channel(0).0,
        })
    }

    /// Lets commits through.
    fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Holds further commits back.
    fn close(&self) {
        self.gate.send_replace(false);
    }

    fn stored(&self) -> Stored {
        self.state.lock().unwrap().clone()
    }

    /// Waits until a commit leaves the store in a state where `done` holds.
    async fn wait_until(&self, what: &str, done: impl Fn(&Stored) -> bool) {
        let mut commits = self.commits.subscribe();
        let wait = async {
            loop {
                let reached = done(&self.state.lock().unwrap());
                if reached {
                    return;
                }
                commits.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(WAIT, wait).await.is_err() {
            panic!("the store never reached: {what}; it holds {:#?}", self.stored());
        }
    }
}

impl SessionStore for FakeStore {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, PersistError>> {
        Box::pin(async move { Ok(self.stored().snapshot()) })
    }

    fn apply<'a>(&'a self, ops: &'a [PersistOp]) -> BoxFuture<'a, Result<(), PersistError>> {
        Box::pin(async move {
            self.gate.subscribe().wait_for(|open| *open).await.unwrap();
            if self.failing.load(Ordering::SeqCst) {
                return Err(PersistError::new("injected failure"));
            }
            {
                let mut state = self.state.lock().unwrap();
                for op in ops {
                    state.apply(op);
                }
                state.commits += 1;
            }
            self.commits.send_modify(|n| *n += 1);
            Ok(())
        })
    }
}

/// A broker persisting through `store`, started from what `store` holds.
async fn start(store: &Arc<FakeStore>) -> TestBroker {
    start_with(store, BrokerConfig::default()).await
}

async fn start_with(store: &Arc<FakeStore>, config: BrokerConfig) -> TestBroker {
    let snapshot = store.load().await.unwrap();
    let shutdown = CancellationToken::new();
    let session_store: Arc<dyn SessionStore> = store.clone();
    let (broker, handle, writer) =
        Broker::with_store(config, shutdown.clone(), session_store, snapshot);
    let task = tokio::spawn(async move {
        tokio::join!(broker.run(), writer.run());
    });
    TestBroker { handle, shutdown, auth: Arc::new(TestAuth::AllowAll), task }
}

/// A CONNECT that keeps the session for an hour (v3.1.1: Clean Session 0) unless `clean`.
fn persistent(version: ProtocolVersion, id: &str, clean: bool) -> mqtt_codec::Connect {
    let mut c = connect(version, id);
    c.clean_start = clean;
    if version == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn is_enqueue(op: &PersistOp) -> bool {
    matches!(op, PersistOp::EnqueueMessage { .. })
}

#[tokio::test(start_paused = true)]
async fn puback_waits_for_the_commit_of_the_queued_message() {
    let store = FakeStore::closed();
    let broker = start(&store).await;
    let (mut sub, _) = broker.connect_with(persistent(V5, "sub", false)).await;
    // The session's creation and its subscription commit before the SUBACK.
    let subscribe = crate::subscribe_packet(1, "t", crate::qos_options(QoS::AtLeastOnce));
    sub.send(Packet::Subscribe(subscribe)).await;
    sub.expect_silence().await;
    store.open();
    assert!(matches!(sub.recv().await, Packet::SubAck(_)));
    assert_eq!(store.stored().subscriptions.len(), 1);

    store.close();
    let mut publ = broker.connect(V5, "pub").await;
    publ.send(Packet::Publish(publish("t", "m1", QoS::AtLeastOnce, 7))).await;
    // The subscriber gets the message at once; the publisher's PUBACK waits for the commit.
    let got = sub.recv_publish().await;
    assert_eq!(got.payload, "m1");
    publ.expect_silence().await;
    assert_eq!(store.stored().count(is_enqueue), 0);
    store.open();
    match publ.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.packet_id, crate::pid(7)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let stored = store.stored();
    assert_eq!(stored.count(is_enqueue), 1);
    assert_eq!(stored.messages.len(), 1);

    // The subscriber's PUBACK deletes it (in the next commit).
    sub.puback(got.delivery.packet_id().unwrap()).await;
    store.wait_until("the message is acknowledged", |s| s.messages.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn failed_commits_are_retried_and_hold_the_acknowledgement() {
    let store = FakeStore::new();
    let broker = start(&store).await;
    let (mut sub, _) = broker.connect_with(persistent(V311, "sub", false)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    store.failing.store(true, Ordering::SeqCst);
    let mut publ = broker.connect(V311, "pub").await;
    publ.send(Packet::Publish(publish("t", "m1", QoS::AtLeastOnce, 1))).await;
    publ.expect_silence().await;
    store.failing.store(false, Ordering::SeqCst);
    assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    assert_eq!(store.stored().messages.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn clean_sessions_write_nothing_and_are_acknowledged_at_once() {
    // A gate that never opens: anything waiting for a commit would never complete.
    let store = FakeStore::closed();
    let broker = start(&store).await;
    for version in [V311, V5] {
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t", QoS::AtLeastOnce).await;
        let mut publ = broker.connect(version, "pub").await;
        publ.publish(publish("t", "m", QoS::AtLeastOnce, 1)).await;
        assert_eq!(sub.recv_publish().await.payload, "m");
    }
    assert_eq!(store.stored().commits, 0);
}

#[tokio::test(start_paused = true)]
async fn sessions_queues_and_retained_messages_survive_a_crash() {
    for version in [V311, V5] {
        let store = FakeStore::new();
        let broker = start(&store).await;
        let (mut sub, ack) = broker.connect_with(persistent(version, "sub", false)).await;
        assert!(!ack.session_present);
        let mut subscribe = crate::subscribe_packet(1, "t/#", crate::qos_options(QoS::ExactlyOnce));
        if version == V5 {
            subscribe.properties.subscription_identifiers = vec![sub_id(9)];
        }
        sub.subscribe_with(subscribe).await;
        sub.disconnect().await;

        let mut publ = broker.connect(version, "pub").await;
        let mut first = publish("t/a", "one", QoS::AtLeastOnce, 1);
        let mut second = publish("t/b", "two", QoS::ExactlyOnce, 2);
        if version == V5 {
            first.properties.user_properties = vec![(
                mqtt_codec::MqttString::new("k").unwrap(),
                mqtt_codec::MqttString::new("v").unwrap(),
            )];
            second.properties.message_expiry_interval = Some(3600);
        }
        publ.publish(first).await;
        publ.send(Packet::Publish(second)).await;
        assert!(matches!(publ.recv().await, Packet::PubRec(_)));
        let mut retained = publish("r", "kept", QoS::AtLeastOnce, 3);
        retained.retain = true;
        publ.publish(retained).await;
        // Acknowledged means committed: the crash below loses none of it.
        drop(publ);
        drop(broker);

        let broker = start(&store).await;
        let (mut sub, ack) = broker.connect_with(persistent(version, "sub", false)).await;
        assert!(ack.session_present, "{version:?}");
        let one = sub.recv_publish().await;
        assert_eq!(one.topic, Some(topic("t/a")));
        assert_eq!(one.payload, "one");
        assert_eq!(one.delivery.qos(), QoS::AtLeastOnce);
        let two = sub.recv_publish().await;
        assert_eq!(two.payload, "two");
        assert_eq!(two.delivery.qos(), QoS::ExactlyOnce);
        if version == V5 {
            assert_eq!(one.properties.user_properties.len(), 1);
            assert_eq!(one.properties.subscription_identifiers, vec![sub_id(9)]);
            assert!(two.properties.message_expiry_interval.is_some_and(|s| s <= 3600));
        }
        // The subscription is back too.
        let three = crate::handle::message("t/c", "three", QoS::AtLeastOnce);
        broker.handle.publish(three).await.unwrap();
        let three = sub.recv_publish().await;
        assert_eq!(three.payload, "three");
        // Acknowledging removes them from the store.
        sub.puback(one.delivery.packet_id().unwrap()).await;
        sub.puback(three.delivery.packet_id().unwrap()).await;
        let two_id = two.delivery.packet_id().unwrap();
        sub.send(Packet::PubRec(PubRec::new(two_id))).await;
        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
        sub.send(Packet::PubComp(PubComp::new(two_id))).await;
        store.wait_until("every message is acknowledged", |s| s.messages.is_empty()).await;

        // A new subscriber gets the retained message.
        let mut other = broker.connect(version, "other").await;
        other.subscribe("r", QoS::AtLeastOnce).await;
        let got = other.recv_publish().await;
        assert!(got.retain);
        assert_eq!(got.payload, "kept");
    }
}

#[tokio::test(start_paused = true)]
async fn messages_in_flight_at_a_crash_are_sent_again() {
    let store = FakeStore::new();
    let broker = start(&store).await;
    let (mut sub, _) = broker.connect_with(persistent(V5, "sub", false)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let mut publ = broker.connect(V5, "pub").await;
    publ.publish(publish("t", "in flight", QoS::AtLeastOnce, 1)).await;
    // Delivered, never acknowledged.
    assert_eq!(sub.recv_publish().await.payload, "in flight");
    drop(broker);

    let broker = start(&store).await;
    let (mut sub, ack) = broker.connect_with(persistent(V5, "sub", false)).await;
    assert!(ack.session_present);
    let again = sub.recv_publish().await;
    assert_eq!(again.payload, "in flight");
    sub.puback(again.delivery.packet_id().unwrap()).await;
    store.wait_until("the message is acknowledged", |s| s.messages.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn ending_a_session_deletes_it() {
    let store = FakeStore::new();
    let broker = start(&store).await;
    // Clean start over a stored session.
    let (sub, _) = broker.connect_with(persistent(V5, "a", false)).await;
    sub.disconnect().await;
    store.wait_until("a is stored", |s| s.sessions.contains_key("a")).await;
    let (sub, ack) = broker.connect_with(connect(V5, "a")).await;
    assert!(!ack.session_present);
    sub.disconnect().await;
    store.wait_until("a is deleted", |s| !s.sessions.contains_key("a")).await;

    // Expiry.
    let mut c = persistent(V5, "b", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = broker.connect_with(c).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let disconnected = |s: &Stored| s.sessions.get("b").is_some_and(|b| b.1.is_some());
    store.wait_until("b is disconnected", disconnected).await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    store.wait_until("b is deleted", |s| s.sessions.is_empty() && s.subscriptions.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn expired_sessions_and_messages_are_deleted_at_startup() {
    let store = FakeStore::new();
    {
        let mut state = store.state.lock().unwrap();
        let message = |expires_at| StoredMessage {
            topic: topic("t"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Bytes::from_static(&[0]),
            expires_at,
        };
        // Disconnected at the epoch with a one-hour expiry: long gone.
        state.sessions.insert("old".to_owned(), (3600, Some(0)));
        // Connected when the server stopped: kept, with one live and one expired message.
        state.sessions.insert("live".to_owned(), (3600, None));
        state.messages.insert(("live".to_owned(), 4), message(Some(1)));
        state.messages.insert(("live".to_owned(), 5), message(None));
        state.retained.insert(
            "gone".to_owned(),
            StoredMessage { topic: topic("gone"), retain: true, ..message(Some(1)) },
        );
    }
    let broker = start(&store).await;
    store
        .wait_until("expired data is deleted", |s| {
            !s.sessions.contains_key("old")
                && s.sessions.get("live").is_some_and(|live| live.1.is_some())
                && s.messages.len() == 1
                && s.retained.is_empty()
        })
        .await;
    let (_old, ack) = broker.connect_with(persistent(V5, "old", false)).await;
    assert!(!ack.session_present);
    let (mut live, ack) = broker.connect_with(persistent(V5, "live", false)).await;
    assert!(ack.session_present);
    let got = live.recv_publish().await;
    live.puback(got.delivery.packet_id().unwrap()).await;
    live.expect_silence().await;
    // Sequence numbers continue after the largest loaded one.
    let mut publ = broker.connect(V5, "pub").await;
    live.subscribe("t", QoS::AtLeastOnce).await;
    publ.publish(publish("t", "new", QoS::AtLeastOnce, 1)).await;
    let seqs: Vec<u64> = store
        .stored()
        .log
        .iter()
        .filter_map(|op| match op {
            PersistOp::EnqueueMessage { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![6]);
}

#[tokio::test(start_paused = true)]
async fn messages_dropped_by_policy_are_deleted() {
    let store = FakeStore::new();
    let config = BrokerConfig { max_queued_messages: 1, ..BrokerConfig::default() };
    let broker = start_with(&store, config).await;
    let (mut sub, _) = broker.connect_with(persistent(V5, "full", false)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = broker.connect(V5, "pub").await;
    // The first waits in the queue; the second finds it full.
    publ.publish(publish("t", "kept", QoS::AtLeastOnce, 1)).await;
    publ.publish(publish("t", "dropped", QoS::AtLeastOnce, 2)).await;
    assert_eq!(store.stored().messages.len(), 1);
    let (mut sub, _) = broker.connect_with(persistent(V5, "full", false)).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.payload, "kept");
    sub.puback(got.delivery.packet_id().unwrap()).await;
    sub.expect_silence().await;
    store.wait_until("nothing is stored", |s| s.messages.is_empty()).await;

    // A message that expires before its client is back.
    let (mut sub, _) = broker.connect_with(persistent(V5, "late", false)).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut short = publish("e", "expires", QoS::AtLeastOnce, 3);
    short.properties.message_expiry_interval = Some(10);
    publ.publish(short).await;
    assert_eq!(store.stored().messages.len(), 1);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (mut sub, ack) = broker.connect_with(persistent(V5, "late", false)).await;
    assert!(ack.session_present);
    sub.expect_silence().await;
    store.wait_until("the expired message is deleted", |s| s.messages.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_and_retained_changes_wait_for_the_commit() {
    let store = FakeStore::new();
    let broker = start(&store).await;
    let (mut sub, _) = broker.connect_with(persistent(V5, "sub", false)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    store.close();
    sub.send(Packet::Unsubscribe(mqtt_codec::Unsubscribe {
        packet_id: crate::pid(2),
        properties: mqtt_codec::Properties::default(),
        filters: vec![crate::filter("t")],
    }))
    .await;
    sub.expect_silence().await;
    store.open();
    match sub.recv().await {
        Packet::UnsubAck(ack) => assert_eq!(ack.reason_codes, vec![ReasonCode::Success]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    assert!(store.stored().subscriptions.is_empty());

    // An in-process retained publish returns once committed.
    store.close();
    let mut message = crate::handle::message("r", "x", QoS::AtMostOnce);
    message.retain = true;
    let handle = broker.handle.clone();
    let mut publishing = tokio::spawn(async move { handle.publish(message).await });
    assert!(tokio::time::timeout(crate::SILENCE, &mut publishing).await.is_err());
    store.open();
    publishing.await.unwrap().unwrap();
    assert_eq!(store.stored().retained.len(), 1);

    // An empty retained message deletes it, from a client too.
    let mut publ = broker.connect(V5, "pub").await;
    store.close();
    let mut clear = publish("r", "", QoS::AtLeastOnce, 1);
    clear.retain = true;
    publ.send(Packet::Publish(clear)).await;
    publ.expect_silence().await;
    store.open();
    assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    assert!(store.stored().retained.is_empty());
}

#[tokio::test(start_paused = true)]
async fn takeover_of_a_stored_session_says_taken_over() {
    let store = FakeStore::new();
    let broker = start(&store).await;
    let (mut old, _) = broker.connect_with(persistent(V5, "s", false)).await;
    old.subscribe("t", QoS::AtLeastOnce).await;
    let (mut new, ack) = broker.connect_with(persistent(V5, "s", false)).await;
    assert!(ack.session_present);
    assert_eq!(old.expect_closed().await.unwrap().reason_code, ReasonCode::SessionTakenOver);
    broker.handle.publish(crate::handle::message("t", "x", QoS::AtLeastOnce)).await.unwrap();
    assert_eq!(new.recv_publish().await.payload, "x");
}

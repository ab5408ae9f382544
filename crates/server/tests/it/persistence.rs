//! Persistent MQTT sessions across a restart of the real `herd serve` process: killed with SIGKILL,
//! or stopped with SIGTERM, then started again on the same data directory.
//!
//! A device may publish and subscribe only under `devices/{id}/`, and its client id is its device
//! id, so no other client can publish to it while its session is offline. The device therefore
//! publishes to its own subscription: the copy the broker routes back stays unacknowledged (in
//! flight) and, with an MQTT 5 Receive Maximum of 1, the next one waits in the session's queue.
//! Both were acknowledged to the device as publisher (PUBACK) only once committed, so both must be
//! delivered again after the restart; the subscription must still route, and a retained message
//! set before the restart must reach a new subscription.
#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the test")]

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ClientId, Connect, Delivery, Disconnect, MAX_PACKET_SIZE, MqttString, Packet, PacketId,
    Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter, TopicName,
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::process::{Serving, spawn_serve};

use ProtocolVersion::{V5, V311};

pub(crate) const ADMIN: &str = "herd_persistence_test_admin_secret";
/// How long the test waits for a packet.
const WAIT: Duration = Duration::from_secs(20);

/// How the server goes down between the two runs.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Kill9,
    Sigterm,
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_sessions_and_retained_messages_survive_kill_9() {
    survive(Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_sessions_and_retained_messages_survive_a_graceful_restart() {
    survive(Stop::Sigterm).await;
}

async fn survive(stop: Stop) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data, "--http-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"];
    let env = [("HERD_ADMIN_TOKEN", ADMIN)];
    let serving = tokio::task::block_in_place(|| spawn_serve(&args, &env));
    let devices = [("dev-5", V5), ("dev-3", V311)];
    let mut tokens = Vec::new();
    let mut clients = Vec::new();
    for (id, version) in devices {
        let token = active_device(&serving, id).await;
        let (mut client, present) = Client::connect(&serving, version, id, &token).await;
        assert!(!present, "{id}: a new session");
        client.subscribe(&format!("devices/{id}/inbox")).await;
        // Acknowledged after commit; delivered back to the device, which does not acknowledge it.
        client.publish(&format!("devices/{id}/inbox"), "first", false).await;
        assert_eq!(client.next_message().await.1, "first");
        client.publish(&format!("devices/{id}/inbox"), "second", false).await;
        client.publish(&format!("devices/{id}/state"), "on", true).await;
        tokens.push(token);
        clients.push(client);
    }
    match stop {
        Stop::Kill9 => {
            // The devices are still connected: nothing but the commits survives.
            tokio::task::block_in_place(|| serving.kill9());
            drop(clients);
        }
        Stop::Sigterm => {
            for client in clients {
                client.disconnect().await;
            }
            assert!(tokio::task::block_in_place(|| serving.terminate()).success());
        }
    }

    let serving = tokio::task::block_in_place(|| spawn_serve(&args, &[]));
    for ((id, version), token) in devices.into_iter().zip(&tokens) {
        let (mut client, present) = Client::connect(&serving, version, id, token).await;
        assert!(present, "{id} ({stop:?}): the session survived");
        let inbox = format!("devices/{id}/inbox");
        let mut got = Vec::new();
        for _ in 0..2 {
            let (topic, payload, packet_id) = client.next_message().await;
            assert_eq!(topic, inbox);
            got.push(payload);
            client.puback(packet_id.expect("QoS 1")).await;
        }
        assert_eq!(got, ["first", "second"], "{id} ({stop:?})");
        // The subscription survived too.
        client.publish(&inbox, "third", false).await;
        let (_, payload, packet_id) = client.next_message().await;
        assert_eq!(payload, "third");
        client.puback(packet_id.expect("QoS 1")).await;
        // And the retained message reaches a new subscription.
        client.subscribe(&format!("devices/{id}/state")).await;
        let (topic, payload, packet_id) = client.next_message().await;
        assert_eq!((topic, payload), (format!("devices/{id}/state"), "on".to_owned()));
        client.puback(packet_id.expect("QoS 1")).await;
        client.disconnect().await;
    }
    // Everything acknowledged is gone: a third run delivers nothing queued.
    assert!(tokio::task::block_in_place(|| serving.terminate()).success());
    let serving = tokio::task::block_in_place(|| spawn_serve(&args, &[]));
    let (mut client, present) = Client::connect(&serving, V5, "dev-5", &tokens[0]).await;
    assert!(present);
    client.ping().await;
    client.disconnect().await;
    assert!(tokio::task::block_in_place(|| serving.terminate()).success());
}

/// Creates device `id`, activates it and issues a credential; returns its secret.
pub(crate) async fn active_device(serving: &Serving, id: &str) -> String {
    let http = reqwest::Client::new();
    let base = format!("http://{}/api/v1/devices", serving.addr);
    let r = http.post(&base).bearer_auth(ADMIN).json(&json!({ "id": id })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .patch(format!("{base}/{id}"))
        .bearer_auth(ADMIN)
        .json(&json!({ "state": "active" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/{id}/credentials"))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: serde_json::Value = r.json().await.unwrap();
    body["token"].as_str().expect("token in the response").to_owned()
}

/// A device's MQTT connection with a persistent session, on `mqtt-codec`.
pub(crate) struct Client {
    io: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
    next_id: u16,
    /// Messages that arrived while waiting for something else.
    pending: std::collections::VecDeque<Publish>,
}

impl Client {
    /// Connects as device `id` with Clean Start 0 (v5: a one-hour Session Expiry Interval and a
    /// Receive Maximum of 1); returns the client and Session Present.
    pub(crate) async fn connect(
        serving: &Serving,
        version: ProtocolVersion,
        id: &str,
        token: &str,
    ) -> (Self, bool) {
        let io = TcpStream::connect(serving.mqtt.as_str()).await.expect("connect to MQTT");
        let mut client =
            Self { io, buf: BytesMut::new(), version, next_id: 0, pending: Default::default() };
        let mut connect = Connect::new(version, ClientId::new(id).unwrap(), 0);
        connect.clean_start = false;
        connect.username = Some(MqttString::new(id).unwrap());
        connect.password = Some(Bytes::from(token.to_owned()));
        if version == V5 {
            connect.properties.session_expiry_interval = Some(3600);
            connect.properties.receive_maximum = NonZeroU16::new(1);
        }
        client.send(Packet::Connect(Box::new(connect))).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason_code, ReasonCode::Success, "{id} connects");
                (client, ack.session_present)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        mqtt_codec::encode(&packet, self.version, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next packet, `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            let decoded = mqtt_codec::decode_buf(&mut self.buf, self.version, MAX_PACKET_SIZE);
            if let Some(packet) = decoded.unwrap() {
                return Some(packet);
            }
            let read = tokio::time::timeout(WAIT, self.io.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a packet");
            if read.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    fn packet_id(&mut self) -> PacketId {
        self.next_id += 1;
        PacketId::new(self.next_id).unwrap()
    }

    /// Subscribes to `filter` at QoS 1 and checks it was granted.
    pub(crate) async fn subscribe(&mut self, filter: &str) {
        let packet_id = self.packet_id();
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            }],
        }))
        .await;
        loop {
            match self.recv().await {
                Some(Packet::SubAck(ack)) => {
                    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQos1], "{filter}");
                    return;
                }
                Some(Packet::Publish(p)) => self.pending.push_back(p),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Publishes at QoS 1 and waits for its PUBACK (Success, or No matching subscribers).
    async fn publish(&mut self, topic: &str, payload: &str, retain: bool) {
        let packet_id = self.packet_id();
        let mut publish =
            Publish::new(TopicName::new(topic).unwrap(), Bytes::from(payload.to_owned()));
        publish.delivery = Delivery::AtLeastOnce { packet_id, dup: false };
        publish.retain = retain;
        self.send(Packet::Publish(publish)).await;
        loop {
            match self.recv().await {
                Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => {
                    assert!(
                        matches!(
                            ack.reason_code,
                            ReasonCode::Success | ReasonCode::NoMatchingSubscribers
                        ),
                        "{ack:?}"
                    );
                    return;
                }
                Some(Packet::Publish(p)) => self.pending.push_back(p),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    /// The next message: topic, payload and packet id.
    pub(crate) async fn next_message(&mut self) -> (String, String, Option<PacketId>) {
        let publish = match self.pending.pop_front() {
            Some(p) => p,
            None => match self.recv().await {
                Some(Packet::Publish(p)) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            },
        };
        let topic = publish.topic.map(|t| t.as_str().to_owned()).unwrap_or_default();
        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
        (topic, payload, publish.delivery.packet_id())
    }

    pub(crate) async fn puback(&mut self, packet_id: PacketId) {
        self.send(Packet::PubAck(PubAck::new(packet_id))).await;
    }

    /// A PINGREQ, which must be answered before anything else arrives: nothing was queued.
    async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        match self.recv().await {
            Some(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
        assert!(self.pending.is_empty());
    }

    pub(crate) async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
        while self.recv().await.is_some() {}
    }
}

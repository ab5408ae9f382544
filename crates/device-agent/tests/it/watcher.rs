//! An anonymous MQTT 5 client on `mqtt-codec` that subscribes to a filter and reads what arrives.

use std::net::SocketAddr;

use bytes::BytesMut;
use mqtt_codec::{
    ClientId, Connect, Delivery, MAX_PACKET_SIZE, Packet, PacketId, Properties, ProtocolVersion,
    PubAck, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::WAIT;

const V5: ProtocolVersion = ProtocolVersion::V5;

pub(crate) struct Watcher {
    stream: TcpStream,
    buf: BytesMut,
}

impl Watcher {
    /// Connects anonymously and subscribes to `filter` at QoS 1.
    pub(crate) async fn connect(addr: SocketAddr, filter: &str) -> Self {
        Self::connect_as(addr, "watcher", filter).await
    }

    /// As [`Watcher::connect`] with client id `client_id`.
    pub(crate) async fn connect_as(addr: SocketAddr, client_id: &str, filter: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to the server");
        let mut watcher = Self { stream, buf: BytesMut::new() };
        let connect = Connect::new(V5, ClientId::new(client_id).expect("valid client id"), 60);
        watcher.send(Packet::Connect(Box::new(connect))).await;
        match watcher.recv().await {
            Packet::ConnAck(ack) => assert_eq!(ack.reason_code, ReasonCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter).expect("valid filter"),
                options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            }],
        };
        watcher.send(Packet::Subscribe(subscribe)).await;
        match watcher.recv().await {
            Packet::SubAck(ack) => assert_eq!(ack.reason_codes, [ReasonCode::GrantedQos1]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        watcher
    }

    /// The next message: its topic and JSON payload.
    pub(crate) async fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            if let Packet::Publish(publish) = self.recv().await {
                if let Delivery::AtLeastOnce { packet_id, .. } = publish.delivery {
                    self.send(Packet::PubAck(PubAck::new(packet_id))).await;
                }
                let topic = publish.topic.expect("no topic alias asked for");
                let payload = serde_json::from_slice(&publish.payload).expect("JSON payload");
                return (topic.as_str().to_owned(), payload);
            }
        }
    }

    /// Publishes `payload` to `topic` at QoS 1 and waits for its PUBACK.
    pub(crate) async fn publish(&mut self, topic: &str, payload: &str) {
        let mut publish = mqtt_codec::Publish::new(
            mqtt_codec::TopicName::new(topic).expect("valid topic"),
            bytes::Bytes::copy_from_slice(payload.as_bytes()),
        );
        let packet_id = PacketId::new(7).expect("non-zero");
        publish.delivery = Delivery::AtLeastOnce { packet_id, dup: false };
        self.send(Packet::Publish(publish)).await;
        loop {
            if let Packet::PubAck(ack) = self.recv().await {
                assert_eq!(ack.packet_id, packet_id);
                assert_eq!(ack.reason_code, ReasonCode::Success);
                return;
            }
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        mqtt_codec::encode(&packet, V5, &mut out).expect("encodable packet");
        self.stream.write_all(&out).await.expect("write to the server");
    }

    async fn recv(&mut self) -> Packet {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = mqtt_codec::decode_buf(&mut self.buf, V5, MAX_PACKET_SIZE)
                    .expect("well-formed packet")
                {
                    return p;
                }
                assert_ne!(
                    self.stream.read_buf(&mut self.buf).await.expect("read from the server"),
                    0,
                    "server closed"
                );
            }
        })
        .await
        .expect("a packet in time")
    }
}

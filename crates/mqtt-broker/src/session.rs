//! The state of an MQTT session (§4.1) that moves between the broker task and the connection task:
//! messages queued for the client, QoS 1 and 2 messages in flight, and the QoS 2 packet identifiers the
//! client has sent and not yet released.
//!
//! While a client is connected its connection task owns the [`SessionState`]; when the connection ends
//! it hands the state back to the broker, which keeps it for the session's expiry interval and gives it
//! to the next connection with the same client identifier.

use std::collections::{BTreeSet, VecDeque};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use mqtt_codec::{PacketId, QoS};
use tokio::time::Instant;

use crate::Message;

/// A key for a subscriber in the trie: a session or an in-process subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SubscriberId(pub(crate) u64);

/// A message on its way to one session, with what its subscriptions made of it.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub(crate) message: Arc<Message>,
    /// When the message expires (§3.3.2.3.3); an expired message is never sent.
    pub(crate) expires_at: Option<Instant>,
    /// The QoS to deliver with: the smaller of the published QoS and the granted QoS.
    pub(crate) qos: QoS,
    /// The RETAIN flag to send.
    pub(crate) retain: bool,
    /// The Subscription Identifiers of the matching subscriptions (v5).
    pub(crate) subscription_ids: Vec<NonZeroU32>,
    /// Its sequence number in the session store, when it is persisted (a QoS 1 or 2 message for a
    /// session that outlives its connection, on a broker with a store); the connection reports it
    /// through [`SessionState::finish`] once the client is done with it.
    pub(crate) seq: Option<NonZeroU64>,
}

/// Where an outbound QoS 1 or 2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(clippy::enum_variant_names, reason = "the variants name the packets awaited")]
pub(crate) enum Awaiting {
    /// QoS 1, PUBLISH sent, waiting for PUBACK.
    PubAck,
    /// QoS 2, PUBLISH sent, waiting for PUBREC.
    PubRec,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    PubComp,
}

/// An outbound QoS 1 or 2 message that the client has not finished acknowledging.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) packet_id: PacketId,
    pub(crate) out: Outbound,
    pub(crate) stage: Awaiting,
    /// Whether it went out on the current connection. A resumed session's messages wait, with
    /// their Packet Identifiers, until the new connection's Receive Maximum has room for them.
    pub(crate) sent: bool,
}

/// The part of a session that is handed between the broker and a connection.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Outbound QoS 1 and 2 messages sent and not yet acknowledged, oldest first; resent with DUP on
    /// reconnect ([MQTT-4.4.0-1]). At most the send window long.
    pub(crate) inflight: VecDeque<InFlight>,
    /// QoS 1 and 2 messages waiting for room in the window, oldest first. At most
    /// `max_queued_messages` long.
    pub(crate) queue: VecDeque<Outbound>,
    /// Packet Identifiers of QoS 2 PUBLISH packets received and routed, waiting for PUBREL: a resent
    /// PUBLISH with one of them is acknowledged again but not routed again (§4.3.3).
    pub(crate) inbound_qos2: BTreeSet<PacketId>,
    /// The last Packet Identifier used for an outbound message.
    pub(crate) last_packet_id: u16,
    /// Sequence numbers of persisted messages the client is finished with (acknowledged, or dropped
    /// by policy), not yet reported to the session writer: the connection reports them after each
    /// event, the broker those left when the connection hands the state back.
    pub(crate) finished: Vec<u64>,
}

impl SessionState {
    /// Whether nothing waits: no message queued or in flight, no QoS 2 release or acknowledgement
    /// report pending.
    pub(crate) fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.queue.is_empty()
            && self.inbound_qos2.is_empty()
            && self.finished.is_empty()
    }

    /// Notes that the client is finished with `out`: acknowledged, or dropped by policy. Only
    /// persisted messages need it.
    pub(crate) fn finish(&mut self, out: &Outbound) {
        if let Some(seq) = out.seq {
            self.finished.push(seq.get());
        }
    }

    /// A Packet Identifier not used by any message in flight.
    ///
    /// The window is smaller than 65,535, so a free identifier always exists.
    pub(crate) fn next_packet_id(&mut self) -> PacketId {
        loop {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            let Some(id) = PacketId::new(self.last_packet_id) else { continue };
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }
}

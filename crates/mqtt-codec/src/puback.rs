//! PUBACK (§3.4): the response to a QoS 1 PUBLISH.

use crate::PacketType;
use crate::ack::ack_packet;

ack_packet!(
    /// A PUBACK packet (§3.4). Reason codes allowed in v5 are listed in §3.4.2.1.
    PubAck,
    PacketType::PubAck
);

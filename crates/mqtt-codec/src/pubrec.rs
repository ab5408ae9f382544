//! PUBREC (§3.5): the first response to a QoS 2 PUBLISH.

use crate::PacketType;
use crate::ack::ack_packet;

ack_packet!(
    /// A PUBREC packet (§3.5). Reason codes allowed in v5 are listed in §3.5.2.1.
    PubRec,
    PacketType::PubRec
);

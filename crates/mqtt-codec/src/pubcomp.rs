//! PUBCOMP (§3.7): the response to a PUBREL, which ends the QoS 2 exchange.

use crate::PacketType;
use crate::ack::ack_packet;

ack_packet!(
    /// A PUBCOMP packet (§3.7). Reason codes allowed in v5 are listed in §3.7.2.1.
    PubComp,
    PacketType::PubComp
);

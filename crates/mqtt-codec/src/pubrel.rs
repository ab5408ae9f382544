//! PUBREL (§3.6): the response to a PUBREC.

use crate::PacketType;
use crate::ack::ack_packet;

ack_packet!(
    /// A PUBREL packet (§3.6). Reason codes allowed in v5 are listed in §3.6.2.1.
    PubRel,
    PacketType::PubRel
);

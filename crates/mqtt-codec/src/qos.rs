//! Quality of Service levels (§4.3) and Packet Identifiers (§2.2.1).

use std::fmt;
use std::num::NonZeroU16;

/// A Quality of Service level (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// QoS 0: at most once delivery.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: at least once delivery.
    AtLeastOnce = 1,
    /// QoS 2: exactly once delivery.
    ExactlyOnce = 2,
}

impl QoS {
    /// The level for the two-bit value 0, 1 or 2; 3 is not a QoS level.
    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    /// The level's numeric value.
    #[must_use]
    pub const fn to_u8(self) -> u8 {
        self as u8
    }
}

/// A non-zero Packet Identifier ([MQTT-2.2.1-3]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The identifier `value`, or `None` for 0.
    #[must_use]
    pub const fn new(value: u16) -> Option<Self> {
        match NonZeroU16::new(value) {
            Some(value) => Some(Self(value)),
            None => None,
        }
    }

    /// The identifier's value.
    #[must_use]
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl From<NonZeroU16> for PacketId {
    fn from(value: NonZeroU16) -> Self {
        Self(value)
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

//! How a fleet is split: device ids, the slice of the fleet each process runs, and the local
//! address each connection is made from.
//!
//! Every device has a global index `0..N` and keeps it whatever the number of processes, so its
//! id, its source address and its behaviour (seeded by the index) are the same in a one-process
//! run and in a sharded one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::str::FromStr;

/// Connections per source address when the number of source addresses is automatic: below the
/// ~28,000 ephemeral ports one address offers, with room for other programs.
pub const CONNECTIONS_PER_SOURCE_ADDRESS: u64 = 25_000;

/// Devices per process when the number of processes is automatic: below the 20,000 open files a
/// process may hold here, with room for the runtime, the HTTP client and the standard streams.
pub const DEVICES_PER_PROCESS: u64 = 18_000;

/// The id of the device with global index `index` (0-based): `{prefix}{index + 1}`, zero-padded
/// to five digits so that ids sort in creation order up to 99,999 devices.
#[must_use]
pub fn device_id(prefix: &str, index: u64) -> String {
    format!("{prefix}{:05}", index + 1)
}

/// One process's part of the fleet: shard `index` of `count` (0-based), written `index/count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// The whole fleet in one process.
    pub const WHOLE: Self = Self { index: 0, count: 1 };

    /// Shard `index` of `count`.
    ///
    /// # Errors
    /// When `count` is zero or `index` is not below it.
    pub fn new(index: u32, count: u32) -> Result<Self, InvalidShard> {
        if count == 0 || index >= count {
            return Err(InvalidShard(format!("{index}/{count}")));
        }
        Ok(Self { index, count })
    }

    /// Which shard this is, from 0.
    #[must_use]
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many shards the fleet is split into.
    #[must_use]
    pub fn count(self) -> u32 {
        self.count
    }

    /// The global indices of this shard's devices among `devices`: contiguous, and the shards'
    /// sizes differ by at most one.
    #[must_use]
    pub fn slice(self, devices: u64) -> Range<u64> {
        let bound = |i: u32| devices * u64::from(i) / u64::from(self.count);
        bound(self.index)..bound(self.index + 1)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = InvalidShard;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidShard(s.to_owned());
        let (index, count) = s.split_once('/').ok_or_else(invalid)?;
        let index = index.trim().parse().map_err(|_| invalid())?;
        let count = count.trim().parse().map_err(|_| invalid())?;
        Self::new(index, count).map_err(|_| invalid())
    }
}

/// A shard that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("invalid shard {0:?}: expected I/P with 0 <= I < P, for example 0/2")]
pub struct InvalidShard(String);

/// The number of processes a fleet of `devices` needs when not told: one per
/// [`DEVICES_PER_PROCESS`] devices, at least one.
#[must_use]
pub fn auto_processes(devices: u64) -> u32 {
    u32::try_from(devices.div_ceil(DEVICES_PER_PROCESS).max(1)).unwrap_or(u32::MAX)
}

/// The number of source addresses a fleet of `devices` needs when not told: none (the system
/// chooses) up to [`CONNECTIONS_PER_SOURCE_ADDRESS`] devices, else one per that many.
#[must_use]
pub fn auto_source_addresses(devices: u64) -> u8 {
    if devices <= CONNECTIONS_PER_SOURCE_ADDRESS {
        return 0;
    }
    u8::try_from(devices.div_ceil(CONNECTIONS_PER_SOURCE_ADDRESS)).unwrap_or(u8::MAX)
}

/// The local address of the device with global index `index` when connections are spread over
/// `addresses` loopback addresses `127.0.0.1 ..= 127.0.0.{addresses}`, round robin; `None` when
/// `addresses` is 0 (the system chooses).
#[must_use]
pub fn source_address(index: u64, addresses: u8) -> Option<IpAddr> {
    if addresses == 0 {
        return None;
    }
    let last = u8::try_from(index % u64::from(addresses)).expect("below a u8") + 1;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_slices(devices: u64, count: u32, expected: &[Range<u64>]) {
        let got: Vec<_> =
            (0..count).map(|i| Shard::new(i, count).unwrap().slice(devices)).collect();
        assert_eq!(got, expected);
        // The slices cover the fleet exactly once.
        let covered: u64 = got.iter().map(|r| r.end - r.start).sum();
        assert_eq!(covered, devices);
    }

    #[test]
    fn shards_slice_the_fleet_contiguously_and_evenly() {
        assert_eq!(Shard::WHOLE.slice(10), 0..10);
        check_slices(10, 3, &[0..3, 3..6, 6..10]);
        check_slices(19_000, 2, &[0..9_500, 9_500..19_000]);
        check_slices(2, 4, &[0..0, 0..1, 1..1, 1..2]);
        check_slices(0, 2, &[0..0, 0..0]);
    }

    #[test]
    fn shards_parse_and_print() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!((s.index(), s.count()), (1, 3));
        assert_eq!(s.to_string(), "1/3");
        for bad in ["", "1", "3/3", "0/0", "-1/2", "a/b", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn automatic_process_and_address_counts() {
        let processes: Vec<_> =
            [0, 1, 5_000, 18_000, 18_001, 19_000, 36_001].map(auto_processes).to_vec();
        assert_eq!(processes, [1, 1, 1, 1, 2, 2, 3]);
        let addresses: Vec<_> =
            [1, 19_000, 25_000, 25_001, 50_001].map(auto_source_addresses).to_vec();
        assert_eq!(addresses, [0, 0, 0, 2, 3]);
    }

    #[test]
    fn source_addresses_go_round_robin() {
        assert_eq!(source_address(7, 0), None);
        let got: Vec<_> = (0..5).map(|i| source_address(i, 3).unwrap().to_string()).collect();
        assert_eq!(got, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1", "127.0.0.2"]);
        assert_eq!(source_address(254, 255).unwrap().to_string(), "127.0.0.255");
    }

    #[test]
    fn ids_are_padded_and_start_at_one() {
        assert_eq!(device_id("sim-", 0), "sim-00001");
        assert_eq!(device_id("x", 123_456), "x123457");
    }
}

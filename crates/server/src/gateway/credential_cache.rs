//! The device credential cache: successful credential lookups kept in memory, so that a reconnect
//! storm (every device of a site coming back after an outage) does not become a storm of store
//! reads.
//!
//! It maps the SHA-256 of a credential secret to the device and credential it authenticated and is
//! bounded twice: at most `mqtt.auth_cache_entries` entries, each for at most
//! `mqtt.auth_cache_ttl_secs` and never past its credential's expiry. When it is full, stale entries
//! go first, then arbitrary ones (an eighth of the cache at a time). It keeps no index besides the
//! map: an entry costs a few hundred bytes per device, and an access change, a rare operator
//! action, scans the map (at most `mqtt.auth_cache_entries` comparisons). Only credentials of
//! `active` devices are cached; failures never are (an attacker chooses the keys of failures).
//!
//! # Invalidation
//!
//! The cache owns the receiving end of the access-change channel (REST writes that revoke a
//! credential, suspend or delete a device: see `http_api::AppState::with_access_events`). Taking
//! an event off the channel and dropping the entries of its device happen in one step, under the
//! cache's lock ([`CredentialCache::next_change`]), and a lookup that finds events still waiting
//! in the channel does not trust the cache at all. The REST side sends the event after its commit
//! and before it answers, so once the operator has seen the answer no lookup is served from an
//! entry the change made stale.
//!
//! A lookup that misses reads the store and then offers the result with [`CredentialCache::insert`]
//! and the [`Ticket`] the miss returned; the offer is dropped when any invalidation happened in
//! between, because the store read may have preceded the change that the invalidation reported.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use domain::{CredentialId, DeviceAccessChange, DeviceId, Timestamp, TokenHash};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the cache remembers of a successful credential lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedCredential {
    /// The device the credential belongs to (an `active` one when it was cached).
    pub(crate) device_id: DeviceId,
    /// The credential's id, for logs.
    pub(crate) credential_id: CredentialId,
    /// When the credential stops working, if ever.
    pub(crate) expires_at: Option<Timestamp>,
}

/// The answer of [`CredentialCache::lookup`].
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A fresh entry: the credential was valid for this active device, and nothing since says
    /// otherwise.
    Hit(CachedCredential),
    /// Not cached (or not trusted now): read the store, then offer the result with the ticket.
    Miss(Ticket),
}

/// Permission to cache the result of a store read that began after the miss that returned it.
#[derive(Debug)]
pub(crate) struct Ticket {
    /// The invalidation generation at the miss; `None` when the result must not be cached.
    generation: Option<u64>,
}

/// The cache (see the module documentation).
#[derive(Debug)]
pub(crate) struct CredentialCache {
    /// Most entries; 0 disables caching (access changes still flow through).
    capacity: usize,
    /// Longest life of an entry.
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Access changes from the REST side, sent after their commit.
    changes: mpsc::Receiver<DeviceAccessChange>,
    entries: HashMap<TokenHash, Entry>,
    /// Bumped by every invalidation.
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    credential: CachedCredential,
    fresh_until: Instant,
}

impl CredentialCache {
    /// A cache of at most `capacity` entries living at most `ttl`, invalidated by `changes`.
    pub(crate) fn new(
        capacity: usize,
        ttl: Duration,
        changes: mpsc::Receiver<DeviceAccessChange>,
    ) -> Self {
        let inner = Inner { changes, entries: HashMap::new(), generation: 0 };
        Self { capacity, ttl, inner: Mutex::new(inner) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent before anything can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `hash` up at wall-clock time `now`.
    pub(crate) fn lookup(&self, hash: &TokenHash, now: Timestamp) -> Lookup {
        let mut inner = self.lock();
        // Events still in the channel may concern this credential: trust nothing until the
        // enforcer has taken them (and with them invalidated the entries).
        if !inner.changes.is_empty() {
            metrics::counter!("mqtt_auth_cache_total", "result" => "bypass").increment(1);
            return Lookup::Miss(Ticket { generation: None });
        }
        let generation = Some(inner.generation);
        let Some(entry) = inner.entries.get(hash) else {
            metrics::counter!("mqtt_auth_cache_total", "result" => "miss").increment(1);
            return Lookup::Miss(Ticket { generation });
        };
        let expired = entry.credential.expires_at.is_some_and(|e| now >= e);
        if expired || Instant::now() >= entry.fresh_until {
            inner.entries.remove(hash);
            metrics::counter!("mqtt_auth_cache_total", "result" => "expired").increment(1);
            return Lookup::Miss(Ticket { generation });
        }
        metrics::counter!("mqtt_auth_cache_total", "result" => "hit").increment(1);
        Lookup::Hit(entry.credential.clone())
    }

    /// Caches `credential` under `hash` unless an invalidation happened since the miss that
    /// returned `ticket` (or events are waiting), making room by evicting the oldest entries.
    #[expect(clippy::needless_pass_by_value, reason = "a ticket is spent by one offer")]
    pub(crate) fn insert(&self, ticket: Ticket, hash: TokenHash, credential: CachedCredential) {
        let Some(generation) = ticket.generation else { return };
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation || !inner.changes.is_empty() {
            return;
        }
        inner.entries.remove(&hash);
        if inner.entries.len() >= self.capacity {
            inner.make_room(self.capacity, Instant::now());
        }
        let fresh_until = Instant::now() + self.ttl;
        inner.entries.insert(hash, Entry { credential, fresh_until });
    }

    /// Takes the next access change off the channel, dropping the entries of its device in the
    /// same step; `None` once every sender is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe: an event is taken only by the poll that returns it.
    pub(crate) async fn next_change(&self) -> Option<DeviceAccessChange> {
        std::future::poll_fn(|cx| self.poll_change(cx)).await
    }

    fn poll_change(&self, cx: &mut Context<'_>) -> Poll<Option<DeviceAccessChange>> {
        let mut inner = self.lock();
        let polled = inner.changes.poll_recv(cx);
        if let Poll::Ready(Some(change)) = &polled {
            inner.invalidate(&change.device_id);
        }
        polled
    }

    /// How many entries are cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

impl Inner {
    fn invalidate(&mut self, device: &DeviceId) {
        self.generation += 1;
        self.entries.retain(|_, entry| entry.credential.device_id != *device);
    }

    /// Brings a full cache below `capacity`: stale entries first, then arbitrary ones (the map's
    /// order), down to seven eighths, so that the scan is paid once per eighth of the cache.
    fn make_room(&mut self, capacity: usize, now: Instant) {
        self.entries.retain(|_, entry| entry.fresh_until > now);
        let target = capacity - capacity.div_ceil(8);
        if self.entries.len() > target {
            let excess = self.entries.len() - target;
            let victims: Vec<TokenHash> = self.entries.keys().take(excess).copied().collect();
            for hash in &victims {
                self.entries.remove(hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::AccessChangeReason;

    use super::*;

    fn credential(device: &str, n: u8, expires_at: Option<Timestamp>) -> CachedCredential {
        CachedCredential {
            device_id: DeviceId::new(device).unwrap(),
            credential_id: CredentialId::from_random([n; 8]),
            expires_at,
        }
    }

    fn hash(n: u8) -> TokenHash {
        TokenHash::from_bytes([n; 32])
    }

    fn cache(capacity: usize) -> (CredentialCache, mpsc::Sender<DeviceAccessChange>) {
        cache_with_ttl(capacity, Duration::from_secs(60))
    }

    fn cache_with_ttl(
        capacity: usize,
        ttl: Duration,
    ) -> (CredentialCache, mpsc::Sender<DeviceAccessChange>) {
        let (tx, rx) = mpsc::channel(8);
        (CredentialCache::new(capacity, ttl, rx), tx)
    }

    /// Looks up and, on a miss, caches `credential` as a store read would.
    fn fill(cache: &CredentialCache, n: u8, credential: &CachedCredential) {
        match cache.lookup(&hash(n), Timestamp::now()) {
            Lookup::Miss(ticket) => cache.insert(ticket, hash(n), credential.clone()),
            Lookup::Hit(_) => panic!("{n} was cached already"),
        }
    }

    #[track_caller]
    fn check_hit(cache: &CredentialCache, n: u8, expected: Option<&CachedCredential>) {
        let found = match cache.lookup(&hash(n), Timestamp::now()) {
            Lookup::Hit(c) => Some(c),
            Lookup::Miss(_) => None,
        };
        assert_eq!(found.as_ref(), expected, "lookup of {n}");
    }

    fn change(device: &str, reason: AccessChangeReason) -> DeviceAccessChange {
        DeviceAccessChange { device_id: DeviceId::new(device).unwrap(), reason }
    }

    #[tokio::test]
    async fn an_access_change_is_honoured_from_the_moment_it_is_sent() {
        let (cache, tx) = cache(10);
        let (a1, a2, b) =
            (credential("a", 1, None), credential("a", 2, None), credential("b", 3, None));
        fill(&cache, 1, &a1);
        fill(&cache, 2, &a2);
        fill(&cache, 3, &b);
        check_hit(&cache, 1, Some(&a1));
        tx.send(change("a", AccessChangeReason::CredentialRevoked)).await.unwrap();
        // Not taken off the channel yet: the cache is bypassed, for every device.
        check_hit(&cache, 1, None);
        check_hit(&cache, 3, None);
        // Taking it drops the device's entries; the others are trusted again.
        assert_eq!(cache.next_change().await.unwrap().device_id.as_str(), "a");
        check_hit(&cache, 1, None);
        check_hit(&cache, 2, None);
        check_hit(&cache, 3, Some(&b));
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn a_store_read_that_raced_an_invalidation_is_not_cached() {
        let (cache, tx) = cache(10);
        let a = credential("a", 1, None);
        let Lookup::Miss(ticket) = cache.lookup(&hash(1), Timestamp::now()) else { panic!() };
        // ... the store read happens here, and meanwhile the device is suspended ...
        tx.send(change("a", AccessChangeReason::NotActive)).await.unwrap();
        cache.insert(ticket, hash(1), a.clone());
        check_hit(&cache, 1, None);
        let Lookup::Miss(ticket) = cache.lookup(&hash(1), Timestamp::now()) else { panic!() };
        cache.next_change().await.unwrap();
        cache.insert(ticket, hash(1), a.clone());
        check_hit(&cache, 1, None);
        // A read that began after the invalidation is cached.
        fill(&cache, 1, &a);
        check_hit(&cache, 1, Some(&a));
    }

    #[tokio::test]
    async fn entries_live_for_the_ttl_and_never_past_the_credential() {
        // A TTL of zero: stale as soon as it is cached.
        let (stale, _tx) = cache_with_ttl(10, Duration::ZERO);
        let a = credential("a", 1, None);
        fill(&stale, 1, &a);
        check_hit(&stale, 1, None);
        assert_eq!(stale.len(), 0);
        let (cache, _tx) = cache(10);
        fill(&cache, 1, &a);
        check_hit(&cache, 1, Some(&a));
        let soon = Timestamp::from_millis(Timestamp::now().millis() + 60_000);
        let b = credential("b", 2, Some(soon));
        fill(&cache, 2, &b);
        check_hit(&cache, 2, Some(&b));
        let past = Timestamp::from_millis(Timestamp::now().millis() - 1);
        let c = credential("c", 3, Some(past));
        fill(&cache, 3, &c);
        check_hit(&cache, 3, None);
    }

    #[tokio::test]
    async fn a_full_cache_stays_within_its_capacity() {
        let (cache, _tx) = cache(8);
        let creds: Vec<_> = (0..20).map(|n| credential(&format!("d{n}"), n, None)).collect();
        for (n, c) in creds.iter().enumerate() {
            fill(&cache, n as u8, c);
            assert!(cache.len() <= 8);
        }
        // The last one offered is always kept.
        check_hit(&cache, 19, Some(&creds[19]));
        // Invalidations and refills neither grow it nor lose other devices' entries.
        let before = cache.len();
        for _ in 0..100 {
            cache.lock().invalidate(&creds[19].device_id);
            fill(&cache, 19, &creds[19]);
        }
        assert_eq!(cache.len(), before);
        // Disabled: nothing is kept.
        let (cache, _tx) = super::tests::cache(0);
        fill(&cache, 1, &creds[1]);
        check_hit(&cache, 1, None);
    }
}

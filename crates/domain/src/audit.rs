//! The hash-chained audit log.
//!
//! Every mutation appends one [`AuditRecord`]. Each record holds the SHA-256 of the record before it
//! (`prev_hash`) and its own hash over its content and that link, so altering, removing or reordering a
//! stored row breaks the chain at that row. [`ChainVerifier`] walks the records in order and names the
//! first broken link. The first record links to [`GENESIS`] (32 zero bytes).
//!
//! The hash input is versioned (`herd-audit-v1`) and length-prefixed, so no two different records
//! serialize to the same bytes. `before` and `after` are stored as the exact JSON text that was hashed.

use sha2::{Digest, Sha256};

use crate::{Actor, Timestamp};

/// The `prev_hash` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// An audit entry before it is sealed into the chain by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRecord {
    /// Who made the change.
    pub actor: Actor,
    /// When.
    pub at: Timestamp,
    /// What was done, as `resource.verb` (`device.create`, `token.revoke`).
    pub action: String,
    /// What it was done to, as `kind/id` (`device/sensor-1`).
    pub resource: String,
    /// A summary of the resource before the change (`None` on create).
    pub before: Option<serde_json::Value>,
    /// A summary of the resource after the change (`None` on delete).
    pub after: Option<serde_json::Value>,
}

/// A sealed audit record, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, starting at 1, without gaps.
    pub seq: u64,
    /// When the change happened.
    pub at: Timestamp,
    /// Who made it ([`Actor`]'s display form).
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub resource: String,
    /// JSON text of the summary before the change.
    pub before: Option<String>,
    /// JSON text of the summary after the change.
    pub after: Option<String>,
    /// Hash of the previous record ([`GENESIS`] for the first).
    pub prev_hash: [u8; 32],
    /// Hash of this record: [`chain_hash`] of its content and `prev_hash`.
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// Seals a new entry as record `seq`, linking it to the record whose hash is `prev_hash`.
    pub fn seal(seq: u64, prev_hash: [u8; 32], new: &NewAuditRecord) -> Self {
        let mut r = Self {
            seq,
            at: new.at,
            actor: new.actor.to_string(),
            action: new.action.clone(),
            resource: new.resource.clone(),
            before: new.before.as_ref().map(serde_json::Value::to_string),
            after: new.after.as_ref().map(serde_json::Value::to_string),
            prev_hash,
            hash: [0; 32],
        };
        r.hash = chain_hash(&r);
        r
    }
}

/// The hash of a record's content and its link to the previous record (its own `hash` field is ignored).
pub fn chain_hash(r: &AuditRecord) -> [u8; 32] {
    fn field(h: &mut Sha256, s: Option<&str>) {
        match s {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    let mut h = Sha256::new();
    h.update(b"herd-audit-v1\n");
    h.update(r.prev_hash);
    h.update(r.seq.to_be_bytes());
    h.update(r.at.millis().to_be_bytes());
    field(&mut h, Some(&r.actor));
    field(&mut h, Some(&r.action));
    field(&mut h, Some(&r.resource));
    field(&mut h, r.before.as_deref());
    field(&mut h, r.after.as_deref());
    h.finalize().into()
}

/// The first record at which the chain does not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at record {seq}: {reason}")]
pub struct BrokenLink {
    /// The sequence number of the first record that fails.
    pub seq: u64,
    /// What failed.
    pub reason: String,
}

/// Checks records one at a time, in order, so a long log can be verified page by page.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev_hash: [u8; 32],
    next_seq: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { prev_hash: GENESIS, next_seq: 1 }
    }
}

impl ChainVerifier {
    /// A verifier expecting the chain to start at record 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records have been checked.
    pub fn checked(&self) -> u64 {
        self.next_seq - 1
    }

    /// Checks the next record.
    ///
    /// # Errors
    /// [`BrokenLink`] when the record is out of sequence (a row removed or inserted), does not link
    /// to its predecessor, or its content does not match its hash (a row altered).
    pub fn check(&mut self, r: &AuditRecord) -> Result<(), BrokenLink> {
        if r.seq != self.next_seq {
            return Err(BrokenLink {
                seq: self.next_seq,
                reason: format!(
                    "expected record {} but found record {} (records missing or reordered)",
                    self.next_seq, r.seq
                ),
            });
        }
        if r.prev_hash != self.prev_hash {
            return Err(BrokenLink {
                seq: r.seq,
                reason: "its prev_hash does not match the hash of the record before it".into(),
            });
        }
        if chain_hash(r) != r.hash {
            return Err(BrokenLink {
                seq: r.seq,
                reason: "its content does not match its hash (record altered)".into(),
            });
        }
        self.prev_hash = r.hash;
        self.next_seq += 1;
        Ok(())
    }
}

/// Verifies a whole chain held in memory.
///
/// # Errors
/// The first [`BrokenLink`].
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<u64, BrokenLink> {
    let mut v = ChainVerifier::new();
    for r in records {
        v.check(r)?;
    }
    Ok(v.checked())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let r = AuditRecord::seal(
                    seq,
                    prev,
                    &NewAuditRecord {
                        actor: Actor::system(),
                        at: Timestamp::from_millis(seq as i64),
                        action: "device.create".into(),
                        resource: format!("device/d{seq}"),
                        before: None,
                        after: Some(serde_json::json!({"id": format!("d{seq}")})),
                    },
                );
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn clean_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
    }

    #[test]
    fn altered_record_is_named() {
        let mut c = chain(5);
        c[2].after = Some(r#"{"id":"evil"}"#.into());
        assert_eq!(verify_chain(&c).unwrap_err().seq, 3);
    }

    #[test]
    fn removed_record_is_named() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify_chain(&c).unwrap_err().seq, 2);
    }

    #[test]
    fn rehashed_record_breaks_next_link() {
        let mut c = chain(5);
        c[2].actor = "someone else".into();
        c[2].hash = chain_hash(&c[2]);
        assert_eq!(verify_chain(&c).unwrap_err().seq, 4);
    }
}

//! Device credentials: the secrets devices present when they connect (MQTT password).

use std::fmt;

use crate::{DeviceId, InvalidInput, Timestamp, TokenHash};

/// A credential's public identifier (`cred_` and 16 hex digits), safe to show and log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CredentialId(String);

impl CredentialId {
    /// Validates a credential id.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is not `cred_` followed by 16 lowercase hex digits.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = id.into();
        let ok = id.strip_prefix("cred_").is_some_and(|h| {
            h.len() == 16 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(id))
        } else {
            Err(InvalidInput::new("credential id", format!("{id:?} is not a credential id")))
        }
    }

    /// Builds a credential id from 8 random bytes.
    pub fn from_random(bytes: [u8; 8]) -> Self {
        Self(format!("cred_{}", hex::encode(bytes)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device credential as stored: everything but the secret, which is kept only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    /// Public id.
    pub id: CredentialId,
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// SHA-256 of the secret.
    pub hash: TokenHash,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

impl DeviceCredential {
    /// Whether the credential authenticates its device at `now`.
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    /// A compact JSON summary for audit records (never the hash).
    pub fn audit_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.as_str(),
            "device_id": self.device_id.as_str(),
            "expires_at": self.expires_at.map(Timestamp::to_rfc3339),
            "revoked_at": self.revoked_at.map(Timestamp::to_rfc3339),
        })
    }
}

/// What it takes to store a new device credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeviceCredential {
    /// Public id.
    pub id: CredentialId,
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// SHA-256 of the secret.
    pub hash: TokenHash,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_ids() {
        let id = CredentialId::from_random([0x01; 8]);
        assert_eq!(id.as_str(), "cred_0101010101010101");
        assert!(CredentialId::new(id.as_str()).is_ok());
        assert!(CredentialId::new("tok_0101010101010101").is_err());
    }
}

/// Why a device lost (some of) its right to be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessChangeReason {
    /// The device left the `active` state (suspended, decommissioned, retired).
    NotActive,
    /// The device was deleted.
    Deleted,
    /// One of its credentials (a token or a certificate) was revoked.
    CredentialRevoked,
}

/// An event the REST side emits after committing a change that must end a device's live sessions:
/// the gateway closes the device's MQTT connection when it hears it (and re-checks on reconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAccessChange {
    /// The device concerned.
    pub device_id: DeviceId,
    /// What changed.
    pub reason: AccessChangeReason,
}

/// A message the REST side asks the MQTT gateway to send to a device: QoS 1 to
/// `devices/{device_id}/{subtopic}`, so a device with a persistent session gets it when it is back
/// if it is offline now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNotice {
    /// The device.
    pub device_id: DeviceId,
    /// The topic below `devices/{id}/`, such as `identity/rotate`.
    pub subtopic: &'static str,
    /// The payload (JSON).
    pub payload: String,
}

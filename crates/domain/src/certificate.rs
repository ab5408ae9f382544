//! Device certificates: X.509 certificates Herd's CA issued to devices (for MQTT over mutual TLS).

use std::fmt;

use crate::{DeviceId, InvalidInput, Timestamp};

/// A certificate's serial number as lowercase hex digits (as the CA encodes it), its public id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertificateSerial(String);

impl CertificateSerial {
    /// Longest serial accepted: 20 bytes, the most RFC 5280 allows.
    pub const MAX_HEX_DIGITS: usize = 40;

    /// Validates a serial.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is not 1 to 40 lowercase hex digits.
    pub fn new(serial: impl Into<String>) -> Result<Self, InvalidInput> {
        let serial = serial.into();
        let ok = (1..=Self::MAX_HEX_DIGITS).contains(&serial.len())
            && serial.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(serial))
        } else {
            Err(InvalidInput::new(
                "certificate serial",
                format!("{serial:?} is not a certificate serial (lowercase hex digits)"),
            ))
        }
    }

    /// The serial as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertificateSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// Serial number, unique among the CA's certificates.
    pub serial: CertificateSerial,
    /// The device it was issued to (its subject).
    pub device_id: DeviceId,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub fingerprint_sha256: String,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// When it was issued (stored).
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// The certificate, PEM-encoded.
    pub pem: String,
}

impl DeviceCertificate {
    /// Whether the certificate authenticates its device at `now` (not revoked, within validity).
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.not_before <= now && now < self.not_after
    }

    /// A compact JSON summary for audit records (never the PEM).
    pub fn audit_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "serial": self.serial.as_str(),
            "device_id": self.device_id.as_str(),
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": self.not_before.to_rfc3339(),
            "not_after": self.not_after.to_rfc3339(),
            "revoked_at": self.revoked_at.map(Timestamp::to_rfc3339),
        })
    }
}

/// What it takes to store a newly issued device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeviceCertificate {
    /// Serial number.
    pub serial: CertificateSerial,
    /// The device it was issued to.
    pub device_id: DeviceId,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub fingerprint_sha256: String,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// The certificate, PEM-encoded.
    pub pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        assert!(CertificateSerial::new("0a1b2c").is_ok());
        assert!(CertificateSerial::new("f".repeat(40)).is_ok());
        for bad in ["", "0A", "xyz", "0a:1b", &"f".repeat(41)] {
            assert!(CertificateSerial::new(bad).is_err(), "{bad:?}");
        }
    }
}

//! Enrollment groups: how devices that Herd has never seen provision themselves (zero-touch).
//!
//! An [`EnrollmentGroup`] says how a device proves it belongs ([`Attestation`]), which device id it
//! gets ([`DeviceIdTemplate`] applied to the [`RegistrationId`] it presents) and what it starts
//! with (tags, attributes, static group memberships). Claim codes ([`ClaimCode`]) are one-time (or
//! few-times) passwords of a group, stored only as hashes.
//!
//! The cryptography of the proofs (HMAC-SHA256 of the derived device key, sealing the group key)
//! lives in `http-api` (`secrets`, `provisioning`), so this crate stays free of crypto libraries.

use std::fmt;

use crate::{Attributes, DeviceId, GroupName, InvalidInput, Tags, Timestamp};

/// The only placeholder a [`DeviceIdTemplate`] may hold.
pub const REGISTRATION_ID_PLACEHOLDER: &str = "{registration_id}";

/// An enrollment group's name: 1–64 characters of `[A-Za-z0-9._-]`, unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnrollmentGroupName(String);

impl EnrollmentGroupName {
    /// Validates and wraps an enrollment group name (the rules of [`GroupName`]).
    ///
    /// # Errors
    /// [`InvalidInput`] when the name is empty, too long or holds other characters.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = GroupName::new(name)
            .map_err(|e| InvalidInput::new("enrollment group name", e.reason))?;
        Ok(Self(name.as_str().to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnrollmentGroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a device presents as its name when it registers: 1–128 characters of `[A-Za-z0-9._:-]`
/// (the rules of [`DeviceId`], which it usually becomes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistrationId(String);

impl RegistrationId {
    /// Validates a registration id.
    ///
    /// # Errors
    /// [`InvalidInput`] when it breaks the device id rules.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = DeviceId::new(id).map_err(|e| InvalidInput::new("registration id", e.reason))?;
        Ok(Self(id.as_str().to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a registration id becomes a device id: text with `{registration_id}` in it (at least once,
/// and no other `{…}`), e.g. `factory-a-{registration_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdTemplate(String);

impl DeviceIdTemplate {
    /// Longest template accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates a template: it names `{registration_id}`, has no other braces, and with a
    /// one-character registration id gives a valid device id.
    ///
    /// # Errors
    /// [`InvalidInput`] (field `device id template`) otherwise.
    pub fn new(template: impl Into<String>) -> Result<Self, InvalidInput> {
        let template = template.into();
        let bad = |reason: String| InvalidInput::new("device id template", reason);
        if template.len() > Self::MAX_LEN {
            return Err(bad(format!("must be at most {} characters", Self::MAX_LEN)));
        }
        if !template.contains(REGISTRATION_ID_PLACEHOLDER) {
            return Err(bad(format!("{template:?} must contain {REGISTRATION_ID_PLACEHOLDER}")));
        }
        let rest = template.replace(REGISTRATION_ID_PLACEHOLDER, "");
        if rest.contains(['{', '}']) {
            return Err(bad(format!(
                "{template:?} may hold no other placeholder than {REGISTRATION_ID_PLACEHOLDER}"
            )));
        }
        let sample = template.replace(REGISTRATION_ID_PLACEHOLDER, "x");
        DeviceId::new(sample).map_err(|e| {
            bad(format!("{template:?} does not give valid device ids: {}", e.reason))
        })?;
        Ok(Self(template))
    }

    /// The template as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device id for `registration_id`.
    ///
    /// # Errors
    /// [`InvalidInput`] when the result is not a valid device id (too long).
    pub fn apply(&self, registration_id: &RegistrationId) -> Result<DeviceId, InvalidInput> {
        DeviceId::new(self.0.replace(REGISTRATION_ID_PLACEHOLDER, registration_id.as_str()))
    }
}

/// How devices of a group prove they belong to it.
#[derive(Clone, PartialEq, Eq)]
pub enum Attestation {
    /// A group secret (32 random bytes) from which each device's key is derived
    /// (HMAC-SHA256 of the device id); stored sealed (encrypted with the server's master key).
    SymmetricKey {
        /// The group key, sealed: nonce, ciphertext and tag.
        sealed_key: Vec<u8>,
    },
    /// An X.509 certificate chaining to a CA: Herd's own (`None`) or an uploaded CA certificate.
    X509 {
        /// The CA certificate, PEM; `None` for Herd's own CA.
        ca_pem: Option<String>,
    },
    /// A claim code from the group's codes ([`ClaimCode`]).
    ClaimCode,
}

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The sealed key is never printed, not even encrypted.
        match self {
            Self::SymmetricKey { .. } => f.write_str("SymmetricKey { .. }"),
            Self::X509 { ca_pem } => {
                f.debug_struct("X509").field("custom_ca", &ca_pem.is_some()).finish()
            }
            Self::ClaimCode => f.write_str("ClaimCode"),
        }
    }
}

impl Attestation {
    /// The attestation's kind as stored and shown: `symmetric_key`, `x509` or `claim_code`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SymmetricKey { .. } => "symmetric_key",
            Self::X509 { .. } => "x509",
            Self::ClaimCode => "claim_code",
        }
    }
}

/// An enrollment group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentGroup {
    /// Unique name.
    pub name: EnrollmentGroupName,
    /// How devices prove they belong.
    pub attestation: Attestation,
    /// Whether devices may register now.
    pub enabled: bool,
    /// When registrations stop being accepted, if ever.
    pub expires_at: Option<Timestamp>,
    /// How a registration id becomes a device id; `None`: the registration id is the device id.
    pub device_id_template: Option<DeviceIdTemplate>,
    /// Tags a new device starts with.
    pub tags: Tags,
    /// Static groups a new device is added to.
    pub groups: Vec<GroupName>,
    /// Attributes a new device starts with.
    pub attributes: Attributes,
    /// When the group was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// How many devices it has created.
    pub registrations: u64,
}

impl EnrollmentGroup {
    /// Whether devices may register at `now`: enabled and not expired.
    pub fn accepts_at(&self, now: Timestamp) -> bool {
        self.enabled && self.expires_at.is_none_or(|e| now < e)
    }

    /// The device id a registration id gets.
    ///
    /// # Errors
    /// [`InvalidInput`] when the template makes an invalid id of it (too long).
    pub fn device_id_for(
        &self,
        registration_id: &RegistrationId,
    ) -> Result<DeviceId, InvalidInput> {
        match &self.device_id_template {
            Some(t) => t.apply(registration_id),
            None => DeviceId::new(registration_id.as_str()),
        }
    }

    /// A compact JSON summary for audit records: never the key, nor a CA's PEM.
    pub fn audit_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name.as_str(),
            "attestation": self.attestation.kind(),
            "custom_ca": matches!(self.attestation, Attestation::X509 { ca_pem: Some(_) }),
            "enabled": self.enabled,
            "expires_at": self.expires_at.map(Timestamp::to_rfc3339),
            "device_id_template": self.device_id_template.as_ref().map(DeviceIdTemplate::as_str),
            "tags": self.tags.to_json(),
            "groups": self.groups.iter().map(GroupName::as_str).collect::<Vec<_>>(),
            "attributes": self.attributes.as_json(),
        })
    }
}

/// What it takes to create an enrollment group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrollmentGroup {
    /// Unique name.
    pub name: EnrollmentGroupName,
    /// How devices prove they belong.
    pub attestation: Attestation,
    /// Whether devices may register from the start.
    pub enabled: bool,
    /// When registrations stop being accepted, if ever.
    pub expires_at: Option<Timestamp>,
    /// How a registration id becomes a device id.
    pub device_id_template: Option<DeviceIdTemplate>,
    /// Tags of new devices.
    pub tags: Tags,
    /// Static groups of new devices (they must exist and be static).
    pub groups: Vec<GroupName>,
    /// Attributes of new devices.
    pub attributes: Attributes,
}

/// A partial update of an enrollment group: `None` leaves a field as it is. The attestation
/// never changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnrollmentGroupPatch {
    /// Enable or disable registrations.
    pub enabled: Option<bool>,
    /// New expiry (`Some(None)` removes it).
    pub expires_at: Option<Option<Timestamp>>,
    /// New template (`Some(None)` removes it).
    pub device_id_template: Option<Option<DeviceIdTemplate>>,
    /// New tags (replaces all).
    pub tags: Option<Tags>,
    /// New static groups (replaces all).
    pub groups: Option<Vec<GroupName>>,
    /// New attributes (replaces all).
    pub attributes: Option<Attributes>,
}

impl EnrollmentGroupPatch {
    /// Applies the patch to a group; does not touch timestamps.
    pub fn apply(&self, group: &mut EnrollmentGroup) {
        if let Some(enabled) = self.enabled {
            group.enabled = enabled;
        }
        if let Some(expires_at) = self.expires_at {
            group.expires_at = expires_at;
        }
        if let Some(template) = &self.device_id_template {
            group.device_id_template.clone_from(template);
        }
        if let Some(tags) = &self.tags {
            group.tags = tags.clone();
        }
        if let Some(groups) = &self.groups {
            group.groups.clone_from(groups);
        }
        if let Some(attributes) = &self.attributes {
            group.attributes = attributes.clone();
        }
    }
}

/// A claim code's public id (`cc_` and 16 hex digits), safe to show and log; never the code.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimCodeId(String);

impl ClaimCodeId {
    /// Validates a claim code id.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is not `cc_` followed by 16 lowercase hex digits.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = id.into();
        let ok = id.strip_prefix("cc_").is_some_and(|h| {
            h.len() == 16 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(id))
        } else {
            Err(InvalidInput::new("claim code id", format!("{id:?} is not a claim code id")))
        }
    }

    /// Builds an id from 8 random bytes.
    pub fn from_random(bytes: [u8; 8]) -> Self {
        Self(format!("cc_{}", hex::encode(bytes)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClaimCodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A claim code as stored: everything but the code, which is kept only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCode {
    /// Public id.
    pub id: ClaimCodeId,
    /// The group it lets devices into.
    pub group: EnrollmentGroupName,
    /// How many devices it has enrolled.
    pub uses: u32,
    /// How many devices it may enroll.
    pub max_uses: u32,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was made.
    pub created_at: Timestamp,
}

/// What happened to a registration that the store refused (inside its transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationRefusal {
    /// The group does not exist (any more).
    UnknownGroup,
    /// The group is disabled.
    GroupDisabled,
    /// The group has expired.
    GroupExpired,
    /// The claim code is not one of the group's codes.
    InvalidClaimCode,
    /// The claim code has enrolled as many devices as it may.
    ClaimCodeExhausted,
    /// The claim code has expired.
    ClaimCodeExpired,
    /// The device exists and was not enrolled by this group with this registration id (or with
    /// another claim code).
    DeviceConflict,
}

impl RegistrationRefusal {
    /// A stable name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownGroup => "unknown_group",
            Self::GroupDisabled => "group_disabled",
            Self::GroupExpired => "group_expired",
            Self::InvalidClaimCode => "invalid_claim_code",
            Self::ClaimCodeExhausted => "claim_code_exhausted",
            Self::ClaimCodeExpired => "claim_code_expired",
            Self::DeviceConflict => "device_conflict",
        }
    }
}

impl fmt::Display for RegistrationRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_registration_ids() {
        assert!(EnrollmentGroupName::new("factory-a.v2").is_ok());
        assert!(EnrollmentGroupName::new("").is_err());
        assert!(EnrollmentGroupName::new("a b").is_err());
        assert!(RegistrationId::new("SN:0001").is_ok());
        assert!(RegistrationId::new("x/y").is_err());
        assert!(RegistrationId::new("x".repeat(129)).is_err());
    }

    #[test]
    fn templates() {
        let t = DeviceIdTemplate::new("plant-{registration_id}").unwrap();
        let r = RegistrationId::new("0042").unwrap();
        assert_eq!(t.apply(&r).unwrap().as_str(), "plant-0042");
        let twice = DeviceIdTemplate::new("{registration_id}.{registration_id}").unwrap();
        assert_eq!(twice.apply(&r).unwrap().as_str(), "0042.0042");
        for bad in ["plant", "plant-{serial}", "{registration_id}{", "a b {registration_id}"] {
            assert!(DeviceIdTemplate::new(bad).is_err(), "{bad:?}");
        }
        let long = DeviceIdTemplate::new(format!("{}{{registration_id}}", "x".repeat(100)));
        let long = long.unwrap();
        assert!(long.apply(&RegistrationId::new("y".repeat(100)).unwrap()).is_err());
    }

    #[test]
    fn claim_code_ids() {
        let id = ClaimCodeId::from_random([0xab; 8]);
        assert_eq!(id.as_str(), "cc_abababababababab");
        assert!(ClaimCodeId::new(id.as_str()).is_ok());
        assert!(ClaimCodeId::new("cred_abababababababab").is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let a = Attestation::SymmetricKey { sealed_key: vec![1, 2, 3] };
        assert_eq!(format!("{a:?}"), "SymmetricKey { .. }");
    }
}

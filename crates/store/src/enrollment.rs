//! The inputs and outputs of the enrollment calls of [`crate::Store`]: claim codes to store, a
//! registration to commit and what it did, a refusal to put on record.

use std::collections::BTreeMap;

use domain::{
    ClaimCode, ClaimCodeId, CredentialId, Device, DeviceCredential, DeviceId, EnrollmentGroup,
    EnrollmentGroupName, LifecycleState, NewDeviceCredential, RegistrationId, Tags, Timestamp,
    TokenHash,
};

use crate::StoreError;

/// How many credentials issued by provisioning stay valid per device: the newest two, so a device
/// that rotates its credential keeps working with the old one until it switches.
pub const MAX_PROVISIONING_CREDENTIALS: usize = 2;

/// A claim code to store: its public id and the SHA-256 of the code (never the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaimCode {
    /// Public id.
    pub id: ClaimCodeId,
    /// SHA-256 of the normalized code.
    pub hash: TokenHash,
}

/// A registration whose proof the caller has checked: what [`crate::Store::register_device`]
/// commits.
///
/// - The group must exist; for a `claim_code` group the claim code must be one of its codes; then
///   the group must be enabled and not expired at the mutation's time.
/// - When `device_id` does not exist: it is created `active` with the group's tags and
///   attributes, added to the group's static groups that still exist, and recorded as enrolled by
///   the group with `registration_id`; a claim code (required for `claim_code` groups) must be
///   one of the group's, unexpired, with a use left, and one use is consumed.
/// - When it exists and was enrolled by this group with this registration id (and the same claim
///   code, for claim code groups): an idempotent retry; nothing is created or consumed, the
///   enrollment's count and last time move on.
/// - When it exists in state `registered` and no group enrolled it yet (a device imported or
///   created beforehand, or the successor `replace_device` made): it is **adopted**. It becomes
///   `active`, the group's tags and attributes are merged into its own (its own win on a
///   conflicting key; attributes are merged at the top level), it joins the group's static
///   groups, the enrollment is recorded and a claim code use is consumed as for a new device.
///   More than `MAX_TAGS` tags after the merge is a [`StoreError::Conflict`].
/// - When it exists otherwise: refused with `DeviceConflict`.
///
/// Then `credential` is stored for the device and the device's provisioning credentials beyond
/// the newest [`MAX_PROVISIONING_CREDENTIALS`] are revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The group the device enrolls through.
    pub group: EnrollmentGroupName,
    /// What the device presented.
    pub registration_id: RegistrationId,
    /// The device id the group's template gives.
    pub device_id: DeviceId,
    /// The SHA-256 of the presented claim code, for `claim_code` groups.
    pub claim_code: Option<TokenHash>,
    /// The new credential (its `device_id` is `device_id`).
    pub credential: NewDeviceCredential,
}

/// What a committed registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The device as stored now.
    pub device: Device,
    /// Whether the registration created it.
    pub created: bool,
    /// Whether the registration adopted a device that existed in state `registered` (then
    /// `created` is false).
    pub adopted: bool,
    /// The new credential.
    pub credential: DeviceCredential,
    /// Older provisioning credentials revoked to keep at most [`MAX_PROVISIONING_CREDENTIALS`].
    pub revoked_credentials: Vec<CredentialId>,
}

/// A refused registration attempt, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRefusalRecord {
    /// The group the device named, when it names a valid group name (it may not exist).
    pub group: Option<EnrollmentGroupName>,
    /// What the device presented.
    pub registration_id: RegistrationId,
    /// Why it was refused (`invalid_proof`, `enrollment_disabled`, …).
    pub reason: String,
    /// Where the attempt came from (`https 192.0.2.7`, `mqtt`, …).
    pub source: String,
}

impl RegistrationRefusalRecord {
    /// The audit resource of the attempt.
    pub fn resource(&self) -> String {
        format!("registration/{}", self.registration_id)
    }

    /// The audit `after` summary of the attempt.
    pub fn audit_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "enrollment_group": self.group.as_ref().map(EnrollmentGroupName::as_str),
            "reason": self.reason,
            "source": self.source,
        })
    }
}

impl Registered {
    /// The audit `after` summary of the registration (`before` is always empty): the device, the
    /// group and registration id, the new credential and the revoked ones, never a secret.
    pub fn audit_summary(&self, registration: &Registration) -> serde_json::Value {
        serde_json::json!({
            "device": self.device.audit_summary(),
            "created": self.created,
            "adopted": self.adopted,
            "enrollment_group": registration.group.as_str(),
            "registration_id": registration.registration_id.as_str(),
            "credential": self.credential.audit_summary(),
            "revoked_credentials":
                self.revoked_credentials.iter().map(CredentialId::as_str).collect::<Vec<_>>(),
        })
    }
}

/// The device `group` makes of a new device `id` enrolling at `at`: active, with the group's tags
/// and attributes.
pub fn enrolled_device(id: &DeviceId, group: &EnrollmentGroup, at: Timestamp) -> Device {
    Device {
        id: id.clone(),
        name: domain::DisplayName::default(),
        tags: group.tags.clone(),
        attributes: group.attributes.clone(),
        state: LifecycleState::Active,
        created_at: at,
        updated_at: at,
        version: 1,
        replaces: None,
        replaced_by: None,
    }
}

/// The device `group` makes of `device`, which exists in state `registered` and enrolls at `at`
/// (see [`Registration`]): active, the group's tags and attributes merged under its own, its next
/// version.
///
/// # Errors
/// [`StoreError::Conflict`] when the device is not `registered`, or the merged tags break a tag
/// rule (more than `MAX_TAGS`).
pub fn adopted_device(
    device: &Device,
    group: &EnrollmentGroup,
    at: Timestamp,
) -> Result<Device, StoreError> {
    if device.state != LifecycleState::Registered {
        return Err(StoreError::Conflict(format!(
            "device {} is {}, not registered: it cannot be adopted",
            device.id, device.state
        )));
    }
    let mut tags: BTreeMap<String, String> =
        group.tags.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_owned())).collect();
    tags.extend(device.tags.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_owned())));
    let tags = Tags::new(tags).map_err(|e| {
        StoreError::Conflict(format!(
            "adopting device {} through enrollment group {}: its tags and the group's: {e}",
            device.id, group.name
        ))
    })?;
    let mut attributes = match group.attributes.as_json() {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    if let serde_json::Value::Object(own) = device.attributes.as_json() {
        attributes.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(Device {
        tags,
        attributes: domain::Attributes::from_stored(serde_json::Value::Object(attributes)),
        state: LifecycleState::Active,
        updated_at: at,
        version: device.version.saturating_add(1),
        ..device.clone()
    })
}

/// The audit `after` summary of a batch of claim codes (`enrollment_group.claim_codes.create`):
/// how many, their limits and ids, never the codes.
pub fn claim_codes_audit_summary(
    codes: &[ClaimCode],
    max_uses: u32,
    expires_at: Option<Timestamp>,
) -> serde_json::Value {
    serde_json::json!({
        "count": codes.len(),
        "max_uses": max_uses,
        "expires_at": expires_at.map(Timestamp::to_rfc3339),
        "ids": codes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
    })
}

/// The `after` of the audit record `enrollment_group.derive_key` for a batch of derived keys:
/// `{"device_id"}` for one device (as single derivations always were), `{"count", "device_ids"}`
/// for several; `None` for none. Shared by the backends so both record the same shape.
#[must_use]
pub fn key_derivation_audit(devices: &[DeviceId]) -> Option<serde_json::Value> {
    match devices {
        [] => None,
        [one] => Some(serde_json::json!({ "device_id": one.as_str() })),
        many => Some(serde_json::json!({
            "count": many.len(),
            "device_ids": many.iter().map(DeviceId::as_str).collect::<Vec<_>>(),
        })),
    }
}

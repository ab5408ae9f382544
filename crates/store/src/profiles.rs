//! Configuration profiles in the store: the inputs of the `profiles` section of [`crate::Store`]
//! and the backend-independent steps (which profiles apply to a device, recomputing a twin's
//! effective desired document from them).
//!
//! Backends keep the SQL: the `config_profiles` table, the durable recompute queue
//! (`twin_recompute`, filled in the transaction of every change that can change a device's
//! layers), and draining it.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use domain::profile::profile_layers;
use domain::twin::{Document, Layer};
use domain::{
    ConfigProfile, Device, DeviceTwin, GroupKind, GroupName, NewProfile, ProfileName, ProfilePatch,
    ProfileTarget, Timestamp, TwinError, TwinPolicy,
};
use serde_json::Value;

use crate::StoreError;
use crate::twins::{NewTwinHistory, recompute_desired};

/// The actor of twin history entries written when profiles change a device's desired document.
pub const RECOMPUTE_ACTOR: &str = "profiles";

/// Audit action of creating a profile.
pub const PROFILE_CREATE_ACTION: &str = "config_profile.create";
/// Audit action of changing a profile.
pub const PROFILE_UPDATE_ACTION: &str = "config_profile.update";
/// Audit action of deleting a profile.
pub const PROFILE_DELETE_ACTION: &str = "config_profile.delete";

/// The audit resource of a profile.
pub fn profile_resource(name: &ProfileName) -> String {
    format!("config_profile/{name}")
}

/// The profile `new` describes, at version 1, created at `at`.
pub fn new_profile(new: &NewProfile, at: Timestamp) -> ConfigProfile {
    ConfigProfile {
        name: new.name.clone(),
        description: new.description.clone(),
        target: new.target.clone(),
        priority: new.priority,
        document: new.document.clone(),
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

/// Checks the version a caller expects (`None`: unconditional).
///
/// # Errors
/// [`StoreError::VersionMismatch`].
pub fn check_version(profile: &ConfigProfile, expected: Option<u64>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != profile.version => {
            Err(StoreError::VersionMismatch { expected, current: profile.version })
        }
        _ => Ok(()),
    }
}

/// `current` with `patch` applied at `at`, its version bumped; `None` when the patch changes
/// nothing (the backend then writes nothing).
///
/// # Errors
/// [`StoreError::VersionMismatch`] when `patch.expected_version` is not the current version.
pub fn plan_profile_update(
    current: &ConfigProfile,
    patch: &ProfilePatch,
    at: Timestamp,
) -> Result<Option<ConfigProfile>, StoreError> {
    check_version(current, patch.expected_version)?;
    let mut new = patch.apply(current);
    if new == *current {
        return Ok(None);
    }
    new.version = current.version + 1;
    new.updated_at = at;
    Ok(Some(new))
}

/// Whether changing `old` into `new` can change any device's layers: a change of the
/// description alone cannot, and queues no device.
pub fn changes_layers(old: &ConfigProfile, new: &ConfigProfile) -> bool {
    old.target != new.target || old.priority != new.priority || old.document != new.document
}

/// [`StoreError::NotFound`] for a profile.
pub fn profile_not_found(name: &ProfileName) -> StoreError {
    StoreError::NotFound { kind: "config_profile", id: name.to_string() }
}

/// The refusal to delete `group` while `profiles` (in name order) are attached to it.
pub fn group_has_profiles(group: &GroupName, profiles: &[ProfileName]) -> StoreError {
    let names: Vec<&str> = profiles.iter().map(ProfileName::as_str).collect();
    StoreError::Conflict(format!(
        "group {group} has configuration profiles attached ({}): delete them or attach them \
         elsewhere first",
        names.join(", ")
    ))
}

/// A stored profile document (JSON object text) read back.
///
/// # Errors
/// A reason when the text is not a JSON object.
pub fn document_from_json(text: &str) -> Result<Document, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(document)) => Ok(document),
        Ok(other) => Err(format!("document is not a JSON object: {other}")),
        Err(e) => Err(format!("document: {e}")),
    }
}

/// A profile's document as stored (JSON object text).
pub fn document_to_json(document: &Document) -> String {
    Value::Object(document.clone()).to_string()
}

/// A query for one page of profiles in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileQuery {
    /// Only profiles with this target.
    pub target: Option<ProfileTarget>,
    /// Only profiles whose name sorts after this one: the cursor of the previous page.
    pub after: Option<ProfileName>,
    /// Page size, at most [`crate::MAX_PAGE_SIZE`].
    pub limit: NonZeroU32,
}

/// What one [`crate::Store::recompute_twins`] call did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recomputed {
    /// How many devices it took off the queue (0: the queue was empty).
    pub taken: u64,
    /// The twins whose effective desired document changed, as committed.
    pub changed: Vec<DeviceTwin>,
    /// Devices whose merged document is past the limits: their desired document was kept.
    pub refused: Vec<(domain::DeviceId, TwinError)>,
}

/// A profile that may apply to a device, with the kind of its group (`None` for the fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The profile.
    pub profile: ConfigProfile,
    /// Its group's kind, for a group profile.
    pub group_kind: Option<GroupKind>,
}

/// The layers below the device's own for `device`, in merge order: every fleet profile, and the
/// profiles of the groups it is in — a static group when `static_groups` (the static groups the
/// device is a member of) names it, a dynamic group when its filter matches the device.
pub fn applicable_layers(
    device: &Device,
    candidates: Vec<Candidate>,
    static_groups: &BTreeSet<GroupName>,
) -> Vec<Layer> {
    let applies = |c: &Candidate| match (&c.profile.target, &c.group_kind) {
        (ProfileTarget::Fleet, _) => true,
        (ProfileTarget::Group(g), Some(GroupKind::Static)) => static_groups.contains(g),
        (ProfileTarget::Group(_), Some(GroupKind::Dynamic(f))) => f.matches(device),
        (ProfileTarget::Group(_), None) => false,
    };
    profile_layers(candidates.into_iter().filter(applies).map(|c| c.profile).collect())
}

/// Recomputes a queued device's effective desired document from `base_layers` and its own layer;
/// returns the history entry when the document changed. A result past the limits keeps the
/// current document (the device keeps what it has; the error says why).
///
/// # Errors
/// [`TwinError::TooLarge`], [`TwinError::TooDeep`]: the merged document is past the limits.
pub fn plan_recompute(
    twin: &mut DeviceTwin,
    base_layers: &[Layer],
    policy: &TwinPolicy,
    at: Timestamp,
) -> Result<Option<NewTwinHistory>, TwinError> {
    recompute_desired(twin, base_layers, policy, at, RECOMPUTE_ACTOR)
}

#[cfg(test)]
mod tests {
    use domain::{Attributes, DeviceId, DisplayName, Filter, LifecycleState, Tags};
    use serde_json::{Value, json};

    use super::*;

    fn profile(name: &str, target: ProfileTarget, priority: i32, doc: Value) -> ConfigProfile {
        let Value::Object(document) = doc else { panic!("object") };
        ConfigProfile {
            name: ProfileName::new(name).unwrap(),
            description: String::new(),
            target,
            priority,
            document,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            version: 1,
        }
    }

    #[test]
    fn only_the_groups_the_device_is_in_apply() {
        let g = |n: &str| GroupName::new(n).unwrap();
        let device = Device {
            id: DeviceId::new("d1").unwrap(),
            name: DisplayName::new("").unwrap(),
            tags: Tags::new([("site".to_owned(), "north".to_owned())]).unwrap(),
            attributes: Attributes::default(),
            state: LifecycleState::Active,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            version: 1,
            replaces: None,
            replaced_by: None,
        };
        let candidates = vec![
            Candidate {
                profile: profile("base", ProfileTarget::Fleet, 0, json!({"a": 1})),
                group_kind: None,
            },
            Candidate {
                profile: profile("st", ProfileTarget::Group(g("st")), 1, json!({"b": 1})),
                group_kind: Some(GroupKind::Static),
            },
            Candidate {
                profile: profile("other", ProfileTarget::Group(g("other")), 1, json!({"c": 1})),
                group_kind: Some(GroupKind::Static),
            },
            Candidate {
                profile: profile("north", ProfileTarget::Group(g("north")), 2, json!({"d": 1})),
                group_kind: Some(GroupKind::Dynamic(Filter::parse("tags.site = 'north'").unwrap())),
            },
            Candidate {
                profile: profile("south", ProfileTarget::Group(g("south")), 2, json!({"e": 1})),
                group_kind: Some(GroupKind::Dynamic(Filter::parse("tags.site = 'south'").unwrap())),
            },
        ];
        let layers = applicable_layers(&device, candidates, &BTreeSet::from([g("st")]));
        let names: Vec<String> = layers.iter().map(|l| l.source.to_string()).collect();
        assert_eq!(names, ["profile:base", "profile:st", "profile:north"]);
    }
}

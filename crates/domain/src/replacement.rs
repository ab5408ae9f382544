//! Device replacement (RMA): a broken device `OLD` is swapped for a device `NEW` that takes over
//! its identity-level data, while `OLD` is retired and keeps its history.
//!
//! [`ReplacementPlan::new`] holds the rules and computes what happens to the two registry
//! entries; a store applies the plan in one transaction together with what only it can see
//! (static group memberships, credentials and certificates) and reports a [`Replacement`].

use crate::{Attributes, Device, DeviceId, IllegalTransition, LifecycleState, Tags, Timestamp};

/// Why a device cannot be replaced (as asked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplacementError {
    /// The successor named is the device itself.
    #[error("device {0} cannot replace itself; name another device with `with`")]
    SameDevice(DeviceId),
    /// The device to replace is retired already (replaced before, or retired by hand).
    #[error("device {id} is retired{}; a retired device cannot be replaced",
        replaced_by.as_ref().map(|s| format!(" (replaced by {s})")).unwrap_or_default())]
    AlreadyRetired {
        /// The device to replace.
        id: DeviceId,
        /// Its successor, when a replacement retired it.
        replaced_by: Option<DeviceId>,
    },
    /// The successor is out of service (decommissioned or retired).
    #[error("device {id} is {state} and cannot replace another device")]
    SuccessorOutOfService {
        /// The successor.
        id: DeviceId,
        /// Its state.
        state: LifecycleState,
    },
    /// The successor replaced another device already.
    #[error("device {id} already replaces device {predecessor}")]
    SuccessorAlreadyReplaces {
        /// The successor.
        id: DeviceId,
        /// The device it replaced earlier.
        predecessor: DeviceId,
    },
    /// The successor cannot hold the merged tags (too many keys together).
    #[error("device {id} cannot take over the tags of device {old}: {reason}")]
    MergedTags {
        /// The successor.
        id: DeviceId,
        /// The device to replace.
        old: DeviceId,
        /// The tag rule the merge breaks.
        reason: String,
    },
    /// The lifecycle does not lead from the device's state to `retired`.
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
}

/// What moved from the replaced device to its successor and what was revoked: the counts the
/// `device.replace` audit record and the API report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplacementCounts {
    /// Tags of the old device set on the successor (the old device's win on key conflicts).
    pub tags: usize,
    /// Top-level attribute keys of the old device set on the successor (a shallow merge).
    pub attributes: usize,
    /// Static groups the successor was added to (the old device's memberships).
    pub groups: usize,
    /// Credentials of the old device revoked by the replacement.
    pub credentials_revoked: usize,
    /// Certificates of the old device revoked by the replacement.
    pub certificates_revoked: usize,
}

/// The registry side of a replacement: the two devices' entries before and after, as
/// [`ReplacementPlan::new`] computes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacementPlan {
    /// The device to replace, as it is now.
    pub old: Device,
    /// The successor as it is now; `None` when the replacement creates it.
    pub successor_before: Option<Device>,
    /// The successor afterwards: the old device's tags and attributes merged over its own,
    /// `replaces` set, version bumped (or 1 and `registered` when created).
    pub successor: Device,
    /// The old device after each lifecycle step, in order (`decommissioned` unless it is
    /// already, then `retired` with `replaced_by` set), each one version further; the last is its
    /// final state. Each step was checked with [`LifecycleState::check_transition`].
    pub retirement: Vec<Device>,
    /// Tags and attributes moved; a store fills in groups and revocations.
    pub counts: ReplacementCounts,
}

impl ReplacementPlan {
    /// Plans replacing `old` with the device `successor_id`, which is `successor` when it exists
    /// (a pre-provisioned device) and is created in state `registered` otherwise, so it onboards
    /// through the normal flow. Everything happens at `at`.
    ///
    /// The device twin (the old device's own desired layer and twin tags) is not part of the
    /// plan: the store moves it in the same transaction (`store::plan_replacement`).
    ///
    /// # Errors
    /// In this order: [`ReplacementError::SameDevice`], [`ReplacementError::AlreadyRetired`],
    /// [`ReplacementError::SuccessorOutOfService`], [`ReplacementError::SuccessorAlreadyReplaces`],
    /// [`ReplacementError::IllegalTransition`] when the lifecycle does not lead from the old
    /// device's state through `decommissioned` to `retired`, and
    /// [`ReplacementError::MergedTags`] when the merged tags break a tag rule.
    pub fn new(
        old: &Device,
        successor_id: &DeviceId,
        successor: Option<&Device>,
        at: Timestamp,
    ) -> Result<Self, ReplacementError> {
        if *successor_id == old.id {
            return Err(ReplacementError::SameDevice(old.id.clone()));
        }
        if old.state == LifecycleState::Retired {
            return Err(ReplacementError::AlreadyRetired {
                id: old.id.clone(),
                replaced_by: old.replaced_by.clone(),
            });
        }
        if let Some(s) = successor {
            if matches!(s.state, LifecycleState::Decommissioned | LifecycleState::Retired) {
                return Err(ReplacementError::SuccessorOutOfService {
                    id: s.id.clone(),
                    state: s.state,
                });
            }
            if let Some(predecessor) = &s.replaces {
                return Err(ReplacementError::SuccessorAlreadyReplaces {
                    id: s.id.clone(),
                    predecessor: predecessor.clone(),
                });
            }
        }
        let retirement = retire(old, successor_id, at)?;

        let base_tags = successor.map(|s| &s.tags);
        let merged_pairs = base_tags
            .into_iter()
            .flat_map(Tags::iter)
            .chain(old.tags.iter())
            .map(|(k, v)| (k.as_str().to_owned(), v.to_owned()));
        // Later pairs win: the old device's tags override the successor's on the same key.
        let tags = Tags::new(merged_pairs).map_err(|e| ReplacementError::MergedTags {
            id: successor_id.clone(),
            old: old.id.clone(),
            reason: e.reason,
        })?;
        let mut attributes = successor.map_or_else(serde_json::Map::new, |s| {
            s.attributes.as_json().as_object().cloned().unwrap_or_default()
        });
        let old_attributes = old.attributes.as_json().as_object().cloned().unwrap_or_default();
        let moved_attributes = old_attributes.len();
        attributes.extend(old_attributes);
        // Both sides passed the attribute rules when written; the merge may exceed the configured
        // size limit by up to the old device's attributes, which we accept rather than lose data.
        let attributes = Attributes::from_stored(serde_json::Value::Object(attributes));

        let successor_after = match successor {
            Some(s) => Device {
                tags,
                attributes,
                updated_at: at,
                version: s.version + 1,
                replaces: Some(old.id.clone()),
                ..s.clone()
            },
            None => Device {
                id: successor_id.clone(),
                name: crate::DisplayName::default(),
                tags,
                attributes,
                state: LifecycleState::Registered,
                created_at: at,
                updated_at: at,
                version: 1,
                replaces: Some(old.id.clone()),
                replaced_by: None,
            },
        };
        Ok(Self {
            old: old.clone(),
            successor_before: successor.cloned(),
            successor: successor_after,
            retirement,
            counts: ReplacementCounts {
                tags: old.tags.len(),
                attributes: moved_attributes,
                ..ReplacementCounts::default()
            },
        })
    }

    /// The old device after the replacement (retired, `replaced_by` set).
    pub fn old_after(&self) -> &Device {
        self.retirement.last().unwrap_or(&self.old)
    }
}

/// The old device after each step to `retired`: `decommissioned` (skipped when it is already),
/// then `retired` with its successor linked.
fn retire(
    old: &Device,
    successor_id: &DeviceId,
    at: Timestamp,
) -> Result<Vec<Device>, IllegalTransition> {
    let mut steps = Vec::with_capacity(2);
    let mut current = old.clone();
    for to in [LifecycleState::Decommissioned, LifecycleState::Retired] {
        if current.state == to {
            continue;
        }
        current.state.check_transition(to)?;
        current = Device { state: to, updated_at: at, version: current.version + 1, ..current };
        if to == LifecycleState::Retired {
            current.replaced_by = Some(successor_id.clone());
        }
        steps.push(current.clone());
    }
    Ok(steps)
}

/// The outcome of a committed replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The replaced device, now retired with `replaced_by` set.
    pub old: Device,
    /// The successor, with `replaces` set.
    pub successor: Device,
    /// Whether the replacement created the successor.
    pub created: bool,
    /// What moved and what was revoked.
    pub counts: ReplacementCounts,
}

impl Replacement {
    /// The `after` of the `device.replace` audit record on `device/<old>`.
    pub fn audit_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "successor": self.successor.id.as_str(),
            "created": self.created,
            "moved": {
                "tags": self.counts.tags,
                "attributes": self.counts.attributes,
                "groups": self.counts.groups,
            },
            "revoked": {
                "credentials": self.counts.credentials_revoked,
                "certificates": self.counts.certificates_revoked,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DisplayName;

    fn device(
        id: &str,
        state: LifecycleState,
        tags: &[(&str, &str)],
        attrs: serde_json::Value,
    ) -> Device {
        Device {
            id: DeviceId::new(id).unwrap(),
            name: DisplayName::new(format!("name of {id}")).unwrap(),
            tags: Tags::new(tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).unwrap(),
            attributes: Attributes::new(attrs, 10_000).unwrap(),
            state,
            created_at: Timestamp::from_millis(1),
            updated_at: Timestamp::from_millis(1),
            version: 3,
            replaces: None,
            replaced_by: None,
        }
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    const AT: Timestamp = Timestamp::from_millis(100);

    #[test]
    fn merges_over_an_existing_successor_and_retires_in_two_steps() {
        let old = device(
            "old",
            LifecycleState::Active,
            &[("site", "berlin"), ("rack", "4")],
            serde_json::json!({"model": "x1", "slot": 2}),
        );
        let new = device(
            "new",
            LifecycleState::Active,
            &[("site", "paris"), ("hw", "rev2")],
            serde_json::json!({"model": "x2", "serial": "S9"}),
        );
        let plan = ReplacementPlan::new(&old, &new.id, Some(&new), AT).unwrap();
        let s = &plan.successor;
        let tags: Vec<_> = s.tags.iter().map(|(k, v)| (k.as_str(), v)).collect();
        assert_eq!(tags, [("hw", "rev2"), ("rack", "4"), ("site", "berlin")]);
        assert_eq!(
            s.attributes.as_json(),
            &serde_json::json!({"model": "x1", "serial": "S9", "slot": 2})
        );
        assert_eq!((s.version, s.updated_at, s.state), (4, AT, LifecycleState::Active));
        assert_eq!((s.name.as_str(), s.replaces.as_ref()), ("name of new", Some(&old.id)));
        let steps: Vec<_> =
            plan.retirement.iter().map(|d| (d.state, d.version, d.replaced_by.clone())).collect();
        assert_eq!(
            steps,
            [
                (LifecycleState::Decommissioned, 4, None),
                (LifecycleState::Retired, 5, Some(id("new")))
            ]
        );
        assert_eq!(plan.old_after().state, LifecycleState::Retired);
        assert_eq!((plan.counts.tags, plan.counts.attributes), (2, 2));
    }

    #[test]
    fn creates_a_missing_successor_registered() {
        let old =
            device("old", LifecycleState::Decommissioned, &[("a", "1")], serde_json::json!({}));
        let plan = ReplacementPlan::new(&old, &id("new"), None, AT).unwrap();
        let s = &plan.successor;
        assert_eq!((s.state, s.version, s.created_at), (LifecycleState::Registered, 1, AT));
        assert_eq!(s.tags, old.tags);
        assert!(plan.successor_before.is_none());
        // Already decommissioned: one step only.
        assert_eq!(plan.retirement.len(), 1);
        assert_eq!(plan.retirement[0].version, 4);
    }

    #[test]
    fn refusals() {
        let j = serde_json::json!({});
        let old = device("old", LifecycleState::Active, &[], j.clone());
        let check = |old: &Device, new: Option<&Device>, expected: ReplacementError| {
            let new_id = new.map_or_else(|| id("new"), |n| n.id.clone());
            assert_eq!(ReplacementPlan::new(old, &new_id, new, AT), Err(expected));
        };
        check(&old, Some(&old), ReplacementError::SameDevice(id("old")));
        let mut retired = device("old", LifecycleState::Retired, &[], j.clone());
        retired.replaced_by = Some(id("x"));
        check(
            &retired,
            None,
            ReplacementError::AlreadyRetired { id: id("old"), replaced_by: Some(id("x")) },
        );
        for state in [LifecycleState::Decommissioned, LifecycleState::Retired] {
            let new = device("new", state, &[], j.clone());
            check(
                &old,
                Some(&new),
                ReplacementError::SuccessorOutOfService { id: id("new"), state },
            );
        }
        let mut new = device("new", LifecycleState::Registered, &[], j.clone());
        new.replaces = Some(id("older"));
        check(
            &old,
            Some(&new),
            ReplacementError::SuccessorAlreadyReplaces { id: id("new"), predecessor: id("older") },
        );
        let many =
            |p: &str| (0..40).map(|i| (format!("{p}{i}"), String::new())).collect::<Vec<_>>();
        let mut old_many = old;
        old_many.tags = Tags::new(many("a")).unwrap();
        let mut new_many = device("new", LifecycleState::Active, &[], j);
        new_many.tags = Tags::new(many("b")).unwrap();
        let err = ReplacementPlan::new(&old_many, &new_many.id, Some(&new_many), AT).unwrap_err();
        assert!(matches!(err, ReplacementError::MergedTags { .. }), "{err:?}");
    }
}

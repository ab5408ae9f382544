//! Configuration profiles: named fragments of desired configuration attached to the whole fleet
//! or to one group (static or dynamic), each with a priority.
//!
//! A device's effective desired document ([`crate::twin::effective_desired`]) is the merge, lowest
//! priority first, of
//! 1. the fleet profiles, by priority then name;
//! 2. the profiles of the groups the device is in, by priority, then group name, then profile name;
//! 3. the device's own layer (operator patches of its twin), which always wins.
//!
//! [`profile_layers`] puts a device's applicable profiles into that order. Each layer is applied as
//! a JSON merge patch over the ones before it, so a later layer overrides a property and a `null`
//! in it removes what an earlier layer set.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

use crate::twin::{Document, Layer, LayerSource};
use crate::{GroupName, InvalidInput, Timestamp};

/// Lowest priority a profile may have.
pub const MIN_PRIORITY: i32 = -1_000_000;
/// Highest priority a profile may have.
pub const MAX_PRIORITY: i32 = 1_000_000;

/// A profile's name: 1–64 characters of `[A-Za-z0-9._-]`, unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProfileName(String);

impl ProfileName {
    /// Validates and wraps a profile name.
    ///
    /// # Errors
    /// [`InvalidInput`] when the name is empty, too long or holds other characters.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        if name.is_empty() || name.len() > 64 {
            return Err(InvalidInput::new("profile name", "must be 1 to 64 characters"));
        }
        if let Some(c) =
            name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidInput::new(
                "profile name",
                format!("{c:?} is not allowed; use letters, digits and . _ -"),
            ));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a profile is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProfileTarget {
    /// Every device.
    Fleet,
    /// The members of one group: a static group's explicit members, or the devices a dynamic
    /// group's filter matches.
    Group(GroupName),
}

impl ProfileTarget {
    /// The group, for a group profile.
    pub fn group(&self) -> Option<&GroupName> {
        match self {
            Self::Fleet => None,
            Self::Group(g) => Some(g),
        }
    }
}

impl fmt::Display for ProfileTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fleet => f.write_str("fleet"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// A configuration profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProfile {
    /// Unique name.
    pub name: ProfileName,
    /// Free text.
    pub description: String,
    /// The fleet or a group.
    pub target: ProfileTarget,
    /// Among profiles of the same kind (fleet, group), a higher priority is merged later and wins.
    pub priority: i32,
    /// The desired configuration it contributes.
    pub document: Document,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// From 1, incremented on every change.
    pub version: u64,
}

impl ConfigProfile {
    /// A compact JSON summary for audit records (the document is included: profiles are small
    /// and their content is what an auditor asks about).
    pub fn audit_summary(&self) -> Value {
        serde_json::json!({
            "name": self.name.as_str(),
            "description": self.description,
            "target": self.target.to_string(),
            "priority": self.priority,
            "document": Value::Object(self.document.clone()),
            "version": self.version,
        })
    }

    /// The layer this profile contributes.
    pub fn layer(&self) -> Layer {
        Layer {
            source: LayerSource::Profile {
                name: self.name.clone(),
                target: self.target.clone(),
                priority: self.priority,
            },
            document: self.document.clone(),
        }
    }
}

/// What it takes to create a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProfile {
    /// Unique name.
    pub name: ProfileName,
    /// Free text (at most 1024 characters, checked at the edge).
    pub description: String,
    /// The fleet or a group (which must exist).
    pub target: ProfileTarget,
    /// Between [`MIN_PRIORITY`] and [`MAX_PRIORITY`] (checked by [`check_priority`] at the edge).
    pub priority: i32,
    /// The desired configuration (size limits checked at the edge).
    pub document: Document,
}

/// A partial update of a profile; fields left `None` keep their value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfilePatch {
    /// New description.
    pub description: Option<String>,
    /// New target (the new group must exist).
    pub target: Option<ProfileTarget>,
    /// New priority.
    pub priority: Option<i32>,
    /// An RFC 7396 merge patch of the document.
    pub document: Option<Value>,
    /// The version the caller expects (`If-Match`); `None` applies unconditionally.
    pub expected_version: Option<u64>,
}

impl ProfilePatch {
    /// `profile` with this patch applied (version and timestamps untouched).
    pub fn apply(&self, profile: &ConfigProfile) -> ConfigProfile {
        let mut new = profile.clone();
        if let Some(d) = &self.description {
            new.description.clone_from(d);
        }
        if let Some(t) = &self.target {
            new.target = t.clone();
        }
        if let Some(p) = self.priority {
            new.priority = p;
        }
        if let Some(patch) = &self.document {
            let mut doc = Value::Object(new.document);
            crate::twin::merge_patch(&mut doc, patch);
            new.document = match doc {
                Value::Object(m) => m,
                _ => Document::new(),
            };
        }
        new
    }
}

/// Checks a priority's range.
///
/// # Errors
/// [`InvalidInput`] outside [`MIN_PRIORITY`]..=[`MAX_PRIORITY`].
pub fn check_priority(priority: i64) -> Result<i32, InvalidInput> {
    if (i64::from(MIN_PRIORITY)..=i64::from(MAX_PRIORITY)).contains(&priority) {
        #[allow(clippy::cast_possible_truncation)]
        return Ok(priority as i32);
    }
    Err(InvalidInput::new("priority", format!("must be between {MIN_PRIORITY} and {MAX_PRIORITY}")))
}

/// The merge order of profiles: fleet before groups, then priority, then group name, then
/// profile name.
pub fn merge_order(a: &ConfigProfile, b: &ConfigProfile) -> Ordering {
    let rank = |p: &ConfigProfile| match &p.target {
        ProfileTarget::Fleet => (0, p.priority, None),
        ProfileTarget::Group(g) => (1, p.priority, Some(g.clone())),
    };
    rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name))
}

/// The layers of the profiles that apply to a device (the caller has chosen them: every fleet
/// profile and the profiles of the groups the device is in), in merge order, lowest first. The
/// device's own layer goes on top of them.
pub fn profile_layers(mut applicable: Vec<ConfigProfile>) -> Vec<Layer> {
    applicable.sort_by(merge_order);
    applicable.iter().map(ConfigProfile::layer).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::twin::effective_desired;

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

    fn group(name: &str) -> ProfileTarget {
        ProfileTarget::Group(GroupName::new(name).unwrap())
    }

    #[test]
    fn fleet_then_groups_by_priority_then_device() {
        let layers = profile_layers(vec![
            profile("hot", group("b-hot"), 20, json!({"fan": "max", "led": "red"})),
            profile(
                "base",
                ProfileTarget::Fleet,
                0,
                json!({"fan": "auto", "interval": 60, "led": "green"}),
            ),
            profile("cold", group("a-cold"), 10, json!({"fan": "low", "heater": true})),
        ]);
        let names: Vec<String> = layers.iter().map(|l| l.source.to_string()).collect();
        assert_eq!(names, ["profile:base", "profile:cold", "profile:hot"]);
        let mut all = layers;
        let Value::Object(device) = json!({"led": "blue", "heater": null}) else { unreachable!() };
        all.push(Layer { source: LayerSource::Device, document: device });
        let eff = effective_desired(&all);
        assert_eq!(
            Value::Object(eff.document),
            json!({"fan": "max", "interval": 60, "led": "blue"})
        );
        assert_eq!(eff.sources["/fan"].to_string(), "profile:hot");
        assert_eq!(eff.sources["/interval"].to_string(), "profile:base");
        assert_eq!(eff.sources["/led"], LayerSource::Device);
    }

    #[test]
    fn equal_priorities_order_by_group_then_name() {
        let layers = profile_layers(vec![
            profile("z", group("a"), 5, json!({})),
            profile("b", group("b"), 5, json!({})),
            profile("a", group("b"), 5, json!({})),
        ]);
        let names: Vec<String> = layers.iter().map(|l| l.source.to_string()).collect();
        assert_eq!(names, ["profile:z", "profile:a", "profile:b"]);
    }

    #[test]
    fn patch_merges_the_document() {
        let p = profile("p", ProfileTarget::Fleet, 0, json!({"a": 1, "b": {"c": 2}}));
        let patch = ProfilePatch {
            document: Some(json!({"a": null, "b": {"d": 3}})),
            priority: Some(7),
            ..ProfilePatch::default()
        };
        let new = patch.apply(&p);
        assert_eq!(Value::Object(new.document), json!({"b": {"c": 2, "d": 3}}));
        assert_eq!(new.priority, 7);
    }

    #[test]
    fn priority_and_name_limits() {
        assert!(check_priority(1_000_001).is_err());
        assert_eq!(check_priority(-5).unwrap(), -5);
        assert!(ProfileName::new("a b").is_err());
        assert!(ProfileName::new("").is_err());
    }
}

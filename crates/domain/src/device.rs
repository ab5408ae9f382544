//! Devices in the registry: identity, descriptive data and the lifecycle.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::{InvalidInput, Timestamp};

/// Longest device id, in bytes (ids are ASCII).
pub const MAX_DEVICE_ID_LEN: usize = 128;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE_CHARS: usize = 256;
/// Most tags on one device.
pub const MAX_TAGS: usize = 64;

/// A device's identifier: 1–128 characters of `[A-Za-z0-9._:-]`.
///
/// It doubles as the MQTT client id, so it is restricted to characters that are safe in topics,
/// URLs and file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates and wraps a device id.
    ///
    /// # Errors
    /// [`InvalidInput`] when the id is empty, longer than 128 characters or holds other characters
    /// than `[A-Za-z0-9._:-]`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidInput::new("device id", "must not be empty"));
        }
        if id.len() > MAX_DEVICE_ID_LEN {
            return Err(InvalidInput::new(
                "device id",
                format!("must be at most {MAX_DEVICE_ID_LEN} characters, got {}", id.len()),
            ));
        }
        if let Some(c) = id.chars().find(|c| !is_id_char(*c)) {
            return Err(InvalidInput::new(
                "device id",
                format!("{c:?} is not allowed; use letters, digits and . _ : -"),
            ));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A human-friendly device name: up to 256 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DisplayName(String);

impl DisplayName {
    /// Validates and wraps a display name. The empty name is allowed (and means "none").
    ///
    /// # Errors
    /// [`InvalidInput`] when the name is too long or holds control characters.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(InvalidInput::new(
                "name",
                format!("must be at most {MAX_DISPLAY_NAME_CHARS} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidInput::new("name", "must not contain control characters"));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag key: 1–64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagKey(String);

impl TagKey {
    /// Validates and wraps a tag key.
    ///
    /// # Errors
    /// [`InvalidInput`] when the key is empty, too long or holds other characters.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidInput> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_TAG_KEY_LEN {
            return Err(InvalidInput::new(
                "tag key",
                format!("{key:?} must be 1 to {MAX_TAG_KEY_LEN} characters"),
            ));
        }
        if let Some(c) =
            key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidInput::new(
                "tag key",
                format!("{c:?} in {key:?} is not allowed; use letters, digits and . _ -"),
            ));
        }
        Ok(Self(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Key/value labels on a device, at most 64, values up to 256 characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags(BTreeMap<TagKey, String>);

impl Tags {
    /// Validates a set of tags.
    ///
    /// # Errors
    /// [`InvalidInput`] for an invalid key, an over-long value or too many tags.
    pub fn new(raw: impl IntoIterator<Item = (String, String)>) -> Result<Self, InvalidInput> {
        let mut map = BTreeMap::new();
        for (k, v) in raw {
            let key = TagKey::new(k)?;
            if v.chars().count() > MAX_TAG_VALUE_CHARS {
                return Err(InvalidInput::new(
                    "tag value",
                    format!("value of {key} must be at most {MAX_TAG_VALUE_CHARS} characters"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(InvalidInput::new(
                    "tag value",
                    format!("value of {key} holds control characters"),
                ));
            }
            map.insert(key, v);
            if map.len() > MAX_TAGS {
                return Err(InvalidInput::new(
                    "tags",
                    format!("at most {MAX_TAGS} tags per device"),
                ));
            }
        }
        Ok(Self(map))
    }

    /// The value of one tag.
    pub fn get(&self, key: &TagKey) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The tags in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&TagKey, &str)> {
        self.0.iter().map(|(k, v)| (k, v.as_str()))
    }

    /// How many tags there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tags as a JSON object (for storage and audit summaries).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0.iter().map(|(k, v)| (k.0.clone(), v.clone().into())).collect(),
        )
    }

    /// Reads tags back from the JSON object [`Tags::to_json`] wrote.
    ///
    /// # Errors
    /// [`InvalidInput`] when the value is not an object of strings or breaks a tag rule.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, InvalidInput> {
        let obj =
            value.as_object().ok_or_else(|| InvalidInput::new("tags", "must be an object"))?;
        let mut pairs = Vec::with_capacity(obj.len());
        for (k, v) in obj {
            let v = v.as_str().ok_or_else(|| {
                InvalidInput::new("tag value", format!("value of {k} must be a string"))
            })?;
            pairs.push((k.clone(), v.to_owned()));
        }
        Self::new(pairs)
    }
}

/// Free-form JSON attributes of a device: always an object, size-limited by configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes(serde_json::Value);

impl Default for Attributes {
    fn default() -> Self {
        Self(serde_json::Value::Object(serde_json::Map::new()))
    }
}

impl Attributes {
    /// Validates attributes: a JSON object whose compact serialization fits in `max_bytes`.
    ///
    /// # Errors
    /// [`InvalidInput`] when the value is not an object or is too large.
    pub fn new(value: serde_json::Value, max_bytes: usize) -> Result<Self, InvalidInput> {
        if !value.is_object() {
            return Err(InvalidInput::new("attributes", "must be a JSON object"));
        }
        let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > max_bytes {
            return Err(InvalidInput::new(
                "attributes",
                format!("are {size} bytes serialized; the limit is {max_bytes}"),
            ));
        }
        Ok(Self(value))
    }

    /// Wraps attributes read back from storage, which were validated when written.
    pub fn from_stored(value: serde_json::Value) -> Self {
        if value.is_object() { Self(value) } else { Self::default() }
    }

    /// The attributes as JSON.
    pub fn as_json(&self) -> &serde_json::Value {
        &self.0
    }
}

/// Where a device is in its life.
///
/// ```text
/// registered ──▶ active ⇄ suspended
///     │            │         │
///     └────────────┴─────────┴──▶ decommissioned ──▶ retired (terminal)
/// ```
/// `decommissioned` is a soft state: the device, its history and audit trail are kept; it can no
/// longer connect. `retired` is terminal: nothing changes it any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LifecycleState {
    /// Known to the registry but never activated.
    Registered,
    /// In service: may connect and receive work.
    Active,
    /// Temporarily barred from connecting; can be reactivated.
    Suspended,
    /// Taken out of service; history kept.
    Decommissioned,
    /// Terminal: kept for the record only.
    Retired,
}

/// An attempt to move a device between two states that the lifecycle does not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a device cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The current state.
    pub from: LifecycleState,
    /// The requested state.
    pub to: LifecycleState,
}

impl LifecycleState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 5] =
        [Self::Registered, Self::Active, Self::Suspended, Self::Decommissioned, Self::Retired];

    /// The state's name as used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Decommissioned => "decommissioned",
            Self::Retired => "retired",
        }
    }

    /// The states a device may move to from `self`.
    pub fn successors(self) -> &'static [Self] {
        match self {
            Self::Registered => &[Self::Active, Self::Decommissioned],
            Self::Active => &[Self::Suspended, Self::Decommissioned],
            Self::Suspended => &[Self::Active, Self::Decommissioned],
            Self::Decommissioned => &[Self::Retired],
            Self::Retired => &[],
        }
    }

    /// Checks that `self → to` is a legal move. Staying in the same state is always legal (a no-op).
    ///
    /// # Errors
    /// [`IllegalTransition`] when the lifecycle does not allow the move.
    pub fn check_transition(self, to: Self) -> Result<(), IllegalTransition> {
        if self == to || self.successors().contains(&to) {
            Ok(())
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    /// Whether a new device may start in this state (import and create).
    pub fn is_initial(self) -> bool {
        matches!(self, Self::Registered | Self::Active)
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LifecycleState {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "state",
                format!(
                    "{s:?} is not a lifecycle state; expected one of registered, active, suspended, decommissioned, retired"
                ),
            )
        })
    }
}

/// A device as stored in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device's identifier.
    pub id: DeviceId,
    /// Display name (may be empty).
    pub name: DisplayName,
    /// Labels.
    pub tags: Tags,
    /// Free-form attributes.
    pub attributes: Attributes,
    /// Lifecycle state.
    pub state: LifecycleState,
    /// When the device was created.
    pub created_at: Timestamp,
    /// When the device last changed.
    pub updated_at: Timestamp,
    /// Incremented on every change, starting at 1: the basis of `ETag`/`If-Match`.
    pub version: u64,
    /// The device this one replaced (see [`crate::replacement`]); set once, never cleared. Only
    /// an id: the predecessor may have been deleted since.
    pub replaces: Option<DeviceId>,
    /// The device that replaced this one; set when this one was retired by a replacement.
    pub replaced_by: Option<DeviceId>,
}

impl Device {
    /// A compact JSON summary for audit records. The replacement links appear only when set, so
    /// records of devices without any keep their shape.
    pub fn audit_summary(&self) -> serde_json::Value {
        let mut summary = serde_json::json!({
            "id": self.id.as_str(),
            "name": self.name.as_str(),
            "tags": self.tags.to_json(),
            "attributes": self.attributes.as_json(),
            "state": self.state.as_str(),
            "version": self.version,
        });
        if let Some(obj) = summary.as_object_mut() {
            if let Some(p) = &self.replaces {
                obj.insert("replaces".to_owned(), p.as_str().into());
            }
            if let Some(s) = &self.replaced_by {
                obj.insert("replaced_by".to_owned(), s.as_str().into());
            }
        }
        summary
    }
}

/// What it takes to create a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The new device's id.
    pub id: DeviceId,
    /// Display name.
    pub name: DisplayName,
    /// Labels.
    pub tags: Tags,
    /// Attributes.
    pub attributes: Attributes,
    /// Initial state: `registered` or `active` (see [`LifecycleState::is_initial`]).
    pub state: LifecycleState,
}

/// A partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicePatch {
    /// New display name.
    pub name: Option<DisplayName>,
    /// New tags (replaces all tags).
    pub tags: Option<Tags>,
    /// New attributes (replaces all attributes).
    pub attributes: Option<Attributes>,
    /// New lifecycle state, checked with [`LifecycleState::check_transition`].
    pub state: Option<LifecycleState>,
}

impl DevicePatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.tags.is_none()
            && self.attributes.is_none()
            && self.state.is_none()
    }

    /// Applies the patch to a device, checking the lifecycle. Does not touch version or timestamps.
    ///
    /// # Errors
    /// [`IllegalTransition`] when the patch asks for a state the device cannot reach.
    pub fn apply(&self, device: &mut Device) -> Result<(), IllegalTransition> {
        if let Some(state) = self.state {
            device.state.check_transition(state)?;
            device.state = state;
        }
        if let Some(name) = &self.name {
            device.name = name.clone();
        }
        if let Some(tags) = &self.tags {
            device.tags = tags.clone();
        }
        if let Some(attributes) = &self.attributes {
            device.attributes = attributes.clone();
        }
        Ok(())
    }
}

/// One line of a bulk import: creates the device when it is missing, otherwise applies the fields
/// that are present as a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line number in the uploaded file, for the report.
    pub line: u64,
    /// The device to create or update.
    pub id: DeviceId,
    /// Fields to set; on creation, absent fields take their defaults.
    pub patch: DevicePatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["a", "sensor-01", "site:berlin.floor_2", &"x".repeat(128)] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ü", "a#", &"x".repeat(129)] {
            assert!(DeviceId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifecycle() {
        use LifecycleState::*;
        let legal = [
            (Registered, Active),
            (Registered, Decommissioned),
            (Active, Suspended),
            (Suspended, Active),
            (Active, Decommissioned),
            (Suspended, Decommissioned),
            (Decommissioned, Retired),
        ];
        for from in LifecycleState::ALL {
            for to in LifecycleState::ALL {
                let ok = from == to || legal.contains(&(from, to));
                assert_eq!(from.check_transition(to).is_ok(), ok, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn attributes_limit() {
        assert!(Attributes::new(serde_json::json!({"a": 1}), 100).is_ok());
        assert!(Attributes::new(serde_json::json!([1]), 100).is_err());
        assert!(Attributes::new(serde_json::json!({"a": "x".repeat(100)}), 100).is_err());
    }

    #[test]
    fn tags() {
        assert!(Tags::new([("site".into(), "berlin".into())]).is_ok());
        assert!(Tags::new([("bad key".into(), "x".into())]).is_err());
        let many = (0..=MAX_TAGS).map(|i| (format!("k{i}"), String::new()));
        assert!(Tags::new(many).is_err());
    }
}

//! Device groups: static (explicit members) and dynamic (a saved filter).

use std::fmt;

use crate::{Filter, InvalidInput, Timestamp};

/// A group's name: 1–64 characters of `[A-Za-z0-9._-]`, unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    /// Validates and wraps a group name.
    ///
    /// # Errors
    /// [`InvalidInput`] when the name is empty, too long or holds other characters.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        if name.is_empty() || name.len() > 64 {
            return Err(InvalidInput::new("group name", "must be 1 to 64 characters"));
        }
        if let Some(c) =
            name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidInput::new(
                "group name",
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

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a group decides its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupKind {
    /// Members are added and removed explicitly.
    Static,
    /// Members are the devices the filter matches, evaluated at read time.
    Dynamic(Filter),
}

/// A device group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Unique name.
    pub name: GroupName,
    /// Free text.
    pub description: String,
    /// Static or dynamic.
    pub kind: GroupKind,
    /// When the group was created.
    pub created_at: Timestamp,
    /// When the group last changed (not counting static membership changes).
    pub updated_at: Timestamp,
    /// Incremented on every change of the group itself.
    pub version: u64,
}

impl Group {
    /// A compact JSON summary for audit records.
    pub fn audit_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name.as_str(),
            "description": self.description,
            "kind": match &self.kind { GroupKind::Static => "static", GroupKind::Dynamic(_) => "dynamic" },
            "filter": match &self.kind { GroupKind::Static => None, GroupKind::Dynamic(f) => Some(f.to_string()) },
            "version": self.version,
        })
    }
}

/// What it takes to create a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    /// Unique name.
    pub name: GroupName,
    /// Free text (at most 1024 characters, checked at the edge).
    pub description: String,
    /// Static or dynamic.
    pub kind: GroupKind,
}

/// A partial update of a group. A group's kind never changes; a dynamic group's filter may.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupPatch {
    /// New description.
    pub description: Option<String>,
    /// New filter (dynamic groups only).
    pub filter: Option<Filter>,
}

//! Device twins: what operators want of a device (`desired`), what the device says it has
//! (`reported`) and service-only metadata (`tags`), each a JSON object with a version and
//! per-property metadata.
//!
//! - [`merge_patch`] is RFC 7396 JSON merge patch; [`TwinSection::apply_patch`] applies one to a
//!   section, checks the [`TwinLimits`] on the result and maintains the version and metadata.
//! - The desired document a device sees is computed from ordered [`Layer`]s by
//!   [`effective_desired`] (configuration profiles of the fleet and of groups, see
//!   [`crate::profile`], then the device's own layer), and written with
//!   [`TwinSection::set_document`].
//! - [`delta`] is the desired properties that differ from the reported ones and [`convergence`]
//!   says whether the device is `in_sync`, `pending` or `drifted`.
//!
//! Metadata is a flat map from the JSON Pointer of each leaf property (`/led/color`) to the time
//! and section version that last set it. A leaf is any value that is not a non-empty object.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::{DeviceId, Timestamp};

/// A JSON object document.
pub type Document = Map<String, Value>;

/// Size and depth limits of one twin section, checked on the result of every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinLimits {
    /// Largest serialized (compact JSON) document of a section, in bytes (default 32 KiB).
    pub max_section_bytes: usize,
    /// Deepest nesting of a document: `{"a":1}` is 1 deep, `{"a":{"b":1}}` 2 (default 8).
    pub max_depth: usize,
}

impl Default for TwinLimits {
    fn default() -> Self {
        Self { max_section_bytes: 32 * 1024, max_depth: 8 }
    }
}

/// The limits and retention of twins, as the server configures them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinPolicy {
    /// Size limits of each section.
    pub limits: TwinLimits,
    /// How many history entries are kept per device (the newest; default 100; at least 1).
    pub history_per_device: u32,
}

impl Default for TwinPolicy {
    fn default() -> Self {
        Self { limits: TwinLimits::default(), history_per_device: 100 }
    }
}

/// The sections of a twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectionName {
    /// The effective desired document the device sees.
    Desired,
    /// What the device reported.
    Reported,
    /// Service-only metadata.
    Tags,
}

impl SectionName {
    /// `desired`, `reported` or `tags`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desired => "desired",
            Self::Reported => "reported",
            Self::Tags => "tags",
        }
    }

    /// Parses [`SectionName::as_str`]'s output.
    ///
    /// # Errors
    /// [`crate::InvalidInput`] for anything else.
    pub fn parse(s: &str) -> Result<Self, crate::InvalidInput> {
        match s {
            "desired" => Ok(Self::Desired),
            "reported" => Ok(Self::Reported),
            "tags" => Ok(Self::Tags),
            other => Err(crate::InvalidInput::new(
                "twin section",
                format!("{other:?} is not one of desired, reported, tags"),
            )),
        }
    }
}

impl fmt::Display for SectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a twin change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    /// A patch that is not a JSON object.
    #[error("the {section} patch must be a JSON object")]
    NotAnObject {
        /// `desired`, `reported`, `tags`.
        section: &'static str,
    },
    /// The section would be larger than `max_section_bytes`.
    #[error("the {section} section would be {size} bytes, more than max_section_bytes ({limit})")]
    TooLarge {
        /// `desired`, `reported`, `tags`.
        section: &'static str,
        /// Its size after the change, compact JSON bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The section would nest deeper than `max_depth`.
    #[error("the {section} section would nest {depth} levels deep, more than max_depth ({limit})")]
    TooDeep {
        /// `desired`, `reported`, `tags`.
        section: &'static str,
        /// Its depth after the change.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// The caller expected other versions of the operator-owned sections.
    #[error("twin ETag mismatch: expected {expected}, current is {current}")]
    EtagMismatch {
        /// What the caller expected.
        expected: TwinEtag,
        /// What is stored.
        current: TwinEtag,
    },
}

/// The versions of a twin's operator-owned sections (effective desired, tags): what `If-Match`
/// compares, rendered `"<desired>.<tags>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinEtag {
    /// The effective desired version.
    pub desired: u64,
    /// The tags version.
    pub tags: u64,
}

impl TwinEtag {
    /// Parses `d.t` (quotes around it are accepted).
    ///
    /// # Errors
    /// [`crate::InvalidInput`] for anything else.
    pub fn parse(s: &str) -> Result<Self, crate::InvalidInput> {
        let bad = || crate::InvalidInput::new("ETag", format!("{s:?} is not \"<desired>.<tags>\""));
        let t = s.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        let t = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(t);
        let (d, g) = t.split_once('.').ok_or_else(bad)?;
        Ok(Self { desired: d.parse().map_err(|_| bad())?, tags: g.parse().map_err(|_| bad())? })
    }
}

impl fmt::Display for TwinEtag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.desired, self.tags)
    }
}

/// When and at which section version a leaf property was last set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyMeta {
    /// When it was set.
    pub updated_at: Timestamp,
    /// The section version that set it.
    pub version: u64,
}

/// One section of a twin: a document, its version and per-leaf metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TwinSection {
    /// The document.
    pub document: Document,
    /// Starts at 0 and grows by one with every change of the document.
    pub version: u64,
    /// JSON Pointer of each leaf → when and at which version it was last set.
    pub metadata: BTreeMap<String, PropertyMeta>,
}

impl TwinSection {
    /// Applies the merge patch `patch` to this section at `at`, checking `limits` on the result.
    /// Returns the change that was made as a merge patch (what history records), or `None` when
    /// the patch changes nothing (the version stays).
    ///
    /// # Errors
    /// [`TwinError::NotAnObject`], [`TwinError::TooLarge`], [`TwinError::TooDeep`]; the section
    /// is unchanged then.
    pub fn apply_patch(
        &mut self,
        section: SectionName,
        patch: &Value,
        at: Timestamp,
        limits: &TwinLimits,
    ) -> Result<Option<Value>, TwinError> {
        if !patch.is_object() {
            return Err(TwinError::NotAnObject { section: section.as_str() });
        }
        let mut doc = Value::Object(self.document.clone());
        merge_patch(&mut doc, patch);
        let Value::Object(doc) = doc else {
            return Err(TwinError::NotAnObject { section: section.as_str() });
        };
        check_limits(section, &doc, limits)?;
        Ok(self.set_document(doc, at))
    }

    /// Replaces the document with `doc` at `at`: leaves that are new or changed get metadata of
    /// the next version, removed ones lose theirs. Returns the change as a merge patch, or `None`
    /// when `doc` equals the current document (nothing changes).
    pub fn set_document(&mut self, doc: Document, at: Timestamp) -> Option<Value> {
        if doc == self.document {
            return None;
        }
        let version = self.version + 1;
        let old = leaves(&self.document);
        let new = leaves(&doc);
        self.metadata.retain(|p, _| new.contains_key(p));
        for (pointer, value) in &new {
            if old.get(pointer) != Some(value) || !self.metadata.contains_key(pointer) {
                self.metadata.insert(pointer.clone(), PropertyMeta { updated_at: at, version });
            }
        }
        let patch = diff(&self.document, &doc);
        self.document = doc;
        self.version = version;
        Some(Value::Object(patch))
    }

    /// The section as stored by backends: `{"document", "version", "metadata"}` with metadata
    /// times in milliseconds.
    pub fn to_stored_json(&self) -> Value {
        let metadata: Map<String, Value> = self
            .metadata
            .iter()
            .map(|(p, m)| {
                (p.clone(), serde_json::json!({ "at": m.updated_at.millis(), "v": m.version }))
            })
            .collect();
        serde_json::json!({
            "document": self.document,
            "version": self.version,
            "metadata": metadata,
        })
    }

    /// Reads [`TwinSection::to_stored_json`]'s output.
    ///
    /// # Errors
    /// A description of what is malformed.
    pub fn from_stored_json(v: &Value) -> Result<Self, String> {
        let document = v
            .get("document")
            .and_then(Value::as_object)
            .cloned()
            .ok_or("twin section without a document object")?;
        let version =
            v.get("version").and_then(Value::as_u64).ok_or("twin section without a version")?;
        let mut metadata = BTreeMap::new();
        if let Some(m) = v.get("metadata").and_then(Value::as_object) {
            for (p, meta) in m {
                let at = meta.get("at").and_then(Value::as_i64).ok_or("metadata without at")?;
                let v = meta.get("v").and_then(Value::as_u64).ok_or("metadata without v")?;
                metadata.insert(
                    p.clone(),
                    PropertyMeta { updated_at: Timestamp::from_millis(at), version: v },
                );
            }
        }
        Ok(Self { document, version, metadata })
    }
}

/// A device's twin. `device_desired` is the device's own desired layer (what operator patches
/// write); `desired` is the effective desired document the device sees, computed from the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTwin {
    /// The device.
    pub device_id: DeviceId,
    /// The effective desired document; its version is the desired version.
    pub desired: TwinSection,
    /// The device's own desired layer.
    pub device_desired: TwinSection,
    /// What the device reported.
    pub reported: TwinSection,
    /// Service-only metadata, never sent to the device.
    pub tags: TwinSection,
}

impl DeviceTwin {
    /// The twin of a device that has none yet: every section empty at version 0.
    pub fn empty(device_id: DeviceId) -> Self {
        Self {
            device_id,
            desired: TwinSection::default(),
            device_desired: TwinSection::default(),
            reported: TwinSection::default(),
            tags: TwinSection::default(),
        }
    }

    /// The operator-owned versions.
    pub fn etag(&self) -> TwinEtag {
        TwinEtag { desired: self.desired.version, tags: self.tags.version }
    }

    /// The desired properties that differ from the reported ones.
    pub fn delta(&self) -> Document {
        delta(&self.desired.document, &self.reported.document)
    }

    /// Whether the device has converged, see [`convergence`].
    pub fn convergence(&self) -> Convergence {
        convergence(&self.desired, &self.reported)
    }
}

/// Where a layer of desired configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSource {
    /// The device's own layer (operator patches of its twin).
    Device,
    /// A configuration profile (see [`crate::profile`]).
    Profile {
        /// The profile.
        name: crate::profile::ProfileName,
        /// What it is attached to.
        target: crate::profile::ProfileTarget,
        /// Its priority.
        priority: i32,
    },
    /// Anything else, by name.
    Named(String),
}

impl fmt::Display for LayerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device => f.write_str("device"),
            Self::Profile { name, .. } => write!(f, "profile:{name}"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

/// One layer of desired configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Where it comes from.
    pub source: LayerSource,
    /// Its document, merged like a merge patch over the layers before it.
    pub document: Document,
}

/// The effective desired document and which layer set each leaf.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    /// The merged document.
    pub document: Document,
    /// JSON Pointer of each leaf → the layer that set it.
    pub sources: BTreeMap<String, LayerSource>,
}

/// Merges `layers` in order (lowest priority first, the device's own layer last): each layer is
/// applied as a merge patch over the ones before it, so a later layer wins and a `null` in it
/// removes what earlier layers set.
pub fn effective_desired(layers: &[Layer]) -> Effective {
    let mut doc = Value::Object(Map::new());
    let mut sources: BTreeMap<String, LayerSource> = BTreeMap::new();
    for layer in layers {
        let patch = Value::Object(layer.document.clone());
        merge_patch(&mut doc, &patch);
        let Value::Object(current) = &doc else { continue };
        let now = leaves(current);
        sources.retain(|p, _| now.contains_key(p));
        for pointer in leaves(&layer.document).into_keys() {
            if now.contains_key(&pointer) {
                sources.insert(pointer, layer.source.clone());
            }
        }
    }
    let Value::Object(document) = doc else { return Effective::default() };
    Effective { document, sources }
}

/// RFC 7396 JSON merge patch: applies `patch` to `target` in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            let slot = map.entry(key.clone()).or_insert(Value::Null);
            merge_patch(slot, value);
        }
    }
}

/// The merge patch that turns `old` into `new`.
pub fn diff(old: &Document, new: &Document) -> Document {
    let mut patch = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(o), v) if o == v => {}
            (Some(Value::Object(o)), Value::Object(n)) => {
                patch.insert(key.clone(), Value::Object(diff(o, n)));
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    patch
}

/// The desired leaves whose value differs from the reported one: nested objects are compared
/// per leaf; a desired object against a reported non-object is included whole.
pub fn delta(desired: &Document, reported: &Document) -> Document {
    let mut out = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(w), Some(Value::Object(r))) => {
                let sub = delta(w, r);
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (w, Some(r)) if w == r => {}
            (w, _) => {
                out.insert(key.clone(), w.clone());
            }
        }
    }
    out
}

/// The leaves of `doc` by JSON Pointer. A leaf is any value that is not a non-empty object.
pub fn leaves(doc: &Document) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    collect_leaves(doc, &mut String::new(), &mut out);
    out
}

fn collect_leaves(doc: &Document, prefix: &mut String, out: &mut BTreeMap<String, Value>) {
    for (key, value) in doc {
        let len = prefix.len();
        prefix.push('/');
        prefix.push_str(&key.replace('~', "~0").replace('/', "~1"));
        match value {
            Value::Object(inner) if !inner.is_empty() => collect_leaves(inner, prefix, out),
            other => {
                out.insert(prefix.clone(), other.clone());
            }
        }
        prefix.truncate(len);
    }
}

/// How deep `doc` nests: an object of scalars is 1 deep; every object or array inside adds one.
pub fn depth(doc: &Document) -> usize {
    fn value_depth(v: &Value) -> usize {
        match v {
            Value::Object(m) => 1 + m.values().map(value_depth).max().unwrap_or(0),
            Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + doc.values().map(value_depth).max().unwrap_or(0)
}

/// Checks a section's document against `limits`.
///
/// # Errors
/// [`TwinError::TooLarge`], [`TwinError::TooDeep`].
pub fn check_limits(
    section: SectionName,
    doc: &Document,
    limits: &TwinLimits,
) -> Result<(), TwinError> {
    let d = depth(doc);
    if d > limits.max_depth {
        return Err(TwinError::TooDeep {
            section: section.as_str(),
            depth: d,
            limit: limits.max_depth,
        });
    }
    let size = Value::Object(doc.clone()).to_string().len();
    if size > limits.max_section_bytes {
        return Err(TwinError::TooLarge {
            section: section.as_str(),
            size,
            limit: limits.max_section_bytes,
        });
    }
    Ok(())
}

/// Whether a device has converged to its desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convergence {
    /// The delta is empty.
    InSync,
    /// The device has not reported the desired values yet; `since` is when the oldest of the
    /// differing desired properties was set.
    Pending {
        /// The oldest desired `updated_at` among the delta's properties.
        since: Timestamp,
    },
    /// The device reported another value after the desired one was set.
    Drifted {
        /// The latest report that contradicts the desired state.
        since: Timestamp,
    },
}

impl Convergence {
    /// `in_sync`, `pending` or `drifted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InSync => "in_sync",
            Self::Pending { .. } => "pending",
            Self::Drifted { .. } => "drifted",
        }
    }

    /// When the current state began (none for `in_sync`).
    pub fn since(&self) -> Option<Timestamp> {
        match self {
            Self::InSync => None,
            Self::Pending { since } | Self::Drifted { since } => Some(*since),
        }
    }
}

/// `in_sync` when the delta is empty; `drifted` when some property of the delta was reported
/// after its desired value was set (the reported metadata of the property, of its nearest
/// reported ancestor or of a reported descendant is newer than the desired metadata); `pending`
/// otherwise, since the oldest desired `updated_at` among the delta's properties.
pub fn convergence(desired: &TwinSection, reported: &TwinSection) -> Convergence {
    let delta = delta(&desired.document, &reported.document);
    if delta.is_empty() {
        return Convergence::InSync;
    }
    let mut oldest: Option<Timestamp> = None;
    let mut drift: Option<Timestamp> = None;
    for pointer in leaves(&delta).into_keys() {
        let Some(want) = desired.metadata.get(&pointer) else { continue };
        oldest = Some(oldest.map_or(want.updated_at, |o| o.min(want.updated_at)));
        if let Some(seen) = reported_at(&reported.metadata, &pointer)
            && seen > want.updated_at
        {
            drift = Some(drift.map_or(seen, |d| d.max(seen)));
        }
    }
    match (drift, oldest) {
        (Some(since), _) => Convergence::Drifted { since },
        (None, Some(since)) => Convergence::Pending { since },
        // Metadata missing for every delta leaf (not written by this module): treat as pending
        // from the section's oldest property.
        (None, None) => Convergence::Pending {
            since: desired
                .metadata
                .values()
                .map(|m| m.updated_at)
                .min()
                .unwrap_or(Timestamp::from_millis(0)),
        },
    }
}

/// When the device last reported `pointer`: the newest of the property itself, its nearest
/// reported ancestor and its reported descendants.
fn reported_at(meta: &BTreeMap<String, PropertyMeta>, pointer: &str) -> Option<Timestamp> {
    let mut best: Option<Timestamp> = None;
    let below = format!("{pointer}/");
    for (p, m) in meta.range(pointer.to_owned()..) {
        if p == pointer || p.starts_with(&below) {
            best = Some(best.map_or(m.updated_at, |b| b.max(m.updated_at)));
        } else {
            break;
        }
    }
    if best.is_some() {
        return best;
    }
    let mut prefix = pointer;
    while let Some(i) = prefix.rfind('/') {
        prefix = &prefix[..i];
        if prefix.is_empty() {
            break;
        }
        if let Some(m) = meta.get(prefix) {
            return Some(m.updated_at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Document {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn merge_patch_follows_rfc7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (json!({"a":{"b":"c"}}), json!({"a":{"b":"d","c":null}}), json!({"a":{"b":"d"}})),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn patch_bumps_version_and_maintains_metadata() {
        let mut s = TwinSection::default();
        let limits = TwinLimits::default();
        let p = s
            .apply_patch(
                SectionName::Desired,
                &json!({"led":{"color":"red","on":true}}),
                t(1),
                &limits,
            )
            .unwrap();
        assert_eq!(p, Some(json!({"led":{"color":"red","on":true}})));
        assert_eq!(s.version, 1);
        assert_eq!(s.metadata["/led/color"], PropertyMeta { updated_at: t(1), version: 1 });
        assert_eq!(s.metadata["/led/on"].version, 1);

        let p = s
            .apply_patch(
                SectionName::Desired,
                &json!({"led":{"color":"blue","on":null}}),
                t(2),
                &limits,
            )
            .unwrap();
        assert_eq!(p, Some(json!({"led":{"color":"blue","on":null}})));
        assert_eq!(s.version, 2);
        assert_eq!(s.metadata["/led/color"], PropertyMeta { updated_at: t(2), version: 2 });
        assert!(!s.metadata.contains_key("/led/on"));

        // A no-op patch keeps the version and the metadata.
        let before = s.clone();
        assert_eq!(
            s.apply_patch(SectionName::Desired, &json!({"led":{"color":"blue"}}), t(3), &limits),
            Ok(None)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn patches_must_be_objects_and_respect_limits() {
        let mut s = TwinSection::default();
        let limits = TwinLimits { max_section_bytes: 20, max_depth: 2 };
        assert_eq!(
            s.apply_patch(SectionName::Tags, &json!([1]), t(1), &limits),
            Err(TwinError::NotAnObject { section: "tags" })
        );
        assert!(matches!(
            s.apply_patch(SectionName::Desired, &json!({"a":{"b":{"c":1}}}), t(1), &limits),
            Err(TwinError::TooDeep { depth: 3, limit: 2, .. })
        ));
        let err = s
            .apply_patch(SectionName::Reported, &json!({"a":"0123456789012345678"}), t(1), &limits)
            .unwrap_err();
        assert!(err.to_string().contains("max_section_bytes (20)"), "{err}");
        assert_eq!(s, TwinSection::default());
    }

    #[test]
    fn delta_compares_leaves() {
        let d = obj(json!({"a":1,"b":{"c":2,"d":3},"e":{"f":1},"g":"x"}));
        let r = obj(json!({"a":1,"b":{"c":2,"d":4},"e":5}));
        assert_eq!(delta(&d, &r), obj(json!({"b":{"d":3},"e":{"f":1},"g":"x"})));
        assert!(delta(&d, &d).is_empty());
    }

    #[test]
    fn convergence_states() {
        let limits = TwinLimits::default();
        let mut desired = TwinSection::default();
        let mut reported = TwinSection::default();
        desired.apply_patch(SectionName::Desired, &json!({"a":1,"b":2}), t(10), &limits).unwrap();
        assert_eq!(convergence(&desired, &reported), Convergence::Pending { since: t(10) });
        reported.apply_patch(SectionName::Reported, &json!({"a":1,"b":2}), t(20), &limits).unwrap();
        assert_eq!(convergence(&desired, &reported), Convergence::InSync);
        // A new desired value the device has not reported yet.
        desired.apply_patch(SectionName::Desired, &json!({"b":3}), t(30), &limits).unwrap();
        assert_eq!(convergence(&desired, &reported), Convergence::Pending { since: t(30) });
        // The device reports another value afterwards: drifted.
        reported.apply_patch(SectionName::Reported, &json!({"b":4}), t(40), &limits).unwrap();
        assert_eq!(convergence(&desired, &reported), Convergence::Drifted { since: t(40) });
        // The nearest reported ancestor counts.
        desired
            .apply_patch(SectionName::Desired, &json!({"b":null,"c":{"d":1}}), t(50), &limits)
            .unwrap();
        reported
            .apply_patch(SectionName::Reported, &json!({"b":null,"c":"off"}), t(60), &limits)
            .unwrap();
        assert_eq!(convergence(&desired, &reported), Convergence::Drifted { since: t(60) });
    }

    #[test]
    fn effective_desired_merges_layers_in_order() {
        let layers = [
            Layer {
                source: LayerSource::Named("fleet".into()),
                document: obj(json!({"a":1,"b":{"c":1,"d":1}})),
            },
            Layer { source: LayerSource::Device, document: obj(json!({"b":{"c":2,"d":null}})) },
        ];
        let e = effective_desired(&layers);
        assert_eq!(e.document, obj(json!({"a":1,"b":{"c":2}})));
        assert_eq!(e.sources["/a"], LayerSource::Named("fleet".into()));
        assert_eq!(e.sources["/b/c"], LayerSource::Device);
        assert!(!e.sources.contains_key("/b/d"));
    }

    #[test]
    fn set_document_round_trips_through_the_diff() {
        let mut s = TwinSection::default();
        s.set_document(obj(json!({"a":{"b":1,"c":[1]},"x":true})), t(1));
        let old = s.document.clone();
        let new = obj(json!({"a":{"b":2},"y":{}}));
        let patch = s.set_document(new.clone(), t(2)).unwrap();
        let mut v = Value::Object(old);
        merge_patch(&mut v, &patch);
        assert_eq!(v, Value::Object(new));
        assert_eq!(s.metadata.keys().collect::<Vec<_>>(), ["/a/b", "/y"]);
    }

    #[test]
    fn stored_json_round_trips() {
        let mut s = TwinSection::default();
        s.set_document(obj(json!({"a/b":{"c~":1}})), t(5));
        assert!(s.metadata.contains_key("/a~1b/c~0"));
        assert_eq!(TwinSection::from_stored_json(&s.to_stored_json()).unwrap(), s);
    }

    #[test]
    fn etag_parses_quoted_and_bare() {
        assert_eq!(TwinEtag::parse("\"3.4\"").unwrap(), TwinEtag { desired: 3, tags: 4 });
        assert_eq!(TwinEtag::parse("W/\"3.4\"").unwrap().to_string(), "3.4");
        assert!(TwinEtag::parse("3").is_err());
    }
}

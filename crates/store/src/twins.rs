//! Device twins in the store: the inputs and outputs of the `twins` section of [`crate::Store`],
//! and the backend-independent steps every backend runs inside its transaction (apply an
//! operator's update or a device's report to a [`DeviceTwin`], recompute the effective desired
//! document from the layers, and say what history and audit to write).
//!
//! Backends keep the SQL: reading and locking the twin row, gathering the layers below the
//! device's own (none today; configuration profiles add them), writing the row, the history
//! entries and the audit record, pruning history.

use std::num::NonZeroU32;

use domain::twin::{Layer, LayerSource, effective_desired};
use domain::{
    DeviceId, DeviceTwin, Mutation, SectionName, Timestamp, TwinError, TwinEtag, TwinPolicy,
};
use serde_json::{Value, json};

/// An operator's change of a twin: merge patches of the device's desired layer and of the tags,
/// applied together or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TwinUpdate {
    /// Merge patch of the device's own desired layer.
    pub desired: Option<Value>,
    /// Merge patch of the tags section.
    pub tags: Option<Value>,
    /// The versions the caller expects (`If-Match`); `None` applies unconditionally.
    pub if_match: Option<TwinEtag>,
}

/// A twin after a change, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinChange {
    /// The twin as committed.
    pub twin: DeviceTwin,
    /// Whether the effective desired document changed (the device must hear about it).
    pub desired_changed: bool,
    /// Whether anything changed at all (`false`: a no-op, nothing written).
    pub changed: bool,
}

/// One entry of a twin's history: a change of one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinHistoryEntry {
    /// Per device, from 1, growing with every entry.
    pub seq: u64,
    /// The section that changed (`desired` is the effective document).
    pub section: SectionName,
    /// The section's version after the change.
    pub version: u64,
    /// When.
    pub at: Timestamp,
    /// Who: the operator (`token:<id> (<name>)`, as in the audit log), `device:<id>`, or
    /// `replacement:<old id>`.
    pub actor: String,
    /// The change, as a merge patch.
    pub patch: Value,
}

/// A history entry about to be written (the backend numbers it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTwinHistory {
    /// The section.
    pub section: SectionName,
    /// Its version after the change.
    pub version: u64,
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: String,
    /// The change.
    pub patch: Value,
}

/// A query for one page of a twin's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinHistoryQuery {
    /// Only entries of this section.
    pub section: Option<SectionName>,
    /// Only entries with a `seq` below this one: the cursor of the previous page.
    pub before: Option<u64>,
    /// Page size, at most [`crate::MAX_PAGE_SIZE`].
    pub limit: NonZeroU32,
}

/// What a backend writes after [`plan_update`] or [`plan_report`]: history entries, and for an
/// operator's change its audit record's `after`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TwinWrites {
    /// History entries, in order.
    pub history: Vec<NewTwinHistory>,
    /// The `after` of the `device.twin.update` audit record; `None`: no record.
    pub audit_after: Option<Value>,
    /// Whether the effective desired document changed.
    pub desired_changed: bool,
}

impl TwinWrites {
    /// Whether anything is to be written.
    pub fn changed(&self) -> bool {
        !self.history.is_empty()
    }
}

/// The audit action of an operator's twin change.
pub const TWIN_UPDATE_ACTION: &str = "device.twin.update";

/// The actor string of a device's own report in twin history.
pub fn device_actor(id: &DeviceId) -> String {
    format!("device:{id}")
}

/// Recomputes `twin.desired` from `base_layers` (lowest priority first) with the device's own
/// layer on top, checking the limits on the result; returns the history entry when the
/// effective document changed. The one place the effective desired document is computed.
///
/// # Errors
/// [`TwinError::TooLarge`], [`TwinError::TooDeep`] for the effective document.
pub fn recompute_desired(
    twin: &mut DeviceTwin,
    base_layers: &[Layer],
    policy: &TwinPolicy,
    at: Timestamp,
    actor: &str,
) -> Result<Option<NewTwinHistory>, TwinError> {
    let mut layers = base_layers.to_vec();
    layers.push(Layer {
        source: LayerSource::Device,
        document: twin.device_desired.document.clone(),
    });
    let effective = effective_desired(&layers);
    domain::twin::check_limits(SectionName::Desired, &effective.document, &policy.limits)?;
    Ok(twin.desired.set_document(effective.document, at).map(|patch| NewTwinHistory {
        section: SectionName::Desired,
        version: twin.desired.version,
        at,
        actor: actor.to_owned(),
        patch,
    }))
}

/// Applies an operator's `update` to `twin` (checked against `if_match` first), recomputing the
/// effective desired document; returns what to write. On error `twin` may be half-changed: the
/// backend discards it and rolls back.
///
/// # Errors
/// [`TwinError::EtagMismatch`], [`TwinError::NotAnObject`], [`TwinError::TooLarge`],
/// [`TwinError::TooDeep`].
pub fn plan_update(
    twin: &mut DeviceTwin,
    base_layers: &[Layer],
    update: &TwinUpdate,
    policy: &TwinPolicy,
    m: &Mutation,
) -> Result<TwinWrites, TwinError> {
    let current = twin.etag();
    if let Some(expected) = update.if_match
        && expected != current
    {
        return Err(TwinError::EtagMismatch { expected, current });
    }
    let actor = m.actor.to_string();
    let mut writes = TwinWrites::default();
    let mut layer_patch = None;
    if let Some(patch) = &update.desired {
        layer_patch =
            twin.device_desired.apply_patch(SectionName::Desired, patch, m.at, &policy.limits)?;
    }
    if layer_patch.is_some()
        && let Some(entry) = recompute_desired(twin, base_layers, policy, m.at, &actor)?
    {
        writes.desired_changed = true;
        writes.history.push(entry);
    }
    let mut tags_patch = None;
    if let Some(patch) = &update.tags {
        tags_patch = twin.tags.apply_patch(SectionName::Tags, patch, m.at, &policy.limits)?;
        if let Some(p) = &tags_patch {
            writes.history.push(NewTwinHistory {
                section: SectionName::Tags,
                version: twin.tags.version,
                at: m.at,
                actor: actor.clone(),
                patch: p.clone(),
            });
        }
    }
    if layer_patch.is_some() || tags_patch.is_some() {
        writes.audit_after = Some(json!({
            "versions": {
                "desired": twin.desired.version,
                "device_desired": twin.device_desired.version,
                "tags": twin.tags.version,
            },
            "patch": {
                "desired": layer_patch,
                "tags": tags_patch,
            },
        }));
    }
    Ok(writes)
}

/// Applies a device's report (a merge patch of `reported`) to `twin`; returns what to write
/// (history only: reports are observed state, not audited).
///
/// # Errors
/// [`TwinError::NotAnObject`], [`TwinError::TooLarge`], [`TwinError::TooDeep`].
pub fn plan_report(
    twin: &mut DeviceTwin,
    patch: &Value,
    policy: &TwinPolicy,
    at: Timestamp,
) -> Result<TwinWrites, TwinError> {
    let mut writes = TwinWrites::default();
    if let Some(p) = twin.reported.apply_patch(SectionName::Reported, patch, at, &policy.limits)? {
        writes.history.push(NewTwinHistory {
            section: SectionName::Reported,
            version: twin.reported.version,
            at,
            actor: device_actor(&twin.device_id),
            patch: p,
        });
    }
    Ok(writes)
}

/// What a replacement does to the successor's twin: it takes the old device's own desired layer
/// and tags, and its effective desired document is recomputed; returns what to write, with the
/// audit record's `after` when something changed. Limits are not checked again: the documents
/// were within them on the old device (the successor's base layers could push the effective
/// document past them; it is kept then, and the next change reports it).
pub fn plan_replacement(
    successor: &mut DeviceTwin,
    old: &DeviceTwin,
    base_layers: &[Layer],
    at: Timestamp,
) -> TwinWrites {
    let actor = format!("replacement:{}", old.device_id);
    let mut writes = TwinWrites::default();
    let layer_patch =
        successor.device_desired.set_document(old.device_desired.document.clone(), at);
    let unlimited = TwinPolicy {
        limits: domain::TwinLimits { max_section_bytes: usize::MAX, max_depth: usize::MAX },
        history_per_device: 0,
    };
    if layer_patch.is_some()
        && let Ok(Some(entry)) = recompute_desired(successor, base_layers, &unlimited, at, &actor)
    {
        writes.desired_changed = true;
        writes.history.push(entry);
    }
    let tags_patch = successor.tags.set_document(old.tags.document.clone(), at);
    if let Some(p) = &tags_patch {
        writes.history.push(NewTwinHistory {
            section: SectionName::Tags,
            version: successor.tags.version,
            at,
            actor,
            patch: p.clone(),
        });
    }
    if layer_patch.is_some() || tags_patch.is_some() {
        writes.audit_after = Some(json!({
            "versions": {
                "desired": successor.desired.version,
                "device_desired": successor.device_desired.version,
                "tags": successor.tags.version,
            },
            "patch": { "desired": layer_patch, "tags": tags_patch },
            "from": old.device_id.as_str(),
        }));
    }
    writes
}

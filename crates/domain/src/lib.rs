//! Herd's domain: the types and rules every other crate speaks in, with no I/O.
//!
//! - [`DeviceId`], [`Device`], [`Tags`], [`Attributes`] and [`LifecycleState`] describe the registry;
//!   [`LifecycleState::check_transition`] is the one place the lifecycle rules live.
//! - [`Filter`] is the parsed device filter expression (`tags.site = 'berlin' and state = 'active'`);
//!   stores translate it to their own query language, [`Filter::matches`] evaluates it in memory.
//! - [`Group`] is a static (explicit members) or dynamic (saved filter) set of devices.
//! - [`Role`], [`ApiToken`] and [`TokenHash`] describe operator access; [`DeviceCredential`] is
//!   what a device presents when it connects (its secret is kept only as a [`TokenHash`]).
//! - [`AuditRecord`] and [`audit::chain_hash`] define the hash-chained audit log; [`audit::verify_chain`]
//!   finds the first broken link.
//! - [`Presence`] is what the MQTT gateway last saw of a device's connection (not audited).
//! - [`AgentReport`] is what a device's agent last reported about itself (facts, heartbeat health),
//!   each an [`AgentPayload`] (not audited either).
//! - [`EnrollmentGroup`] says how unknown devices provision themselves (zero-touch): how they prove
//!   they belong ([`Attestation`]), which id they get and what they start with; [`ClaimCode`]s are
//!   a group's one-time passwords, stored as hashes.
//! - [`ReplacementPlan`] is what replacing a device (RMA) does to the two devices' registry
//!   entries, with the rules it checks ([`ReplacementError`]); [`Replacement`] is its outcome.
//! - [`JobSpec`] is a fleet job (a command or desired-state patch on a target, with rollout rate,
//!   retries and abort criteria); [`JobState`], [`ExecutionState`] and [`JobCounters`] hold the
//!   rules the store and the scheduler share (module `job`).
//! - [`Command`] is a direct command to one device (RPC) with its delivery window and result;
//!   [`CommandState::check_transition`] holds its state rules.
//! - [`DeviceTwin`] is a device's desired, reported and tags documents with versions and
//!   per-property metadata (module [`twin`]: merge patch, delta, convergence, layers).
//! - [`Mutation`] says who changes something and when; every write to the store carries one.

pub mod agent;
pub mod audit;
pub mod certificate;
pub mod command;
pub mod credential;
pub mod device;
pub mod enrollment;
pub mod filter;
pub mod group;
pub mod job;
pub mod presence;
pub mod profile;
pub mod replacement;
pub mod timestamp;
pub mod token;
pub mod twin;

pub use agent::{AgentPayload, AgentPayloadError, AgentReport, AgentReportUpdate};
pub use audit::{AuditRecord, NewAuditRecord};
pub use certificate::{CertificateSerial, DeviceCertificate, NewDeviceCertificate};
pub use command::{
    Command, CommandError, CommandId, CommandName, CommandOutcome, CommandState, IdempotencyKey,
    IllegalCommandTransition, NewCommand,
};
pub use credential::{
    AccessChangeReason, CredentialId, DeviceAccessChange, DeviceCredential, DeviceNotice,
    NewDeviceCredential,
};
pub use device::{
    Attributes, Device, DeviceId, DevicePatch, DisplayName, IllegalTransition, ImportRow,
    LifecycleState, NewDevice, TagKey, Tags,
};
pub use enrollment::{
    Attestation, ClaimCode, ClaimCodeId, DeviceIdTemplate, EnrollmentGroup, EnrollmentGroupName,
    EnrollmentGroupPatch, NewEnrollmentGroup, RegistrationId, RegistrationRefusal,
};
pub use filter::{Field, Filter, FilterError};
pub use group::{Group, GroupKind, GroupName, GroupPatch, NewGroup};
pub use job::{
    AbortCriterion, ExecutionState, FailureType, IllegalExecutionTransition, IllegalJobTransition,
    Job, JobAction, JobCounters, JobExecution, JobId, JobOperation, JobSpec, JobSpecError,
    JobSpecParts, JobState, JobTarget, RetryPolicy, RetryRule, Rollout, RolloutWindow, Selection,
    StatusDetails,
};
pub use presence::Presence;
pub use profile::{ConfigProfile, NewProfile, ProfileName, ProfilePatch, ProfileTarget};
pub use replacement::{Replacement, ReplacementError, ReplacementPlan};
pub use timestamp::Timestamp;
pub use token::{ApiToken, NewToken, Role, TokenHash, TokenId};
pub use twin::{
    Convergence, DeviceTwin, Layer, LayerSource, SectionName, TwinError, TwinEtag, TwinLimits,
    TwinPolicy, TwinSection,
};

use std::fmt;

/// A validation failure of raw input, with the field it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// Which field or value was rejected (`device id`, `tag key`, …).
    pub field: &'static str,
    /// Why, in words an operator understands.
    pub reason: String,
}

impl InvalidInput {
    /// Builds an error for `field` with a reason.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// Who performs a change: an API token (by id and name) or the server itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token that authenticated the request; `None` for the server itself (bootstrap, migrations).
    pub token_id: Option<TokenId>,
    /// A human-readable name: the token's name, or `system`.
    pub name: String,
}

impl Actor {
    /// The server acting on its own behalf (bootstrap of the first admin token, for example).
    pub fn system() -> Self {
        Self { token_id: None, name: "system".to_owned() }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.token_id {
            Some(id) => write!(f, "token:{id} ({})", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// The context of one write: who makes it and at what time.
///
/// Stores use `at` for `created_at`/`updated_at` and for the audit record they append in the same
/// transaction, so tests control time by choosing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// Who makes the change.
    pub actor: Actor,
    /// When the change happens.
    pub at: Timestamp,
}

//! The `Store` trait: everything Herd persists, in domain language.
//!
//! Backends (`store-sqlite`, `store-postgres`) implement [`Store`] and are used as `Arc<dyn Store>`.
//! Every write takes a [`Mutation`] (who and when) and appends its audit record in the **same
//! transaction** as the change, so the audit log can never miss a change that was committed.
//!
//! The behaviour every backend must have is pinned by the conformance suite in [`conformance`]
//! (feature `conformance`), which each backend's tests run against a fresh database.

mod commands;
#[cfg(feature = "conformance")]
pub mod conformance;
mod enrollment;
pub mod jobs;
mod mqtt;
pub mod profiles;
mod twins;

use std::fmt;
use std::num::NonZeroU32;

use async_trait::async_trait;
use domain::{
    AgentReport, AgentReportUpdate, ApiToken, AuditRecord, CertificateSerial, ClaimCode, Command,
    CommandId, CredentialId, Device, DeviceCertificate, DeviceCredential, DeviceId, DevicePatch,
    DeviceTwin, EnrollmentGroup, EnrollmentGroupName, EnrollmentGroupPatch, Filter, Group,
    GroupName, GroupPatch, IllegalTransition, ImportRow, LifecycleState, Mutation, NewCommand,
    NewDevice, NewDeviceCertificate, NewDeviceCredential, NewEnrollmentGroup, NewGroup, NewToken,
    Presence, RegistrationRefusal, Replacement, ReplacementError, Timestamp, TokenHash, TokenId,
    TwinError, TwinPolicy,
};
use domain::{ExecutionState, Job, JobAction, JobExecution, JobId, JobSpec, JobState, JobTarget};

pub use crate::commands::{
    CommandProgress, CommandQuery, CommandUpdate, CreatedCommand, command_after_cancel,
    command_after_progress, command_after_sweep,
};
pub use crate::enrollment::{
    MAX_PROVISIONING_CREDENTIALS, NewClaimCode, Registered, Registration,
    RegistrationRefusalRecord, adopted_device, claim_codes_audit_summary, enrolled_device,
    key_derivation_audit,
};
pub use crate::jobs::{ExecutionUpdate, ExecutionUpdated, TargetPreview};
pub use crate::mqtt::{
    MqttMessage, MqttOp, MqttQueued, MqttSession, MqttSnapshot, MqttSubscription,
};
pub use crate::profiles::{ProfileQuery, Recomputed};
pub use crate::twins::{
    NewTwinHistory, TWIN_UPDATE_ACTION, TwinChange, TwinHistoryEntry, TwinHistoryQuery, TwinUpdate,
    TwinWrites, device_actor, plan_replacement, plan_report, plan_update, recompute_desired,
};

/// Largest page any list call returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Errors a store reports. Variants are the cases callers handle differently.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named resource does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `device`, `group`, `token`.
        kind: &'static str,
        /// Its id or name.
        id: String,
    },
    /// A resource with that id or name exists already.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// `device`, `group`.
        kind: &'static str,
        /// Its id or name.
        id: String,
    },
    /// The caller expected another version (optimistic concurrency).
    #[error("version mismatch: expected {expected}, current is {current}")]
    VersionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What is stored.
        current: u64,
    },
    /// The lifecycle does not allow the requested state change.
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// A device replacement breaks one of its rules (see [`ReplacementError`]; its lifecycle
    /// failures are reported as [`StoreError::IllegalTransition`] instead).
    #[error(transparent)]
    Replacement(ReplacementError),
    /// The request conflicts with the resource's nature (adding members to a dynamic group, a
    /// dynamic group's filter on a static group, a device created in a non-initial state).
    #[error("{0}")]
    Conflict(String),
    /// The backend failed (connection lost, disk full, corrupt data). Details are for logs only.
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }
}

impl From<ReplacementError> for StoreError {
    fn from(e: ReplacementError) -> Self {
        match e {
            ReplacementError::IllegalTransition(t) => Self::IllegalTransition(t),
            other => Self::Replacement(other),
        }
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A query for one page of devices, ordered by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Only devices matching this filter (all when `None`).
    pub filter: Option<Filter>,
    /// Only devices whose id sorts after this one: the cursor of the previous page.
    pub after: Option<DeviceId>,
    /// Page size, at most [`MAX_PAGE_SIZE`] (stores clamp larger values).
    pub limit: NonZeroU32,
}

/// One page of results and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// Whether another page follows (its cursor is the last item's key).
    pub has_more: bool,
}

/// What happened to one import row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// A new device was created.
    Created,
    /// An existing device was changed.
    Updated,
    /// An existing device was already as the row says.
    Unchanged,
    /// The row was not applied, and why.
    Rejected(String),
}

/// Whether an import batch commits what it can or nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Good rows are committed, bad rows are reported as rejected.
    BestEffort,
    /// When any row is rejected nothing is committed; outcomes report what would have happened.
    Atomic,
}

/// Per-state device counts, for the inventory summary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateCounts(pub Vec<(LifecycleState, u64)>);

/// Fleet connectivity counts, for the connectivity summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectivitySummary {
    /// Devices with an open MQTT connection now.
    pub connected: u64,
    /// Devices that have connected at least once (connected now or not).
    pub ever_connected: u64,
}

/// One connection event of a device, as the MQTT gateway saw it: what
/// [`Store::record_presence_events`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A connection of the device was accepted: it is connected from now on.
    Connect {
        /// The device.
        device_id: DeviceId,
        /// When the connection was accepted.
        at: Timestamp,
        /// The connection's remote address (`ip:port`; empty when unknown).
        remote_addr: String,
        /// The MQTT version it speaks: `3.1.1` or `5`.
        protocol: String,
    },
    /// The device's connection ended.
    Disconnect {
        /// The device.
        device_id: DeviceId,
        /// When it ended.
        at: Timestamp,
        /// Why: `clean`, `keep_alive_timeout`, `taken_over`, `revoked`, `server_shutdown`, …
        reason: String,
    },
}

impl PresenceEvent {
    /// The device the event is about.
    pub fn device_id(&self) -> &DeviceId {
        match self {
            Self::Connect { device_id, .. } | Self::Disconnect { device_id, .. } => device_id,
        }
    }
}

/// A device credential together with the lifecycle state of its device, read in one go: what a
/// device login checks ([`Store::device_login`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLogin {
    /// The credential, revoked or expired ones too (the caller decides).
    pub credential: DeviceCredential,
    /// The state of the device the credential belongs to.
    pub device_state: LifecycleState,
}

/// Everything Herd persists.
///
/// Writes append an audit record in the same transaction. Reads never write. All methods are
/// cancel-safe in the sense that a dropped future either committed its transaction or rolled it
/// back; no half-written state is visible.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Checks that the backend answers (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// A short name of the backend for logs (`sqlite`, `postgres`).
    fn backend_name(&self) -> &'static str;

    /// Closes the backend's connections at shutdown, after the last write (SQLite checkpoints its
    /// WAL). Calls made after it fail with [`StoreError::Backend`]. The default does nothing.
    async fn close(&self) {}

    // ---- devices ----

    /// Creates a device at version 1.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`], or [`StoreError::Conflict`] when the initial state is not
    /// `registered` or `active`.
    async fn create_device(&self, new: &NewDevice, m: &Mutation) -> StoreResult<Device>;

    /// Reads one device.
    async fn device(&self, id: &DeviceId) -> StoreResult<Option<Device>>;

    /// Lists one page of devices ordered by id. Index-backed: must stay fast at millions of devices.
    async fn list_devices(&self, q: &DeviceQuery) -> StoreResult<Page<Device>>;

    /// Counts devices per lifecycle state (states with no devices are left out).
    async fn count_devices_by_state(&self) -> StoreResult<StateCounts>;

    /// Applies a patch, bumping the version (an empty or no-op patch changes nothing and keeps it).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::VersionMismatch`] when `expected_version` is given
    /// and differs, [`StoreError::IllegalTransition`].
    async fn update_device(
        &self,
        id: &DeviceId,
        patch: &DevicePatch,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<Device>;

    /// Deletes a device and its group memberships (its audit history stays).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::VersionMismatch`].
    async fn delete_device(
        &self,
        id: &DeviceId,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<()>;

    /// Creates or updates devices from import rows, in one transaction, returning one outcome per
    /// row in order. A row that repeats an id seen earlier in the same batch applies on top of it.
    async fn import_devices(
        &self,
        rows: &[ImportRow],
        mode: ImportMode,
        m: &Mutation,
    ) -> StoreResult<Vec<ImportOutcome>>;

    /// Replaces device `old` with device `new` (RMA), in one transaction: `new` is created in
    /// state `registered` when it does not exist; it takes over `old`'s tags (`old`'s win on key
    /// conflicts), attributes (shallow merge, `old`'s keys win) and static group memberships
    /// (`old` leaves them); `new.replaces = old` and `old.replaced_by = new`; every unrevoked
    /// credential and certificate of `old` is revoked; `old` goes through `decommissioned` (unless
    /// it is already) to `retired`, each step checked by the lifecycle. The rules are
    /// [`domain::ReplacementPlan::new`]'s.
    ///
    /// Audited as the changes would be one by one (`device.create` or `device.update` of `new`;
    /// per group of `old`, by name, `group.members.add` of `new` unless it was a member and
    /// `group.members.remove` of `old`; `device.credential.revoke` and `device.certificate.revoke`
    /// per revocation, one
    /// `device.update` per lifecycle step of `old`), then one `device.replace` on `device/<old>`
    /// with no `before` and [`Replacement::audit_summary`] as `after`.
    ///
    /// # Errors
    /// The successor's twin takes the old device's own desired layer and tags section (its
    /// effective desired document is recomputed), audited as `device.twin.update` on
    /// `device/<new>` before `device.replace` when that changes it; history entries by
    /// `replacement:<old>` (pruned by the next change of the twin).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `device`) for an unknown `old`, [`StoreError::Replacement`]
    /// for a broken rule, [`StoreError::IllegalTransition`]; nothing is changed then.
    async fn replace_device(
        &self,
        old: &DeviceId,
        new: &DeviceId,
        m: &Mutation,
    ) -> StoreResult<Replacement>;

    // ---- groups ----

    /// Creates a group.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`].
    async fn create_group(&self, new: &NewGroup, m: &Mutation) -> StoreResult<Group>;

    /// Reads one group.
    async fn group(&self, name: &GroupName) -> StoreResult<Option<Group>>;

    /// Lists groups ordered by name, after the cursor.
    async fn list_groups(
        &self,
        after: Option<&GroupName>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<Group>>;

    /// Changes a group's description or (dynamic groups) filter.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Conflict`] for a filter on a static group.
    async fn update_group(
        &self,
        name: &GroupName,
        patch: &GroupPatch,
        m: &Mutation,
    ) -> StoreResult<Group>;

    /// Deletes a group (not its devices).
    async fn delete_group(&self, name: &GroupName, m: &Mutation) -> StoreResult<()>;

    /// Adds devices to a static group (adding a member twice is a no-op).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for the group or the first unknown device, [`StoreError::Conflict`]
    /// for a dynamic group.
    async fn add_group_members(
        &self,
        name: &GroupName,
        ids: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()>;

    /// Removes devices from a static group (removing a non-member is a no-op).
    async fn remove_group_members(
        &self,
        name: &GroupName,
        ids: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()>;

    /// One page of a group's devices ordered by id: explicit members of a static group, the
    /// filter's matches for a dynamic one. `q.filter` further narrows the page.
    async fn group_devices(&self, name: &GroupName, q: &DeviceQuery) -> StoreResult<Page<Device>>;

    // ---- tokens ----

    /// Stores a new token (its secret is never stored, only the hash).
    async fn create_token(&self, new: &NewToken, m: &Mutation) -> StoreResult<ApiToken>;

    /// Finds a token by the hash of its secret (revoked and expired ones too; the caller decides).
    async fn token_by_hash(&self, hash: &TokenHash) -> StoreResult<Option<ApiToken>>;

    /// All tokens, newest first, revoked ones included.
    async fn list_tokens(&self) -> StoreResult<Vec<ApiToken>>;

    /// Revokes a token (revoking twice keeps the first time).
    async fn revoke_token(&self, id: &TokenId, m: &Mutation) -> StoreResult<ApiToken>;

    /// How many tokens exist (revoked included); zero means a fresh store that needs bootstrap.
    async fn token_count(&self) -> StoreResult<u64>;

    // ---- device credentials ----

    /// Stores a new credential for an existing device (the secret is never stored, only its hash).
    /// Audited as `device.credential.create` on resource `device/<id>`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the device does not exist, [`StoreError::AlreadyExists`] (kind
    /// `credential`) when the id or hash is taken.
    async fn create_device_credential(
        &self,
        new: &NewDeviceCredential,
        m: &Mutation,
    ) -> StoreResult<DeviceCredential>;

    /// Finds a credential by the hash of its secret (revoked and expired ones too; the caller
    /// decides). This is the lookup behind every device CONNECT: it must be index-backed.
    async fn device_credential_by_hash(
        &self,
        hash: &TokenHash,
    ) -> StoreResult<Option<DeviceCredential>>;

    /// Finds a credential by the hash of its secret, like [`Store::device_credential_by_hash`],
    /// together with the state of its device, in one read: the lookup behind every device CONNECT
    /// that the gateway's credential cache cannot answer. Index-backed. `None` when no credential
    /// has this hash (a deleted device has none).
    async fn device_login(&self, hash: &TokenHash) -> StoreResult<Option<DeviceLogin>>;

    /// A device's credentials, newest first, revoked ones included.
    async fn device_credentials(&self, device: &DeviceId) -> StoreResult<Vec<DeviceCredential>>;

    /// Revokes one of a device's credentials (revoking twice keeps the first time and writes no
    /// audit record). Audited as `device.credential.revoke`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `credential`) when the device has no such credential.
    async fn revoke_device_credential(
        &self,
        device: &DeviceId,
        id: &CredentialId,
        m: &Mutation,
    ) -> StoreResult<DeviceCredential>;

    // ---- device certificates ----

    /// Stores a certificate the CA issued to an existing device. Audited as
    /// `device.certificate.create` on resource `device/<id>`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the device does not exist, [`StoreError::AlreadyExists`] (kind
    /// `certificate`) when the serial is taken.
    async fn create_device_certificate(
        &self,
        new: &NewDeviceCertificate,
        m: &Mutation,
    ) -> StoreResult<DeviceCertificate>;

    /// Finds a certificate by its serial (revoked and expired ones too; the caller decides). The
    /// lookup behind a device CONNECT over mutual TLS: index-backed.
    async fn device_certificate_by_serial(
        &self,
        serial: &CertificateSerial,
    ) -> StoreResult<Option<DeviceCertificate>>;

    /// A device's certificates, newest first (ties: highest serial first), revoked ones included.
    async fn device_certificates(&self, device: &DeviceId) -> StoreResult<Vec<DeviceCertificate>>;

    /// Certificates not revoked whose validity ends before `before` (expired ones included), of
    /// every device, soonest end first (ties: lowest serial first), at most `limit`. Index-backed
    /// (`not_after` of the certificates not revoked), so a fleet's renewal report reads only what
    /// it returns.
    async fn expiring_device_certificates(
        &self,
        before: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<DeviceCertificate>>;

    /// Revokes one of a device's certificates (revoking twice keeps the first time and writes no
    /// audit record). Audited as `device.certificate.revoke`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `certificate`) when the device has no such certificate.
    async fn revoke_device_certificate(
        &self,
        device: &DeviceId,
        serial: &CertificateSerial,
        m: &Mutation,
    ) -> StoreResult<DeviceCertificate>;

    // ---- enrollment groups ----
    //
    // Enrollment groups let devices Herd has never seen provision themselves (see
    // `domain::enrollment`). Group changes are audited as `enrollment_group.create|update|delete`
    // on `enrollment_group/<name>` (never the key); a registration as `device.register` on
    // `device/<id>` with the actor `enrollment:<group>`.

    /// Creates an enrollment group with no registrations. Audited as `enrollment_group.create`.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] (kind `enrollment_group`), [`StoreError::NotFound`] (kind
    /// `group`) for a static group that does not exist, [`StoreError::Conflict`] for a dynamic one.
    async fn create_enrollment_group(
        &self,
        new: &NewEnrollmentGroup,
        m: &Mutation,
    ) -> StoreResult<EnrollmentGroup>;

    /// Reads one enrollment group.
    async fn enrollment_group(
        &self,
        name: &EnrollmentGroupName,
    ) -> StoreResult<Option<EnrollmentGroup>>;

    /// Lists enrollment groups ordered by name, after the cursor.
    async fn list_enrollment_groups(
        &self,
        after: Option<&EnrollmentGroupName>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<EnrollmentGroup>>;

    /// Applies a patch (a patch that changes nothing writes nothing). Audited as
    /// `enrollment_group.update`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `enrollment_group`, or `group` for an unknown static group),
    /// [`StoreError::Conflict`] for a dynamic group.
    async fn update_enrollment_group(
        &self,
        name: &EnrollmentGroupName,
        patch: &EnrollmentGroupPatch,
        m: &Mutation,
    ) -> StoreResult<EnrollmentGroup>;

    /// Deletes an enrollment group with its claim codes and its record of which devices it
    /// enrolled (the devices stay). Audited as `enrollment_group.delete`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `enrollment_group`).
    async fn delete_enrollment_group(
        &self,
        name: &EnrollmentGroupName,
        m: &Mutation,
    ) -> StoreResult<()>;

    /// Appends one audit record `enrollment_group.derive_key` for a batch of device keys an
    /// operator read, derived from the group's secret: after, `{"device_id"}` for one device,
    /// `{"count", "device_ids"}` for several. An empty batch records nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `enrollment_group`).
    async fn record_key_derivation(
        &self,
        name: &EnrollmentGroupName,
        devices: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()>;

    /// Stores claim codes of a `claim_code` group (only their hashes), each usable `max_uses`
    /// times until `expires_at`, and returns them in the given order. One audit record
    /// `enrollment_group.claim_codes.create` for the batch (count and ids, never codes).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `enrollment_group`), [`StoreError::Conflict`] when the group
    /// does not use claim codes, [`StoreError::AlreadyExists`] (kind `claim_code`) when an id or
    /// hash is taken.
    async fn create_claim_codes(
        &self,
        name: &EnrollmentGroupName,
        codes: &[NewClaimCode],
        max_uses: u32,
        expires_at: Option<Timestamp>,
        m: &Mutation,
    ) -> StoreResult<Vec<ClaimCode>>;

    /// A group's claim codes, oldest first (ties: by id); empty for an unknown group.
    async fn claim_codes(&self, name: &EnrollmentGroupName) -> StoreResult<Vec<ClaimCode>>;

    /// Registers a device through an enrollment group whose proof the caller checked, in one
    /// transaction (see [`Registration`] for the rules): creates the device or recognises an
    /// idempotent retry, consumes a claim code use, stores the new credential and revokes the
    /// oldest provisioning credentials beyond [`MAX_PROVISIONING_CREDENTIALS`]. Audited as
    /// `device.register` on `device/<id>`. A refusal (the inner `Err`) writes nothing.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] (kind `credential`) when the credential's id or hash is taken,
    /// [`StoreError::Backend`].
    async fn register_device(
        &self,
        registration: &Registration,
        m: &Mutation,
    ) -> StoreResult<Result<Registered, RegistrationRefusal>>;

    /// Appends the audit record `enrollment.register.refused` of a refused registration attempt
    /// (on `registration/<registration id>`; after: group, reason and source), so failed proofs
    /// are on record.
    async fn record_registration_refusal(
        &self,
        refusal: &RegistrationRefusalRecord,
        m: &Mutation,
    ) -> StoreResult<()>;

    // ---- presence ----
    //
    // Presence is observed by the MQTT gateway, not changed by an operator: these writes append no
    // audit record and take no `Mutation`. A device's presence is deleted with the device.

    /// Records `events` in order, in one transaction, exactly as recording them one at a time
    /// would: a [`PresenceEvent::Connect`] marks the device connected at `at` from `remote_addr`
    /// speaking `protocol`, keeping its previous disconnect time and reason; a
    /// [`PresenceEvent::Disconnect`] marks it disconnected at `at` for `reason`, and is ignored when
    /// the device is not recorded as connected at that point of the batch. Events of a device that
    /// does not exist (it may have been deleted meanwhile) are ignored.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the transaction does not commit (nothing is recorded).
    async fn record_presence_events(&self, events: &[PresenceEvent]) -> StoreResult<()>;

    /// Records that `device` connected at `at` from `remote_addr` speaking MQTT `protocol` (`3.1.1`
    /// or `5`): [`Store::record_presence_events`] with one [`PresenceEvent::Connect`].
    async fn record_connect(
        &self,
        device: &DeviceId,
        at: Timestamp,
        remote_addr: &str,
        protocol: &str,
    ) -> StoreResult<()> {
        self.record_presence_events(&[PresenceEvent::Connect {
            device_id: device.clone(),
            at,
            remote_addr: remote_addr.to_owned(),
            protocol: protocol.to_owned(),
        }])
        .await
    }

    /// Records that the connection of `device` ended at `at` for `reason` (`clean`,
    /// `keep_alive_timeout`, …): [`Store::record_presence_events`] with one
    /// [`PresenceEvent::Disconnect`].
    async fn record_disconnect(
        &self,
        device: &DeviceId,
        at: Timestamp,
        reason: &str,
    ) -> StoreResult<()> {
        self.record_presence_events(&[PresenceEvent::Disconnect {
            device_id: device.clone(),
            at,
            reason: reason.to_owned(),
        }])
        .await
    }

    /// What is recorded of a device's connections; `None` when it never connected (or does not
    /// exist).
    async fn presence(&self, device: &DeviceId) -> StoreResult<Option<Presence>>;

    /// How many devices are connected and how many ever connected. Index-backed: it does not scan
    /// the devices.
    async fn connectivity_summary(&self) -> StoreResult<ConnectivitySummary>;

    /// Marks every device recorded as connected disconnected at `at` with reason
    /// [`domain::presence::SERVER_RESTART`]; returns how many were. Called once at startup, before
    /// the gateway accepts connections: no connection survives a restart.
    async fn reset_presence(&self, at: Timestamp) -> StoreResult<u64>;

    // ---- agent reports ----
    //
    // What devices' agents report about themselves (facts after each connect, health with each
    // heartbeat), observed like presence: these writes append no audit record and take no
    // `Mutation`. A device's reports are deleted with the device.

    /// Records `reports` in order, in one transaction: facts replace the device's recorded facts
    /// and their time; a heartbeat replaces its recorded health and time and counts one more
    /// heartbeat. Reports of a device that does not exist (it may have been deleted meanwhile) are
    /// ignored. Recording the same facts again changes only their time.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the transaction does not commit (nothing is recorded).
    async fn record_agent_reports(&self, reports: &[AgentReportUpdate]) -> StoreResult<()>;

    /// What is recorded of a device's agent; `None` when it never reported (or does not exist).
    async fn agent_report(&self, device: &DeviceId) -> StoreResult<Option<AgentReport>>;

    // ---- MQTT sessions ----
    //
    // The broker's persistent sessions and retained messages (see the `mqtt` module). Written by the
    // broker's session writer only, in batches, outside the audit log (they are traffic, not an
    // operator's change) and with no link to devices: a client identifier need not name a device.

    /// Everything [`Store::mqtt_apply`] has stored: sessions by client identifier, each with its
    /// subscriptions by filter and its messages by `seq`, and retained messages by topic. Called
    /// once at startup.
    async fn mqtt_load(&self) -> StoreResult<MqttSnapshot>;

    /// Applies `ops` in order, in one transaction: all or nothing. See [`MqttOp`] for what each op
    /// does; every op is idempotent. Appends no audit record.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the transaction does not commit (nothing is applied), including
    /// when a sequence number does not fit the database (above `i64::MAX`).
    async fn mqtt_apply(&self, ops: &[MqttOp]) -> StoreResult<()>;

    // ---- audit ----

    /// Audit records with `seq > after`, oldest first.
    async fn audit_records(&self, after: u64, limit: NonZeroU32) -> StoreResult<Vec<AuditRecord>>;

    // ---- jobs ----
    //
    // Fleet jobs (see `domain::job` and the `jobs` module): a job row with its spec, state and
    // per-state execution counters, and one execution row per targeted device. Operator changes
    // (`create_job`, `set_job_state`) are audited as `job.create|pause|resume|cancel|abort` on
    // `job/<id>`; execution progress is observed state (like presence) and appends no record,
    // except when an abort criterion aborts the job (`job.abort` by `system`, with the criterion).
    //
    // Counters are kept exact in the transaction of every change (`JobCounters::transition`), so
    // reading a job never scans its executions. Targets resolve as the `jobs` module documents:
    // devices in service only, by one function per backend shared with the dry run.
    //
    // Retries are decided inside the store, with the spec's policy (`store::jobs::
    // plan_execution_update`): a `failed` or `timed_out` outcome that may be retried is stored as
    // `queued` with the next attempt and a `not_before` back-off, never as a failure.
    //
    // Canceling or aborting a job cancels its queued executions; executions in progress are left
    // to finish (their device may be mid-way) and their outcomes are still recorded, or they time
    // out.

    /// Creates a job, `in_progress`, and in the same transaction resolves its target and inserts
    /// one `queued` execution (attempt 1, `not_before` = the mutation's time) per device, with one
    /// set-based statement. A snapshot job whose target is empty is `completed` at once. Audited as
    /// `job.create` with the summary, the stored spec and the execution count.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] (kind `job`); [`StoreError::NotFound`] (kind `group` or
    /// `device`) for an unknown group or listed device; nothing is written then.
    async fn create_job(&self, spec: &JobSpec, m: &Mutation) -> StoreResult<Job>;

    /// Reads one job: its row only (the counters are on it), never its executions.
    async fn job(&self, id: &JobId) -> StoreResult<Option<Job>>;

    /// One page of jobs ordered by id after the cursor, only those in `state` when given.
    async fn list_jobs(
        &self,
        state: Option<JobState>,
        after: Option<&JobId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<Job>>;

    /// One page of a job's executions ordered by device id after the cursor, only those in `state`
    /// when given.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `job`).
    async fn job_executions(
        &self,
        job: &JobId,
        state: Option<ExecutionState>,
        after: Option<&DeviceId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<JobExecution>>;

    /// What a device sees: its executions (only queued and in-progress ones when `pending_only`),
    /// oldest job first, at most [`MAX_PAGE_SIZE`].
    async fn device_job_executions(
        &self,
        device: &DeviceId,
        pending_only: bool,
    ) -> StoreResult<Vec<JobExecution>>;

    /// Starts up to `max` queued executions of a running job whose `not_before` has come, in
    /// device id order, within what the rollout allows now (`Rollout::allowance`, recorded in
    /// the job's rollout window): each goes `in_progress` with `started_at = now` and its timeout.
    /// Returns them; none for a job that is not `in_progress`. Counters and window are updated in
    /// the same transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `job`).
    async fn start_next_executions(
        &self,
        job: &JobId,
        max: u32,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>>;

    /// Applies a device's (or the scheduler's) report to one execution at `now`, as
    /// `store::jobs::plan_execution_update` describes (version check, transition check, retry,
    /// counters), then aborts the job when an abort criterion is met (its queued executions are
    /// canceled) and completes a snapshot job whose last execution ended.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `job` or `job execution`), [`StoreError::VersionMismatch`],
    /// [`StoreError::Conflict`] for a move the state machine does not allow.
    async fn update_execution(
        &self,
        job: &JobId,
        device: &DeviceId,
        update: &ExecutionUpdate,
        now: Timestamp,
    ) -> StoreResult<ExecutionUpdated>;

    /// Times out up to `limit` executions whose in-progress timeout is at or before `now` (each as
    /// [`Store::update_execution`] to `timed_out` would, retries included), in one transaction;
    /// returns them as stored.
    async fn time_out_executions(
        &self,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<JobExecution>>;

    /// An operator's action on a job (`JobState::apply`): pause, resume, cancel or abort. Cancel
    /// and abort cancel the queued executions. An action that changes nothing (pausing a paused
    /// job) writes nothing; otherwise the version goes up and `job.<action>` is audited.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `job`), [`StoreError::Conflict`] for an action the job's
    /// state does not allow.
    async fn set_job_state(&self, id: &JobId, action: JobAction, m: &Mutation) -> StoreResult<Job>;

    /// For a device that may have joined targets (created, tagged, added to a group): creates a
    /// `queued` execution for every continuous job that is running or paused, whose target now
    /// includes the device and that has none for it yet. Returns the new executions. Continuous
    /// active jobs are found through a partial index; each costs one primary-key probe of the
    /// device against the job's target condition. Not audited (a consequence of another change).
    async fn add_job_executions_for(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>>;

    /// For a device that may have left targets (deleted, decommissioned, retired, untagged, removed
    /// from a group): marks `removed` its queued and in-progress executions when it no longer
    /// exists or is no longer in service, and its queued executions of continuous jobs whose
    /// target no longer includes it. Snapshot jobs keep a device that is still in service. Returns
    /// the removed executions; jobs complete as their last execution ends. Not audited.
    async fn remove_job_executions_for(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>>;

    /// A dry run of `target` (see [`TargetPreview`]) through the same resolution as
    /// [`Store::create_job`], in one read snapshot, writing nothing. `sample` ids at most
    /// (capped at `store::jobs::MAX_PREVIEW_SAMPLE`).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] as [`Store::create_job`].
    async fn preview_target(&self, target: &JobTarget, sample: u32) -> StoreResult<TargetPreview>;

    /// One page of the devices `target` resolves to, in id order after the cursor: the full set a
    /// job on it would get executions for.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] as [`Store::create_job`].
    async fn target_device_ids(
        &self,
        target: &JobTarget,
        after: Option<&DeviceId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<DeviceId>>;

    // ---- commands ----
    //
    // Direct commands to devices (`domain::command`). Creating and canceling are operator changes,
    // audited as `device.command.create|cancel` on `device/<id>` (with `Command::audit_summary`);
    // delivery, answers, time-outs and expiry are observed state, written without an audit record.
    // A device's commands are deleted with it. A command's id is unique across devices; every
    // method that names one also names its device, and a command of another device is `NotFound`.

    /// Creates a queued command with the next `seq` of its device. When `new` carries an
    /// idempotency key that a command of the same device created at or after `idempotency_since`
    /// holds already, nothing is written and that command comes back with `created: false`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `device`) for an unknown device; [`StoreError::Conflict`]
    /// when the key's command was created with another name or payload;
    /// [`StoreError::AlreadyExists`] (kind `command`) for a taken id.
    async fn create_command(
        &self,
        new: &NewCommand,
        idempotency_since: Timestamp,
        m: &Mutation,
    ) -> StoreResult<CreatedCommand>;

    /// Reads one command of a device.
    async fn command(&self, device: &DeviceId, id: &CommandId) -> StoreResult<Option<Command>>;

    /// One page of a device's commands, newest (highest `seq`) first. Index-backed.
    async fn list_commands(
        &self,
        device: &DeviceId,
        q: &CommandQuery,
    ) -> StoreResult<Page<Command>>;

    /// The commands a device should have: `queued` ones whose delivery window is still open at
    /// `now` ([`Command::deliver_by`] after `now`) and `delivered` ones, oldest (lowest `seq`)
    /// first, at most `limit`.
    async fn pending_commands(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<Command>>;

    /// Records what happened to a command at `at` when [`domain::CommandState::check_transition`]
    /// allows it (delivery sets `delivered_at`; an answer or time-out sets `completed_at`, an
    /// answer also `result` and `error`, a time-out the error `timed_out`), checking in the same
    /// transaction that the state is still the one the change was checked against. Otherwise
    /// nothing changes and the stored command comes back with `changed: false`. No audit record.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `command`).
    async fn advance_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        progress: &CommandProgress,
        at: Timestamp,
    ) -> StoreResult<CommandUpdate>;

    /// Cancels a `queued` or `delivered` command (`completed_at` is the mutation's time, error
    /// `canceled`). Audited as `device.command.cancel`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `command`); [`StoreError::Conflict`] when it has ended.
    async fn cancel_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        m: &Mutation,
    ) -> StoreResult<Command>;

    /// Ends overdue commands at `now`, in one transaction: `queued` ones whose delivery window
    /// closed (`deliver_by` at or before `now`) become `expired`, `delivered` ones whose
    /// timeout passed become `timed_out`. Returns the changed commands, at most `limit`
    /// (call again while it returns `limit`). Index-backed; no audit record.
    async fn expire_commands(&self, now: Timestamp, limit: NonZeroU32)
    -> StoreResult<Vec<Command>>;

    /// Deletes ended commands completed before `before`, at most `limit` of them; returns how
    /// many. No audit record (their creation and cancel records stay).
    async fn prune_commands(&self, before: Timestamp, limit: NonZeroU32) -> StoreResult<u64>;

    // ---- twins ----
    //
    // A device's twin (see `domain::twin`): one row per device, created on its first change,
    // deleted with the device. An operator's change is audited as `device.twin.update` on
    // `device/<id>`; a device's report is observed state and is not. Every change of a section
    // appends a history entry, and only the newest `history_per_device` entries of a device are
    // kept (pruned in the same transaction). Read-modify-write happens in one transaction with
    // the twin row locked. Replacing a device gives the successor the old device's own desired
    // layer and tags (see `replace_device`).

    /// A device's twin: `None` for an unknown device; a device whose twin never changed has an
    /// empty one at versions 0. Reads one row by primary key.
    async fn device_twin(&self, id: &DeviceId) -> StoreResult<Option<DeviceTwin>>;

    /// Applies an operator's merge patches to the device's own desired layer and to the tags,
    /// checked against `update.if_match`, recomputes the effective desired document and appends
    /// history and one `device.twin.update` audit record (no `before`; `after`: versions and the
    /// patches as applied). A change that changes nothing writes nothing and keeps the versions.
    /// The inner `Err` is a refusal that wrote nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `device`).
    async fn update_twin(
        &self,
        id: &DeviceId,
        update: &TwinUpdate,
        policy: &TwinPolicy,
        m: &Mutation,
    ) -> StoreResult<Result<TwinChange, TwinError>>;

    /// Applies a device's merge patch to its reported section at `at`, with history but no audit
    /// record. The inner `Err` is a refusal that wrote nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `device`).
    async fn report_twin(
        &self,
        id: &DeviceId,
        patch: &serde_json::Value,
        policy: &TwinPolicy,
        at: Timestamp,
    ) -> StoreResult<Result<TwinChange, TwinError>>;

    /// One page of a device's twin history, newest first (empty for an unknown device).
    async fn twin_history(
        &self,
        id: &DeviceId,
        q: &TwinHistoryQuery,
    ) -> StoreResult<Page<TwinHistoryEntry>>;
    /// For a continuous job that is running or paused: creates a `queued` execution (attempt 1,
    /// `not_before = now`) for every device in service its target includes now and that has none
    /// for it yet, with one set-based `INSERT … SELECT`, and counts them on the job in the same
    /// transaction. Returns how many were created: 0 for a snapshot or finished job and for a group
    /// target whose group no longer exists. The scheduler calls it periodically, so devices that
    /// joined the target by any path (created, imported, tagged, added to a group) are reached
    /// even when no [`Store::add_job_executions_for`] call was made. Not audited.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `job`).
    async fn sync_continuous_job(&self, job: &JobId, now: Timestamp) -> StoreResult<u64>;

    // ---- configuration profiles ----
    //
    // Profiles (see `domain::profile`) are audited as `config_profile.create|update|delete` on
    // `config_profile/<name>` (`before`/`after`: `ConfigProfile::audit_summary`). A device's layers
    // change when a profile is created, changed or deleted, when it joins or leaves a static group
    // that has profiles, when a change of its tags, name or state can move it into or out of a
    // dynamic group that has profiles, when a dynamic group with profiles gets another filter, and
    // when it is created (fleet profiles). Every such change puts the devices concerned on the
    // durable recompute queue **in its own transaction** (database triggers for device and
    // membership rows, the backend's code for profiles and group filters); the server drains the
    // queue with `recompute_twins` and pushes the new desired documents. The queue survives a
    // crash: a change committed is a recompute that will happen.

    /// Creates a profile at version 1 and queues the devices it targets.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] (kind `config_profile`), [`StoreError::NotFound`] (kind
    /// `group`) for a group target that does not exist.
    async fn create_profile(
        &self,
        new: &domain::NewProfile,
        m: &Mutation,
    ) -> StoreResult<domain::ConfigProfile>;

    /// One profile.
    async fn profile(
        &self,
        name: &domain::ProfileName,
    ) -> StoreResult<Option<domain::ConfigProfile>>;

    /// One page of profiles in name order.
    async fn list_profiles(
        &self,
        q: &profiles::ProfileQuery,
    ) -> StoreResult<Page<domain::ConfigProfile>>;

    /// Applies `patch` (checked against `patch.expected_version`), bumps the version and queues
    /// the devices of the old and the new target. A patch that changes nothing writes nothing; one
    /// that changes only the description queues nothing (no device's layers change).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `config_profile`, or `group` for a new target that does not
    /// exist), [`StoreError::VersionMismatch`].
    async fn update_profile(
        &self,
        name: &domain::ProfileName,
        patch: &domain::ProfilePatch,
        m: &Mutation,
    ) -> StoreResult<domain::ConfigProfile>;

    /// Deletes a profile (checked against `expected_version` when given) and queues the devices
    /// it targeted.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `config_profile`), [`StoreError::VersionMismatch`].
    async fn delete_profile(
        &self,
        name: &domain::ProfileName,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<()>;

    /// The layers below the device's own that apply to `device` as given (its tags, name and
    /// state as in the argument, its static memberships as stored), in merge order: what
    /// `recompute_twins` uses, and what a dry run of a device change evaluates for a changed copy.
    async fn desired_layers(&self, device: &Device) -> StoreResult<Vec<domain::twin::Layer>>;

    /// The devices a profile with `target` reaches (every device in service for the fleet, the
    /// group's members in service for a group), like [`Store::preview_target`].
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (kind `group`).
    async fn preview_profile_target(
        &self,
        target: &domain::ProfileTarget,
        sample: u32,
    ) -> StoreResult<TargetPreview>;

    /// Whether the device is on the recompute queue.
    async fn recompute_pending(&self, id: &DeviceId) -> StoreResult<bool>;

    /// How many devices are on the recompute queue.
    async fn recompute_queue_len(&self) -> StoreResult<u64>;

    /// Takes up to `limit` devices off the recompute queue (oldest first; on PostgreSQL skipping
    /// rows another node is draining), recomputes each one's effective desired document from
    /// `desired_layers` and its own layer (`profiles::plan_recompute`) with a twin history entry
    /// by `profiles`, and returns the twins whose desired document changed. Devices that no
    /// longer exist are dropped from the queue; a result past the twin limits keeps the current
    /// document (logged by the caller from the returned refusals). Not audited (the profile or
    /// device change that queued them is).
    async fn recompute_twins(
        &self,
        limit: NonZeroU32,
        policy: &TwinPolicy,
        at: Timestamp,
    ) -> StoreResult<profiles::Recomputed>;
}

//! Herd's [`Store`] on SQLite, the default backend.
//!
//! [`SqliteStore::open`] takes [`SqliteOptions`], opens (or creates) the database file in WAL mode
//! with foreign keys on, runs the embedded migrations (`migrations/`) and returns a store with:
//!
//! - **one writer connection** (SQLite has a single writer): every write runs in a
//!   `BEGIN IMMEDIATE` transaction on it, together with the audit record it appends, so writes
//!   queue in the process instead of failing with `SQLITE_BUSY`;
//! - **a pool of reader connections**, which WAL lets read while the writer writes.
//!
//! Devices keep their tags twice: as JSON on the row (read back with the device) and one row per
//! tag in `device_tags` (what filters search). `filter_sql` turns a [`domain::Filter`] into an
//! index-backed page query (`devices` picks which index drives it); imports are judged in memory
//! and written in multi-row statements (`bulk`); `audit_chain` seals each change's audit record in
//! the change's transaction; `rows` reads rows back through the domain's validating constructors,
//! so a corrupt row is a [`StoreError::Backend`], never a panic. `mqtt` keeps the broker's
//! persistent sessions and retained messages, written in batches on the writer connection;
//! `presence` keeps what the MQTT gateway saw of devices' connections and `agent_reports` what
//! devices' agents report about themselves (facts, heartbeat health), both written in batches too.
//! `enrollment` keeps enrollment groups, their claim codes and which devices they enrolled, and
//! registers a device in one transaction.
//! `replacement` replaces a device by another (RMA) in one transaction.
//! `jobs` keeps fleet jobs and their per-device executions (counters on the job row); a job's
//! target becomes one SQL condition shared by job creation and the dry run.
//! `commands` keeps direct commands to devices (`device_commands`).
//! `profiles` keeps configuration profiles and the durable twin recompute queue
//! (`twin_recompute`, filled in the transaction of each change that can change a device's layers:
//! by the migration's triggers for device and membership rows, by `profiles` and `groups` for
//! profile and filter changes) and drains it.

mod agent_reports;
mod audit_chain;
mod bulk;
mod certificates;
mod commands;
mod credentials;
mod devices;
mod enrollment;
mod filter_sql;
mod groups;
mod jobs;
mod mqtt;
mod presence;
mod profiles;
mod replacement;
mod rows;
mod tokens;
mod twins;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    AgentReport, AgentReportUpdate, ApiToken, AuditRecord, CertificateSerial, ClaimCode, Command,
    CommandId, CredentialId, Device, DeviceCertificate, DeviceCredential, DeviceId, DevicePatch,
    DeviceTwin, EnrollmentGroup, EnrollmentGroupName, EnrollmentGroupPatch, Group, GroupName,
    GroupPatch, ImportRow, Mutation, NewCommand, NewDevice, NewDeviceCertificate,
    NewDeviceCredential, NewEnrollmentGroup, NewGroup, NewToken, Presence, RegistrationRefusal,
    Replacement, Timestamp, TokenHash, TokenId, TwinError, TwinPolicy,
};
use domain::{ExecutionState, Job, JobAction, JobExecution, JobId, JobSpec, JobState, JobTarget};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use store::{
    CommandProgress, CommandQuery, CommandUpdate, ConnectivitySummary, CreatedCommand, DeviceLogin,
    DeviceQuery, ImportMode, ImportOutcome, MqttOp, MqttSnapshot, NewClaimCode, Page,
    PresenceEvent, Registered, Registration, RegistrationRefusalRecord, StateCounts, Store,
    StoreError, StoreResult, TwinChange, TwinHistoryEntry, TwinHistoryQuery, TwinUpdate,
};
use store::{ExecutionUpdate, ExecutionUpdated, TargetPreview};

use crate::rows::{AUDIT_COLUMNS, AuditRow, audit_from_row, db};

/// Failures of this backend that are not SQLite's own errors, reported as [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
enum SqliteError {
    #[error("failed to open sqlite database at {}", path.display())]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("failed to migrate sqlite database at {}", path.display())]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    /// A stored row does not hold what Herd wrote.
    #[error("corrupt {table} row {key:?} in the database: {reason}")]
    Corrupt { table: &'static str, key: String, reason: String },
    /// A number does not fit the column (a version or sequence beyond `i64`).
    #[error("{what} {value} does not fit in a 64-bit integer column")]
    OutOfRange { what: &'static str, value: u64 },
}

/// The migrations in `migrations/`, embedded in the binary and run by [`SqliteStore::open`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=NORMAL`: in WAL mode a commit survives a crash of the process, but the last
    /// commits may be lost on power failure or an operating system crash. Fast: no fsync per commit.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it returns, so it survives power loss.
    Full,
}

/// How to open a SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file. It is created when missing (its directory must exist); SQLite keeps
    /// `-wal` and `-shm` files next to it.
    pub path: PathBuf,
    /// Durability of commits; see [`Synchronous`].
    pub synchronous: Synchronous,
    /// Most reader connections open at once (at least 1). Reads beyond that wait for a free one.
    pub max_readers: u32,
    /// How long a connection waits for a lock held by another connection or process before
    /// failing with "database is locked".
    pub busy_timeout: Duration,
}

impl SqliteOptions {
    /// Options for the database at `path`: `synchronous=NORMAL`, 4 readers, a 5 s busy timeout.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Normal,
            max_readers: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// [`Store`] on a SQLite database file. Cheap to clone: clones share the connections.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: every write goes through it, in a transaction.
    writer: SqlitePool,
    /// Connections for reads only.
    readers: SqlitePool,
    /// Below how many matches a filter condition drives a page through its own index; see
    /// `devices::choose_driver`. Tests set 0 to exercise the ordered drivers on small data.
    sparse_bound: u32,
}

impl SqliteStore {
    /// Opens (creating when missing) the database described by `options` and brings its schema up
    /// to date.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the file cannot be opened or created, is not a SQLite database,
    /// or a migration fails.
    pub async fn open(options: SqliteOptions) -> Result<Self, StoreError> {
        let path = options.path.clone();
        let open_err = |source: sqlx::Error| {
            StoreError::backend(SqliteError::Open { path: path.clone(), source })
        };
        let base = SqliteConnectOptions::new()
            .filename(&options.path)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            .synchronous(match options.synchronous {
                Synchronous::Normal => SqliteSynchronous::Normal,
                Synchronous::Full => SqliteSynchronous::Full,
            });
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // Writes queue for the one connection; a long import must not time the others out.
            .acquire_timeout(Duration::from_secs(120))
            .connect_with(base.clone().create_if_missing(true).journal_mode(SqliteJournalMode::Wal))
            .await
            .map_err(open_err)?;
        MIGRATOR.run(&writer).await.map_err(|source| {
            StoreError::backend(SqliteError::Migrate { path: path.clone(), source })
        })?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.max_readers.max(1))
            .connect_with(base.read_only(true))
            .await
            .map_err(open_err)?;
        tracing::debug!(path = %options.path.display(), "opened sqlite store");
        Ok(Self { writer, readers, sparse_bound: devices::SPARSE_BOUND })
    }

    /// Closes every connection, waiting for those in use to be returned. Call at shutdown after
    /// the last write.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    /// Starts a write transaction on the writer connection, taking SQLite's write lock at once.
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }

    /// A reader connection.
    async fn read(&self) -> StoreResult<sqlx::pool::PoolConnection<Sqlite>> {
        self.readers.acquire().await.map_err(db)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await.map_err(db)?;
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn create_device(&self, new: &NewDevice, m: &Mutation) -> StoreResult<Device> {
        devices::create(self, new, m).await
    }

    async fn device(&self, id: &DeviceId) -> StoreResult<Option<Device>> {
        devices::get(&mut *self.read().await?, id).await
    }

    async fn list_devices(&self, q: &DeviceQuery) -> StoreResult<Page<Device>> {
        devices::page(
            &mut *self.read().await?,
            filter_sql::Scope::All,
            q.filter.as_ref(),
            q,
            self.sparse_bound,
        )
        .await
    }

    async fn count_devices_by_state(&self) -> StoreResult<StateCounts> {
        devices::count_by_state(&mut *self.read().await?).await
    }

    async fn update_device(
        &self,
        id: &DeviceId,
        patch: &DevicePatch,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<Device> {
        devices::update(self, id, patch, expected_version, m).await
    }

    async fn delete_device(
        &self,
        id: &DeviceId,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<()> {
        devices::delete(self, id, expected_version, m).await
    }

    async fn import_devices(
        &self,
        rows: &[ImportRow],
        mode: ImportMode,
        m: &Mutation,
    ) -> StoreResult<Vec<ImportOutcome>> {
        devices::import(self, rows, mode, m).await
    }

    async fn replace_device(
        &self,
        old: &DeviceId,
        new: &DeviceId,
        m: &Mutation,
    ) -> StoreResult<Replacement> {
        replacement::replace(self, old, new, m).await
    }

    async fn create_group(&self, new: &NewGroup, m: &Mutation) -> StoreResult<Group> {
        groups::create(self, new, m).await
    }

    async fn group(&self, name: &GroupName) -> StoreResult<Option<Group>> {
        groups::get(&mut *self.read().await?, name).await
    }

    async fn list_groups(
        &self,
        after: Option<&GroupName>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<Group>> {
        groups::list(&mut *self.read().await?, after, limit).await
    }

    async fn update_group(
        &self,
        name: &GroupName,
        patch: &GroupPatch,
        m: &Mutation,
    ) -> StoreResult<Group> {
        groups::update(self, name, patch, m).await
    }

    async fn delete_group(&self, name: &GroupName, m: &Mutation) -> StoreResult<()> {
        groups::delete(self, name, m).await
    }

    async fn add_group_members(
        &self,
        name: &GroupName,
        ids: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()> {
        groups::add_members(self, name, ids, m).await
    }

    async fn remove_group_members(
        &self,
        name: &GroupName,
        ids: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()> {
        groups::remove_members(self, name, ids, m).await
    }

    async fn group_devices(&self, name: &GroupName, q: &DeviceQuery) -> StoreResult<Page<Device>> {
        groups::devices(&mut *self.read().await?, name, q, self.sparse_bound).await
    }

    async fn create_token(&self, new: &NewToken, m: &Mutation) -> StoreResult<ApiToken> {
        tokens::create(self, new, m).await
    }

    async fn token_by_hash(&self, hash: &TokenHash) -> StoreResult<Option<ApiToken>> {
        tokens::by_hash(&mut *self.read().await?, hash).await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<ApiToken>> {
        tokens::list(&mut *self.read().await?).await
    }

    async fn revoke_token(&self, id: &TokenId, m: &Mutation) -> StoreResult<ApiToken> {
        tokens::revoke(self, id, m).await
    }

    async fn token_count(&self) -> StoreResult<u64> {
        tokens::count(&mut *self.read().await?).await
    }

    async fn create_device_credential(
        &self,
        new: &NewDeviceCredential,
        m: &Mutation,
    ) -> StoreResult<DeviceCredential> {
        credentials::create(self, new, m).await
    }

    async fn device_credential_by_hash(
        &self,
        hash: &TokenHash,
    ) -> StoreResult<Option<DeviceCredential>> {
        credentials::by_hash(&mut *self.read().await?, hash).await
    }

    async fn device_login(&self, hash: &TokenHash) -> StoreResult<Option<DeviceLogin>> {
        credentials::login_by_hash(&mut *self.read().await?, hash).await
    }

    async fn device_credentials(&self, device: &DeviceId) -> StoreResult<Vec<DeviceCredential>> {
        credentials::list(&mut *self.read().await?, device).await
    }

    async fn revoke_device_credential(
        &self,
        device: &DeviceId,
        id: &CredentialId,
        m: &Mutation,
    ) -> StoreResult<DeviceCredential> {
        credentials::revoke(self, device, id, m).await
    }

    async fn create_device_certificate(
        &self,
        new: &NewDeviceCertificate,
        m: &Mutation,
    ) -> StoreResult<DeviceCertificate> {
        certificates::create(self, new, m).await
    }

    async fn device_certificate_by_serial(
        &self,
        serial: &CertificateSerial,
    ) -> StoreResult<Option<DeviceCertificate>> {
        certificates::by_serial(&mut *self.read().await?, serial).await
    }

    async fn device_certificates(&self, device: &DeviceId) -> StoreResult<Vec<DeviceCertificate>> {
        certificates::list(&mut *self.read().await?, device).await
    }

    async fn expiring_device_certificates(
        &self,
        before: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<DeviceCertificate>> {
        certificates::expiring(&mut *self.read().await?, before, limit.get()).await
    }

    async fn revoke_device_certificate(
        &self,
        device: &DeviceId,
        serial: &CertificateSerial,
        m: &Mutation,
    ) -> StoreResult<DeviceCertificate> {
        certificates::revoke(self, device, serial, m).await
    }

    async fn create_enrollment_group(
        &self,
        new: &NewEnrollmentGroup,
        m: &Mutation,
    ) -> StoreResult<EnrollmentGroup> {
        enrollment::create(self, new, m).await
    }

    async fn enrollment_group(
        &self,
        name: &EnrollmentGroupName,
    ) -> StoreResult<Option<EnrollmentGroup>> {
        enrollment::get(&mut *self.read().await?, name).await
    }

    async fn list_enrollment_groups(
        &self,
        after: Option<&EnrollmentGroupName>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<EnrollmentGroup>> {
        enrollment::list(&mut *self.read().await?, after, limit).await
    }

    async fn update_enrollment_group(
        &self,
        name: &EnrollmentGroupName,
        patch: &EnrollmentGroupPatch,
        m: &Mutation,
    ) -> StoreResult<EnrollmentGroup> {
        enrollment::update(self, name, patch, m).await
    }

    async fn delete_enrollment_group(
        &self,
        name: &EnrollmentGroupName,
        m: &Mutation,
    ) -> StoreResult<()> {
        enrollment::delete(self, name, m).await
    }

    async fn record_key_derivation(
        &self,
        name: &EnrollmentGroupName,
        devices: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()> {
        enrollment::record_key_derivation(self, name, devices, m).await
    }

    async fn create_claim_codes(
        &self,
        name: &EnrollmentGroupName,
        codes: &[NewClaimCode],
        max_uses: u32,
        expires_at: Option<Timestamp>,
        m: &Mutation,
    ) -> StoreResult<Vec<ClaimCode>> {
        enrollment::create_claim_codes(self, name, codes, max_uses, expires_at, m).await
    }

    async fn claim_codes(&self, name: &EnrollmentGroupName) -> StoreResult<Vec<ClaimCode>> {
        enrollment::claim_codes(&mut *self.read().await?, name).await
    }

    async fn register_device(
        &self,
        registration: &Registration,
        m: &Mutation,
    ) -> StoreResult<Result<Registered, RegistrationRefusal>> {
        enrollment::register(self, registration, m).await
    }

    async fn record_registration_refusal(
        &self,
        refusal: &RegistrationRefusalRecord,
        m: &Mutation,
    ) -> StoreResult<()> {
        enrollment::record_refusal(self, refusal, m).await
    }

    async fn record_presence_events(&self, events: &[PresenceEvent]) -> StoreResult<()> {
        presence::record(self, events).await
    }

    async fn presence(&self, device: &DeviceId) -> StoreResult<Option<Presence>> {
        presence::get(&mut *self.read().await?, device).await
    }

    async fn connectivity_summary(&self) -> StoreResult<ConnectivitySummary> {
        presence::summary(&mut *self.read().await?).await
    }

    async fn reset_presence(&self, at: Timestamp) -> StoreResult<u64> {
        presence::reset(self, at).await
    }

    async fn record_agent_reports(&self, reports: &[AgentReportUpdate]) -> StoreResult<()> {
        agent_reports::record(self, reports).await
    }

    async fn agent_report(&self, device: &DeviceId) -> StoreResult<Option<AgentReport>> {
        agent_reports::get(&mut *self.read().await?, device).await
    }

    async fn mqtt_load(&self) -> StoreResult<MqttSnapshot> {
        mqtt::load(&mut *self.read().await?).await
    }

    async fn mqtt_apply(&self, ops: &[MqttOp]) -> StoreResult<()> {
        mqtt::apply(self, ops).await
    }

    async fn audit_records(&self, after: u64, limit: NonZeroU32) -> StoreResult<Vec<AuditRecord>> {
        let limit = limit.get().min(store::MAX_PAGE_SIZE);
        let rows: Vec<AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
        )))
        // No record has a sequence number beyond `i64::MAX`: nothing follows such a cursor.
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.into_iter().map(audit_from_row).collect()
    }

    async fn create_job(&self, spec: &JobSpec, m: &Mutation) -> StoreResult<Job> {
        jobs::create(self, spec, m).await
    }

    async fn job(&self, id: &JobId) -> StoreResult<Option<Job>> {
        jobs::get(&mut *self.read().await?, id).await
    }

    async fn list_jobs(
        &self,
        state: Option<JobState>,
        after: Option<&JobId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<Job>> {
        jobs::list(&mut *self.read().await?, state, after, limit).await
    }

    async fn job_executions(
        &self,
        job: &JobId,
        state: Option<ExecutionState>,
        after: Option<&DeviceId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<JobExecution>> {
        jobs::executions(&mut *self.read().await?, job, state, after, limit).await
    }

    async fn device_job_executions(
        &self,
        device: &DeviceId,
        pending_only: bool,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::device_executions(&mut *self.read().await?, device, pending_only).await
    }

    async fn start_next_executions(
        &self,
        job: &JobId,
        max: u32,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::start_next(self, job, max, now).await
    }

    async fn update_execution(
        &self,
        job: &JobId,
        device: &DeviceId,
        update: &ExecutionUpdate,
        now: Timestamp,
    ) -> StoreResult<ExecutionUpdated> {
        jobs::update_execution(self, job, device, update, now).await
    }

    async fn time_out_executions(
        &self,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::time_out(self, now, limit).await
    }

    async fn set_job_state(&self, id: &JobId, action: JobAction, m: &Mutation) -> StoreResult<Job> {
        jobs::set_state(self, id, action, m).await
    }

    async fn add_job_executions_for(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::add_for(self, device, now).await
    }

    async fn remove_job_executions_for(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::remove_for(self, device, now).await
    }

    async fn preview_target(&self, target: &JobTarget, sample: u32) -> StoreResult<TargetPreview> {
        jobs::preview(self, Some(target), sample).await
    }

    async fn target_device_ids(
        &self,
        target: &JobTarget,
        after: Option<&DeviceId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<DeviceId>> {
        jobs::target_ids(&mut *self.read().await?, target, after, limit).await
    }

    async fn create_command(
        &self,
        new: &NewCommand,
        idempotency_since: Timestamp,
        m: &Mutation,
    ) -> StoreResult<CreatedCommand> {
        commands::create(self, new, idempotency_since, m).await
    }

    async fn command(&self, device: &DeviceId, id: &CommandId) -> StoreResult<Option<Command>> {
        commands::read(&mut *self.read().await?, device, id).await
    }

    async fn list_commands(
        &self,
        device: &DeviceId,
        q: &CommandQuery,
    ) -> StoreResult<Page<Command>> {
        commands::list(&mut *self.read().await?, device, q).await
    }

    async fn pending_commands(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<Command>> {
        let limit = limit.get().min(store::MAX_PAGE_SIZE);
        commands::pending(&mut *self.read().await?, device, now, limit).await
    }

    async fn advance_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        progress: &CommandProgress,
        at: Timestamp,
    ) -> StoreResult<CommandUpdate> {
        commands::advance(self, device, id, progress, at).await
    }

    async fn cancel_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        m: &Mutation,
    ) -> StoreResult<Command> {
        commands::cancel(self, device, id, m).await
    }

    async fn expire_commands(
        &self,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<Command>> {
        commands::expire(self, now, limit.get().min(store::MAX_PAGE_SIZE)).await
    }

    async fn prune_commands(&self, before: Timestamp, limit: NonZeroU32) -> StoreResult<u64> {
        commands::prune(self, before, limit.get()).await
    }

    async fn device_twin(&self, id: &DeviceId) -> StoreResult<Option<DeviceTwin>> {
        twins::get(&mut *self.read().await?, id).await
    }

    async fn update_twin(
        &self,
        id: &DeviceId,
        update: &TwinUpdate,
        policy: &TwinPolicy,
        m: &Mutation,
    ) -> StoreResult<Result<TwinChange, TwinError>> {
        twins::update(self, id, update, policy, m).await
    }

    async fn report_twin(
        &self,
        id: &DeviceId,
        patch: &serde_json::Value,
        policy: &TwinPolicy,
        at: Timestamp,
    ) -> StoreResult<Result<TwinChange, TwinError>> {
        twins::report(self, id, patch, policy, at).await
    }

    async fn twin_history(
        &self,
        id: &DeviceId,
        q: &TwinHistoryQuery,
    ) -> StoreResult<Page<TwinHistoryEntry>> {
        twins::history(&mut *self.read().await?, id, q).await
    }

    async fn sync_continuous_job(&self, job: &JobId, now: Timestamp) -> StoreResult<u64> {
        jobs::sync_continuous(self, job, now).await
    }

    // ---- configuration profiles ----

    async fn create_profile(
        &self,
        new: &domain::NewProfile,
        m: &Mutation,
    ) -> StoreResult<domain::ConfigProfile> {
        profiles::create(self, new, m).await
    }

    async fn profile(
        &self,
        name: &domain::ProfileName,
    ) -> StoreResult<Option<domain::ConfigProfile>> {
        profiles::get(&mut *self.read().await?, name).await
    }

    async fn list_profiles(
        &self,
        q: &store::ProfileQuery,
    ) -> StoreResult<Page<domain::ConfigProfile>> {
        profiles::list(&mut *self.read().await?, q).await
    }

    async fn update_profile(
        &self,
        name: &domain::ProfileName,
        patch: &domain::ProfilePatch,
        m: &Mutation,
    ) -> StoreResult<domain::ConfigProfile> {
        profiles::update(self, name, patch, m).await
    }

    async fn delete_profile(
        &self,
        name: &domain::ProfileName,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<()> {
        profiles::delete(self, name, expected_version, m).await
    }

    async fn desired_layers(&self, device: &Device) -> StoreResult<Vec<domain::twin::Layer>> {
        // One read transaction: the profiles and the memberships come from the same snapshot.
        let mut tx = self.readers.begin().await.map_err(db)?;
        let layers = profiles::layers(&mut tx, device).await?;
        tx.commit().await.map_err(db)?;
        Ok(layers)
    }

    async fn preview_profile_target(
        &self,
        target: &domain::ProfileTarget,
        sample: u32,
    ) -> StoreResult<store::TargetPreview> {
        match target {
            domain::ProfileTarget::Fleet => jobs::preview(self, None, sample).await,
            domain::ProfileTarget::Group(g) => {
                jobs::preview(self, Some(&JobTarget::Group(g.clone())), sample).await
            }
        }
    }

    async fn recompute_pending(&self, id: &DeviceId) -> StoreResult<bool> {
        profiles::pending(&mut *self.read().await?, id).await
    }

    async fn recompute_queue_len(&self) -> StoreResult<u64> {
        profiles::queue_len(&mut *self.read().await?).await
    }

    async fn recompute_twins(
        &self,
        limit: NonZeroU32,
        policy: &TwinPolicy,
        at: Timestamp,
    ) -> StoreResult<store::Recomputed> {
        profiles::recompute(self, limit, policy, at).await
    }
}

#[cfg(test)]
mod tests;

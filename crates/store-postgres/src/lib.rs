//! Herd's [`Store`] on PostgreSQL, for installations that outgrow SQLite.
//!
//! [`PostgresStore::connect`] takes [`PostgresOptions`], opens a connection pool, creates the
//! configured schema if needed and applies the migrations embedded from `migrations/`. The store
//! is then used as `Arc<dyn Store>` like every other backend; the conformance suite in `store` pins
//! its behaviour to be the same as SQLite's.
//!
//! Inside, each area has its module: `devices`, `groups`, `tokens`, `credentials`, `certificates`,
//! `enrollment` (enrollment groups, claim codes, the registration transaction),
//! `presence`, `agent_reports` (what devices' agents report about themselves) and `mqtt`
//! `presence`, `agent_reports` (what devices' agents report about themselves), `replacement`
//! (replacing a device by another, RMA), `commands` (direct commands to devices) and `mqtt`
//! (the broker's persistent sessions and retained messages) hold the queries, `audit` appends to the hash chain in the same transaction as each change, `filter_sql`
//! turns device filters into index-backed SQL with bind parameters, and `rows` decodes stored rows
//! back into validated domain values. Queries are built at run time with binds (`sqlx::query`), never by
//! pasting values into SQL.
//!
//! `jobs` keeps fleet jobs and their per-device executions (counters on the job row); a job's
//! target becomes one SQL condition shared by job creation and the dry run.
//!
//! `profiles` keeps configuration profiles and the durable twin recompute queue
//! (`twin_recompute`, filled in the transaction of each change that can change a device's layers:
//! by the migration's triggers for device and membership rows, by `profiles` and `groups` for
//! profile and filter changes) and drains it; drains on several nodes share the work.
//!
//! Every write transaction first takes one advisory lock, which serializes writers: the audit
//! chain is a single sequence, so writes are ordered anyway, and taking that lock before any row
//! lock rules out deadlocks between writers. Reads take no locks.

mod agent_reports;
mod audit;
mod certificates;
mod commands;
mod credentials;
mod devices;
mod enrollment;
mod error;
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

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
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
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use store::{
    CommandProgress, CommandQuery, CommandUpdate, ConnectivitySummary, CreatedCommand, DeviceLogin,
    DeviceQuery, ImportMode, ImportOutcome, MqttOp, MqttSnapshot, NewClaimCode, Page,
    PresenceEvent, Registered, Registration, RegistrationRefusalRecord, StateCounts, Store,
    StoreError, StoreResult, TwinChange, TwinHistoryEntry, TwinHistoryQuery, TwinUpdate,
};
use store::{ExecutionUpdate, ExecutionUpdated, TargetPreview};

pub use crate::error::PostgresError;

use crate::error::db;
use crate::filter_sql::Scope;

/// The migrations in `migrations/`, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Longest schema name PostgreSQL keeps without truncating it.
const MAX_SCHEMA_LEN: usize = 63;

/// How to reach the database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Connection URL, `postgres://user:password@host:port/database` with optional parameters
    /// (`sslmode`, …). Its password is never printed by `Debug`.
    pub url: String,
    /// Most connections the pool opens at once; must be at least 1.
    pub max_connections: u32,
    /// How long an operation waits for a free connection before it fails.
    pub acquire_timeout: Duration,
    /// A schema to keep Herd's tables in instead of the server's default search path.
    ///
    /// It is created when missing and set as the `search_path` of every connection. It must be a
    /// plain lowercase identifier (`[a-z_][a-z0-9_]*`, at most 63 characters). Tests use it to give
    /// each test a fresh, empty database.
    pub schema: Option<String>,
}

impl PostgresOptions {
    /// Options for `url` with 10 connections, a 5-second acquire timeout and the default schema.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            schema: None,
        }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact_password(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("schema", &self.schema)
            .finish()
    }
}

/// A [`Store`] backed by a PostgreSQL connection pool. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects, creates the schema when one is configured and missing, and applies pending
    /// migrations.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL does not parse, the options are invalid
    /// ([`PostgresError`]), the server cannot be reached within the acquire timeout, or a
    /// migration fails.
    pub async fn connect(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        if options.max_connections == 0 {
            return Err(StoreError::backend(PostgresError::InvalidPoolSize));
        }
        let mut connect = PgConnectOptions::from_str(&options.url).map_err(db)?;
        if let Some(schema) = &options.schema {
            check_schema_name(schema)?;
            create_schema(&connect, schema, options.acquire_timeout).await?;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(db)?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::backend(PostgresError::Migrate(e)))?;
        tracing::debug!(schema = ?options.schema, "postgres store ready");
        Ok(PostgresStore { pool })
    }

    /// Closes the pool: waits for checked-out connections to come back, then closes them all.
    /// Later operations fail with [`StoreError::Backend`].
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db)?;
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_device(&self, new: &NewDevice, m: &Mutation) -> StoreResult<Device> {
        devices::create(&self.pool, new, m).await
    }

    async fn device(&self, id: &DeviceId) -> StoreResult<Option<Device>> {
        devices::get(&self.pool, id).await
    }

    async fn list_devices(&self, q: &DeviceQuery) -> StoreResult<Page<Device>> {
        devices::page(&self.pool, Scope::All, q.filter.as_ref(), q).await
    }

    async fn count_devices_by_state(&self) -> StoreResult<StateCounts> {
        devices::count_by_state(&self.pool).await
    }

    async fn update_device(
        &self,
        id: &DeviceId,
        patch: &DevicePatch,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<Device> {
        devices::update(&self.pool, id, patch, expected_version, m).await
    }

    async fn delete_device(
        &self,
        id: &DeviceId,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<()> {
        devices::delete(&self.pool, id, expected_version, m).await
    }

    async fn import_devices(
        &self,
        rows: &[ImportRow],
        mode: ImportMode,
        m: &Mutation,
    ) -> StoreResult<Vec<ImportOutcome>> {
        devices::import(&self.pool, rows, mode, m).await
    }

    async fn replace_device(
        &self,
        old: &DeviceId,
        new: &DeviceId,
        m: &Mutation,
    ) -> StoreResult<Replacement> {
        replacement::replace(&self.pool, old, new, m).await
    }

    async fn create_group(&self, new: &NewGroup, m: &Mutation) -> StoreResult<Group> {
        groups::create(&self.pool, new, m).await
    }

    async fn group(&self, name: &GroupName) -> StoreResult<Option<Group>> {
        groups::get(&self.pool, name).await
    }

    async fn list_groups(
        &self,
        after: Option<&GroupName>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<Group>> {
        groups::list(&self.pool, after, limit).await
    }

    async fn update_group(
        &self,
        name: &GroupName,
        patch: &GroupPatch,
        m: &Mutation,
    ) -> StoreResult<Group> {
        groups::update(&self.pool, name, patch, m).await
    }

    async fn delete_group(&self, name: &GroupName, m: &Mutation) -> StoreResult<()> {
        groups::delete(&self.pool, name, m).await
    }

    async fn add_group_members(
        &self,
        name: &GroupName,
        ids: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()> {
        groups::add_members(&self.pool, name, ids, m).await
    }

    async fn remove_group_members(
        &self,
        name: &GroupName,
        ids: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()> {
        groups::remove_members(&self.pool, name, ids, m).await
    }

    async fn group_devices(&self, name: &GroupName, q: &DeviceQuery) -> StoreResult<Page<Device>> {
        groups::devices(&self.pool, name, q).await
    }

    async fn create_token(&self, new: &NewToken, m: &Mutation) -> StoreResult<ApiToken> {
        tokens::create(&self.pool, new, m).await
    }

    async fn token_by_hash(&self, hash: &TokenHash) -> StoreResult<Option<ApiToken>> {
        tokens::by_hash(&self.pool, hash).await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<ApiToken>> {
        tokens::list(&self.pool).await
    }

    async fn revoke_token(&self, id: &TokenId, m: &Mutation) -> StoreResult<ApiToken> {
        tokens::revoke(&self.pool, id, m).await
    }

    async fn token_count(&self) -> StoreResult<u64> {
        tokens::count(&self.pool).await
    }

    async fn create_device_credential(
        &self,
        new: &NewDeviceCredential,
        m: &Mutation,
    ) -> StoreResult<DeviceCredential> {
        credentials::create(&self.pool, new, m).await
    }

    async fn device_credential_by_hash(
        &self,
        hash: &TokenHash,
    ) -> StoreResult<Option<DeviceCredential>> {
        credentials::by_hash(&self.pool, hash).await
    }

    async fn device_login(&self, hash: &TokenHash) -> StoreResult<Option<DeviceLogin>> {
        credentials::login_by_hash(&self.pool, hash).await
    }

    async fn device_credentials(&self, device: &DeviceId) -> StoreResult<Vec<DeviceCredential>> {
        credentials::list(&self.pool, device).await
    }

    async fn revoke_device_credential(
        &self,
        device: &DeviceId,
        id: &CredentialId,
        m: &Mutation,
    ) -> StoreResult<DeviceCredential> {
        credentials::revoke(&self.pool, device, id, m).await
    }

    async fn create_device_certificate(
        &self,
        new: &NewDeviceCertificate,
        m: &Mutation,
    ) -> StoreResult<DeviceCertificate> {
        certificates::create(&self.pool, new, m).await
    }

    async fn device_certificate_by_serial(
        &self,
        serial: &CertificateSerial,
    ) -> StoreResult<Option<DeviceCertificate>> {
        certificates::by_serial(&self.pool, serial).await
    }

    async fn device_certificates(&self, device: &DeviceId) -> StoreResult<Vec<DeviceCertificate>> {
        certificates::list(&self.pool, device).await
    }

    async fn expiring_device_certificates(
        &self,
        before: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<DeviceCertificate>> {
        certificates::expiring(&self.pool, before, limit.get()).await
    }

    async fn revoke_device_certificate(
        &self,
        device: &DeviceId,
        serial: &CertificateSerial,
        m: &Mutation,
    ) -> StoreResult<DeviceCertificate> {
        certificates::revoke(&self.pool, device, serial, m).await
    }

    async fn create_enrollment_group(
        &self,
        new: &NewEnrollmentGroup,
        m: &Mutation,
    ) -> StoreResult<EnrollmentGroup> {
        enrollment::create(&self.pool, new, m).await
    }

    async fn enrollment_group(
        &self,
        name: &EnrollmentGroupName,
    ) -> StoreResult<Option<EnrollmentGroup>> {
        enrollment::get(&self.pool, name).await
    }

    async fn list_enrollment_groups(
        &self,
        after: Option<&EnrollmentGroupName>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<EnrollmentGroup>> {
        enrollment::list(&self.pool, after, limit).await
    }

    async fn update_enrollment_group(
        &self,
        name: &EnrollmentGroupName,
        patch: &EnrollmentGroupPatch,
        m: &Mutation,
    ) -> StoreResult<EnrollmentGroup> {
        enrollment::update(&self.pool, name, patch, m).await
    }

    async fn delete_enrollment_group(
        &self,
        name: &EnrollmentGroupName,
        m: &Mutation,
    ) -> StoreResult<()> {
        enrollment::delete(&self.pool, name, m).await
    }

    async fn record_key_derivation(
        &self,
        name: &EnrollmentGroupName,
        devices: &[DeviceId],
        m: &Mutation,
    ) -> StoreResult<()> {
        enrollment::record_key_derivation(&self.pool, name, devices, m).await
    }

    async fn create_claim_codes(
        &self,
        name: &EnrollmentGroupName,
        codes: &[NewClaimCode],
        max_uses: u32,
        expires_at: Option<Timestamp>,
        m: &Mutation,
    ) -> StoreResult<Vec<ClaimCode>> {
        enrollment::create_claim_codes(&self.pool, name, codes, max_uses, expires_at, m).await
    }

    async fn claim_codes(&self, name: &EnrollmentGroupName) -> StoreResult<Vec<ClaimCode>> {
        enrollment::claim_codes(&self.pool, name).await
    }

    async fn register_device(
        &self,
        registration: &Registration,
        m: &Mutation,
    ) -> StoreResult<Result<Registered, RegistrationRefusal>> {
        enrollment::register(&self.pool, registration, m).await
    }

    async fn record_registration_refusal(
        &self,
        refusal: &RegistrationRefusalRecord,
        m: &Mutation,
    ) -> StoreResult<()> {
        enrollment::record_refusal(&self.pool, refusal, m).await
    }

    async fn record_presence_events(&self, events: &[PresenceEvent]) -> StoreResult<()> {
        presence::record(&self.pool, events).await
    }

    async fn presence(&self, device: &DeviceId) -> StoreResult<Option<Presence>> {
        presence::get(&self.pool, device).await
    }

    async fn connectivity_summary(&self) -> StoreResult<ConnectivitySummary> {
        presence::summary(&self.pool).await
    }

    async fn reset_presence(&self, at: Timestamp) -> StoreResult<u64> {
        presence::reset(&self.pool, at).await
    }

    async fn record_agent_reports(&self, reports: &[AgentReportUpdate]) -> StoreResult<()> {
        agent_reports::record(&self.pool, reports).await
    }

    async fn agent_report(&self, device: &DeviceId) -> StoreResult<Option<AgentReport>> {
        agent_reports::get(&self.pool, device).await
    }

    async fn mqtt_load(&self) -> StoreResult<MqttSnapshot> {
        mqtt::load(&self.pool).await
    }

    async fn mqtt_apply(&self, ops: &[MqttOp]) -> StoreResult<()> {
        mqtt::apply(&self.pool, ops).await
    }

    async fn create_command(
        &self,
        new: &NewCommand,
        idempotency_since: Timestamp,
        m: &Mutation,
    ) -> StoreResult<CreatedCommand> {
        commands::create(&self.pool, new, idempotency_since, m).await
    }

    async fn command(&self, device: &DeviceId, id: &CommandId) -> StoreResult<Option<Command>> {
        commands::read(&mut *self.pool.acquire().await.map_err(error::db)?, device, id).await
    }

    async fn list_commands(
        &self,
        device: &DeviceId,
        q: &CommandQuery,
    ) -> StoreResult<Page<Command>> {
        commands::list(&mut *self.pool.acquire().await.map_err(error::db)?, device, q).await
    }

    async fn pending_commands(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<Command>> {
        let limit = limit.get().min(store::MAX_PAGE_SIZE);
        commands::pending(&mut *self.pool.acquire().await.map_err(error::db)?, device, now, limit)
            .await
    }

    async fn advance_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        progress: &CommandProgress,
        at: Timestamp,
    ) -> StoreResult<CommandUpdate> {
        commands::advance(&self.pool, device, id, progress, at).await
    }

    async fn cancel_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        m: &Mutation,
    ) -> StoreResult<Command> {
        commands::cancel(&self.pool, device, id, m).await
    }

    async fn expire_commands(
        &self,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<Command>> {
        commands::expire(&self.pool, now, limit.get().min(store::MAX_PAGE_SIZE)).await
    }

    async fn prune_commands(&self, before: Timestamp, limit: NonZeroU32) -> StoreResult<u64> {
        commands::prune(&self.pool, before, limit.get()).await
    }

    async fn audit_records(&self, after: u64, limit: NonZeroU32) -> StoreResult<Vec<AuditRecord>> {
        audit::records(&self.pool, after, limit).await
    }

    async fn create_job(&self, spec: &JobSpec, m: &Mutation) -> StoreResult<Job> {
        jobs::create(&self.pool, spec, m).await
    }

    async fn job(&self, id: &JobId) -> StoreResult<Option<Job>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        jobs::get(&mut conn, id).await
    }

    async fn list_jobs(
        &self,
        state: Option<JobState>,
        after: Option<&JobId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<Job>> {
        jobs::list(&self.pool, state, after, limit).await
    }

    async fn job_executions(
        &self,
        job: &JobId,
        state: Option<ExecutionState>,
        after: Option<&DeviceId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<JobExecution>> {
        jobs::executions(&self.pool, job, state, after, limit).await
    }

    async fn device_job_executions(
        &self,
        device: &DeviceId,
        pending_only: bool,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::device_executions(&self.pool, device, pending_only).await
    }

    async fn start_next_executions(
        &self,
        job: &JobId,
        max: u32,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::start_next(&self.pool, job, max, now).await
    }

    async fn update_execution(
        &self,
        job: &JobId,
        device: &DeviceId,
        update: &ExecutionUpdate,
        now: Timestamp,
    ) -> StoreResult<ExecutionUpdated> {
        jobs::update_execution(&self.pool, job, device, update, now).await
    }

    async fn time_out_executions(
        &self,
        now: Timestamp,
        limit: NonZeroU32,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::time_out(&self.pool, now, limit).await
    }

    async fn set_job_state(&self, id: &JobId, action: JobAction, m: &Mutation) -> StoreResult<Job> {
        jobs::set_state(&self.pool, id, action, m).await
    }

    async fn add_job_executions_for(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::add_for(&self.pool, device, now).await
    }

    async fn remove_job_executions_for(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> StoreResult<Vec<JobExecution>> {
        jobs::remove_for(&self.pool, device, now).await
    }

    async fn preview_target(&self, target: &JobTarget, sample: u32) -> StoreResult<TargetPreview> {
        jobs::preview(&self.pool, Some(target), sample).await
    }

    async fn target_device_ids(
        &self,
        target: &JobTarget,
        after: Option<&DeviceId>,
        limit: NonZeroU32,
    ) -> StoreResult<Page<DeviceId>> {
        jobs::target_ids(&self.pool, target, after, limit).await
    }

    async fn device_twin(&self, id: &DeviceId) -> StoreResult<Option<DeviceTwin>> {
        twins::get(&mut *self.pool.acquire().await.map_err(db)?, id).await
    }

    async fn update_twin(
        &self,
        id: &DeviceId,
        update: &TwinUpdate,
        policy: &TwinPolicy,
        m: &Mutation,
    ) -> StoreResult<Result<TwinChange, TwinError>> {
        twins::update(&self.pool, id, update, policy, m).await
    }

    async fn report_twin(
        &self,
        id: &DeviceId,
        patch: &serde_json::Value,
        policy: &TwinPolicy,
        at: Timestamp,
    ) -> StoreResult<Result<TwinChange, TwinError>> {
        twins::report(&self.pool, id, patch, policy, at).await
    }

    async fn twin_history(
        &self,
        id: &DeviceId,
        q: &TwinHistoryQuery,
    ) -> StoreResult<Page<TwinHistoryEntry>> {
        twins::history(&self.pool, id, q).await
    }

    async fn sync_continuous_job(&self, job: &JobId, now: Timestamp) -> StoreResult<u64> {
        jobs::sync_continuous(&self.pool, job, now).await
    }

    // ---- configuration profiles ----

    async fn create_profile(
        &self,
        new: &domain::NewProfile,
        m: &Mutation,
    ) -> StoreResult<domain::ConfigProfile> {
        profiles::create(&self.pool, new, m).await
    }

    async fn profile(
        &self,
        name: &domain::ProfileName,
    ) -> StoreResult<Option<domain::ConfigProfile>> {
        profiles::get(&self.pool, name).await
    }

    async fn list_profiles(
        &self,
        q: &store::ProfileQuery,
    ) -> StoreResult<Page<domain::ConfigProfile>> {
        profiles::list(&self.pool, q).await
    }

    async fn update_profile(
        &self,
        name: &domain::ProfileName,
        patch: &domain::ProfilePatch,
        m: &Mutation,
    ) -> StoreResult<domain::ConfigProfile> {
        profiles::update(&self.pool, name, patch, m).await
    }

    async fn delete_profile(
        &self,
        name: &domain::ProfileName,
        expected_version: Option<u64>,
        m: &Mutation,
    ) -> StoreResult<()> {
        profiles::delete(&self.pool, name, expected_version, m).await
    }

    async fn desired_layers(&self, device: &Device) -> StoreResult<Vec<domain::twin::Layer>> {
        profiles::desired_layers(&self.pool, device).await
    }

    async fn preview_profile_target(
        &self,
        target: &domain::ProfileTarget,
        sample: u32,
    ) -> StoreResult<store::TargetPreview> {
        match target {
            domain::ProfileTarget::Fleet => jobs::preview(&self.pool, None, sample).await,
            domain::ProfileTarget::Group(g) => {
                jobs::preview(&self.pool, Some(&JobTarget::Group(g.clone())), sample).await
            }
        }
    }

    async fn recompute_pending(&self, id: &DeviceId) -> StoreResult<bool> {
        profiles::pending(&self.pool, id).await
    }

    async fn recompute_queue_len(&self) -> StoreResult<u64> {
        profiles::queue_len(&self.pool).await
    }

    async fn recompute_twins(
        &self,
        limit: NonZeroU32,
        policy: &TwinPolicy,
        at: Timestamp,
    ) -> StoreResult<store::Recomputed> {
        profiles::recompute(&self.pool, limit, policy, at).await
    }
}

/// Accepts only names that need no quoting anywhere (`CREATE SCHEMA`, `search_path`).
fn check_schema_name(name: &str) -> StoreResult<()> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_SCHEMA_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::backend(PostgresError::InvalidSchema(name.to_owned())))
    }
}

/// Creates `schema` over a one-off connection (the pool's connections already point into it).
async fn create_schema(
    connect: &PgConnectOptions,
    schema: &str,
    timeout: Duration,
) -> StoreResult<()> {
    let mut conn = tokio::time::timeout(timeout, PgConnection::connect_with(connect))
        .await
        .map_err(|_| StoreError::backend(PostgresError::ConnectTimeout(timeout)))?
        .map_err(db)?;
    // The name was checked by `check_schema_name`: lowercase letters, digits and underscores.
    let created = sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")))
        .execute(&mut conn)
        .await;
    match created {
        Ok(_) => {}
        // Two processes creating the same schema at once: one wins, the other sees the unique
        // violation on the catalog even with IF NOT EXISTS. Either way the schema now exists.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
        Err(e) => return Err(db(e)),
    }
    conn.close().await.map_err(db)?;
    Ok(())
}

/// The URL with the password of its user info replaced by `***`, for logs.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["herd", "_x", "herd_test_0123abcd", &"a".repeat(63)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Herd", "1x", "a-b", "a\"b", "a b", &"a".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let mut options =
            PostgresOptions::new("postgres://herd:s3cret@db:5432/herd?sslmode=require");
        options.schema = Some("herd".to_owned());
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://herd:***@db:5432/herd?sslmode=require"), "{shown}");
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_password("not a url"), "not a url");
    }
}

//! The API's configuration and the shared state handed to every handler.
//!
//! # Access-change events
//!
//! Some REST writes must end a device's live MQTT sessions: a PATCH (or an import line) that
//! moves a device to a state other than `active`, deleting a device, revoking one of its
//! credentials or certificates. The API does not know about MQTT; instead, when [`AppState::with_access_events`]
//! gave it a channel, it sends a [`DeviceAccessChange`] there for each such change, and whoever
//! holds the receiver (the server's MQTT gateway) closes the device's connections.
//!
//! - An event is sent only after the store committed the change, never for a failed or rolled
//!   back write (a request that answers with an error sends nothing).
//! - The channel is bounded and events are never dropped: the handler awaits room in the channel
//!   (`send().await`), so a slow receiver slows down the requests that revoke access rather than
//!   losing events. The response is sent after the event is queued.
//! - When the receiver is gone (the server is shutting down) the event is logged and the request
//!   still succeeds: the change is committed, and a reconnecting device is checked again anyway.
//! - An event may be sent for a device that had no live session, or that an import moved away from
//!   `active` and back within one batch; receivers treat events as "check this device again".
//! - Cancellation: when a client drops the connection after the commit but before the event is
//!   queued, the handler is cancelled and the event is lost; the device's session then survives
//!   until it reconnects, when the gateway checks its state and credential again.

use std::fmt;
use std::sync::Arc;

use domain::{
    AccessChangeReason, Actor, ApiToken, DeviceAccessChange, DeviceId, DeviceNotice, Mutation,
    Timestamp, TwinPolicy,
};
use metrics_exporter_prometheus::PrometheusHandle;
use store::Store;

use crate::error::ApiError;
use tokio::sync::{Notify, mpsc};

use crate::CertificateIssuer;
use crate::commands::CommandDispatcher;
use crate::provisioning::{FailureLimiter, Provisioner};
use crate::secrets::SecretBox;

/// The wall clock the API reads: token expiry checks and the time of every write.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Limits of the HTTP surface. Every field has a default ([`ApiConfig::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest JSON request body, in bytes (default 1 MiB). A larger body is refused with 413
    /// `payload_too_large` before it is parsed. The import route is exempt: it streams its body
    /// and is bounded by [`ApiConfig::max_import_bytes`]. Also the longest single JSON Lines line
    /// or CSV record an import accepts; a longer one is rejected as a line, not as a request.
    pub max_body_bytes: usize,
    /// Largest import body, in bytes (default 1 GiB). The body is counted as it streams in; when
    /// it passes the limit the request ends with 413 `payload_too_large`. In best-effort mode the
    /// batches committed before that point stay committed; an atomic import writes nothing.
    pub max_import_bytes: u64,
    /// How many valid rows a best-effort import writes per store transaction (default 1000;
    /// 0 counts as 1). Larger batches import faster and hold the store's writer longer.
    pub import_batch_size: usize,
    /// Most rows an atomic import (`atomic=true`) may hold (default 1,000,000): they are kept in
    /// memory and written in one transaction. One row more ends the request with 413
    /// `import_too_large` and nothing is written.
    pub max_atomic_import_rows: usize,
    /// Largest `attributes` object of one device, in bytes of compact JSON (default 16 KiB).
    /// Larger attributes are refused with 422 `validation_failed` (a rejected line in an import).
    pub max_attributes_bytes: usize,
    /// Page size of list endpoints when the request gives no `limit` (default 100). Values
    /// outside 1..=1000 are clamped into that range.
    pub default_page_size: u32,
    /// Most claim codes one `POST /api/v1/enrollment-groups/{name}/claim-codes` makes (default
    /// 1000); a larger `count` is 422 `validation_failed`.
    pub max_claim_codes_per_request: u32,
    /// Most device keys one `POST /api/v1/enrollment-groups/{name}/derive-keys` derives (default
    /// 1000); more `device_ids` is 422 `validation_failed`.
    pub max_derived_keys_per_request: usize,
    /// How far ahead a registration proof's `expires_at` may lie, in seconds (default 3600).
    /// A proof valid for longer is refused as 401 `invalid_proof`: a captured proof is useless
    /// once it expires.
    pub provisioning_max_proof_lifetime_secs: u64,
    /// Failed registrations (wrong proof, refused) allowed per registration id and per client IP
    /// address in a minute (default 10); further attempts in that minute are refused with 429
    /// `too_many_attempts` and `Retry-After`, without checking their proof.
    pub provisioning_max_failures_per_minute: u32,
    /// Most registration ids and client addresses whose failures are counted at once (default
    /// 10,000). When full, counts whose minute is over are dropped first, then the oldest.
    pub provisioning_max_tracked_clients: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_import_bytes: 1024 * 1024 * 1024,
            import_batch_size: 1000,
            max_atomic_import_rows: 1_000_000,
            max_attributes_bytes: 16 * 1024,
            default_page_size: 100,
            max_claim_codes_per_request: 1000,
            max_derived_keys_per_request: 1000,
            provisioning_max_proof_lifetime_secs: 3600,
            provisioning_max_failures_per_minute: 10,
            provisioning_max_tracked_clients: 10_000,
        }
    }
}

impl ApiConfig {
    /// The default page size, clamped into the range the store accepts.
    pub(crate) fn page_size(&self) -> u32 {
        self.default_page_size.clamp(1, store::MAX_PAGE_SIZE)
    }
}

/// The handles every handler shares. Cloning is cheap: every field is an [`Arc`].
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn Store>,
    config: Arc<ApiConfig>,
    clock: Clock,
    metrics: Option<PrometheusHandle>,
    /// Where access-change events go (see the module docs); `None`: nowhere.
    access_events: Option<mpsc::Sender<DeviceAccessChange>>,
    /// What signs device certificates; `None`: issuing answers 503 `ca_unavailable`.
    certificate_issuer: Option<Arc<dyn CertificateIssuer>>,
    /// Where messages to devices go (the MQTT gateway); `None`: requests that send one answer
    /// 503 `gateway_unavailable`.
    device_notices: Option<mpsc::Sender<DeviceNotice>>,
    /// What reaches devices with commands; `None`: creating a command answers 503
    /// `gateway_unavailable`.
    command_dispatcher: Option<Arc<dyn CommandDispatcher>>,
    /// What seals enrollment group keys; `None`: symmetric-key enrollment answers 503
    /// `secrets_unavailable`.
    secret_box: Option<Arc<SecretBox>>,
    /// Failed registration attempts, shared by every request.
    provisioning_failures: Arc<FailureLimiter>,
    /// Limits and history retention of device twins.
    twin_policy: TwinPolicy,
    /// Where the ids of devices whose effective desired state changed go (the server pushes it
    /// to them); `None`: nowhere. See `twins` for the overload policy.
    twin_changes: Option<mpsc::Sender<DeviceId>>,
    /// Wakes the server's recompute task after a committed change that can put devices on the
    /// durable recompute queue (configuration profiles, device tags/name/state, group members and
    /// filters); `None`: nobody to wake (the queue waits for its drainer's next tick).
    recompute_wake: Option<Arc<Notify>>,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("metrics", &self.metrics.is_some())
            .field("access_events", &self.access_events.is_some())
            .field("certificate_issuer", &self.certificate_issuer.is_some())
            .field("device_notices", &self.device_notices.is_some())
            .field("command_dispatcher", &self.command_dispatcher.is_some())
            .field("secret_box", &self.secret_box.is_some())
            .field("twin_policy", &self.twin_policy)
            .field("twin_changes", &self.twin_changes.is_some())
            .field("recompute_wake", &self.recompute_wake.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over a store with the given limits, the system clock and no metrics endpoint.
    pub fn new(store: Arc<dyn Store>, config: ApiConfig) -> Self {
        let provisioning_failures = Arc::new(FailureLimiter::new(
            config.provisioning_max_failures_per_minute,
            config.provisioning_max_tracked_clients,
        ));
        Self {
            store,
            config: Arc::new(config),
            clock: Arc::new(Timestamp::now),
            metrics: None,
            access_events: None,
            certificate_issuer: None,
            device_notices: None,
            command_dispatcher: None,
            secret_box: None,
            provisioning_failures,
            twin_policy: TwinPolicy::default(),
            twin_changes: None,
            recompute_wake: None,
        }
    }

    /// Checks twin changes against `policy` (size limits, history kept per device) instead of
    /// [`TwinPolicy::default`].
    #[must_use]
    pub fn with_twin_policy(mut self, policy: TwinPolicy) -> Self {
        self.twin_policy = policy;
        self
    }

    /// Sends the id of every device whose effective desired state a request changed to `tx`,
    /// after the commit, so that the server pushes it to the device. A full channel holds the
    /// request until there is room; without it nothing is sent.
    #[must_use]
    pub fn with_twin_changes(mut self, tx: mpsc::Sender<DeviceId>) -> Self {
        self.twin_changes = Some(tx);
        self
    }

    /// Calls `wake.notify_one()` after every committed change that can queue devices for a
    /// recompute of their effective desired state (see `Store::recompute_twins`), so that the
    /// server's recompute task drains the queue now instead of at its next tick. The queue itself
    /// is durable and filled by the store in the change's transaction: the wake only shortens the
    /// wait, and a lost one costs at most one tick.
    #[must_use]
    pub fn with_recompute_wake(mut self, wake: Arc<Notify>) -> Self {
        self.recompute_wake = Some(wake);
        self
    }

    /// Wakes the recompute task, if there is one (after a commit that may have queued devices).
    pub(crate) fn wake_recompute(&self) {
        if let Some(wake) = &self.recompute_wake {
            wake.notify_one();
        }
    }

    pub(crate) fn twin_policy(&self) -> &TwinPolicy {
        &self.twin_policy
    }

    /// Reports that `device_id`'s effective desired state changed, after the commit. Waits for
    /// room in the channel; logs and carries on when its receiver is gone.
    pub(crate) async fn twin_changed(&self, device_id: DeviceId) {
        let Some(tx) = &self.twin_changes else { return };
        if let Err(e) = tx.send(device_id).await {
            tracing::warn!(device_id = %e.0, "twin change not delivered: its receiver is gone");
        }
    }

    /// Serves `GET /metrics` from this Prometheus handle (without one it answers 404).
    #[must_use]
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Replaces the system clock, so tests control token expiry and write times.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> Timestamp + Send + Sync>) -> Self {
        self.clock = clock;
        self
    }

    /// Sends a [`DeviceAccessChange`] to `tx` after every committed write that must end a
    /// device's live sessions (see the module docs for when, and for the overload policy: a full
    /// channel makes those requests wait, it never loses events). Without it no events are sent.
    #[must_use]
    pub fn with_access_events(mut self, tx: mpsc::Sender<DeviceAccessChange>) -> Self {
        self.access_events = Some(tx);
        self
    }

    /// Issues device certificates (`POST /api/v1/devices/{id}/certificates`) with `issuer`.
    /// Without it that route answers 503 `ca_unavailable`.
    #[must_use]
    pub fn with_certificate_issuer(mut self, issuer: Arc<dyn CertificateIssuer>) -> Self {
        self.certificate_issuer = Some(issuer);
        self
    }

    /// Sends messages to devices (such as a request to renew a credential) through `notices`,
    /// which the MQTT gateway publishes. A full channel holds the request until there is room.
    #[must_use]
    pub fn with_device_notices(mut self, notices: mpsc::Sender<DeviceNotice>) -> Self {
        self.device_notices = Some(notices);
        self
    }

    /// Delivers direct commands to devices and wakes synchronous requests through `dispatcher`
    /// (the server's MQTT side). Without it creating a command answers 503 `gateway_unavailable`.
    #[must_use]
    pub fn with_command_dispatcher(mut self, dispatcher: Arc<dyn CommandDispatcher>) -> Self {
        self.command_dispatcher = Some(dispatcher);
        self
    }

    pub(crate) fn command_dispatcher(&self) -> Option<&dyn CommandDispatcher> {
        self.command_dispatcher.as_deref()
    }

    /// Hands `notice` to the MQTT gateway.
    pub(crate) async fn notify(&self, notice: DeviceNotice) -> Result<(), ApiError> {
        let tx = self.device_notices.as_ref().ok_or(ApiError::GatewayUnavailable)?;
        tx.send(notice).await.map_err(|_| ApiError::GatewayUnavailable)
    }

    /// Seals and opens enrollment group keys with `secret_box` (the server's master key).
    /// Without it, creating or using a symmetric-key enrollment group answers 503
    /// `secrets_unavailable`.
    #[must_use]
    pub fn with_secret_box(mut self, secret_box: Arc<SecretBox>) -> Self {
        self.secret_box = Some(secret_box);
        self
    }

    /// The provisioning logic over this state's store, secrets, CA, clock and access-change
    /// channel, sharing its failure counts: what `POST /provision/v1/register` calls, and what
    /// other transports (MQTT) can call.
    pub fn provisioner(&self) -> Provisioner {
        Provisioner::new(
            Arc::clone(&self.store),
            &self.config,
            Arc::clone(&self.clock),
            self.secret_box.clone(),
            self.certificate_issuer.clone(),
            self.access_events.clone(),
            Arc::clone(&self.provisioning_failures),
        )
        .with_recompute_wake(self.recompute_wake.clone())
    }

    pub(crate) fn secret_box(&self) -> Option<&SecretBox> {
        self.secret_box.as_deref()
    }

    /// Reports that `device_id` lost (some of) its access, after the change was committed.
    /// Waits for room in the channel; logs and carries on when its receiver is gone.
    pub(crate) async fn access_changed(&self, device_id: DeviceId, reason: AccessChangeReason) {
        let Some(tx) = &self.access_events else { return };
        if let Err(e) = tx.send(DeviceAccessChange { device_id, reason }).await {
            tracing::warn!(
                device_id = %e.0.device_id,
                reason = ?e.0.reason,
                "access change not delivered: its receiver is gone"
            );
        }
    }

    pub(crate) fn certificate_issuer(&self) -> Option<&dyn CertificateIssuer> {
        self.certificate_issuer.as_deref()
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub(crate) fn config(&self) -> &ApiConfig {
        &self.config
    }

    pub(crate) fn metrics(&self) -> Option<&PrometheusHandle> {
        self.metrics.as_ref()
    }

    /// The current time by the configured clock.
    pub(crate) fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The context of a write made by the holder of `token`, now.
    pub(crate) fn mutation_by(&self, token: &ApiToken) -> Mutation {
        Mutation {
            actor: Actor { token_id: Some(token.id.clone()), name: token.name.clone() },
            at: self.now(),
        }
    }
}

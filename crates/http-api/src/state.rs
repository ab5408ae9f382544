//! The API's configuration and the shared state handed to every handler.

use std::fmt;
use std::sync::Arc;

use domain::{Actor, ApiToken, Mutation, Timestamp};
use metrics_exporter_prometheus::PrometheusHandle;
use store::Store;

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
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over a store with the given limits, the system clock and no metrics endpoint.
    pub fn new(store: Arc<dyn Store>, config: ApiConfig) -> Self {
        Self { store, config: Arc::new(config), clock: Arc::new(Timestamp::now), metrics: None }
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

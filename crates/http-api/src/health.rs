//! Unauthenticated probes for orchestrators and scrapers: liveness, readiness and Prometheus
//! metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::{ApiError, Problem};

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")),
)]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match state.store().ping().await {
        Ok(()) => Ok("ok"),
        Err(e) => {
            tracing::warn!(error = %e, backend = state.store().backend_name(), "store is not ready");
            Err(ApiError::StoreUnavailable)
        }
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are not enabled", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let handle = state.metrics().ok_or(ApiError::MetricsDisabled)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()))
}

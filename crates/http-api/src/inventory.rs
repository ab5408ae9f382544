//! `/api/v1/inventory`: fleet-wide counts (lifecycle states, MQTT connectivity).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use domain::LifecycleState;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Viewer};
use crate::error::ApiError;

/// How many devices there are, in total and per lifecycle state.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InventorySummary {
    /// All devices.
    total: u64,
    /// Devices per state; every state is present, with 0 when it has none.
    #[schema(example = json!({"registered": 3, "active": 10, "suspended": 0, "decommissioned": 1, "retired": 0}))]
    by_state: BTreeMap<String, u64>,
}

/// Count devices per lifecycle state.
#[utoipa::path(
    get,
    path = "/api/v1/inventory/summary",
    tag = "devices",
    security(("bearer" = ["viewer"])),
    responses((status = 200, description = "The counts", body = InventorySummary)),
)]
pub(crate) async fn summary(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
) -> Result<Json<InventorySummary>, ApiError> {
    let counts = state.store().count_devices_by_state().await?;
    let mut by_state: BTreeMap<String, u64> =
        LifecycleState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
    for (s, n) in counts.0 {
        *by_state.entry(s.as_str().to_owned()).or_default() += n;
    }
    let total = by_state.values().sum();
    Ok(Json(InventorySummary { total, by_state }))
}

/// How many devices are connected over MQTT now, have ever connected, and exist.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConnectivitySummary {
    /// Devices with an open MQTT connection now.
    connected: u64,
    /// Devices that have connected at least once.
    ever_connected: u64,
    /// All devices.
    total: u64,
}

/// Count connected devices.
#[utoipa::path(
    get,
    path = "/api/v1/inventory/connectivity",
    tag = "devices",
    security(("bearer" = ["viewer"])),
    responses((status = 200, description = "The counts", body = ConnectivitySummary)),
)]
pub(crate) async fn connectivity(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
) -> Result<Json<ConnectivitySummary>, ApiError> {
    let summary = state.store().connectivity_summary().await?;
    let counts = state.store().count_devices_by_state().await?;
    let total = counts.0.iter().map(|(_, n)| n).sum();
    Ok(Json(ConnectivitySummary {
        connected: summary.connected,
        ever_connected: summary.ever_connected,
        total,
    }))
}

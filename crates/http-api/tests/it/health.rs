//! Probes and metrics: liveness, readiness, the Prometheus endpoint and its request metrics.

use std::sync::OnceLock;

use http_api::ApiConfig;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::api::TestApi;

/// The process-wide recorder: the `metrics` facade has one global recorder, so every test that
/// looks at metrics shares it.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new().install_recorder().expect("install the metrics recorder")
        })
        .clone()
}

#[tokio::test]
async fn liveness_and_readiness_need_no_token() {
    let api = TestApi::new().await;
    let resp = api.get("/healthz").no_auth().send().await.assert_status(200);
    assert_eq!(resp.text(), "ok");
    let resp = api.get("/readyz").no_auth().send().await.assert_status(200);
    assert_eq!(resp.text(), "ok");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let handle = metrics_handle();
    let api = TestApi::build(ApiConfig::default(), |s| s.with_metrics(handle)).await;
    api.get("/api/v1/devices/metrics-probe-1").send().await.assert_problem(404, "device_not_found");
    api.get("/api/v1/devices/metrics-probe-2").send().await.assert_problem(404, "device_not_found");
    api.get("/no/such/route").send().await.assert_problem(404, "not_found");
    let resp = api.get("/metrics").no_auth().send().await.assert_status(200);
    assert!(resp.header("content-type").unwrap().starts_with("text/plain"));
    let text = resp.text();
    let counter = text
        .lines()
        .find(|l| {
            l.starts_with("herd_http_requests_total{")
                && l.contains("route=\"/api/v1/devices/{id}\"")
                && l.contains("status=\"404\"")
                && l.contains("method=\"GET\"")
        })
        .unwrap_or_else(|| panic!("no counter for the device route in:\n{text}"));
    let count: u64 = counter.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2, "{counter}");
    assert!(!text.contains("metrics-probe"), "raw paths never become labels");
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(text.contains("herd_http_request_duration_seconds"), "{text}");
}

//! The per-request middleware: a tracing span carrying the request id, the request metrics, and
//! the rendering of error responses as problem+json with that request id.
//!
//! Metrics, through the `metrics` facade (the server installs the recorder):
//! - `herd_http_requests_total{method,route,status}`: a counter of finished requests;
//! - `herd_http_request_duration_seconds{method,route}`: a histogram of their durations.
//!
//! `route` is the matched path template (`/api/v1/devices/{id}`), never the raw path, so the
//! label set stays bounded; requests that match no route are counted as `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::{PROBLEM_JSON, ProblemParts};

/// The header carrying the request id (set by `SetRequestIdLayer` before this middleware runs).
const REQUEST_ID: &str = "x-request-id";

/// Runs one request inside its span, records its metrics and renders error bodies.
pub(crate) async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let request_id =
        req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let span = tracing::info_span!(
        "http_request",
        method = %method,
        path = %req.uri().path(),
        request_id = %request_id,
        token_id = tracing::field::Empty,
    );

    let mut response = next.run(req).instrument(span.clone()).await;

    if let Some(parts) = response.extensions_mut().remove::<ProblemParts>() {
        response = parts.render(&request_id);
    } else if (response.status().is_client_error() || response.status().is_server_error())
        && !is_problem(&response)
    {
        // A layer answered on its own (Swagger UI, a body limit); give it the same shape.
        response = ProblemParts::for_status(response.status()).render(&request_id);
    }

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(status, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "request finished");
    });
    let method = method.as_str().to_owned();
    metrics::counter!(
        "herd_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string(),
    )
    .increment(1);
    metrics::histogram!(
        "herd_http_request_duration_seconds",
        "method" => method,
        "route" => route,
    )
    .record(elapsed.as_secs_f64());
    response
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON))
}

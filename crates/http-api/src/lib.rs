//! Herd's REST API: routes, request and response DTOs, authentication, problem+json errors and
//! the OpenAPI document, as one [`axum::Router`].
//!
//! - [`ApiConfig`] holds the limits of the HTTP surface; [`AppState`] is the cheap-to-clone bundle
//!   of handles (the [`store::Store`], the config, the clock, the metrics handle, the optional
//!   access-change channel and [`CertificateIssuer`]) every handler receives.
//! - [`router`] builds the whole surface: health and metrics endpoints, the `/api/v1` resources
//!   (one module each: `devices`, `replacement`, `credentials`, `certificates`, `twins`, `inventory`, `import`, `groups`, `tokens`,
//!   `audit`, `enrollment`, `commands`, `jobs`, `profiles`), the device-facing `POST /provision/v1/register` (`provisioning`, no
//!   operator token), the OpenAPI document and Swagger UI.
//! - [`CommandDispatcher`] is what the server lends the API to reach devices with direct commands
//!   ([`AppState::with_command_dispatcher`]); [`CommandWaiters`] holds the requests waiting for a
//!   command's answer.
//! - [`Provisioner`] is zero-touch provisioning without HTTP, for any transport; [`SecretBox`]
//!   (module [`secrets`]) seals enrollment secrets with the server's master key
//!   ([`AppState::with_secret_box`]).
//! - Every failure is one `ApiError` (module `error`) that renders as `application/problem+json`
//!   with a stable `code`; the request middleware (module `instrument`) gives each request an id,
//!   a tracing span and metrics, and fills the request id into problem bodies.
//! - [`auth`] turns a bearer token into a caller with a [`domain::Role`]; handlers state the role
//!   they need in their signature.
//! - [`openapi`] and [`openapi_json`] expose the generated OpenAPI 3.1 document, which is also
//!   committed as `docs/openapi.json` and checked by a test.

pub mod auth;

mod audit;
mod certificates;
mod commands;
mod credentials;
mod devices;
mod enrollment;
mod error;
mod extract;
mod groups;
mod health;
mod import;
mod instrument;
mod inventory;
mod jobs;
mod openapi_doc;
mod paging;
mod profiles;
mod provisioning;
mod replacement;
mod rotation;
pub mod secrets;
mod state;
mod tokens;
mod twins;

pub use certificates::{CertificateIssuer, IssueError, IssuedCertificate};
pub use commands::{
    CommandDispatcher, CommandLimits, CommandWait, CommandWaiters, DispatchError,
    IDEMPOTENCY_KEY_HEADER,
};
pub use provisioning::{
    FailureLimiter, Proof, ProvisionError, Provisioned, Provisioner, RegisterRequest,
};
pub use secrets::SecretBox;
pub use state::{ApiConfig, AppState, Clock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/openapi.json";
/// Where Swagger UI is served.
pub const DOCS_PATH: &str = "/api/docs";

/// Builds the whole HTTP surface on `state`.
///
/// Layers, outermost first: request id (taken from `x-request-id` or generated, and echoed on
/// the response), the per-request span, metrics and problem rendering, then the default body
/// limit ([`ApiConfig::max_body_bytes`]; the import route streams its body and has its own limit).
/// Unknown paths answer 404 `not_found`, known paths with another method 405
/// `method_not_allowed`, both as problem+json.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] plus `extra`: routes the server owns (MQTT over WebSocket at `/mqtt`), served
/// inside the same layers (request id, span, metrics, problem+json for error statuses). They are
/// not in the OpenAPI document and take no bearer token unless they check one themselves.
///
/// # Panics
/// When `extra` has a fallback or a path this router already serves.
pub fn router_with(state: AppState, extra: Router) -> Router {
    let (api, doc) = routes();
    let max_body = state.config().max_body_bytes;
    api.merge(SwaggerUi::new(DOCS_PATH).url(OPENAPI_PATH, doc))
        .merge(extra.with_state::<AppState>(()))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(instrument::observe))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The OpenAPI 3.1 document of every route [`router`] serves (Swagger UI itself excepted).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// [`openapi`] as pretty-printed JSON: the document served at [`OPENAPI_PATH`], in the form
/// committed as `docs/openapi.json`.
pub fn openapi_json() -> String {
    openapi().to_pretty_json().expect("an OpenAPI document always serializes to JSON")
}

/// Every documented route, each registered together with its OpenAPI operation so the two
/// cannot drift apart, and the finished document.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(openapi_doc::base())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(devices::create_device, devices::list_devices))
        .routes(routes!(devices::get_device, devices::update_device, devices::delete_device))
        .routes(routes!(replacement::replace_device))
        .routes(routes!(twins::get_twin, twins::patch_twin))
        .routes(routes!(twins::twin_history))
        .routes(routes!(profiles::effective_twin))
        .routes(routes!(credentials::create_credential, credentials::list_credentials))
        .routes(routes!(credentials::revoke_credential))
        .routes(routes!(certificates::create_certificate, certificates::list_certificates))
        .routes(routes!(certificates::revoke_certificate))
        .routes(routes!(certificates::expiring_certificates))
        .routes(routes!(rotation::rotate_device))
        .routes(routes!(rotation::rotate_group))
        .routes(routes!(commands::create_command, commands::list_commands))
        .routes(routes!(commands::get_command))
        .routes(routes!(commands::cancel_command))
        .routes(routes!(import::import_devices))
        .routes(routes!(inventory::summary))
        .routes(routes!(inventory::connectivity))
        .routes(routes!(groups::create_group, groups::list_groups))
        .routes(routes!(groups::get_group, groups::update_group, groups::delete_group))
        .routes(routes!(groups::group_devices))
        .routes(routes!(groups::add_members))
        .routes(routes!(groups::remove_member))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(tokens::whoami))
        .routes(routes!(audit::list_audit))
        .routes(routes!(enrollment::create_enrollment_group, enrollment::list_enrollment_groups))
        .routes(routes!(
            enrollment::get_enrollment_group,
            enrollment::update_enrollment_group,
            enrollment::delete_enrollment_group
        ))
        .routes(routes!(enrollment::derive_key))
        .routes(routes!(enrollment::derive_keys))
        .routes(routes!(enrollment::create_claim_codes, enrollment::list_claim_codes))
        .routes(routes!(provisioning::register))
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::job_executions))
        .routes(routes!(jobs::pause_job))
        .routes(routes!(jobs::resume_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::device_jobs))
        .routes(routes!(profiles::create_profile, profiles::list_profiles))
        .routes(routes!(profiles::get_profile, profiles::update_profile, profiles::delete_profile))
        .split_for_parts();
    (router, openapi_doc::finish(doc))
}

/// An `application/problem+json` error response with a stable `code`, for routes given to
/// [`router_with`]; the request middleware fills in the request id.
pub fn problem(
    status: axum::http::StatusCode,
    code: &'static str,
    detail: impl Into<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let parts = error::ProblemParts {
        status,
        code,
        detail: detail.into(),
        retry_after: None,
        extensions: None,
    };
    let mut response = status.into_response();
    response.extensions_mut().insert(parts);
    response
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

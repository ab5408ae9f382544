//! `ApiError`, the one place where a failure gets its HTTP status and stable `code`, and the
//! `application/problem+json` body (RFC 9457) every error response carries.
//!
//! Handlers return `ApiError`; its `IntoResponse` attaches a [`ProblemParts`] to the response and
//! the request middleware (`instrument::observe`) renders it with the request id, which only the
//! middleware knows. Internal errors are logged here in full, inside the request's span; the
//! client only ever sees the generic `internal` problem.

use std::error::Error as StdError;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{FilterError, InvalidInput, ReplacementError, Role};
use serde::Serialize;
use store::StoreError;
use utoipa::ToSchema;

/// The media type of every error body.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// Every way a request can fail, each with its status and stable code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// No usable bearer token: missing, malformed, unknown, revoked or expired.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The token's role is below what the route needs.
    #[error("this operation needs the {needed} role")]
    Forbidden { needed: Role },
    /// No route has this path.
    #[error("no such route")]
    RouteNotFound,
    /// The path exists but not with this method.
    #[error("the route does not allow this method")]
    MethodNotAllowed,
    /// `/metrics` was asked for but the server runs without a metrics recorder.
    #[error("metrics are not enabled on this server")]
    MetricsDisabled,
    /// The body is not JSON at all.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON but not of the expected shape (wrong type, missing field).
    #[error("the body does not match the expected shape: {0}")]
    InvalidBody(String),
    /// The body holds a field the endpoint does not know.
    #[error("{0}")]
    UnknownField(String),
    /// A device id in the body or path breaks the id rules.
    #[error("{0}")]
    InvalidDeviceId(String),
    /// A filter expression does not parse.
    #[error("{0}")]
    InvalidFilter(String),
    /// A `cursor` is not one this server handed out.
    #[error("the cursor is not valid; pass next_cursor from the previous page unchanged")]
    InvalidCursor,
    /// The query string has an unknown, repeated or unparsable parameter.
    #[error("{0}")]
    InvalidQuery(String),
    /// An import's CSV header row is missing or names unknown columns.
    #[error("{0}")]
    InvalidCsvHeader(String),
    /// The input is well-formed but breaks a rule (tags, attributes, state, role, …).
    #[error("{0}")]
    ValidationFailed(String),
    /// The body is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// An atomic import holds more rows than the configured limit.
    #[error("{0}")]
    ImportTooLarge(String),
    /// The body's content type is missing or not one this route accepts.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The lifecycle does not allow the requested state change.
    #[error("{0}")]
    IllegalTransition(String),
    /// `If-Match` names another version than the current one.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A twin merge patch that is not a JSON object.
    #[error("{0}")]
    InvalidPatch(String),
    /// A twin section would pass its size or depth limit.
    #[error("{0}")]
    TwinTooLarge(String),
    /// No device with this id.
    #[error("device {0} not found")]
    DeviceNotFound(String),
    /// No group with this name.
    #[error("group {0} not found")]
    GroupNotFound(String),
    /// No token with this id.
    #[error("token {0} not found")]
    TokenNotFound(String),
    /// The device has no credential with this id.
    #[error("credential {0} not found")]
    CredentialNotFound(String),
    /// The device has no certificate with this serial.
    #[error("certificate {0} not found")]
    CertificateNotFound(String),
    /// A certificate signing request is unusable (the reason is shown).
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The server has no CA to issue certificates with.
    #[error("this server has no certificate authority to issue certificates with")]
    CaUnavailable,
    /// The server cannot send messages to devices (no MQTT gateway).
    #[error("this server cannot send messages to devices now")]
    GatewayUnavailable,
    /// A device with this id exists already.
    #[error("device {0} already exists")]
    DeviceExists(String),
    /// A group with this name exists already.
    #[error("group {0} already exists")]
    GroupExists(String),
    /// A device replacement names the device itself as its successor.
    #[error("{0}")]
    ReplaceSameDevice(String),
    /// The device to replace is retired already.
    #[error("{0}")]
    DeviceRetired(String),
    /// The successor of a replacement is decommissioned or retired.
    #[error("{0}")]
    SuccessorOutOfService(String),
    /// The successor of a replacement replaced another device already.
    #[error("{0}")]
    SuccessorAlreadyReplaces(String),
    /// The request conflicts with the resource's nature (members of a dynamic group, …).
    #[error("{0}")]
    Conflict(String),
    /// No enrollment group with this name.
    #[error("enrollment group {0} not found")]
    EnrollmentGroupNotFound(String),
    /// An enrollment group with this name exists already.
    #[error("enrollment group {0} already exists")]
    EnrollmentGroupExists(String),
    /// The server has no master key to seal or open enrollment secrets with.
    #[error("this server has no master key for enrollment secrets")]
    SecretsUnavailable,
    /// A registration's proof is wrong, does not fit the group, or names no group.
    #[error("the registration proof is not valid")]
    InvalidProof,
    /// The enrollment group is disabled.
    #[error("enrollment through this group is disabled")]
    EnrollmentDisabled,
    /// The enrollment group has expired.
    #[error("enrollment through this group has expired")]
    EnrollmentExpired,
    /// The claim code has enrolled as many devices as it may.
    #[error("the claim code has been used up")]
    ClaimCodeExhausted,
    /// The claim code has expired.
    #[error("the claim code has expired")]
    ClaimCodeExpired,
    /// The device exists and was not enrolled this way.
    #[error("{0}")]
    DeviceConflict(String),
    /// Too many failed registration attempts from this client or for this registration id.
    #[error("too many failed attempts; retry after {retry_after_secs} s")]
    TooManyAttempts {
        /// Seconds until attempts are counted afresh (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// The device has no command with this id.
    #[error("command {0} not found")]
    CommandNotFound(String),
    /// A command without a delivery window (`ttl_secs` 0) for a device that is not connected.
    #[error("{0}")]
    DeviceOffline(String),
    /// A synchronous command ended without the device's answer: `timed_out` (408
    /// `command_timed_out`), `expired` (408 `command_expired`), `canceled` (409
    /// `command_canceled`), or is still `queued`/`delivered` when the wait ends (408
    /// `command_timed_out`). The command's members are added to the problem.
    #[error("{detail}")]
    CommandUnanswered {
        /// The command's state.
        state: domain::CommandState,
        /// Why, for people.
        detail: String,
        /// The command as the API shows it (a JSON object).
        command: Box<serde_json::Map<String, serde_json::Value>>,
    },
    /// As many synchronous command waits as `commands.max_sync_waits` are in progress.
    #[error("too many synchronous command waits are in progress; retry, or send without wait")]
    TooManyWaits,
    /// The store does not answer (`/readyz`).
    #[error("the store is not available")]
    StoreUnavailable,
    /// No job with this id.
    #[error("job {0} not found")]
    JobNotFound(String),
    /// A job with this id exists already.
    #[error("job {0} already exists")]
    JobExists(String),
    /// A job spec breaks the rules (the reason is shown).
    #[error("invalid job spec: {0}")]
    InvalidJobSpec(String),
    /// The job's state does not allow the action.
    #[error("{0}")]
    IllegalJobTransition(String),
    /// No configuration profile with this name.
    #[error("configuration profile {0} not found")]
    ProfileNotFound(String),
    /// A configuration profile with this name exists already.
    #[error("configuration profile {0} already exists")]
    ProfileExists(String),
    /// A bug or a backend failure. Logged in full; the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(Box<dyn StdError + Send + Sync>),
}

impl ApiError {
    /// Wraps any error as an internal one.
    pub(crate) fn internal(e: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }

    /// The HTTP status of this error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) | Self::InvalidProof => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. }
            | Self::EnrollmentDisabled
            | Self::EnrollmentExpired
            | Self::ClaimCodeExhausted
            | Self::ClaimCodeExpired => StatusCode::FORBIDDEN,
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::CommandUnanswered { state: domain::CommandState::Canceled, .. } => {
                StatusCode::CONFLICT
            }
            Self::CommandUnanswered { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::EnrollmentGroupNotFound(_)
            | Self::RouteNotFound
            | Self::MetricsDisabled
            | Self::DeviceNotFound(_)
            | Self::GroupNotFound(_)
            | Self::TokenNotFound(_)
            | Self::CredentialNotFound(_)
            | Self::CertificateNotFound(_)
            | Self::CommandNotFound(_) => StatusCode::NOT_FOUND,
            Self::JobNotFound(_) | Self::ProfileNotFound(_) => StatusCode::NOT_FOUND,
            Self::JobExists(_) | Self::IllegalJobTransition(_) | Self::ProfileExists(_) => {
                StatusCode::CONFLICT
            }
            Self::InvalidJobSpec(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::MalformedJson(_)
            | Self::InvalidBody(_)
            | Self::UnknownField(_)
            | Self::InvalidDeviceId(_)
            | Self::InvalidFilter(_)
            | Self::InvalidCursor
            | Self::InvalidQuery(_)
            | Self::InvalidCsvHeader(_)
            | Self::InvalidCsr(_)
            | Self::InvalidPatch(_) => StatusCode::BAD_REQUEST,
            Self::ValidationFailed(_) | Self::ReplaceSameDevice(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::PayloadTooLarge(_) | Self::ImportTooLarge(_) | Self::TwinTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IllegalTransition(_)
            | Self::DeviceExists(_)
            | Self::GroupExists(_)
            | Self::EnrollmentGroupExists(_)
            | Self::DeviceConflict(_)
            | Self::DeviceRetired(_)
            | Self::SuccessorOutOfService(_)
            | Self::SuccessorAlreadyReplaces(_)
            | Self::DeviceOffline(_)
            | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::StoreUnavailable
            | Self::CaUnavailable
            | Self::GatewayUnavailable
            | Self::TooManyWaits
            | Self::SecretsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code clients branch on.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::RouteNotFound | Self::MetricsDisabled => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::UnknownField(_) => "unknown_field",
            Self::InvalidDeviceId(_) => "invalid_device_id",
            Self::InvalidFilter(_) => "invalid_filter",
            Self::InvalidCursor => "invalid_cursor",
            Self::InvalidQuery(_) => "invalid_query",
            Self::InvalidCsvHeader(_) => "invalid_csv_header",
            Self::ValidationFailed(_) => "validation_failed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::ImportTooLarge(_) => "import_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::IllegalTransition(_) => "illegal_transition",
            Self::PreconditionFailed(_) => "precondition_failed",
            Self::InvalidPatch(_) => "invalid_patch",
            Self::TwinTooLarge(_) => "twin_too_large",
            Self::DeviceNotFound(_) => "device_not_found",
            Self::GroupNotFound(_) => "group_not_found",
            Self::TokenNotFound(_) => "token_not_found",
            Self::CredentialNotFound(_) => "credential_not_found",
            Self::CertificateNotFound(_) => "certificate_not_found",
            Self::InvalidCsr(_) => "invalid_csr",
            Self::CaUnavailable => "ca_unavailable",
            Self::GatewayUnavailable => "gateway_unavailable",
            Self::DeviceExists(_) => "device_exists",
            Self::GroupExists(_) => "group_exists",
            Self::ReplaceSameDevice(_) => "replace_same_device",
            Self::DeviceRetired(_) => "device_retired",
            Self::SuccessorOutOfService(_) => "successor_out_of_service",
            Self::SuccessorAlreadyReplaces(_) => "successor_already_replaces",
            Self::Conflict(_) => "conflict",
            Self::EnrollmentGroupNotFound(_) => "enrollment_group_not_found",
            Self::EnrollmentGroupExists(_) => "enrollment_group_exists",
            Self::SecretsUnavailable => "secrets_unavailable",
            Self::InvalidProof => "invalid_proof",
            Self::EnrollmentDisabled => "enrollment_disabled",
            Self::EnrollmentExpired => "enrollment_expired",
            Self::ClaimCodeExhausted => "claim_code_exhausted",
            Self::ClaimCodeExpired => "claim_code_expired",
            Self::DeviceConflict(_) => "device_conflict",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::CommandNotFound(_) => "command_not_found",
            Self::DeviceOffline(_) => "device_offline",
            Self::CommandUnanswered { state, .. } => match state {
                domain::CommandState::Expired => "command_expired",
                domain::CommandState::Canceled => "command_canceled",
                _ => "command_timed_out",
            },
            Self::TooManyWaits => "too_many_waits",
            Self::StoreUnavailable => "store_unavailable",
            Self::JobNotFound(_) => "job_not_found",
            Self::JobExists(_) => "job_exists",
            Self::InvalidJobSpec(_) => "invalid_job_spec",
            Self::IllegalJobTransition(_) => "illegal_job_transition",
            Self::ProfileNotFound(_) => "config_profile_not_found",
            Self::ProfileExists(_) => "config_profile_exists",
            Self::Internal(_) => "internal",
        }
    }

    /// What the client is told: the error's message, except for internal errors.
    fn detail(&self) -> String {
        match self {
            Self::Internal(_) => {
                "the server failed to handle the request; the request id identifies it in the logs"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
            // The span of the request carries the request id, so this line and the generic
            // answer the client gets can be matched.
            tracing::error!(error = %e, source = ?e.source(), "request failed");
        }
        let retry_after = match &self {
            Self::TooManyAttempts { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let status = self.status();
        let code = self.code();
        let detail = self.detail();
        let extensions = match self {
            Self::CommandUnanswered { command, .. } => Some(command),
            _ => None,
        };
        let parts = ProblemParts { status, code, detail, retry_after, extensions };
        let mut response = parts.status.into_response();
        response.extensions_mut().insert(parts);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind: "device", id } => Self::DeviceNotFound(id),
            StoreError::NotFound { kind: "group", id } => Self::GroupNotFound(id),
            StoreError::NotFound { kind: "token", id } => Self::TokenNotFound(id),
            StoreError::NotFound { kind: "credential", id } => Self::CredentialNotFound(id),
            StoreError::NotFound { kind: "certificate", id } => Self::CertificateNotFound(id),
            StoreError::NotFound { kind: "command", id } => Self::CommandNotFound(id),
            StoreError::NotFound { kind: "enrollment_group", id } => {
                Self::EnrollmentGroupNotFound(id)
            }
            StoreError::AlreadyExists { kind: "enrollment_group", id } => {
                Self::EnrollmentGroupExists(id)
            }
            StoreError::AlreadyExists { kind: "device", id } => Self::DeviceExists(id),
            StoreError::NotFound { kind: "job", id } => Self::JobNotFound(id),
            StoreError::AlreadyExists { kind: "job", id } => Self::JobExists(id),
            StoreError::AlreadyExists { kind: "group", id } => Self::GroupExists(id),
            StoreError::NotFound { kind: "config_profile", id } => Self::ProfileNotFound(id),
            StoreError::AlreadyExists { kind: "config_profile", id } => Self::ProfileExists(id),
            StoreError::VersionMismatch { expected, current } => Self::PreconditionFailed(format!(
                "If-Match names version {expected} but the current version is {current}"
            )),
            StoreError::IllegalTransition(t) => Self::IllegalTransition(t.to_string()),
            StoreError::Conflict(msg) => Self::Conflict(msg),
            StoreError::Replacement(e) => Self::from(e),
            other @ (StoreError::NotFound { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::Backend(_)) => Self::internal(other),
        }
    }
}

impl From<ReplacementError> for ApiError {
    fn from(e: ReplacementError) -> Self {
        let message = e.to_string();
        match e {
            ReplacementError::SameDevice(_) => Self::ReplaceSameDevice(message),
            ReplacementError::AlreadyRetired { .. } => Self::DeviceRetired(message),
            ReplacementError::SuccessorOutOfService { .. } => Self::SuccessorOutOfService(message),
            ReplacementError::SuccessorAlreadyReplaces { .. } => {
                Self::SuccessorAlreadyReplaces(message)
            }
            ReplacementError::MergedTags { .. } => Self::ValidationFailed(message),
            ReplacementError::IllegalTransition(_) => Self::IllegalTransition(message),
        }
    }
}

impl From<FilterError> for ApiError {
    fn from(e: FilterError) -> Self {
        Self::InvalidFilter(e.to_string())
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        Self::ValidationFailed(e.to_string())
    }
}

/// An error response before the request id is filled in: what `ApiError` leaves for the
/// middleware in the response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ProblemParts {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) detail: String,
    /// Seconds for a `Retry-After` header (429 responses).
    pub(crate) retry_after: Option<u64>,
    /// Extension members added to the problem (RFC 9457 §3.2), such as the command a
    /// synchronous wait ended with. They never replace the standard members.
    pub(crate) extensions: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ProblemParts {
    /// The generic problem for an error response that did not come from an `ApiError` (a
    /// layer's own answer), so that every error body has the same shape.
    pub(crate) fn for_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        };
        let detail = status.canonical_reason().unwrap_or("error").to_lowercase();
        Self { status, code, detail, retry_after: None, extensions: None }
    }

    /// Renders the problem+json response for the request `request_id`.
    pub(crate) fn render(self, request_id: &str) -> Response {
        let body = Problem {
            r#type: format!("urn:herd:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            request_id: request_id.to_owned(),
        };
        let mut value = serde_json::to_value(&body).expect("a problem always serializes");
        if let (Some(extensions), serde_json::Value::Object(members)) =
            (self.extensions, &mut value)
        {
            for (key, member) in *extensions {
                members.entry(key).or_insert(member);
            }
        }
        let bytes = serde_json::to_vec(&value).expect("a problem always serializes");
        let mut response = (self.status, bytes).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// An RFC 9457 problem: the body of every error response (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// `urn:herd:problem:<code>`.
    #[schema(example = "urn:herd:problem:device_not_found")]
    pub(crate) r#type: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Not Found")]
    pub(crate) title: String,
    /// The HTTP status.
    #[schema(example = 404)]
    pub(crate) status: u16,
    /// What went wrong, for people.
    #[schema(example = "device sensor-1 not found")]
    pub(crate) detail: String,
    /// What went wrong, for programs: stable across releases.
    #[schema(example = "device_not_found")]
    pub(crate) code: String,
    /// The request's `x-request-id`, to find it in the server's logs.
    #[schema(example = "6f1c1f38-9c55-4c3b-8a43-52d1a2b7a0de")]
    pub(crate) request_id: String,
}

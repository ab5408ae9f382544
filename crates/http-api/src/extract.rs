//! Extractors whose failures are `ApiError`s, so that even axum's own rejections (a body over
//! the limit, a bad path segment) come out as problem+json with a stable code.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body of type `T`.
///
/// The content type must be `application/json` (or `application/*+json`), else 415
/// `unsupported_media_type`; a body over the limit is 413 `payload_too_large`; text that is not
/// JSON is 400 `malformed_json`; a field `T` does not know is 400 `unknown_field` (every request
/// DTO denies unknown fields); any other mismatch of shape or type is 400 `invalid_body`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON with Content-Type: application/json".to_owned(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the body is larger than the server accepts".to_owned())
            } else {
                ApiError::InvalidBody(format!("failed to read the body: {}", rejection.body_text()))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON document, classifying failures as [`JsonBody`] documents.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::MalformedJson(message)
            }
            serde_json::error::Category::Data if message.starts_with("unknown field") => {
                ApiError::UnknownField(message)
            }
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                ApiError::InvalidBody(message)
            }
        }
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json"
        || essence.strip_prefix("application/").is_some_and(|sub| sub.ends_with("+json"))
}

/// Path parameters of type `T`; a segment that does not decode is 400 `invalid_query`… of the
/// path, reported as `invalid_body` would be misleading, so it is `ApiError::InvalidQuery`'s
/// sibling for paths: 404 `not_found` (no resource can have such a name).
#[derive(Debug, Clone)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status().is_client_error() => Err(ApiError::RouteNotFound),
            Err(rejection) => Err(ApiError::internal(rejection.body_text())),
        }
    }
}

/// The raw query string, parsed later by each list endpoint with its own rules (repeated keys,
/// unknown parameters).
#[derive(Debug, Clone, Default)]
pub(crate) struct RawQuery(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for RawQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.uri.query().unwrap_or_default().to_owned()))
    }
}

impl RawQuery {
    /// The decoded `key=value` pairs, in order.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        form_urlencoded::parse(self.0.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
    }
}

/// Stores a query parameter that may appear at most once.
///
/// # Errors
/// `invalid_query` when the parameter was given before.
pub(crate) fn set_once(
    slot: &mut Option<String>,
    key: &str,
    value: String,
) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(ApiError::InvalidQuery(format!("query parameter {key} is given twice")));
    }
    *slot = Some(value);
    Ok(())
}

/// The error for a query parameter the endpoint does not know.
pub(crate) fn unknown_parameter(key: &str, known: &[&str]) -> ApiError {
    ApiError::InvalidQuery(format!(
        "unknown query parameter {key:?}; this endpoint takes {}",
        known.join(", ")
    ))
}

/// Parses a `limit` parameter: 1..=1000, else 422 `validation_failed`; not a number is 400
/// `invalid_query`.
pub(crate) fn parse_limit(raw: Option<&str>, default: u32) -> Result<u32, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    let limit: u32 = raw
        .parse()
        .map_err(|_| ApiError::InvalidQuery(format!("limit must be a number, got {raw:?}")))?;
    if !(1..=store::MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::ValidationFailed(format!(
            "limit must be between 1 and {}, got {limit}",
            store::MAX_PAGE_SIZE
        )));
    }
    Ok(limit)
}

/// What an `If-Match` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfMatch {
    /// No header or `*`: any current version will do.
    Any,
    /// Exactly this version (`If-Match: "7"`).
    Version(u64),
}

impl IfMatch {
    /// The version the store must find, if any.
    pub(crate) fn expected(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::Version(v) => Some(v),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    /// Our entity tags are the strong `"<version>"`. A header that is not one of ours (a weak or
    /// foreign tag, a list) can never match the current version, so it fails as a stale one
    /// would: 412 `precondition_failed`.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else { return Ok(Self::Any) };
        let text = value.to_str().unwrap_or_default().trim();
        if text == "*" {
            return Ok(Self::Any);
        }
        text.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Self::Version)
            .ok_or_else(|| {
                ApiError::PreconditionFailed(format!(
                    "If-Match {text:?} names no version of this resource; use the ETag it was served with"
                ))
            })
    }
}

/// The `ETag` of a resource at `version`.
pub(crate) fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

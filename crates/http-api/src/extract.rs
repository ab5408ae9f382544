//! Extractors whose failures are `ApiError`s, so that even axum's own rejections (a body over
//! the limit, a bad path segment) come out as problem+json with a stable code.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use domain::{CertificateSerial, CredentialId, DeviceId, GroupName, TokenId};
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
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json"
        || essence.strip_prefix("application/").is_some_and(|sub| sub.ends_with("+json"))
}

/// A device id taken from the path (`{id}`): 400 `invalid_device_id` when it breaks the rules.
#[derive(Debug, Clone)]
pub(crate) struct DevicePath(pub(crate) DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for DevicePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = path_params(parts, state).await?.map_err(ApiError::InvalidDeviceId)?;
        device_id(raw).map(Self)
    }
}

/// A group name taken from the path (`{name}`): a name no group can have is 404
/// `group_not_found`.
#[derive(Debug, Clone)]
pub(crate) struct GroupPath(pub(crate) GroupName);

impl<S: Send + Sync> FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = path_params(parts, state).await?.map_err(ApiError::GroupNotFound)?;
        group_name(raw).map(Self)
    }
}

/// A group name and a device id taken from the path (`{name}/members/{device_id}`).
#[derive(Debug, Clone)]
pub(crate) struct MemberPath(pub(crate) GroupName, pub(crate) DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for MemberPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (name, id): (String, String) =
            path_params(parts, state).await?.map_err(ApiError::InvalidDeviceId)?;
        Ok(Self(group_name(name)?, device_id(id)?))
    }
}

/// A token id taken from the path (`{id}`): an id no token can have is 404 `token_not_found`.
#[derive(Debug, Clone)]
pub(crate) struct TokenPath(pub(crate) TokenId);

impl<S: Send + Sync> FromRequestParts<S> for TokenPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = path_params(parts, state).await?.map_err(ApiError::TokenNotFound)?;
        TokenId::new(raw.clone()).map(Self).map_err(|_| ApiError::TokenNotFound(raw))
    }
}

/// A device id and one of its credential ids taken from the path
/// (`{id}/credentials/{credential_id}`): a bad device id is 400 `invalid_device_id`, an id no
/// credential can have is 404 `credential_not_found`.
#[derive(Debug, Clone)]
pub(crate) struct CredentialPath(pub(crate) DeviceId, pub(crate) CredentialId);

impl<S: Send + Sync> FromRequestParts<S> for CredentialPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (id, credential): (String, String) =
            path_params(parts, state).await?.map_err(ApiError::InvalidDeviceId)?;
        let id = device_id(id)?;
        let credential = CredentialId::new(credential.clone())
            .map_err(|_| ApiError::CredentialNotFound(credential))?;
        Ok(Self(id, credential))
    }
}

/// A device id and one of its certificates' serial taken from the path
/// (`{id}/certificates/{serial}`): a bad device id is 400 `invalid_device_id`, a serial no
/// certificate can have is 404 `certificate_not_found`.
#[derive(Debug, Clone)]
pub(crate) struct CertificatePath(pub(crate) DeviceId, pub(crate) CertificateSerial);

impl<S: Send + Sync> FromRequestParts<S> for CertificatePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (id, serial): (String, String) =
            path_params(parts, state).await?.map_err(ApiError::InvalidDeviceId)?;
        let id = device_id(id)?;
        let serial = CertificateSerial::new(serial.clone())
            .map_err(|_| ApiError::CertificateNotFound(serial))?;
        Ok(Self(id, serial))
    }
}

/// Validates a device id from a path or body: 400 `invalid_device_id`.
pub(crate) fn device_id(raw: String) -> Result<DeviceId, ApiError> {
    DeviceId::new(raw).map_err(|e| ApiError::InvalidDeviceId(e.to_string()))
}

fn group_name(raw: String) -> Result<GroupName, ApiError> {
    GroupName::new(raw.clone()).map_err(|_| ApiError::GroupNotFound(raw))
}

/// The route's path parameters. The inner `Err` holds why a segment does not decode (it is not
/// percent-encoded UTF-8), for the caller to classify; the outer one is a routing bug.
pub(crate) async fn path_params<S, T>(
    parts: &mut Parts,
    state: &S,
) -> Result<Result<T, String>, ApiError>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    match Path::<T>::from_request_parts(parts, state).await {
        Ok(Path(value)) => Ok(Ok(value)),
        Err(rejection) if rejection.status().is_client_error() => {
            Ok(Err(format!("the path does not decode: {}", rejection.body_text())))
        }
        Err(rejection) => Err(ApiError::internal(rejection.body_text())),
    }
}

/// The raw query string, parsed later by each list endpoint with its own rules (repeated keys,
/// unknown parameters).
#[derive(Debug, Clone, Default)]
pub(crate) struct RawQuery(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for RawQuery {
    type Rejection = Infallible;

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

/// Parses `?dry_run=`, the only query parameter of the routes that take it.
pub(crate) fn dry_run_param(query: &RawQuery) -> Result<bool, ApiError> {
    let mut dry_run = None;
    for (key, value) in query.pairs() {
        match key.as_str() {
            "dry_run" => set_once(&mut dry_run, &key, value)?,
            _ => return Err(unknown_parameter(&key, &["dry_run"])),
        }
    }
    bool_param("dry_run", dry_run.as_deref())
}

/// A `true`/`false` query parameter (absent: `false`).
pub(crate) fn bool_param(key: &str, raw: Option<&str>) -> Result<bool, ApiError> {
    match raw {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => {
            Err(ApiError::InvalidQuery(format!("{key} must be true or false, got {other:?}")))
        }
    }
}

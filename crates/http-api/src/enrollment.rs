//! `/api/v1/enrollment-groups`: the groups through which unknown devices provision themselves
//! (zero-touch), the device keys derived from a symmetric-key group's secret (for factories),
//! and a claim-code group's codes.
//!
//! Admins create, change and delete groups, derive keys and make claim codes; viewers read. A
//! symmetric-key group's key is 32 random bytes made here, sealed with the server's master key
//! ([`SecretBox`], bound to the group's name) and never returned; without a master key those
//! operations answer 503 `secrets_unavailable`. Claim codes are 12 characters from an unambiguous
//! alphabet, shown once as `XXXX-XXXX-XXXX`; only their SHA-256 is stored.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::{
    Attestation, Attributes, ClaimCode, ClaimCodeId, DeviceIdTemplate, EnrollmentGroup,
    EnrollmentGroupName, EnrollmentGroupPatch, GroupName, NewEnrollmentGroup, Tags, Timestamp,
    TokenHash,
};
use rand::TryRngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Deserializer, Serialize};
use store::NewClaimCode;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Caller, Viewer};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, RawQuery, device_id, path_params};
use crate::paging::{PageParams, next_cursor, page_limit};
use crate::secrets::{self, SecretBox, SecretError};

/// The alphabet of claim codes: digits and capitals without `0`, `O`, `1` and `I`. 32 symbols,
/// so one random byte masked to 5 bits picks one uniformly.
const CLAIM_CODE_ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// Symbols in a claim code (60 bits of entropy).
const CLAIM_CODE_LEN: usize = 12;

/// A new claim code from the OS random number generator, as shown: `XXXX-XXXX-XXXX`.
///
/// # Errors
/// [`SecretError::Seal`] when the generator fails.
pub(crate) fn generate_claim_code() -> Result<String, SecretError> {
    let mut bytes = [0u8; CLAIM_CODE_LEN];
    OsRng.try_fill_bytes(&mut bytes).map_err(|_| SecretError::Seal("no random claim code"))?;
    let mut code = String::with_capacity(CLAIM_CODE_LEN + 2);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(char::from(CLAIM_CODE_ALPHABET[usize::from(b & 31)]));
    }
    Ok(code)
}

/// The stored hash of a claim code as a device types it (case, spaces and dashes do not
/// matter); `None` when it cannot be a claim code.
pub(crate) fn claim_code_hash(code: &str) -> Option<TokenHash> {
    let normalized: String =
        code.chars().filter(|c| !matches!(c, '-' | ' ')).map(|c| c.to_ascii_uppercase()).collect();
    let valid = normalized.len() == CLAIM_CODE_LEN
        && normalized.bytes().all(|b| CLAIM_CODE_ALPHABET.contains(&b));
    valid.then(|| TokenHash::of_secret(&normalized))
}

/// Opens a group's sealed key (sealed for its name).
///
/// # Errors
/// [`SecretError::Open`] when the master key is not the one it was sealed with.
pub(crate) fn open_group_key(
    secret_box: &SecretBox,
    name: &EnrollmentGroupName,
    sealed: &[u8],
) -> Result<Vec<u8>, SecretError> {
    secret_box.open(name.as_str().as_bytes(), sealed)
}

/// An enrollment group name taken from the path: a name no group can have is 404.
#[derive(Debug, Clone)]
pub(crate) struct EnrollmentGroupPath(pub(crate) EnrollmentGroupName);

impl<S: Send + Sync> FromRequestParts<S> for EnrollmentGroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String =
            path_params(parts, state).await?.map_err(ApiError::EnrollmentGroupNotFound)?;
        EnrollmentGroupName::new(raw.clone())
            .map(Self)
            .map_err(|_| ApiError::EnrollmentGroupNotFound(raw))
    }
}

/// An enrollment group as the API shows it: never its key.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EnrollmentGroup)]
pub(crate) struct EnrollmentGroupDto {
    /// Unique name.
    #[schema(example = "factory-a")]
    name: String,
    /// How devices prove they belong: `symmetric_key`, `x509` or `claim_code`.
    #[schema(example = "symmetric_key")]
    attestation: &'static str,
    /// The uploaded CA certificate (PEM) of an `x509` group; `null` for Herd's own CA and for
    /// the other attestations.
    ca_certificate: Option<String>,
    /// Whether devices may register now.
    enabled: bool,
    /// When registrations stop (RFC 3339), `null` for never.
    expires_at: Option<String>,
    /// How a registration id becomes a device id (`{registration_id}` is replaced); `null`: the
    /// registration id is the device id.
    #[schema(example = "fa-{registration_id}")]
    device_id_template: Option<String>,
    /// Tags of new devices.
    tags: BTreeMap<String, String>,
    /// Static groups new devices join.
    groups: Vec<String>,
    /// Attributes of new devices.
    #[schema(value_type = Object)]
    attributes: serde_json::Value,
    /// How many devices the group created.
    registrations: u64,
    /// When it was created (RFC 3339).
    created_at: String,
    /// When it last changed (RFC 3339).
    updated_at: String,
}

impl From<&EnrollmentGroup> for EnrollmentGroupDto {
    fn from(g: &EnrollmentGroup) -> Self {
        Self {
            name: g.name.as_str().to_owned(),
            attestation: g.attestation.kind(),
            ca_certificate: match &g.attestation {
                Attestation::X509 { ca_pem } => ca_pem.clone(),
                _ => None,
            },
            enabled: g.enabled,
            expires_at: g.expires_at.map(Timestamp::to_rfc3339),
            device_id_template: g.device_id_template.as_ref().map(|t| t.as_str().to_owned()),
            tags: g.tags.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_owned())).collect(),
            groups: g.groups.iter().map(|n| n.as_str().to_owned()).collect(),
            attributes: g.attributes.as_json().clone(),
            registrations: g.registrations,
            created_at: g.created_at.to_rfc3339(),
            updated_at: g.updated_at.to_rfc3339(),
        }
    }
}

/// How devices of a group prove they belong.
#[derive(Debug, Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AttestationDto {
    /// A key derived from the group's secret (which the server makes and never shows).
    SymmetricKey,
    /// A certificate from Herd's CA or the uploaded `ca_certificate`.
    X509,
    /// A claim code of the group.
    ClaimCode,
}

/// The body of `POST /api/v1/enrollment-groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateEnrollmentGroup {
    /// Unique name: 1–64 characters of `[A-Za-z0-9._-]`.
    #[schema(example = "factory-a")]
    name: String,
    /// How devices prove they belong.
    attestation: AttestationDto,
    /// For `x509` only: a CA certificate (PEM, basicConstraints CA=true) device certificates must
    /// chain to; without it, Herd's own CA.
    ca_certificate: Option<String>,
    /// Whether devices may register from the start (default `true`).
    enabled: Option<bool>,
    /// When registrations stop (RFC 3339, in the future).
    expires_at: Option<String>,
    /// How a registration id becomes a device id: must contain `{registration_id}`.
    device_id_template: Option<String>,
    /// Tags of new devices.
    tags: Option<BTreeMap<String, String>>,
    /// Static groups new devices join (they must exist).
    groups: Option<Vec<String>>,
    /// Attributes of new devices (a JSON object, the device size limit applies).
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
}

/// `Some(value)` when the field is present, `null` included (`Some(None)`).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The body of `PATCH /api/v1/enrollment-groups/{name}`: the fields present replace the current
/// ones; `null` removes an expiry or a template. The attestation never changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateEnrollmentGroup {
    /// Enable or disable registrations.
    enabled: Option<bool>,
    /// New expiry (RFC 3339), `null` for none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    expires_at: Option<Option<String>>,
    /// New template, `null` for none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    device_id_template: Option<Option<String>>,
    /// New tags (replace all).
    tags: Option<BTreeMap<String, String>>,
    /// New static groups (replace all).
    groups: Option<Vec<String>>,
    /// New attributes (replace all).
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
}

/// One page of enrollment groups.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EnrollmentGroupPage {
    /// The groups, by name.
    items: Vec<EnrollmentGroupDto>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// The body of `POST /api/v1/enrollment-groups/{name}/derive-key`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeriveKey {
    /// The device id the key is for (after the group's template).
    #[schema(example = "fa-SN-0042")]
    device_id: String,
}

/// A device key derived from a symmetric-key group's secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DerivedKey {
    /// The device id.
    device_id: String,
    /// Base64 of HMAC-SHA256(group key, device id): what the device signs its registration with.
    derived_key: String,
}

/// The body of `POST /api/v1/enrollment-groups/{name}/derive-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeriveKeys {
    /// The device ids the keys are for (after the group's template): 1 to the server's limit
    /// (1000 by default).
    #[schema(example = json!(["fa-SN-0042", "fa-SN-0043"]))]
    device_ids: Vec<String>,
}

/// Device keys derived from a symmetric-key group's secret, in the order asked.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DerivedKeys {
    /// One per device id asked for.
    items: Vec<DerivedKey>,
}

/// The body of `POST /api/v1/enrollment-groups/{name}/claim-codes`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateClaimCodes {
    /// How many codes (1 to the server's limit, 1000 by default).
    #[schema(example = 10)]
    count: u32,
    /// How many devices each code may enroll (default 1).
    max_uses: Option<u32>,
    /// When the codes stop working (RFC 3339, in the future).
    expires_at: Option<String>,
}

/// A claim code as listed: never the code.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ClaimCode)]
pub(crate) struct ClaimCodeDto {
    /// Public id.
    #[schema(example = "cc_0123456789abcdef")]
    id: String,
    /// How many devices it enrolled.
    uses: u32,
    /// How many it may enroll.
    max_uses: u32,
    /// When it stops working (RFC 3339), `null` for never.
    expires_at: Option<String>,
    /// When it was made (RFC 3339).
    created_at: String,
}

impl From<&ClaimCode> for ClaimCodeDto {
    fn from(c: &ClaimCode) -> Self {
        Self {
            id: c.id.as_str().to_owned(),
            uses: c.uses,
            max_uses: c.max_uses,
            expires_at: c.expires_at.map(Timestamp::to_rfc3339),
            created_at: c.created_at.to_rfc3339(),
        }
    }
}

/// A new claim code with the code itself: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedClaimCode {
    /// Public id.
    id: String,
    /// The code the device presents. Only its hash is stored.
    #[schema(example = "7KQ4-M9XP-3HTW")]
    code: String,
    /// How many devices it may enroll.
    max_uses: u32,
    /// When it stops working (RFC 3339), `null` for never.
    expires_at: Option<String>,
}

/// New claim codes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedClaimCodes {
    /// The codes, each shown once.
    items: Vec<CreatedClaimCode>,
}

/// A group's claim codes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClaimCodeList {
    /// Oldest first, without the codes.
    items: Vec<ClaimCodeDto>,
}

fn tags(raw: Option<BTreeMap<String, String>>) -> Result<Option<Tags>, ApiError> {
    raw.map(|t| Tags::new(t).map_err(ApiError::from)).transpose()
}

fn group_names(raw: Option<Vec<String>>) -> Result<Option<Vec<GroupName>>, ApiError> {
    raw.map(|names| -> Result<Vec<GroupName>, ApiError> {
        let mut out: Vec<GroupName> =
            names.into_iter().map(GroupName::new).collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    })
    .transpose()
}

fn future(raw: &str, now: Timestamp, what: &str) -> Result<Timestamp, ApiError> {
    let at = Timestamp::parse_rfc3339(raw)?;
    if at <= now {
        return Err(ApiError::ValidationFailed(format!("{what} must be in the future")));
    }
    Ok(at)
}

/// Checks an uploaded CA certificate: one PEM certificate with basicConstraints CA=true.
fn check_ca_certificate(pem: &str) -> Result<(), ApiError> {
    let bad = |reason: String| ApiError::ValidationFailed(format!("ca_certificate: {reason}"));
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("give exactly one PEM certificate".to_owned()));
    }
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!("expected a CERTIFICATE, got {}", pem.label)));
    }
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let is_ca =
        cert.basic_constraints().map_err(|e| bad(e.to_string()))?.is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(bad("not a CA certificate (basicConstraints CA=true is missing)".to_owned()));
    }
    Ok(())
}

/// Create an enrollment group. A symmetric-key group's secret is made by the server and never
/// shown; derive device keys from it with `derive-key`.
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-groups",
    tag = "enrollment",
    request_body = CreateEnrollmentGroup,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "Created", body = EnrollmentGroupDto),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`group_not_found`: a static group that does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`enrollment_group_exists`, or `conflict` for a dynamic group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: name, template, tags, attributes, expiry, CA certificate", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`secrets_unavailable`: no master key for a symmetric-key group", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_enrollment_group(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateEnrollmentGroup>,
) -> Result<(StatusCode, Json<EnrollmentGroupDto>), ApiError> {
    let m = state.mutation_by(&caller.token);
    let name = EnrollmentGroupName::new(body.name)?;
    if body.ca_certificate.is_some() && body.attestation != AttestationDto::X509 {
        return Err(ApiError::ValidationFailed(
            "ca_certificate is for x509 groups only".to_owned(),
        ));
    }
    let attestation = match body.attestation {
        AttestationDto::SymmetricKey => {
            let secret_box = state.secret_box().ok_or(ApiError::SecretsUnavailable)?;
            let key = secrets::generate_group_key().map_err(ApiError::internal)?;
            let sealed_key =
                secret_box.seal(name.as_str().as_bytes(), &key).map_err(ApiError::internal)?;
            Attestation::SymmetricKey { sealed_key }
        }
        AttestationDto::X509 => {
            if let Some(pem) = &body.ca_certificate {
                check_ca_certificate(pem)?;
            }
            Attestation::X509 { ca_pem: body.ca_certificate }
        }
        AttestationDto::ClaimCode => Attestation::ClaimCode,
    };
    let new = NewEnrollmentGroup {
        name,
        attestation,
        enabled: body.enabled.unwrap_or(true),
        expires_at: body
            .expires_at
            .as_deref()
            .map(|e| future(e, m.at, "expires_at"))
            .transpose()?,
        device_id_template: body.device_id_template.map(DeviceIdTemplate::new).transpose()?,
        tags: tags(body.tags)?.unwrap_or_default(),
        groups: group_names(body.groups)?.unwrap_or_default(),
        attributes: match body.attributes {
            Some(a) => Attributes::new(a, state.config().max_attributes_bytes)?,
            None => Attributes::default(),
        },
    };
    let group = state.store().create_enrollment_group(&new, &m).await?;
    Ok((StatusCode::CREATED, Json(EnrollmentGroupDto::from(&group))))
}

/// List enrollment groups by name.
#[utoipa::path(
    get,
    path = "/api/v1/enrollment-groups",
    tag = "enrollment",
    params(PageParams),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "One page of enrollment groups", body = EnrollmentGroupPage),
        (status = 400, description = "`invalid_query` or `invalid_cursor`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_enrollment_groups(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Json<EnrollmentGroupPage>, ApiError> {
    let params = PageParams::parse(&query)?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            crate::paging::group_cursor(c).and_then(|g| {
                EnrollmentGroupName::new(g.as_str()).map_err(|_| ApiError::InvalidCursor)
            })
        })
        .transpose()?;
    let limit = page_limit(params.limit.unwrap_or(state.config().page_size()));
    let page = state.store().list_enrollment_groups(after.as_ref(), limit).await?;
    let next_cursor = next_cursor(&page, |g| g.name.as_str());
    Ok(Json(EnrollmentGroupPage {
        items: page.items.iter().map(EnrollmentGroupDto::from).collect(),
        next_cursor,
    }))
}

async fn existing(
    state: &AppState,
    name: &EnrollmentGroupName,
) -> Result<EnrollmentGroup, ApiError> {
    state
        .store()
        .enrollment_group(name)
        .await?
        .ok_or_else(|| ApiError::EnrollmentGroupNotFound(name.to_string()))
}

/// Read one enrollment group.
#[utoipa::path(
    get,
    path = "/api/v1/enrollment-groups/{name}",
    tag = "enrollment",
    params(("name" = String, Path, description = "Enrollment group name")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The group", body = EnrollmentGroupDto),
        (status = 404, description = "`enrollment_group_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn get_enrollment_group(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    EnrollmentGroupPath(name): EnrollmentGroupPath,
) -> Result<Json<EnrollmentGroupDto>, ApiError> {
    Ok(Json(EnrollmentGroupDto::from(&existing(&state, &name).await?)))
}

/// Change an enrollment group: enable or disable it, its expiry, template, tags, groups or
/// attributes.
#[utoipa::path(
    patch,
    path = "/api/v1/enrollment-groups/{name}",
    tag = "enrollment",
    params(("name" = String, Path, description = "Enrollment group name")),
    request_body = UpdateEnrollmentGroup,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The changed group", body = EnrollmentGroupDto),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`enrollment_group_not_found` or `group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a dynamic group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn update_enrollment_group(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    EnrollmentGroupPath(name): EnrollmentGroupPath,
    JsonBody(body): JsonBody<UpdateEnrollmentGroup>,
) -> Result<Json<EnrollmentGroupDto>, ApiError> {
    let m = state.mutation_by(&caller.token);
    let patch = EnrollmentGroupPatch {
        enabled: body.enabled,
        expires_at: body
            .expires_at
            .map(|e| e.as_deref().map(|e| future(e, m.at, "expires_at")).transpose())
            .transpose()?,
        device_id_template: body
            .device_id_template
            .map(|t| t.map(DeviceIdTemplate::new).transpose())
            .transpose()?,
        tags: tags(body.tags)?,
        groups: group_names(body.groups)?,
        attributes: body
            .attributes
            .map(|a| Attributes::new(a, state.config().max_attributes_bytes))
            .transpose()?,
    };
    let group = state.store().update_enrollment_group(&name, &patch, &m).await?;
    Ok(Json(EnrollmentGroupDto::from(&group)))
}

/// Delete an enrollment group with its claim codes. Devices it enrolled stay, but can no longer
/// re-register through a new group of the same name.
#[utoipa::path(
    delete,
    path = "/api/v1/enrollment-groups/{name}",
    tag = "enrollment",
    params(("name" = String, Path, description = "Enrollment group name")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`enrollment_group_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn delete_enrollment_group(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    EnrollmentGroupPath(name): EnrollmentGroupPath,
) -> Result<StatusCode, ApiError> {
    state.store().delete_enrollment_group(&name, &state.mutation_by(&caller.token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Derive a device's key from a symmetric-key group's secret (for factory provisioning). Audited.
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-groups/{name}/derive-key",
    tag = "enrollment",
    params(("name" = String, Path, description = "Enrollment group name")),
    request_body = DeriveKey,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The device key", body = DerivedKey),
        (status = 400, description = "`invalid_device_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`enrollment_group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: not a symmetric-key group", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`secrets_unavailable`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn derive_key(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    EnrollmentGroupPath(name): EnrollmentGroupPath,
    JsonBody(body): JsonBody<DeriveKey>,
) -> Result<Json<DerivedKey>, ApiError> {
    let device = device_id(body.device_id)?;
    let group = existing(&state, &name).await?;
    let group_key = symmetric_group_key(&state, &name, &group)?;
    let key = secrets::derive_device_key(&group_key, device.as_str());
    let devices = std::slice::from_ref(&device);
    state.store().record_key_derivation(&name, devices, &state.mutation_by(&caller.token)).await?;
    Ok(Json(DerivedKey { device_id: device.to_string(), derived_key: BASE64.encode(key) }))
}

/// The opened secret of a symmetric-key group.
fn symmetric_group_key(
    state: &AppState,
    name: &EnrollmentGroupName,
    group: &EnrollmentGroup,
) -> Result<Vec<u8>, ApiError> {
    let Attestation::SymmetricKey { sealed_key } = &group.attestation else {
        return Err(ApiError::Conflict(format!(
            "enrollment group {name} uses {} attestation, not symmetric_key",
            group.attestation.kind()
        )));
    };
    let secret_box = state.secret_box().ok_or(ApiError::SecretsUnavailable)?;
    open_group_key(secret_box, name, sealed_key).map_err(ApiError::internal)
}

/// Derive many devices' keys from a symmetric-key group's secret at once (factory bundles, bulk
/// pre-provisioning). One audit record for the batch, with the count and the ids.
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-groups/{name}/derive-keys",
    tag = "enrollment",
    params(("name" = String, Path, description = "Enrollment group name")),
    request_body = DeriveKeys,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The device keys, in the order asked", body = DerivedKeys),
        (status = 400, description = "`invalid_device_id`, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`enrollment_group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: not a symmetric-key group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: no device ids, or more than the server's limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`secrets_unavailable`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn derive_keys(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    EnrollmentGroupPath(name): EnrollmentGroupPath,
    JsonBody(body): JsonBody<DeriveKeys>,
) -> Result<Json<DerivedKeys>, ApiError> {
    let max = state.config().max_derived_keys_per_request.max(1);
    if !(1..=max).contains(&body.device_ids.len()) {
        return Err(ApiError::ValidationFailed(format!(
            "device_ids must hold between 1 and {max} ids, got {}",
            body.device_ids.len()
        )));
    }
    let devices =
        body.device_ids.into_iter().map(device_id).collect::<Result<Vec<_>, ApiError>>()?;
    let group = existing(&state, &name).await?;
    let group_key = symmetric_group_key(&state, &name, &group)?;
    let items = devices
        .iter()
        .map(|device| DerivedKey {
            device_id: device.to_string(),
            derived_key: BASE64.encode(secrets::derive_device_key(&group_key, device.as_str())),
        })
        .collect();
    state.store().record_key_derivation(&name, &devices, &state.mutation_by(&caller.token)).await?;
    Ok(Json(DerivedKeys { items }))
}

/// Make claim codes for a claim-code group. The response holds the codes, which are never shown
/// again.
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-groups/{name}/claim-codes",
    tag = "enrollment",
    params(("name" = String, Path, description = "Enrollment group name")),
    request_body = CreateClaimCodes,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "The codes", body = CreatedClaimCodes),
        (status = 404, description = "`enrollment_group_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: not a claim-code group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: count, max_uses, expiry", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_claim_codes(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    EnrollmentGroupPath(name): EnrollmentGroupPath,
    JsonBody(body): JsonBody<CreateClaimCodes>,
) -> Result<(StatusCode, Json<CreatedClaimCodes>), ApiError> {
    let m = state.mutation_by(&caller.token);
    let max_count = state.config().max_claim_codes_per_request.max(1);
    if !(1..=max_count).contains(&body.count) {
        return Err(ApiError::ValidationFailed(format!("count must be between 1 and {max_count}")));
    }
    let max_uses = body.max_uses.unwrap_or(1);
    if max_uses == 0 {
        return Err(ApiError::ValidationFailed("max_uses must be at least 1".to_owned()));
    }
    let expires_at =
        body.expires_at.as_deref().map(|e| future(e, m.at, "expires_at")).transpose()?;
    let mut codes = Vec::with_capacity(body.count as usize);
    let mut new = Vec::with_capacity(body.count as usize);
    for _ in 0..body.count {
        let code = generate_claim_code().map_err(ApiError::internal)?;
        let hash = claim_code_hash(&code).ok_or_else(|| ApiError::internal("bad claim code"))?;
        let mut id = [0u8; 8];
        OsRng.try_fill_bytes(&mut id).map_err(|_| ApiError::internal("no random id"))?;
        new.push(NewClaimCode { id: ClaimCodeId::from_random(id), hash });
        codes.push(code);
    }
    let stored = state.store().create_claim_codes(&name, &new, max_uses, expires_at, &m).await?;
    let items = stored
        .iter()
        .zip(codes)
        .map(|(c, code)| CreatedClaimCode {
            id: c.id.as_str().to_owned(),
            code,
            max_uses: c.max_uses,
            expires_at: c.expires_at.map(Timestamp::to_rfc3339),
        })
        .collect();
    Ok((StatusCode::CREATED, Json(CreatedClaimCodes { items })))
}

/// List a group's claim codes (never the codes themselves).
#[utoipa::path(
    get,
    path = "/api/v1/enrollment-groups/{name}/claim-codes",
    tag = "enrollment",
    params(("name" = String, Path, description = "Enrollment group name")),
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The codes, oldest first", body = ClaimCodeList),
        (status = 404, description = "`enrollment_group_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_claim_codes(
    _caller: Caller<Viewer>,
    State(state): State<AppState>,
    EnrollmentGroupPath(name): EnrollmentGroupPath,
) -> Result<Json<ClaimCodeList>, ApiError> {
    existing(&state, &name).await?;
    let codes = state.store().claim_codes(&name).await?;
    Ok(Json(ClaimCodeList { items: codes.iter().map(ClaimCodeDto::from).collect() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_codes_are_well_formed_and_normalized() {
        let code = generate_claim_code().unwrap();
        assert_eq!(code.len(), 14);
        assert_eq!(code.matches('-').count(), 2);
        let hash = claim_code_hash(&code).unwrap();
        assert_eq!(claim_code_hash(&code.to_lowercase()), Some(hash));
        assert_eq!(claim_code_hash(&code.replace('-', "")), Some(hash));
        for bad in ["", "ABCD-EFGH-JKL", "ABCD-EFGH-JKL0", "ABCD-EFGH-JKLMN", "ÄBCD-EFGH-JKLM"] {
            assert_eq!(claim_code_hash(bad), None, "{bad}");
        }
    }
}

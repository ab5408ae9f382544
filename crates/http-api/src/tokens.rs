//! `/api/v1/tokens` (admin): create, list and revoke operator API tokens; and
//! `/api/v1/whoami`, which tells any caller what its own token is.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use domain::{ApiToken, NewToken, Role, Timestamp, TokenHash};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Caller, Viewer, generate_token_id, generate_token_secret};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, TokenPath};

/// Longest token name, in characters.
const MAX_NAME_CHARS: usize = 128;
/// Longest lifetime `expires_in_days` accepts (about 100 years).
const MAX_EXPIRES_IN_DAYS: u32 = 36_500;
const MILLIS_PER_DAY: i64 = 24 * 60 * 60 * 1000;

/// A token as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Token)]
pub(crate) struct TokenDto {
    /// Public id.
    #[schema(example = "tok_0123456789abcdef")]
    id: String,
    /// What the token is for.
    name: String,
    /// What it may do.
    role: RoleDto,
    /// When it was created (RFC 3339).
    created_at: String,
    /// When it stops working (RFC 3339), `null` for never.
    expires_at: Option<String>,
    /// When it was revoked (RFC 3339), `null` while it is not.
    revoked_at: Option<String>,
}

impl From<&ApiToken> for TokenDto {
    fn from(t: &ApiToken) -> Self {
        Self {
            id: t.id.as_str().to_owned(),
            name: t.name.clone(),
            role: t.role.into(),
            created_at: t.created_at.to_rfc3339(),
            expires_at: t.expires_at.map(|e| e.to_rfc3339()),
            revoked_at: t.revoked_at.map(|r| r.to_rfc3339()),
        }
    }
}

/// A new token, with its secret: shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedToken)]
pub(crate) struct CreatedTokenDto {
    /// Public id.
    #[schema(example = "tok_0123456789abcdef")]
    id: String,
    /// What the token is for.
    name: String,
    /// What it may do.
    role: RoleDto,
    /// When it was created (RFC 3339).
    created_at: String,
    /// When it stops working (RFC 3339), `null` for never.
    expires_at: Option<String>,
    /// Always `null` for a new token.
    revoked_at: Option<String>,
    /// The secret to send as `Authorization: Bearer <token>`. Only its hash is stored: it
    /// cannot be shown again.
    #[schema(example = "herd_0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0")]
    token: String,
}

/// What an operator may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Role)]
pub(crate) enum RoleDto {
    /// Reads everything.
    Viewer,
    /// Also changes devices and groups.
    Operator,
    /// Also manages tokens.
    Admin,
}

impl From<Role> for RoleDto {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => Self::Viewer,
            Role::Operator => Self::Operator,
            Role::Admin => Self::Admin,
        }
    }
}

/// The body of `POST /api/v1/tokens`. Give at most one of `expires_at` and `expires_in_days`;
/// with neither the token does not expire.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// What the token is for: 1–128 characters, no control characters.
    #[schema(example = "ci-pipeline")]
    name: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = RoleDto)]
    role: String,
    /// When it stops working (RFC 3339, in the future).
    #[schema(example = "2027-01-01T00:00:00Z")]
    expires_at: Option<String>,
    /// How many days from now it stops working (1 to 36500).
    expires_in_days: Option<u32>,
}

/// Every token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenList {
    /// The tokens, newest first, revoked ones included.
    items: Vec<TokenDto>,
}

/// The caller's own token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WhoAmI {
    /// Token id.
    id: String,
    /// Token name.
    name: String,
    /// Its role.
    role: RoleDto,
    /// When it stops working (RFC 3339), `null` for never.
    expires_at: Option<String>,
}

fn token_name(raw: String) -> Result<String, ApiError> {
    let chars = raw.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || raw.chars().any(char::is_control) {
        return Err(ApiError::ValidationFailed(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(raw)
}

/// When a secret created at `now` stops working, from the optional `expires_at` (RFC 3339, in
/// the future) and `expires_in_days` (1 to 36500) of a create request: at most one may be given,
/// and with neither it never expires. Shared by API tokens and device credentials.
///
/// # Errors
/// 422 `validation_failed` when both are given or either is out of range.
pub(crate) fn expiry(
    expires_at: Option<&str>,
    expires_in_days: Option<u32>,
    now: Timestamp,
) -> Result<Option<Timestamp>, ApiError> {
    match (expires_at, expires_in_days) {
        (Some(_), Some(_)) => Err(ApiError::ValidationFailed(
            "give expires_at or expires_in_days, not both".to_owned(),
        )),
        (Some(at), None) => {
            let at = Timestamp::parse_rfc3339(at)?;
            if at <= now {
                return Err(ApiError::ValidationFailed(
                    "expires_at must be in the future".to_owned(),
                ));
            }
            Ok(Some(at))
        }
        (None, Some(days)) => {
            if !(1..=MAX_EXPIRES_IN_DAYS).contains(&days) {
                return Err(ApiError::ValidationFailed(format!(
                    "expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}"
                )));
            }
            Ok(Some(Timestamp::from_millis(now.millis() + i64::from(days) * MILLIS_PER_DAY)))
        }
        (None, None) => Ok(None),
    }
}

/// Create a token. The response holds its secret, which is never shown again.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = CreateToken,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "Created, with the secret in `token`", body = CreatedTokenDto),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: name, role or expiry", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_token(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<CreatedTokenDto>), ApiError> {
    let name = token_name(body.name)?;
    let role: Role = body.role.parse()?;
    let m = state.mutation_by(&caller.token);
    let expires_at = expiry(body.expires_at.as_deref(), body.expires_in_days, m.at)?;
    let secret = generate_token_secret();
    let new = NewToken {
        id: generate_token_id(),
        name,
        role,
        hash: TokenHash::of_secret(&secret),
        expires_at,
    };
    let t = state.store().create_token(&new, &m).await?;
    let TokenDto { id, name, role, created_at, expires_at, revoked_at } = TokenDto::from(&t);
    Ok((
        StatusCode::CREATED,
        Json(CreatedTokenDto { id, name, role, created_at, expires_at, revoked_at, token: secret }),
    ))
}

/// List all tokens, newest first, revoked ones included (never their secrets).
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "Every token", body = TokenList)),
)]
pub(crate) async fn list_tokens(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.store().list_tokens().await?;
    Ok(Json(TokenList { items: tokens.iter().map(TokenDto::from).collect() }))
}

/// Revoke a token: it stops working at once (revoking twice keeps the first time).
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The revoked token", body = TokenDto),
        (status = 404, description = "`token_not_found`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn revoke_token(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    TokenPath(id): TokenPath,
) -> Result<Json<TokenDto>, ApiError> {
    let t = state.store().revoke_token(&id, &state.mutation_by(&caller.token)).await?;
    Ok(Json(TokenDto::from(&t)))
}

/// Tell the caller which token it uses.
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "tokens",
    security(("bearer" = ["viewer"])),
    responses((status = 200, description = "The caller's token", body = WhoAmI)),
)]
pub(crate) async fn whoami(caller: Caller<Viewer>) -> Json<WhoAmI> {
    let t = caller.token;
    Json(WhoAmI {
        id: t.id.as_str().to_owned(),
        name: t.name,
        role: t.role.into(),
        expires_at: t.expires_at.map(|e| e.to_rfc3339()),
    })
}

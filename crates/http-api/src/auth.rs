//! Operator authentication: API token secrets, and the extractor that turns
//! `Authorization: Bearer <secret>` into the calling token with a role check.
//!
//! A generated secret is `herd_` and 64 lowercase hex digits (32 bytes from the OS random number
//! generator); the first admin token may also carry a secret the operator chose. The store keeps
//! only its SHA-256 ([`TokenHash`]): a request's secret is hashed, looked up, and the stored hash
//! compared again in constant time. Every way of failing (no header, not a bearer token, unknown,
//! revoked, expired) is the same 401 `unauthorized` with `WWW-Authenticate: Bearer`; a valid
//! token whose role is too weak is 403 `forbidden`.
//!
//! Device credential secrets are made the same way with their own prefix, `hdc_`; devices present
//! them over MQTT, never here.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use domain::{ApiToken, CredentialId, Role, TokenHash, TokenId};
use rand::TryRngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// The prefix of every token secret, so leaked secrets are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "herd_";

/// A new token secret: `herd_` and 64 lowercase hex digits from 32 bytes of the OS random number
/// generator. Shown to its owner once; only its [`TokenHash`] is stored.
///
/// # Panics
/// When the operating system cannot provide random bytes, which leaves no safe way to make a
/// credential.
pub fn generate_token_secret() -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes::<32>()))
}

/// A new token id (`tok_` and 16 hex digits) from 8 random bytes of the OS random number
/// generator.
///
/// # Panics
/// When the operating system cannot provide random bytes.
pub fn generate_token_id() -> TokenId {
    TokenId::from_random(random_bytes::<8>())
}

/// The prefix of every device credential secret, distinct from [`TOKEN_PREFIX`] so a device
/// secret is never mistaken for an operator token (and scanners can tell them apart).
pub const CREDENTIAL_PREFIX: &str = "hdc_";

/// A new device credential secret: `hdc_` and 64 lowercase hex digits from 32 bytes of the OS
/// random number generator. Shown to the operator once; only its [`TokenHash`] is stored.
///
/// # Panics
/// When the operating system cannot provide random bytes.
pub fn generate_credential_secret() -> String {
    format!("{CREDENTIAL_PREFIX}{}", hex::encode(random_bytes::<32>()))
}

/// A new credential id (`cred_` and 16 hex digits) from 8 random bytes of the OS random number
/// generator.
///
/// # Panics
/// When the operating system cannot provide random bytes.
pub fn generate_credential_id() -> CredentialId {
    CredentialId::from_random(random_bytes::<8>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator is available");
    bytes
}

/// Longest secret looked up, in bytes. Generated secrets are 69 bytes; an operator-chosen
/// bootstrap secret (`HERD_ADMIN_TOKEN`) is at most 256.
const MAX_SECRET_LEN: usize = 512;

/// Whether `secret` could be a token secret at all: a cheap check before any store lookup.
///
/// Not only generated `herd_…` secrets are valid: the server may bootstrap the first admin
/// token from a secret the operator chose.
fn plausible_secret(secret: &str) -> bool {
    !secret.is_empty()
        && secret.len() <= MAX_SECRET_LEN
        && !secret.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The weakest role a route accepts, as a type so handlers state it in their signature.
pub(crate) trait MinRole {
    /// The role.
    const ROLE: Role;
}

/// Routes that read.
#[derive(Debug)]
pub(crate) struct Viewer;
/// Routes that change devices and groups.
#[derive(Debug)]
pub(crate) struct Operator;
/// Routes that manage tokens.
#[derive(Debug)]
pub(crate) struct Admin;

impl MinRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// The authenticated caller of a route that needs at least role `R`.
///
/// Put it first among a handler's extractors, so a request without a valid token is refused
/// before its path, query or body are looked at.
#[derive(Debug)]
pub(crate) struct Caller<R> {
    /// The token the request presented.
    pub(crate) token: ApiToken,
    role: PhantomData<R>,
}

impl<R: MinRole> FromRequestParts<AppState> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = authenticate(parts, state).await?;
        tracing::Span::current().record("token_id", token.id.as_str());
        if !token.role.allows(R::ROLE) {
            return Err(ApiError::Forbidden { needed: R::ROLE });
        }
        Ok(Self { token, role: PhantomData })
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<ApiToken, ApiError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization: Bearer token"))?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, secret)| secret.trim())
        .ok_or(ApiError::Unauthorized("the Authorization header is not a bearer token"))?;
    if !plausible_secret(secret) {
        return Err(ApiError::Unauthorized("the bearer token is not valid"));
    }
    let hash = TokenHash::of_secret(secret);
    let token = state
        .store()
        .token_by_hash(&hash)
        .await?
        .ok_or(ApiError::Unauthorized("the bearer token is not valid"))?;
    // The store found the row by this hash; comparing again in constant time keeps the check
    // independent of how a backend compares its index keys.
    if !bool::from(token.hash.as_bytes().ct_eq(hash.as_bytes())) {
        return Err(ApiError::Unauthorized("the bearer token is not valid"));
    }
    if !token.is_usable_at(state.now()) {
        return Err(ApiError::Unauthorized("the bearer token is revoked or expired"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_documented_shape() {
        let a = generate_token_secret();
        let b = generate_token_secret();
        let hex = a.strip_prefix(TOKEN_PREFIX).unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{a}");
        assert_ne!(a, b);
        assert!(TokenId::new(generate_token_id().as_str()).is_ok());
    }

    #[test]
    fn credential_secrets_have_the_documented_shape() {
        let a = generate_credential_secret();
        let hex = a.strip_prefix(CREDENTIAL_PREFIX).unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{a}");
        assert_ne!(a, generate_credential_secret());
        assert!(CredentialId::new(generate_credential_id().as_str()).is_ok());
    }

    #[test]
    fn implausible_secrets_are_refused_without_lookup() {
        for bad in ["", "a b", "tab\there", &"x".repeat(MAX_SECRET_LEN + 1)] {
            assert!(!plausible_secret(bad), "{bad}");
        }
        for ok in [generate_token_secret().as_str(), "operator-chosen-bootstrap-secret"] {
            assert!(plausible_secret(ok), "{ok}");
        }
    }
}

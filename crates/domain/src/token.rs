//! Operator API tokens and roles.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::{InvalidInput, Timestamp};

/// What an operator may do. Roles are ordered: each includes the rights of the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything an operator can see; changes nothing.
    Viewer,
    /// Also creates, changes and deletes devices and groups.
    Operator,
    /// Also manages tokens and settings.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Self; 3] = [Self::Viewer, Self::Operator, Self::Admin];

    /// The role's name as used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether this role includes the rights of `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "role",
                format!("{s:?} is not a role; expected admin, operator or viewer"),
            )
        })
    }
}

/// A token's public identifier (`tok_` and 16 hex digits), safe to show and log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(String);

impl TokenId {
    /// Validates a token id.
    ///
    /// # Errors
    /// [`InvalidInput`] when it is not `tok_` followed by 16 lowercase hex digits.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = id.into();
        let ok = id.strip_prefix("tok_").is_some_and(|h| {
            h.len() == 16 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(id))
        } else {
            Err(InvalidInput::new("token id", format!("{id:?} is not a token id")))
        }
    }

    /// Builds a token id from 8 random bytes.
    pub fn from_random(bytes: [u8; 8]) -> Self {
        Self(format!("tok_{}", hex::encode(bytes)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a token's secret text: what the store keeps instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented secret.
    pub fn of_secret(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Wraps stored hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even a hash is not printed whole: logs are not the place to keep it.
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

/// An API token as stored: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Public id.
    pub id: TokenId,
    /// What the token is for (free text, shown in listings and audit).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret.
    pub hash: TokenHash,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

impl ApiToken {
    /// Whether the token authenticates requests at `now`.
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    /// A compact JSON summary for audit records (never the hash).
    pub fn audit_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.as_str(),
            "name": self.name,
            "role": self.role.as_str(),
            "expires_at": self.expires_at.map(Timestamp::to_rfc3339),
            "revoked_at": self.revoked_at.map(Timestamp::to_rfc3339),
        })
    }
}

/// What it takes to store a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Public id.
    pub id: TokenId,
    /// What the token is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret.
    pub hash: TokenHash,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn token_ids() {
        let id = TokenId::from_random([0xab; 8]);
        assert_eq!(id.as_str(), "tok_abababababababab");
        assert!(TokenId::new(id.as_str()).is_ok());
        assert!(TokenId::new("tok_xyz").is_err());
    }
}

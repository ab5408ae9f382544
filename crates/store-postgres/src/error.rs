//! Errors of this backend and how they become [`StoreError`]s.
//!
//! Callers only ever see [`StoreError`]; the variants here are the backend-specific causes wrapped in
//! [`StoreError::Backend`], so logs say what went wrong (a bad schema name, a row that no longer
//! decodes) without the store panicking.

use std::fmt;

use store::StoreError;

/// A failure specific to the PostgreSQL backend, reported inside [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The configured schema name is not a plain lowercase SQL identifier.
    #[error(
        "invalid schema name {0:?}: use 1 to 63 characters of [a-z0-9_], not starting with a digit"
    )]
    InvalidSchema(String),
    /// `max_connections` is zero: the pool could never hand out a connection.
    #[error("max_connections must be at least 1")]
    InvalidPoolSize,
    /// The server did not accept a connection in time.
    #[error("could not connect to PostgreSQL within {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// A stored row no longer decodes into a domain value (edited by hand, or corrupted).
    #[error("stored {what} is invalid: {reason}")]
    CorruptRow {
        /// What was being read (`device tags`, `audit hash`, …).
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A number does not fit its column (a sequence number beyond `i64`).
    #[error("{what} {value} does not fit in a 64-bit integer column")]
    OutOfRange {
        /// What the number is.
        what: &'static str,
        /// The number.
        value: u64,
    },
    /// Applying the embedded migrations failed.
    #[error("failed to migrate the database schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl PostgresError {
    /// A stored value that does not decode.
    pub(crate) fn corrupt(what: &'static str, reason: &dyn fmt::Display) -> StoreError {
        StoreError::backend(Self::CorruptRow { what, reason: reason.to_string() })
    }
}

/// Wraps a driver error; used as `.map_err(db)` on every query.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    StoreError::backend(e)
}

//! Wall-clock instants with millisecond precision, as stored and hashed.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch (UTC).
///
/// Stored as a 64-bit integer in every backend and rendered as RFC 3339 at the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Builds a timestamp from milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// The current time of the system clock.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self((now.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// Parses an RFC 3339 date-time (`2026-11-26T12:00:00Z`).
    ///
    /// # Errors
    /// [`crate::InvalidInput`] when the text is not RFC 3339.
    pub fn parse_rfc3339(s: &str) -> Result<Self, crate::InvalidInput> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
            crate::InvalidInput::new("timestamp", format!("{s:?} is not RFC 3339: {e}"))
        })?;
        Ok(Self((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    /// Renders the instant as RFC 3339 in UTC with millisecond precision.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => {
                let t = t.replace_nanosecond((t.nanosecond() / 1_000_000) * 1_000_000).unwrap_or(t);
                t.format(&Rfc3339).unwrap_or_else(|_| self.0.to_string())
            }
            Err(_) => self.0.to_string(),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-26T12:34:56.789Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-26T12:34:56.789Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}

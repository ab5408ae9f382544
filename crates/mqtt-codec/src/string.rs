//! Validated MQTT UTF-8 Encoded Strings (§1.5.4) and the Client Identifier built on them.
//!
//! A string on the wire is well-formed UTF-8 without U+0000 and at most 65,535 bytes long. Rust's `str`
//! already excludes ill-formed sequences and surrogates ([MQTT-1.5.4-1]); [`MqttString`] adds the other two
//! rules ([MQTT-1.5.4-2] and the two-byte length prefix), so any value of the type can be encoded.

use std::fmt;

/// The largest string or binary field: its length is a two-byte integer (§1.5.4, §1.5.6).
pub(crate) const MAX_FIELD_LEN: usize = 65_535;

/// Why a string cannot be an MQTT UTF-8 Encoded String.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    /// The bytes are not well-formed UTF-8, or encode a surrogate code point ([MQTT-1.5.4-1]).
    #[error("ill-formed utf-8")]
    InvalidUtf8,
    /// The string contains U+0000 ([MQTT-1.5.4-2]).
    #[error("contains U+0000")]
    NullCharacter,
    /// The string is longer than 65,535 bytes (§1.5.4).
    #[error("longer than 65535 bytes")]
    TooLong,
}

/// A UTF-8 Encoded String as MQTT defines it (§1.5.4): no U+0000, at most 65,535 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MqttString(String);

impl MqttString {
    /// Validates `value` as an MQTT string.
    ///
    /// # Errors
    ///
    /// [`StringError::NullCharacter`] or [`StringError::TooLong`].
    pub fn new(value: impl Into<String>) -> Result<Self, StringError> {
        let value = value.into();
        check(&value)?;
        Ok(Self(value))
    }

    /// Decodes and validates the bytes of a string field.
    pub(crate) fn from_utf8(bytes: &[u8]) -> Result<Self, StringError> {
        let value = std::str::from_utf8(bytes).map_err(|_| StringError::InvalidUtf8)?;
        Self::new(value)
    }

    /// The string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The string, giving up the validation.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }

    /// Length in bytes, as written after the two-byte length prefix.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn check(value: &str) -> Result<(), StringError> {
    if value.len() > MAX_FIELD_LEN {
        return Err(StringError::TooLong);
    }
    if value.contains('\0') {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MqttString {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for MqttString {
    type Error = StringError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for MqttString {
    type Error = StringError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// The Client Identifier of a CONNECT (§3.1.3.1). Any MQTT string, including the empty one (which asks
/// the server to assign an identifier); which identifiers a server accepts is the server's policy
/// ([MQTT-3.1.3-5] only lists what it MUST accept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(MqttString);

impl ClientId {
    /// Validates `value` as a client identifier.
    ///
    /// # Errors
    ///
    /// See [`MqttString::new`].
    pub fn new(value: impl Into<String>) -> Result<Self, StringError> {
        MqttString::new(value).map(Self)
    }

    /// The identifier.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the identifier is empty (the client asks the server to assign one, §3.1.3.1).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }
}

impl From<MqttString> for ClientId {
    fn from(value: MqttString) -> Self {
        Self(value)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_null_and_long_strings() {
        assert_eq!(MqttString::new("a\0b"), Err(StringError::NullCharacter));
        assert_eq!(MqttString::new("x".repeat(65_536)), Err(StringError::TooLong));
        assert!(MqttString::new("x".repeat(65_535)).is_ok());
    }

    #[test]
    fn rejects_surrogates_and_overlong_utf8() {
        // U+D800 encoded as UTF-8 [MQTT-1.5.4-1].
        assert_eq!(MqttString::from_utf8(&[0xED, 0xA0, 0x80]), Err(StringError::InvalidUtf8));
        // An overlong encoding of '/'.
        assert_eq!(MqttString::from_utf8(&[0xC0, 0xAF]), Err(StringError::InvalidUtf8));
        // U+FEFF is not stripped [MQTT-1.5.4-3].
        assert_eq!(MqttString::from_utf8(&[0xEF, 0xBB, 0xBF]).unwrap().as_str(), "\u{feff}");
    }
}

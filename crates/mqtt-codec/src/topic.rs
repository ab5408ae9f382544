//! Topic Names and Topic Filters (§4.7) and shared-subscription filters (§4.8.2).
//!
//! A [`TopicName`] is where a message is published: no wildcards, at least one character. A
//! [`TopicFilter`] is what a client subscribes to: `+` matches one level and must fill it, `#` matches the
//! rest and must be the whole last level. A filter of the form `$share/{ShareName}/{filter}` is a shared
//! subscription; it is parsed on both protocol versions (Mosquitto and others accept shared subscriptions
//! from v3.1.1 clients too).

use std::fmt;

use crate::MqttString;
use crate::string::check;

const SHARE_PREFIX: &str = "$share/";

/// Why a string is not a valid Topic Name or Topic Filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic Names and Topic Filters are at least one character long ([MQTT-4.7.3-1]).
    #[error("empty")]
    Empty,
    /// The string contains U+0000 ([MQTT-4.7.3-2]) or is longer than 65,535 bytes.
    #[error("not an mqtt string")]
    InvalidString,
    /// A Topic Name contains `+` or `#` ([MQTT-3.3.2-2]).
    #[error("wildcard in topic name")]
    WildcardInName,
    /// `#` is not alone in the last level of a filter ([MQTT-4.7.1-2]).
    #[error("misplaced '#'")]
    MisplacedMultiLevelWildcard,
    /// `+` does not fill a whole level of a filter ([MQTT-4.7.1-3]).
    #[error("misplaced '+'")]
    MisplacedSingleLevelWildcard,
    /// A `$share/` filter has an empty ShareName, one containing `+` or `#`, or no filter after the
    /// ShareName ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
    #[error("invalid shared subscription")]
    InvalidShare,
}

/// A Topic Name: the topic of a PUBLISH or a Will (§4.7). Non-empty, without wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Validates `value` as a Topic Name.
    ///
    /// # Errors
    ///
    /// [`TopicError::Empty`], [`TopicError::InvalidString`] or [`TopicError::WildcardInName`].
    pub fn new(value: impl Into<String>) -> Result<Self, TopicError> {
        let value = MqttString::new(value).map_err(|_| TopicError::InvalidString)?;
        Self::from_mqtt_string(value)
    }

    pub(crate) fn from_mqtt_string(value: MqttString) -> Result<Self, TopicError> {
        if value.is_empty() {
            return Err(TopicError::Empty);
        }
        if value.as_str().contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(value))
    }

    /// The topic.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The topic's levels, split on `/` (§4.7.1.1).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.as_str().split('/')
    }

    pub(crate) fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// A Topic Filter in a SUBSCRIBE or UNSUBSCRIBE (§4.7), possibly a shared subscription (§4.8.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    /// The whole filter as sent on the wire, `$share/` prefix included.
    full: MqttString,
    /// For a shared subscription, the byte offset where the filter after `$share/{ShareName}/` begins.
    filter_start: Option<usize>,
}

impl TopicFilter {
    /// Validates `value` as a Topic Filter, parsing a `$share/{ShareName}/{filter}` prefix.
    ///
    /// # Errors
    ///
    /// A [`TopicError`] naming the broken rule.
    pub fn new(value: impl Into<String>) -> Result<Self, TopicError> {
        let value = MqttString::new(value).map_err(|_| TopicError::InvalidString)?;
        Self::from_mqtt_string(value)
    }

    pub(crate) fn from_mqtt_string(full: MqttString) -> Result<Self, TopicError> {
        let filter_start = match full.as_str().strip_prefix(SHARE_PREFIX) {
            Some(rest) => {
                let (share_name, filter) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
                if share_name.is_empty() || share_name.contains(['+', '#']) || filter.is_empty() {
                    return Err(TopicError::InvalidShare);
                }
                check_filter(filter)?;
                Some(full.len() - filter.len())
            }
            None => {
                check_filter(full.as_str())?;
                None
            }
        };
        Ok(Self { full, filter_start })
    }

    /// The filter as sent on the wire, including any `$share/{ShareName}/` prefix.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.full.as_str()
    }

    /// The filter that topics are matched against: without the `$share/{ShareName}/` prefix.
    #[must_use]
    pub fn filter(&self) -> &str {
        match self.filter_start {
            Some(start) => self.full.as_str().get(start..).unwrap_or_default(),
            None => self.full.as_str(),
        }
    }

    /// The ShareName of a shared subscription (§4.8.2), `None` for an ordinary filter.
    #[must_use]
    pub fn share_name(&self) -> Option<&str> {
        let start = self.filter_start?;
        // `filter_start` points after "$share/{ShareName}/".
        self.full.as_str().get(SHARE_PREFIX.len()..start.checked_sub(1)?)
    }

    /// Whether the filter contains `+` or `#`.
    #[must_use]
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    pub(crate) fn as_mqtt_string(&self) -> &MqttString {
        &self.full
    }
}

fn check_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    check(filter).map_err(|_| TopicError::InvalidString)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_name(input: &str, expected: Result<(), TopicError>) {
        assert_eq!(TopicName::new(input).map(|_| ()), expected, "{input:?}");
    }

    #[track_caller]
    fn check_filter(input: &str, expected: Result<(Option<&str>, &str), TopicError>) {
        let actual = TopicFilter::new(input);
        let actual = actual.as_ref().map(|f| (f.share_name(), f.filter())).map_err(|e| *e);
        assert_eq!(actual, expected, "{input:?}");
    }

    #[test]
    fn topic_names() {
        check_name("a/b", Ok(()));
        check_name("/", Ok(()));
        check_name("$SYS/x", Ok(()));
        check_name("", Err(TopicError::Empty)); // [MQTT-4.7.3-1]
        check_name("a/+", Err(TopicError::WildcardInName)); // [MQTT-3.3.2-2]
        check_name("a#", Err(TopicError::WildcardInName));
        check_name("a\0", Err(TopicError::InvalidString)); // [MQTT-4.7.3-2]
    }

    #[test]
    fn topic_filters() {
        // Examples from §4.7.1.2 and §4.7.1.3.
        check_filter("sport/tennis/player1/#", Ok((None, "sport/tennis/player1/#")));
        check_filter("#", Ok((None, "#")));
        check_filter("sport/tennis#", Err(TopicError::MisplacedMultiLevelWildcard));
        check_filter("sport/tennis/#/ranking", Err(TopicError::MisplacedMultiLevelWildcard));
        check_filter("+", Ok((None, "+")));
        check_filter("+/tennis/#", Ok((None, "+/tennis/#")));
        check_filter("sport+", Err(TopicError::MisplacedSingleLevelWildcard));
        check_filter("sport/+/player1", Ok((None, "sport/+/player1")));
        check_filter("/+", Ok((None, "/+")));
        check_filter("", Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters() {
        // §4.8.2.
        check_filter("$share/consumer1/sport/tennis/+", Ok((Some("consumer1"), "sport/tennis/+")));
        check_filter("$share/g//", Ok((Some("g"), "/")));
        check_filter("$share//a", Err(TopicError::InvalidShare)); // [MQTT-4.8.2-1]
        check_filter("$share/g+/a", Err(TopicError::InvalidShare)); // [MQTT-4.8.2-2]
        check_filter("$share/g", Err(TopicError::InvalidShare));
        check_filter("$share/g/", Err(TopicError::InvalidShare));
        check_filter("$share/g/a#", Err(TopicError::MisplacedMultiLevelWildcard));
        check_filter("$sharex/a", Ok((None, "$sharex/a")));
    }
}

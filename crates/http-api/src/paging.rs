//! Cursor paging and the device list query shared by `GET /api/v1/devices` and
//! `GET /api/v1/groups/{name}/devices`.
//!
//! A cursor is the hex form of the last key of the previous page (a device id or group name),
//! prefixed with `c1`: opaque to clients, cheap to check, and versioned so its form can change.

use std::num::NonZeroU32;

use domain::{DeviceId, Field, Filter, GroupName, LifecycleState, TagKey};
use store::{DeviceQuery, Page};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{RawQuery, parse_limit, set_once, unknown_parameter};

const CURSOR_PREFIX: &str = "c1";

/// The `next_cursor` of a page: the cursor after its last item's `key` when more items follow,
/// `None` on the last page.
pub(crate) fn next_cursor<T>(page: &Page<T>, key: impl FnOnce(&T) -> &str) -> Option<String> {
    if page.has_more { page.items.last().map(|last| encode_cursor(key(last))) } else { None }
}

/// The cursor that continues after `key`.
fn encode_cursor(key: &str) -> String {
    format!("{CURSOR_PREFIX}{}", hex::encode(key))
}

/// The key a cursor continues after, before validation as an id or name.
fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(ApiError::InvalidCursor)
}

/// The device a device cursor continues after.
pub(crate) fn device_cursor(cursor: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(decode_cursor(cursor)?).map_err(|_| ApiError::InvalidCursor)
}

/// The group a group cursor continues after.
pub(crate) fn group_cursor(cursor: &str) -> Result<GroupName, ApiError> {
    GroupName::new(decode_cursor(cursor)?).map_err(|_| ApiError::InvalidCursor)
}

/// A page size the store accepts.
pub(crate) fn page_limit(limit: u32) -> NonZeroU32 {
    NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN)
}

/// Query parameters of device lists. All given conditions must hold (they are joined with
/// `and`).
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceListParams {
    /// A filter expression, e.g. `tags.site = 'berlin' and state in ('active', 'suspended')`.
    filter: Option<String>,
    /// Only devices in this lifecycle state.
    #[param(value_type = Option<crate::devices::StateDto>)]
    state: Option<String>,
    /// Only devices whose id starts with this text.
    id_prefix: Option<String>,
    /// Only devices with this tag, as `key=value`; repeat for several tags.
    #[param(style = Form, explode, required = false)]
    tag: Vec<String>,
    /// Page size, 1 to 1000 (default from the server's configuration, normally 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

const DEVICE_LIST_PARAMS: &[&str] = &["filter", "state", "id_prefix", "tag", "limit", "cursor"];

impl DeviceListParams {
    /// Parses the raw query string.
    ///
    /// # Errors
    /// `invalid_query` for unknown or repeated parameters.
    pub(crate) fn parse(query: &RawQuery) -> Result<Self, ApiError> {
        let mut p = Self::default();
        let mut limit = None;
        for (key, value) in query.pairs() {
            match key.as_str() {
                "filter" => set_once(&mut p.filter, &key, value)?,
                "state" => set_once(&mut p.state, &key, value)?,
                "id_prefix" => set_once(&mut p.id_prefix, &key, value)?,
                "tag" => p.tag.push(value),
                "limit" => set_once(&mut limit, &key, value)?,
                "cursor" => set_once(&mut p.cursor, &key, value)?,
                _ => return Err(unknown_parameter(&key, DEVICE_LIST_PARAMS)),
            }
        }
        p.limit = match limit {
            Some(raw) => Some(parse_limit(Some(&raw), 1)?),
            None => None,
        };
        Ok(p)
    }

    /// The store query these parameters ask for.
    ///
    /// # Errors
    /// `invalid_filter`, `invalid_cursor`, `invalid_device_id` (for `id_prefix`), or
    /// `validation_failed` for a bad state or tag.
    pub(crate) fn into_query(self, default_limit: u32) -> Result<DeviceQuery, ApiError> {
        let mut parts = Vec::new();
        if let Some(expr) = &self.filter {
            parts.push(Filter::parse(expr)?);
        }
        if let Some(state) = &self.state {
            let state: LifecycleState = state.parse()?;
            parts.push(Filter::Eq(Field::State, state.as_str().to_owned()));
        }
        if let Some(prefix) = self.id_prefix {
            // Every non-empty prefix of a valid id is itself a valid id.
            if !prefix.is_empty() {
                DeviceId::new(prefix.clone())
                    .map_err(|e| ApiError::InvalidDeviceId(format!("id_prefix: {e}")))?;
            }
            parts.push(Filter::StartsWith(Field::Id, prefix));
        }
        for tag in self.tag {
            let Some((key, value)) = tag.split_once('=') else {
                return Err(ApiError::ValidationFailed(format!(
                    "tag {tag:?} must be written key=value"
                )));
            };
            parts.push(Filter::Eq(Field::Tag(TagKey::new(key)?), value.to_owned()));
        }
        let after = self.cursor.as_deref().map(device_cursor).transpose()?;
        Ok(DeviceQuery {
            filter: Filter::all(parts),
            after,
            limit: page_limit(self.limit.unwrap_or(default_limit)),
        })
    }
}

/// Query parameters of lists paged by cursor alone (groups).
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// Page size, 1 to 1000 (default from the server's configuration, normally 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub(crate) cursor: Option<String>,
}

impl PageParams {
    /// Parses the raw query string.
    ///
    /// # Errors
    /// `invalid_query` for unknown or repeated parameters, `validation_failed` for a limit out
    /// of range.
    pub(crate) fn parse(query: &RawQuery) -> Result<Self, ApiError> {
        let mut p = Self::default();
        let mut limit = None;
        for (key, value) in query.pairs() {
            match key.as_str() {
                "limit" => set_once(&mut limit, &key, value)?,
                "cursor" => set_once(&mut p.cursor, &key, value)?,
                _ => return Err(unknown_parameter(&key, &["limit", "cursor"])),
            }
        }
        p.limit = match limit {
            Some(raw) => Some(parse_limit(Some(&raw), 1)?),
            None => None,
        };
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let c = encode_cursor("sensor-01");
        assert_eq!(device_cursor(&c).unwrap().as_str(), "sensor-01");
        for bad in ["", "sensor-01", "c1zz", "c1", &encode_cursor("a b")] {
            assert!(matches!(device_cursor(bad), Err(ApiError::InvalidCursor)), "{bad}");
        }
    }
}

//! Topic rules for MQTT clients that are not devices (integration applications and anonymous
//! clients), and the filter algebra they rest on.
//!
//! A [`TopicRules`] holds three lists of MQTT topic filters (`+` and `#` as in MQTT §4.7):
//!
//! - **publish to a topic**: allowed when a `publish` filter matches it and no `deny` filter does;
//! - **subscribe to a filter**: allowed when a `subscribe` filter [covers](filter_covers) it
//!   (matches every topic it matches) and no `deny` filter [overlaps](filters_overlap) it (matches a
//!   topic it matches). The broker checks a subscription once, when it is made, and then delivers
//!   every matching message, so "deny wins" must hold for every topic the subscription could ever
//!   deliver: one deniable topic refuses the whole filter. A `$share/{group}/{filter}` subscription
//!   is judged by its `{filter}`.
//! - **the device subtree** `devices/…` is reached only through rules whose first level is literally
//!   `devices`: a broad `#` or `+/…` rule opens everything else but not device topics, so an
//!   integration sees `devices/+/telemetry` only when a rule names it. For the same reason a
//!   subscription that could match a device topic (`#`, `+/status`) must be covered by such a rule.
//! - **identity requests** (`devices/{id}/identity/…`, a device asking for a new certificate or
//!   credential) are published by the device itself only: no rule lets another client publish
//!   there, so nobody obtains a credential for a device by speaking for it.
//! - **job reports** (`devices/{id}/jobs/{job}/update`, `devices/{id}/jobs/get`) are likewise
//!   published by the device itself only, so no other client reports a job's outcome for it.
//! - **Herd's own topics** (`$herd/…`, the bootstrap topics of provisioning over MQTT, whose
//!   answers carry a device's new secret) are out of reach of every rule: no rule lets a client
//!   publish there or subscribe to a filter that could match a topic there, whatever it names.
//! - **`$` topics**: a filter whose first level is a wildcard never matches a topic that starts
//!   with `$` ([MQTT-4.7.2-1]), so `#` neither covers nor overlaps `$SYS/…`.

use mqtt_broker::Acl;
use mqtt_codec::{TopicFilter, TopicName};

/// The first level of every device topic (`devices/{id}/…`).
const DEVICES: &str = "devices";

/// The filter that matches every device topic.
const DEVICE_SUBTREE: &str = "devices/#";

/// The topics of devices' identity requests, which only the device itself may publish to.
const IDENTITY_REQUESTS: &str = "devices/+/identity/#";

/// The topics where devices report on their job executions and ask for their pending jobs, which
/// only the device itself may publish to (see `crate::jobs`).
const JOB_REQUESTS: [&str; 2] = ["devices/+/jobs/+/update", "devices/+/jobs/get"];

/// Herd's own topics (provisioning over MQTT), which no rule opens.
const HERD_TOPICS: &str = "$herd/#";

/// Whether every topic that `requested` matches is also matched by `allowed`.
///
/// Both are plain filters (no `$share/` prefix). A topic name is a filter without wildcards, so
/// `filter_covers(filter, topic)` is also "`filter` matches `topic`".
#[must_use]
pub fn filter_covers(allowed: &str, requested: &str) -> bool {
    if starts_with_wildcard(allowed) && requested.starts_with('$') {
        return false;
    }
    let (mut allowed, mut requested) = (allowed.split('/'), requested.split('/'));
    loop {
        match (allowed.next(), requested.next()) {
            // `#` matches the rest, including no level at all (`a/#` matches `a`).
            (Some("#"), _) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            // `+` stands for any one level, but not for the many levels of a `#`.
            (Some("+"), Some(level)) => {
                if level == "#" {
                    return false;
                }
            }
            (Some(literal), Some(level)) => {
                if literal != level {
                    return false;
                }
            }
        }
    }
}

/// Whether some topic is matched by both `a` and `b` (plain filters, no `$share/` prefix).
#[must_use]
pub fn filters_overlap(a: &str, b: &str) -> bool {
    // A topic starting with `$` is matched only by filters whose first level is that literal.
    if (starts_with_wildcard(a) && b.starts_with('$'))
        || (starts_with_wildcard(b) && a.starts_with('$'))
    {
        return false;
    }
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) => {
                if x != y {
                    return false;
                }
            }
        }
    }
}

/// Whether the first level of `filter` is a wildcard (wildcards always fill a whole level).
fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with(['+', '#'])
}

/// Whether the first level of `filter` (or topic) is literally `devices`.
fn names_device_subtree(filter: &str) -> bool {
    filter.split('/').next() == Some(DEVICES)
}

/// What a non-device client may publish and subscribe to (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicRules {
    publish: Vec<String>,
    subscribe: Vec<String>,
    deny: Vec<String>,
}

impl TopicRules {
    /// Rules from lists of filters.
    ///
    /// # Errors
    /// One message per filter that is not a valid MQTT topic filter or is a `$share/` filter
    /// (rules name plain filters; a shared subscription is judged by its inner filter), naming
    /// the list it is in.
    pub fn new<S: AsRef<str>>(
        publish: &[S],
        subscribe: &[S],
        deny: &[S],
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut list = |name: &str, filters: &[S]| -> Vec<String> {
            let mut valid = Vec::with_capacity(filters.len());
            for filter in filters {
                let filter = filter.as_ref();
                match TopicFilter::new(filter) {
                    Ok(f) if f.share_name().is_some() => problems.push(format!(
                        "{name}: {filter:?} is a shared subscription; write the filter without \
                         $share/{{group}}/ (shared subscriptions are judged by their filter)"
                    )),
                    Ok(_) => valid.push(filter.to_owned()),
                    Err(e) => {
                        problems.push(format!("{name}: {filter:?} is not a topic filter ({e})"));
                    }
                }
            }
            valid
        };
        let rules = Self {
            publish: list("publish", publish),
            subscribe: list("subscribe", subscribe),
            deny: list("deny", deny),
        };
        if problems.is_empty() { Ok(rules) } else { Err(problems) }
    }

    /// Whether the rules allow nothing at all (a client bound by them can only connect).
    #[must_use]
    pub fn allows_nothing(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty()
    }

    /// Whether `allowed`, one of the rules' allow filters, may open `requested`, which reaches the
    /// device subtree when `devices` is true.
    fn opens(allowed: &str, requested: &str, devices: bool) -> bool {
        (!devices || names_device_subtree(allowed)) && filter_covers(allowed, requested)
    }
}

impl Acl for TopicRules {
    fn may_publish(&self, topic: &TopicName) -> bool {
        let topic = topic.as_str();
        if filter_covers(IDENTITY_REQUESTS, topic)
            || JOB_REQUESTS.iter().any(|f| filter_covers(f, topic))
            || filter_covers(HERD_TOPICS, topic)
            || self.deny.iter().any(|d| filter_covers(d, topic))
        {
            return false;
        }
        let devices = names_device_subtree(topic);
        self.publish.iter().any(|p| Self::opens(p, topic, devices))
    }

    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        let filter = filter.filter();
        if filters_overlap(HERD_TOPICS, filter)
            || self.deny.iter().any(|d| filters_overlap(d, filter))
        {
            return false;
        }
        let devices = filters_overlap(filter, DEVICE_SUBTREE);
        self.subscribe.iter().any(|s| Self::opens(s, filter, devices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_covers(allowed: &str, requested: &str, expected: bool) {
        assert_eq!(filter_covers(allowed, requested), expected, "{allowed} covers {requested}");
    }

    #[test]
    fn covering() {
        check_covers("a/#", "a/b/+", true);
        check_covers("a/#", "a/#", true);
        check_covers("a/#", "a/+/#", true);
        check_covers("a/#", "a", true); // `#` also matches the parent level (§4.7.1.2)
        check_covers("a/#", "b/#", false);
        check_covers("a/+", "a/b", true);
        check_covers("a/+", "a/+", true);
        check_covers("a/+", "a/", true); // `+` matches an empty level
        check_covers("a/+", "a/#", false);
        check_covers("a/+", "a", false);
        check_covers("a/+", "a/b/c", false);
        check_covers("a/b", "a/+", false);
        check_covers("a/b", "a/b", true);
        check_covers("a/b", "a/b/c", false);
        check_covers("a/b/c", "a/b", false);
        check_covers("+/b", "a/b", true);
        check_covers("+/+", "+/b", true);
        check_covers("+/b", "+/+", false);
        check_covers("#", "#", true);
        check_covers("#", "a/+/c", true);
        check_covers("+", "#", false);
        check_covers("devices/+/telemetry", "devices/dev-1/telemetry", true);
        check_covers("devices/+/telemetry", "devices/+/telemetry", true);
        check_covers("devices/+/telemetry", "devices/#", false);
        check_covers("devices/+/telemetry", "devices/+/+", false);
        // [MQTT-4.7.2-1]: wildcards in the first level never match `$` topics.
        check_covers("#", "$SYS/broker", false);
        check_covers("#", "$SYS/#", false);
        check_covers("+/broker", "$SYS/broker", false);
        check_covers("$SYS/#", "$SYS/broker/+", true);
        check_covers("$SYS/#", "#", false);
        check_covers("a/#", "a/$x", true); // `$` matters only in the first level
    }

    #[track_caller]
    fn check_overlap(a: &str, b: &str, expected: bool) {
        assert_eq!(filters_overlap(a, b), expected, "{a} overlaps {b}");
        assert_eq!(filters_overlap(b, a), expected, "{b} overlaps {a}");
    }

    #[test]
    fn overlapping() {
        check_overlap("#", "a/b", true);
        check_overlap("a/#", "a", true);
        check_overlap("a/#", "b", false);
        check_overlap("a/+", "+/b", true);
        check_overlap("a/+", "a/b/c", false);
        check_overlap("a/+/c", "a/b/+", true);
        check_overlap("a/b", "a/c", false);
        check_overlap("+", "a/b", false);
        check_overlap("+/+", "a/#", true);
        check_overlap("devices/+/commands/#", "devices/dev-1/telemetry", false);
        check_overlap("devices/+/commands/#", "devices/+/+/x", true);
        check_overlap("devices/+/commands/#", "devices/#", true);
        check_overlap("#", "$SYS/#", false);
        check_overlap("+/x", "$SYS/x", false);
        check_overlap("+/#", "#", true);
        check_overlap("$SYS/#", "$SYS/x", true);
    }

    fn rules(publish: &[&str], subscribe: &[&str], deny: &[&str]) -> TopicRules {
        TopicRules::new(publish, subscribe, deny).unwrap()
    }

    #[track_caller]
    fn check_subscribe(rules: &TopicRules, filter: &str, expected: bool) {
        let f = TopicFilter::new(filter).unwrap();
        assert_eq!(rules.may_subscribe(&f), expected, "subscribe {filter} with {rules:?}");
    }

    #[track_caller]
    fn check_publish(rules: &TopicRules, topic: &str, expected: bool) {
        let t = TopicName::new(topic).unwrap();
        assert_eq!(rules.may_publish(&t), expected, "publish {topic} with {rules:?}");
    }

    #[test]
    fn a_read_only_integration() {
        let r = rules(&[], &["devices/+/telemetry", "alerts/#"], &["alerts/internal/#"]);
        check_subscribe(&r, "devices/+/telemetry", true);
        check_subscribe(&r, "devices/dev-1/telemetry", true);
        check_subscribe(&r, "$share/workers/devices/+/telemetry", true);
        check_subscribe(&r, "alerts/fire/+", true);
        // Wider than allowed.
        check_subscribe(&r, "devices/#", false);
        check_subscribe(&r, "devices/+/+", false);
        check_subscribe(&r, "devices/dev-1/commands", false);
        check_subscribe(&r, "#", false);
        // Deny wins, for every topic the subscription could deliver.
        check_subscribe(&r, "alerts/#", false);
        check_subscribe(&r, "alerts/+/x", false);
        check_subscribe(&r, "alerts/internal/x", false);
        check_subscribe(&r, "$share/g/alerts/internal/x", false);
        // Nothing may be published.
        check_publish(&r, "devices/dev-1/telemetry", false);
        check_publish(&r, "alerts/fire", false);
    }

    #[test]
    fn denying_a_device_leaves_only_the_others_by_name() {
        let r = rules(&[], &["devices/+/telemetry"], &["devices/secret-lab/#"]);
        check_subscribe(&r, "devices/dev-1/telemetry", true);
        check_subscribe(&r, "devices/secret-lab/telemetry", false);
        // The wildcard would deliver devices/secret-lab/telemetry too.
        check_subscribe(&r, "devices/+/telemetry", false);
    }

    #[test]
    fn broad_rules_do_not_open_device_topics() {
        let r = rules(&["#"], &["#"], &[]);
        check_publish(&r, "factory/line-1/speed", true);
        check_publish(&r, "devices/dev-1/commands/reboot", false);
        check_publish(&r, "devices", false);
        check_subscribe(&r, "factory/#", true);
        check_subscribe(&r, "#", false);
        check_subscribe(&r, "+/status", false);
        check_subscribe(&r, "devices/+/telemetry", false);
        check_subscribe(&r, "$SYS/#", false);
        // A rule that names the subtree opens it.
        let r = rules(&["devices/+/commands/#"], &["#", "devices/#"], &["devices/+/credentials"]);
        check_publish(&r, "devices/dev-1/commands/reboot", true);
        check_publish(&r, "devices/dev-1/telemetry", false);
        check_subscribe(&r, "devices/dev-1/#", false); // could deliver devices/dev-1/credentials
        check_subscribe(&r, "devices/+/telemetry", true);
        check_subscribe(&r, "#", false);
        check_subscribe(&r, "factory/#", true);
    }

    #[test]
    fn publish_and_deny() {
        let r = rules(&["alerts/+/raised", "alerts/#"], &[], &["alerts/internal/#"]);
        check_publish(&r, "alerts/fire/raised", true);
        check_publish(&r, "alerts/internal/raised", false);
        check_publish(&r, "alerts/internal", false);
        check_publish(&r, "other", false);
        check_subscribe(&r, "alerts/#", false);
        assert!(rules(&[], &[], &["#"]).allows_nothing());
    }

    #[test]
    fn only_devices_publish_identity_requests() {
        let r = rules(&["devices/#", "#"], &["devices/#"], &[]);
        check_publish(&r, "devices/d1/telemetry", true);
        check_publish(&r, "devices/d1/identity/csr", false);
        check_publish(&r, "devices/d1/identity/credential", false);
        check_publish(&r, "devices/d1/identity", false);
        // Herd's answers may be read: they hold no secret.
        check_subscribe(&r, "devices/+/identity/response", true);
    }

    #[test]
    fn only_devices_report_on_their_jobs() {
        let r = rules(&["devices/#"], &["devices/#"], &[]);
        check_publish(&r, "devices/d1/jobs/j1/update", false);
        check_publish(&r, "devices/d1/jobs/get", false);
        check_publish(&r, "devices/d1/jobs/notify", true);
        check_subscribe(&r, "devices/+/jobs/+", true);
    }

    #[test]
    fn no_rule_reaches_herd_topics() {
        // Even rules that name `$herd/…` outright open nothing there: the bootstrap answers carry
        // a device's new secret.
        let r = rules(
            &["#", "$herd/#", "$herd/provision/+/register", "$herdsman/#"],
            &["#", "devices/#", "$herd/#", "$herd/provision/+/response", "+/#"],
            &[],
        );
        for filter in [
            "$herd/#",
            "$herd/provision/+/response",
            "$herd/provision/SN-1/response",
            "$herd/+/SN-1/register",
            "$share/g/$herd/provision/#",
        ] {
            let parsed = TopicFilter::new(filter).unwrap();
            assert!(!r.may_subscribe(&parsed), "{filter}");
        }
        check_publish(&r, "$herd/provision/SN-1/register", false);
        check_publish(&r, "$herd/provision/SN-1/response", false);
        check_publish(&r, "$herd", false);
        // Everything else follows the rules as before (`#` never matched `$` topics).
        check_subscribe(&r, "sensors/#", true);
        check_subscribe(&r, "devices/+/telemetry", true);
        check_publish(&r, "sensors/x", true);
        check_publish(&r, "$herdsman/x", true);
    }

    #[test]
    fn invalid_filters_are_named() {
        let err = TopicRules::new(&["a/#/b"], &["$share/g/a/#", "ok/+"], &["x+"]).unwrap_err();
        assert_eq!(err.len(), 3, "{err:?}");
        assert!(err[0].starts_with("publish: \"a/#/b\" is not a topic filter"), "{err:?}");
        assert!(err[1].starts_with("subscribe: \"$share/g/a/#\" is a shared"), "{err:?}");
        assert!(err[2].starts_with("deny: \"x+\""), "{err:?}");
    }
}

//! The retained-message store (§3.3.1.3): the last retained message of each topic, found again by the
//! filters of later subscriptions.
//!
//! A plain data structure owned by the broker task; with a session store the broker records each
//! change to it (see the `persist` module) and fills it from the stored snapshot at startup. Like the subscription trie it is keyed by
//! topic level, so a filter visits only the branches it can match, with the same rules: `#` and `+` in
//! the first level never match topics starting with `$` ([MQTT-4.7.2-1]) and `sport/#` matches `sport`.

use std::collections::HashMap;
use std::sync::Arc;

use mqtt_codec::TopicFilter;
use tokio::time::Instant;

use crate::Message;

/// A retained message and when it expires.
#[derive(Debug, Clone)]
pub(crate) struct Retained {
    pub(crate) message: Arc<Message>,
    pub(crate) expires_at: Option<Instant>,
}

impl Retained {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What [`RetainedStore::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetainOutcome {
    /// The message is now the retained message of its topic.
    Stored,
    /// The message had an empty payload: the topic's retained message, if any, was removed
    /// ([MQTT-3.3.1-6], [MQTT-3.3.1-7]).
    Deleted,
    /// The store already holds its maximum number of topics and this topic was not among them.
    Full,
}

/// The retained messages, by topic.
#[derive(Debug)]
pub(crate) struct RetainedStore {
    root: Node,
    len: usize,
    max: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    retained: Option<Retained>,
}

impl RetainedStore {
    /// An empty store that holds at most `max` topics.
    pub(crate) fn new(max: usize) -> Self {
        Self { root: Node::default(), len: 0, max }
    }

    /// The number of retained messages held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Retains `message` for its topic, replacing the previous one ([MQTT-3.3.1-5]), or deletes the
    /// topic's retained message when the payload is empty.
    pub(crate) fn set(
        &mut self,
        message: Arc<Message>,
        expires_at: Option<Instant>,
    ) -> RetainOutcome {
        let levels: Vec<&str> = message.topic.levels().collect();
        if message.payload.is_empty() {
            if remove(&mut self.root, &levels) {
                self.len -= 1;
            }
            return RetainOutcome::Deleted;
        }
        let mut node = &mut self.root;
        for level in levels {
            node = node.children.entry(level.into()).or_default();
        }
        if node.retained.is_none() {
            if self.len >= self.max {
                return RetainOutcome::Full;
            }
            self.len += 1;
        }
        node.retained = Some(Retained { message, expires_at });
        RetainOutcome::Stored
    }

    /// The unexpired retained messages whose topics match `filter` (its `$share/` prefix ignored), in
    /// no particular order. Expired messages met on the way are removed.
    pub(crate) fn matching(&mut self, filter: &TopicFilter, now: Instant) -> Vec<Retained> {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let mut out = Vec::new();
        collect(&self.root, &levels, true, &mut out);
        let before = out.len();
        out.retain(|r| !r.expired(now));
        let expired = before - out.len();
        if expired > 0 {
            self.purge(now);
        }
        out
    }

    /// Removes every expired message.
    pub(crate) fn purge(&mut self, now: Instant) {
        let mut removed = 0;
        purge(&mut self.root, now, &mut removed);
        self.len -= removed;
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return node.retained.take().is_some();
    };
    let Some(child) = node.children.get_mut(*level) else { return false };
    let removed = remove(child, rest);
    if child.retained.is_none() && child.children.is_empty() {
        node.children.remove(*level);
    }
    removed
}

fn purge(node: &mut Node, now: Instant, removed: &mut usize) {
    if node.retained.as_ref().is_some_and(|r| r.expired(now)) {
        node.retained = None;
        *removed += 1;
    }
    node.children.retain(|_, child| {
        purge(child, now, removed);
        child.retained.is_some() || !child.children.is_empty()
    });
}

fn collect(node: &Node, levels: &[&str], first: bool, out: &mut Vec<Retained>) {
    let Some((&level, rest)) = levels.split_first() else {
        out.extend(node.retained.iter().cloned());
        return;
    };
    match level {
        "#" => {
            // "sport/#" also matches "sport" itself; the root holds no message.
            out.extend(node.retained.iter().cloned());
            for (name, child) in &node.children {
                if first && name.starts_with('$') {
                    continue; // [MQTT-4.7.2-1]
                }
                collect_all(child, out);
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if first && name.starts_with('$') {
                    continue; // [MQTT-4.7.2-1]
                }
                collect(child, rest, false, out);
            }
        }
        _ => {
            if let Some(child) = node.children.get(level) {
                collect(child, rest, false, out);
            }
        }
    }
}

fn collect_all(node: &Node, out: &mut Vec<Retained>) {
    out.extend(node.retained.iter().cloned());
    for child in node.children.values() {
        collect_all(child, out);
    }
}

#[cfg(test)]
mod tests {
    use mqtt_codec::TopicName;
    use tokio::time::Duration;

    use super::*;
    use crate::topic_tree::filter_matches;

    fn message(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(TopicName::new(topic).unwrap(), payload))
    }

    fn topics(store: &mut RetainedStore, filter: &str) -> Vec<String> {
        let filter = TopicFilter::new(filter).unwrap();
        let mut got: Vec<String> = store
            .matching(&filter, Instant::now())
            .into_iter()
            .map(|r| r.message.topic.to_string())
            .collect();
        got.sort();
        got
    }

    const TOPICS: [&str; 8] = ["a", "a/b", "a/b/c", "a/c", "$SYS/x", "$SYS", "/a", "b"];

    #[test]
    fn filters_match_like_subscriptions() {
        let mut store = RetainedStore::new(100);
        for t in TOPICS {
            assert_eq!(store.set(message(t, "x"), None), RetainOutcome::Stored);
        }
        for f in
            ["#", "+", "a/#", "a/+", "+/b", "$SYS/#", "+/+", "/+", "a/b/c", "$SYS", "x/#", "+/#"]
        {
            let mut expected: Vec<String> =
                TOPICS.iter().filter(|t| filter_matches(f, t)).map(|t| (*t).to_owned()).collect();
            expected.sort();
            assert_eq!(topics(&mut store, f), expected, "filter {f:?}");
        }
        // [MQTT-4.7.2-1]
        assert!(!topics(&mut store, "#").contains(&"$SYS/x".to_owned()));
    }

    #[test]
    fn empty_payload_deletes_mqtt_3_3_1_6_and_3_3_1_7() {
        let mut store = RetainedStore::new(100);
        store.set(message("a/b", "x"), None);
        store.set(message("a/b", "y"), None);
        assert_eq!(store.len(), 1);
        assert_eq!(store.set(message("a/b", ""), None), RetainOutcome::Deleted);
        assert_eq!(store.len(), 0);
        assert!(topics(&mut store, "#").is_empty());
        assert!(store.root.children.is_empty());
        // Deleting what is not there is harmless and stores nothing.
        assert_eq!(store.set(message("q", ""), None), RetainOutcome::Deleted);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn the_limit_refuses_new_topics_but_replaces_old_ones() {
        let mut store = RetainedStore::new(1);
        assert_eq!(store.set(message("a", "1"), None), RetainOutcome::Stored);
        assert_eq!(store.set(message("b", "1"), None), RetainOutcome::Full);
        assert_eq!(store.set(message("a", "2"), None), RetainOutcome::Stored);
        let filter = TopicFilter::new("a").unwrap();
        let got = store.matching(&filter, Instant::now());
        assert_eq!(got[0].message.payload, "2");
    }

    #[test]
    fn expired_messages_are_not_returned_and_are_purged() {
        let mut store = RetainedStore::new(10);
        let now = Instant::now();
        store.set(message("a", "old"), Some(now + Duration::from_secs(5)));
        store.set(message("b", "new"), None);
        let filter = TopicFilter::new("#").unwrap();
        assert_eq!(store.matching(&filter, now).len(), 2);
        assert_eq!(store.matching(&filter, now + Duration::from_secs(5)).len(), 1);
        assert_eq!(store.len(), 1);
    }
}

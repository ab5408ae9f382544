//! The subscription trie: which subscribers want a message published to a topic (§4.7, §4.8).
//!
//! Filters are stored one level per node, `+` and `#` being ordinary child keys, so a lookup walks only the
//! branches that can match: the exact level, `+`, and `#`. Two rules of the specification shape the walk:
//! - `#` and `+` in the first level of a filter never match a topic whose first level starts with `$`
//!   ([MQTT-4.7.2-1]);
//! - `#` also matches its parent level, so `sport/#` matches `sport` (§4.7.1.2).
//!
//! Shared subscriptions (`$share/{group}/{filter}`, §4.8.2) are stored at the node of their filter, per
//! group, and each matching message goes to one member of the group, chosen round-robin.
//!
//! A lookup returns one [`Match`] per subscriber for its ordinary subscriptions, however many of them
//! overlap: the highest granted QoS and every Subscription Identifier ([MQTT-3.3.4-3] to
//! [MQTT-3.3.4-5]); plus one [`Match`] per matching shared group.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::num::NonZeroU32;

use mqtt_codec::{QoS, TopicFilter, TopicName};

/// What a subscription asked for, as stored in the trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    /// The granted QoS: the most a matching message is delivered with.
    pub(crate) qos: QoS,
    /// No Local (v5): skip messages the subscriber published itself.
    pub(crate) no_local: bool,
    /// Retain As Published (v5): forward the RETAIN flag instead of clearing it.
    pub(crate) retain_as_published: bool,
    /// The Subscription Identifier (v5) given in the SUBSCRIBE, if any.
    pub(crate) id: Option<NonZeroU32>,
}

impl SubOptions {
    /// Options with `qos` and nothing else.
    pub(crate) fn qos(qos: QoS) -> Self {
        Self { qos, no_local: false, retain_as_published: false, id: None }
    }
}

/// One delivery that a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Match<K> {
    /// Who receives the message.
    pub(crate) subscriber: K,
    /// The highest QoS granted among the subscriptions that matched.
    pub(crate) qos: QoS,
    /// The Subscription Identifiers of all subscriptions that matched, in no particular order.
    pub(crate) subscription_ids: Vec<NonZeroU32>,
    /// Whether any matching subscription asked for Retain As Published.
    pub(crate) retain_as_published: bool,
    /// Whether this delivery comes from a shared subscription.
    pub(crate) shared: bool,
}

/// The subscription trie, generic over the subscriber key `K`.
#[derive(Debug)]
pub(crate) struct TopicTree<K> {
    root: Node<K>,
    len: usize,
}

#[derive(Debug)]
struct Node<K> {
    /// Children by level; `+` and `#` are keys like any other.
    children: HashMap<Box<str>, Node<K>>,
    /// Ordinary subscriptions whose filter ends at this node.
    subscribers: HashMap<K, SubOptions>,
    /// Shared subscriptions whose filter ends at this node, by ShareName.
    groups: HashMap<Box<str>, SharedGroup<K>>,
}

#[derive(Debug)]
struct SharedGroup<K> {
    members: Vec<(K, SubOptions)>,
    /// Index of the member that receives the next message.
    next: usize,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Self { children: HashMap::new(), subscribers: HashMap::new(), groups: HashMap::new() }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }
}

impl<K: Clone + Eq + Hash> Default for TopicTree<K> {
    fn default() -> Self {
        Self { root: Node::default(), len: 0 }
    }
}

impl<K: Clone + Eq + Hash> TopicTree<K> {
    /// The number of subscriptions stored, shared ones included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds or replaces `subscriber`'s subscription to `filter`. Returns whether it already existed (and
    /// was replaced, [MQTT-3.8.4-3]).
    pub(crate) fn subscribe(
        &mut self,
        filter: &TopicFilter,
        subscriber: K,
        options: SubOptions,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.filter().split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let existed = match filter.share_name() {
            None => node.subscribers.insert(subscriber, options).is_some(),
            Some(group) => {
                let group = node
                    .groups
                    .entry(group.into())
                    .or_insert_with(|| SharedGroup { members: Vec::new(), next: 0 });
                match group.members.iter_mut().find(|(k, _)| *k == subscriber) {
                    Some(member) => {
                        member.1 = options;
                        true
                    }
                    None => {
                        group.members.push((subscriber, options));
                        false
                    }
                }
            }
        };
        if !existed {
            self.len += 1;
        }
        existed
    }

    /// Removes `subscriber`'s subscription to `filter`, pruning emptied nodes. Returns whether it existed.
    pub(crate) fn unsubscribe(&mut self, filter: &TopicFilter, subscriber: &K) -> bool {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let removed = remove(&mut self.root, &levels, filter.share_name(), subscriber);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// The deliveries for a message published to `topic` by `publisher` (for No Local).
    ///
    /// Takes `&mut self` because each matching shared group advances its round-robin position.
    pub(crate) fn matches(&mut self, topic: &TopicName, publisher: Option<&K>) -> Vec<Match<K>> {
        let levels: Vec<&str> = topic.levels().collect();
        let dollar = levels.first().is_some_and(|l| l.starts_with('$'));
        let mut collector = Collector { publisher, ordinary: HashMap::new(), shared: Vec::new() };
        walk(&mut self.root, &levels, true, dollar, &mut collector);
        let mut out: Vec<Match<K>> = collector.ordinary.into_values().collect();
        out.extend(collector.shared);
        out
    }
}

fn remove<K: Eq + Hash>(
    node: &mut Node<K>,
    levels: &[&str],
    group: Option<&str>,
    subscriber: &K,
) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return match group {
            None => node.subscribers.remove(subscriber).is_some(),
            Some(group) => {
                let Entry::Occupied(mut entry) = node.groups.entry(group.into()) else {
                    return false;
                };
                let members = &mut entry.get_mut().members;
                let Some(index) = members.iter().position(|(k, _)| k == subscriber) else {
                    return false;
                };
                members.remove(index);
                if members.is_empty() {
                    entry.remove();
                }
                true
            }
        };
    };
    let Some(child) = node.children.get_mut(*level) else { return false };
    let removed = remove(child, rest, group, subscriber);
    if removed && child.is_empty() {
        node.children.remove(*level);
    }
    removed
}

struct Collector<'a, K> {
    publisher: Option<&'a K>,
    ordinary: HashMap<K, Match<K>>,
    shared: Vec<Match<K>>,
}

impl<K: Clone + Eq + Hash> Collector<'_, K> {
    fn node(&mut self, node: &mut Node<K>) {
        for (subscriber, options) in &node.subscribers {
            if options.no_local && self.publisher == Some(subscriber) {
                continue;
            }
            let entry = self.ordinary.entry(subscriber.clone()).or_insert_with(|| Match {
                subscriber: subscriber.clone(),
                qos: options.qos,
                subscription_ids: Vec::new(),
                retain_as_published: false,
                shared: false,
            });
            entry.qos = entry.qos.max(options.qos);
            entry.retain_as_published |= options.retain_as_published;
            entry.subscription_ids.extend(options.id);
        }
        for group in node.groups.values_mut() {
            let Some((subscriber, options)) = group.members.get(group.next % group.members.len())
            else {
                continue;
            };
            group.next = (group.next + 1) % group.members.len();
            self.shared.push(Match {
                subscriber: subscriber.clone(),
                qos: options.qos,
                subscription_ids: options.id.into_iter().collect(),
                retain_as_published: options.retain_as_published,
                shared: true,
            });
        }
    }
}

fn walk<K: Clone + Eq + Hash>(
    node: &mut Node<K>,
    levels: &[&str],
    first: bool,
    dollar: bool,
    out: &mut Collector<'_, K>,
) {
    // [MQTT-4.7.2-1]: wildcards in the first level do not match topics starting with '$'.
    let wildcards = !(first && dollar);
    let Some((level, rest)) = levels.split_first() else {
        out.node(node);
        // "sport/#" also matches "sport" (§4.7.1.2).
        if let Some(hash) = node.children.get_mut("#") {
            out.node(hash);
        }
        return;
    };
    if wildcards {
        if let Some(hash) = node.children.get_mut("#") {
            out.node(hash);
        }
        if let Some(plus) = node.children.get_mut("+") {
            walk(plus, rest, false, dollar, out);
        }
    }
    // Topic names never contain '+' or '#', so the exact child is never a wildcard node.
    if let Some(child) = node.children.get_mut(*level) {
        walk(child, rest, false, dollar, out);
    }
}

/// Whether `filter` (without any `$share/` prefix) matches `topic`, by the rules of §4.7. The reference
/// the trie is tested against, and what the retained-message store uses for a single message.
#[cfg(test)]
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests;

//! Tests of the subscription trie: examples from §4.7 and §4.8, and a property test against
//! [`filter_matches`].

use std::collections::HashMap;
use std::num::NonZeroU32;

use proptest::prelude::*;

use super::*;

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

fn id(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

/// Subscribes each `(subscriber, filter)` at QoS 0 and checks which subscribers `topic` reaches.
#[track_caller]
fn check(subscriptions: &[(u32, &str)], topic_name: &str, expected: &[u32]) {
    let mut tree = TopicTree::default();
    for &(subscriber, f) in subscriptions {
        tree.subscribe(&filter(f), subscriber, SubOptions::qos(QoS::AtMostOnce));
    }
    let mut actual: Vec<u32> =
        tree.matches(&topic(topic_name), None).into_iter().map(|m| m.subscriber).collect();
    actual.sort_unstable();
    assert_eq!(actual, expected, "topic {topic_name:?}");
}

#[test]
fn spec_examples_multi_level() {
    // §4.7.1.2.
    let subs = [(1, "sport/tennis/player1/#")];
    check(&subs, "sport/tennis/player1", &[1]);
    check(&subs, "sport/tennis/player1/ranking", &[1]);
    check(&subs, "sport/tennis/player1/score/wimbledon", &[1]);
    check(&subs, "sport/tennis/player2", &[]);
    check(&[(1, "sport/#")], "sport", &[1]);
    check(&[(1, "#")], "a/b/c", &[1]);
}

#[test]
fn spec_examples_single_level() {
    // §4.7.1.3.
    let subs = [(1, "sport/tennis/+")];
    check(&subs, "sport/tennis/player1", &[1]);
    check(&subs, "sport/tennis/player2", &[1]);
    check(&subs, "sport/tennis/player1/ranking", &[]);
    check(&[(1, "sport/+")], "sport", &[]);
    check(&[(1, "sport/+")], "sport/", &[1]);
    check(&[(1, "+/+")], "/finance", &[1]);
    check(&[(1, "/+")], "/finance", &[1]);
    check(&[(1, "+")], "/finance", &[]);
    check(&[(1, "+/#")], "sport", &[1]);
}

#[test]
fn wildcards_do_not_match_dollar_topics_mqtt_4_7_2_1() {
    // [MQTT-4.7.2-1] and the examples of §4.7.2.
    check(&[(1, "#")], "$SYS/uptime", &[]);
    check(&[(1, "+/monitor/Clients")], "$SYS/monitor/Clients", &[]);
    check(&[(1, "$SYS/#")], "$SYS/monitor/Clients", &[1]);
    check(&[(1, "$SYS/monitor/+")], "$SYS/monitor/Clients", &[1]);
    check(&[(1, "$SYS/#"), (2, "#"), (3, "+/#")], "$SYS", &[1]);
    // Only the first level is special.
    check(&[(1, "a/+"), (2, "a/#")], "a/$b", &[1, 2]);
}

#[test]
fn overlapping_subscriptions_are_delivered_once_with_max_qos_and_all_ids() {
    // [MQTT-3.3.4-3] to [MQTT-3.3.4-5].
    let mut tree = TopicTree::default();
    let o = |qos, n| SubOptions { id: id(n), ..SubOptions::qos(qos) };
    tree.subscribe(&filter("a/+"), 1, o(QoS::AtMostOnce, 10));
    tree.subscribe(&filter("a/#"), 1, o(QoS::ExactlyOnce, 11));
    tree.subscribe(&filter("a/b"), 1, o(QoS::AtLeastOnce, 0));
    tree.subscribe(&filter("a/b"), 2, o(QoS::AtLeastOnce, 12));
    let mut matches = tree.matches(&topic("a/b"), None);
    matches.sort_by_key(|m| m.subscriber);
    assert_eq!(matches.len(), 2);
    let first = &matches[0];
    assert_eq!(first.qos, QoS::ExactlyOnce);
    let mut ids = first.subscription_ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![id(10).unwrap(), id(11).unwrap()]);
    assert_eq!(matches[1].subscription_ids, vec![id(12).unwrap()]);
}

#[test]
fn resubscribing_replaces_mqtt_3_8_4_3() {
    let mut tree = TopicTree::default();
    assert!(!tree.subscribe(&filter("a"), 1, SubOptions::qos(QoS::AtMostOnce)));
    assert!(tree.subscribe(&filter("a"), 1, SubOptions::qos(QoS::ExactlyOnce)));
    assert_eq!(tree.len(), 1);
    let matches = tree.matches(&topic("a"), None);
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].qos, QoS::ExactlyOnce);
}

#[test]
fn no_local_skips_the_publisher_only() {
    let mut tree = TopicTree::default();
    let no_local = SubOptions { no_local: true, ..SubOptions::qos(QoS::AtMostOnce) };
    tree.subscribe(&filter("a"), 1, no_local);
    tree.subscribe(&filter("#"), 1, SubOptions::qos(QoS::AtLeastOnce));
    tree.subscribe(&filter("a"), 2, no_local);
    let mut matches = tree.matches(&topic("a"), Some(&1));
    matches.sort_by_key(|m| m.subscriber);
    let got: Vec<(u32, QoS)> = matches.iter().map(|m| (m.subscriber, m.qos)).collect();
    assert_eq!(got, vec![(1, QoS::AtLeastOnce), (2, QoS::AtMostOnce)]);
}

#[test]
fn unsubscribe_removes_and_prunes() {
    let mut tree = TopicTree::default();
    tree.subscribe(&filter("a/b/c"), 1, SubOptions::qos(QoS::AtMostOnce));
    tree.subscribe(&filter("$share/g/a/b/c"), 1, SubOptions::qos(QoS::AtMostOnce));
    assert_eq!(tree.len(), 2);
    assert!(tree.unsubscribe(&filter("a/b/c"), &1));
    assert!(!tree.unsubscribe(&filter("a/b/c"), &1));
    assert!(!tree.unsubscribe(&filter("$share/h/a/b/c"), &1));
    assert!(tree.unsubscribe(&filter("$share/g/a/b/c"), &1));
    assert_eq!(tree.len(), 0);
    assert!(tree.root.is_empty());
}

#[test]
fn shared_subscriptions_round_robin_within_a_group() {
    // §4.8.2: each message goes to one member of each group.
    let mut tree = TopicTree::default();
    for member in [1, 2, 3] {
        tree.subscribe(&filter("$share/g/sensors/+"), member, SubOptions::qos(QoS::AtLeastOnce));
    }
    tree.subscribe(&filter("$share/other/sensors/#"), 9, SubOptions::qos(QoS::AtMostOnce));
    tree.subscribe(&filter("sensors/+"), 1, SubOptions::qos(QoS::AtMostOnce));
    let mut got = Vec::new();
    for _ in 0..6 {
        let matches = tree.matches(&topic("sensors/t"), None);
        assert_eq!(matches.iter().filter(|m| !m.shared).count(), 1);
        let shared: Vec<u32> = matches.iter().filter(|m| m.shared).map(|m| m.subscriber).collect();
        assert_eq!(shared.len(), 2);
        assert!(shared.contains(&9));
        got.extend(shared.into_iter().filter(|&s| s != 9));
    }
    assert_eq!(got, vec![1, 2, 3, 1, 2, 3]);
}

/// A level for generated filters and topics: few distinct values so that matches are common.
fn level() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just(""), Just("$x")]
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |t| !t.is_empty())
}

fn filter_strategy() -> impl Strategy<Value = String> {
    let level = prop_oneof![4 => level(), 2 => Just("+")];
    (prop::collection::vec(level, 1..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("topic filters are not empty", |f| !f.is_empty())
}

proptest! {
    #[test]
    fn trie_agrees_with_naive_matcher(
        subscriptions in prop::collection::vec((0u32..4, filter_strategy(), 0u8..3, 0u32..5), 0..12),
        topics in prop::collection::vec(topic_strategy(), 1..6),
    ) {
        let mut tree = TopicTree::default();
        // The naive model: the latest options per (subscriber, filter).
        let mut model: HashMap<(u32, String), (QoS, Option<NonZeroU32>)> = HashMap::new();
        for (subscriber, f, qos, sub_id) in &subscriptions {
            let qos = QoS::from_u8(*qos).unwrap();
            let options = SubOptions { id: id(*sub_id), ..SubOptions::qos(qos) };
            tree.subscribe(&filter(f), *subscriber, options);
            model.insert((*subscriber, f.clone()), (qos, id(*sub_id)));
        }
        prop_assert_eq!(tree.len(), model.len());
        for t in &topics {
            let mut expected: HashMap<u32, (QoS, Vec<NonZeroU32>)> = HashMap::new();
            for ((subscriber, f), (qos, sub_id)) in &model {
                if filter_matches(f, t) {
                    let e = expected.entry(*subscriber).or_insert((QoS::AtMostOnce, Vec::new()));
                    e.0 = e.0.max(*qos);
                    e.1.extend(*sub_id);
                }
            }
            let mut actual: HashMap<u32, (QoS, Vec<NonZeroU32>)> = HashMap::new();
            for m in tree.matches(&topic(t), None) {
                prop_assert!(!m.shared);
                prop_assert!(actual.insert(m.subscriber, (m.qos, m.subscription_ids)).is_none());
            }
            for v in expected.values_mut().chain(actual.values_mut()) {
                v.1.sort_unstable();
            }
            prop_assert_eq!(actual, expected, "topic {:?}", t);
        }
        // Removing everything leaves an empty trie.
        for (subscriber, f) in model.keys() {
            prop_assert!(tree.unsubscribe(&filter(f), subscriber));
        }
        prop_assert_eq!(tree.len(), 0);
        prop_assert!(tree.root.is_empty());
    }
}

//! Filters in SQL agree with `Filter::matches` in memory, page by page.

use std::num::NonZeroU32;

use domain::{DevicePatch, Filter, LifecycleState};
use store::{DeviceQuery, Store};

use crate::db::{at, test_db};
use crate::devices::{id, new_device};

/// Every device (as created below) and the filters to check against them.
const DEVICES: &[(&str, &[(&str, &str)])] = &[
    ("sensor-01", &[("site", "berlin"), ("fw", "1.2")]),
    ("sensor-02", &[("site", "paris")]),
    ("sensor-10", &[("site", "berlin"), ("floor", "2")]),
    ("sensor", &[]),
    ("sensos", &[("site", "Berlin")]),
    ("gw:1", &[("site", "it's"), ("fw", "2.0")]),
    ("gw.2", &[("site", "ber")]),
    ("Sensor-03", &[("note", "ünïcode ✓"), ("site", "")]),
];

const FILTERS: &[&str] = &[
    "tags.site = 'berlin'",
    "tags.site != 'berlin'",
    "not tags.site = 'berlin'",
    "tags.site in ('berlin', 'paris')",
    "tags.site not in ('berlin', 'paris')",
    "has tags.fw",
    "not has tags.fw",
    "has tags.fw and tags.site = 'berlin'",
    "has tags.floor or tags.fw = '2.0'",
    "id startswith 'sensor'",
    "id startswith 'sensor-0'",
    "id startswith 'S'",
    "id startswith 'gw:'",
    "id startswith ''",
    "id startswith 'zzz'",
    "name startswith 'Device sensor-'",
    "tags.site startswith 'ber'",
    "tags.site startswith ''",
    "tags.note startswith 'ünï'",
    "tags.site = ''",
    "tags.site = 'it''s'",
    "id = 'sensor-02'",
    "id != 'sensor-02'",
    "id in ('gw.2', 'gw:1', 'missing')",
    "name = 'Device gw.2'",
    "name != 'Device gw.2'",
    "state = 'active'",
    "state != 'active'",
    "state in ('registered', 'suspended')",
    "state not in ('registered')",
    "not (state = 'active' or has tags.site)",
    "(tags.site = 'berlin' or tags.site = 'paris') and not id startswith 'sensor-1'",
    "tags.missing != 'x'",
    "tags.missing = 'x'",
];

#[tokio::test]
async fn sql_agrees_with_in_memory_matching() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    for (i, (name, tags)) in DEVICES.iter().enumerate() {
        s.create_device(&new_device(name, tags), &at(i as i64)).await.unwrap();
    }
    let activate = DevicePatch { state: Some(LifecycleState::Active), ..Default::default() };
    for name in ["sensor-01", "gw:1", "sensos"] {
        s.update_device(&id(name), &activate, None, &at(100)).await.unwrap();
    }
    let all = s.list_devices(&crate::devices::page(100, None)).await.unwrap().items;
    assert_eq!(all.len(), DEVICES.len());

    for text in FILTERS {
        let filter = Filter::parse(text).unwrap();
        let expected: Vec<String> =
            all.iter().filter(|d| filter.matches(d)).map(|d| d.id.to_string()).collect();
        // Pages of two exercise the cursor together with the filter.
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let q = DeviceQuery {
                filter: Some(filter.clone()),
                after: after.clone(),
                limit: NonZeroU32::new(2).unwrap(),
            };
            let p = s.list_devices(&q).await.unwrap_or_else(|e| panic!("{text}: {e:?}"));
            got.extend(p.items.iter().map(|d| d.id.to_string()));
            if !p.has_more {
                break;
            }
            after = p.items.last().map(|d| d.id.clone());
        }
        assert_eq!(got, expected, "{text}");
    }
    db.drop().await;
}

#[tokio::test]
async fn values_postgres_cannot_store_still_compare() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    s.create_device(&new_device("d1", &[("site", "x")]), &at(1)).await.unwrap();
    let nul = "a\0b".to_owned();
    let cases = [
        (Filter::Eq(domain::Field::Id, nul.clone()), 0),
        (Filter::Ne(domain::Field::Name, nul.clone()), 1),
        (Filter::In(domain::Field::Id, vec![nul.clone(), "d1".to_owned()]), 1),
        (Filter::StartsWith(domain::Field::Id, nul.clone()), 0),
        (Filter::Ne(domain::Field::Tag(domain::TagKey::new("site").unwrap()), nul), 1),
        (Filter::And(Vec::new()), 1),
        (Filter::Or(Vec::new()), 0),
    ];
    for (filter, n) in cases {
        let q = DeviceQuery { filter: Some(filter.clone()), after: None, limit: NonZeroU32::MAX };
        assert_eq!(s.list_devices(&q).await.unwrap().items.len(), n, "{filter:?}");
    }
    db.drop().await;
}

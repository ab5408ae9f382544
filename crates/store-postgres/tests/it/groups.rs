//! Static and dynamic groups, membership and its cascades.

use std::num::NonZeroU32;

use domain::{Filter, GroupKind, GroupName, GroupPatch, NewGroup};
use store::{DeviceQuery, Store, StoreError};

use crate::db::{at, test_db};
use crate::devices::{id, new_device, page};

fn name(s: &str) -> GroupName {
    GroupName::new(s).expect("a valid group name")
}

fn ids(p: &store::Page<domain::Device>) -> Vec<&str> {
    p.items.iter().map(|d| d.id.as_str()).collect()
}

#[tokio::test]
async fn static_groups() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    for d in ["a", "b", "c"] {
        s.create_device(&new_device(d, &[("site", d)]), &at(1)).await.unwrap();
    }
    let new = NewGroup {
        name: name("floor-1"),
        description: "first".to_owned(),
        kind: GroupKind::Static,
    };
    let g = s.create_group(&new, &at(2)).await.unwrap();
    assert_eq!(g.version, 1);
    let err = s.create_group(&new, &at(2)).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { kind: "group", .. }), "{err:?}");

    s.add_group_members(&name("floor-1"), &[id("c"), id("a")], &at(3)).await.unwrap();
    s.add_group_members(&name("floor-1"), &[id("a")], &at(3)).await.unwrap();
    let err =
        s.add_group_members(&name("floor-1"), &[id("a"), id("zz")], &at(3)).await.unwrap_err();
    assert!(matches!(&err, StoreError::NotFound { kind: "device", id } if id == "zz"), "{err:?}");
    let err = s.add_group_members(&name("nope"), &[id("a")], &at(3)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "group", .. }), "{err:?}");

    let members = s.group_devices(&name("floor-1"), &page(10, None)).await.unwrap();
    assert_eq!(ids(&members), ["a", "c"]);
    let narrowed = DeviceQuery {
        filter: Some(Filter::parse("tags.site = 'c'").unwrap()),
        after: None,
        limit: NonZeroU32::MAX,
    };
    assert_eq!(ids(&s.group_devices(&name("floor-1"), &narrowed).await.unwrap()), ["c"]);
    let first = s.group_devices(&name("floor-1"), &page(1, None)).await.unwrap();
    assert_eq!((ids(&first), first.has_more), (vec!["a"], true));

    s.remove_group_members(&name("floor-1"), &[id("c"), id("b")], &at(4)).await.unwrap();
    assert_eq!(ids(&s.group_devices(&name("floor-1"), &page(10, None)).await.unwrap()), ["a"]);

    // Deleting a device removes its memberships.
    s.delete_device(&id("a"), None, &at(5)).await.unwrap();
    assert!(s.group_devices(&name("floor-1"), &page(10, None)).await.unwrap().items.is_empty());

    let patch =
        GroupPatch { filter: Some(Filter::parse("has tags.x").unwrap()), ..Default::default() };
    let err = s.update_group(&name("floor-1"), &patch, &at(6)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let patch = GroupPatch { description: Some("ground".to_owned()), ..Default::default() };
    let g = s.update_group(&name("floor-1"), &patch, &at(6)).await.unwrap();
    assert_eq!((g.description.as_str(), g.version, g.updated_at.millis()), ("ground", 2, 6));

    s.delete_group(&name("floor-1"), &at(7)).await.unwrap();
    assert_eq!(s.group(&name("floor-1")).await.unwrap(), None);
    let err = s.delete_group(&name("floor-1"), &at(7)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "group", .. }), "{err:?}");

    // Members that were there already, or never were, make no audit record.
    let records = s.audit_records(3, NonZeroU32::MAX).await.unwrap();
    let summary: Vec<(&str, &str, Option<&str>)> = records
        .iter()
        .map(|r| (r.action.as_str(), r.resource.as_str(), r.after.as_deref()))
        .collect();
    assert_eq!(
        summary[..3],
        [
            ("group.create", "group/floor-1", summary[0].2),
            ("group.members.add", "group/floor-1", Some(r#"{"added":["a","c"]}"#)),
            ("group.members.remove", "group/floor-1", Some(r#"{"removed":["c"]}"#)),
        ]
    );
    db.drop().await;
}

#[tokio::test]
async fn dynamic_groups() {
    let Some(db) = test_db().await else { return };
    let s = &db.store;
    for (d, site) in [("a", "berlin"), ("b", "paris"), ("c", "berlin")] {
        s.create_device(&new_device(d, &[("site", site)]), &at(1)).await.unwrap();
    }
    let new = NewGroup {
        name: name("berlin"),
        description: String::new(),
        kind: GroupKind::Dynamic(Filter::parse("tags.site = 'berlin'").unwrap()),
    };
    let created = s.create_group(&new, &at(2)).await.unwrap();
    assert_eq!(s.group(&name("berlin")).await.unwrap(), Some(created));
    assert_eq!(ids(&s.group_devices(&name("berlin"), &page(10, None)).await.unwrap()), ["a", "c"]);
    assert_eq!(ids(&s.group_devices(&name("berlin"), &page(10, Some("a"))).await.unwrap()), ["c"]);

    let err = s.add_group_members(&name("berlin"), &[id("b")], &at(3)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let patch = GroupPatch {
        filter: Some(Filter::parse("tags.site = 'paris'").unwrap()),
        ..Default::default()
    };
    let g = s.update_group(&name("berlin"), &patch, &at(4)).await.unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(ids(&s.group_devices(&name("berlin"), &page(10, None)).await.unwrap()), ["b"]);

    let err = s.group_devices(&name("nope"), &page(10, None)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "group", .. }), "{err:?}");

    for g in ["g-b", "g-a", "G-c"] {
        let new = NewGroup { name: name(g), description: String::new(), kind: GroupKind::Static };
        s.create_group(&new, &at(5)).await.unwrap();
    }
    let first = s.list_groups(None, NonZeroU32::new(2).unwrap()).await.unwrap();
    let names: Vec<&str> = first.items.iter().map(|g| g.name.as_str()).collect();
    assert_eq!((names, first.has_more), (vec!["G-c", "berlin"], true));
    let rest = s.list_groups(Some(&name("berlin")), NonZeroU32::MAX).await.unwrap();
    let names: Vec<&str> = rest.items.iter().map(|g| g.name.as_str()).collect();
    assert_eq!((names, rest.has_more), (vec!["g-a", "g-b"], false));
    db.drop().await;
}

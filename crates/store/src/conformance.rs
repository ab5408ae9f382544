//! The conformance suite every [`Store`] backend must pass.
//!
//! Each case is a `pub async fn case(store: Arc<dyn Store>)` that takes a **fresh, empty** store
//! and panics (through `assert!`) when the backend misbehaves. A backend runs all of them with
//! [`conformance_tests!`](crate::conformance_tests), which generates one `#[tokio::test]` per case:
//!
//! ```text
//! async fn fresh_store() -> Option<(Arc<dyn Store>, TempDir)> {
//!     // a new, empty database for each test, and what must live as long as it;
//!     // `None` skips (the backend prints why)
//! }
//!
//! mod conformance {
//!     store::conformance_tests!(crate::fresh_store());
//! }
//! ```
//!
//! The cases pin the behaviour the `Store` documentation promises, plus the rules every backend
//! must share where the trait leaves a choice:
//!
//! - Writes that change nothing (a no-op patch, revoking a revoked token, credential or
//!   certificate, adding a member twice, removing a non-member) keep the version and append no
//!   audit record.
//! - Every change appends exactly one audit record per changed resource, with `before`/`after` the
//!   `audit_summary()` of the resource; actions are `device.create|update|delete`,
//!   `group.create|update|delete`, `group.members.add|remove`, `token.create|revoke`,
//!   `device.credential.create|revoke`, `device.certificate.create|revoke`,
//!   `device.command.create|cancel` (on the device; never the payload or result),
//!   `enrollment_group.create|update|delete|derive_key|claim_codes.create` on
//!   `enrollment_group/<name>`, `device.register` and `enrollment.register.refused` (an import writes
//!   `device.create`/`device.update` per device; a replacement writes the records of each change it
//!   makes, then `device.replace`); resources are `device/<id>` (a credential's or
//!   certificate's is its device's), `group/<name>`, `token/<id>`. Deleting a device deletes its
//!   credentials and certificates without a record of their own.
//!   Member changes have no `before` and `after` is
//!   `{"added": [ids]}` / `{"removed": [ids]}`: the ids that actually changed, ascending.
//! - Presence writes (`record_presence_events`, `record_connect`, `record_disconnect`,
//!   `reset_presence`) append no audit record; a device's presence is deleted with it. The same holds for agent reports
//!   (`record_agent_reports`), which also ignore unknown devices.
//! - MQTT session state (`mqtt_apply`) appends no audit record and is independent of devices;
//!   `mqtt_load` returns it in a fixed order (sessions by client id, subscriptions by filter,
//!   messages by seq, retained messages by topic, all compared bytewise).
//! - Twins (`update_twin`) are audited as `device.twin.update` on `device/<id>` (no `before`;
//!   `after`: versions and patches), device reports (`report_twin`) are not; a no-op or refused
//!   twin change writes nothing; deleting a device deletes its twin and its twin history.
//! - Configuration profiles are audited as `config_profile.create|update|delete` on
//!   `config_profile/<name>`; recomputing twins from them is not audited (twin history entries by
//!   `profiles`). A group with profiles cannot be deleted.
//! - Failed writes leave no trace, in the data nor in the audit log.
//! - Timestamps are the `Mutation`'s; audit `seq` runs from 1 without gaps and
//!   [`verify_chain`] holds after every case.
//! - Text comparisons in filters are exact and case-sensitive (byte order of UTF-8); `_` and `%`
//!   are ordinary characters; a missing tag satisfies `!=` and `not …` only.

// This module is test code compiled as a library so that every backend's tests can call it:
// a store call that fails where it must succeed is a failed case, reported with its error.
#![expect(clippy::unwrap_used, reason = "test code: an unexpected error fails the case")]

mod certificates;
mod commands;
mod enrollment;
mod jobs;
mod mqtt;
mod profiles;
mod replacement;
mod twins;

use std::num::NonZeroU32;
use std::sync::Arc;

use domain::audit::verify_chain;
use domain::{
    Actor, AgentPayload, AgentReport, AgentReportUpdate, ApiToken, Attributes, AuditRecord,
    CredentialId, Device, DeviceCredential, DeviceId, DevicePatch, DisplayName, Filter, Group,
    GroupKind, GroupName, GroupPatch, ImportRow, LifecycleState, Mutation, NewDevice,
    NewDeviceCredential, NewGroup, NewToken, Presence, Role, Tags, Timestamp, TokenHash, TokenId,
};
use serde_json::{Value, json};

pub use crate::conformance::certificates::*;
pub use crate::conformance::commands::*;
pub use crate::conformance::enrollment::*;
pub use crate::conformance::jobs::*;
pub use crate::conformance::mqtt::*;
pub use crate::conformance::profiles::*;
pub use crate::conformance::replacement::*;
pub use crate::conformance::twins::*;

use crate::{
    ConnectivitySummary, DeviceLogin, DeviceQuery, ImportMode, ImportOutcome, MAX_PAGE_SIZE, Page,
    PresenceEvent, Store, StoreError, StoreResult,
};

/// Generates one `#[tokio::test]` per conformance case.
///
/// The argument is an expression evaluated afresh in every test and awaited; it must yield a
/// **new, empty** store as an `Arc<dyn Store>`, or `(Arc<dyn Store>, guard)` where `guard` is
/// dropped after the case (a temporary directory, say), either of them optionally in an `Option`:
/// `None` skips the test (it returns at once; the factory should print why). See
/// [`FactoryOutput`]. The calling crate needs `tokio` (with the `macros` and `rt` features) among
/// its dev-dependencies.
///
/// ```text
/// mod conformance {
///     store::conformance_tests!(crate::fresh_store());
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases ($factory)
            fresh_store_is_empty,
            create_and_get_device,
            create_duplicate_device_fails,
            create_requires_initial_state,
            update_applies_patch_and_bumps_version,
            noop_update_keeps_version,
            update_checks_version,
            update_unknown_device_fails,
            lifecycle_transition_matrix,
            delete_device,
            delete_device_removes_group_memberships,
            list_devices_pages_in_id_order,
            list_devices_clamps_page_size,
            pagination_is_stable_under_inserts,
            filters_agree_with_in_memory_evaluation,
            missing_tags_satisfy_only_negations,
            count_devices_by_state,
            import_reports_every_outcome,
            import_applies_repeated_ids_in_order,
            import_best_effort_commits_good_rows,
            import_atomic_commits_nothing_on_rejection,
            import_atomic_commits_a_clean_batch,
            replace_device_moves_identity_and_retires_old,
            replace_device_creates_a_missing_successor,
            replace_device_refusals_change_nothing,
            create_get_and_list_groups,
            update_group,
            static_group_members,
            group_member_errors,
            group_devices_of_static_group,
            group_devices_of_dynamic_group,
            delete_group,
            tokens,
            revoke_token,
            create_device_credentials,
            device_credential_lookup_and_list,
            revoke_device_credential,
            delete_device_removes_credentials,
            device_login_reads_credential_and_device_state,
            create_device_certificates,
            device_certificate_lookup_and_list,
            revoke_device_certificate,
            expiring_device_certificates,
            delete_device_removes_certificates,
            enrollment_group_crud,
            claim_codes_count_their_uses,
            register_creates_then_retries_idempotently,
            register_refusals_and_conflicts,
            register_keeps_two_provisioning_credentials,
            register_adopts_registered_devices,
            presence_records_connects_and_disconnects,
            presence_batch_applies_events_in_order,
            presence_batch_equals_sequential_calls,
            reset_presence_disconnects_everyone,
            delete_device_removes_presence,
            agent_reports_record_facts_and_heartbeats,
            agent_reports_keep_each_devices_order_in_a_batch,
            delete_device_removes_agent_report,
            audit_trail_of_every_mutation,
            audit_records_page,
            concurrent_writes_keep_the_chain,
            mqtt_fresh_store_is_empty,
            mqtt_sessions_round_trip,
            mqtt_delete_session_cascades,
            mqtt_ack_and_unsubscribe_remove_one,
            mqtt_retained_put_overwrite_delete,
            mqtt_ops_are_idempotent_and_ignore_unknown_sessions,
            mqtt_failed_batch_applies_nothing,
            job_create_resolves_target_and_audits,
            job_dry_run_equals_real_run,
            job_with_empty_target,
            job_rollout_paces_starts,
            job_execution_updates_keep_counters_exact,
            job_retries_failures_with_backoff,
            job_executions_time_out,
            job_aborts_by_criteria,
            job_pause_resume_cancel,
            job_continuous_reaches_new_devices,
            job_lists_and_device_view,
            job_over_ten_thousand_devices,
            job_counters_stay_exact_under_random_reports,
            create_read_and_list_commands,
            create_command_is_idempotent,
            command_transitions,
            pending_and_expired_commands,
            prune_and_cascade_commands,
            twin_of_unknown_and_new_devices,
            twin_update_patches_versions_and_audits,
            twin_report_converges_without_audit,
            twin_history_pages_and_prunes,
            delete_device_removes_twin,
            replace_device_moves_the_twin,
            job_sync_continuous_reaches_every_new_device,
            profile_crud_and_audit,
            group_with_profiles_cannot_be_deleted,
            desired_layers_in_merge_order,
            recompute_queue_filled_by_every_change,
            recompute_twins_applies_profiles,
            recompute_drops_deleted_devices,
            recompute_refuses_documents_past_limits,
            preview_profile_target_fleet_and_group,
        );
    };
    (@cases ($factory:expr) $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test]
            async fn $case() {
                if let ::std::option::Option::Some((store, guard)) =
                    $crate::conformance::FactoryOutput::into_parts(($factory).await)
                {
                    $crate::conformance::$case(store).await;
                    ::std::mem::drop(guard);
                }
            }
        )+
    };
}

/// What a factory given to [`conformance_tests!`](crate::conformance_tests) may return: a store,
/// or a store and a guard that the generated test keeps alive until the case is over (a temporary
/// directory, a database to drop), each optionally wrapped in `Option` (`None` skips the test).
pub trait FactoryOutput {
    /// What must outlive the case.
    type Guard;

    /// The store to test and its guard, or `None` to skip.
    fn into_parts(self) -> Option<(Arc<dyn Store>, Self::Guard)>;
}

impl FactoryOutput for Arc<dyn Store> {
    type Guard = ();

    fn into_parts(self) -> Option<(Arc<dyn Store>, ())> {
        Some((self, ()))
    }
}

impl FactoryOutput for Option<Arc<dyn Store>> {
    type Guard = ();

    fn into_parts(self) -> Option<(Arc<dyn Store>, ())> {
        self.map(|s| (s, ()))
    }
}

impl<G> FactoryOutput for (Arc<dyn Store>, G) {
    type Guard = G;

    fn into_parts(self) -> Option<(Arc<dyn Store>, G)> {
        Some(self)
    }
}

impl<G> FactoryOutput for Option<(Arc<dyn Store>, G)> {
    type Guard = G;

    fn into_parts(self) -> Option<(Arc<dyn Store>, G)> {
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Cases: devices
// ---------------------------------------------------------------------------------------------

/// A new store holds nothing and answers every read.
pub async fn fresh_store_is_empty(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(!store.backend_name().is_empty());
    let page = store.list_devices(&query(None, None, 10)).await.unwrap();
    assert_eq!(page, Page { items: vec![], has_more: false });
    assert_eq!(store.count_devices_by_state().await.unwrap().0, vec![]);
    assert!(store.device(&id("nope")).await.unwrap().is_none());
    assert_eq!(
        store.list_groups(None, nz(10)).await.unwrap(),
        Page { items: vec![], has_more: false }
    );
    assert!(store.list_tokens().await.unwrap().is_empty());
    assert_eq!(store.token_count().await.unwrap(), 0);
    assert!(store.audit_records(0, nz(10)).await.unwrap().is_empty());
}

/// Create returns the device at version 1 with the mutation's time; get reads it back exactly.
pub async fn create_and_get_device(store: Arc<dyn Store>) {
    let new = NewDevice {
        id: id("sensor-1"),
        name: name("Boiler ünïcode 'quoted' \"double\""),
        tags: tags(&[("site", "berlin"), ("floor", "2"), ("empty", "")]),
        attributes: attributes(json!({
            "fw": {"version": "1.2.3", "size": 1024},
            "ratio": 0.5,
            "flags": [true, false, null],
            "note": "ünï \"q\" 'x'",
        })),
        state: LifecycleState::Active,
    };
    let m = at(1_000);
    let created = store.create_device(&new, &m).await.unwrap();
    let expected = Device {
        id: new.id.clone(),
        name: new.name.clone(),
        tags: new.tags.clone(),
        attributes: new.attributes.clone(),
        state: LifecycleState::Active,
        created_at: m.at,
        updated_at: m.at,
        version: 1,
        replaces: None,
        replaced_by: None,
    };
    assert_eq!(created, expected);
    assert_eq!(store.device(&new.id).await.unwrap(), Some(expected.clone()));

    let plain = store
        .create_device(&new_device("sensor-2", LifecycleState::Registered), &at(2_000))
        .await
        .unwrap();
    assert_eq!(plain.name.as_str(), "");
    assert!(plain.tags.is_empty());
    assert_eq!(plain.attributes, Attributes::default());
    assert_eq!(store.device(&id("sensor-2")).await.unwrap(), Some(plain.clone()));
    assert!(store.device(&id("sensor-3")).await.unwrap().is_none());

    let records = audit_since(&*store, 0).await;
    assert_eq!(records.len(), 2);
    check_record(
        &records[0],
        &m,
        "device.create",
        "device/sensor-1",
        None,
        Some(expected.audit_summary()),
    );
    check_record(
        &records[1],
        &at(2_000),
        "device.create",
        "device/sensor-2",
        None,
        Some(plain.audit_summary()),
    );
    check_chain(&*store).await;
}

/// Creating an existing id fails with `AlreadyExists` and changes nothing.
pub async fn create_duplicate_device_fails(store: Arc<dyn Store>) {
    let first =
        store.create_device(&new_device("d1", LifecycleState::Registered), &at(1)).await.unwrap();
    let mut again = new_device("d1", LifecycleState::Active);
    again.name = name("other");
    let err = store.create_device(&again, &at(2)).await;
    assert!(
        matches!(&err, Err(StoreError::AlreadyExists { kind: "device", id }) if id == "d1"),
        "expected AlreadyExists for device d1, got {err:?}"
    );
    assert_eq!(store.device(&id("d1")).await.unwrap(), Some(first));
    assert_eq!(audit_since(&*store, 0).await.len(), 1);
    check_chain(&*store).await;
}

/// Only `registered` and `active` are initial states; others are a `Conflict` and store nothing.
pub async fn create_requires_initial_state(store: Arc<dyn Store>) {
    for (i, state) in LifecycleState::ALL.into_iter().enumerate() {
        let dev_id = format!("d{i}");
        let result = store.create_device(&new_device(&dev_id, state), &at(1)).await;
        if state.is_initial() {
            assert_eq!(result.unwrap().state, state);
        } else {
            assert!(matches!(result, Err(StoreError::Conflict(_))), "{state}: {result:?}");
            assert!(store.device(&id(&dev_id)).await.unwrap().is_none(), "{state} stored");
        }
    }
    assert_eq!(audit_since(&*store, 0).await.len(), 2);
    check_chain(&*store).await;
}

/// Each patch field replaces its value; every change bumps the version and `updated_at`.
pub async fn update_applies_patch_and_bumps_version(store: Arc<dyn Store>) {
    let mut new = new_device("d1", LifecycleState::Registered);
    new.tags = tags(&[("site", "berlin"), ("floor", "1")]);
    let v1 = store.create_device(&new, &at(1_000)).await.unwrap();

    let patch = DevicePatch { name: Some(name("Pump")), ..DevicePatch::default() };
    let v2 = store.update_device(&id("d1"), &patch, Some(1), &at(2_000)).await.unwrap();
    assert_eq!(v2.name.as_str(), "Pump");
    assert_eq!((v2.version, v2.created_at, v2.updated_at), (2, v1.created_at, at(2_000).at));
    assert_eq!((&v2.tags, &v2.attributes, v2.state), (&v1.tags, &v1.attributes, v1.state));

    let patch = DevicePatch {
        tags: Some(tags(&[("site", "paris")])),
        attributes: Some(attributes(json!({"a": [1, 2]}))),
        state: Some(LifecycleState::Active),
        ..DevicePatch::default()
    };
    let v3 = store.update_device(&id("d1"), &patch, None, &at(3_000)).await.unwrap();
    assert_eq!(v3.tags, tags(&[("site", "paris")]));
    assert_eq!(v3.attributes, attributes(json!({"a": [1, 2]})));
    assert_eq!(v3.state, LifecycleState::Active);
    assert_eq!((v3.name.as_str(), v3.version, v3.updated_at), ("Pump", 3, at(3_000).at));
    assert_eq!(store.device(&id("d1")).await.unwrap(), Some(v3.clone()));

    // Tag filters see the new tags only.
    assert_eq!(ids_matching(&*store, "tags.site = 'paris'").await, vec!["d1"]);
    assert!(ids_matching(&*store, "tags.site = 'berlin'").await.is_empty());
    assert!(ids_matching(&*store, "has tags.floor").await.is_empty());

    // Clearing tags and attributes.
    let patch = DevicePatch {
        tags: Some(Tags::default()),
        attributes: Some(Attributes::default()),
        ..DevicePatch::default()
    };
    let v4 = store.update_device(&id("d1"), &patch, Some(3), &at(4_000)).await.unwrap();
    assert!(v4.tags.is_empty());
    assert!(ids_matching(&*store, "has tags.site").await.is_empty());

    let records = audit_since(&*store, 1).await;
    assert_eq!(records.len(), 3);
    let summaries = [&v1, &v2, &v3, &v4].map(Device::audit_summary);
    for (i, r) in records.iter().enumerate() {
        let m = at(2_000 + 1_000 * i as i64);
        check_record(
            r,
            &m,
            "device.update",
            "device/d1",
            Some(summaries[i].clone()),
            Some(summaries[i + 1].clone()),
        );
    }
    check_chain(&*store).await;
}

/// An empty patch, or one that sets the current values, changes nothing: same version, same
/// `updated_at`, no audit record.
pub async fn noop_update_keeps_version(store: Arc<dyn Store>) {
    let mut new = new_device("d1", LifecycleState::Active);
    new.name = name("Pump");
    new.tags = tags(&[("site", "berlin")]);
    new.attributes = attributes(json!({"a": 1}));
    let v1 = store.create_device(&new, &at(1_000)).await.unwrap();
    let same = DevicePatch {
        name: Some(name("Pump")),
        tags: Some(tags(&[("site", "berlin")])),
        attributes: Some(attributes(json!({"a": 1}))),
        state: Some(LifecycleState::Active),
    };
    for patch in [DevicePatch::default(), same] {
        let got = store.update_device(&id("d1"), &patch, Some(1), &at(2_000)).await.unwrap();
        assert_eq!(got, v1, "{patch:?}");
    }
    assert_eq!(store.device(&id("d1")).await.unwrap(), Some(v1));
    assert_eq!(audit_since(&*store, 0).await.len(), 1);
    check_chain(&*store).await;
}

/// A wrong expected version fails with `VersionMismatch` naming both versions and changes nothing.
pub async fn update_checks_version(store: Arc<dyn Store>) {
    store.create_device(&new_device("d1", LifecycleState::Registered), &at(1)).await.unwrap();
    let patch = DevicePatch { name: Some(name("x")), ..DevicePatch::default() };
    let v2 = store.update_device(&id("d1"), &patch, Some(1), &at(2)).await.unwrap();
    let patch = DevicePatch { name: Some(name("y")), ..DevicePatch::default() };
    for stale in [1, 3] {
        let err = store.update_device(&id("d1"), &patch, Some(stale), &at(3)).await;
        assert!(
            matches!(err, Err(StoreError::VersionMismatch { expected, current: 2 }) if expected == stale),
            "{err:?}"
        );
    }
    // A version mismatch wins over a no-op patch.
    let err = store.update_device(&id("d1"), &DevicePatch::default(), Some(1), &at(3)).await;
    assert!(matches!(err, Err(StoreError::VersionMismatch { expected: 1, current: 2 })), "{err:?}");
    assert_eq!(store.device(&id("d1")).await.unwrap(), Some(v2));
    assert_eq!(audit_since(&*store, 0).await.len(), 2);
    check_chain(&*store).await;
}

/// Updating a device that does not exist is `NotFound` and writes nothing.
pub async fn update_unknown_device_fails(store: Arc<dyn Store>) {
    let patch = DevicePatch { name: Some(name("x")), ..DevicePatch::default() };
    for (p, v) in [(patch, None), (DevicePatch::default(), None), (DevicePatch::default(), Some(1))]
    {
        let err = store.update_device(&id("ghost"), &p, v, &at(1)).await;
        assert!(
            matches!(&err, Err(StoreError::NotFound { kind: "device", id }) if id == "ghost"),
            "{err:?}"
        );
    }
    assert!(store.device(&id("ghost")).await.unwrap().is_none());
    assert!(audit_since(&*store, 0).await.is_empty());
}

/// Every (from, to) pair of states: legal moves apply, staying is a no-op, the rest fail with
/// `IllegalTransition { from, to }` and change nothing.
pub async fn lifecycle_transition_matrix(store: Arc<dyn Store>) {
    let mut t = 1_000;
    for from in LifecycleState::ALL {
        for to in LifecycleState::ALL {
            let dev_id = id(&format!("{from}-{to}"));
            let before = put_in_state(&*store, &dev_id, from, &mut t).await;
            let seq = last_seq(&*store).await;
            t += 1;
            let patch = DevicePatch { state: Some(to), ..DevicePatch::default() };
            let result = store.update_device(&dev_id, &patch, None, &at(t)).await;
            let legal = from.successors().contains(&to);
            match result {
                Ok(after) if legal => {
                    assert_eq!(
                        (after.state, after.version),
                        (to, before.version + 1),
                        "{from} -> {to}"
                    );
                    let records = audit_since(&*store, seq).await;
                    assert_eq!(records.len(), 1, "{from} -> {to}");
                    check_record(
                        &records[0],
                        &at(t),
                        "device.update",
                        &format!("device/{dev_id}"),
                        Some(before.audit_summary()),
                        Some(after.audit_summary()),
                    );
                }
                Ok(after) if from == to => assert_eq!(after, before, "{from} -> {to}"),
                Err(StoreError::IllegalTransition(e)) if !legal && from != to => {
                    assert_eq!((e.from, e.to), (from, to));
                    assert_eq!(store.device(&dev_id).await.unwrap(), Some(before.clone()));
                }
                other => panic!("{from} -> {to}: unexpected {other:?}"),
            }
            if !legal {
                assert_eq!(last_seq(&*store).await, seq, "{from} -> {to} appended an audit record");
            }
        }
    }
    check_chain(&*store).await;
}

/// Delete removes the device, checks the version, and fails with `NotFound` the second time.
pub async fn delete_device(store: Arc<dyn Store>) {
    let mut new = new_device("d1", LifecycleState::Active);
    new.tags = tags(&[("site", "berlin")]);
    store.create_device(&new, &at(1)).await.unwrap();
    let patch = DevicePatch { name: Some(name("x")), ..DevicePatch::default() };
    let v2 = store.update_device(&id("d1"), &patch, None, &at(2)).await.unwrap();
    store.create_device(&new_device("d2", LifecycleState::Active), &at(3)).await.unwrap();
    let seq = last_seq(&*store).await;

    let err = store.delete_device(&id("d1"), Some(1), &at(4)).await;
    assert!(matches!(err, Err(StoreError::VersionMismatch { expected: 1, current: 2 })), "{err:?}");
    assert_eq!(store.device(&id("d1")).await.unwrap(), Some(v2.clone()));
    assert_eq!(last_seq(&*store).await, seq);

    store.delete_device(&id("d1"), Some(2), &at(5)).await.unwrap();
    assert!(store.device(&id("d1")).await.unwrap().is_none());
    assert_eq!(all_ids(&*store, None).await, vec!["d2"]);
    assert!(ids_matching(&*store, "tags.site = 'berlin'").await.is_empty());
    for v in [None, Some(2)] {
        let err = store.delete_device(&id("d1"), v, &at(6)).await;
        assert!(
            matches!(&err, Err(StoreError::NotFound { kind: "device", id }) if id == "d1"),
            "{err:?}"
        );
    }
    store.delete_device(&id("d2"), None, &at(7)).await.unwrap();
    assert_eq!(all_ids(&*store, None).await, Vec::<String>::new());

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 2);
    check_record(&records[0], &at(5), "device.delete", "device/d1", Some(v2.audit_summary()), None);
    assert_eq!(
        (records[1].action.as_str(), records[1].resource.as_str()),
        ("device.delete", "device/d2")
    );
    // The id can be used again; the audit history of the old device stays.
    store.create_device(&new_device("d1", LifecycleState::Registered), &at(8)).await.unwrap();
    check_chain(&*store).await;
}

/// Deleting a device removes it from its static groups, for good.
pub async fn delete_device_removes_group_memberships(store: Arc<dyn Store>) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    store.create_group(&static_group("g"), &at(2)).await.unwrap();
    store.add_group_members(&group_name("g"), &[id("d1"), id("d2")], &at(3)).await.unwrap();
    let seq = last_seq(&*store).await;
    store.delete_device(&id("d1"), None, &at(4)).await.unwrap();
    assert_eq!(group_ids(&*store, "g", None).await, vec!["d2"]);
    // Only the device's own record is written.
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].action, "device.delete");
    // A new device with the same id is not a member.
    store.create_device(&new_device("d1", LifecycleState::Active), &at(5)).await.unwrap();
    assert_eq!(group_ids(&*store, "g", None).await, vec!["d2"]);
    check_chain(&*store).await;
}

/// Pages come in id order (byte order), each at most `limit` long, `has_more` exactly when more
/// follow, the cursor excluded.
pub async fn list_devices_pages_in_id_order(store: Arc<dyn Store>) {
    let ids = ["b", "a", "B", "a-1", "a.1", "a_1", "a1", "aa", "Z", "0", "9z", "c:1"];
    let rows: Vec<ImportRow> = ids.iter().map(|i| import_row(i, DevicePatch::default())).collect();
    store.import_devices(&rows, ImportMode::Atomic, &at(1)).await.unwrap();
    let mut expected: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    for size in [1, 2, 5, 11, 12, 13, 100] {
        assert_eq!(all_ids_paged(&*store, None, size).await, expected, "page size {size}");
    }
    // A cursor that is not an existing id works too.
    let page = store.list_devices(&query(None, Some("a0"), 3)).await.unwrap();
    assert_eq!(page_ids(&page), vec!["a1", "a_1", "aa"]);
    assert!(page.has_more);
    let page = store.list_devices(&query(None, Some("c:1"), 3)).await.unwrap();
    assert_eq!(page, Page { items: vec![], has_more: false });
}

/// A limit above [`MAX_PAGE_SIZE`] is clamped to it.
pub async fn list_devices_clamps_page_size(store: Arc<dyn Store>) {
    let n = MAX_PAGE_SIZE as usize + 5;
    let rows: Vec<ImportRow> =
        (0..n).map(|i| import_row(&format!("d{i:05}"), DevicePatch::default())).collect();
    store.import_devices(&rows, ImportMode::Atomic, &at(1)).await.unwrap();
    let page = store.list_devices(&query(None, None, MAX_PAGE_SIZE + 500)).await.unwrap();
    assert_eq!(page.items.len(), MAX_PAGE_SIZE as usize);
    assert!(page.has_more);
    let last = page.items.last().map(|d| d.id.to_string());
    let rest = store.list_devices(&query(None, last.as_deref(), MAX_PAGE_SIZE)).await.unwrap();
    assert_eq!(rest.items.len(), 5);
    assert!(!rest.has_more);
}

/// Inserting devices before the cursor between two pages neither repeats nor skips a device;
/// devices inserted after the cursor show up in later pages.
pub async fn pagination_is_stable_under_inserts(store: Arc<dyn Store>) {
    for i in (10..=90).step_by(10) {
        store
            .create_device(&new_device(&format!("d{i}"), LifecycleState::Active), &at(1))
            .await
            .unwrap();
    }
    let first = store.list_devices(&query(None, None, 3)).await.unwrap();
    assert_eq!(page_ids(&first), vec!["d10", "d20", "d30"]);
    for i in ["d05", "d15", "d25", "d30a", "d35", "d95"] {
        store.create_device(&new_device(i, LifecycleState::Active), &at(2)).await.unwrap();
    }
    store.delete_device(&id("d50"), None, &at(3)).await.unwrap();
    let mut seen = page_ids(&first);
    let mut cursor = seen.last().cloned();
    loop {
        let page = store.list_devices(&query(None, cursor.as_deref(), 3)).await.unwrap();
        seen.extend(page_ids(&page));
        cursor = seen.last().cloned();
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        seen,
        ["d10", "d20", "d30", "d30a", "d35", "d40", "d60", "d70", "d80", "d90", "d95"]
    );
}

/// Every operator, alone and combined, selects exactly the devices [`Filter::matches`] selects,
/// in id order, through every page size.
pub async fn filters_agree_with_in_memory_evaluation(store: Arc<dyn Store>) {
    let fleet = build_fleet(&*store).await;
    let mut filters: Vec<Filter> = FILTERS.iter().map(|f| parse(f)).collect();
    let atoms: Vec<Filter> = ATOMS.iter().map(|f| parse(f)).collect();
    let mut rng = Rng(0x5eed);
    for _ in 0..80 {
        filters.push(random_filter(&mut rng, &atoms, 3));
    }
    // Edge shapes the parser does not produce.
    filters.push(Filter::And(vec![]));
    filters.push(Filter::Or(vec![]));
    filters.push(Filter::In(domain::Field::Name, vec![]));
    for filter in &filters {
        let expected: Vec<String> =
            fleet.iter().filter(|d| filter.matches(d)).map(|d| d.id.to_string()).collect();
        for size in [7, MAX_PAGE_SIZE] {
            let got = all_ids_paged(&*store, Some(filter), size).await;
            assert_eq!(got, expected, "filter `{filter}` (page size {size})");
        }
        // The devices come back whole.
        let page = store.list_devices(&query(Some(filter.clone()), None, 5)).await.unwrap();
        for d in &page.items {
            assert!(fleet.contains(d), "filter `{filter}` returned a device that differs: {d:?}");
        }
    }
}

/// A device without a tag fails `=`, `in`, `startswith` and `has` on it and passes `!=`, `not in`
/// and `not`.
pub async fn missing_tags_satisfy_only_negations(store: Arc<dyn Store>) {
    let mut with = new_device("with", LifecycleState::Active);
    with.tags = tags(&[("site", "berlin")]);
    store.create_device(&with, &at(1)).await.unwrap();
    let mut empty = new_device("empty", LifecycleState::Active);
    empty.tags = tags(&[("site", "")]);
    store.create_device(&empty, &at(1)).await.unwrap();
    store.create_device(&new_device("without", LifecycleState::Active), &at(1)).await.unwrap();
    for (filter, expected) in [
        ("tags.site = 'berlin'", vec!["with"]),
        ("tags.site != 'berlin'", vec!["empty", "without"]),
        ("tags.site = ''", vec!["empty"]),
        ("tags.site != ''", vec!["with", "without"]),
        ("tags.site in ('berlin', 'x')", vec!["with"]),
        ("tags.site not in ('berlin', 'x')", vec!["empty", "without"]),
        ("tags.site startswith ''", vec!["empty", "with"]),
        ("tags.site startswith 'ber'", vec!["with"]),
        ("not tags.site startswith 'ber'", vec!["empty", "without"]),
        ("has tags.site", vec!["empty", "with"]),
        ("not has tags.site", vec!["without"]),
        ("not tags.site = 'berlin'", vec!["empty", "without"]),
        ("tags.other != 'x'", vec!["empty", "with", "without"]),
        ("tags.other = 'x' or tags.site != 'berlin'", vec!["empty", "without"]),
    ] {
        assert_eq!(ids_matching(&*store, filter).await, expected, "{filter}");
    }
}

/// Counts per state leave out states without devices.
pub async fn count_devices_by_state(store: Arc<dyn Store>) {
    let mut t = 1;
    let plan = [
        (LifecycleState::Registered, 3_u64),
        (LifecycleState::Active, 2),
        (LifecycleState::Decommissioned, 1),
        (LifecycleState::Retired, 4),
    ];
    for (state, n) in plan {
        for i in 0..n {
            put_in_state(&*store, &id(&format!("{state}-{i}")), state, &mut t).await;
        }
    }
    let mut counts = store.count_devices_by_state().await.unwrap().0;
    counts.sort();
    assert_eq!(counts, plan.to_vec());
    store.delete_device(&id("active-0"), None, &at(t)).await.unwrap();
    store.delete_device(&id("active-1"), None, &at(t)).await.unwrap();
    let mut counts = store.count_devices_by_state().await.unwrap().0;
    counts.sort();
    assert_eq!(
        counts,
        vec![
            (LifecycleState::Registered, 3),
            (LifecycleState::Decommissioned, 1),
            (LifecycleState::Retired, 4)
        ]
    );
}

/// Import creates missing devices (absent fields take defaults), updates changed ones, reports
/// unchanged ones, and rejects non-initial new states and illegal transitions.
pub async fn import_reports_every_outcome(store: Arc<dyn Store>) {
    let mut existing = new_device("old", LifecycleState::Active);
    existing.name = name("Old");
    existing.tags = tags(&[("site", "berlin")]);
    let old = store.create_device(&existing, &at(1_000)).await.unwrap();
    let mut same = new_device("same", LifecycleState::Registered);
    same.name = name("Same");
    let same = store.create_device(&same, &at(1_000)).await.unwrap();
    let retired = put_in_state(&*store, &id("retired"), LifecycleState::Retired, &mut 1_000).await;
    let seq = last_seq(&*store).await;

    let rows = vec![
        import_row("new-1", DevicePatch::default()),
        import_row(
            "new-2",
            DevicePatch {
                name: Some(name("Two")),
                tags: Some(tags(&[("site", "paris")])),
                attributes: Some(attributes(json!({"k": "v"}))),
                state: Some(LifecycleState::Active),
            },
        ),
        import_row(
            "old",
            DevicePatch { tags: Some(tags(&[("site", "rome")])), ..DevicePatch::default() },
        ),
        import_row("same", DevicePatch { name: Some(name("Same")), ..DevicePatch::default() }),
        import_row("same", DevicePatch::default()),
        import_row(
            "new-3",
            DevicePatch { state: Some(LifecycleState::Suspended), ..DevicePatch::default() },
        ),
        import_row(
            "new-4",
            DevicePatch { state: Some(LifecycleState::Retired), ..DevicePatch::default() },
        ),
        import_row(
            "retired",
            DevicePatch { state: Some(LifecycleState::Active), ..DevicePatch::default() },
        ),
    ];
    let m = at(5_000);
    let outcomes = store.import_devices(&rows, ImportMode::BestEffort, &m).await.unwrap();
    assert_eq!(
        outcome_kinds(&outcomes),
        [
            "created",
            "created",
            "updated",
            "unchanged",
            "unchanged",
            "rejected",
            "rejected",
            "rejected"
        ]
    );
    for o in &outcomes {
        if let ImportOutcome::Rejected(reason) = o {
            assert!(!reason.is_empty());
        }
    }

    let new1 = store.device(&id("new-1")).await.unwrap().unwrap();
    assert_eq!(
        new1,
        Device {
            id: id("new-1"),
            name: DisplayName::default(),
            tags: Tags::default(),
            attributes: Attributes::default(),
            state: LifecycleState::Registered,
            created_at: m.at,
            updated_at: m.at,
            version: 1,
            replaces: None,
            replaced_by: None,
        }
    );
    let new2 = store.device(&id("new-2")).await.unwrap().unwrap();
    assert_eq!((new2.name.as_str(), new2.state, new2.version), ("Two", LifecycleState::Active, 1));
    assert_eq!(new2.tags, tags(&[("site", "paris")]));
    assert_eq!(new2.attributes, attributes(json!({"k": "v"})));
    let old2 = store.device(&id("old")).await.unwrap().unwrap();
    assert_eq!(
        (old2.name.as_str(), old2.version, old2.updated_at, old2.created_at),
        ("Old", 2, m.at, old.created_at)
    );
    assert_eq!(old2.tags, tags(&[("site", "rome")]));
    assert_eq!(ids_matching(&*store, "tags.site = 'rome'").await, vec!["old"]);
    assert_eq!(store.device(&id("same")).await.unwrap(), Some(same));
    assert!(store.device(&id("new-3")).await.unwrap().is_none());
    assert!(store.device(&id("new-4")).await.unwrap().is_none());
    assert_eq!(store.device(&id("retired")).await.unwrap(), Some(retired));

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 3);
    check_record(
        &records[0],
        &m,
        "device.create",
        "device/new-1",
        None,
        Some(new1.audit_summary()),
    );
    check_record(
        &records[1],
        &m,
        "device.create",
        "device/new-2",
        None,
        Some(new2.audit_summary()),
    );
    check_record(
        &records[2],
        &m,
        "device.update",
        "device/old",
        Some(old.audit_summary()),
        Some(old2.audit_summary()),
    );
    check_chain(&*store).await;
}

/// A row repeating an id applies on top of the earlier row of the same batch.
pub async fn import_applies_repeated_ids_in_order(store: Arc<dyn Store>) {
    let rows = vec![
        import_row("d1", DevicePatch { name: Some(name("one")), ..DevicePatch::default() }),
        import_row(
            "d1",
            DevicePatch { state: Some(LifecycleState::Active), ..DevicePatch::default() },
        ),
        import_row("d1", DevicePatch { name: Some(name("one")), ..DevicePatch::default() }),
        import_row(
            "d1",
            DevicePatch { state: Some(LifecycleState::Registered), ..DevicePatch::default() },
        ),
        import_row(
            "d1",
            DevicePatch { state: Some(LifecycleState::Suspended), ..DevicePatch::default() },
        ),
    ];
    for mode in [ImportMode::BestEffort, ImportMode::Atomic] {
        let outcomes = store.import_devices(&rows, mode, &at(1)).await.unwrap();
        match mode {
            ImportMode::BestEffort => assert_eq!(
                outcome_kinds(&outcomes),
                ["created", "updated", "unchanged", "rejected", "updated"]
            ),
            // The first batch created d1 (now suspended): every row is judged against that.
            ImportMode::Atomic => assert_eq!(
                outcome_kinds(&outcomes),
                ["unchanged", "updated", "unchanged", "rejected", "updated"]
            ),
        }
    }
    let d1 = store.device(&id("d1")).await.unwrap().unwrap();
    assert_eq!((d1.name.as_str(), d1.state, d1.version), ("one", LifecycleState::Suspended, 3));
    let records = audit_since(&*store, 0).await;
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["device.create", "device.update", "device.update"]);
    check_chain(&*store).await;
}

/// Best-effort mode commits the good rows of a batch with rejected rows.
pub async fn import_best_effort_commits_good_rows(store: Arc<dyn Store>) {
    let rows = vec![
        import_row("a", DevicePatch::default()),
        import_row(
            "b",
            DevicePatch { state: Some(LifecycleState::Decommissioned), ..DevicePatch::default() },
        ),
        import_row(
            "c",
            DevicePatch { state: Some(LifecycleState::Active), ..DevicePatch::default() },
        ),
    ];
    let outcomes = store.import_devices(&rows, ImportMode::BestEffort, &at(1)).await.unwrap();
    assert_eq!(outcome_kinds(&outcomes), ["created", "rejected", "created"]);
    assert_eq!(all_ids(&*store, None).await, vec!["a", "c"]);
    assert_eq!(audit_since(&*store, 0).await.len(), 2);
    // An empty batch is fine.
    assert!(store.import_devices(&[], ImportMode::BestEffort, &at(2)).await.unwrap().is_empty());
    check_chain(&*store).await;
}

/// Atomic mode commits nothing when a row is rejected, and still reports every row's outcome.
pub async fn import_atomic_commits_nothing_on_rejection(store: Arc<dyn Store>) {
    let before =
        store.create_device(&new_device("old", LifecycleState::Active), &at(1)).await.unwrap();
    let rows = vec![
        import_row("new", DevicePatch::default()),
        import_row("old", DevicePatch { name: Some(name("changed")), ..DevicePatch::default() }),
        import_row(
            "old",
            DevicePatch { state: Some(LifecycleState::Registered), ..DevicePatch::default() },
        ),
        import_row("new", DevicePatch { name: Some(name("n")), ..DevicePatch::default() }),
    ];
    let outcomes = store.import_devices(&rows, ImportMode::Atomic, &at(2)).await.unwrap();
    assert_eq!(outcome_kinds(&outcomes), ["created", "updated", "rejected", "updated"]);
    assert!(store.device(&id("new")).await.unwrap().is_none());
    assert_eq!(store.device(&id("old")).await.unwrap(), Some(before));
    assert_eq!(all_ids(&*store, None).await, vec!["old"]);
    assert_eq!(audit_since(&*store, 0).await.len(), 1);
    check_chain(&*store).await;
}

/// Atomic mode commits a batch without rejections whole.
pub async fn import_atomic_commits_a_clean_batch(store: Arc<dyn Store>) {
    store.create_device(&new_device("old", LifecycleState::Active), &at(1)).await.unwrap();
    let rows = vec![
        import_row("new", DevicePatch::default()),
        import_row(
            "old",
            DevicePatch { state: Some(LifecycleState::Suspended), ..DevicePatch::default() },
        ),
        import_row("old", DevicePatch::default()),
    ];
    let outcomes = store.import_devices(&rows, ImportMode::Atomic, &at(2)).await.unwrap();
    assert_eq!(outcome_kinds(&outcomes), ["created", "updated", "unchanged"]);
    assert_eq!(all_ids(&*store, None).await, vec!["new", "old"]);
    assert_eq!(store.device(&id("old")).await.unwrap().unwrap().state, LifecycleState::Suspended);
    assert_eq!(audit_since(&*store, 0).await.len(), 3);
    check_chain(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Cases: groups
// ---------------------------------------------------------------------------------------------

/// Static and dynamic groups are created at version 1, read back exactly, listed by name in pages;
/// a duplicate name is `AlreadyExists`.
pub async fn create_get_and_list_groups(store: Arc<dyn Store>) {
    let s = store.create_group(&static_group("s"), &at(1_000)).await.unwrap();
    assert_eq!(
        s,
        Group {
            name: group_name("s"),
            description: "group s".to_owned(),
            kind: GroupKind::Static,
            created_at: at(1_000).at,
            updated_at: at(1_000).at,
            version: 1,
        }
    );
    let filter = parse("tags.site = 'berlin' and state != 'retired' or name startswith 'it''s'");
    let d = store.create_group(&dynamic_group("d", filter.clone()), &at(2_000)).await.unwrap();
    assert_eq!(
        (d.kind.clone(), d.version, d.created_at),
        (GroupKind::Dynamic(filter), 1, at(2_000).at)
    );
    assert_eq!(store.group(&group_name("s")).await.unwrap(), Some(s.clone()));
    assert_eq!(store.group(&group_name("d")).await.unwrap(), Some(d.clone()));
    assert!(store.group(&group_name("x")).await.unwrap().is_none());

    let err = store.create_group(&dynamic_group("s", parse("state = 'active'")), &at(3_000)).await;
    assert!(
        matches!(&err, Err(StoreError::AlreadyExists { kind: "group", id }) if id == "s"),
        "{err:?}"
    );
    assert_eq!(store.group(&group_name("s")).await.unwrap(), Some(s.clone()));

    for n in ["e", "a", "c", "b"] {
        store.create_group(&static_group(n), &at(4_000)).await.unwrap();
    }
    let names = |p: &Page<Group>| p.items.iter().map(|g| g.name.to_string()).collect::<Vec<_>>();
    let p1 = store.list_groups(None, nz(3)).await.unwrap();
    assert_eq!((names(&p1), p1.has_more), (vec!["a".to_owned(), "b".into(), "c".into()], true));
    let p2 = store.list_groups(Some(&group_name("c")), nz(3)).await.unwrap();
    assert_eq!((names(&p2), p2.has_more), (vec!["d".to_owned(), "e".into(), "s".into()], false));
    assert_eq!(p2.items[0], d);
    let p3 = store.list_groups(Some(&group_name("s")), nz(3)).await.unwrap();
    assert_eq!(p3, Page { items: vec![], has_more: false });

    let records = audit_since(&*store, 0).await;
    assert_eq!(records.len(), 6);
    check_record(&records[0], &at(1_000), "group.create", "group/s", None, Some(s.audit_summary()));
    check_record(&records[1], &at(2_000), "group.create", "group/d", None, Some(d.audit_summary()));
    check_chain(&*store).await;
}

/// Description and (dynamic groups) filter change with a version bump; a filter for a static group
/// is a `Conflict`; a no-op patch writes nothing; an unknown group is `NotFound`.
pub async fn update_group(store: Arc<dyn Store>) {
    let s1 = store.create_group(&static_group("s"), &at(1_000)).await.unwrap();
    let d1 = store
        .create_group(&dynamic_group("d", parse("state = 'active'")), &at(1_000))
        .await
        .unwrap();
    let seq = last_seq(&*store).await;

    let patch = GroupPatch { description: Some("new text".to_owned()), filter: None };
    let s2 = store.update_group(&group_name("s"), &patch, &at(2_000)).await.unwrap();
    assert_eq!(
        (s2.description.as_str(), s2.version, s2.updated_at, s2.created_at),
        ("new text", 2, at(2_000).at, s1.created_at)
    );
    assert_eq!(store.group(&group_name("s")).await.unwrap(), Some(s2.clone()));

    let new_filter = parse("tags.site in ('a', 'b') or not has tags.x");
    let patch = GroupPatch { description: None, filter: Some(new_filter.clone()) };
    let d2 = store.update_group(&group_name("d"), &patch, &at(3_000)).await.unwrap();
    assert_eq!(
        (d2.kind.clone(), d2.version, d2.description.clone()),
        (GroupKind::Dynamic(new_filter.clone()), 2, d1.description.clone())
    );
    assert_eq!(store.group(&group_name("d")).await.unwrap(), Some(d2.clone()));

    let seq2 = last_seq(&*store).await;
    let patch =
        GroupPatch { description: Some("x".to_owned()), filter: Some(parse("state = 'active'")) };
    let err = store.update_group(&group_name("s"), &patch, &at(4_000)).await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    assert_eq!(store.group(&group_name("s")).await.unwrap(), Some(s2.clone()));

    for patch in [
        GroupPatch::default(),
        GroupPatch { description: Some("new text".to_owned()), filter: None },
    ] {
        assert_eq!(store.update_group(&group_name("s"), &patch, &at(5_000)).await.unwrap(), s2);
    }
    let same = GroupPatch { description: Some(d2.description.clone()), filter: Some(new_filter) };
    assert_eq!(store.update_group(&group_name("d"), &same, &at(5_000)).await.unwrap(), d2);
    assert_eq!(last_seq(&*store).await, seq2);

    let err = store.update_group(&group_name("nope"), &GroupPatch::default(), &at(6_000)).await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "group", id }) if id == "nope"),
        "{err:?}"
    );

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 2);
    check_record(
        &records[0],
        &at(2_000),
        "group.update",
        "group/s",
        Some(s1.audit_summary()),
        Some(s2.audit_summary()),
    );
    check_record(
        &records[1],
        &at(3_000),
        "group.update",
        "group/d",
        Some(d1.audit_summary()),
        Some(d2.audit_summary()),
    );
    check_chain(&*store).await;
}

/// Members are added and removed; repeats and non-members are no-ops; audit records list the ids
/// that changed, ascending; the group's own version does not move.
pub async fn static_group_members(store: Arc<dyn Store>) {
    for d in ["d1", "d2", "d3", "d4"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let g = store.create_group(&static_group("g"), &at(2)).await.unwrap();
    let seq = last_seq(&*store).await;
    let gn = group_name("g");

    store.add_group_members(&gn, &[id("d3"), id("d1"), id("d3")], &at(3)).await.unwrap();
    assert_eq!(group_ids(&*store, "g", None).await, vec!["d1", "d3"]);
    store.add_group_members(&gn, &[id("d1"), id("d2")], &at(4)).await.unwrap();
    store.add_group_members(&gn, &[id("d1")], &at(5)).await.unwrap();
    store.add_group_members(&gn, &[], &at(5)).await.unwrap();
    assert_eq!(group_ids(&*store, "g", None).await, vec!["d1", "d2", "d3"]);

    store
        .remove_group_members(&gn, &[id("d3"), id("d4"), id("ghost"), id("d1")], &at(6))
        .await
        .unwrap();
    store.remove_group_members(&gn, &[id("d3")], &at(7)).await.unwrap();
    assert_eq!(group_ids(&*store, "g", None).await, vec!["d2"]);
    assert_eq!(store.group(&gn).await.unwrap(), Some(g));

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 3);
    check_record(
        &records[0],
        &at(3),
        "group.members.add",
        "group/g",
        None,
        Some(json!({"added": ["d1", "d3"]})),
    );
    check_record(
        &records[1],
        &at(4),
        "group.members.add",
        "group/g",
        None,
        Some(json!({"added": ["d2"]})),
    );
    check_record(
        &records[2],
        &at(6),
        "group.members.remove",
        "group/g",
        None,
        Some(json!({"removed": ["d1", "d3"]})),
    );
    check_chain(&*store).await;
}

/// Unknown groups and devices are `NotFound` (adding nothing at all), dynamic groups a `Conflict`.
pub async fn group_member_errors(store: Arc<dyn Store>) {
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    store.create_group(&static_group("s"), &at(1)).await.unwrap();
    store.create_group(&dynamic_group("d", parse("state = 'active'")), &at(1)).await.unwrap();
    let seq = last_seq(&*store).await;

    let err = store
        .add_group_members(&group_name("s"), &[id("d1"), id("ghost"), id("ghost2")], &at(2))
        .await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "device", id }) if id == "ghost"),
        "{err:?}"
    );
    assert!(group_ids(&*store, "s", None).await.is_empty(), "a failed add added members");

    for result in [
        store.add_group_members(&group_name("nope"), &[id("d1")], &at(2)).await,
        store.remove_group_members(&group_name("nope"), &[id("d1")], &at(2)).await,
    ] {
        assert!(
            matches!(&result, Err(StoreError::NotFound { kind: "group", id }) if id == "nope"),
            "{result:?}"
        );
    }
    for result in [
        store.add_group_members(&group_name("d"), &[id("d1")], &at(2)).await,
        store.remove_group_members(&group_name("d"), &[id("d1")], &at(2)).await,
    ] {
        assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    }
    let err = store.group_devices(&group_name("nope"), &query(None, None, 10)).await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "group", id }) if id == "nope"),
        "{err:?}"
    );
    assert_eq!(last_seq(&*store).await, seq);
    check_chain(&*store).await;
}

/// A static group's devices come in id order, in pages, narrowed by the query's filter.
pub async fn group_devices_of_static_group(store: Arc<dyn Store>) {
    let mut members = Vec::new();
    for i in 0..12 {
        let mut new = new_device(&format!("d{i:02}"), LifecycleState::Active);
        new.tags = tags(&[("site", if i % 3 == 0 { "berlin" } else { "paris" })]);
        store.create_device(&new, &at(1)).await.unwrap();
        if i % 2 == 0 {
            members.push(new.id);
        }
    }
    store.create_group(&static_group("g"), &at(2)).await.unwrap();
    members.reverse();
    store.add_group_members(&group_name("g"), &members, &at(3)).await.unwrap();
    let all = ["d00", "d02", "d04", "d06", "d08", "d10"];
    for size in [1, 2, 4, 6, 100] {
        assert_eq!(group_ids_paged(&*store, "g", None, size).await, all, "page size {size}");
    }
    let page = store.group_devices(&group_name("g"), &query(None, None, 2)).await.unwrap();
    assert_eq!(page.items[0], store.device(&id("d00")).await.unwrap().unwrap());
    let berlin = parse("tags.site = 'berlin'");
    for size in [1, 100] {
        assert_eq!(group_ids_paged(&*store, "g", Some(&berlin), size).await, ["d00", "d06"]);
    }
    let not_berlin = parse("not tags.site = 'berlin' and id != 'd04'");
    assert_eq!(group_ids_paged(&*store, "g", Some(&not_berlin), 2).await, ["d02", "d08", "d10"]);
    let page = store.group_devices(&group_name("g"), &query(None, Some("d04"), 2)).await.unwrap();
    assert_eq!((page_ids(&page), page.has_more), (vec!["d06".to_owned(), "d08".into()], true));
}

/// A dynamic group's devices are its filter's matches now, in pages, narrowed by the query's
/// filter.
pub async fn group_devices_of_dynamic_group(store: Arc<dyn Store>) {
    for i in 0..12 {
        let mut new = new_device(&format!("d{i:02}"), LifecycleState::Active);
        new.tags = tags(&[("site", if i % 3 == 0 { "berlin" } else { "paris" })]);
        store.create_device(&new, &at(1)).await.unwrap();
    }
    store
        .create_group(&dynamic_group("g", parse("tags.site = 'berlin' or id = 'd01'")), &at(2))
        .await
        .unwrap();
    let all = ["d00", "d01", "d03", "d06", "d09"];
    for size in [1, 2, 5, 100] {
        assert_eq!(group_ids_paged(&*store, "g", None, size).await, all, "page size {size}");
    }
    let narrow = parse("id startswith 'd0' and id != 'd03'");
    assert_eq!(group_ids_paged(&*store, "g", Some(&narrow), 2).await, ["d00", "d01", "d06", "d09"]);
    // Membership follows the devices.
    let patch = DevicePatch { tags: Some(tags(&[("site", "berlin")])), ..DevicePatch::default() };
    store.update_device(&id("d02"), &patch, None, &at(3)).await.unwrap();
    store.delete_device(&id("d00"), None, &at(3)).await.unwrap();
    assert_eq!(group_ids_paged(&*store, "g", None, 2).await, ["d01", "d02", "d03", "d06", "d09"]);
    // And the filter.
    let patch = GroupPatch { description: None, filter: Some(parse("id in ('d05', 'd04', 'zz')")) };
    store.update_group(&group_name("g"), &patch, &at(4)).await.unwrap();
    assert_eq!(group_ids_paged(&*store, "g", None, 1).await, ["d04", "d05"]);
}

/// Deleting a group keeps its devices; the name is free again, without the old members.
pub async fn delete_group(store: Arc<dyn Store>) {
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    let g = store.create_group(&static_group("g"), &at(1)).await.unwrap();
    store.add_group_members(&group_name("g"), &[id("d1")], &at(2)).await.unwrap();
    let dg = store.create_group(&dynamic_group("dg", parse("has tags.x")), &at(2)).await.unwrap();
    let seq = last_seq(&*store).await;

    store.delete_group(&group_name("g"), &at(3)).await.unwrap();
    store.delete_group(&group_name("dg"), &at(4)).await.unwrap();
    assert!(store.group(&group_name("g")).await.unwrap().is_none());
    assert_eq!(store.list_groups(None, nz(10)).await.unwrap().items, vec![]);
    assert!(store.device(&id("d1")).await.unwrap().is_some());
    let err = store.delete_group(&group_name("g"), &at(5)).await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "group", id }) if id == "g"),
        "{err:?}"
    );
    let err = store.group_devices(&group_name("g"), &query(None, None, 10)).await;
    assert!(matches!(err, Err(StoreError::NotFound { kind: "group", .. })), "{err:?}");

    store.create_group(&static_group("g"), &at(6)).await.unwrap();
    assert!(group_ids(&*store, "g", None).await.is_empty());

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 3);
    check_record(&records[0], &at(3), "group.delete", "group/g", Some(g.audit_summary()), None);
    check_record(&records[1], &at(4), "group.delete", "group/dg", Some(dg.audit_summary()), None);
    check_chain(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Cases: tokens
// ---------------------------------------------------------------------------------------------

/// Tokens are stored without their secret, found by hash, listed newest first and counted; an id
/// or hash already in use is `AlreadyExists`.
pub async fn tokens(store: Arc<dyn Store>) {
    let t1 = store.create_token(&new_token(1, "ci", Role::Viewer, None), &at(1_000)).await.unwrap();
    let expires = Some(Timestamp::from_millis(BASE + 90_000));
    let t2 = store
        .create_token(&new_token(2, "ops ünï", Role::Operator, expires), &at(2_000))
        .await
        .unwrap();
    let t3 =
        store.create_token(&new_token(3, "root", Role::Admin, None), &at(3_000)).await.unwrap();
    assert_eq!(
        t2,
        ApiToken {
            id: token_id(2),
            name: "ops ünï".to_owned(),
            role: Role::Operator,
            hash: TokenHash::of_secret("secret-2"),
            created_at: at(2_000).at,
            expires_at: expires,
            revoked_at: None,
        }
    );
    assert_eq!(
        store.token_by_hash(&TokenHash::of_secret("secret-2")).await.unwrap(),
        Some(t2.clone())
    );
    assert_eq!(
        store.token_by_hash(&TokenHash::of_secret("secret-1")).await.unwrap(),
        Some(t1.clone())
    );
    assert!(store.token_by_hash(&TokenHash::of_secret("nope")).await.unwrap().is_none());
    assert_eq!(store.list_tokens().await.unwrap(), vec![t3.clone(), t2.clone(), t1.clone()]);
    assert_eq!(store.token_count().await.unwrap(), 3);

    let seq = last_seq(&*store).await;
    let mut same_id = new_token(1, "again", Role::Admin, None);
    same_id.hash = TokenHash::of_secret("other");
    let err = store.create_token(&same_id, &at(4_000)).await;
    assert!(matches!(&err, Err(StoreError::AlreadyExists { kind: "token", .. })), "{err:?}");
    let mut same_hash = new_token(9, "again", Role::Admin, None);
    same_hash.hash = t3.hash;
    let err = store.create_token(&same_hash, &at(4_000)).await;
    assert!(matches!(&err, Err(StoreError::AlreadyExists { kind: "token", .. })), "{err:?}");
    assert_eq!(store.token_count().await.unwrap(), 3);
    assert_eq!(last_seq(&*store).await, seq);

    let records = audit_since(&*store, 0).await;
    assert_eq!(records.len(), 3);
    for (r, (t, ms)) in records.iter().zip([(&t1, 1_000), (&t2, 2_000), (&t3, 3_000)]) {
        check_record(
            r,
            &at(ms),
            "token.create",
            &format!("token/{}", t.id),
            None,
            Some(t.audit_summary()),
        );
        assert!(!r.after.as_deref().unwrap_or_default().contains("secret"));
    }
    check_chain(&*store).await;
}

/// Revoking sets `revoked_at`; revoking again keeps the first time and writes nothing; an unknown
/// token is `NotFound`.
pub async fn revoke_token(store: Arc<dyn Store>) {
    let t1 = store.create_token(&new_token(1, "a", Role::Admin, None), &at(1_000)).await.unwrap();
    let t2 = store.create_token(&new_token(2, "b", Role::Viewer, None), &at(2_000)).await.unwrap();
    let revoked = store.revoke_token(&t1.id, &at(5_000)).await.unwrap();
    assert_eq!(revoked, ApiToken { revoked_at: Some(at(5_000).at), ..t1.clone() });
    let again = store.revoke_token(&t1.id, &at(6_000)).await.unwrap();
    assert_eq!(again, revoked);
    assert_eq!(store.token_by_hash(&t1.hash).await.unwrap(), Some(revoked.clone()));
    assert_eq!(store.list_tokens().await.unwrap(), vec![t2.clone(), revoked.clone()]);
    assert_eq!(store.token_count().await.unwrap(), 2);
    let err = store.revoke_token(&token_id(7), &at(7_000)).await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "token", id }) if *id == token_id(7).to_string()),
        "{err:?}"
    );

    let records = audit_since(&*store, 2).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &at(5_000),
        "token.revoke",
        &format!("token/{}", t1.id),
        Some(t1.audit_summary()),
        Some(revoked.audit_summary()),
    );
    check_chain(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Cases: device credentials
// ---------------------------------------------------------------------------------------------

/// Creating a credential for an existing device returns it and audits it on the device; a missing
/// device is `NotFound`, a taken id or hash `AlreadyExists`, and failures leave no trace.
pub async fn create_device_credentials(store: Arc<dyn Store>) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let seq = last_seq(&*store).await;
    let expires = Some(Timestamp::from_millis(BASE + 90_000));
    let c1 = store.create_device_credential(&new_credential(1, "d1", None), &at(1_000)).await;
    let c1 = c1.unwrap();
    let c2 = store.create_device_credential(&new_credential(2, "d1", expires), &at(2_000)).await;
    let c2 = c2.unwrap();
    assert_eq!(
        c2,
        DeviceCredential {
            id: credential_id(2),
            device_id: id("d1"),
            hash: TokenHash::of_secret("device-secret-2"),
            created_at: at(2_000).at,
            expires_at: expires,
            revoked_at: None,
        }
    );
    assert_eq!(c1.expires_at, None);
    assert_eq!(store.device_credentials(&id("d1")).await.unwrap(), vec![c2.clone(), c1.clone()]);

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 2);
    for (r, (c, ms)) in records.iter().zip([(&c1, 1_000), (&c2, 2_000)]) {
        check_record(
            r,
            &at(ms),
            "device.credential.create",
            "device/d1",
            None,
            Some(c.audit_summary()),
        );
    }

    let seq = last_seq(&*store).await;
    let err = store.create_device_credential(&new_credential(3, "ghost", None), &at(3_000)).await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "device", id }) if id == "ghost"),
        "{err:?}"
    );
    let mut same_id = new_credential(1, "d1", None);
    same_id.hash = TokenHash::of_secret("other");
    let err = store.create_device_credential(&same_id, &at(3_000)).await;
    assert!(matches!(&err, Err(StoreError::AlreadyExists { kind: "credential", .. })), "{err:?}");
    let mut same_hash = new_credential(9, "d1", None);
    same_hash.hash = c2.hash;
    let err = store.create_device_credential(&same_hash, &at(3_000)).await;
    assert!(matches!(&err, Err(StoreError::AlreadyExists { kind: "credential", .. })), "{err:?}");
    // The hash is unique across devices, not per device.
    let mut other_device = new_credential(9, "d2", None);
    other_device.hash = c1.hash;
    let err = store.create_device_credential(&other_device, &at(4_000)).await;
    assert!(matches!(&err, Err(StoreError::AlreadyExists { kind: "credential", .. })), "{err:?}");

    assert_eq!(store.device_credentials(&id("d1")).await.unwrap(), vec![c2, c1]);
    assert!(store.device_credentials(&id("d2")).await.unwrap().is_empty());
    assert!(
        store.device_credential_by_hash(&TokenHash::of_secret("other")).await.unwrap().is_none()
    );
    assert_eq!(last_seq(&*store).await, seq);
    check_chain(&*store).await;
}

/// Lookup by hash finds any device's credential, revoked or expired ones too; a device's list is
/// its own credentials only, newest first (ties: highest id first), revoked ones included.
pub async fn device_credential_lookup_and_list(store: Arc<dyn Store>) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let past = Some(Timestamp::from_millis(BASE + 10));
    let c1 = store.create_device_credential(&new_credential(1, "d1", past), &at(1_000)).await;
    let c1 = c1.unwrap();
    // Two issued at the same time: the higher id lists first.
    let c3 = store.create_device_credential(&new_credential(3, "d1", None), &at(2_000)).await;
    let c3 = c3.unwrap();
    let c2 = store.create_device_credential(&new_credential(2, "d1", None), &at(2_000)).await;
    let c2 = c2.unwrap();
    let other = store.create_device_credential(&new_credential(4, "d2", None), &at(3_000)).await;
    let other = other.unwrap();
    let c3 = store.revoke_device_credential(&id("d1"), &c3.id, &at(4_000)).await.unwrap();

    for c in [&c1, &c2, &c3, &other] {
        assert_eq!(store.device_credential_by_hash(&c.hash).await.unwrap().as_ref(), Some(c));
    }
    let unknown = TokenHash::of_secret("device-secret-5");
    assert!(store.device_credential_by_hash(&unknown).await.unwrap().is_none());

    assert_eq!(
        store.device_credentials(&id("d1")).await.unwrap(),
        vec![c3.clone(), c2.clone(), c1.clone()]
    );
    assert_eq!(store.device_credentials(&id("d2")).await.unwrap(), vec![other]);
    assert!(store.device_credentials(&id("ghost")).await.unwrap().is_empty());
    check_chain(&*store).await;
}

/// Revoking sets `revoked_at` from the mutation; revoking again keeps the first time and writes
/// nothing; an unknown id, or another device's credential, is `NotFound` (kind `credential`).
pub async fn revoke_device_credential(store: Arc<dyn Store>) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let c1 = store.create_device_credential(&new_credential(1, "d1", None), &at(1_000)).await;
    let c1 = c1.unwrap();
    let c2 = store.create_device_credential(&new_credential(2, "d1", None), &at(2_000)).await;
    let c2 = c2.unwrap();
    let c3 = store.create_device_credential(&new_credential(3, "d2", None), &at(3_000)).await;
    let c3 = c3.unwrap();
    let seq = last_seq(&*store).await;

    let revoked = store.revoke_device_credential(&id("d1"), &c1.id, &at(5_000)).await.unwrap();
    assert_eq!(revoked, DeviceCredential { revoked_at: Some(at(5_000).at), ..c1.clone() });
    assert!(!revoked.is_usable_at(at(5_000).at));
    let again = store.revoke_device_credential(&id("d1"), &c1.id, &at(6_000)).await.unwrap();
    assert_eq!(again, revoked);
    assert_eq!(store.device_credential_by_hash(&c1.hash).await.unwrap(), Some(revoked.clone()));
    assert_eq!(
        store.device_credentials(&id("d1")).await.unwrap(),
        vec![c2.clone(), revoked.clone()]
    );

    for (device, cred) in [("d1", credential_id(7)), ("d2", c1.id.clone()), ("d1", c3.id.clone())] {
        let err = store.revoke_device_credential(&id(device), &cred, &at(7_000)).await;
        assert!(
            matches!(&err, Err(StoreError::NotFound { kind: "credential", id }) if *id == cred.to_string()),
            "{device} {cred}: {err:?}"
        );
    }
    let err = store.revoke_device_credential(&id("ghost"), &c2.id, &at(7_000)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "credential", .. })), "{err:?}");
    // The credentials the failed calls named are untouched.
    assert_eq!(store.device_credential_by_hash(&c2.hash).await.unwrap(), Some(c2));
    assert_eq!(store.device_credential_by_hash(&c3.hash).await.unwrap(), Some(c3));

    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &at(5_000),
        "device.credential.revoke",
        "device/d1",
        Some(c1.audit_summary()),
        Some(revoked.audit_summary()),
    );
    check_chain(&*store).await;
}

/// Deleting a device deletes its credentials (only the device's own record is written); a new
/// device with the same id starts without any, and the ids and hashes are free again.
pub async fn delete_device_removes_credentials(store: Arc<dyn Store>) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let c1 = store.create_device_credential(&new_credential(1, "d1", None), &at(1_000)).await;
    let c1 = c1.unwrap();
    let c2 = store.create_device_credential(&new_credential(2, "d1", None), &at(2_000)).await;
    let c2 = c2.unwrap();
    store.revoke_device_credential(&id("d1"), &c2.id, &at(2_500)).await.unwrap();
    let c3 = store.create_device_credential(&new_credential(3, "d2", None), &at(3_000)).await;
    let c3 = c3.unwrap();
    let seq = last_seq(&*store).await;

    store.delete_device(&id("d1"), None, &at(4_000)).await.unwrap();
    for c in [&c1, &c2] {
        assert!(store.device_credential_by_hash(&c.hash).await.unwrap().is_none());
    }
    assert!(store.device_credentials(&id("d1")).await.unwrap().is_empty());
    assert_eq!(store.device_credentials(&id("d2")).await.unwrap(), vec![c3.clone()]);
    let err = store.revoke_device_credential(&id("d1"), &c1.id, &at(4_500)).await;
    assert!(matches!(&err, Err(StoreError::NotFound { kind: "credential", .. })), "{err:?}");
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].action.as_str(), records[0].resource.as_str()),
        ("device.delete", "device/d1")
    );

    store.create_device(&new_device("d1", LifecycleState::Active), &at(5_000)).await.unwrap();
    assert!(store.device_credentials(&id("d1")).await.unwrap().is_empty());
    let again = store.create_device_credential(&new_credential(1, "d1", None), &at(6_000)).await;
    assert_eq!(again.unwrap(), DeviceCredential { created_at: at(6_000).at, ..c1 });
    check_chain(&*store).await;
}

/// `device_login` finds a credential by the hash of its secret together with its device's current
/// state, whatever the state, revoked and expired credentials too (the caller decides); an unknown
/// hash, or the credential of a deleted device, finds nothing. Reading writes nothing.
pub async fn device_login_reads_credential_and_device_state(store: Arc<dyn Store>) {
    use LifecycleState::{Active, Decommissioned, Registered, Retired, Suspended};
    let mut t = 0;
    let mut logins = Vec::new();
    for (n, state) in (1u8..).zip([Registered, Active, Suspended, Decommissioned, Retired]) {
        let device = id(&format!("d{n}"));
        put_in_state(&*store, &device, state, &mut t).await;
        let new = new_credential(n, device.as_str(), None);
        let credential = store.create_device_credential(&new, &at(100)).await.unwrap();
        logins.push(DeviceLogin { credential, device_state: state });
    }
    let seq = last_seq(&*store).await;
    for login in &logins {
        let hash = login.credential.hash;
        assert_eq!(store.device_login(&hash).await.unwrap().as_ref(), Some(login));
        // The same credential as the lookup by hash alone.
        let alone = store.device_credential_by_hash(&hash).await.unwrap();
        assert_eq!(alone.as_ref(), Some(&login.credential));
    }
    assert_eq!(store.device_login(&TokenHash::of_secret("device-secret-99")).await.unwrap(), None);
    assert_eq!(last_seq(&*store).await, seq, "reads must not be audited");

    // Revoked and expired credentials are found, with the device's state.
    let past = Some(Timestamp::from_millis(BASE + 10));
    let expired = store.create_device_credential(&new_credential(10, "d2", past), &at(200)).await;
    let expired = expired.unwrap();
    assert!(!expired.is_usable_at(at(300).at));
    let revoked = store.create_device_credential(&new_credential(11, "d2", None), &at(200)).await;
    let revoked = store.revoke_device_credential(&id("d2"), &revoked.unwrap().id, &at(250)).await;
    let revoked = revoked.unwrap();
    for credential in [expired, revoked] {
        let login = DeviceLogin { credential: credential.clone(), device_state: Active };
        assert_eq!(store.device_login(&credential.hash).await.unwrap(), Some(login));
    }

    // A change of the device's state shows at once.
    let patch = DevicePatch { state: Some(Suspended), ..DevicePatch::default() };
    store.update_device(&id("d2"), &patch, None, &at(400)).await.unwrap();
    let suspended = DeviceLogin { device_state: Suspended, ..logins[1].clone() };
    assert_eq!(store.device_login(&logins[1].credential.hash).await.unwrap(), Some(suspended));

    // A deleted device's credentials are gone with it.
    store.delete_device(&id("d2"), None, &at(500)).await.unwrap();
    assert_eq!(store.device_login(&logins[1].credential.hash).await.unwrap(), None);
    assert_eq!(
        store.device_login(&logins[0].credential.hash).await.unwrap().as_ref(),
        Some(&logins[0])
    );
    check_chain(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Cases: presence
// ---------------------------------------------------------------------------------------------

/// Connects and disconnects are recorded per device without audit records; a disconnect of a
/// device that is not connected and a connect of an unknown device are ignored; a reconnect keeps
/// the last disconnect.
pub async fn presence_records_connects_and_disconnects(store: Arc<dyn Store>) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let seq = last_seq(&*store).await;
    let t = |ms: i64| Timestamp::from_millis(BASE + ms);
    let summary = |connected, ever_connected| ConnectivitySummary { connected, ever_connected };
    assert_eq!(store.presence(&id("d1")).await.unwrap(), None);
    assert_eq!(store.connectivity_summary().await.unwrap(), summary(0, 0));

    store.record_disconnect(&id("d1"), t(500), "clean").await.unwrap();
    assert_eq!(store.presence(&id("d1")).await.unwrap(), None);

    store.record_connect(&id("d1"), t(1_000), "10.0.0.1:5000", "5").await.unwrap();
    let connected = Presence {
        device_id: id("d1"),
        connected: true,
        connected_at: Some(t(1_000)),
        disconnected_at: None,
        remote_addr: Some("10.0.0.1:5000".to_owned()),
        protocol: Some("5".to_owned()),
        last_disconnect_reason: None,
    };
    assert_eq!(store.presence(&id("d1")).await.unwrap(), Some(connected.clone()));
    assert_eq!(store.presence(&id("d2")).await.unwrap(), None);
    assert_eq!(store.connectivity_summary().await.unwrap(), summary(1, 1));

    store.record_disconnect(&id("d1"), t(2_000), "clean").await.unwrap();
    let disconnected = Presence {
        connected: false,
        disconnected_at: Some(t(2_000)),
        last_disconnect_reason: Some("clean".to_owned()),
        ..connected
    };
    assert_eq!(store.presence(&id("d1")).await.unwrap(), Some(disconnected.clone()));
    assert_eq!(store.connectivity_summary().await.unwrap(), summary(0, 1));

    // Not connected: a second disconnect changes nothing.
    store.record_disconnect(&id("d1"), t(3_000), "io_error").await.unwrap();
    assert_eq!(store.presence(&id("d1")).await.unwrap(), Some(disconnected.clone()));

    store.record_connect(&id("d1"), t(4_000), "10.0.0.2:6000", "3.1.1").await.unwrap();
    store.record_connect(&id("d2"), t(4_500), "10.0.0.3:7000", "5").await.unwrap();
    let reconnected = Presence {
        connected: true,
        connected_at: Some(t(4_000)),
        remote_addr: Some("10.0.0.2:6000".to_owned()),
        protocol: Some("3.1.1".to_owned()),
        ..disconnected
    };
    assert_eq!(store.presence(&id("d1")).await.unwrap(), Some(reconnected));
    assert_eq!(store.connectivity_summary().await.unwrap(), summary(2, 2));

    store.record_connect(&id("ghost"), t(5_000), "10.0.0.9:1", "5").await.unwrap();
    assert_eq!(store.presence(&id("ghost")).await.unwrap(), None);
    assert_eq!(store.connectivity_summary().await.unwrap(), summary(2, 2));

    assert_eq!(last_seq(&*store).await, seq, "presence must not be audited");
    check_chain(&*store).await;
}

/// A batch of presence events applies in order, in one call: a device connected and disconnected
/// in the same batch ends disconnected with both times; of two connects the later wins; a
/// disconnect while the device is not connected at that point of the batch is ignored; other
/// devices' events in between change nothing of it; events of unknown devices are ignored; nothing
/// is audited.
pub async fn presence_batch_applies_events_in_order(store: Arc<dyn Store>) {
    for d in ["d1", "d2", "d3"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let seq = last_seq(&*store).await;
    let t = |ms: i64| Timestamp::from_millis(BASE + ms);
    store.record_presence_events(&[]).await.unwrap();
    assert_eq!(store.connectivity_summary().await.unwrap(), ConnectivitySummary::default());

    let batch = [
        // Not connected yet: ignored.
        disconnect("d1", t(500), "clean"),
        connect("d2", t(900), "10.0.0.2:1", "3.1.1"),
        connect("d1", t(1_000), "10.0.0.1:1", "5"),
        connect("ghost", t(1_000), "10.0.0.9:1", "5"),
        disconnect("d2", t(1_100), "keep_alive_timeout"),
        disconnect("d1", t(2_000), "clean"),
        // Disconnected already: ignored.
        disconnect("d1", t(2_500), "io_error"),
        connect("d3", t(3_000), "10.0.0.3:1", "5"),
        connect("d3", t(3_500), "10.0.0.3:2", "3.1.1"),
        disconnect("ghost", t(3_600), "clean"),
        // A reconnect keeps the last disconnect.
        connect("d2", t(4_000), "10.0.0.2:2", "5"),
    ];
    store.record_presence_events(&batch).await.unwrap();
    let d1 = presence("d1", false, (t(1_000), "10.0.0.1:1", "5"), Some((t(2_000), "clean")));
    let d2_end = Some((t(1_100), "keep_alive_timeout"));
    let d2 = presence("d2", true, (t(4_000), "10.0.0.2:2", "5"), d2_end);
    let d3 = presence("d3", true, (t(3_500), "10.0.0.3:2", "3.1.1"), None);
    assert_eq!(store.presence(&id("d1")).await.unwrap(), Some(d1.clone()));
    assert_eq!(store.presence(&id("d2")).await.unwrap(), Some(d2));
    assert_eq!(store.presence(&id("d3")).await.unwrap(), Some(d3));
    assert_eq!(store.presence(&id("ghost")).await.unwrap(), None);
    let summary = store.connectivity_summary().await.unwrap();
    assert_eq!(summary, ConnectivitySummary { connected: 2, ever_connected: 3 });

    // The next batch starts from what the last one recorded: d2 and d3 are connected, d1 is not.
    let batch = [
        disconnect("d3", t(5_000), "taken_over"),
        disconnect("d1", t(5_000), "io_error"),
        connect("d3", t(5_001), "10.0.0.3:3", "5"),
        disconnect("d2", t(5_002), "clean"),
        disconnect("d3", t(5_003), "server_shutdown"),
    ];
    store.record_presence_events(&batch).await.unwrap();
    let d2 = presence("d2", false, (t(4_000), "10.0.0.2:2", "5"), Some((t(5_002), "clean")));
    let d3_end = Some((t(5_003), "server_shutdown"));
    let d3 = presence("d3", false, (t(5_001), "10.0.0.3:3", "5"), d3_end);
    assert_eq!(store.presence(&id("d1")).await.unwrap(), Some(d1));
    assert_eq!(store.presence(&id("d2")).await.unwrap(), Some(d2));
    assert_eq!(store.presence(&id("d3")).await.unwrap(), Some(d3));
    let summary = store.connectivity_summary().await.unwrap();
    assert_eq!(summary, ConnectivitySummary { connected: 0, ever_connected: 3 });

    assert_eq!(last_seq(&*store).await, seq, "presence must not be audited");
    check_chain(&*store).await;
}

/// Recording presence events in batches, however they are cut, leaves the same presence as
/// recording them one call at a time (`record_connect`, `record_disconnect`), on random
/// sequences of connects and disconnects of a few devices and an unknown one.
pub async fn presence_batch_equals_sequential_calls(store: Arc<dyn Store>) {
    const DEVICES: &[&str] = &["a", "b", "c", "ghost"];
    const ADDRS: &[&str] = &["10.0.0.1:1", "10.0.0.2:2", "[::1]:3", ""];
    const PROTOCOLS: &[&str] = &["3.1.1", "5"];
    const REASONS: &[&str] = &["clean", "keep_alive_timeout", "taken_over", "io_error"];
    let mut rng = Rng(0x5eed_0001);
    for round in 0..6 {
        // The same script on two copies of the devices: `s…` one call per event, `b…` in batches.
        let name = |copy: &str, d: &str| format!("{copy}{round}-{d}");
        for d in &DEVICES[..3] {
            for copy in ["s", "b"] {
                let new = new_device(&name(copy, d), LifecycleState::Active);
                store.create_device(&new, &at(1)).await.unwrap();
            }
        }
        let mut script = Vec::new();
        for n in 0..40 {
            let d = rng.pick(DEVICES);
            let at = Timestamp::from_millis(BASE + 1_000 * i64::from(round) + n);
            script.push(if rng.below(2) == 0 {
                (d, connect(d, at, rng.pick(ADDRS), rng.pick(PROTOCOLS)))
            } else {
                (d, disconnect(d, at, rng.pick(REASONS)))
            });
        }
        let renamed = |copy: &str, (d, event): &(&str, PresenceEvent)| match event.clone() {
            PresenceEvent::Connect { at, remote_addr, protocol, .. } => {
                PresenceEvent::Connect { device_id: id(&name(copy, d)), at, remote_addr, protocol }
            }
            PresenceEvent::Disconnect { at, reason, .. } => {
                PresenceEvent::Disconnect { device_id: id(&name(copy, d)), at, reason }
            }
        };
        for step in &script {
            match renamed("s", step) {
                PresenceEvent::Connect { device_id, at, remote_addr, protocol } => {
                    store.record_connect(&device_id, at, &remote_addr, &protocol).await.unwrap();
                }
                PresenceEvent::Disconnect { device_id, at, reason } => {
                    store.record_disconnect(&device_id, at, &reason).await.unwrap();
                }
            }
        }
        // Round 0 is one batch; the others are cut at random.
        let batched: Vec<PresenceEvent> = script.iter().map(|step| renamed("b", step)).collect();
        let mut rest = &batched[..];
        while !rest.is_empty() {
            let size = if round == 0 { rest.len() } else { 1 + rng.below(rest.len()) };
            let (batch, after) = rest.split_at(size);
            store.record_presence_events(batch).await.unwrap();
            rest = after;
        }
        for d in DEVICES {
            let one_by_one = store.presence(&id(&name("s", d))).await.unwrap();
            let batched = store.presence(&id(&name("b", d))).await.unwrap();
            let batched = batched.map(|p| Presence { device_id: id(&name("s", d)), ..p });
            assert_eq!(batched, one_by_one, "round {round}, device {d}");
        }
    }
    let summary = store.connectivity_summary().await.unwrap();
    assert_eq!(summary.connected % 2, 0, "{summary:?}");
    assert_eq!(summary.ever_connected % 2, 0, "{summary:?}");
    check_chain(&*store).await;
}

/// `reset_presence` ends every recorded connection with reason `server_restart` and leaves
/// disconnected devices as they were.
pub async fn reset_presence_disconnects_everyone(store: Arc<dyn Store>) {
    for d in ["d1", "d2", "d3"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let t = |ms: i64| Timestamp::from_millis(BASE + ms);
    store.record_connect(&id("d1"), t(1_000), "10.0.0.1:1", "5").await.unwrap();
    store.record_connect(&id("d2"), t(1_000), "10.0.0.2:1", "3.1.1").await.unwrap();
    store.record_disconnect(&id("d2"), t(2_000), "keep_alive_timeout").await.unwrap();
    let d2 = store.presence(&id("d2")).await.unwrap();

    assert_eq!(store.reset_presence(t(9_000)).await.unwrap(), 1);
    let d1 = store.presence(&id("d1")).await.unwrap().unwrap();
    assert!(!d1.connected);
    assert_eq!(d1.disconnected_at, Some(t(9_000)));
    assert_eq!(d1.last_disconnect_reason.as_deref(), Some("server_restart"));
    assert_eq!(d1.connected_at, Some(t(1_000)));
    assert_eq!(store.presence(&id("d2")).await.unwrap(), d2);
    assert_eq!(store.presence(&id("d3")).await.unwrap(), None);
    let summary = store.connectivity_summary().await.unwrap();
    assert_eq!(summary, ConnectivitySummary { connected: 0, ever_connected: 2 });
    assert_eq!(store.reset_presence(t(9_500)).await.unwrap(), 0);
    check_chain(&*store).await;
}

/// Deleting a device deletes its presence; a new device with the same id starts with none.
pub async fn delete_device_removes_presence(store: Arc<dyn Store>) {
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    let t = Timestamp::from_millis(BASE + 1_000);
    store.record_connect(&id("d1"), t, "10.0.0.1:1", "5").await.unwrap();
    store.delete_device(&id("d1"), None, &at(2_000)).await.unwrap();
    assert_eq!(store.presence(&id("d1")).await.unwrap(), None);
    assert_eq!(store.connectivity_summary().await.unwrap(), ConnectivitySummary::default());
    store.create_device(&new_device("d1", LifecycleState::Active), &at(3_000)).await.unwrap();
    assert_eq!(store.presence(&id("d1")).await.unwrap(), None);
    check_chain(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Cases: agent reports
// ---------------------------------------------------------------------------------------------

/// Facts and heartbeats are recorded per device without audit records: facts replace facts,
/// a heartbeat replaces the health and counts one more; reports of unknown devices are ignored.
pub async fn agent_reports_record_facts_and_heartbeats(store: Arc<dyn Store>) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let seq = last_seq(&*store).await;
    let t = |ms: i64| Timestamp::from_millis(BASE + ms);
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), None);
    store.record_agent_reports(&[]).await.unwrap();

    let os = json!({"agent_version": "0.1.0", "os": "Debian GNU/Linux 12", "uptime_secs": 12});
    store.record_agent_reports(&[facts("d1", os.clone(), t(1_000))]).await.unwrap();
    let reported = AgentReport {
        device_id: id("d1"),
        facts: Some(payload(os.clone())),
        facts_at: Some(t(1_000)),
        health: None,
        heartbeat_at: None,
        heartbeats: 0,
    };
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), Some(reported.clone()));
    assert_eq!(store.agent_report(&id("d2")).await.unwrap(), None);

    let health =
        json!({"ts": "2026-05-28T10:00:00Z", "cpu_percent": 3.5, "nested": {"a": [1, null]}});
    store.record_agent_reports(&[heartbeat("d1", health.clone(), t(2_000))]).await.unwrap();
    let beating = AgentReport {
        health: Some(payload(health.clone())),
        heartbeat_at: Some(t(2_000)),
        heartbeats: 1,
        ..reported
    };
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), Some(beating.clone()));

    // The same facts again: only their time changes. Other facts replace them whole.
    store.record_agent_reports(&[facts("d1", os.clone(), t(3_000))]).await.unwrap();
    let again = AgentReport { facts_at: Some(t(3_000)), ..beating.clone() };
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), Some(again.clone()));
    let other = json!({"os": "Alpine Linux", "text": "\u{0}quotes\" and ünïcode"});
    store.record_agent_reports(&[facts("d1", other.clone(), t(4_000))]).await.unwrap();
    let replaced =
        AgentReport { facts: Some(payload(other)), facts_at: Some(t(4_000)), ..again.clone() };
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), Some(replaced.clone()));

    // A heartbeat of a device that never sent facts, and reports of a device that does not exist.
    let batch = [
        heartbeat("ghost", json!({}), t(5_000)),
        heartbeat("d2", json!({}), t(5_000)),
        facts("ghost", json!({"os": "none"}), t(5_000)),
    ];
    store.record_agent_reports(&batch).await.unwrap();
    let d2 = AgentReport {
        device_id: id("d2"),
        facts: None,
        facts_at: None,
        health: Some(payload(json!({}))),
        heartbeat_at: Some(t(5_000)),
        heartbeats: 1,
    };
    assert_eq!(store.agent_report(&id("d2")).await.unwrap(), Some(d2));
    assert_eq!(store.agent_report(&id("ghost")).await.unwrap(), None);
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), Some(replaced));

    // Agent reports are not presence.
    assert_eq!(store.presence(&id("d1")).await.unwrap(), None);
    assert_eq!(last_seq(&*store).await, seq, "agent reports must not be audited");
    check_chain(&*store).await;
}

/// In one batch, a device's reports apply in their order, whatever other devices' reports lie
/// between them.
pub async fn agent_reports_keep_each_devices_order_in_a_batch(store: Arc<dyn Store>) {
    for d in ["a", "b", "c"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
    let t = |ms: i64| Timestamp::from_millis(BASE + ms);
    let batch = [
        heartbeat("c", json!({"n": 1}), t(1_000)),
        facts("b", json!({"v": 1}), t(1_000)),
        heartbeat("a", json!({"n": 1}), t(1_000)),
        heartbeat("c", json!({"n": 2}), t(1_001)),
        facts("b", json!({"v": 2}), t(1_001)),
        heartbeat("c", json!({"n": 3}), t(1_002)),
        facts("a", json!({"v": 1}), t(1_002)),
    ];
    store.record_agent_reports(&batch).await.unwrap();
    let a = store.agent_report(&id("a")).await.unwrap().unwrap();
    assert_eq!((a.heartbeats, a.health), (1, Some(payload(json!({"n": 1})))));
    assert_eq!((a.facts, a.facts_at), (Some(payload(json!({"v": 1}))), Some(t(1_002))));
    let b = store.agent_report(&id("b")).await.unwrap().unwrap();
    assert_eq!((b.facts, b.facts_at), (Some(payload(json!({"v": 2}))), Some(t(1_001))));
    assert_eq!((b.heartbeats, b.health), (0, None));
    let c = store.agent_report(&id("c")).await.unwrap().unwrap();
    assert_eq!((c.heartbeats, c.heartbeat_at), (3, Some(t(1_002))));
    assert_eq!(c.health, Some(payload(json!({"n": 3}))));
    check_chain(&*store).await;
}

/// Deleting a device deletes its agent report; a new device with the same id starts with none.
pub async fn delete_device_removes_agent_report(store: Arc<dyn Store>) {
    store.create_device(&new_device("d1", LifecycleState::Active), &at(1)).await.unwrap();
    let t = Timestamp::from_millis(BASE + 1_000);
    let batch = [facts("d1", json!({"os": "linux"}), t), heartbeat("d1", json!({"up": 1}), t)];
    store.record_agent_reports(&batch).await.unwrap();
    assert!(store.agent_report(&id("d1")).await.unwrap().is_some());
    store.delete_device(&id("d1"), None, &at(2_000)).await.unwrap();
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), None);
    store.create_device(&new_device("d1", LifecycleState::Active), &at(3_000)).await.unwrap();
    assert_eq!(store.agent_report(&id("d1")).await.unwrap(), None);
    check_chain(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Cases: audit
// ---------------------------------------------------------------------------------------------

/// One scripted session touching every kind of write: the audit log holds exactly one record per
/// changed resource, in order, with the right actor, time, action, resource and summaries.
pub async fn audit_trail_of_every_mutation(store: Arc<dyn Store>) {
    let sys = Mutation { actor: Actor::system(), at: Timestamp::from_millis(BASE) };
    let t = store.create_token(&new_token(1, "admin", Role::Admin, None), &sys).await.unwrap();
    let d1 =
        store.create_device(&new_device("d1", LifecycleState::Registered), &at(1)).await.unwrap();
    let patch = DevicePatch { state: Some(LifecycleState::Active), ..DevicePatch::default() };
    let d1b = store.update_device(&id("d1"), &patch, Some(1), &at(2)).await.unwrap();
    let rows = vec![
        import_row("d2", DevicePatch::default()),
        import_row("d1", DevicePatch { name: Some(name("one")), ..DevicePatch::default() }),
        import_row("d1", DevicePatch::default()),
    ];
    store.import_devices(&rows, ImportMode::BestEffort, &at(3)).await.unwrap();
    let d2 = store.device(&id("d2")).await.unwrap().unwrap();
    let d1c = store.device(&id("d1")).await.unwrap().unwrap();
    let g = store.create_group(&static_group("g"), &at(4)).await.unwrap();
    store.add_group_members(&group_name("g"), &[id("d2"), id("d1")], &at(5)).await.unwrap();
    store.remove_group_members(&group_name("g"), &[id("d2")], &at(6)).await.unwrap();
    let patch = GroupPatch { description: Some("changed".to_owned()), filter: None };
    let g2 = store.update_group(&group_name("g"), &patch, &at(7)).await.unwrap();
    store.delete_group(&group_name("g"), &at(8)).await.unwrap();
    store.delete_device(&id("d2"), None, &at(9)).await.unwrap();
    let revoked = store.revoke_token(&t.id, &at(10)).await.unwrap();
    // Failed and no-op writes leave no record.
    let _ = store.create_device(&new_device("d1", LifecycleState::Active), &at(11)).await;
    let _ = store.update_device(&id("d1"), &DevicePatch::default(), None, &at(11)).await;
    let _ = store.delete_device(&id("ghost"), None, &at(11)).await;
    let _ = store.revoke_token(&t.id, &at(11)).await;

    let records = audit_since(&*store, 0).await;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<u64>>());
    check_record(
        &records[0],
        &sys,
        "token.create",
        &format!("token/{}", t.id),
        None,
        Some(t.audit_summary()),
    );
    assert_eq!(records[0].actor, "system");
    check_record(&records[1], &at(1), "device.create", "device/d1", None, Some(d1.audit_summary()));
    check_record(
        &records[2],
        &at(2),
        "device.update",
        "device/d1",
        Some(d1.audit_summary()),
        Some(d1b.audit_summary()),
    );
    check_record(&records[3], &at(3), "device.create", "device/d2", None, Some(d2.audit_summary()));
    check_record(
        &records[4],
        &at(3),
        "device.update",
        "device/d1",
        Some(d1b.audit_summary()),
        Some(d1c.audit_summary()),
    );
    check_record(&records[5], &at(4), "group.create", "group/g", None, Some(g.audit_summary()));
    check_record(
        &records[6],
        &at(5),
        "group.members.add",
        "group/g",
        None,
        Some(json!({"added": ["d1", "d2"]})),
    );
    check_record(
        &records[7],
        &at(6),
        "group.members.remove",
        "group/g",
        None,
        Some(json!({"removed": ["d2"]})),
    );
    check_record(
        &records[8],
        &at(7),
        "group.update",
        "group/g",
        Some(g.audit_summary()),
        Some(g2.audit_summary()),
    );
    check_record(&records[9], &at(8), "group.delete", "group/g", Some(g2.audit_summary()), None);
    check_record(
        &records[10],
        &at(9),
        "device.delete",
        "device/d2",
        Some(d2.audit_summary()),
        None,
    );
    check_record(
        &records[11],
        &at(10),
        "token.revoke",
        &format!("token/{}", t.id),
        Some(t.audit_summary()),
        Some(revoked.audit_summary()),
    );
    assert_eq!(records[1].actor, actor().to_string());
    check_chain(&*store).await;
}

/// `audit_records(after, limit)` pages through the log oldest first.
pub async fn audit_records_page(store: Arc<dyn Store>) {
    for i in 0..7 {
        store
            .create_device(&new_device(&format!("d{i}"), LifecycleState::Active), &at(i))
            .await
            .unwrap();
    }
    let all = store.audit_records(0, nz(100)).await.unwrap();
    assert_eq!(all.len(), 7);
    let seqs = |rs: &[AuditRecord]| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&store.audit_records(0, nz(3)).await.unwrap()), [1, 2, 3]);
    assert_eq!(seqs(&store.audit_records(3, nz(3)).await.unwrap()), [4, 5, 6]);
    assert_eq!(seqs(&store.audit_records(6, nz(3)).await.unwrap()), [7]);
    assert!(store.audit_records(7, nz(3)).await.unwrap().is_empty());
    assert!(store.audit_records(1_000, nz(3)).await.unwrap().is_empty());
    assert_eq!(audit_since(&*store, 0).await, all);
    assert_eq!(all[4].resource, "device/d4");
    assert_eq!(all[4].at, at(4).at);
    assert_eq!(verify_chain(&all), Ok(7));
}

/// Writes racing each other all land, and the chain stays one unbroken line.
pub async fn concurrent_writes_keep_the_chain(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let dev_id = format!("d{i:02}");
            store.create_device(&new_device(&dev_id, LifecycleState::Active), &at(i)).await?;
            let patch = DevicePatch { name: Some(name("x")), ..DevicePatch::default() };
            store.update_device(&id(&dev_id), &patch, Some(1), &at(i + 100)).await?;
            if i % 4 == 0 {
                store.create_token(&new_token(i as u8, "t", Role::Viewer, None), &at(i)).await?;
            }
            StoreResult::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    let records = audit_since(&*store, 0).await;
    assert_eq!(records.len(), 24 * 2 + 6);
    assert_eq!(all_ids(&*store, None).await.len(), 24);
    check_chain(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// The generated fleet and filters
// ---------------------------------------------------------------------------------------------

/// Filters every backend must get right; see also [`ATOMS`], combined at random.
const FILTERS: &[&str] = &[
    "state = 'active'",
    "state != 'active'",
    "state in ('active', 'suspended')",
    "state not in ('retired', 'decommissioned')",
    "state = 'retired' or state = 'registered'",
    "id = 'dev-0005'",
    "id != 'dev-0005'",
    "id in ('dev-0004', 'a_b-010', 'nope')",
    "id not in ('dev-0004', 'a_b-010')",
    "id startswith 'dev-00'",
    "id startswith 'a_'",
    "id startswith 'a'",
    "id startswith 'A'",
    "id startswith 'Dev'",
    "id startswith 'x.y:'",
    "id startswith ''",
    "id startswith 'dev-0009999'",
    "name = 'Boiler'",
    "name != 'boiler'",
    "name = ''",
    "name startswith 'Bo'",
    "name startswith 'bo'",
    "name startswith 'Bo%'",
    "name startswith 'pump_'",
    "name startswith 'Ü'",
    "name in ('', 'it''s')",
    "name not in ('Boiler', '')",
    "tags.site = 'berlin'",
    "tags.site = 'Berlin'",
    "tags.site != 'berlin'",
    "tags.site = ''",
    "tags.site in ('berlin', 'paris')",
    "tags.site not in ('berlin')",
    "tags.site startswith 'ber'",
    "tags.site startswith 'ber_'",
    "tags.site startswith 'ber%'",
    "tags.site startswith 'Ber'",
    "tags.fw startswith '1.1'",
    "tags.role = 'it''s'",
    "tags.role startswith 'ün'",
    "has tags.site",
    "not has tags.site",
    "has tags.nope",
    "tags.nope = 'x'",
    "tags.nope != 'x'",
    "tags.site = 'berlin' and state = 'active'",
    "tags.site = 'berlin' and tags.floor = '2'",
    "tags.site = 'berlin' and tags.site = 'paris'",
    "tags.site = 'berlin' and id startswith 'dev-'",
    "tags.site = 'berlin' and not tags.floor in ('1', '2')",
    "tags.site = 'berlin' and (state = 'active' or has tags.role)",
    "tags.site = 'berlin' or state = 'retired'",
    "tags.site = 'berlin' or tags.site = 'paris'",
    "not (tags.site = 'berlin' or tags.fw startswith '1.')",
    "(state = 'active' or state = 'suspended') and not has tags.role",
    "name = 'Boiler' and state = 'active'",
    "state = 'active' and name != 'Boiler' and tags.site != 'berlin'",
    "not not state = 'active'",
    "not (id startswith 'dev-' and state = 'active')",
];

/// Single comparisons that [`random_filter`] combines.
const ATOMS: &[&str] = &[
    "state = 'active'",
    "state = 'registered'",
    "state != 'retired'",
    "state in ('suspended', 'decommissioned')",
    "id = 'dev-0007'",
    "id != 'axb-011'",
    "id in ('a_b-020', 'Dev-012', 'dev-0013')",
    "id startswith 'dev-001'",
    "id startswith 'a'",
    "name = 'Boiler'",
    "name != ''",
    "name startswith 'pump'",
    "name in ('it''s', 'boiler')",
    "tags.site = 'berlin'",
    "tags.site = 'paris'",
    "tags.site != 'ber_lin'",
    "tags.site in ('', 'Berlin')",
    "tags.site startswith 'b'",
    "tags.floor = '10'",
    "tags.floor != '1'",
    "tags.fw in ('1.2.0', '2.0')",
    "tags.fw startswith '1.'",
    "has tags.role",
    "has tags.floor",
    "tags.role = 'x'",
];

/// A device set that exercises every filter edge: ids with `_`, `.`, `:` and upper case; names and
/// tag values with `%`, `_`, quotes, non-ASCII and empty text; every state; tags present or not.
async fn build_fleet(store: &dyn Store) -> Vec<Device> {
    const NAMES: &[&str] =
        &["", "Boiler", "boiler", "Bo%ler", "it's", "Ünïcode", "Boiler 2", "pump_1", "pumpx1"];
    const SITES: &[&str] = &["berlin", "Berlin", "paris", "ber%", "ber_lin", "berxlin", ""];
    const FLOORS: &[&str] = &["1", "2", "10"];
    const FWS: &[&str] = &["1.2.0", "1.2.1", "1.10.0", "2.0"];
    const ROLES: &[&str] = &["it's", "ünï", "x"];
    let mut rng = Rng(42);
    let mut t = 10_000;
    for i in 0..130 {
        let dev_id = match i % 10 {
            0 => format!("a_b-{i:03}"),
            1 => format!("axb-{i:03}"),
            2 => format!("Dev-{i:03}"),
            3 => format!("x.y:{i:03}"),
            _ => format!("dev-{i:04}"),
        };
        let mut pairs = Vec::new();
        for (key, values) in [("site", SITES), ("floor", FLOORS), ("fw", FWS), ("role", ROLES)] {
            if rng.below(4) != 0 {
                pairs.push((key, rng.pick(values)));
            }
        }
        let state = LifecycleState::ALL[rng.below(5)];
        put_in_state(store, &id(&dev_id), state, &mut t).await;
        let patch = DevicePatch {
            name: Some(name(rng.pick(NAMES))),
            tags: Some(tags(&pairs)),
            ..DevicePatch::default()
        };
        t += 1;
        store.update_device(&id(&dev_id), &patch, None, &at(t)).await.unwrap();
    }
    let mut fleet = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_devices(&query(None, after.as_deref(), 50)).await.unwrap();
        fleet.extend(page.items.iter().cloned());
        after = fleet.last().map(|d| d.id.to_string());
        if !page.has_more {
            break;
        }
    }
    assert_eq!(fleet.len(), 130);
    fleet
}

/// A random `and`/`or`/`not` tree over `atoms`, at most `depth` deep.
fn random_filter(rng: &mut Rng, atoms: &[Filter], depth: usize) -> Filter {
    let choice = if depth == 0 { 4 } else { rng.below(6) };
    match choice {
        0 | 1 => {
            let n = 2 + rng.below(2);
            Filter::And((0..n).map(|_| random_filter(rng, atoms, depth - 1)).collect())
        }
        2 => {
            let n = 2 + rng.below(2);
            Filter::Or((0..n).map(|_| random_filter(rng, atoms, depth - 1)).collect())
        }
        3 => Filter::Not(Box::new(random_filter(rng, atoms, depth - 1))),
        _ => atoms[rng.below(atoms.len())].clone(),
    }
}

/// A small deterministic generator (an LCG), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Test time starts in 2026, so timestamps are realistic.
const BASE: i64 = 1_780_000_000_000;

fn actor() -> Actor {
    Actor { token_id: Some(token_id(0xab)), name: "conformance".to_owned() }
}

/// A mutation by the test actor at `BASE + ms`.
fn at(ms: i64) -> Mutation {
    Mutation { actor: actor(), at: Timestamp::from_millis(BASE + ms) }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("page sizes in the suite are positive")
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn name(s: &str) -> DisplayName {
    DisplayName::new(s).unwrap()
}

fn group_name(s: &str) -> GroupName {
    GroupName::new(s).unwrap()
}

fn token_id(n: u8) -> TokenId {
    TokenId::from_random([n; 8])
}

fn credential_id(n: u8) -> CredentialId {
    CredentialId::from_random([n; 8])
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    Tags::new(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).unwrap()
}

fn attributes(v: Value) -> Attributes {
    Attributes::new(v, 64 * 1024).unwrap()
}

/// A JSON object as an agent payload.
fn payload(v: Value) -> AgentPayload {
    let Value::Object(map) = v else { panic!("agent payloads are objects, not {v}") };
    AgentPayload::from_stored(map)
}

fn facts(dev_id: &str, v: Value, at: Timestamp) -> AgentReportUpdate {
    AgentReportUpdate::Facts { device_id: id(dev_id), facts: payload(v), at }
}

fn heartbeat(dev_id: &str, v: Value, at: Timestamp) -> AgentReportUpdate {
    AgentReportUpdate::Heartbeat { device_id: id(dev_id), health: payload(v), at }
}

/// The presence of `dev_id`: its last connection (when, from where, which protocol) and how the
/// connection before the current one, or the last one, ended (when, why).
fn presence(
    dev_id: &str,
    connected: bool,
    (connected_at, remote_addr, protocol): (Timestamp, &str, &str),
    last_end: Option<(Timestamp, &str)>,
) -> Presence {
    Presence {
        device_id: id(dev_id),
        connected,
        connected_at: Some(connected_at),
        disconnected_at: last_end.map(|(at, _)| at),
        remote_addr: Some(remote_addr.to_owned()),
        protocol: Some(protocol.to_owned()),
        last_disconnect_reason: last_end.map(|(_, why)| why.to_owned()),
    }
}

fn connect(dev_id: &str, at: Timestamp, remote_addr: &str, protocol: &str) -> PresenceEvent {
    PresenceEvent::Connect {
        device_id: id(dev_id),
        at,
        remote_addr: remote_addr.to_owned(),
        protocol: protocol.to_owned(),
    }
}

fn disconnect(dev_id: &str, at: Timestamp, reason: &str) -> PresenceEvent {
    PresenceEvent::Disconnect { device_id: id(dev_id), at, reason: reason.to_owned() }
}

fn parse(f: &str) -> Filter {
    Filter::parse(f).unwrap_or_else(|e| panic!("{f}: {e}"))
}

fn new_device(dev_id: &str, state: LifecycleState) -> NewDevice {
    NewDevice {
        id: id(dev_id),
        name: DisplayName::default(),
        tags: Tags::default(),
        attributes: Attributes::default(),
        state,
    }
}

fn import_row(dev_id: &str, patch: DevicePatch) -> ImportRow {
    ImportRow { line: 1, id: id(dev_id), patch }
}

fn static_group(n: &str) -> NewGroup {
    NewGroup { name: group_name(n), description: format!("group {n}"), kind: GroupKind::Static }
}

fn dynamic_group(n: &str, filter: Filter) -> NewGroup {
    NewGroup {
        name: group_name(n),
        description: format!("group {n}"),
        kind: GroupKind::Dynamic(filter),
    }
}

/// Token `n`, whose secret is `secret-<n>`.
fn new_token(n: u8, token_name: &str, role: Role, expires_at: Option<Timestamp>) -> NewToken {
    NewToken {
        id: token_id(n),
        name: token_name.to_owned(),
        role,
        hash: TokenHash::of_secret(&format!("secret-{n}")),
        expires_at,
    }
}

/// Credential `n` of device `dev_id`, whose secret is `device-secret-<n>`.
fn new_credential(n: u8, dev_id: &str, expires_at: Option<Timestamp>) -> NewDeviceCredential {
    NewDeviceCredential {
        id: credential_id(n),
        device_id: id(dev_id),
        hash: TokenHash::of_secret(&format!("device-secret-{n}")),
        expires_at,
    }
}

fn query(filter: Option<Filter>, after: Option<&str>, limit: u32) -> DeviceQuery {
    DeviceQuery { filter, after: after.map(id), limit: nz(limit) }
}

fn page_ids(page: &Page<Device>) -> Vec<String> {
    page.items.iter().map(|d| d.id.to_string()).collect()
}

fn outcome_kinds(outcomes: &[ImportOutcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|o| match o {
            ImportOutcome::Created => "created",
            ImportOutcome::Updated => "updated",
            ImportOutcome::Unchanged => "unchanged",
            ImportOutcome::Rejected(_) => "rejected",
        })
        .collect()
}

/// Creates device `dev_id` and moves it along legal transitions into `state`, advancing `t` per
/// write.
async fn put_in_state(
    store: &dyn Store,
    dev_id: &DeviceId,
    state: LifecycleState,
    t: &mut i64,
) -> Device {
    use LifecycleState::{Active, Decommissioned, Registered, Retired, Suspended};
    let (initial, path): (_, &[LifecycleState]) = match state {
        Registered => (Registered, &[]),
        Active => (Active, &[]),
        Suspended => (Active, &[Suspended]),
        Decommissioned => (Registered, &[Decommissioned]),
        Retired => (Registered, &[Decommissioned, Retired]),
    };
    *t += 1;
    let mut new = new_device(dev_id.as_str(), initial);
    new.name = name("x");
    let mut device = store.create_device(&new, &at(*t)).await.unwrap();
    for next in path {
        *t += 1;
        let patch = DevicePatch { state: Some(*next), ..DevicePatch::default() };
        device = store.update_device(dev_id, &patch, Some(device.version), &at(*t)).await.unwrap();
    }
    assert_eq!(device.state, state);
    device
}

/// Every id matching `filter` (all devices when `None`), through pages of `size`, checking each
/// page on the way.
async fn all_ids_paged(store: &dyn Store, filter: Option<&Filter>, size: u32) -> Vec<String> {
    collect_pages(size, move |after| {
        let q = query(filter.cloned(), after.as_deref(), size);
        async move { store.list_devices(&q).await }
    })
    .await
}

async fn all_ids(store: &dyn Store, filter: Option<&Filter>) -> Vec<String> {
    all_ids_paged(store, filter, 4).await
}

async fn ids_matching(store: &dyn Store, filter: &str) -> Vec<String> {
    all_ids(store, Some(&parse(filter))).await
}

async fn group_ids_paged(
    store: &dyn Store,
    group: &str,
    filter: Option<&Filter>,
    size: u32,
) -> Vec<String> {
    let g = &group_name(group);
    collect_pages(size, move |after| {
        let q = query(filter.cloned(), after.as_deref(), size);
        async move { store.group_devices(g, &q).await }
    })
    .await
}

async fn group_ids(store: &dyn Store, group: &str, filter: Option<&Filter>) -> Vec<String> {
    group_ids_paged(store, group, filter, 3).await
}

/// Follows cursors to the end, asserting the page contract: at most `size` items, ids strictly
/// ascending across pages, `has_more` false only on the last page, never an empty page before it.
async fn collect_pages<F, Fut>(size: u32, mut fetch: F) -> Vec<String>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = StoreResult<Page<Device>>>,
{
    let mut ids: Vec<String> = Vec::new();
    loop {
        let page = fetch(ids.last().cloned()).await.unwrap();
        assert!(page.items.len() <= size as usize, "page longer than its limit {size}");
        assert!(!page.has_more || page.items.len() == size as usize, "has_more on a short page");
        for d in &page.items {
            if let Some(last) = ids.last() {
                assert!(d.id.as_str() > last.as_str(), "{} after {last}: not in id order", d.id);
            }
            ids.push(d.id.to_string());
        }
        if !page.has_more {
            return ids;
        }
        assert!(ids.len() < 1_000_000, "pagination does not end");
    }
}

/// Audit records with `seq > after`, all of them.
async fn audit_since(store: &dyn Store, after: u64) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let from = out.last().map_or(after, |r| r.seq);
        let page = store.audit_records(from, nz(5)).await.unwrap();
        if page.is_empty() {
            return out;
        }
        assert!(page.len() <= 5, "audit page longer than its limit");
        out.extend(page);
    }
}

async fn last_seq(store: &dyn Store) -> u64 {
    audit_since(store, 0).await.last().map_or(0, |r| r.seq)
}

/// The whole chain verifies and runs from 1 without gaps.
async fn check_chain(store: &dyn Store) {
    let records = audit_since(store, 0).await;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "audit seq has a gap");
    }
    assert_eq!(verify_chain(&records), Ok(records.len() as u64));
}

/// Asserts one audit record's content; `before`/`after` are compared as JSON values.
#[track_caller]
fn check_record(
    r: &AuditRecord,
    m: &Mutation,
    action: &str,
    resource: &str,
    before: Option<Value>,
    after: Option<Value>,
) {
    let json = |text: &Option<String>| {
        text.as_deref().map(|t| {
            serde_json::from_str::<Value>(t)
                .unwrap_or_else(|e| panic!("record {}: {e}: {t}", r.seq))
        })
    };
    assert_eq!(
        (r.action.as_str(), r.resource.as_str(), r.at, r.actor.clone()),
        (action, resource, m.at, m.actor.to_string()),
        "record {}",
        r.seq
    );
    let expected = [("before", before), ("after", after)];
    for ((what, expected), stored) in expected.into_iter().zip([&r.before, &r.after]) {
        assert_eq!(json(stored), expected, "record {} ({action} {resource}) {what}", r.seq);
    }
}

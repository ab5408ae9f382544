//! Conformance cases of direct commands (the `commands` section of `Store`).

use std::sync::Arc;

use domain::{
    Command, CommandError, CommandId, CommandName, CommandOutcome, CommandState, IdempotencyKey,
    LifecycleState, NewCommand, Timestamp,
};
use serde_json::json;

use crate::conformance::{
    BASE, at, audit_since, check_chain, check_record, id, last_seq, new_device, nz,
};
use crate::{CommandProgress, CommandQuery, Page, Store, StoreError};

fn command_id(n: u8) -> CommandId {
    CommandId::generate(Timestamp::from_millis(BASE + i64::from(n)), [n; 4])
}

/// Command `n` for `dev_id`: `reboot` with payload `{"n": n}`, 30 s timeout, no delivery window.
fn new_command(n: u8, dev_id: &str) -> NewCommand {
    NewCommand {
        id: command_id(n),
        device_id: id(dev_id),
        name: CommandName::new("reboot").unwrap(),
        payload: json!({ "n": n }),
        timeout_secs: 30,
        expires_at: None,
        idempotency_key: None,
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(BASE + ms)
}

async fn devices(store: &dyn Store) {
    for d in ["d1", "d2"] {
        store.create_device(&new_device(d, LifecycleState::Active), &at(1)).await.unwrap();
    }
}

async fn create(store: &dyn Store, new: &NewCommand, ms: i64) -> Command {
    let created = store.create_command(new, Timestamp::from_millis(0), &at(ms)).await.unwrap();
    assert!(created.created);
    created.command
}

fn query(state: Option<CommandState>, before_seq: Option<u64>, limit: u32) -> CommandQuery {
    CommandQuery { state, before_seq, limit: nz(limit) }
}

fn ids(page: &Page<Command>) -> Vec<u64> {
    page.items.iter().map(|c| c.seq).collect()
}

/// Creating a command stores it queued with the next seq of its device, stamped by the mutation
/// and audited as `device.command.create` on the device; it reads back equal, lists newest first
/// with paging and a state filter, and is invisible under another device. An unknown device is
/// `NotFound` and leaves no trace.
pub async fn create_read_and_list_commands(store: Arc<dyn Store>) {
    devices(&*store).await;
    let seq = last_seq(&*store).await;
    let mut new = new_command(1, "d1");
    new.expires_at = Some(ts(60_000));
    new.idempotency_key = Some(IdempotencyKey::new("k-1").unwrap());
    let c1 = create(&*store, &new, 1_000).await;
    assert_eq!(
        c1,
        Command {
            id: command_id(1),
            device_id: id("d1"),
            name: CommandName::new("reboot").unwrap(),
            payload: json!({ "n": 1 }),
            state: CommandState::Queued,
            created_at: ts(1_000),
            created_by: at(1_000).actor.to_string(),
            timeout_secs: 30,
            expires_at: Some(ts(60_000)),
            delivered_at: None,
            completed_at: None,
            result: None,
            error: None,
            idempotency_key: Some(IdempotencyKey::new("k-1").unwrap()),
            seq: 1,
        }
    );
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &at(1_000),
        "device.command.create",
        "device/d1",
        None,
        Some(c1.audit_summary()),
    );
    let c2 = create(&*store, &new_command(2, "d1"), 2_000).await;
    let c3 = create(&*store, &new_command(3, "d1"), 3_000).await;
    let other = create(&*store, &new_command(4, "d2"), 3_000).await;
    assert_eq!((c2.seq, c3.seq, other.seq), (2, 3, 1));
    assert_eq!(store.command(&id("d1"), &c1.id).await.unwrap(), Some(c1.clone()));
    assert_eq!(store.command(&id("d2"), &c1.id).await.unwrap(), None);

    let page = store.list_commands(&id("d1"), &query(None, None, 2)).await.unwrap();
    assert_eq!((ids(&page), page.has_more), (vec![3, 2], true));
    let page = store.list_commands(&id("d1"), &query(None, Some(2), 2)).await.unwrap();
    assert_eq!((ids(&page), page.has_more), (vec![1], false));
    store.advance_command(&id("d1"), &c2.id, &CommandProgress::Delivered, ts(4_000)).await.unwrap();
    let page = store
        .list_commands(&id("d1"), &query(Some(CommandState::Delivered), None, 10))
        .await
        .unwrap();
    assert_eq!(ids(&page), vec![2]);
    let page =
        store.list_commands(&id("d1"), &query(Some(CommandState::Queued), None, 10)).await.unwrap();
    assert_eq!(ids(&page), vec![3, 1]);

    let before = last_seq(&*store).await;
    let err = store
        .create_command(&new_command(9, "nope"), Timestamp::from_millis(0), &at(5_000))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "device", .. }), "{err:?}");
    assert_eq!(last_seq(&*store).await, before);
    check_chain(&*store).await;
}

/// A second creation with the same device and idempotency key inside the window returns the first
/// command (`created: false`, no audit record); with another payload it is a `Conflict`; the same
/// key on another device, or older than the window, makes a new command.
pub async fn create_command_is_idempotent(store: Arc<dyn Store>) {
    devices(&*store).await;
    let key = IdempotencyKey::new("retry-me").unwrap();
    let mut new = new_command(1, "d1");
    new.idempotency_key = Some(key.clone());
    let first = create(&*store, &new, 1_000).await;
    let seq = last_seq(&*store).await;

    let mut retry = new_command(2, "d1");
    retry.idempotency_key = Some(key.clone());
    retry.payload = first.payload.clone();
    let again = store.create_command(&retry, ts(0), &at(2_000)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.command, first);
    assert_eq!(last_seq(&*store).await, seq);

    retry.payload = json!({ "other": true });
    let err = store.create_command(&retry, ts(0), &at(2_000)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(last_seq(&*store).await, seq);

    let mut elsewhere = new_command(3, "d2");
    elsewhere.idempotency_key = Some(key.clone());
    assert!(store.create_command(&elsewhere, ts(0), &at(3_000)).await.unwrap().created);

    // The window starts after the first command: the key is free again.
    let mut later = new_command(4, "d1");
    later.idempotency_key = Some(key);
    let fresh = store.create_command(&later, ts(1_001), &at(4_000)).await.unwrap();
    assert!(fresh.created);
    assert_eq!(fresh.command.seq, 2);
    check_chain(&*store).await;
}

/// Observed changes follow the state rules with an expected-state check and write no audit
/// record: delivery, an answer (also straight from `queued`), a time-out; a late answer to an
/// ended command and a second delivery change nothing. Canceling is audited and refused
/// (`Conflict`) once the command has ended.
pub async fn command_transitions(store: Arc<dyn Store>) {
    devices(&*store).await;
    let d1 = id("d1");
    let c1 = create(&*store, &new_command(1, "d1"), 1_000).await;
    let c2 = create(&*store, &new_command(2, "d1"), 1_000).await;
    let c3 = create(&*store, &new_command(3, "d1"), 1_000).await;
    let seq = last_seq(&*store).await;

    let delivered =
        store.advance_command(&d1, &c1.id, &CommandProgress::Delivered, ts(2_000)).await.unwrap();
    assert!(delivered.changed);
    assert_eq!(delivered.command.state, CommandState::Delivered);
    assert_eq!(delivered.command.delivered_at, Some(ts(2_000)));
    let twice =
        store.advance_command(&d1, &c1.id, &CommandProgress::Delivered, ts(2_500)).await.unwrap();
    assert!(!twice.changed);
    assert_eq!(twice.command, delivered.command);

    let outcome = CommandOutcome {
        state: CommandState::Failed,
        result: Some(json!({ "disk": "full" })),
        error: Some(CommandError { code: "failed".to_owned(), message: "no space".to_owned() }),
    };
    let answered = store
        .advance_command(&d1, &c1.id, &CommandProgress::Answered(outcome.clone()), ts(3_000))
        .await
        .unwrap();
    assert!(answered.changed);
    assert_eq!(answered.command.state, CommandState::Failed);
    assert_eq!(answered.command.completed_at, Some(ts(3_000)));
    assert_eq!(answered.command.result, outcome.result);
    assert_eq!(answered.command.error, outcome.error);
    assert_eq!(store.command(&d1, &c1.id).await.unwrap(), Some(answered.command.clone()));

    // An answer may come before the delivery was recorded.
    let early = CommandOutcome { state: CommandState::Succeeded, result: None, error: None };
    let answered = store
        .advance_command(&d1, &c2.id, &CommandProgress::Answered(early.clone()), ts(3_000))
        .await
        .unwrap();
    assert_eq!((answered.changed, answered.command.state), (true, CommandState::Succeeded));

    // Delivered, then timed out: a late answer is ignored.
    store.advance_command(&d1, &c3.id, &CommandProgress::Delivered, ts(2_000)).await.unwrap();
    let timed_out =
        store.advance_command(&d1, &c3.id, &CommandProgress::TimedOut, ts(40_000)).await.unwrap();
    assert_eq!(timed_out.command.state, CommandState::TimedOut);
    assert_eq!(timed_out.command.error.as_ref().map(|e| e.code.as_str()), Some("timed_out"));
    let late = store
        .advance_command(&d1, &c3.id, &CommandProgress::Answered(early), ts(41_000))
        .await
        .unwrap();
    assert!(!late.changed);
    assert_eq!(late.command, timed_out.command);
    assert_eq!(last_seq(&*store).await, seq, "observed changes are not audited");

    // Cancel: audited; refused once ended.
    let c4 = create(&*store, &new_command(4, "d1"), 5_000).await;
    let seq = last_seq(&*store).await;
    let canceled = store.cancel_command(&d1, &c4.id, &at(6_000)).await.unwrap();
    assert_eq!(canceled.state, CommandState::Canceled);
    assert_eq!(canceled.completed_at, Some(ts(6_000)));
    let records = audit_since(&*store, seq).await;
    assert_eq!(records.len(), 1);
    check_record(
        &records[0],
        &at(6_000),
        "device.command.cancel",
        "device/d1",
        Some(c4.audit_summary()),
        Some(canceled.audit_summary()),
    );
    let seq = last_seq(&*store).await;
    for ended in [&c1.id, &c4.id] {
        let err = store.cancel_command(&d1, ended, &at(7_000)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    }
    let err = store.cancel_command(&id("d2"), &c4.id, &at(7_000)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "command", .. }), "{err:?}");
    let err = store
        .advance_command(&id("d2"), &c4.id, &CommandProgress::Delivered, ts(7_000))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: "command", .. }), "{err:?}");
    assert_eq!(last_seq(&*store).await, seq);
    check_chain(&*store).await;
}

/// Pending commands are the queued ones whose delivery window is open and the delivered ones,
/// oldest first; the sweep expires queued commands past their window (`expires_at`, or creation
/// plus the timeout without one) and times out delivered ones past their timeout, returning what
/// it changed, once.
pub async fn pending_and_expired_commands(store: Arc<dyn Store>) {
    devices(&*store).await;
    let d1 = id("d1");
    // c1: window until 10 s; c2: no window (30 s timeout from 1 s); c3: window until 100 s.
    let mut n1 = new_command(1, "d1");
    n1.expires_at = Some(ts(10_000));
    let c1 = create(&*store, &n1, 1_000).await;
    let c2 = create(&*store, &new_command(2, "d1"), 1_000).await;
    let mut n3 = new_command(3, "d1");
    n3.expires_at = Some(ts(100_000));
    let c3 = create(&*store, &n3, 1_000).await;
    create(&*store, &new_command(4, "d2"), 1_000).await;
    let pending = |now: i64| {
        let store = Arc::clone(&store);
        let d1 = d1.clone();
        async move {
            store
                .pending_commands(&d1, ts(now), nz(100))
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(pending(5_000).await, vec![1, 2, 3]);
    assert_eq!(pending(20_000).await, vec![2, 3]);
    assert_eq!(pending(40_000).await, vec![3]);
    store.advance_command(&d1, &c3.id, &CommandProgress::Delivered, ts(50_000)).await.unwrap();
    // Delivered commands stay pending until they end (a device on a clean session asks again).
    assert_eq!(pending(200_000).await, vec![3]);

    let seq = last_seq(&*store).await;
    let swept = store.expire_commands(ts(20_000), nz(100)).await.unwrap();
    assert_eq!(
        swept.iter().map(|c| (c.seq, c.state)).collect::<Vec<_>>(),
        vec![(1, CommandState::Expired)]
    );
    assert_eq!(swept[0].id, c1.id);
    assert_eq!(swept[0].completed_at, Some(ts(20_000)));
    let swept = store.expire_commands(ts(100_000), nz(100)).await.unwrap();
    let mut states: Vec<_> = swept.iter().map(|c| (c.id.clone(), c.state)).collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (c2.id.clone(), CommandState::Expired),
        (c3.id.clone(), CommandState::TimedOut),
        (command_id(4), CommandState::Expired),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(states, expected);
    assert!(store.expire_commands(ts(200_000), nz(100)).await.unwrap().is_empty());
    assert_eq!(
        store.command(&d1, &c3.id).await.unwrap().map(|c| c.state),
        Some(CommandState::TimedOut)
    );
    assert_eq!(last_seq(&*store).await, seq, "the sweep is not audited");
}

/// Pruning deletes ended commands completed before the bound (never pending ones); deleting a
/// device deletes its commands.
pub async fn prune_and_cascade_commands(store: Arc<dyn Store>) {
    devices(&*store).await;
    let d1 = id("d1");
    let c1 = create(&*store, &new_command(1, "d1"), 1_000).await;
    let c2 = create(&*store, &new_command(2, "d1"), 1_000).await;
    let c3 = create(&*store, &new_command(3, "d1"), 1_000).await;
    store.cancel_command(&d1, &c1.id, &at(2_000)).await.unwrap();
    store.cancel_command(&d1, &c2.id, &at(9_000)).await.unwrap();
    assert_eq!(store.prune_commands(ts(5_000), nz(100)).await.unwrap(), 1);
    assert_eq!(store.command(&d1, &c1.id).await.unwrap(), None);
    assert!(store.command(&d1, &c2.id).await.unwrap().is_some());
    assert_eq!(store.prune_commands(ts(1_000_000), nz(100)).await.unwrap(), 1);
    assert!(store.command(&d1, &c3.id).await.unwrap().is_some(), "queued commands stay");

    create(&*store, &new_command(4, "d2"), 1_000).await;
    store.delete_device(&id("d2"), None, &at(10_000)).await.unwrap();
    assert_eq!(store.command(&id("d2"), &command_id(4)).await.unwrap(), None);
    check_chain(&*store).await;
}

//! The broker task's side of persistence (see the `persist` module): a broker built from a stored
//! [`Snapshot`], the turn of commands whose changes commit together, the hand-over of each turn's
//! changes to the session writer, and the connections' reports of messages they are finished with.

use std::collections::HashSet;
use std::sync::Arc;

use mqtt_codec::ClientId;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::BrokerConfig;
use crate::broker::{Broker, BrokerHandle, SessionEntry};
use crate::counters::{self, DropReason};
use crate::persist::{
    FinishedMessages, PersistOp, Recorder, SessionStore, SessionWriter, Snapshot, restore_outbound,
    restore_retained, unix_millis_now,
};
use crate::retained::RetainOutcome;
use crate::topic_tree::SubOptions;

/// Most commands the broker handles in one turn, whose changes go to the writer as one batch.
const TURN_COMMANDS: usize = 256;

impl Broker {
    /// A broker that persists sessions and retained messages through `store`, starting from
    /// `snapshot` (what [`SessionStore::load`] returned), a handle to it, and the writer task that
    /// commits its changes: spawn [`Broker::run`] and [`SessionWriter::run`] side by side.
    ///
    /// Restored sessions are offline. Each expires after its expiry interval counted from its
    /// stored disconnection time, or from now if a connection held it when the server stopped;
    /// sessions already expired are deleted. Their subscriptions are back in the trie and their
    /// messages (queued or in flight when the server stopped) back in their queues, in order, to be
    /// sent with new packet identifiers when the client resumes the session. Expired messages and
    /// retained messages are dropped and deleted.
    #[must_use]
    pub fn with_store(
        config: BrokerConfig,
        shutdown: CancellationToken,
        store: Arc<dyn SessionStore>,
        snapshot: Snapshot,
    ) -> (Self, BrokerHandle, SessionWriter) {
        let capacity = config.session_store_queue_capacity.get();
        let (batches_tx, batches_rx) = mpsc::channel(capacity);
        let (finished_tx, finished_rx) = mpsc::channel(capacity);
        let (mut broker, handle) = Self::build(config, shutdown.clone(), Some(finished_tx));
        let max_seq = snapshot
            .sessions
            .iter()
            .flat_map(|session| session.messages.iter().map(|m| m.seq))
            .max()
            .unwrap_or(0);
        let mut recorder = Recorder::new(batches_tx, max_seq.saturating_add(1));
        broker.restore(snapshot, &mut recorder);
        broker.persist = Some(recorder);
        let writer = SessionWriter::new(store, batches_rx, finished_rx, shutdown, max_seq);
        (broker, handle, writer)
    }

    /// Puts the sessions and retained messages of `snapshot` back, recording in `persist` the
    /// deletions of what has expired meanwhile.
    fn restore(&mut self, snapshot: Snapshot, persist: &mut Recorder) {
        let now = Instant::now();
        let now_ms = unix_millis_now();
        let max_queued = self.config.max_queued_messages;
        let (mut sessions, mut messages) = (0_usize, 0_usize);
        for stored in snapshot.sessions {
            let client_id = stored.client_id;
            let elapsed = stored.disconnected_at.map_or(0, |at| now_ms.saturating_sub(at));
            let left = (u64::from(stored.expiry) * 1000).saturating_sub(elapsed);
            if left == 0 {
                persist.record(PersistOp::DeleteSession { client_id });
                continue;
            }
            if self.by_client.contains_key(&client_id) {
                // A store never holds one client id twice; if it did, the first one wins.
                continue;
            }
            if stored.disconnected_at.is_none() {
                // A connection held it when the server stopped: its expiry counts from now.
                persist.record(PersistOp::UpsertSession {
                    client_id: client_id.clone(),
                    expiry: stored.expiry,
                    disconnected_at: Some(now_ms),
                });
            }
            persist.loaded(client_id.clone());
            let id = self.allocate_id();
            let mut entry = SessionEntry {
                client_id: client_id.clone(),
                subscriptions: HashSet::new(),
                link: None,
                state: None,
                expiry: stored.expiry,
                expires_at: Some(now + Duration::from_millis(left)),
                will: None,
                waiting: None,
            };
            for subscription in stored.subscriptions {
                let options = SubOptions {
                    qos: subscription.qos,
                    no_local: subscription.no_local,
                    retain_as_published: subscription.retain_as_published,
                    id: subscription.subscription_id,
                };
                self.tree.subscribe(&subscription.filter, id, options);
                entry.subscriptions.insert(subscription.filter);
            }
            let mut queued = stored.messages;
            queued.sort_by_key(|m| m.seq);
            for message in queued {
                let (seq, qos) = (message.seq, message.message.qos);
                match restore_outbound(message, now, now_ms) {
                    Some(out)
                        if entry.state.as_ref().map_or(0, |state| state.queue.len())
                            < max_queued =>
                    {
                        entry.state.get_or_insert_default().queue.push_back(out);
                        messages += 1;
                    }
                    Some(_) => {
                        counters::dropped(DropReason::QueueFull, qos);
                        persist.finished(&client_id, [seq]);
                    }
                    None => {
                        counters::dropped(DropReason::Expired, qos);
                        persist.finished(&client_id, [seq]);
                    }
                }
            }
            if let Some(at) = entry.expires_at {
                self.timers.insert((at, id));
            }
            self.by_client.insert(client_id, id);
            self.sessions.insert(id, Box::new(entry));
            sessions += 1;
        }
        let mut retained = 0_usize;
        for stored in snapshot.retained {
            let topic = stored.topic.clone();
            let Some((message, expires_at)) = restore_retained(stored, now, now_ms) else {
                persist.record(PersistOp::DeleteRetained { topic });
                continue;
            };
            if self.retained.set(message, expires_at) == RetainOutcome::Full {
                counters::retained_refused();
                tracing::warn!(%topic, "retained store full, stored message not restored");
            } else {
                retained += 1;
            }
        }
        tracing::info!(
            sessions,
            messages,
            retained,
            "restored MQTT sessions and retained messages"
        );
    }

    /// Where the ops of the command being handled start, with a session store.
    pub(super) fn persist_mark(&self) -> Option<usize> {
        self.persist.as_ref().map(Recorder::mark)
    }

    /// Runs `complete` once what was recorded since `mark` has committed; at once when nothing was
    /// (or there is no session store).
    pub(super) fn after_commit(
        &mut self,
        mark: Option<usize>,
        complete: impl FnOnce() + Send + 'static,
    ) {
        match (&mut self.persist, mark) {
            (Some(persist), Some(mark)) => persist.after_commit(mark, complete),
            _ => complete(),
        }
    }

    /// With a session store, handles the commands already waiting (up to [`TURN_COMMANDS`] in the
    /// turn), so that what they record is committed in one batch.
    pub(super) fn handle_waiting(&mut self) {
        if self.persist.is_none() {
            return;
        }
        for _ in 1..TURN_COMMANDS {
            match self.commands.try_recv() {
                Ok(command) => self.handle(command),
                Err(_) => break,
            }
        }
    }

    /// Hands what this turn recorded to the session writer; see [`Recorder::flush`].
    pub(super) async fn flush_persist(&mut self) {
        if let Some(persist) = &mut self.persist {
            persist.flush(&self.shutdown).await;
        }
    }
}

impl BrokerHandle {
    /// Reports to the session writer that session `client_id` is finished with the persisted
    /// messages `seqs` (emptied); does nothing without a session store.
    ///
    /// Waits while the writer's channel is full: the connection then stops reading its socket, the
    /// same back-pressure as a publisher whose acknowledgements wait for a commit. When the writer
    /// has stopped (shutdown) the report is lost and the messages are sent again after a restart.
    pub(crate) async fn report_finished(&self, client_id: &ClientId, seqs: &mut Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let Some(finished) = &self.shared.finished else {
            seqs.clear();
            return;
        };
        let report = FinishedMessages { client_id: client_id.clone(), seqs: std::mem::take(seqs) };
        if finished.send(report).await.is_err() {
            tracing::debug!("session writer stopped; acknowledgements are not persisted");
        }
    }
}

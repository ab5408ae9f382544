//! Persistence of sessions and retained messages: the port the broker writes through
//! ([`SessionStore`]), the plain types it reads at startup ([`Snapshot`]) and writes afterwards
//! ([`PersistOp`]), and the writer task ([`SessionWriter`]) that commits them in batches.
//!
//! The broker does not know which database sits behind the port: the server adapts its `Store` to
//! [`SessionStore`]. Tests use an in-memory fake.
//!
//! # What is persisted
//!
//! Only what a restart must not lose: sessions whose Session Expiry Interval is above 0 (v3.1.1:
//! Clean Session 0), their subscriptions, the QoS 1 and 2 messages routed to them (queued or in
//! flight) until the client finishes acknowledging them, and retained messages. Sessions that end
//! with their connection cost nothing: nothing of them is written.
//!
//! # The pipeline
//!
//! 1. The broker task records the [`PersistOp`]s that handling a command produces (a `Recorder`),
//!    together with the completions that must wait for them: the `accepted` of a PUBLISH (→ PUBACK /
//!    PUBREC), the reply to a SUBSCRIBE or UNSUBSCRIBE (→ SUBACK / UNSUBACK), the return of
//!    [`BrokerHandle::publish`](crate::BrokerHandle::publish) for a retained message. A command that
//!    produced no op completes at once, as without persistence.
//! 2. After each turn of its loop (a command and whatever further commands were already waiting), the
//!    broker hands the ops and completions to the writer as one batch, over a channel of
//!    [`BrokerConfig::session_store_queue_capacity`](crate::BrokerConfig::session_store_queue_capacity)
//!    batches. The broker never awaits the database; it awaits room in that channel, which is the
//!    intended back-pressure: when the database falls behind, the broker stops taking commands,
//!    connections stop reading their sockets, and publishers slow down.
//! 3. Connections report the messages their clients finished with (PUBACK for QoS 1, PUBCOMP or a
//!    PUBREC with an error for QoS 2, and messages dropped by policy: expired, too large for the
//!    client, queue full) straight to the writer, as [`PersistOp::AckMessage`]s.
//! 4. The [`SessionWriter`] drains everything available into one batch, calls
//!    [`SessionStore::apply`] once (one transaction: group commit), then fires the completions of
//!    that batch. A message acknowledged before its enqueue was written is never written at all.
//!
//! When `apply` fails, the writer logs the error, counts it (`mqtt_session_store_failures_total`) and
//! retries the same batch with back-off until it commits; nothing behind it is written first, and no
//! completion of an uncommitted op ever fires: publishers then wait for their PUBACK and, after a
//! reconnect, resend (QoS 1 and 2 allow it). At shutdown the writer stops retrying.
//!
//! # Known limits
//!
//! - Exactly-once (QoS 2) does not survive a crash: packet identifiers of inbound QoS 2 messages
//!   awaiting PUBREL and of outbound messages in flight are not persisted. After a crash a message
//!   in flight is sent again as a new message (new packet identifier, DUP 0), and a QoS 2 PUBLISH the
//!   client resends is routed again: a subscriber may get such a message twice.
//! - Delayed wills are not persisted.
//! - Messages are delivered to online subscribers before their publisher's batch commits: after a
//!   crash a publisher without a PUBACK resends, so a subscriber may get a QoS 1 message twice, as
//!   QoS 1 allows.
//! - Single node: the store holds one broker's sessions.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::num::{NonZeroU32, NonZeroU64};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{ClientId, Properties, QoS, TopicFilter, TopicName};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::Message;
use crate::counters;
use crate::retained::RetainOutcome;
use crate::session::Outbound;
use crate::topic_tree::SubOptions;

/// A boxed future, as [`SessionStore`]'s methods return (the trait is used as `dyn SessionStore`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the broker keeps what must survive a restart. The server implements it on its `Store`.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// Everything stored: called once at startup, before the broker runs.
    ///
    /// # Errors
    ///
    /// When the store cannot be read; the server does not start.
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, PersistError>>;

    /// Applies `ops` in order, in one transaction: all of them or none.
    ///
    /// Every op must be idempotent and an op naming a session that does not exist (a subscription, a
    /// message) does nothing, so that a batch retried after a failure whose outcome was unknown
    /// commits without error.
    ///
    /// # Errors
    ///
    /// When the transaction did not commit; the writer retries the same ops.
    fn apply<'a>(&'a self, ops: &'a [PersistOp]) -> BoxFuture<'a, Result<(), PersistError>>;
}

/// Why a [`SessionStore`] call failed.
#[derive(Debug, thiserror::Error)]
#[error("session store failed: {0}")]
pub struct PersistError(Box<dyn StdError + Send + Sync>);

impl PersistError {
    /// Wraps the store's own error.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

/// What a [`SessionStore`] holds, as loaded at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The persistent sessions.
    pub sessions: Vec<StoredSession>,
    /// The retained messages, one per topic.
    pub retained: Vec<StoredMessage>,
}

/// A persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Its client identifier.
    pub client_id: ClientId,
    /// Its Session Expiry Interval, in seconds (above 0).
    pub expiry: u32,
    /// When its last connection ended, in milliseconds since the Unix epoch; `None` while a
    /// connection held it (or held it when the server stopped).
    pub disconnected_at: Option<u64>,
    /// Its subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// The QoS 1 and 2 messages routed to it and not yet acknowledged, by ascending `seq`.
    pub messages: Vec<QueuedMessage>,
}

/// A subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The filter, with its `$share/{group}/` prefix if any.
    pub filter: TopicFilter,
    /// The granted QoS.
    pub qos: QoS,
    /// No Local (v5).
    pub no_local: bool,
    /// Retain As Published (v5).
    pub retain_as_published: bool,
    /// The Subscription Identifier (v5), if the SUBSCRIBE had one.
    pub subscription_id: Option<NonZeroU32>,
}

/// A message waiting for a persistent session, queued or in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Its sequence number: assigned by the broker, increasing, unique among all sessions. The
    /// session's messages are sent in this order.
    pub seq: u64,
    /// The message as it is to be sent to this session.
    pub message: StoredMessage,
}

/// A message as stored: queued for one session, or retained for its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its topic.
    pub topic: TopicName,
    /// Its payload.
    pub payload: Bytes,
    /// For a queued message the QoS to deliver it with; for a retained one its published QoS.
    pub qos: QoS,
    /// For a queued message the RETAIN flag to send; for a retained one always `true`.
    pub retain: bool,
    /// Its v5 properties (those forwarded with the message, and for a queued message the
    /// Subscription Identifiers of the subscriptions it matched), as written by
    /// [`Properties::encode_publish`]: a v5 PUBLISH property list with its length prefix. Opaque to
    /// the store.
    pub properties: Bytes,
    /// When it expires, in milliseconds since the Unix epoch (v5 Message Expiry Interval).
    pub expires_at: Option<u64>,
}

/// One change to a [`SessionStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistOp {
    /// Creates the session or updates its expiry and disconnection time, keeping its subscriptions
    /// and messages.
    UpsertSession {
        /// The session's client identifier.
        client_id: ClientId,
        /// Its Session Expiry Interval, in seconds.
        expiry: u32,
        /// When its connection ended (Unix milliseconds); `None` while connected.
        disconnected_at: Option<u64>,
    },
    /// Deletes the session with its subscriptions and messages.
    DeleteSession {
        /// The session's client identifier.
        client_id: ClientId,
    },
    /// Adds or replaces a subscription (same filter) of an existing session.
    PutSubscription {
        /// The session's client identifier.
        client_id: ClientId,
        /// The subscription.
        subscription: StoredSubscription,
    },
    /// Deletes a subscription.
    DeleteSubscription {
        /// The session's client identifier.
        client_id: ClientId,
        /// The subscription's filter.
        filter: TopicFilter,
    },
    /// Adds a message for an existing session (kept as it was if `seq` is already there).
    EnqueueMessage {
        /// The session's client identifier.
        client_id: ClientId,
        /// The message's sequence number.
        seq: u64,
        /// The message.
        message: StoredMessage,
    },
    /// Deletes a message: the client finished acknowledging it, or it was dropped.
    AckMessage {
        /// The session's client identifier.
        client_id: ClientId,
        /// The message's sequence number.
        seq: u64,
    },
    /// Sets the retained message of its topic, replacing the previous one.
    PutRetained {
        /// The message (`retain` is `true`).
        message: StoredMessage,
    },
    /// Deletes the retained message of a topic.
    DeleteRetained {
        /// The topic.
        topic: TopicName,
    },
}

/// The task that commits what the broker and its connections record; see the module documentation.
///
/// [`Broker::with_store`](crate::Broker::with_store) returns it; spawn [`SessionWriter::run`] next to
/// the broker task, in the same task tracker.
pub struct SessionWriter {
    store: Arc<dyn SessionStore>,
    /// Batches from the broker task. Closed when the broker task ends: the writer then commits what
    /// is left and stops.
    batches: mpsc::Receiver<Batch>,
    /// Messages connections are finished with.
    finished: mpsc::Receiver<FinishedMessages>,
    /// The broker's shutdown: the writer stops retrying a failing batch once it fires.
    shutdown: CancellationToken,
    /// The highest sequence number of a message enqueued so far (loaded ones included). A message
    /// reported finished with a higher number was reported before its enqueue arrived.
    max_enqueued: u64,
    /// Messages reported finished before their enqueue arrived: the enqueue is then skipped.
    /// Bounded by what is in transit between the broker task and the writer.
    early: HashSet<u64>,
}

impl fmt::Debug for SessionWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionWriter")
            .field("store", &self.store)
            .field("max_enqueued", &self.max_enqueued)
            .finish_non_exhaustive()
    }
}

/// Most ops committed in one transaction; more wait for the next one.
const MAX_BATCH_OPS: usize = 4096;
/// The first pause before retrying a failed commit; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The longest pause between retries of a failed commit.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

impl SessionWriter {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        batches: mpsc::Receiver<Batch>,
        finished: mpsc::Receiver<FinishedMessages>,
        shutdown: CancellationToken,
        max_enqueued: u64,
    ) -> Self {
        Self { store, batches, finished, shutdown, max_enqueued, early: HashSet::new() }
    }

    /// Commits batches until the broker task has ended, then commits what is left and returns.
    pub async fn run(mut self) {
        let mut pending = Pending::default();
        loop {
            // Cancel safety: `recv` loses nothing when the other branch wins.
            let open = tokio::select! {
                batch = self.batches.recv() => match batch {
                    Some(batch) => {
                        self.add_batch(&mut pending, batch);
                        true
                    }
                    None => false,
                },
                Some(finished) = self.finished.recv() => {
                    self.add_finished(&mut pending, finished);
                    true
                }
            };
            while pending.ops.len() < MAX_BATCH_OPS {
                if let Ok(batch) = self.batches.try_recv() {
                    self.add_batch(&mut pending, batch);
                } else if let Ok(finished) = self.finished.try_recv() {
                    self.add_finished(&mut pending, finished);
                } else {
                    break;
                }
            }
            if !self.commit(&mut pending).await {
                return;
            }
            if !open {
                break;
            }
        }
        // The broker task has ended; connections may still report what their clients acknowledged.
        while let Ok(finished) = self.finished.try_recv() {
            self.add_finished(&mut pending, finished);
        }
        self.commit(&mut pending).await;
        tracing::debug!("session writer stopped");
    }

    fn add_batch(&mut self, pending: &mut Pending, batch: Batch) {
        for op in batch.ops {
            self.add_op(pending, op);
        }
        pending.completions.extend(batch.completions);
    }

    fn add_finished(&mut self, pending: &mut Pending, finished: FinishedMessages) {
        for seq in finished.seqs {
            self.add_op(
                pending,
                PersistOp::AckMessage { client_id: finished.client_id.clone(), seq },
            );
        }
    }

    fn add_op(&mut self, pending: &mut Pending, op: PersistOp) {
        match op {
            PersistOp::EnqueueMessage { seq, .. } => {
                self.max_enqueued = self.max_enqueued.max(seq);
                if self.early.remove(&seq) {
                    return;
                }
                pending.enqueued.insert(seq, pending.ops.len());
                pending.ops.push(Some(op));
            }
            PersistOp::AckMessage { seq, .. } => {
                if let Some(index) = pending.enqueued.remove(&seq) {
                    // Finished before it was written: it never needs to be.
                    if let Some(slot) = pending.ops.get_mut(index) {
                        *slot = None;
                    }
                } else if seq <= self.max_enqueued {
                    pending.ops.push(Some(op));
                } else {
                    self.early.insert(seq);
                }
            }
            op => pending.ops.push(Some(op)),
        }
    }

    /// Commits `pending` (retrying until it commits) and fires its completions. Returns `false` when
    /// it gave up at shutdown.
    async fn commit(&mut self, pending: &mut Pending) -> bool {
        let ops: Vec<PersistOp> = pending.ops.drain(..).flatten().collect();
        pending.enqueued.clear();
        let completions = std::mem::take(&mut pending.completions);
        let mut delay = FIRST_RETRY_DELAY;
        while !ops.is_empty() {
            match self.store.apply(&ops).await {
                Ok(()) => {
                    counters::session_store_committed(ops.len());
                    break;
                }
                Err(error) => {
                    counters::session_store_failed();
                    if self.shutdown.is_cancelled() {
                        tracing::error!(
                            error = %error,
                            ops = ops.len(),
                            "failed to commit MQTT session changes at shutdown; they are lost"
                        );
                        return false;
                    }
                    tracing::error!(
                        error = %error,
                        ops = ops.len(),
                        retry_in = ?delay,
                        "failed to commit MQTT session changes; retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
        for complete in completions {
            complete();
        }
        true
    }
}

/// Ops and completions gathered for the next commit.
#[derive(Default)]
struct Pending {
    /// In order; `None` where an enqueue was cancelled by its acknowledgement.
    ops: Vec<Option<PersistOp>>,
    /// Where each enqueue of `ops` is, by sequence number.
    enqueued: HashMap<u64, usize>,
    completions: Vec<Completion>,
}

/// Something to do once the batch it belongs to has committed: complete an acknowledgement.
pub(crate) type Completion = Box<dyn FnOnce() + Send>;

/// What the broker task hands the writer after a turn of its loop.
pub(crate) struct Batch {
    ops: Vec<PersistOp>,
    completions: Vec<Completion>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("ops", &self.ops.len())
            .field("completions", &self.completions.len())
            .finish()
    }
}

/// Messages of one session that its connection is finished with, by sequence number.
#[derive(Debug)]
pub(crate) struct FinishedMessages {
    pub(crate) client_id: ClientId,
    pub(crate) seqs: Vec<u64>,
}

/// The broker task's side of the pipeline: the ops and completions of the current turn, the next
/// sequence number, and which sessions are in the store.
pub(crate) struct Recorder {
    batches: mpsc::Sender<Batch>,
    ops: Vec<PersistOp>,
    completions: Vec<Completion>,
    next_seq: u64,
    /// Client identifiers of the sessions in the store (or about to be, once the ops are committed).
    stored: HashSet<ClientId>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("ops", &self.ops.len())
            .field("completions", &self.completions.len())
            .field("next_seq", &self.next_seq)
            .field("stored", &self.stored.len())
            .finish()
    }
}

impl Recorder {
    /// A recorder handing batches to `batches`, numbering messages from `next_seq` (at least 1).
    pub(crate) fn new(batches: mpsc::Sender<Batch>, next_seq: u64) -> Self {
        Self {
            batches,
            ops: Vec::new(),
            completions: Vec::new(),
            next_seq: next_seq.max(1),
            stored: HashSet::new(),
        }
    }

    /// How many ops this turn has recorded so far; see [`Recorder::after_commit`].
    pub(crate) fn mark(&self) -> usize {
        self.ops.len()
    }

    /// Runs `complete` once the ops recorded since `mark` have committed, or now if there are none.
    pub(crate) fn after_commit(&mut self, mark: usize, complete: impl FnOnce() + Send + 'static) {
        if self.ops.len() > mark {
            self.completions.push(Box::new(complete));
        } else {
            complete();
        }
    }

    pub(crate) fn record(&mut self, op: PersistOp) {
        self.ops.push(op);
    }

    /// Marks a loaded session as stored.
    pub(crate) fn loaded(&mut self, client_id: ClientId) {
        self.stored.insert(client_id);
    }

    /// A connection took session `client_id`, with `expiry`, starting clean or not.
    pub(crate) fn session_attached(
        &mut self,
        client_id: &ClientId,
        clean_start: bool,
        expiry: u32,
    ) {
        if (clean_start || expiry == 0) && self.stored.remove(client_id) {
            self.record(PersistOp::DeleteSession { client_id: client_id.clone() });
        }
        if expiry > 0 {
            self.stored.insert(client_id.clone());
            self.record(PersistOp::UpsertSession {
                client_id: client_id.clone(),
                expiry,
                disconnected_at: None,
            });
        }
    }

    /// The connection of session `client_id` ended; the session lives on for `expiry` seconds.
    pub(crate) fn session_disconnected(&mut self, client_id: &ClientId, expiry: u32) {
        if expiry > 0 && self.stored.contains(client_id) {
            self.record(PersistOp::UpsertSession {
                client_id: client_id.clone(),
                expiry,
                disconnected_at: Some(unix_millis_now()),
            });
        }
    }

    /// Session `client_id` ended.
    pub(crate) fn session_ended(&mut self, client_id: &ClientId) {
        if self.stored.remove(client_id) {
            self.record(PersistOp::DeleteSession { client_id: client_id.clone() });
        }
    }

    /// Session `client_id` subscribed to `filter`.
    pub(crate) fn subscribed(
        &mut self,
        client_id: &ClientId,
        filter: &TopicFilter,
        options: SubOptions,
    ) {
        if self.stored.contains(client_id) {
            self.record(PersistOp::PutSubscription {
                client_id: client_id.clone(),
                subscription: StoredSubscription {
                    filter: filter.clone(),
                    qos: options.qos,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    subscription_id: options.id,
                },
            });
        }
    }

    /// Session `client_id` unsubscribed from `filter`.
    pub(crate) fn unsubscribed(&mut self, client_id: &ClientId, filter: &TopicFilter) {
        if self.stored.contains(client_id) {
            self.record(PersistOp::DeleteSubscription {
                client_id: client_id.clone(),
                filter: filter.clone(),
            });
        }
    }

    /// The retained store did `outcome` with `message`.
    pub(crate) fn retained(
        &mut self,
        message: &Message,
        expires_at: Option<Instant>,
        outcome: RetainOutcome,
    ) {
        match outcome {
            RetainOutcome::Stored => self.record(PersistOp::PutRetained {
                message: StoredMessage {
                    topic: message.topic.clone(),
                    payload: message.payload.clone(),
                    qos: message.qos,
                    retain: true,
                    properties: encode_properties(&message.properties),
                    expires_at: expires_at.map(unix_millis),
                },
            }),
            RetainOutcome::Deleted => {
                self.record(PersistOp::DeleteRetained { topic: message.topic.clone() });
            }
            RetainOutcome::Full => {}
        }
    }

    /// `out` is on its way to session `client_id`: when the session is stored and the message is
    /// QoS 1 or 2, gives it a sequence number and records its enqueue. Call only once the message
    /// is taken (into a connection's channel or the session's queue); a message dropped afterwards
    /// is reported with [`Recorder::finished`].
    pub(crate) fn enqueue(&mut self, client_id: &ClientId, out: &mut Outbound) {
        if out.qos == QoS::AtMostOnce || out.seq.is_some() || !self.stored.contains(client_id) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        out.seq = NonZeroU64::new(seq);
        let mut properties = out.message.properties.clone();
        properties.subscription_identifiers.clone_from(&out.subscription_ids);
        self.record(PersistOp::EnqueueMessage {
            client_id: client_id.clone(),
            seq,
            message: StoredMessage {
                topic: out.message.topic.clone(),
                payload: out.message.payload.clone(),
                qos: out.qos,
                retain: out.retain,
                properties: encode_properties(&properties),
                expires_at: out.expires_at.map(unix_millis),
            },
        });
    }

    /// Session `client_id` is finished with the messages `seqs`.
    pub(crate) fn finished(&mut self, client_id: &ClientId, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            self.record(PersistOp::AckMessage { client_id: client_id.clone(), seq });
        }
    }

    /// Hands this turn's ops and completions to the writer, waiting for room in its channel unless
    /// `shutdown` fires first (then they are dropped: the broker is stopping).
    pub(crate) async fn flush(&mut self, shutdown: &CancellationToken) {
        if self.ops.is_empty() && self.completions.is_empty() {
            return;
        }
        let batch = Batch {
            ops: std::mem::take(&mut self.ops),
            completions: std::mem::take(&mut self.completions),
        };
        tokio::select! {
            biased;
            sent = self.batches.send(batch) => {
                if sent.is_err() {
                    tracing::warn!("session writer stopped; MQTT session changes are not persisted");
                }
            }
            () = shutdown.cancelled() => {}
        }
    }
}

/// What the broker restores from a stored message queued for a session: the outbound message with
/// its sequence number, or `None` when it has expired. `now` is the current instant and `now_ms` the
/// same moment in Unix milliseconds.
pub(crate) fn restore_outbound(
    queued: QueuedMessage,
    now: Instant,
    now_ms: u64,
) -> Option<Outbound> {
    let QueuedMessage { seq, message } = queued;
    let expires_at = match message.expires_at {
        Some(at) => Some(instant_at(at, now, now_ms)?),
        None => None,
    };
    let mut properties = decode_properties(message.properties, &message.topic);
    let subscription_ids = std::mem::take(&mut properties.subscription_identifiers);
    Some(Outbound {
        qos: message.qos,
        retain: message.retain,
        message: Arc::new(Message {
            topic: message.topic,
            payload: message.payload,
            qos: message.qos,
            retain: message.retain,
            properties,
        }),
        expires_at,
        subscription_ids,
        seq: NonZeroU64::new(seq),
    })
}

/// The retained message a stored one restores, with its expiry, or `None` when it has expired.
pub(crate) fn restore_retained(
    stored: StoredMessage,
    now: Instant,
    now_ms: u64,
) -> Option<(Arc<Message>, Option<Instant>)> {
    let expires_at = match stored.expires_at {
        Some(at) => Some(instant_at(at, now, now_ms)?),
        None => None,
    };
    let properties = decode_properties(stored.properties, &stored.topic);
    let message = Message {
        topic: stored.topic,
        payload: stored.payload,
        qos: stored.qos,
        retain: true,
        properties,
    };
    Some((Arc::new(message), expires_at))
}

/// The instant of `unix_ms`, or `None` when it is not after `now`.
fn instant_at(unix_ms: u64, now: Instant, now_ms: u64) -> Option<Instant> {
    let left = unix_ms.checked_sub(now_ms).filter(|&left| left > 0)?;
    Some(now + Duration::from_millis(left))
}

fn encode_properties(properties: &Properties) -> Bytes {
    let mut buf = BytesMut::new();
    if let Err(error) = properties.encode_publish(&mut buf) {
        // The properties came from a decoded PUBLISH or will, so they encode; should they not, the
        // message is kept without them rather than not at all.
        tracing::warn!(error = %error, "message properties cannot be stored; storing none");
        buf.clear();
        let _ = Properties::default().encode_publish(&mut buf);
    }
    buf.freeze()
}

fn decode_properties(bytes: Bytes, topic: &TopicName) -> Properties {
    Properties::decode_publish(bytes).unwrap_or_else(|error| {
        tracing::warn!(%topic, error = %error, "stored message properties are corrupt; ignoring them");
        Properties::default()
    })
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The Unix milliseconds of `at`, a tokio instant.
fn unix_millis(at: Instant) -> u64 {
    let now = Instant::now();
    let now_ms = unix_millis_now();
    if at >= now {
        now_ms.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        now_ms.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

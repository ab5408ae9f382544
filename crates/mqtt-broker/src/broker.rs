//! The broker task ([`Broker`]) and the handle that reaches it ([`BrokerHandle`]).
//!
//! One task owns everything shared between connections: the session registry (by client identifier),
//! the subscription trie, the retained messages, delayed wills and session expiry timers. Connection tasks
//! and in-process features send it [`Command`]s over one bounded channel; it never awaits anything but
//! that channel, its next timer and (with a session store) room in the session writer's channel, and
//! it reaches connections only with `try_send`, so a slow client can never stall it.
//!
//! # Acknowledge after commit
//!
//! A QoS 1 or 2 PUBLISH from a client reaches the broker as [`Command::Publish`] with an `accepted`
//! completion. The connection sends PUBACK / PUBREC only when that completion fires, in the order the
//! PUBLISH packets arrived, and keeps reading meanwhile (up to its Receive Maximum).
//!
//! Without a session store ([`Broker::new`]) the broker completes it as soon as the message is routed
//! (and retained) in memory. With one ([`Broker::with_store`]) the broker records, while it handles a
//! command, the changes that must survive a restart (see the `persist` module): a session with a
//! non-zero expiry starting, ending or disconnecting, its subscriptions, each QoS 1 or 2 message
//! routed to it, retained messages set or cleared. A command whose handling recorded any of them
//! completes only once the batch holding them has committed:
//! - PUBLISH: `accepted` (→ PUBACK / PUBREC) when the message was queued for a persistent session or
//!   changed a retained message;
//! - SUBSCRIBE / UNSUBSCRIBE of a persistent session: the reply (→ SUBACK / UNSUBACK);
//! - [`BrokerHandle::publish`] of a retained message: its return.
//!
//! Everything else completes at once, as without a store. After each turn of its loop (one command
//! and the commands already waiting behind it, up to `TURN_COMMANDS`) the broker hands what it recorded
//! to the `SessionWriter` task as one batch; it never awaits the database, only room in the writer's
//! channel, which is how a slow database pushes back on clients. The connection code does not change:
//! it still waits for `accepted`. Connections report the messages their clients have acknowledged
//! straight to the writer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mqtt_codec::{ClientId, QoS, ReasonCode, RetainHandling, TopicFilter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::counters::{self, DropReason};
use crate::events::ConnectionEvent;
use crate::mailbox::{self, TrySendError};
use crate::persist::{FinishedMessages, Recorder};
use crate::retained::{RetainOutcome, RetainedStore};
use crate::session::{Outbound, SessionState, SubscriberId};
use crate::topic_tree::{Match, SubOptions, TopicTree};
use crate::{Authenticator, BrokerConfig, BrokerError, ConnectionError, Identity, Message};

mod persistence;

/// The broker task. Create it with [`Broker::new`], spawn [`Broker::run`], and reach it through the
/// [`BrokerHandle`].
#[derive(Debug)]
pub struct Broker {
    config: Arc<BrokerConfig>,
    /// Commands from connections and handles. Closes when every handle is dropped.
    commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
    tree: TopicTree<SubscriberId>,
    retained: RetainedStore,
    /// Boxed: an entry is a few hundred bytes, and a map of boxes wastes only pointers in its spare
    /// capacity.
    sessions: HashMap<SubscriberId, Box<SessionEntry>>,
    by_client: HashMap<ClientId, SubscriberId>,
    /// In-process subscriptions made through [`BrokerHandle::subscribe`].
    internal: HashMap<SubscriberId, (TopicFilter, mpsc::Sender<Arc<Message>>)>,
    /// Session expiries and delayed wills, by deadline. Entries may be stale: each is checked against
    /// its session when it fires.
    timers: BTreeSet<(Instant, SubscriberId)>,
    next_id: u64,
    /// What must be persisted, with a session store ([`Broker::with_store`]); `None` keeps
    /// everything in memory only.
    persist: Option<Recorder>,
}

/// A cheap, cloneable handle to the broker task, for connections and for Herd's own features.
///
/// Features publish and subscribe through it with an internal identity that no ACL restricts; devices
/// never get one.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::Sender<Command>,
    config: Arc<BrokerConfig>,
    shutdown: CancellationToken,
    /// Source of connection identifiers and assigned client identifiers.
    ids: AtomicU64,
    /// Where connection events go, once [`BrokerHandle::connection_events`] was called. Locked only
    /// to clone the sender or replace it, never across an `.await`.
    events: Mutex<Option<mpsc::Sender<ConnectionEvent>>>,
    /// With a session store: where connections report the persisted messages their clients are
    /// finished with (the session writer receives them).
    finished: Option<mpsc::Sender<FinishedMessages>>,
}

/// A request to the broker task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A client finished CONNECT and wants its session.
    Connect(ConnectRequest),
    /// A connection ended and hands its session state back.
    Disconnected(Disconnected),
    /// A client subscribes; the reply has one result per request.
    Subscribe {
        session: SubscriberId,
        requests: Vec<SubscribeRequest>,
        reply: oneshot::Sender<Vec<Result<Vec<Outbound>, ReasonCode>>>,
    },
    /// A client unsubscribes; the reply says, per filter, whether the subscription existed.
    Unsubscribe {
        session: SubscriberId,
        filters: Vec<TopicFilter>,
        reply: oneshot::Sender<Vec<bool>>,
    },
    /// A message to route. `accepted` fires once the broker has taken responsibility for it.
    Publish {
        message: Arc<Message>,
        expires_at: Option<Instant>,
        publisher: Option<SubscriberId>,
        accepted: Option<oneshot::Sender<Accepted>>,
    },
    /// An in-process subscription.
    SubscribeInternal { filter: TopicFilter, reply: oneshot::Sender<mpsc::Receiver<Arc<Message>>> },
    /// Close the live connection of `client_id`, if any; the reply says whether there was one.
    DisconnectClient { client_id: ClientId, reason: ReasonCode, reply: oneshot::Sender<bool> },
}

/// The broker's answer to a routed message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    /// Whether any subscription matched (v5 PUBACK 0x10 otherwise).
    pub(crate) matched: bool,
}

/// How the broker reaches a live connection.
#[derive(Debug)]
pub(crate) struct ConnLink {
    pub(crate) conn_id: u64,
    /// Messages for the client. The connection closes the receiver before it hands its state back.
    pub(crate) outbound: mailbox::MessageSender<Outbound>,
    /// Tells the connection it has been taken over.
    pub(crate) control: mailbox::ControlSender<Outbound>,
}

/// What the broker tells a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// Another connection with the same client identifier took the session ([MQTT-3.1.4-3]).
    TakenOver,
    /// The server closes the connection with this reason (sent in a v5 DISCONNECT).
    Disconnect(ReasonCode),
}

#[derive(Debug)]
pub(crate) struct ConnectRequest {
    pub(crate) client_id: ClientId,
    pub(crate) clean_start: bool,
    /// The granted Session Expiry Interval in seconds.
    pub(crate) session_expiry: u32,
    /// Who connects: a resumed session keeps only what this identity may see.
    pub(crate) identity: Identity,
    pub(crate) link: ConnLink,
    pub(crate) reply: oneshot::Sender<ConnectReply>,
}

#[derive(Debug)]
pub(crate) struct ConnectReply {
    pub(crate) session: SubscriberId,
    pub(crate) session_present: bool,
    pub(crate) state: SessionState,
}

#[derive(Debug)]
pub(crate) struct Disconnected {
    pub(crate) session: SubscriberId,
    pub(crate) conn_id: u64,
    pub(crate) state: SessionState,
    /// The will, unless a DISCONNECT 0x00 deleted it.
    pub(crate) will: Option<WillMessage>,
    /// The Session Expiry Interval in force at the end (a v5 DISCONNECT may change it).
    pub(crate) session_expiry: u32,
}

/// A will message and its delay.
#[derive(Debug)]
pub(crate) struct WillMessage {
    pub(crate) message: Arc<Message>,
    /// Will Delay Interval in seconds (v5; 0 on v3.1.1).
    pub(crate) delay: u32,
}

#[derive(Debug)]
pub(crate) struct SubscribeRequest {
    pub(crate) filter: TopicFilter,
    pub(crate) options: SubOptions,
    pub(crate) retain_handling: RetainHandling,
}

#[derive(Debug)]
struct SessionEntry {
    client_id: ClientId,
    subscriptions: HashSet<TopicFilter>,
    /// The live connection, if any.
    link: Option<ConnLink>,
    /// The session state while no connection owns it; while one does, only messages routed after the
    /// connection closed its channel land in `state.queue`.
    ///
    /// `None` while it would be empty (always while a connection owns the state): an online
    /// session, or an offline one with nothing waiting, costs no room for it.
    state: Option<Box<SessionState>>,
    /// Session Expiry Interval, seconds.
    expiry: u32,
    /// When the session ends if nobody connects; `None` while connected.
    expires_at: Option<Instant>,
    /// A will waiting for its delay, and when to publish it.
    will: Option<Box<(WillMessage, Instant)>>,
    /// A connection waiting for the current one to hand the session over (boxed, like `will`:
    /// rare, and every session would pay for it inline).
    waiting: Option<Box<ConnectRequest>>,
}

impl Broker {
    /// A broker with `config`, stopped by `shutdown`, and a handle to it.
    #[must_use]
    pub fn new(config: BrokerConfig, shutdown: CancellationToken) -> (Self, BrokerHandle) {
        Self::build(config, shutdown, None)
    }

    /// A broker, and its handle carrying `finished` (see [`Shared::finished`]).
    fn build(
        config: BrokerConfig,
        shutdown: CancellationToken,
        finished: Option<mpsc::Sender<FinishedMessages>>,
    ) -> (Self, BrokerHandle) {
        let config = Arc::new(config);
        let (tx, rx) = mpsc::channel(config.command_channel_capacity.get());
        let broker = Self {
            retained: RetainedStore::new(config.max_retained_messages),
            config: Arc::clone(&config),
            commands: rx,
            shutdown: shutdown.clone(),
            tree: TopicTree::default(),
            sessions: HashMap::new(),
            by_client: HashMap::new(),
            internal: HashMap::new(),
            timers: BTreeSet::new(),
            next_id: 0,
            persist: None,
        };
        let handle = BrokerHandle {
            shared: Arc::new(Shared {
                commands: tx,
                config,
                shutdown,
                ids: AtomicU64::new(1),
                events: Mutex::new(None),
                finished,
            }),
        };
        (broker, handle)
    }

    /// Runs the broker until `shutdown` is cancelled or every handle is dropped.
    ///
    /// Connections notice the same token and close themselves with DISCONNECT 0x8B (Server shutting
    /// down); their later commands fail with [`BrokerError::Stopped`].
    pub async fn run(mut self) {
        loop {
            self.flush_persist().await;
            let next_timer = self.timers.first().map(|&(at, _)| at);
            // Cancel safety: `recv` and `cancelled` lose nothing when another branch wins, and the timer
            // is recomputed from `self.timers` on every turn.
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.handle(command);
                        self.handle_waiting();
                    }
                    None => break,
                },
                () = sleep_until_opt(next_timer), if next_timer.is_some() => self.fire_timers(),
            }
        }
        self.flush_persist().await;
        tracing::debug!(
            sessions = self.sessions.len(),
            subscriptions = self.tree.len(),
            retained = self.retained.len(),
            "broker stopped"
        );
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Connect(request) => self.connect(request),
            Command::Disconnected(disconnected) => self.disconnected(disconnected),
            Command::Subscribe { session, requests, reply } => {
                let mark = self.persist_mark();
                let results = self.subscribe(session, requests);
                self.after_commit(mark, move || {
                    let _ = reply.send(results);
                });
            }
            Command::Unsubscribe { session, filters, reply } => {
                let mark = self.persist_mark();
                let results = self.unsubscribe(session, &filters);
                self.after_commit(mark, move || {
                    let _ = reply.send(results);
                });
            }
            Command::Publish { message, expires_at, publisher, accepted } => {
                let mark = self.persist_mark();
                let matched = self.route(&message, expires_at, publisher);
                // The accept step: see the module documentation.
                if let Some(accepted) = accepted {
                    self.after_commit(mark, move || {
                        let _ = accepted.send(Accepted { matched });
                    });
                }
            }
            Command::SubscribeInternal { filter, reply } => {
                let id = self.allocate_id();
                let (tx, rx) = mpsc::channel(self.config.internal_subscription_capacity.get());
                self.tree.subscribe(&filter, id, SubOptions::qos(QoS::ExactlyOnce));
                self.internal.insert(id, (filter, tx));
                let _ = reply.send(rx);
            }
            Command::DisconnectClient { client_id, reason, reply } => {
                let _ = reply.send(self.disconnect_client(&client_id, reason));
            }
        }
    }

    /// Tells the live connection of `client_id` to close with `reason`; returns whether there was one.
    fn disconnect_client(&mut self, client_id: &ClientId, reason: ReasonCode) -> bool {
        let Some(entry) = self.by_client.get(client_id).and_then(|id| self.sessions.get_mut(id))
        else {
            return false;
        };
        // A connection waiting to take the session over was authenticated before this decision:
        // dropping its request refuses it (it gets CONNACK 0x89 Server busy and may retry, which
        // authenticates it again).
        entry.waiting = None;
        let Some(link) = &entry.link else { return false };
        // The control channel holds one notice. When it is full, a takeover notice is already
        // waiting and the connection is ending anyway.
        let _ = link.control.try_send(Control::Disconnect(reason));
        true
    }

    fn allocate_id(&mut self) -> SubscriberId {
        self.next_id += 1;
        SubscriberId(self.next_id)
    }

    fn connect(&mut self, request: ConnectRequest) {
        let Some(&id) = self.by_client.get(&request.client_id) else {
            let id = self.allocate_id();
            self.by_client.insert(request.client_id.clone(), id);
            self.sessions.insert(
                id,
                Box::new(SessionEntry {
                    client_id: request.client_id.clone(),
                    subscriptions: HashSet::new(),
                    link: None,
                    state: None,
                    expiry: 0,
                    expires_at: None,
                    will: None,
                    waiting: None,
                }),
            );
            self.attach(id, request, false);
            return;
        };
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        if let Some(link) = &entry.link {
            // [MQTT-3.1.4-3]: the existing connection is closed; the new one gets the session once the
            // old one has handed it back (see `disconnected`). A connection already waiting is
            // superseded: dropping its reply refuses it.
            let _ = link.control.try_send(Control::TakenOver);
            entry.waiting = Some(Box::new(request));
            return;
        }
        self.attach(id, request, true);
    }

    /// Gives session `id` to the connection of `request`.
    fn attach(&mut self, id: SubscriberId, request: ConnectRequest, existed: bool) {
        if request.clean_start {
            self.clear_session(id);
        } else if existed {
            self.confine_session(id, &request.identity);
        }
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        if let Some(persist) = &mut self.persist {
            persist.session_attached(&entry.client_id, request.clean_start, request.session_expiry);
        }
        // [MQTT-3.1.3-9]: a new connection before the will delay has passed cancels the will.
        entry.will = None;
        entry.expiry = request.session_expiry;
        entry.expires_at = None;
        let state = entry.state.take().map(|state| *state).unwrap_or_default();
        let reply =
            ConnectReply { session: id, session_present: existed && !request.clean_start, state };
        let conn_id = request.link.conn_id;
        entry.link = Some(request.link);
        if let Err(reply) = request.reply.send(reply) {
            // The connection gave up waiting: the session is offline again.
            self.disconnected(Disconnected {
                session: id,
                conn_id,
                state: reply.state,
                will: None,
                session_expiry: request.session_expiry,
            });
        }
    }

    /// Drops a session's subscriptions and queued state, keeping the entry.
    fn clear_session(&mut self, id: SubscriberId) {
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        for filter in entry.subscriptions.drain() {
            self.tree.unsubscribe(&filter, &id);
        }
        entry.state = None;
    }

    fn disconnected(&mut self, mut disconnected: Disconnected) {
        let id = disconnected.session;
        let max_queued = self.config.max_queued_messages;
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        if entry.link.as_ref().map(|link| link.conn_id) != Some(disconnected.conn_id) {
            return;
        }
        entry.link = None;
        // Messages routed after the connection closed its channel are newer than its own queue.
        let state = &mut disconnected.state;
        if let Some(late) = entry.state.take() {
            state.queue.extend(late.queue);
        }
        while state.queue.len() > max_queued {
            if let Some(out) = state.queue.pop_back() {
                counters::dropped(DropReason::QueueFull, out.qos);
                state.finish(&out);
            }
        }
        if let Some(persist) = &mut self.persist {
            persist.finished(&entry.client_id, state.finished.drain(..));
            persist.session_disconnected(&entry.client_id, disconnected.session_expiry);
        }
        entry.state = (!disconnected.state.is_idle()).then(|| Box::new(disconnected.state));
        entry.expiry = disconnected.session_expiry;
        let now = Instant::now();
        if let Some(request) = entry.waiting.take() {
            // Takeover (§3.1.4): the old will is published now if it has no delay, or if the session
            // ends because it does not outlive its connection or the new connection starts clean.
            let session_ends = entry.expiry == 0 || request.clean_start;
            if let Some(will) = disconnected.will
                && (will.delay == 0 || session_ends)
            {
                self.publish_will(&will, now);
            }
            self.attach(id, *request, true);
            return;
        }
        if let Some(will) = disconnected.will {
            if will.delay == 0 {
                self.publish_will(&will, now);
            } else if let Some(entry) = self.sessions.get_mut(&id) {
                let at = now + Duration::from_secs(u64::from(will.delay.min(entry.expiry)));
                entry.will = Some(Box::new((will, at)));
                self.timers.insert((at, id));
            }
        }
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        if entry.expiry == 0 {
            self.end_session(id);
        } else {
            let at = now + Duration::from_secs(u64::from(entry.expiry));
            entry.expires_at = Some(at);
            self.timers.insert((at, id));
        }
    }

    /// Ends session `id`: publishes its pending will and forgets it.
    fn end_session(&mut self, id: SubscriberId) {
        self.clear_session(id);
        let Some(entry) = self.sessions.remove(&id) else { return };
        self.by_client.remove(&entry.client_id);
        if let Some(persist) = &mut self.persist {
            persist.session_ended(&entry.client_id);
        }
        tracing::debug!(client_id = %entry.client_id, "session ended");
        if let Some(will) = entry.will {
            self.publish_will(&will.0, Instant::now());
        }
    }

    fn publish_will(&mut self, will: &WillMessage, now: Instant) {
        let expires_at = will.message.expires_at(now);
        self.route(&will.message, expires_at, None);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.sessions.get_mut(&id) else { continue };
            if entry.will.as_ref().is_some_and(|will| will.1 <= now)
                && let Some(will) = entry.will.take()
            {
                self.publish_will(&will.0, now);
            }
            let Some(entry) = self.sessions.get(&id) else { continue };
            if entry.link.is_none() && entry.expires_at.is_some_and(|at| at <= now) {
                self.end_session(id);
            }
        }
    }

    fn subscribe(
        &mut self,
        id: SubscriberId,
        requests: Vec<SubscribeRequest>,
    ) -> Vec<Result<Vec<Outbound>, ReasonCode>> {
        let now = Instant::now();
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            let Some(entry) = self.sessions.get_mut(&id) else {
                results.push(Err(ReasonCode::UnspecifiedError));
                continue;
            };
            if !entry.subscriptions.contains(&request.filter)
                && entry.subscriptions.len() >= self.config.max_subscriptions_per_session
            {
                results.push(Err(ReasonCode::QuotaExceeded));
                continue;
            }
            let existed = self.tree.subscribe(&request.filter, id, request.options);
            entry.subscriptions.insert(request.filter.clone());
            if let Some(persist) = &mut self.persist {
                persist.subscribed(&entry.client_id, &request.filter, request.options);
            }
            // §3.3.1.3: retained messages go to new non-shared subscriptions, as Retain Handling says.
            let send_retained = request.filter.share_name().is_none()
                && match request.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            let mut retained = if send_retained {
                self.retained
                    .matching(&request.filter, now)
                    .into_iter()
                    .map(|r| Outbound {
                        qos: r.message.qos.min(request.options.qos),
                        message: r.message,
                        expires_at: r.expires_at,
                        retain: true,
                        subscription_ids: request.options.id.into_iter().collect(),
                        seq: None,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(persist) = &mut self.persist {
                for out in &mut retained {
                    persist.enqueue(&entry.client_id, out);
                }
            }
            results.push(Ok(retained));
        }
        results
    }

    /// Removes from session `id` the subscriptions and the waiting messages that `identity` may not
    /// see. A session is found by client identifier alone, and whoever made it was checked against
    /// their own ACL: an application that once used a client identifier some device later gets, or
    /// a session restored from the store, must not hand the next owner what only the previous one
    /// was allowed.
    fn confine_session(&mut self, id: SubscriberId, identity: &Identity) {
        let Some(entry) = self.sessions.get(&id) else { return };
        let denied: Vec<TopicFilter> =
            entry.subscriptions.iter().filter(|f| !identity.may_subscribe(f)).cloned().collect();
        if !denied.is_empty() {
            tracing::info!(
                client_id = %entry.client_id,
                identity = identity.name(),
                subscriptions = denied.len(),
                "resumed session had subscriptions this identity may not make; removed"
            );
            self.unsubscribe(id, &denied);
        }
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        let may_receive = |out: &Outbound| {
            TopicFilter::new(out.message.topic.as_str()).is_ok_and(|f| identity.may_subscribe(&f))
        };
        let mut dropped = Vec::new();
        let Some(state) = entry.state.as_mut() else { return };
        state.queue.retain(|out| {
            let keep = may_receive(out);
            if !keep {
                dropped.extend(out.seq.map(NonZeroU64::get));
            }
            keep
        });
        state.inflight.retain(|flight| {
            let keep = may_receive(&flight.out);
            if !keep {
                dropped.extend(flight.out.seq.map(NonZeroU64::get));
            }
            keep
        });
        if let Some(persist) = &mut self.persist {
            persist.finished(&entry.client_id, dropped);
        }
    }

    fn unsubscribe(&mut self, id: SubscriberId, filters: &[TopicFilter]) -> Vec<bool> {
        let Some(entry) = self.sessions.get_mut(&id) else { return vec![false; filters.len()] };
        let mut existed = Vec::with_capacity(filters.len());
        for filter in filters {
            let removed = entry.subscriptions.remove(filter) && self.tree.unsubscribe(filter, &id);
            if removed && let Some(persist) = &mut self.persist {
                persist.unsubscribed(&entry.client_id, filter);
            }
            existed.push(removed);
        }
        existed
    }

    /// Retains and delivers `message`; returns whether any subscription matched.
    fn route(
        &mut self,
        message: &Arc<Message>,
        expires_at: Option<Instant>,
        publisher: Option<SubscriberId>,
    ) -> bool {
        counters::received(message.qos);
        if message.retain {
            let outcome = self.retained.set(Arc::clone(message), expires_at);
            if outcome == RetainOutcome::Full {
                counters::retained_refused();
                tracing::warn!(topic = %message.topic, "retained store full, message not retained");
            }
            if let Some(persist) = &mut self.persist {
                persist.retained(message, expires_at, outcome);
            }
        }
        let matches = self.tree.matches(&message.topic, publisher.as_ref());
        let matched = !matches.is_empty();
        for m in matches {
            self.deliver(m, message, expires_at);
        }
        matched
    }

    fn deliver(
        &mut self,
        m: Match<SubscriberId>,
        message: &Arc<Message>,
        expires_at: Option<Instant>,
    ) {
        if let Some((filter, tx)) = self.internal.get(&m.subscriber) {
            match tx.try_send(Arc::clone(message)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    counters::dropped(DropReason::InternalFull, message.qos);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // The receiver was dropped: that is how an in-process subscription ends.
                    let filter = filter.clone();
                    self.tree.unsubscribe(&filter, &m.subscriber);
                    self.internal.remove(&m.subscriber);
                }
            }
            return;
        }
        let Some(entry) = self.sessions.get_mut(&m.subscriber) else { return };
        let mut out = Outbound {
            message: Arc::clone(message),
            expires_at,
            qos: message.qos.min(m.qos),
            // [MQTT-3.3.1-12], [MQTT-3.3.1-13]; v3.1.1 subscriptions never set Retain As Published.
            retain: message.retain && m.retain_as_published,
            subscription_ids: m.subscription_ids,
            seq: None,
        };
        // Recorded before it is handed over, since a connection may finish with it at once; the drops
        // below record that they finished with it.
        if let Some(persist) = &mut self.persist {
            persist.enqueue(&entry.client_id, &mut out);
        }
        // QoS 1 and 2 messages may also take the room of the session's queue: a connection that is
        // briefly behind must not lose them (they are dropped only where the queue is full).
        let room = match out.qos {
            QoS::AtMostOnce => self.config.connection_channel_capacity.get(),
            _ => self.config.connection_channel_capacity.get() + self.config.max_queued_messages,
        };
        let out = match &entry.link {
            Some(link) => match link.outbound.try_send_within(out, room) {
                Ok(()) => return,
                Err(TrySendError::Full(out)) => {
                    counters::dropped(DropReason::ChannelFull, out.qos);
                    if let Some(persist) = &mut self.persist {
                        persist.finished(&entry.client_id, out.seq.map(NonZeroU64::get));
                    }
                    return;
                }
                // The connection is ending; the message waits for the session's next connection.
                Err(TrySendError::Closed(out)) => out,
            },
            None => out,
        };
        if out.qos == QoS::AtMostOnce {
            counters::dropped(DropReason::Offline, out.qos);
        } else if entry.state.as_ref().map_or(0, |state| state.queue.len())
            >= self.config.max_queued_messages
        {
            counters::dropped(DropReason::QueueFull, out.qos);
            if let Some(persist) = &mut self.persist {
                persist.finished(&entry.client_id, out.seq.map(NonZeroU64::get));
            }
        } else {
            entry.state.get_or_insert_default().queue.push_back(out);
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl BrokerHandle {
    /// Publishes `message` with the internal identity: no ACL applies. Returns once the broker task has
    /// queued it for routing; with a session store, a retained message returns only once it is
    /// committed (see the module documentation).
    ///
    /// # Errors
    ///
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancelling before it returns may or may not have queued the message (and committed it).
    pub async fn publish(&self, message: Message) -> Result<(), BrokerError> {
        let expires_at = message.expires_at(Instant::now());
        let (accepted, committed) = if message.retain && self.shared.finished.is_some() {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.send(Command::Publish {
            message: Arc::new(message),
            expires_at,
            publisher: None,
            accepted,
        })
        .await?;
        if let Some(committed) = committed {
            committed.await.map_err(|_| BrokerError::Stopped)?;
        }
        Ok(())
    }

    /// Subscribes to `filter` (a `$share/` filter joins that shared group) with the internal identity.
    ///
    /// Matching messages arrive on the returned receiver with their published QoS and RETAIN flag. Its
    /// capacity is [`BrokerConfig::internal_subscription_capacity`]; when it is full, further messages
    /// are dropped and counted. Dropping the receiver ends the subscription.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn subscribe(
        &self,
        filter: TopicFilter,
    ) -> Result<mpsc::Receiver<Arc<Message>>, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SubscribeInternal { filter, reply }).await?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// Serves one client connection over `io` until it ends: CONNECT, then packets in both directions,
    /// then the hand-over of its session to the broker task.
    ///
    /// `io` is any byte stream (TCP, TLS, WebSocket); `peer` is its remote address, if it has one,
    /// given to `authenticator`. The caller spawns this in its task tracker.
    ///
    /// # Errors
    ///
    /// A [`ConnectionError`] when the connection ended abnormally; it has been logged in the
    /// connection's span. A DISCONNECT from the client, a takeover and a shutdown end with `Ok`.
    pub fn serve<IO, A>(
        &self,
        io: IO,
        peer: Option<SocketAddr>,
        authenticator: &A,
    ) -> impl Future<Output = Result<(), ConnectionError>> + Send
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
        A: Authenticator,
    {
        crate::connection::serve(self.clone(), io, peer, authenticator)
    }

    /// As [`BrokerHandle::serve`], with the authenticator shared: the future owns everything it
    /// needs (`'static` when `IO` is), so a listener can spawn it as it is, without an `async`
    /// block around it that would make every connection's task larger.
    pub fn serve_owned<IO, A>(
        &self,
        io: IO,
        peer: Option<SocketAddr>,
        authenticator: Arc<A>,
    ) -> impl Future<Output = Result<(), ConnectionError>> + Send + use<IO, A>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
        A: Authenticator,
    {
        crate::connection::serve(self.clone(), io, peer, authenticator)
    }

    /// Closes the live connection of the client `client_id`, as a server-initiated disconnect: a v5
    /// client gets DISCONNECT with `reason` (such as [`ReasonCode::AdministrativeAction`]), a v3.1.1
    /// client sees its socket close. Its will is published as for any connection that ends without a
    /// normal DISCONNECT ([MQTT-3.1.2-8]), and its session stays or ends by its expiry interval.
    ///
    /// Returns whether the client had a live connection. A connection still in its CONNECT (not yet
    /// holding its session) is not affected; callers that revoke access must also make the
    /// [`Authenticator`] refuse the client's next CONNECT.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Stopped`] when the broker task has stopped.
    pub async fn disconnect_client(
        &self,
        client_id: &str,
        reason: ReasonCode,
    ) -> Result<bool, BrokerError> {
        // A string that is no valid client identifier cannot name a connected client.
        let Ok(client_id) = ClientId::new(client_id) else { return Ok(false) };
        let (reply, rx) = oneshot::channel();
        self.send(Command::DisconnectClient { client_id, reason, reply }).await?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// Starts reporting clients connecting and disconnecting on the returned receiver, which holds up
    /// to `capacity` events. See the `events` module for the order of events and the overload
    /// policy: when the receiver is full, events are dropped and counted
    /// (`mqtt_presence_events_dropped_total`); the broker never waits for the consumer.
    ///
    /// Calling it again replaces the earlier receiver, which then receives nothing more.
    #[must_use]
    pub fn connection_events(&self, capacity: NonZeroUsize) -> mpsc::Receiver<ConnectionEvent> {
        let (tx, rx) = mpsc::channel(capacity.get());
        *self.shared.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        rx
    }

    /// Reports `event` to the connection-event receiver, if there is one, without waiting.
    pub(crate) fn emit(&self, event: ConnectionEvent) {
        let sender =
            self.shared.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(sender) = sender else { return };
        match sender.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => counters::presence_event_dropped("full"),
            // The consumer stopped (shutdown): nobody is listening any more.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The configuration the broker runs with.
    #[must_use]
    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// The configuration, shared.
    pub(crate) fn config_arc(&self) -> Arc<BrokerConfig> {
        Arc::clone(&self.shared.config)
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// A number unique among this broker's connections.
    pub(crate) fn next_id(&self) -> u64 {
        self.shared.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `command`, waiting while the broker's queue is full.
    pub(crate) async fn send(&self, command: Command) -> Result<(), BrokerError> {
        self.shared.commands.send(command).await.map_err(|_| BrokerError::Stopped)
    }
}

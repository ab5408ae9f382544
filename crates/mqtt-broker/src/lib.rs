//! Herd's MQTT 3.1.1 and 5.0 broker core: sessions, subscriptions, QoS flows, retained and will
//! messages, on top of the pure `mqtt-codec`.
//!
//! - [`Broker`] is the one task that owns shared state: the session registry, the subscription trie
//!   (`topic_tree`), the retained messages (`retained`), delayed wills and session expiry.
//! - [`BrokerHandle`] is the cheap, cloneable way in. Herd's features publish and subscribe through
//!   it ([`BrokerHandle::publish`], [`BrokerHandle::subscribe`]) with an internal identity no ACL
//!   restricts; listeners hand each accepted socket to [`BrokerHandle::serve`].
//! - A connection (`connection`) runs per socket, generic over the byte stream. It authenticates the
//!   CONNECT with the server's [`Authenticator`], which returns an [`Identity`] carrying a compiled
//!   [`Acl`], and checks every topic and filter against it.
//! - [`BrokerConfig`] holds every limit; each field says what happens when it is reached.
//! - [`BrokerHandle::connection_events`] reports clients connecting and disconnecting (with a
//!   [`DisconnectReason`]) on a bounded channel that never blocks the broker (`events`).
//! - [`Broker::with_store`] makes sessions, their queued QoS 1 and 2 messages and retained messages
//!   survive a restart: the broker writes them through a [`SessionStore`] (implemented by the server
//!   on its database) in batches committed by a [`SessionWriter`] task, and restores them from a
//!   [`Snapshot`] at startup (`persist`). [`Broker::new`] keeps everything in memory.
//!
//! Data flows client → connection → broker task → subscribers' connections (bounded channels, never
//! awaited by the broker) → clients. QoS 1 and 2 messages from clients are acknowledged only after the
//! broker has accepted them, and with a session store only after what they changed has committed;
//! see the `broker` module.

mod auth;
mod broker;
mod config;
mod connection;
mod counters;
mod error;
mod events;
mod mailbox;
mod message;
mod persist;
mod rate;
mod retained;
mod session;
mod topic_tree;

pub use crate::auth::{Acl, AllowAll, Authenticator, Identity};
pub use crate::broker::{Broker, BrokerHandle};
pub use crate::config::BrokerConfig;
pub use crate::error::{BrokerError, ConnectionError};
pub use crate::events::{ConnectionEvent, DisconnectReason, protocol_label};
pub use crate::message::Message;
pub use crate::persist::{
    BoxFuture, PersistError, PersistOp, QueuedMessage, SessionStore, SessionWriter, Snapshot,
    StoredMessage, StoredSession, StoredSubscription,
};
pub use crate::rate::PublishRate;

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
//!
//! Data flows client → connection → broker task → subscribers' connections (bounded channels, never
//! awaited by the broker) → clients. QoS 1 and 2 messages from clients are acknowledged only after the
//! broker has accepted them; see the `broker` module for how that becomes acknowledge-after-commit
//! once messages are stored.

mod auth;
mod broker;
mod config;
mod connection;
mod counters;
mod error;
mod events;
mod message;
mod retained;
mod session;
mod topic_tree;

pub use crate::auth::{Acl, AllowAll, Authenticator, Identity};
pub use crate::broker::{Broker, BrokerHandle};
pub use crate::config::BrokerConfig;
pub use crate::error::{BrokerError, ConnectionError};
pub use crate::events::{ConnectionEvent, DisconnectReason, protocol_label};
pub use crate::message::Message;

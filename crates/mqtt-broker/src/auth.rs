//! Who a client is and what it may do: the [`Authenticator`] the server implements, the [`Identity`] it
//! returns at CONNECT, and the compiled [`Acl`] that identity carries.
//!
//! The connection task resolves the identity once, at CONNECT, and checks every PUBLISH topic, will
//! topic and SUBSCRIBE filter against it: the broker core never delivers a message to a subscription
//! that its ACL did not allow when it was made.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mqtt_codec::{Connect, ReasonCode, TopicFilter, TopicName};

/// Decides at CONNECT who a client is.
///
/// Implemented by the server (device credentials, application credentials, anonymous rules); tests use
/// [`AllowAll`].
pub trait Authenticator: Send + Sync {
    /// Authenticates `connect`, which arrived from `peer` (when the transport has an address).
    ///
    /// # Errors
    ///
    /// The reason code of the CONNACK that refuses the client, such as
    /// [`ReasonCode::BadUserNameOrPassword`] or [`ReasonCode::NotAuthorized`]; on v3.1.1 it is sent as
    /// the nearest return code.
    fn authenticate(
        &self,
        connect: &Connect,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Result<Identity, ReasonCode>> + Send;
}

/// A compiled access-control list: which topics an identity may publish to and subscribe to.
pub trait Acl: Send + Sync + fmt::Debug {
    /// Whether the identity may publish to `topic` (also checked for its will topic).
    fn may_publish(&self, topic: &TopicName) -> bool;
    /// Whether the identity may subscribe to `filter`, including any `$share/` prefix.
    fn may_subscribe(&self, filter: &TopicFilter) -> bool;
}

/// An authenticated client: a name for logs and metrics and its ACL.
#[derive(Debug, Clone)]
pub struct Identity {
    name: String,
    acl: Arc<dyn Acl>,
}

impl Identity {
    /// An identity called `name` (a device id, an application name) with `acl`.
    pub fn new(name: impl Into<String>, acl: Arc<dyn Acl>) -> Self {
        Self { name: name.into(), acl }
    }

    /// The identity's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this identity may publish to `topic`.
    #[must_use]
    pub fn may_publish(&self, topic: &TopicName) -> bool {
        self.acl.may_publish(topic)
    }

    /// Whether this identity may subscribe to `filter`.
    #[must_use]
    pub fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        self.acl.may_subscribe(filter)
    }
}

/// Accepts every client and allows every topic. For tests and local experiments only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Acl for AllowAll {
    fn may_publish(&self, _topic: &TopicName) -> bool {
        true
    }

    fn may_subscribe(&self, _filter: &TopicFilter) -> bool {
        true
    }
}

impl Authenticator for AllowAll {
    async fn authenticate(
        &self,
        connect: &Connect,
        _peer: Option<SocketAddr>,
    ) -> Result<Identity, ReasonCode> {
        Ok(Identity::new(connect.client_id.as_str(), Arc::new(Self)))
    }
}

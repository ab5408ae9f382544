//! The public face of a device: [`Device::spawn`] starts its task, [`DeviceHandle`] talks to it.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::agent::{Agent, Outgoing};
use crate::config::{DeviceConfig, Validated};
use crate::error::{AgentError, ConfigError, RenewError, Stopped};
use crate::journal::{Journal, JournalOptions};
use crate::message::{Channel, Event, Incoming};
use crate::telemetry::Telemetry;

/// How many requests from handles wait for the device task. When full, [`DeviceHandle::telemetry`]
/// waits: the task takes requests at once when connected or backing off, but not during a
/// connection attempt (at most a few seconds).
pub const COMMAND_CAPACITY: usize = 64;

/// Counters of a device's connection and telemetry, as last published by its task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Whether the server accepted the current connection (CONNACK 0x00) and it is still up.
    pub connected: bool,
    /// Connections accepted after the first one.
    pub reconnects: u64,
    /// Connections on which the server still held the device's session (Session Present 1):
    /// its subscriptions and the messages queued for it were kept.
    pub sessions_resumed: u64,
    /// Messages (telemetry, events, facts, heartbeats, …) published for the first time (resends
    /// not counted).
    pub sent: u64,
    /// Messages the server acknowledged (PUBACK).
    pub acked: u64,
    /// Messages waiting in the offline buffer now.
    pub buffered: u64,
    /// Messages dropped from the full offline buffer (the oldest go first).
    pub dropped: u64,
    /// Whether the server answered the SUBSCRIBE of the current connection (true at once when
    /// the device has no subscriptions or the server kept its session).
    pub subscribed: bool,
    /// Messages received on the device's subscriptions.
    pub received: u64,
}

/// The device task: ends with `Ok(())` after a shutdown, or with why it stopped.
pub type DeviceTask = JoinHandle<Result<(), AgentError>>;

/// A request from a [`DeviceHandle`] to the device task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Publish this message.
    Publish(Outgoing),
    /// Close the connection without DISCONNECT and stay offline this long.
    Sever(Duration),
    /// Send DISCONNECT and stop.
    Shutdown,
    /// Log in with these from the next connection on.
    Renew(Renewed),
}

/// New login material for the next connections.
#[derive(Debug)]
pub(crate) enum Renewed {
    /// A new credential secret.
    Password(bytes::Bytes),
    /// A new client certificate, already loaded into the transport.
    Transport(Box<crate::transport::Dialer>),
}

/// A device's connection to Herd, run by one task.
#[derive(Debug)]
pub struct Device;

impl Device {
    /// Validates `config` and starts the device task, which connects and keeps reconnecting.
    ///
    /// The task ends with `Ok(())` after [`DeviceHandle::shutdown`] or when every handle is
    /// dropped, and with [`AgentError::Refused`] when the server refuses the device for good.
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// [`ConfigError`] when the device id, keep-alive or session expiry cannot be sent.
    pub fn spawn(config: DeviceConfig) -> Result<(DeviceHandle, DeviceTask), ConfigError> {
        Self::start(config, None)
    }

    /// As [`Device::spawn`], and subscribes to [`DeviceConfig::subscriptions`]: what arrives on
    /// them waits in the returned [`Inbox`] (at most `capacity` messages).
    ///
    /// A message is acknowledged to the server only once it is in the inbox, so a full inbox
    /// holds the device task up (no telemetry goes out meanwhile): keep reading it, or drop it to
    /// have further messages acknowledged and discarded.
    ///
    /// # Errors
    /// As [`Device::spawn`], and [`ConfigError::Subscription`] for an invalid filter.
    pub fn spawn_with_inbox(
        config: DeviceConfig,
        capacity: NonZeroUsize,
    ) -> Result<(DeviceHandle, Inbox, DeviceTask), ConfigError> {
        let (tx, rx) = mpsc::channel(capacity.get());
        let (handle, task) = Self::start(config, Some(tx))?;
        Ok((handle, Inbox { messages: rx }, task))
    }

    fn start(
        config: DeviceConfig,
        inbox: Option<mpsc::Sender<Incoming>>,
    ) -> Result<(DeviceHandle, DeviceTask), ConfigError> {
        let config = Validated::new(config)?;
        let journal = match &config.offline_journal {
            None => None,
            Some(j) => Some(
                Journal::open(&j.dir, JournalOptions { max_bytes: j.max_bytes, sync: j.sync })
                    .map_err(|e| ConfigError::Journal(e.to_string()))?,
            ),
        };
        let config_id = config.client_id.as_str().to_owned();
        let dialer = Arc::new(config.transport.clone());
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (stats_tx, stats_rx) = watch::channel(Stats::default());
        let agent =
            Agent::new(config, commands_rx, inbox, stats_tx, StdRng::from_os_rng(), journal);
        let span = tracing::info_span!("device", device_id = config_id);
        let task = tokio::spawn(agent.run().instrument(span));
        Ok((DeviceHandle { commands: commands_tx, stats: stats_rx, dialer }, task))
    }
}

/// Messages from the device's subscriptions, in the order they arrived.
#[derive(Debug)]
pub struct Inbox {
    messages: mpsc::Receiver<Incoming>,
}

impl Inbox {
    /// The next message; `None` once the device task has stopped and the inbox is empty.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.messages.recv().await
    }
}

/// Sends telemetry through a device task and reads its [`Stats`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<Stats>,
    /// The transport as configured: the base of a renewed client certificate.
    dialer: Arc<crate::transport::Dialer>,
}

impl DeviceHandle {
    /// Publishes `telemetry` to `devices/{id}/telemetry` at QoS 1.
    ///
    /// Returns once the task has the message, not when the server acknowledged it ([`Stats::acked`]
    /// counts that). While the device cannot publish, the message waits in the offline buffer and
    /// goes out, in order, after the next connection; unacknowledged messages are sent again (DUP)
    /// before it. When the buffer is full the oldest message is dropped.
    ///
    /// # Errors
    /// [`Stopped`] when the task has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled call has not handed the message over.
    pub async fn telemetry(&self, telemetry: &Telemetry) -> Result<(), Stopped> {
        self.publish(Channel::Telemetry, telemetry.to_payload()).await
    }

    /// Publishes several telemetry messages as one JSON array on `devices/{id}/telemetry`
    /// (cheaper than one message each for readings taken while offline or sampled fast).
    ///
    /// # Errors
    /// [`Stopped`] when the task has ended.
    pub async fn telemetry_batch(&self, batch: &[Telemetry]) -> Result<(), Stopped> {
        self.publish(Channel::Telemetry, Telemetry::batch_payload(batch)).await
    }

    /// Publishes `event` to `devices/{id}/events` at QoS 1, buffered like telemetry.
    ///
    /// # Errors
    /// [`Stopped`] when the task has ended.
    pub async fn event(&self, event: &Event) -> Result<(), Stopped> {
        self.publish(Channel::Events, event.to_payload()).await
    }

    /// Publishes `payload` on `channel` at QoS 1, buffered like telemetry: the way to the
    /// device's other topics (facts, heartbeat, and the topics of later features).
    ///
    /// # Errors
    /// [`Stopped`] when the task has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled call has not handed the message over.
    pub async fn publish(&self, channel: Channel, payload: bytes::Bytes) -> Result<(), Stopped> {
        self.commands
            .send(Command::Publish(Outgoing::new(channel, payload)))
            .await
            .map_err(|_| Stopped)
    }

    /// Cuts the connection without DISCONNECT (as a network failure would) and stays offline for
    /// `offline_for` before reconnecting; messages are buffered meanwhile. For failure tests and
    /// the simulator. Does nothing while the device is already offline.
    ///
    /// # Errors
    /// [`Stopped`] when the task has ended.
    pub async fn sever(&self, offline_for: Duration) -> Result<(), Stopped> {
        self.commands.send(Command::Sever(offline_for)).await.map_err(|_| Stopped)
    }

    /// The task's counters now.
    #[must_use]
    pub fn stats(&self) -> Stats {
        *self.stats.borrow()
    }

    /// Waits until the counters satisfy `condition`; returns them.
    ///
    /// # Errors
    /// [`Stopped`] when the task ends before that.
    pub async fn wait_for_stats(
        &self,
        condition: impl FnMut(&Stats) -> bool,
    ) -> Result<Stats, Stopped> {
        let mut stats = self.stats.clone();
        stats.wait_for(condition).await.map(|s| *s).map_err(|_| Stopped)
    }

    /// Logs in with the credential `secret` (`hdc_…`) from the next connection on; the current
    /// connection, if any, goes on. For a device that renewed its credential
    /// (`devices/{id}/identity/credential`, see [`crate::identity`]).
    ///
    /// # Errors
    /// [`Stopped`] when the task has ended.
    pub async fn set_password(&self, secret: &str) -> Result<(), Stopped> {
        let secret = bytes::Bytes::copy_from_slice(secret.as_bytes());
        self.commands.send(Command::Renew(Renewed::Password(secret))).await.map_err(|_| Stopped)
    }

    /// Presents the client certificate `chain_pem` with its private key `key_pem` from the next
    /// TLS connection on; the current connection, if any, goes on. For a device that renewed its
    /// certificate (`devices/{id}/identity/csr`, see [`crate::identity`]).
    ///
    /// # Errors
    /// [`ConfigError::ClientCertificate`] (in [`RenewError::Config`]) when the PEM is unusable or
    /// the device does not connect over TLS; [`RenewError::Stopped`] when the task has ended.
    pub async fn set_client_certificate(
        &self,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), RenewError> {
        let dialer = self.dialer.with_client_certificate(chain_pem, key_pem)?;
        self.commands
            .send(Command::Renew(Renewed::Transport(Box::new(dialer))))
            .await
            .map_err(|_| RenewError::Stopped(Stopped))
    }

    /// Asks the task to send DISCONNECT and stop. Messages still buffered or unacknowledged are
    /// lost; wait for [`Stats::acked`] first to avoid that.
    ///
    /// # Errors
    /// [`Stopped`] when the task has already ended.
    pub async fn shutdown(&self) -> Result<(), Stopped> {
        self.commands.send(Command::Shutdown).await.map_err(|_| Stopped)
    }
}

//! The public face of a device: [`Device::spawn`] starts its task, [`DeviceHandle`] talks to it.

use bytes::Bytes;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::agent::Agent;
use crate::config::{DeviceConfig, Validated};
use crate::error::{AgentError, ConfigError, Stopped};
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
    /// Telemetry messages published for the first time (resends not counted).
    pub sent: u64,
    /// Telemetry messages the server acknowledged (PUBACK).
    pub acked: u64,
    /// Telemetry messages waiting in the offline buffer now.
    pub buffered: u64,
    /// Telemetry messages dropped from the full offline buffer (the oldest go first).
    pub dropped: u64,
}

/// A request from a [`DeviceHandle`] to the device task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Publish this telemetry payload.
    Telemetry(Bytes),
    /// Send DISCONNECT and stop.
    Shutdown,
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
    pub fn spawn(
        config: DeviceConfig,
    ) -> Result<(DeviceHandle, JoinHandle<Result<(), AgentError>>), ConfigError> {
        let config = Validated::new(config)?;
        let config_id = config.client_id.as_str().to_owned();
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (stats_tx, stats_rx) = watch::channel(Stats::default());
        let agent = Agent::new(config, commands_rx, stats_tx, StdRng::from_os_rng());
        let span = tracing::info_span!("device", device_id = config_id);
        let task = tokio::spawn(agent.run().instrument(span));
        Ok((DeviceHandle { commands: commands_tx, stats: stats_rx }, task))
    }
}

/// Sends telemetry through a device task and reads its [`Stats`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<Stats>,
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
        self.commands.send(Command::Telemetry(telemetry.to_payload())).await.map_err(|_| Stopped)
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

    /// Asks the task to send DISCONNECT and stop. Messages still buffered or unacknowledged are
    /// lost; wait for [`Stats::acked`] first to avoid that.
    ///
    /// # Errors
    /// [`Stopped`] when the task has already ended.
    pub async fn shutdown(&self) -> Result<(), Stopped> {
        self.commands.send(Command::Shutdown).await.map_err(|_| Stopped)
    }
}

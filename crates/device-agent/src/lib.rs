//! The device side of Herd: a device connects with its credential, publishes telemetry, events
//! and its own reports, and receives what the server sends to its subscriptions.
//!
//! [`Device::spawn`] takes a [`DeviceConfig`] and starts one Tokio task that owns the device's
//! MQTT connection (3.1.1 or 5, built on `mqtt-codec`) over TCP, TLS, WebSocket or WebSocket over
//! TLS ([`Transport`]):
//!
//! - it connects with client id = user name = the device id and the credential secret as password,
//!   asking for a persistent session (Clean Start 0 with a Session Expiry Interval on MQTT 5,
//!   Clean Session 0 on 3.1.1), optionally from a chosen local address;
//! - it sends PINGREQ every keep-alive interval, and gives the connection up when one goes
//!   unanswered;
//! - when the connection fails it reconnects after a jittered exponential back-off
//!   ([`backoff_delay`]), so a fleet does not reconnect in lock-step after an outage; a refusal
//!   that retrying cannot fix (bad credentials, device not allowed) ends the task with
//!   [`AgentError::Refused`];
//! - messages ([`Telemetry`] and batches of them, [`Event`]s, and anything on a [`Channel`] of the
//!   device's subtree) go out at QoS 1 and stay in flight until their PUBACK; after a
//!   reconnection, unacknowledged messages are sent again (DUP), then the offline buffer in order.
//!   The buffer is bounded ([`DeviceConfig::offline_buffer_capacity`]): when full, the oldest
//!   message is dropped and counted in [`Stats::dropped`]. With an [`OfflineJournal`] the buffer
//!   is also kept on disk until acknowledged, and survives a restart of the process;
//! - with [`Device::spawn_with_inbox`] it subscribes to [`DeviceConfig::subscriptions`] (below
//!   `devices/{id}/`, such as `commands/#`) and hands what arrives to an [`Inbox`]: the hook through
//!   which twins, commands, jobs and OTA updates reach the device.
//!
//! [`commands`] receives direct commands from that inbox, asks for the pending ones after each
//! connection, skips repeats and answers them.
//! [`twin`] reads the device twin, reports state and parses the desired states and deltas Herd
//! pushes, over that inbox.
//!
//! A device Herd has never seen gets its credential first through [`provisioning`] (zero-touch:
//! an enrollment group, a derived key or a claim code, over HTTPS).
//!
//! [`DeviceHandle`] is the cheap, cloneable way in: it publishes, reads [`Stats`], cuts the
//! connection for failure tests ([`DeviceHandle::sever`]) and stops the task. An idle TCP device
//! costs one task, a socket and its small state (no read or write buffer beyond a few hundred
//! bytes), so a simulator runs thousands in one process.
//!
//! ```no_run
//! use device_agent::{Device, DeviceConfig, Protocol, Telemetry};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = DeviceConfig::new("herd.example.com", 1883, "sensor-1", "hdc_0123…");
//! config.protocol = Protocol::V311;
//! let (device, task) = Device::spawn(config)?;
//! device.telemetry(&Telemetry::new().with_field("temperature", 21.5)).await?;
//! device.wait_for_stats(|s| s.acked == 1).await?;
//! device.shutdown().await?;
//! task.await??;
//! # Ok(())
//! # }
//! ```

mod agent;
mod backoff;
pub mod commands;
mod config;
mod device;
mod error;
pub mod identity;
pub mod jobs;
mod journal;
mod link;
mod message;
mod offline_buffer;
pub mod provisioning;
mod telemetry;
mod transport;
pub mod twin;

pub use crate::backoff::{Backoff, backoff_delay};
pub use crate::config::{DeviceConfig, OfflineJournal, Protocol};
pub use crate::device::{COMMAND_CAPACITY, Device, DeviceHandle, DeviceTask, Inbox, Stats};
pub use crate::error::{AgentError, ConfigError, RenewError, Stopped};
pub use crate::message::{Channel, Event, Incoming, InvalidSubtopic, Subtopic};
pub use crate::telemetry::Telemetry;
pub use crate::transport::{TlsOptions, Transport};
pub use mqtt_codec::ReasonCode;

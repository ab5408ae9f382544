//! The device side of Herd: a device connects with its credential and publishes telemetry.
//!
//! [`Device::spawn`] takes a [`DeviceConfig`] and starts one Tokio task that owns the device's
//! MQTT connection (3.1.1 or 5, over TCP, built on `mqtt-codec`):
//!
//! - it connects with client id = user name = the device id and the credential secret as password,
//!   asking for a persistent session (Clean Start 0 with a Session Expiry Interval on MQTT 5,
//!   Clean Session 0 on 3.1.1);
//! - it sends PINGREQ every keep-alive interval, and gives the connection up when one goes
//!   unanswered;
//! - when the connection fails it reconnects after a jittered exponential back-off
//!   ([`backoff_delay`]); a refusal that retrying cannot fix (bad credentials, device not allowed)
//!   ends the task with [`AgentError::Refused`];
//! - telemetry ([`Telemetry`], published by [`DeviceHandle::telemetry`]) goes to
//!   `devices/{id}/telemetry` at QoS 1 and stays in flight until its PUBACK; after a reconnection,
//!   unacknowledged messages are sent again (DUP), then the offline buffer in order. The buffer is
//!   bounded ([`DeviceConfig::offline_buffer_capacity`]): when full, the oldest message is dropped
//!   and counted in [`Stats::dropped`].
//!
//! [`DeviceHandle`] is the cheap, cloneable way in: it sends telemetry, reads [`Stats`] and stops
//! the task.
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
mod config;
mod device;
mod error;
mod offline_buffer;
mod telemetry;

pub use crate::backoff::{Backoff, backoff_delay};
pub use crate::config::{DeviceConfig, Protocol};
pub use crate::device::{COMMAND_CAPACITY, Device, DeviceHandle, Stats};
pub use crate::error::{AgentError, ConfigError, Stopped};
pub use crate::telemetry::Telemetry;
pub use mqtt_codec::ReasonCode;

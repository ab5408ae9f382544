//! `herd-sim`: many virtual devices against a Herd server, for demos, load and soak runs.
//!
//! A run ([`run`]) takes a [`SimConfig`]: it provisions the devices through the REST API (one
//! bulk import, then a credential per device unless cached, see [`provision`]), starts them with
//! the device agent at a ramp rate, and lets each behave by its [`profile::DeviceModel`]:
//! telemetry of realistic values (sines plus noise, a draining battery), random events, and
//! injected failures (random disconnections, flaky devices, devices dropping offline). A
//! [`Report`] hears the progress once a second; the end is a [`Summary`].
//!
//! A fleet larger than one process can hold is split into shards ([`shard`]): the parent
//! provisions everything and re-executes the binary once per shard ([`processes`]), each child
//! reporting to it in JSON lines. The binary's flags live in [`cli`].

pub mod cli;
mod config;
pub mod fleet;
pub mod processes;
pub mod profile;
pub mod provision;
pub mod shard;
mod summary;

pub use crate::config::SimConfig;
pub use crate::fleet::{Report, Silent, run};
pub use crate::summary::{ErrorCounts, ErrorKind, Progress, Summary, ZeroTouch};

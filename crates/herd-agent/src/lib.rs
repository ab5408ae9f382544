//! `herd-agent`, the Herd device agent daemon for Linux devices.
//!
//! It reads a configuration file ([`settings`]), connects to Herd as its device through the
//! `device-agent` SDK with an on-disk offline journal, reports the device's facts after every
//! connection and a heartbeat with health metrics every interval ([`system`]), and stops
//! gracefully on SIGTERM or Ctrl-C ([`daemon`]). `herd-agent --once` sends the facts and one
//! heartbeat and exits. It renews its client certificate before it ends, and its certificate or
//! credential when Herd asks ([`renewal`]). A device without a credential yet registers itself
//! through an enrollment group first (zero-touch, [`provision`]). It answers Herd's direct
//! commands with the executables of its `[commands]` section ([`commands`]), and applies its desired
//! state: its own settings under `agent`, the rest through an optional hook ([`desired`]).
//! Installing it is described in `docs/agent.md`.

pub mod commands;
pub mod daemon;
pub mod desired;
pub mod provision;
pub mod renewal;
pub mod settings;
pub mod system;

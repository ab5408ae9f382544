//! The `herd` binary's library: the server (`herd serve`) and the operator CLI.
//!
//! - [`config`] turns the default file, a `--config` file, `HERD_SECTION__KEY` variables and flags
//!   into a validated [`config::Config`], reporting every problem at once.
//! - [`serve`] opens the store, bootstraps the first admin token, serves the REST API from
//!   `http-api` and MQTT through the gateway, and shuts down in a fixed order ([`serve::run`] takes bound listeners and a
//!   shutdown future, so tests bind port 0 and stop it when they like).
//! - [`gateway`] is the MQTT device gateway: the TCP and TLS listeners, device authentication and
//!   per-device ACLs on top of `mqtt-broker`.
//! - [`identity`] holds the device certificate authority (`identity::ca`), created on first start
//!   or loaded from configured files.
//! - [`commands`] delivers direct commands to devices over MQTT, reads their answers and expires
//!   and times out the rest; it is the REST API's `CommandDispatcher`.
//! - [`profiles`] drains the durable recompute queue of configuration profiles into device twins
//!   and hands the changed ones to the twin task, which pushes them to devices.
//! - [`websocket`] serves MQTT over WebSocket at `/mqtt` on the HTTP listener.
//! - [`mqtt_persist`] keeps the broker's persistent sessions and retained messages in the store, so
//!   that they survive a restart.
//! - [`cli`] is the command line: `herd serve` and the operator commands, which talk to a server's
//!   REST API like any other client.

pub mod cli;
pub mod commands;
pub mod config;
pub mod device_request;
pub mod gateway;
pub mod identity;
pub mod jobs;
pub mod mqtt_persist;
pub mod profiles;
pub mod serve;
pub mod twin;
pub mod websocket;

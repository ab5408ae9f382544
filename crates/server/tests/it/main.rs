//! End-to-end tests of the `herd` binary: the README tour, the operator CLI against an in-process
//! server, the `herd serve` process itself (startup, configuration errors, shutdown), the MQTT
//! device gateway with real clients, and interoperability with the paho-mqtt (Python) and rumqttc
//! client libraries.

mod agent_crash;
mod cli;
mod interop_paho;
mod interop_rumqttc;
mod mqtt;
mod persistence;
mod postgres;
mod process;
mod tour;

use std::process::{Command, Output};

/// Runs the `herd` binary with arguments and extra environment, without the caller's HERD_* vars.
pub(crate) fn herd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERD_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run herd")
}

/// Standard output as text.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

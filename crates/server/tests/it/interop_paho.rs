//! Interoperability with paho-mqtt (Python), the most used MQTT client library, over MQTT 3.1.1 and
//! 5 on TCP, TLS and WebSocket (`/mqtt`), against the real server.
//!
//! The scenarios are the Python scripts in `tests/paho/` (see their docstrings):
//! - `round_trip.py`: QoS 0, 1 and 2 round trips within a device's own topics, binary and large
//!   payloads, a retained message, MQTT 5 message properties, UNSUBSCRIBE;
//! - `session.py`: a persistent session resumed with the message queued while it was offline and
//!   the message it had not acknowledged;
//! - `refusals.py`: refused CONNECTs (wrong password, user name not the device id, inactive
//!   device) and the ACL on SUBSCRIBE and PUBLISH;
//! - `v5_features.py` (MQTT 5 only): No Local, Subscription Identifiers, Topic Aliases, Retain
//!   Handling and Retain As Published, and the client's Maximum Packet Size and Receive Maximum.
//!
//! Each test starts a server (with its TLS listener), creates the devices a script needs through
//! the REST API, runs the script once per protocol version and fails with the script's output when
//! it exits non-zero. Tests print a skip line when python3 or paho-mqtt is not installed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use test_support::{TestCerts, TestServer};
use tokio::process::Command;

use crate::mqtt::{active_device, registered_device};

/// How long one script may run; each of its waits has its own 15 s deadline.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    Tls,
    WebSocket,
}

/// Whether python3 can import paho-mqtt; prints why the test is skipped if not.
#[expect(clippy::print_stderr, reason = "a skipped test says why, where cargo test shows it")]
fn paho_installed() -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        eprintln!(
            "skipping the paho-mqtt interop checks: python3 cannot import paho.mqtt.client \
             (pip install paho-mqtt)"
        );
    }
    found
}

/// Both protocol versions, as the scripts name them, with a tag for device ids.
const BOTH: &[(&str, &str)] = &[("3.1.1", "v311"), ("5", "v5")];

/// MQTT 5 only.
const V5_ONLY: &[(&str, &str)] = &[("5", "v5")];

/// Runs `script` over `transport` with each of `protocols` in turn, each time as fresh devices.
async fn check(script: &str, transport: Transport, protocols: &[(&str, &str)]) {
    if !paho_installed() {
        return;
    }
    let certs = TestCerts::new();
    let tls = certs.config();
    let server = TestServer::start_with(|c| c.mqtt.tls = Some(tls)).await;
    let port = match transport {
        Transport::Tcp => server.mqtt_addr.port(),
        Transport::Tls => server.mqtts_addr.expect("TLS listener").port(),
        Transport::WebSocket => server.addr.port(),
    };
    for &(protocol, tag) in protocols {
        // An active device, a second active one, and a registered one that is not active yet.
        let device = format!("{tag}-dev");
        let other = format!("{tag}-other");
        let inactive = format!("{tag}-inactive");
        let token = active_device(&server, &device).await;
        let other_token = active_device(&server, &other).await;
        let inactive_token = registered_device(&server, &inactive).await;
        let transport_arg = match transport {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::WebSocket => "ws",
        };
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho").join(script);
        let run = Command::new("python3")
            // -B: no __pycache__ in the source tree.
            .arg("-B")
            .arg(&path)
            .args(["--transport", transport_arg, "--port", &port.to_string()])
            .args(["--protocol", protocol])
            .arg("--ca")
            .arg(certs.path("ca.pem"))
            .args(["--device", &device, "--token", &token])
            .args(["--other-device", &other, "--other-token", &other_token])
            .args(["--inactive-device", &inactive, "--inactive-token", &inactive_token])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{script} ({transport:?}, MQTT {protocol}) timed out"))
            .expect("run python3");
        assert!(
            output.status.success(),
            "{script} ({transport:?}, MQTT {protocol}) failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
        );
    }
}

#[tokio::test]
async fn paho_round_trips_over_tcp() {
    check("round_trip.py", Transport::Tcp, BOTH).await;
}

#[tokio::test]
async fn paho_round_trips_over_tls() {
    check("round_trip.py", Transport::Tls, BOTH).await;
}

#[tokio::test]
async fn paho_round_trips_over_websocket() {
    check("round_trip.py", Transport::WebSocket, BOTH).await;
}

#[tokio::test]
async fn paho_persistent_sessions_over_tcp() {
    check("session.py", Transport::Tcp, BOTH).await;
}

#[tokio::test]
async fn paho_persistent_sessions_over_tls() {
    check("session.py", Transport::Tls, BOTH).await;
}

#[tokio::test]
async fn paho_persistent_sessions_over_websocket() {
    check("session.py", Transport::WebSocket, BOTH).await;
}

#[tokio::test]
async fn paho_refusals_over_tcp() {
    check("refusals.py", Transport::Tcp, BOTH).await;
}

#[tokio::test]
async fn paho_refusals_over_tls() {
    check("refusals.py", Transport::Tls, BOTH).await;
}

#[tokio::test]
async fn paho_refusals_over_websocket() {
    check("refusals.py", Transport::WebSocket, BOTH).await;
}

#[tokio::test]
async fn paho_v5_features_over_tcp() {
    check("v5_features.py", Transport::Tcp, V5_ONLY).await;
}

#[tokio::test]
async fn paho_v5_features_over_tls() {
    check("v5_features.py", Transport::Tls, V5_ONLY).await;
}

#[tokio::test]
async fn paho_v5_features_over_websocket() {
    check("v5_features.py", Transport::WebSocket, V5_ONLY).await;
}

//! Interoperability with the Mosquitto command-line clients over TCP, when they are installed.
//!
//! The broker listens on 127.0.0.1 port 0 (never 1883, where a Mosquitto broker runs on these
//! machines). Each test skips, saying why, when `mosquitto_sub` or `mosquitto_pub` is not on `PATH`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mqtt_broker::{AllowAll, Broker, BrokerConfig};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Starts a broker on a TCP port and returns the port and the token that stops it.
async fn tcp_broker() -> (u16, CancellationToken) {
    let shutdown = CancellationToken::new();
    let (broker, handle) = Broker::new(BrokerConfig::default(), shutdown.clone());
    tokio::spawn(broker.run());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let auth = Arc::new(AllowAll);
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let handle = handle.clone();
                    let auth = Arc::clone(&auth);
                    tokio::spawn(async move {
                        let _ = handle.serve(stream, Some(peer), auth.as_ref()).await;
                    });
                }
            }
        }
    });
    (port, shutdown)
}

async fn mosquitto_round_trip(protocol: &str, qos: &str, retain: bool) {
    if !installed("mosquitto_sub") || !installed("mosquitto_pub") {
        #[expect(clippy::print_stderr, reason = "a skipped test says why")]
        {
            eprintln!("skipped: mosquitto_sub / mosquitto_pub not on PATH");
        }
        return;
    }
    let (port, shutdown) = tcp_broker().await;
    let port = port.to_string();
    let topic = format!("interop/{protocol}/{qos}");
    let mut publish = vec!["-p", &port, "-h", "127.0.0.1", "-V", protocol, "-q", qos, "-t", &topic];
    publish.extend(["-m", "hello"]);
    if retain {
        // A retained message published before the subscriber exists.
        publish.push("-r");
        let status = Command::new("mosquitto_pub").args(&publish).status().await.unwrap();
        assert!(status.success());
    }
    let sub = Command::new("mosquitto_sub")
        .args(["-p", &port, "-h", "127.0.0.1", "-V", protocol, "-q", qos, "-t", &topic])
        .args(["-C", "1", "-W", "10", "-v"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    if !retain {
        // Publish until the subscriber has subscribed and received one message.
        let pid = sub.id();
        for _ in 0..50 {
            let status = Command::new("mosquitto_pub").args(&publish).status().await.unwrap();
            assert!(status.success());
            tokio::time::sleep(Duration::from_millis(100)).await;
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                break;
            }
        }
    }
    let output = tokio::time::timeout(Duration::from_secs(15), sub.wait_with_output())
        .await
        .expect("mosquitto_sub finished")
        .unwrap();
    assert!(output.status.success(), "mosquitto_sub failed: {output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), format!("{topic} hello"));
    shutdown.cancel();
}

#[tokio::test]
async fn mosquitto_clients_v311_qos1() {
    mosquitto_round_trip("mqttv311", "1", false).await;
}

#[tokio::test]
async fn mosquitto_clients_v5_qos2() {
    mosquitto_round_trip("mqttv5", "2", false).await;
}

#[tokio::test]
async fn mosquitto_clients_v5_retained() {
    mosquitto_round_trip("mqttv5", "1", true).await;
}

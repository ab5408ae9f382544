//! Test helpers shared by the workspace's integration tests.
//!
//! [`TestServer`] runs the real server in-process: HTTP and MQTT (and MQTT over TLS when the test
//! configures a certificate) on `127.0.0.1:0`, SQLite in a temporary
//! directory, a known admin token, shutdown when stopped or dropped. Clients are real HTTP clients.
//! [`TestCerts`] makes a throwaway CA and server certificate for the TLS listener and its clients.

// The standing exception of STYLE.md: test helpers fail loudly.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests that call them"
)]

mod certs;
mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use server::config::{Config, Sources, load};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::certs::TestCerts;
pub use crate::proxy::TcpProxy;

/// The admin token every [`TestServer`] is bootstrapped with.
pub const ADMIN_TOKEN: &str = "herd_test_admin_token_0123456789abcdef";

/// A running in-process server for one test.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// The bound MQTT (TCP) address.
    pub mqtt_addr: SocketAddr,
    /// The bound MQTT over TLS address, when the test configured `config.mqtt.tls` (its `listen`
    /// may be port 0).
    pub mqtts_addr: Option<SocketAddr>,
    /// The admin token's secret.
    pub admin_token: String,
    /// The server's data directory (removed when the server is dropped).
    pub data_dir: tempfile::TempDir,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server on SQLite in a fresh temporary directory.
    ///
    /// # Panics
    /// When the server cannot start: a test cannot go on without it.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after letting the test adjust the configuration.
    ///
    /// # Panics
    /// When the server cannot start.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let mut config = test_config(data_dir.path());
        adjust(&mut config);
        let listener =
            server::serve::bind_http(config.http_listen).await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mqtt_listener = server::gateway::bind_mqtt(
            config.mqtt.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await
        .expect("bind MQTT on 127.0.0.1:0");
        let mqtt_addr = mqtt_listener.local_addr().expect("local address");
        let tls_listener = match &config.mqtt.tls {
            Some(tls) => {
                Some(server::gateway::bind_mqtt_tls(tls).await.expect("bind MQTT over TLS"))
            }
            None => None,
        };
        let mqtts_addr =
            tls_listener.as_ref().map(|l| l.listener.local_addr().expect("local address"));
        let listeners =
            server::gateway::MqttListeners { tcp: Some(mqtt_listener), tls: tls_listener };
        let stop = CancellationToken::new();
        let admin_token = config.bootstrap_admin_token.clone().unwrap_or_default();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let shutdown = async move { stop.cancelled().await };
                server::serve::run(config, listener, listeners, shutdown).await
            })
        };
        let server = Self {
            base_url: format!("http://{addr}"),
            addr,
            mqtt_addr,
            mqtts_addr,
            admin_token,
            data_dir,
            stop,
            task: Some(task),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..500 {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("test server at {} did not become ready", self.base_url);
    }

    /// Creates device `id`, activates it and issues a credential through the REST API; returns the
    /// credential's secret (what the device sends as its MQTT password).
    ///
    /// # Panics
    /// When a request does not succeed.
    pub async fn active_device(&self, id: &str) -> String {
        let (status, body) = self.post("/api/v1/devices", &serde_json::json!({ "id": id })).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .patch(&format!("/api/v1/devices/{id}"), &serde_json::json!({ "state": "active" }))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) =
            self.post(&format!("/api/v1/devices/{id}/credentials"), &serde_json::json!({})).await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("a token in the response").to_owned()
    }

    /// Polls `GET /api/v1/devices/{id}` until `condition` holds for its JSON (presence and agent
    /// reports are recorded asynchronously); returns that JSON.
    ///
    /// # Panics
    /// When the request fails, or the condition does not hold within 30 s.
    pub async fn device_until(
        &self,
        id: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (status, body) = self.get(&format!("/api/v1/devices/{id}")).await;
            assert_eq!(status, 200, "{body}");
            if condition(&body) {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "the device never got there: {body:#}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// An absolute URL for a path on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The path of the SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.path().join("herd.db")
    }

    /// Sends an authenticated GET with the admin token and returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Sends an authenticated POST with a JSON body and returns status and JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(&self.admin_token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Sends an authenticated PATCH with a JSON body and returns status and JSON body.
    pub async fn patch(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .patch(self.url(path))
            .bearer_auth(&self.admin_token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Sends an authenticated DELETE and returns status and JSON body.
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .delete(self.url(path))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Stops the server gracefully and waits for it.
    ///
    /// # Panics
    /// When the server ended with an error.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server shut down cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The configuration a test server starts from: defaults, data in `dir`, HTTP on port 0.
///
/// # Panics
/// When the defaults do not validate (a bug the config tests would also show).
pub fn test_config(dir: &Path) -> Config {
    let sources = Sources {
        file: None,
        env: Vec::new(),
        flags: vec![
            ("server", "data_dir", toml_string(&dir.display().to_string())),
            ("http", "listen", toml_string("127.0.0.1:0")),
            ("log", "level", toml_string("warn")),
        ],
    };
    let mut config = load(&sources).expect("test configuration is valid");
    config.bootstrap_admin_token = Some(ADMIN_TOKEN.to_owned());
    config
}

fn toml_string(s: &str) -> server::config::FlagValue {
    server::config::FlagValue::String(s.to_owned())
}

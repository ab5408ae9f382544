//! The `herd serve` process: startup on the embedded default, bootstrap, configuration errors,
//! a clear message when the port is taken, and a clean exit on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{herd, stderr, stdout};

/// A `herd serve` child process and the lines it logs.
pub(crate) struct Serving {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The HTTP address.
    pub(crate) addr: String,
    /// The MQTT (TCP) address, or `disabled`.
    pub(crate) mqtt: String,
}

/// Starts `herd serve` with `args` and `env` (and none of the caller's `HERD_*` variables) and waits
/// until it serves.
pub(crate) fn spawn_serve(args: &[&str], env: &[(&str, &str)]) -> Serving {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.arg("serve")
        .args(args)
        .arg("--log-format")
        .arg("json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("HERD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn herd serve");
    let err = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::sync_channel(1024);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let (addr, mqtt) = loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!("herd serve did not start; it logged:\n{}", seen.join("\n"))
        });
        if line.contains("herd is serving") {
            let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
            let field = |name: &str| v[name].as_str().expect("address field").to_owned();
            break (field("http"), field("mqtt"));
        }
        seen.push(line);
    };
    Serving { child, lines, addr, mqtt }
}

impl Serving {
    /// Stops the process with SIGTERM (a graceful shutdown) and waits for it to exit.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success();
        assert!(ok, "kill -TERM failed");
        // The process closes stderr when it exits; until then, keep draining its log lines.
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return self.child.wait().expect("wait");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("herd serve did not exit within 60 s of SIGTERM");
                }
            }
        }
    }
}

impl Serving {
    /// Kills the process with SIGKILL: no shutdown code runs.
    pub(crate) fn kill9(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-KILL", &pid]).status().expect("kill").success());
        let status = self.child.wait().expect("wait");
        assert!(!status.success());
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_on_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serving =
        spawn_serve(&["--data-dir", data.to_str().unwrap(), "--http-listen", "127.0.0.1:0"], &[]);
    let base = format!("http://{}", serving.addr);

    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(reqwest::get(format!("{base}/readyz")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{base}/api/v1/devices")).await.unwrap().status(), 401);

    // The generated admin token is in <data-dir>/admin-token, readable only by its owner, and works.
    let token_file = data.join("admin-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    assert!(token.starts_with("herd_") && token.len() == 5 + 64, "{token}");
    // The device CA was created in <data-dir>/ca/, its key readable only by its owner.
    let ca_cert = std::fs::read_to_string(data.join("ca/ca.pem")).unwrap();
    assert!(ca_cert.starts_with("-----BEGIN CERTIFICATE-----"), "{ca_cert}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("ca/ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/devices"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let status = tokio::task::block_in_place(|| serving.terminate());
    assert!(status.success(), "herd serve exited with {status} after SIGTERM");
    assert!(data.join("herd.db").exists());
}

/// Acknowledged writes survive kill -9: a 2xx is sent after the transaction committed.
#[tokio::test(flavor = "multi_thread")]
async fn admin_token_from_environment_and_acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let secret = "herd_env_supplied_secret_123456";
    let args = ["--data-dir", data, "--http-listen", "127.0.0.1:0"];
    let serving = spawn_serve(&args, &[("HERD_ADMIN_TOKEN", secret)]);
    let env = [("HERD_URL", format!("http://{}", serving.addr)), ("HERD_TOKEN", secret.to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = tokio::task::block_in_place(|| herd(&["device", "create", "kept-1"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !dir.path().join("admin-token").exists(),
        "no token file when the token came from the environment"
    );
    let out = tokio::task::block_in_place(|| {
        herd(&["device", "update", "kept-1", "--state", "active"], &env)
    });
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::task::block_in_place(|| serving.kill9());

    // A second start on the same data: the acknowledged writes are there, bootstrap does not run again.
    let serving = spawn_serve(&args, &[]);
    let env = [("HERD_URL", format!("http://{}", serving.addr)), ("HERD_TOKEN", secret.to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out =
        tokio::task::block_in_place(|| herd(&["device", "get", "kept-1", "-o", "json"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    let device: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((device["state"].as_str(), device["version"].as_u64()), (Some("active"), Some(2)));
    let out = tokio::task::block_in_place(|| herd(&["audit", "verify"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("admin-token").exists());
    assert!(tokio::task::block_in_place(|| serving.terminate()).success());
}

#[test]
fn port_in_use_names_the_port_and_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out =
        herd(&["serve", "--data-dir", dir.path().to_str().unwrap(), "--http-listen", &addr], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&addr) && err.contains("already in use") && err.contains("--http-listen"),
        "{err}"
    );
}

#[test]
fn invalid_configuration_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.toml");
    std::fs::write(&file, "[http]\nlisten = \"localhost\"\n[log]\nformat = \"xml\"\n").unwrap();
    let out =
        herd(&["serve", "--config", file.to_str().unwrap()], &[("HERD_STORE__URL", "mysql://db")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in ["3 problems", "http.listen", "log.format", "store.url"] {
        assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
    let out = herd(&["serve"], &[("HERD_HTTP__NO_SUCH_KEY", "1")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown key http.no_such_key"), "{}", stderr(&out));
}

#[test]
fn config_default_prints_the_embedded_file() {
    let out = herd(&["config", "default"], &[]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim_end(), server::config::DEFAULT_CONFIG.trim_end());
    let parsed: toml::Table = stdout(&out).parse().expect("the default config is TOML");
    assert!(parsed.contains_key("http"));
}

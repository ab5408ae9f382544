//! The brokers under test: `target/release/herd` and Mosquitto, each started on a free port with a
//! fresh configuration, plus what the scenarios read from their processes (RSS, CPU time).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use tokio::sync::mpsc;

/// QoS 1 messages a client may have unacknowledged (below Herd's default Receive Maximum of 64).
pub(crate) const INFLIGHT: u16 = 32;
/// A scenario gives up when nothing has arrived for this long.
pub(crate) const STALL: Duration = Duration::from_secs(5);
/// The application Herd's fan-in subscriber connects as, and its secret.
const APP_NAME: &str = "bench-subscriber";
const APP_SECRET: &str = "bench-subscriber-secret-0123456789";
/// The environment variable whose words run Herd under a profiler (`heaptrack`, `perf record -g --`).
pub(crate) const WRAPPER_VAR: &str = "HERD_BENCH_WRAPPER";

/// The MQTT client id (and, on Herd, device id) of device `i`.
pub(crate) fn device_id(i: usize) -> String {
    format!("bench-{i:05}")
}

/// A broker under test, started by this run and killed when dropped.
#[derive(Debug)]
pub(crate) struct Broker {
    pub(crate) name: &'static str,
    port: u16,
    child: Child,
    /// The broker's own process: the child, or under `HERD_BENCH_WRAPPER` the `herd` process the
    /// wrapper started. RSS and CPU time are read from it.
    pid: u32,
    /// Device passwords by index (Herd); `None`: anonymous (Mosquitto).
    passwords: Option<Vec<String>>,
    /// Herd's HTTP base URL, for `/metrics`.
    http: Option<String>,
    /// An application's user name and secret (Herd): the fan-in subscriber, which no device could
    /// be. `None`: the subscriber is an anonymous client (Mosquitto).
    app: Option<(String, String)>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Options for device `i`: its credential on Herd, anonymous on Mosquitto.
    pub(crate) fn options(&self, i: usize, keep_alive: Duration) -> MqttOptions {
        let id = device_id(i);
        let mut o = MqttOptions::new(id.clone(), "127.0.0.1", self.port);
        o.set_keep_alive(keep_alive);
        o.set_clean_session(true);
        o.set_inflight(INFLIGHT);
        if let Some(p) = &self.passwords {
            o.set_credentials(id, p[i].clone());
        }
        o
    }

    /// Connects device `i` and waits for its CONNACK.
    pub(crate) async fn connect(&self, i: usize, cap: usize) -> Result<(AsyncClient, EventLoop)> {
        self.connect_with(self.options(i, Duration::from_secs(60)), cap).await
    }

    /// Connects the fan-in subscriber: Herd's bench application, or an anonymous client that uses
    /// the client id of device `anonymous_id`.
    pub(crate) async fn connect_subscriber(
        &self,
        anonymous_id: usize,
        cap: usize,
    ) -> Result<(AsyncClient, EventLoop)> {
        match &self.app {
            Some((name, secret)) => {
                let mut o = MqttOptions::new(name.clone(), "127.0.0.1", self.port);
                o.set_keep_alive(Duration::from_secs(60));
                o.set_clean_session(true);
                o.set_inflight(INFLIGHT);
                o.set_credentials(name.clone(), secret.clone());
                self.connect_with(o, cap).await
            }
            None => self.connect(anonymous_id, cap).await,
        }
    }

    async fn connect_with(
        &self,
        options: MqttOptions,
        cap: usize,
    ) -> Result<(AsyncClient, EventLoop)> {
        let id = options.client_id();
        let (client, mut ev) = AsyncClient::new(options, cap);
        // Without it Nagle's algorithm and delayed ACKs, not the broker, set the QoS 1 pace.
        let mut net = ev.network_options();
        net.set_tcp_nodelay(true);
        ev.set_network_options(net);
        loop {
            match tokio::time::timeout(STALL, ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, ev)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("{}: connect {id}: {e}", self.name),
                Err(_) => bail!("{}: connect {id} timed out", self.name),
            }
        }
    }

    /// The broker process's resident set size, in KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// CPU time the broker process has used so far (user + system, all its threads, exited ones
    /// included), from `/proc/PID/stat`, at the resolution of one clock tick.
    pub(crate) fn cpu_time(&self) -> Result<Duration> {
        let stat = ProcStat::read(self.pid)?;
        let ticks = stat.utime + stat.stime;
        Ok(Duration::from_micros(ticks * 1_000_000 / clock_ticks()))
    }

    /// Waits until the broker is idle (under 20 ms of CPU in a 500 ms window), at most 15 s, so
    /// that work left over from the previous scenario (closing 19,000 connections, presence
    /// writes) does not run during the next one; returns whether it settled.
    pub(crate) async fn settle(&self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let Ok(mut before) = self.cpu_time() else { return false };
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(now) = self.cpu_time() else { return false };
            if now.saturating_sub(before) < Duration::from_millis(20) {
                return true;
            }
            before = now;
        }
        false
    }

    /// Herd's `mqtt_messages_received_total{qos="1"}`.
    pub(crate) async fn received_qos1(&self) -> Result<Option<f64>> {
        let Some(http) = &self.http else { return Ok(None) };
        let text = reqwest::get(format!("{http}/metrics")).await?.text().await?;
        let value = text
            .lines()
            .filter(|l| l.starts_with("mqtt_messages_received_total") && l.contains("qos=\"1\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Ok(Some(value))
    }
}

/// Clock ticks per second, the unit of `utime` and `stime` in `/proc/PID/stat`: `getconf CLK_TCK`,
/// asked once; 100 (Linux's `USER_HZ` on every common architecture) when `getconf` fails.
pub(crate) fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        let asked = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
            .filter(|&t| t > 0);
        asked.unwrap_or_else(|| {
            eprintln!("warning: `getconf CLK_TCK` failed; assuming 100 clock ticks per second");
            100
        })
    })
}

/// The fields of `/proc/PID/stat` the benchmark reads.
#[derive(Debug)]
struct ProcStat {
    comm: String,
    ppid: u32,
    /// Clock ticks in user mode.
    utime: u64,
    /// Clock ticks in kernel mode.
    stime: u64,
}

impl ProcStat {
    fn read(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        Self::parse(&text).with_context(|| format!("parse {path}"))
    }

    /// `pid (comm) state ppid … utime stime …`; `comm` may itself hold spaces and parentheses.
    fn parse(text: &str) -> Result<Self> {
        let open = text.find('(').context("no (comm")?;
        let close = text.rfind(')').context("no comm)")?;
        let comm = text[open + 1..close].to_owned();
        // After `comm`: state (field 3), ppid (4), …, utime (14), stime (15).
        let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
        let field = |n: usize| -> Result<u64> {
            Ok(rest.get(n - 3).with_context(|| format!("no field {n}"))?.parse()?)
        };
        Ok(Self { comm, ppid: u32::try_from(field(4)?)?, utime: field(14)?, stime: field(15)? })
    }
}

/// The first process named `comm` among `root` and its descendants, breadth first.
fn find_process(root: u32, comm: &str) -> Option<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut names = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = ProcStat::read(pid) {
            children.entry(stat.ppid).or_default().push(pid);
            names.insert(pid, stat.comm);
        }
    }
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        if names.get(&pid).is_some_and(|n| n == comm) {
            return Some(pid);
        }
        queue.extend(children.get(&pid).into_iter().flatten());
    }
    None
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The workspace root.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one level below the workspace root")
        .to_path_buf()
}

/// Starts `target/release/herd serve` in `dir` and provisions `devices` active devices, one
/// credential each.
pub(crate) async fn start_herd(dir: &Path, devices: usize) -> Result<Broker> {
    let herd = repo_root().join("target/release/herd");
    if !herd.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p server`",
            herd.display()
        );
    }
    let port = free_port()?;
    let admin = "herd-bench-admin-token-0123456789abcdef";
    let log = dir.join("herd.log");
    // The fan-in subscriber: an application that may read every device's telemetry.
    let secret_file = dir.join("bench-app-secret");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_file)
            .with_context(|| format!("create {}", secret_file.display()))?;
        f.write_all(APP_SECRET.as_bytes())?;
    }
    let config = dir.join("herd.toml");
    std::fs::write(
        &config,
        format!(
            "[[mqtt.applications]]\nname = \"{APP_NAME}\"\nsecret_file = \"{}\"\n\
             subscribe = [\"devices/+/telemetry\"]\n",
            secret_file.display()
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;
    let wrapper = std::env::var(WRAPPER_VAR).unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(&herd);
            command
        }
        None => Command::new(&herd),
    };
    let child = command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--http-listen", "127.0.0.1:0", "--mqtt-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--log-format", "json"])
        .env("HERD_ADMIN_TOKEN", admin)
        // The scenarios publish as fast as one device can: Herd's per-device rate limit
        // (`mqtt.publish_rate_per_sec`, 1,000/s by default) would measure itself. Mosquitto has none.
        .env("HERD_MQTT__PUBLISH_RATE_PER_SEC", "0")
        // As Mosquitto's `max_queued_messages 200000`: the fan-in subscriber measures routing, not
        // the default queue limits (1,000 on both), which drop most of a 100,000-message burst.
        .env("HERD_MQTT__MAX_QUEUED_MESSAGES", "200000")
        // Room for the ~19,000-connection idle point (the per-process file limit is 20,000).
        .env("HERD_MQTT__MAX_CONNECTIONS", "20000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("start herd")?;
    let app = (APP_NAME.to_owned(), APP_SECRET.to_owned());
    let pid = child.id();
    let mut broker =
        Broker { name: "Herd", port, child, pid, passwords: None, http: None, app: Some(app) };
    let http = wait_for_serving(&log).await?;
    if !wrapper.is_empty() {
        match find_process(pid, "herd") {
            Some(herd_pid) => {
                println!("under {WRAPPER_VAR}: RSS and CPU time of the herd process {herd_pid}");
                broker.pid = herd_pid;
            }
            None => eprintln!(
                "warning: no `herd` process under {WRAPPER_VAR}={wrapper:?} (pid {pid}); RSS and \
                 CPU time are the wrapper's"
            ),
        }
    }
    let base = format!("http://{http}");
    broker.passwords = Some(provision(&base, admin, devices).await?);
    broker.http = Some(base);
    Ok(broker)
}

/// Reads Herd's log until its "herd is serving" line; returns the HTTP address.
async fn wait_for_serving(log: &Path) -> Result<String> {
    for _ in 0..200 {
        let file = std::fs::File::open(log).with_context(|| format!("open {}", log.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line?;
            if !line.contains("herd is serving") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)?;
            let http = v.get("http").or_else(|| v.pointer("/fields/http"));
            return Ok(http.and_then(|h| h.as_str()).context("http field")?.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("herd did not start; see {}", log.display())
}

/// Imports `n` active devices in one CSV upload, then issues one credential each.
async fn provision(base: &str, admin: &str, n: usize) -> Result<Vec<String>> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    let mut csv = String::from("id,state\n");
    for i in 0..n {
        writeln!(csv, "{},active", device_id(i))?;
    }
    let resp = http
        .post(format!("{base}/api/v1/devices:import"))
        .bearer_auth(admin)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .context("import devices")?;
    let status = resp.status();
    if !status.is_success() {
        bail!("import: {status}: {}", resp.text().await?);
    }
    let mut passwords = vec![String::new(); n];
    let (tx, mut rx) = mpsc::channel(64);
    for worker in 0..4 {
        let (http, base, admin, tx) = (http.clone(), base.to_owned(), admin.to_owned(), tx.clone());
        tokio::spawn(async move {
            for i in (worker..n).step_by(4) {
                let r = async {
                    let resp = http
                        .post(format!("{base}/api/v1/devices/{}/credentials", device_id(i)))
                        .bearer_auth(&admin)
                        .json(&serde_json::json!({}))
                        .send()
                        .await?
                        .error_for_status()?;
                    let v: serde_json::Value = resp.json().await?;
                    Ok::<_, anyhow::Error>(v["token"].as_str().context("token")?.to_owned())
                }
                .await;
                if tx.send((i, r)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    while let Some((i, r)) = rx.recv().await {
        passwords[i] = r.with_context(|| format!("issue a credential to {}", device_id(i)))?;
    }
    println!(
        "provisioned {n} Herd devices with credentials in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(passwords)
}

/// Starts Mosquitto in `dir` on a free port: anonymous clients, no persistence, no connection
/// limit, the same queue limit as Herd's.
pub(crate) async fn start_mosquitto(dir: &Path) -> Result<Broker> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nmax_connections -1\nmax_queued_messages 200000\n"
        ),
    )
    .with_context(|| format!("write {}", conf.display()))?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("mosquitto.log"))?)
        .spawn()
        .context("start mosquitto (apt-get install mosquitto)")?;
    let pid = child.id();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(Broker {
                name: "Mosquitto",
                port,
                child,
                pid,
                passwords: None,
                http: None,
                app: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("mosquitto did not start; see {}", dir.join("mosquitto.log").display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_follow_the_last_parenthesis() {
        let line = "4242 (tokio (rt) x) S 17 4242 17 0 -1 4194304 100 0 0 0 250 31 0 0 20 0 9 0 \
                    123 456 789\n";
        let stat = ProcStat::parse(line).unwrap();
        assert_eq!(stat.comm, "tokio (rt) x");
        assert_eq!(stat.ppid, 17);
        assert_eq!((stat.utime, stat.stime), (250, 31));
    }
}

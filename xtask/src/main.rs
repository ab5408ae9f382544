//! Repository automation, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! `cargo xtask mqtt-bench [--quick]`: the MQTT gateway of `target/release/herd` against Mosquitto,
//! same scenarios, same load generator (`rumqttc`), back to back in one run on this machine. It
//! prints a markdown table; recording it in `docs/benchmarks.md` is done by hand.
//!
//! Herd's per-device ACL lets a device publish and subscribe only under `devices/{its id}/`, so no
//! device can receive another device's messages. Scenarios are therefore shaped so that both
//! brokers do the same work where that is possible:
//! - 1 → 1 and latency: one connection subscribed to its own `devices/{id}/bench` topic publishes
//!   to it (publish → route → deliver back over the same socket);
//! - fan-in 100 → 1: 100 devices publish QoS 1 to their own `devices/{id}/telemetry`; on Herd the
//!   "one" is Herd's ingest (all PUBACKs received, cross-checked with `mqtt_messages_received_total`
//!   on `/metrics`), on Mosquitto one extra client subscribed to `devices/+/telemetry` receives
//!   them as well.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    reason = "xtask is a developer tool: it prints its report, and a failed step should stop it (STYLE §1)"
)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{Semaphore, mpsc};

/// Publishers in the fan-in scenario.
const FAN_IN_PUBLISHERS: usize = 100;
/// QoS 1 messages a client may have unacknowledged (below Herd's default Receive Maximum of 64).
const INFLIGHT: u16 = 32;
/// Bytes of each benchmark payload (the first 8 are a send timestamp).
const PAYLOAD: usize = 64;
/// The application Herd's fan-in subscriber connects as, and its secret.
const APP_NAME: &str = "bench-subscriber";
const APP_SECRET: &str = "bench-subscriber-secret-0123456789";
/// Target rate of the latency scenario.
const LATENCY_RATE: u64 = 10_000;
/// A scenario gives up when nothing has arrived for this long.
const STALL: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("mqtt-bench") => {
            // `--quick` first, so that `--idle N` wins whatever the order.
            let mut sizes = Sizes::new(args[1..].iter().any(|a| a == "--quick"));
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--quick" => {}
                    "--only" => {
                        let list = rest.next().map(String::as_str).unwrap_or_default();
                        sizes.only = list.split(',').map(str::to_owned).collect();
                        if let Some(bad) =
                            sizes.only.iter().find(|s| !SCENARIOS.contains(&s.as_str()))
                        {
                            bail!("unknown scenario {bad}; scenarios: {}", SCENARIOS.join(","));
                        }
                    }
                    "--idle" => {
                        sizes.idle = rest.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                        if sizes.idle == 0 {
                            bail!("--idle needs a number of connections");
                        }
                    }
                    bad => bail!("unknown option {bad}; {USAGE}"),
                }
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(mqtt_bench(sizes))
        }
        _ => bail!("usage: cargo xtask <command>\n\ncommands:\n  {USAGE}"),
    }
}

const USAGE: &str = "mqtt-bench [--quick] [--only idle,qos0,qos1,fan-in,latency] [--idle N]   Herd's MQTT gateway vs Mosquitto (needs target/release/herd)";

/// The scenarios `--only` can pick.
const SCENARIOS: [&str; 5] = ["idle", "qos0", "qos1", "fan-in", "latency"];

/// How much work each scenario does, and which scenarios run (all when `only` is empty).
#[derive(Debug, Clone)]
struct Sizes {
    only: Vec<String>,
    quick: bool,
    idle: usize,
    one_to_one: usize,
    fan_in_each: usize,
    latency_secs: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                only: Vec::new(),
                quick,
                idle: 500,
                one_to_one: 20_000,
                fan_in_each: 200,
                latency_secs: 2,
            }
        } else {
            Self {
                only: Vec::new(),
                quick,
                idle: 5_000,
                one_to_one: 100_000,
                fan_in_each: 1_000,
                latency_secs: 5,
            }
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    fn devices(&self) -> usize {
        self.idle.max(FAN_IN_PUBLISHERS + 1)
    }
}

fn device_id(i: usize) -> String {
    format!("bench-{i:05}")
}

/// A broker under test, started by this run and killed when dropped.
#[derive(Debug)]
struct Broker {
    name: &'static str,
    port: u16,
    child: Child,
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
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn options(&self, i: usize, keep_alive: Duration) -> MqttOptions {
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
    async fn connect(&self, i: usize, cap: usize) -> Result<(AsyncClient, EventLoop)> {
        self.connect_with(self.options(i, Duration::from_secs(60)), cap).await
    }

    /// Connects the fan-in subscriber: Herd's bench application, or an anonymous client.
    async fn connect_subscriber(&self, cap: usize) -> Result<(AsyncClient, EventLoop)> {
        match &self.app {
            Some((name, secret)) => {
                let mut o = MqttOptions::new(name.clone(), "127.0.0.1", self.port);
                o.set_keep_alive(Duration::from_secs(60));
                o.set_clean_session(true);
                o.set_inflight(INFLIGHT);
                o.set_credentials(name.clone(), secret.clone());
                self.connect_with(o, cap).await
            }
            None => self.connect(FAN_IN_PUBLISHERS, cap).await,
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

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// Herd's `mqtt_messages_received_total{qos="1"}`.
    async fn received_qos1(&self) -> Result<Option<f64>> {
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

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

async fn start_herd(dir: &Path, sizes: &Sizes) -> Result<Broker> {
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
            .open(&secret_file)?;
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
    )?;
    // HERD_BENCH_WRAPPER runs Herd under a profiler, e.g. `heaptrack` or `perf record -g --`.
    let wrapper = std::env::var("HERD_BENCH_WRAPPER").unwrap_or_default();
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
    let mut broker =
        Broker { name: "Herd", port, child, passwords: None, http: None, app: Some(app) };
    let http = wait_for_serving(&log).await?;
    let base = format!("http://{http}");
    broker.passwords = Some(provision(&base, admin, sizes.devices()).await?);
    broker.http = Some(base);
    Ok(broker)
}

/// Reads Herd's log until its "herd is serving" line; returns the HTTP address.
async fn wait_for_serving(log: &Path) -> Result<String> {
    for _ in 0..200 {
        let file = std::fs::File::open(log)?;
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
        .await?;
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
        passwords[i] = r?;
    }
    println!(
        "provisioned {n} Herd devices with credentials in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(passwords)
}

async fn start_mosquitto(dir: &Path) -> Result<Broker> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nmax_connections -1\nmax_queued_messages 200000\n"
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("mosquitto.log"))?)
        .spawn()
        .context("start mosquitto (apt-get install mosquitto)")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(Broker {
                name: "Mosquitto",
                port,
                child,
                passwords: None,
                http: None,
                app: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("mosquitto did not start; see {}", dir.join("mosquitto.log").display())
}

/// Result of one scenario on one broker.
#[derive(Debug, Clone, Default)]
struct Figure {
    value: f64,
    note: String,
}

/// Scenario (a): `k` idle connections; broker RSS growth per connection in bytes.
async fn idle(b: &Broker, k: usize) -> Result<Figure> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = b.rss_kib()?;
    let gate = Arc::new(Semaphore::new(100));
    let (tx, mut rx) = mpsc::channel::<Result<()>>(k);
    let mut tasks = Vec::with_capacity(k);
    let started = Instant::now();
    for i in 0..k {
        let opts = b.options(i, Duration::from_secs(600));
        let (gate, tx) = (gate.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let (_client, mut ev) = AsyncClient::new(opts, 1);
            let mut permit = Some(permit);
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        permit.take();
                        let _ = tx.send(Ok(())).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if permit.take().is_some() {
                            let _ = tx.send(Err(e.into())).await;
                        }
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut ok = 0;
    let mut failed = 0;
    let mut first_error = None;
    while ok + failed < k {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = b.rss_kib()?;
    for t in &tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    if ok == 0 {
        bail!("{}: no idle connection succeeded: {first_error:?}", b.name);
    }
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / ok as f64;
    let mut note = format!(
        "{ok} connected in {connect_secs:.1} s; RSS {:.1} → {:.1} MiB",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    if failed > 0 {
        write!(note, "; {failed} failed ({})", first_error.unwrap())?;
    }
    Ok(Figure { value: per, note })
}

fn payload(origin: Instant) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    let ns = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
    p[..8].copy_from_slice(&ns.to_be_bytes());
    p
}

fn latency_of(origin: Instant, payload: &[u8]) -> Option<Duration> {
    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let now = u64::try_from(origin.elapsed().as_nanos()).ok()?;
    Some(Duration::from_nanos(now.saturating_sub(sent)))
}

/// Result of a loopback run.
#[derive(Debug)]
struct Loopback {
    sent: usize,
    received: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// One connection subscribed to its own topic publishes `count` messages to it, either as fast
/// as it can (`rate` = None) or paced at `rate` messages per second.
async fn loopback(b: &Broker, qos: QoS, count: usize, rate: Option<u64>) -> Result<Loopback> {
    let (client, mut ev) = b.connect(0, 1024).await?;
    let topic = format!("devices/{}/bench", device_id(0));
    client.subscribe(&topic, qos).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
            break;
        }
    }
    let origin = Instant::now();
    let publisher = {
        let client = client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < count {
                if let Some(rate) = rate {
                    let due = (origin.elapsed().as_micros() as u64 * rate / 1_000_000) as usize;
                    if sent >= due.min(count) {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                        continue;
                    }
                }
                if client.publish(&topic, qos, false, payload(origin)).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    let mut received = 0;
    let mut last = origin;
    let mut latencies = Vec::with_capacity(if rate.is_some() { count } else { 0 });
    while received < count {
        match tokio::time::timeout(STALL, ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                received += 1;
                last = Instant::now();
                if rate.is_some()
                    && let Some(l) = latency_of(origin, &p.payload)
                {
                    latencies.push(l);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("{}: loopback connection failed: {e}", b.name),
            Err(_) => break,
        }
    }
    let sent = publisher.await?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
    Ok(Loopback { sent, received, elapsed: last - origin, latencies })
}

async fn throughput(b: &Broker, qos: QoS, count: usize) -> Result<Figure> {
    let r = loopback(b, qos, count, None).await?;
    let rate = r.received as f64 / r.elapsed.as_secs_f64();
    Ok(Figure {
        value: rate,
        note: format!("{} of {} delivered in {:.2} s", r.received, r.sent, r.elapsed.as_secs_f64()),
    })
}

/// Returns (p50, p99) in microseconds.
async fn latency(b: &Broker, secs: u64) -> Result<(Figure, Figure)> {
    let count = (LATENCY_RATE * secs) as usize;
    let mut r = loopback(b, QoS::AtLeastOnce, count, Some(LATENCY_RATE)).await?;
    if r.latencies.is_empty() {
        bail!("{}: no message came back in the latency run", b.name);
    }
    r.latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((r.latencies.len() as f64 * q) as usize).min(r.latencies.len() - 1);
        r.latencies[i].as_secs_f64() * 1e6
    };
    let note = format!(
        "{} of {} delivered over {:.2} s ({:.0} msg/s); max {:.1} ms",
        r.received,
        r.sent,
        r.elapsed.as_secs_f64(),
        r.received as f64 / r.elapsed.as_secs_f64(),
        r.latencies[r.latencies.len() - 1].as_secs_f64() * 1e3
    );
    Ok((Figure { value: at(0.50), note: note.clone() }, Figure { value: at(0.99), note }))
}

/// Scenario (c): 100 publishers, `each` QoS 1 messages each. Returns the ingest rate (all
/// PUBACKs received) and, on Mosquitto, the rate at which one subscriber received them all.
async fn fan_in(b: &Broker, each: usize) -> Result<(Figure, Option<Figure>)> {
    let total = FAN_IN_PUBLISHERS * each;
    let metric_before = b.received_qos1().await?;
    // On Herd the subscriber is an application allowed to read `devices/+/telemetry` (no device may
    // read another's topics); on Mosquitto an anonymous client.
    let subscriber = {
        let (client, mut ev) = b.connect_subscriber(16).await?;
        client.subscribe("devices/+/telemetry", QoS::AtLeastOnce).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = ev.poll().await? {
                if !matches!(ack.return_codes.first(), Some(SubscribeReasonCode::Success(_))) {
                    bail!("{}: fan-in subscription refused: {ack:?}", b.name);
                }
                break;
            }
        }
        Some((client, ev))
    };
    let mut publishers = Vec::with_capacity(FAN_IN_PUBLISHERS);
    for i in 0..FAN_IN_PUBLISHERS {
        publishers.push(b.connect(i, 64).await?);
    }
    let origin = Instant::now();
    let sub_task = subscriber.map(|(client, mut ev)| {
        tokio::spawn(async move {
            let mut received = 0;
            let mut last = origin;
            while received < total {
                match tokio::time::timeout(STALL, ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(_)))) => {
                        received += 1;
                        last = Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            drop(client);
            (received, last - origin)
        })
    });
    let mut tasks = Vec::with_capacity(FAN_IN_PUBLISHERS);
    for (i, (client, mut ev)) in publishers.into_iter().enumerate() {
        let topic = format!("devices/{}/telemetry", device_id(i));
        tasks.push(tokio::spawn(async move {
            let pubc = client.clone();
            let feeder = tokio::spawn(async move {
                for _ in 0..each {
                    if pubc.publish(&topic, QoS::AtLeastOnce, false, payload(origin)).await.is_err()
                    {
                        break;
                    }
                }
            });
            let mut acked = 0;
            let mut last = origin;
            while acked < each {
                match tokio::time::timeout(STALL, ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                        acked += 1;
                        last = Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let _ = feeder.await;
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(500), ev.poll()).await;
            (acked, last - origin)
        }));
    }
    let mut acked = 0;
    let mut ingest = Duration::ZERO;
    for t in tasks {
        let (a, d) = t.await?;
        acked += a;
        ingest = ingest.max(d);
    }
    let mut note = format!("{acked} of {total} acknowledged in {:.2} s", ingest.as_secs_f64());
    if let (Some(before), Some(after)) = (metric_before, b.received_qos1().await?) {
        write!(note, "; /metrics counted {:.0} QoS 1 received", after - before)?;
    }
    let ingest_fig = Figure { value: acked as f64 / ingest.as_secs_f64(), note };
    let delivered = match sub_task {
        Some(t) => {
            let (received, d) = t.await?;
            Some(Figure {
                value: received as f64 / d.as_secs_f64(),
                note: format!("{received} of {total} received in {:.2} s", d.as_secs_f64()),
            })
        }
        None => None,
    };
    Ok((ingest_fig, delivered))
}

/// One table row: scenario, unit, Herd's and Mosquitto's figures.
#[derive(Debug)]
struct Row {
    scenario: String,
    unit: &'static str,
    herd: Option<Figure>,
    mosquitto: Option<Figure>,
}

async fn mqtt_bench(sizes: Sizes) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!(
        "mqtt-bench{}: idle {}, 1→1 {} msgs, fan-in {}×{} msgs, latency {} s at {} msg/s",
        if sizes.quick { " --quick" } else { "" },
        sizes.idle,
        sizes.one_to_one,
        FAN_IN_PUBLISHERS,
        sizes.fan_in_each,
        sizes.latency_secs,
        LATENCY_RATE
    );
    let herd = start_herd(dir.path(), &sizes).await?;
    let mosquitto = start_mosquitto(dir.path()).await?;
    let brokers = [&herd, &mosquitto];
    let mut rows = Vec::new();

    let mut row = |scenario: String, unit, figs: [Option<Figure>; 2]| {
        let [h, m] = figs;
        rows.push(Row { scenario, unit, herd: h, mosquitto: m });
    };

    if sizes.runs("idle") {
        let mut figs: [Option<Figure>; 2] = Default::default();
        for (slot, b) in figs.iter_mut().zip(brokers) {
            println!("{}: idle connections …", b.name);
            *slot = Some(idle(b, sizes.idle).await?);
        }
        row(format!("idle connections ({})", sizes.idle), "B RSS / conn", figs);
    }

    for (qos, label, name) in
        [(QoS::AtMostOnce, "QoS 0", "qos0"), (QoS::AtLeastOnce, "QoS 1", "qos1")]
    {
        if !sizes.runs(name) {
            continue;
        }
        let mut figs: [Option<Figure>; 2] = Default::default();
        for (slot, b) in figs.iter_mut().zip(brokers) {
            println!("{}: {label} 1→1 …", b.name);
            *slot = Some(throughput(b, qos, sizes.one_to_one).await?);
        }
        row(format!("{label} throughput 1→1"), "msg/s", figs);
    }

    let mut ingest: [Option<Figure>; 2] = Default::default();
    let mut delivered: [Option<Figure>; 2] = Default::default();
    for (i, b) in brokers.iter().enumerate().filter(|_| sizes.runs("fan-in")) {
        println!("{}: QoS 1 fan-in {FAN_IN_PUBLISHERS}→1 …", b.name);
        let (ing, del) = fan_in(b, sizes.fan_in_each).await?;
        ingest[i] = Some(ing);
        delivered[i] = del;
    }
    if sizes.runs("fan-in") {
        row(format!("QoS 1 fan-in {FAN_IN_PUBLISHERS}→broker (all PUBACKs)"), "msg/s", ingest);
        row(format!("QoS 1 fan-in {FAN_IN_PUBLISHERS}→1 subscriber"), "msg/s", delivered);
    }

    let mut p50: [Option<Figure>; 2] = Default::default();
    let mut p99: [Option<Figure>; 2] = Default::default();
    for (i, b) in brokers.iter().enumerate().filter(|_| sizes.runs("latency")) {
        println!("{}: QoS 1 latency at {LATENCY_RATE} msg/s …", b.name);
        let (a, c) = latency(b, sizes.latency_secs).await?;
        p50[i] = Some(a);
        p99[i] = Some(c);
    }
    if sizes.runs("latency") {
        row(format!("QoS 1 latency p50 at {LATENCY_RATE} msg/s"), "µs", p50);
        row(format!("QoS 1 latency p99 at {LATENCY_RATE} msg/s"), "µs", p99);
    }

    let herd_rss = herd.rss_kib()?;
    let mosq_rss = mosquitto.rss_kib()?;
    drop(herd);
    drop(mosquitto);

    println!();
    println!("| scenario | unit | Herd | Mosquitto | Herd / Mosquitto |");
    println!("|---|---|---:|---:|---:|");
    for r in &rows {
        let show = |f: &Option<Figure>| f.as_ref().map_or("—".to_owned(), |f| fmt_num(f.value));
        let ratio = match (&r.herd, &r.mosquitto) {
            (Some(h), Some(m)) if m.value > 0.0 => format!("{:.2}", h.value / m.value),
            _ => "—".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            r.scenario,
            r.unit,
            show(&r.herd),
            show(&r.mosquitto),
            ratio
        );
    }
    println!();
    println!("Details:");
    for r in &rows {
        for (name, f) in [("Herd", &r.herd), ("Mosquitto", &r.mosquitto)] {
            if let Some(f) = f {
                println!("- {} — {name}: {}", r.scenario, f.note);
            }
        }
    }
    println!(
        "- broker RSS at the end: Herd {:.1} MiB, Mosquitto {:.1} MiB",
        herd_rss as f64 / 1024.0,
        mosq_rss as f64 / 1024.0
    );
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        let n = v.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.1}")
    }
}

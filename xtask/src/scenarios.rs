//! The scenarios: the same load, driven from this process, against one broker at a time.
//!
//! Herd's per-device ACL lets a device publish and subscribe only under `devices/{its id}/`, so no
//! device can receive another device's messages. Scenarios are therefore shaped so that both
//! brokers do the same work where that is possible:
//! - 1 → 1 and latency: one connection subscribed to its own `devices/{id}/bench` topic publishes
//!   to it (publish → route → deliver back over the same socket);
//! - fan-in 100 → 1: 100 devices publish QoS 1 to their own `devices/{id}/telemetry`; one more
//!   client subscribed to `devices/+/telemetry` (on Herd an application, on Mosquitto an anonymous
//!   client) receives them; on Herd the PUBACK count is cross-checked with
//!   `mqtt_messages_received_total` on `/metrics`.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{Semaphore, mpsc};

use crate::brokers::{Broker, STALL, device_id};

/// Publishers in the fan-in scenario.
pub(crate) const FAN_IN_PUBLISHERS: usize = 100;
/// Bytes of each benchmark payload (the first 8 are a send timestamp).
pub(crate) const PAYLOAD: usize = 64;
/// Target rate of the latency scenario.
pub(crate) const LATENCY_RATE: u64 = 10_000;
/// Idle connections opened at a time.
pub(crate) const IDLE_IN_FLIGHT: usize = 100;
/// Connections of the connect-rate scenario that may wait for their CONNACK at a time.
pub(crate) const CONNECT_IN_FLIGHT: usize = 64;
/// How long one connection of the idle and connect-rate scenarios may take.
const CONNECT_GIVE_UP: Duration = Duration::from_secs(60);

/// Result of one measure on one broker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figure {
    pub(crate) value: f64,
    /// What was measured, for the details list.
    pub(crate) note: String,
    /// Set when some of the work was lost (messages not delivered, connections refused): the
    /// figure is then not comparable, and the report says so.
    pub(crate) shortfall: Option<String>,
}

/// Idle connections: devices `0..k` connect (keep-alive 600 s, [`IDLE_IN_FLIGHT`] at a time) and
/// stay; broker RSS growth per connection in bytes, from before the first connect to 3 s after the
/// last CONNACK.
pub(crate) async fn idle(b: &Broker, k: usize) -> Result<Figure> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = b.rss_kib()?;
    let open = open_connections(b, 0..k, IDLE_IN_FLIGHT, Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = b.rss_kib()?;
    open.close(Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ok = open.clients.len();
    if ok == 0 {
        bail!("{}: no idle connection succeeded: {:?}", b.name, open.first_error);
    }
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / ok as f64;
    let note = format!(
        "{ok} connected in {:.1} s; RSS {:.1} → {:.1} MiB",
        open.elapsed.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    Ok(Figure { value: per, note, shortfall: open.shortfall(k) })
}

/// Connect rate: devices `range` connect as fast as they can, at most [`CONNECT_IN_FLIGHT`] waiting
/// for their CONNACK at a time; connections per second from the first connect to the last
/// CONNACK. All stay connected until the last one is in, then disconnect.
pub(crate) async fn connect_rate(b: &Broker, range: Range<usize>) -> Result<Figure> {
    let n = range.len();
    let open = open_connections(b, range, CONNECT_IN_FLIGHT, Duration::from_secs(60)).await;
    open.close(Duration::from_secs(1)).await;
    // Let the broker finish closing them before the next scenario.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ok = open.clients.len();
    if ok == 0 {
        bail!("{}: no connection succeeded: {:?}", b.name, open.first_error);
    }
    let secs = open.elapsed.as_secs_f64();
    let note = format!("{ok} of {n} connected in {secs:.2} s, {CONNECT_IN_FLIGHT} at a time");
    Ok(Figure { value: ok as f64 / secs, note, shortfall: open.shortfall(n) })
}

/// Connections opened by [`open_connections`], each polled by its own task.
#[derive(Debug)]
struct Open {
    clients: Vec<AsyncClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    first_error: Option<anyhow::Error>,
    /// From the first connect to the last CONNACK.
    elapsed: Duration,
}

impl Open {
    /// Sends DISCONNECT on every connection, waits `grace` for it to go out, then ends the tasks
    /// (which closes the sockets that are still open).
    async fn close(&self, grace: Duration) {
        if !grace.is_zero() {
            for c in &self.clients {
                let _ = c.try_disconnect();
            }
            tokio::time::sleep(grace).await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }

    fn shortfall(&self, wanted: usize) -> Option<String> {
        let missing = wanted - self.clients.len();
        (missing > 0).then(|| {
            let mut s = format!("{missing} of {wanted} connections failed");
            if let Some(e) = &self.first_error {
                let _ = write!(s, " (first: {e})");
            }
            s
        })
    }
}

/// Connects devices `range`, at most `in_flight` waiting for their CONNACK at a time, and keeps
/// each connection polled by a task until [`Open::close`].
async fn open_connections(
    b: &Broker,
    range: Range<usize>,
    in_flight: usize,
    keep_alive: Duration,
) -> Open {
    let n = range.len();
    let gate = Arc::new(Semaphore::new(in_flight));
    let (tx, mut rx) = mpsc::channel::<Result<AsyncClient>>(n.max(1));
    let mut tasks = Vec::with_capacity(n);
    let started = Instant::now();
    for i in range {
        let opts = b.options(i, keep_alive);
        let (gate, tx) = (gate.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else { return };
            let (client, mut ev) = AsyncClient::new(opts, 1);
            let mut permit = Some(permit);
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        permit.take();
                        let _ = tx.send(Ok(client.clone())).await;
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
    let mut clients = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    let mut elapsed = Duration::ZERO;
    while clients.len() + failed < n {
        match tokio::time::timeout(CONNECT_GIVE_UP, rx.recv()).await {
            Ok(Some(Ok(client))) => {
                clients.push(client);
                elapsed = started.elapsed();
            }
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Open { clients, tasks, first_error, elapsed }
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
    /// Broker CPU time from the first publish to the last message received.
    cpu: Duration,
}

impl Loopback {
    fn shortfall(&self, wanted: usize) -> Option<String> {
        (self.received < wanted)
            .then(|| format!("{} of {wanted} delivered ({} sent)", self.received, self.sent))
    }
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
    let cpu_before = b.cpu_time()?;
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
    let cpu = b.cpu_time()?.saturating_sub(cpu_before);
    let sent = publisher.await?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
    Ok(Loopback { sent, received, elapsed: last - origin, latencies, cpu })
}

/// 1 → 1 throughput: messages received per second, and broker CPU µs per message received.
pub(crate) async fn throughput(b: &Broker, qos: QoS, count: usize) -> Result<[Figure; 2]> {
    let r = loopback(b, qos, count, None).await?;
    if r.received == 0 {
        bail!("{}: no message came back", b.name);
    }
    let secs = r.elapsed.as_secs_f64();
    let shortfall = r.shortfall(count);
    let rate = Figure {
        value: r.received as f64 / secs,
        note: format!("{} of {} delivered in {secs:.2} s", r.received, r.sent),
        shortfall: shortfall.clone(),
    };
    Ok([rate, cpu_per_message(r.cpu, r.received, shortfall)])
}

fn cpu_per_message(cpu: Duration, messages: usize, shortfall: Option<String>) -> Figure {
    Figure {
        value: cpu.as_secs_f64() * 1e6 / messages as f64,
        note: format!("{:.0} ms broker CPU for {messages} messages", cpu.as_secs_f64() * 1e3),
        shortfall,
    }
}

/// QoS 1 latency over `secs` at [`LATENCY_RATE`]: p50 and p99 in microseconds.
pub(crate) async fn latency(b: &Broker, secs: u64) -> Result<[Figure; 2]> {
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
    let shortfall = r.shortfall(count);
    Ok([
        Figure { value: at(0.50), note: note.clone(), shortfall: shortfall.clone() },
        Figure { value: at(0.99), note, shortfall },
    ])
}

/// Fan-in: [`FAN_IN_PUBLISHERS`] devices publish `each` QoS 1 messages each, one subscriber
/// receives them all. Returns the ingest rate (all PUBACKs received), the delivery rate (all
/// messages at the subscriber) and broker CPU µs per message (ingest and delivery).
pub(crate) async fn fan_in(b: &Broker, each: usize) -> Result<[Figure; 3]> {
    let total = FAN_IN_PUBLISHERS * each;
    let metric_before = b.received_qos1().await?;
    let (sub_client, mut sub_ev) = b.connect_subscriber(FAN_IN_PUBLISHERS, 16).await?;
    sub_client.subscribe("devices/+/telemetry", QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(ack)) = sub_ev.poll().await? {
            if !matches!(ack.return_codes.first(), Some(SubscribeReasonCode::Success(_))) {
                bail!("{}: fan-in subscription refused: {ack:?}", b.name);
            }
            break;
        }
    }
    let mut publishers = Vec::with_capacity(FAN_IN_PUBLISHERS);
    for i in 0..FAN_IN_PUBLISHERS {
        publishers.push(b.connect(i, 64).await?);
    }
    let cpu_before = b.cpu_time()?;
    let origin = Instant::now();
    let sub_task = tokio::spawn(async move {
        let mut received = 0;
        let mut last = origin;
        while received < total {
            match tokio::time::timeout(STALL, sub_ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => {
                    received += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        drop(sub_client);
        (received, last - origin)
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
            (client, ev, acked, last - origin)
        }));
    }
    let mut acked = 0;
    let mut ingest = Duration::ZERO;
    let mut done = Vec::with_capacity(FAN_IN_PUBLISHERS);
    for t in tasks {
        let (client, ev, a, d) = t.await?;
        acked += a;
        ingest = ingest.max(d);
        done.push((client, ev));
    }
    let (received, delivery) = sub_task.await?;
    let cpu = b.cpu_time()?.saturating_sub(cpu_before);
    for (client, mut ev) in done {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), ev.poll()).await;
    }
    if acked == 0 {
        bail!("{}: no fan-in message was acknowledged", b.name);
    }

    let mut note = format!("{acked} of {total} acknowledged in {:.2} s", ingest.as_secs_f64());
    if let (Some(before), Some(after)) = (metric_before, b.received_qos1().await?) {
        write!(note, "; /metrics counted {:.0} QoS 1 received", after - before)?;
    }
    let ingest_shortfall = (acked < total).then(|| format!("{acked} of {total} acknowledged"));
    let delivery_shortfall = (received < total).then(|| format!("{received} of {total} received"));
    let ingest_fig = Figure {
        value: acked as f64 / ingest.as_secs_f64(),
        note,
        shortfall: ingest_shortfall.clone(),
    };
    let delivered = Figure {
        value: if received == 0 { 0.0 } else { received as f64 / delivery.as_secs_f64() },
        note: format!("{received} of {total} received in {:.2} s", delivery.as_secs_f64()),
        shortfall: delivery_shortfall.clone(),
    };
    let cpu_fig = cpu_per_message(cpu, acked, ingest_shortfall.or(delivery_shortfall));
    Ok([ingest_fig, delivered, cpu_fig])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_send_time() {
        let origin = Instant::now();
        let p = payload(origin);
        assert_eq!(p.len(), PAYLOAD);
        assert!(latency_of(origin, &p).is_some());
        assert_eq!(latency_of(origin, &p[..4]), None);
    }
}

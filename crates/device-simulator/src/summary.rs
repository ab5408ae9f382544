//! What a run reports: a [`Progress`] snapshot every second, and a [`Summary`] at the end.
//!
//! Both are serialized: the summary is the JSON `herd-sim` prints on stdout, and the child
//! processes of a multi-process run send both to their parent as JSON lines, which adds them up
//! ([`Progress::combine`], [`Summary::combine`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of error a run counts (the keys of [`Summary::errors_by_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// A device could not be created, activated or given a credential through the REST API.
    Provisioning,
    /// The device agent rejected a device's configuration (an id it cannot send).
    Config,
    /// The server refused a device for good (bad credentials, not authorized, …).
    Refused,
    /// A device never connected before the end of the run.
    NeverConnected,
    /// A connection ended that the simulator did not cut itself.
    ConnectionLost,
    /// A device task panicked.
    Panicked,
    /// A device did not stop within the grace period after the end of the run.
    ShutdownTimeout,
    /// A child process of a multi-process run ended without a summary.
    ChildProcess,
}

impl ErrorKind {
    /// The key in [`Summary::errors_by_kind`].
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Config => "config",
            Self::Refused => "refused",
            Self::NeverConnected => "never_connected",
            Self::ConnectionLost => "connection_lost",
            Self::Panicked => "panicked",
            Self::ShutdownTimeout => "shutdown_timeout",
            Self::ChildProcess => "child_process",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of errors by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts(BTreeMap<&'static str, u64>);

impl ErrorCounts {
    /// Counts `n` more errors of `kind` (nothing when `n` is 0).
    pub fn add(&mut self, kind: ErrorKind, n: u64) {
        if n > 0 {
            *self.0.entry(kind.as_str()).or_default() += n;
        }
    }

    /// All errors.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The breakdown, as in the summary.
    #[must_use]
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        self.0.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }
}

/// The state of a run at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Seconds since the first device was started.
    pub elapsed_secs: f64,
    /// Devices in the run.
    pub devices: u64,
    /// Devices started so far (the ramp).
    pub started: u64,
    /// Devices connected now.
    pub connected: u64,
    /// Devices that have connected at least once.
    pub ever_connected: u64,
    /// Messages published so far (first sends).
    pub sent: u64,
    /// Messages acknowledged by the server so far.
    pub acked: u64,
    /// Reconnections so far.
    pub reconnects: u64,
    /// Errors so far (all kinds).
    pub errors: u64,
}

impl Progress {
    /// The progress of several processes together (elapsed: the longest).
    #[must_use]
    pub fn combine<'a>(parts: impl IntoIterator<Item = &'a Self>) -> Self {
        parts.into_iter().fold(Self::default(), |a, p| Self {
            elapsed_secs: a.elapsed_secs.max(p.elapsed_secs),
            devices: a.devices + p.devices,
            started: a.started + p.started,
            connected: a.connected + p.connected,
            ever_connected: a.ever_connected + p.ever_connected,
            sent: a.sent + p.sent,
            acked: a.acked + p.acked,
            reconnects: a.reconnects + p.reconnects,
            errors: a.errors + p.errors,
        })
    }

    /// The progress line: `[  12s] connected 4980/5000  msgs/s 498  acked 5123  reconnects 0
    /// errors 0`, with the rate given by the caller (it knows the previous snapshot).
    #[must_use]
    pub fn line(&self, msgs_per_sec: f64) -> String {
        format!(
            "[{:>5.0}s] connected {}/{}  msgs/s {:.0}  acked {}  reconnects {}  errors {}",
            self.elapsed_secs,
            self.connected,
            self.devices,
            msgs_per_sec,
            self.acked,
            self.reconnects,
            self.errors
        )
    }
}

/// The outcome of a run, printed as JSON on stdout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Devices in the run.
    pub devices: u64,
    /// Devices connected at the end of the run (before they were shut down).
    pub connected: u64,
    /// The most devices connected at once (sampled every 250 ms; in a multi-process run, the
    /// most the parent saw in the children's reports added up).
    pub max_connected: u64,
    /// Devices that never connected, or whose task ended with an error (a refusal, a panic), or
    /// that could not be provisioned.
    pub failed: u64,
    /// Messages published (first sends, not resends): telemetry and events.
    pub messages_sent: u64,
    /// Messages the server acknowledged.
    pub messages_acked: u64,
    /// Events handed to the devices (included in `messages_sent` once published).
    pub events_sent: u64,
    /// Disconnections the simulator injected (random, flaky and offline devices).
    pub injected_disconnects: u64,
    /// Connections accepted after a device's first one.
    pub reconnects: u64,
    /// Messages dropped from full offline buffers.
    pub dropped: u64,
    /// All errors.
    pub errors: u64,
    /// Errors by kind (see `docs/simulator.md`); kinds that did not happen are absent.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// From the first device started to the end of the run.
    pub duration_secs: f64,
    /// From the first device started until every device had connected once; `null` when some
    /// never did.
    pub connect_time_secs: Option<f64>,
    /// Time spent creating devices and credentials before the run (the parent's in a
    /// multi-process run).
    pub provision_secs: f64,
    /// Processes that ran devices.
    pub processes: u32,
    /// Loopback source addresses connections were spread over; 0 when the system chose.
    pub source_addresses: u8,
    /// The seed of the devices' behaviour; give it to `--seed` to repeat it.
    pub seed: u64,
    /// Resident memory of the process(es) running devices, measured at the end of the run
    /// before the devices stopped; `null` where it cannot be read.
    pub rss_bytes: Option<u64>,
    /// The zero-touch registrations of a `--zero-touch` run; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_touch: Option<ZeroTouch>,
}

/// What the registrations of a zero-touch run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ZeroTouch {
    /// Devices that registered (created or registered again).
    pub registrations: u64,
    /// Devices whose registration failed (they count as failed devices too).
    pub failures: u64,
    /// Devices that had a cached credential and did not register.
    pub cached: u64,
    /// Seconds spent deriving the keys (bulk endpoint, before the registrations).
    pub derive_secs: f64,
    /// Wall time of the registrations, from the first sent to the last answered.
    pub register_secs: f64,
    /// Registrations per second over `register_secs`.
    pub rate_per_sec: f64,
}

impl Summary {
    /// The summary of a run made of several processes' `parts`. `max_connected` is what the
    /// parent observed (the children's maxima may not have coincided); when it saw nothing,
    /// the sum of the parts' final `connected`.
    #[must_use]
    pub fn combine(parts: &[Self], max_connected_seen: u64) -> Self {
        let mut total = Self::default();
        let mut all_connected = true;
        for p in parts {
            total.devices += p.devices;
            total.connected += p.connected;
            total.failed += p.failed;
            total.messages_sent += p.messages_sent;
            total.messages_acked += p.messages_acked;
            total.events_sent += p.events_sent;
            total.injected_disconnects += p.injected_disconnects;
            total.reconnects += p.reconnects;
            total.dropped += p.dropped;
            total.errors += p.errors;
            for (kind, n) in &p.errors_by_kind {
                *total.errors_by_kind.entry(kind.clone()).or_default() += n;
            }
            total.duration_secs = total.duration_secs.max(p.duration_secs);
            match p.connect_time_secs {
                Some(t) => {
                    total.connect_time_secs = Some(total.connect_time_secs.unwrap_or(0.0).max(t));
                }
                None => all_connected = false,
            }
            total.provision_secs = total.provision_secs.max(p.provision_secs);
            total.source_addresses = total.source_addresses.max(p.source_addresses);
            total.seed = p.seed;
            total.rss_bytes = match (total.rss_bytes, p.rss_bytes) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        if !all_connected || parts.is_empty() {
            total.connect_time_secs = None;
        }
        total.processes = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        total.max_connected =
            if max_connected_seen > 0 { max_connected_seen } else { total.connected };
        total
    }

    /// Counts `n` devices as failed with an error of `kind` (a child process that died).
    pub fn add_failure(&mut self, kind: ErrorKind, devices: u64) {
        self.failed += devices;
        self.errors += 1;
        *self.errors_by_kind.entry(kind.as_str().to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(devices: u64, connected: u64, connect_time: Option<f64>) -> Summary {
        Summary {
            devices,
            connected,
            max_connected: connected,
            messages_sent: 10 * devices,
            messages_acked: 10 * devices,
            duration_secs: 60.0,
            connect_time_secs: connect_time,
            processes: 1,
            source_addresses: 2,
            seed: 9,
            rss_bytes: Some(100),
            ..Summary::default()
        }
    }

    #[test]
    fn summaries_add_up() {
        let mut a = part(100, 100, Some(2.0));
        let mut b = part(50, 48, Some(3.5));
        b.failed = 2;
        b.errors = 3;
        b.errors_by_kind =
            BTreeMap::from([("refused".to_owned(), 2), ("connection_lost".to_owned(), 1)]);
        a.errors = 1;
        a.errors_by_kind = BTreeMap::from([("refused".to_owned(), 1)]);
        b.duration_secs = 61.0;
        let total = Summary::combine(&[a.clone(), b], 147);
        assert_eq!(total.devices, 150);
        assert_eq!(total.connected, 148);
        assert_eq!(total.max_connected, 147);
        assert_eq!(total.failed, 2);
        assert_eq!(total.messages_sent, 1_500);
        assert_eq!(total.errors, 4);
        assert_eq!(
            total.errors_by_kind,
            BTreeMap::from([("refused".to_owned(), 3), ("connection_lost".to_owned(), 1)])
        );
        assert_eq!(total.duration_secs, 61.0);
        assert_eq!(total.connect_time_secs, Some(3.5));
        assert_eq!(total.processes, 2);
        assert_eq!(total.source_addresses, 2);
        assert_eq!(total.rss_bytes, Some(200));
        // One process whose devices did not all connect: no connect time; nothing observed:
        // the final count stands in for the maximum.
        let total = Summary::combine(&[a, part(10, 3, None)], 0);
        assert_eq!(total.connect_time_secs, None);
        assert_eq!(total.max_connected, 103);
    }

    #[test]
    fn a_dead_child_counts_its_devices_as_failed() {
        let mut s = Summary::combine(&[part(10, 10, Some(1.0))], 10);
        s.add_failure(ErrorKind::ChildProcess, 25);
        assert_eq!((s.failed, s.errors), (25, 1));
        assert_eq!(s.errors_by_kind["child_process"], 1);
    }

    #[test]
    fn summaries_round_trip_through_json() {
        let s = part(3, 2, None);
        let json = serde_json::to_value(&s).unwrap();
        for field in ["connected", "failed", "messages_sent", "errors", "errors_by_kind"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(json["connect_time_secs"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<Summary>(json).unwrap(), s);
    }

    #[test]
    fn progress_adds_up_and_prints() {
        let a = Progress {
            elapsed_secs: 3.0,
            devices: 10,
            connected: 9,
            acked: 5,
            ..Progress::default()
        };
        let b = Progress {
            elapsed_secs: 4.0,
            devices: 5,
            connected: 5,
            errors: 1,
            ..Progress::default()
        };
        let c = Progress::combine([&a, &b]);
        assert_eq!(
            (c.elapsed_secs, c.devices, c.connected, c.acked, c.errors),
            (4.0, 15, 14, 5, 1)
        );
        assert_eq!(
            c.line(12.4),
            "[    4s] connected 14/15  msgs/s 12  acked 5  reconnects 0  errors 1"
        );
    }

    #[test]
    fn error_counts() {
        let mut e = ErrorCounts::default();
        e.add(ErrorKind::Refused, 2);
        e.add(ErrorKind::ConnectionLost, 0);
        e.add(ErrorKind::Refused, 1);
        assert_eq!(e.total(), 3);
        assert_eq!(e.to_map(), BTreeMap::from([("refused".to_owned(), 3)]));
    }
}

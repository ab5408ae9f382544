//! What a simulated device does: the values it measures, the events it reports and the failures
//! injected into its connection.
//!
//! A [`Profile`] is the fleet-wide recipe; [`DeviceModel`] is one device's instance of it, with
//! its own randomised parameters (phase and period of each wave, battery level, …) drawn from a
//! generator seeded by the run's seed and the device's global index, so a run with `--seed` is
//! reproducible whatever the number of processes.

use std::f64::consts::TAU;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use device_agent::{Event, Telemetry};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

/// How often a flaky device loses its connection, on average: 120 times an hour (every 30 s), on
/// top of `--disconnect-rate`.
pub const FLAKY_DISCONNECTS_PER_HOUR: f64 = 120.0;

/// The shortest and longest time a randomly disconnected device stays offline.
pub const DISCONNECT_OFFLINE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(10));

/// The battery level below which a device reports `low_battery` (once).
pub const LOW_BATTERY_PERCENT: f64 = 20.0;

/// One measurement a device reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    /// °C, a sine around 21 ± 4 with a per-device period (10 to 60 minutes) and phase, plus noise.
    Temperature,
    /// %, a sine around 40 to 50 ± 8, plus noise, within 0 to 100.
    Humidity,
    /// %, starting between 25 and 100 and draining by 1 to 6 points an hour.
    Battery,
    /// dBm, an integer around a per-device level between −85 and −55, ± 3 plus noise.
    Rssi,
    /// Any other name: a sine around 50 ± 25 plus noise.
    Other(String),
}

impl Metric {
    /// The set used when `--metrics` is not given.
    #[must_use]
    pub fn defaults() -> Vec<Self> {
        vec![Self::Temperature, Self::Humidity, Self::Battery, Self::Rssi]
    }

    /// The field name in the telemetry payload.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Temperature => "temperature",
            Self::Humidity => "humidity",
            Self::Battery => "battery",
            Self::Rssi => "rssi",
            Self::Other(name) => name,
        }
    }
}

impl FromStr for Metric {
    type Err = InvalidMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s == "ts" || s.chars().any(|c| c.is_control() || c == '"') {
            return Err(InvalidMetric(s.to_owned()));
        }
        Ok(match s {
            "temperature" => Self::Temperature,
            "humidity" => Self::Humidity,
            "battery" => Self::Battery,
            "rssi" => Self::Rssi,
            other => Self::Other(other.to_owned()),
        })
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metric name that cannot be a telemetry field.
#[derive(Debug, thiserror::Error)]
#[error("invalid metric name {0:?}")]
pub struct InvalidMetric(String);

/// The fleet-wide behaviour: what every device sends, and the failures injected.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The time between two telemetry messages of one device.
    pub telemetry_interval: Duration,
    /// The fields of each telemetry message.
    pub metrics: Vec<Metric>,
    /// Random events per device per hour (a Poisson process), besides `low_battery`.
    pub event_rate_per_hour: f64,
    /// Random disconnections (a cut without DISCONNECT, then [`DISCONNECT_OFFLINE`]) per device
    /// per hour.
    pub disconnect_rate_per_hour: f64,
    /// The percentage of devices that are flaky: they also lose their connection
    /// [`FLAKY_DISCONNECTS_PER_HOUR`] times an hour.
    pub flaky_percent: f64,
    /// The percentage of devices that drop offline once, at a random moment between a quarter
    /// and a half of the run, for [`Profile::offline_for`].
    pub offline_percent: f64,
    /// How long a device dropping offline stays away; `None`: until the end of the run.
    pub offline_for: Option<Duration>,
    /// Fleet jobs: how devices run command jobs; `None`: they do not subscribe to jobs.
    pub jobs: Option<JobBehaviour>,
    /// Device twins: how devices follow their desired state; `None`: they ignore it.
    pub twin: Option<TwinBehaviour>,
}

/// How simulated devices follow their desired state (`devices/{id}/twin/…`): they ask for their
/// twin after every connection and report every delta as applied after a delay, except drifting
/// devices, which report something else (their twin shows `drifted`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwinBehaviour {
    /// How long applying a delta takes.
    pub delay: Duration,
    /// The percentage of devices that drift, decided from the run's seed and the device.
    pub drift_percent: f64,
}

impl TwinBehaviour {
    /// Whether device `index` drifts, for `seed`.
    #[must_use]
    pub fn drifts(&self, seed: u64, index: u64) -> bool {
        selected(index, self.drift_percent, salt(seed, 0x7717))
    }
}

/// How simulated devices run the command jobs they receive (`devices/{id}/jobs/…`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobBehaviour {
    /// How long a command takes before its result is reported.
    pub delay: Duration,
    /// The percentage of executions that fail, decided from the run's seed, the device, the job
    /// and the attempt: the same run with the same seed fails the same executions.
    pub failure_percent: f64,
}

impl JobBehaviour {
    /// Whether device `index`'s attempt `attempt` of `job` fails, for `seed`.
    #[must_use]
    pub fn fails(&self, seed: u64, index: u64, job: &str, attempt: u64) -> bool {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for v in [index, attempt] {
            h = splitmix(h ^ v);
        }
        for b in job.bytes() {
            h = splitmix(h ^ u64::from(b));
        }
        // Basis points: 0..10000.
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "0..=10000")]
        let threshold = (self.failure_percent.clamp(0.0, 100.0) * 100.0).round() as u64;
        h % 10_000 < threshold
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Default for Profile {
    /// Telemetry every 10 s with the default metrics, 2 events per device per hour, no failures.
    fn default() -> Self {
        Self {
            telemetry_interval: Duration::from_secs(10),
            metrics: Metric::defaults(),
            event_rate_per_hour: 2.0,
            disconnect_rate_per_hour: 0.0,
            flaky_percent: 0.0,
            offline_percent: 0.0,
            offline_for: None,
            jobs: None,
            twin: None,
        }
    }
}

/// A sine with noise, clamped: `center + amplitude·sin(2π·t/period + phase) + noise·N(0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wave {
    /// The mean value.
    pub center: f64,
    /// The sine's amplitude.
    pub amplitude: f64,
    /// The sine's period, in seconds.
    pub period_secs: f64,
    /// The sine's phase, in radians.
    pub phase: f64,
    /// The standard deviation of the noise; the noise never exceeds three of them.
    pub noise: f64,
    /// The lowest value reported.
    pub min: f64,
    /// The highest value reported.
    pub max: f64,
}

impl Wave {
    /// The value at `t` seconds, with fresh noise from `rng`.
    pub fn value(&self, t: f64, rng: &mut impl rand::Rng) -> f64 {
        let sine = (TAU * t / self.period_secs + self.phase).sin();
        (self.center + self.amplitude * sine + self.noise * gaussianish(rng))
            .clamp(self.min, self.max)
    }
}

/// Approximately standard normal noise: the sum of three uniform values in [−1, 1] (variance 1),
/// so it never leaves [−3, 3].
pub fn gaussianish(rng: &mut impl rand::Rng) -> f64 {
    (0..3).map(|_| rng.random_range(-1.0..=1.0)).sum()
}

/// How one metric of one device evolves.
#[derive(Debug, Clone, Copy)]
enum Model {
    Wave { wave: Wave, decimals: i32 },
    Battery { start: f64, drain_per_hour: f64 },
}

/// One simulated device: its sensors, its event and failure schedule.
#[derive(Debug)]
pub struct DeviceModel {
    rng: SmallRng,
    /// Parallel to [`Profile::metrics`].
    models: Vec<Model>,
    event_rate_per_hour: f64,
    disconnect_rate_per_hour: f64,
    low_battery_reported: bool,
    /// Whether this device is one of the flaky ones.
    flaky: bool,
    /// Whether this device drops offline once.
    drops_offline: bool,
}

impl DeviceModel {
    /// The model of the device with global index `index` in a run seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64, index: u64, profile: &Profile) -> Self {
        let mut rng = SmallRng::seed_from_u64(mix(seed, index));
        let models = profile.metrics.iter().map(|m| model(m, &mut rng)).collect();
        let flaky = selected(index, profile.flaky_percent, mix(seed, 1));
        Self {
            rng,
            models,
            event_rate_per_hour: profile.event_rate_per_hour,
            disconnect_rate_per_hour: profile.disconnect_rate_per_hour
                + if flaky { FLAKY_DISCONNECTS_PER_HOUR } else { 0.0 },
            low_battery_reported: false,
            flaky,
            drops_offline: selected(index, profile.offline_percent, mix(seed, 2)),
        }
    }

    /// Whether this device is one of the flaky ones.
    #[must_use]
    pub fn is_flaky(&self) -> bool {
        self.flaky
    }

    /// The values of `metrics` (the profile's) at `elapsed` into the run.
    pub fn readings<'a>(
        &mut self,
        metrics: &'a [Metric],
        elapsed: Duration,
    ) -> Vec<(&'a str, f64)> {
        let t = elapsed.as_secs_f64();
        metrics
            .iter()
            .zip(&self.models)
            .map(|(metric, model)| {
                let value = match *model {
                    Model::Wave { wave, decimals } => round(wave.value(t, &mut self.rng), decimals),
                    Model::Battery { start, drain_per_hour } => {
                        round((start - drain_per_hour * t / 3_600.0).max(0.0), 1)
                    }
                };
                (metric.name(), value)
            })
            .collect()
    }

    /// A telemetry message with the values at `elapsed`, and `low_battery` the first time the
    /// battery reads below [`LOW_BATTERY_PERCENT`].
    pub fn telemetry(
        &mut self,
        metrics: &[Metric],
        elapsed: Duration,
    ) -> (Telemetry, Option<Event>) {
        let mut telemetry = Telemetry::new();
        let mut event = None;
        for (name, value) in self.readings(metrics, elapsed) {
            if name == Metric::Battery.name()
                && value < LOW_BATTERY_PERCENT
                && !self.low_battery_reported
            {
                self.low_battery_reported = true;
                event = Some(
                    Event::new("low_battery").with_severity("warning").with_data("battery", value),
                );
            }
            telemetry = if name == Metric::Rssi.name() {
                // A whole number of dBm, as radios report it.
                #[expect(clippy::cast_possible_truncation, reason = "rssi lies within -120..=-30")]
                let dbm = value as i64;
                telemetry.with_field(name, dbm)
            } else {
                telemetry.with_field(name, value)
            };
        }
        (telemetry, event)
    }

    /// When, within the first `interval`, the device sends its first telemetry (spreads the fleet's
    /// messages over the interval).
    pub fn telemetry_offset(&mut self, interval: Duration) -> Duration {
        interval.mul_f64(self.rng.random_range(0.0..1.0))
    }

    /// The time until the next random event, `None` when the rate is zero.
    pub fn next_event_in(&mut self) -> Option<Duration> {
        exponential(self.event_rate_per_hour, &mut self.rng)
    }

    /// A random event: mostly `door_opened`, `motion_detected` and `button_pressed` (info),
    /// sometimes `tamper_detected` (critical).
    pub fn random_event(&mut self) -> Event {
        let roll: f64 = self.rng.random_range(0.0..1.0);
        if roll < 0.05 {
            return Event::new("tamper_detected").with_severity("critical");
        }
        match self.rng.random_range(0..3u8) {
            0 => Event::new("door_opened").with_data("door", self.rng.random_range(1..=4u8)),
            1 => Event::new("motion_detected").with_data("zone", self.rng.random_range(1..=8u8)),
            _ => Event::new("button_pressed"),
        }
    }

    /// The time until the next random disconnection, `None` when the rate is zero.
    pub fn next_disconnect_in(&mut self) -> Option<Duration> {
        exponential(self.disconnect_rate_per_hour, &mut self.rng)
    }

    /// How long a randomly disconnected device stays offline, within [`DISCONNECT_OFFLINE`].
    pub fn disconnect_offline_for(&mut self) -> Duration {
        let (min, max) = DISCONNECT_OFFLINE;
        min + (max - min).mul_f64(self.rng.random_range(0.0..=1.0))
    }

    /// When this device drops offline for long, counted from the start of the run: a random
    /// moment between a quarter and a half of `run` (or of 10 minutes when the run has no end);
    /// `None` for the devices that do not.
    pub fn drops_offline_at(&mut self, run: Option<Duration>) -> Option<Duration> {
        if !self.drops_offline {
            return None;
        }
        let run = run.unwrap_or(Duration::from_secs(600));
        Some(run.mul_f64(self.rng.random_range(0.25..=0.5)))
    }
}

/// A random seed below 2^53, so that it survives JSON tools that read numbers as doubles (jq).
#[must_use]
pub fn random_seed() -> u64 {
    rand::random::<u64>() >> 11
}

/// Whether device `index` is among the `percent` % chosen: a low-discrepancy (golden ratio)
/// sequence, so that very close to `percent` % of any run of consecutive indices is chosen,
/// unlike independent coin flips.
#[must_use]
pub fn selected(index: u64, percent: f64, salt: u64) -> bool {
    if percent <= 0.0 {
        return false;
    }
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    #[expect(clippy::cast_precision_loss, reason = "only the fractional part matters")]
    let offset = (salt >> 11) as f64 / (1u64 << 53) as f64;
    #[expect(clippy::cast_precision_loss, reason = "indices stay far below 2^52")]
    let x = (index as f64).mul_add(GOLDEN, offset).fract();
    x < percent / 100.0
}

/// The time to the next event of a Poisson process of `per_hour` events an hour.
fn exponential(per_hour: f64, rng: &mut impl rand::Rng) -> Option<Duration> {
    if per_hour <= 0.0 || !per_hour.is_finite() {
        return None;
    }
    let u: f64 = rng.random_range(0.0..1.0);
    let secs = -(1.0 - u).ln() * 3_600.0 / per_hour;
    Some(Duration::from_secs_f64(secs.min(1e9)))
}

/// The per-device model of `metric`, with random parameters from `rng`.
fn model(metric: &Metric, rng: &mut SmallRng) -> Model {
    let mut wave = |center: f64, amplitude: f64, noise: f64, min: f64, max: f64| Wave {
        center,
        amplitude,
        period_secs: rng.random_range(600.0..=3_600.0),
        phase: rng.random_range(0.0..TAU),
        noise,
        min,
        max,
    };
    match metric {
        Metric::Temperature => Model::Wave { wave: wave(21.0, 4.0, 0.2, -40.0, 85.0), decimals: 2 },
        Metric::Humidity => {
            let center = 45.0;
            let mut w = wave(center, 8.0, 0.5, 0.0, 100.0);
            w.center += rng.random_range(-5.0..=5.0);
            Model::Wave { wave: w, decimals: 1 }
        }
        Metric::Battery => Model::Battery {
            start: rng.random_range(25.0..=100.0),
            drain_per_hour: rng.random_range(1.0..=6.0),
        },
        Metric::Rssi => {
            let mut w = wave(-70.0, 3.0, 2.0, -120.0, -30.0);
            w.center = rng.random_range(-85.0..=-55.0);
            Model::Wave { wave: w, decimals: 0 }
        }
        Metric::Other(_) => {
            Model::Wave { wave: wave(50.0, 25.0, 1.0, f64::MIN, f64::MAX), decimals: 2 }
        }
    }
}

/// `x` rounded to `decimals` places.
fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A 64-bit mix of the run seed and a device index (SplitMix64's finaliser), so that the devices'
/// generators do not start from related states.
/// A salt for [`selected`] derived from the run's seed and a purpose number.
#[must_use]
pub fn salt(seed: u64, purpose: u64) -> u64 {
    mix(seed, purpose)
}

fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(metrics: &[&str]) -> Profile {
        Profile {
            metrics: metrics.iter().map(|m| m.parse().unwrap()).collect(),
            ..Profile::default()
        }
    }

    #[test]
    fn noise_stays_within_three_sigma_and_is_centred() {
        let mut rng = SmallRng::seed_from_u64(1);
        let samples: Vec<f64> = (0..20_000).map(|_| gaussianish(&mut rng)).collect();
        assert!(samples.iter().all(|x| x.abs() <= 3.0));
        let mean = samples.iter().sum::<f64>() / 20_000.0;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 20_000.0;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn waves_stay_within_amplitude_plus_noise() {
        let wave = Wave {
            center: 21.0,
            amplitude: 4.0,
            period_secs: 600.0,
            phase: 1.0,
            noise: 0.2,
            min: -40.0,
            max: 85.0,
        };
        let mut rng = SmallRng::seed_from_u64(2);
        let values: Vec<f64> = (0..6_000).map(|t| wave.value(f64::from(t), &mut rng)).collect();
        let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        assert!(lo >= 21.0 - 4.6 && hi <= 21.0 + 4.6, "{lo}..{hi}");
        // The sine is visible: both halves of the range are reached.
        assert!(lo < 17.5 && hi > 24.5, "{lo}..{hi}");
        // Clamping.
        let tight = Wave { min: 20.0, max: 22.0, ..wave };
        assert!((0..1_000).all(|t| (20.0..=22.0).contains(&tight.value(f64::from(t), &mut rng))));
    }

    #[test]
    fn device_readings_are_realistic() {
        let p = profile(&["temperature", "humidity", "battery", "rssi", "pressure"]);
        for index in 0..200 {
            let mut d = DeviceModel::new(7, index, &p);
            for minute in [0, 10, 60, 600] {
                let r = d.readings(&p.metrics, Duration::from_secs(minute * 60));
                let names: Vec<_> = r.iter().map(|(n, _)| *n).collect();
                assert_eq!(names, ["temperature", "humidity", "battery", "rssi", "pressure"]);
                let (t, h, b, rssi, other) = (r[0].1, r[1].1, r[2].1, r[3].1, r[4].1);
                assert!((16.4..=25.6).contains(&t), "temperature {t}");
                assert!((26.5..=63.5).contains(&h), "humidity {h}");
                assert!((0.0..=100.0).contains(&b), "battery {b}");
                assert!((-94.0..=-46.0).contains(&rssi) && rssi.fract() == 0.0, "rssi {rssi}");
                assert!((22.0..=78.0).contains(&other), "pressure {other}");
            }
        }
    }

    #[test]
    fn batteries_drain_and_report_low_battery_once() {
        let p = profile(&["battery"]);
        let mut d = DeviceModel::new(3, 0, &p);
        let level = |d: &mut DeviceModel, h: u64| {
            d.readings(&p.metrics, Duration::from_secs(h * 3_600))[0].1
        };
        let (start, later) = (level(&mut d, 0), level(&mut d, 5));
        assert!(later < start, "{start} -> {later}");
        assert_eq!(level(&mut d, 1_000), 0.0);
        let events: Vec<_> = (0..200)
            .filter_map(|h| d.telemetry(&p.metrics, Duration::from_secs(h * 3_600)).1)
            .collect();
        assert_eq!(events.len(), 1);
        let event: serde_json::Value = serde_json::from_slice(&events[0].to_payload()).unwrap();
        assert_eq!(event["name"], "low_battery");
        assert!(event["data"]["battery"].as_f64().unwrap() < LOW_BATTERY_PERCENT);
    }

    #[test]
    fn the_same_seed_gives_the_same_device() {
        let p = profile(&["temperature", "rssi"]);
        let run = |seed| {
            let mut d = DeviceModel::new(seed, 42, &p);
            (d.readings(&p.metrics, Duration::from_secs(100)), d.next_event_in())
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn selection_takes_the_asked_share() {
        for percent in [0.0, 1.0, 10.0, 33.0, 100.0] {
            let chosen = (0..10_000).filter(|i| selected(*i, percent, 12_345)).count();
            #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "test")]
            let expected = (percent * 100.0) as usize;
            assert!(chosen.abs_diff(expected) <= 3, "{percent}%: {chosen}");
        }
        let p = Profile { flaky_percent: 20.0, ..Profile::default() };
        let flaky = (0..1_000).filter(|i| DeviceModel::new(1, *i, &p).is_flaky()).count();
        assert!(flaky.abs_diff(200) <= 3, "{flaky}");
    }

    #[test]
    fn poisson_waits_average_to_the_rate() {
        let mut rng = SmallRng::seed_from_u64(9);
        assert_eq!(exponential(0.0, &mut rng), None);
        let n = 20_000;
        let total: f64 = (0..n).map(|_| exponential(60.0, &mut rng).unwrap().as_secs_f64()).sum();
        let mean = total / f64::from(n);
        assert!((mean - 60.0).abs() < 2.0, "{mean}");
    }

    #[test]
    fn offline_drops_happen_mid_run() {
        let p = Profile { offline_percent: 100.0, ..Profile::default() };
        let mut d = DeviceModel::new(1, 5, &p);
        let at = d.drops_offline_at(Some(Duration::from_secs(100))).unwrap();
        assert!((25.0..=50.0).contains(&at.as_secs_f64()), "{at:?}");
        let mut none = DeviceModel::new(1, 5, &Profile::default());
        assert_eq!(none.drops_offline_at(Some(Duration::from_secs(100))), None);
    }

    #[test]
    fn metric_names() {
        assert_eq!("rssi".parse::<Metric>().unwrap(), Metric::Rssi);
        assert_eq!(" co2 ".parse::<Metric>().unwrap(), Metric::Other("co2".to_owned()));
        for bad in ["", "ts", "a\"b"] {
            assert!(bad.parse::<Metric>().is_err(), "{bad:?}");
        }
    }
}

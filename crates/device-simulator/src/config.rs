//! A run's validated settings, [`SimConfig`], built from the command line (`cli`) or by a test.

use std::path::PathBuf;
use std::time::Duration;

use device_agent::Protocol;

use crate::profile::Profile;
use crate::shard::{self, Shard};

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The REST API's base URL, without a trailing slash, for example `http://127.0.0.1:8080`.
    pub server: String,
    /// The MQTT listener's host.
    pub mqtt_host: String,
    /// The MQTT listener's port.
    pub mqtt_port: u16,
    /// An admin (or operator) API token; needed unless every credential is in
    /// [`SimConfig::credentials_file`].
    pub token: Option<String>,
    /// Devices in the whole fleet (all shards).
    pub devices: u64,
    /// The device ids' prefix: devices are `{prefix}00001` and on.
    pub prefix: String,
    /// How long devices run once the first one started; `None`: until Ctrl-C.
    pub duration: Option<Duration>,
    /// Devices started per second, for the whole fleet (each of `P` processes starts `1/P` of it).
    pub ramp_rate: f64,
    /// The MQTT version the devices speak.
    pub protocol: Protocol,
    /// The devices' keep-alive.
    pub keep_alive: Duration,
    /// The session expiry the devices ask for (MQTT 5). Zero: the server drops the session at
    /// disconnection; the simulator subscribes to nothing, so a kept session holds nothing useful.
    pub session_expiry: Duration,
    /// The messages a disconnected device keeps (beyond, the oldest are dropped).
    pub offline_buffer: usize,
    /// What devices send and which failures are injected.
    pub profile: Profile,
    /// Loopback source addresses (`127.0.0.1 ..= 127.0.0.N`); `None`: automatic
    /// ([`shard::auto_source_addresses`]); `Some(0)`: the system chooses.
    pub source_addresses: Option<u8>,
    /// Processes to spread the fleet over; `None`: automatic ([`shard::auto_processes`]).
    pub processes: Option<u32>,
    /// The part of the fleet this process runs.
    pub shard: Shard,
    /// The seed of the devices' behaviour; `None`: a random one (reported in the summary).
    pub seed: Option<u64>,
    /// Where device credentials are cached between runs (JSON, mode 0600); `None`: new
    /// credentials every run.
    pub credentials_file: Option<PathBuf>,
    /// Whether devices are created and given credentials through the REST API; `false`: every
    /// credential must be in [`SimConfig::credentials_file`] (child processes).
    pub provision: bool,
    /// Zero-touch: the symmetric-key enrollment group through which devices without a cached
    /// credential register themselves over HTTP(S) (`POST /provision/v1/register`), with keys
    /// the run derives in bulk; `None`: bulk import and one credential per device.
    pub zero_touch: Option<String>,
    /// Registrations in flight at once in a zero-touch run.
    pub register_concurrency: usize,
    /// Percentage of command answers that are `failed` (the rest `succeeded`): answer `k` of the
    /// device with global index `i` fails when `profile::selected(i, pct, salt(seed, k))` holds,
    /// so a seeded run fails the same answers, and the first answers of a fleet fail for close to
    /// that share of devices (a low-discrepancy sequence, not independent draws).
    pub command_failure_pct: f64,
    /// How long a device takes to answer a command.
    pub command_delay: Duration,
}

impl SimConfig {
    /// A run of `devices` devices against the REST API at `server` and MQTT at
    /// `mqtt_host:mqtt_port`, with defaults: prefix `sim-`, 60 s, 500 devices per second, MQTT
    /// 5, keep-alive 30 s, no session kept, 100 buffered messages, [`Profile::default`],
    /// automatic processes and source addresses, a random seed, no credentials file.
    #[must_use]
    pub fn new(
        server: impl Into<String>,
        mqtt_host: impl Into<String>,
        mqtt_port: u16,
        devices: u64,
    ) -> Self {
        Self {
            server: server.into().trim_end_matches('/').to_owned(),
            mqtt_host: mqtt_host.into(),
            mqtt_port,
            token: None,
            devices,
            prefix: "sim-".to_owned(),
            duration: Some(Duration::from_secs(60)),
            ramp_rate: 500.0,
            protocol: Protocol::V5,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::ZERO,
            offline_buffer: 100,
            profile: Profile::default(),
            source_addresses: None,
            processes: None,
            shard: Shard::WHOLE,
            seed: None,
            credentials_file: None,
            provision: true,
            zero_touch: None,
            register_concurrency: 64,
            command_failure_pct: 0.0,
            command_delay: Duration::ZERO,
        }
    }

    /// The number of source addresses, automatic or as configured.
    #[must_use]
    pub fn source_address_count(&self) -> u8 {
        self.source_addresses.unwrap_or_else(|| shard::auto_source_addresses(self.devices))
    }

    /// The number of processes, automatic or as configured; 1 for a run that is itself a shard.
    #[must_use]
    pub fn process_count(&self) -> u32 {
        if self.shard != Shard::WHOLE {
            return 1;
        }
        self.processes.unwrap_or_else(|| shard::auto_processes(self.devices)).max(1)
    }
}

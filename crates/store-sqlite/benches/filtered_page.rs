//! How long the first page of a filtered device list takes on a large registry.
//!
//! Builds a registry of 1,000,000 devices (set `HERD_BENCH_DEVICES` for another size) in a
//! temporary directory through `Store::import_devices`, then times first pages of 50 devices for
//! several filters and prints a markdown table of the median and 99th percentile.
//!
//! Run with `cargo bench -p store-sqlite --bench filtered_page`.
//!
//! The fleet: ids `dev-0000000` …; tag `site` one of 10 cities, `floor` one of 5, `fw` one of 3;
//! states spread over registered, active, suspended and decommissioned (a quarter each); no device
//! is retired, so the `sparse` rows ask for pages that few or no devices fill.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{
    Actor, DeviceId, DevicePatch, DisplayName, Filter, ImportRow, LifecycleState, Mutation, Tags,
    Timestamp,
};
use store::{DeviceQuery, ImportMode, ImportOutcome, Store};
use store_sqlite::{SqliteOptions, SqliteStore};

const SITES: [&str; 10] =
    ["berlin", "paris", "rome", "madrid", "vienna", "prague", "oslo", "lisbon", "dublin", "athens"];
const STATES: [LifecycleState; 4] = [
    LifecycleState::Registered,
    LifecycleState::Active,
    LifecycleState::Suspended,
    LifecycleState::Decommissioned,
];
/// Rows per `import_devices` call.
const BATCH: usize = 20_000;
/// Timed runs per filter, after a few untimed ones: up to `RUNS`, at least `MIN_RUNS`, and no
/// more once a filter has taken `BUDGET` (slow filters would otherwise take minutes).
const RUNS: usize = 200;
const MIN_RUNS: usize = 50;
const BUDGET: Duration = Duration::from_secs(3);
const PAGE: u32 = 50;

#[expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let devices: usize = match std::env::var("HERD_BENCH_DEVICES") {
        Ok(n) => n.parse()?,
        Err(_) => 1_000_000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(SqliteOptions::new(dir.path().join("bench.db"))).await?;
        let store: Arc<dyn Store> = Arc::new(store);

        let started = Instant::now();
        let rows_written = build_fleet(&*store, devices).await?;
        let took = started.elapsed();
        println!(
            "built {devices} devices ({rows_written} import rows, one audit record each) in {:.1} s \
             ({:.0} rows/s)\n",
            took.as_secs_f64(),
            rows_written as f64 / took.as_secs_f64()
        );

        let middle = format!("dev-{:07}", devices / 2);
        let cases: Vec<(&str, Option<&str>, Option<&str>)> = vec![
            ("none", None, None),
            ("state", Some("state = 'active'"), None),
            ("tag", Some("tags.site = 'berlin'"), None),
            ("tag + state", Some("tags.site = 'berlin' and state = 'active'"), None),
            ("tag + tag", Some("tags.site = 'berlin' and tags.floor = '3'"), None),
            ("id prefix", Some("id startswith 'dev-0001'"), None),
            ("id prefix + tag", Some("id startswith 'dev-0001' and tags.site = 'rome'"), None),
            ("or", Some("tags.site = 'berlin' or state = 'suspended'"), None),
            ("not in", Some("state not in ('active', 'registered')"), None),
            ("tag not in", Some("tags.site not in ('berlin', 'paris', 'rome')"), None),
            ("tag in", Some("tags.site in ('oslo', 'rome')"), None),
            ("tag startswith", Some("tags.fw startswith '1.'"), None),
            ("has tag + not", Some("has tags.floor and not state = 'active'"), None),
            ("name startswith", Some("name startswith 'Sensor 12'"), None),
            // Sparse: few or no devices match, so the page walks far before it fills.
            ("sparse: tag + state", Some("tags.site = 'berlin' and state = 'retired'"), None),
            ("sparse: name prefix", Some("name startswith 'Sensor 99999'"), None),
            ("sparse: tag value", Some("tags.site = 'nowhere'"), None),
            ("tag + state, middle page", Some("tags.site = 'berlin' and state = 'active'"), Some(middle.as_str())),
            ("none, middle page", None, Some(middle.as_str())),
        ];

        println!("| filter | expression | rows | runs | median | p99 |");
        println!("|---|---|---:|---:|---:|---:|");
        for (label, filter, after) in cases {
            let filter = filter.map(Filter::parse).transpose()?;
            let q = DeviceQuery {
                filter: filter.clone(),
                after: after.map(DeviceId::new).transpose()?,
                limit: NonZeroU32::new(PAGE).ok_or("page size is zero")?,
            };
            let (rows, runs, median, p99) = time_page(&*store, &q).await?;
            let expr = filter.map_or_else(|| "—".to_owned(), |f| format!("`{f}`"));
            let expr = match after {
                Some(a) => format!("{expr} after `{a}`"),
                None => expr,
            };
            println!("| {label} | {expr} | {rows} | {runs} | {} | {} |", ms(median), ms(p99));
        }

        let started = Instant::now();
        let counts = store.count_devices_by_state().await?;
        println!("\ncount_devices_by_state: {} ({:?})", ms(started.elapsed()), counts.0);
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Imports the fleet in batches; returns how many import rows were applied.
async fn build_fleet(
    store: &dyn Store,
    devices: usize,
) -> Result<usize, Box<dyn std::error::Error>> {
    let actor = Actor::system();
    let mut applied = 0;
    let mut batch = Vec::with_capacity(BATCH + BATCH / 2);
    for i in 0..devices {
        let id = DeviceId::new(format!("dev-{i:07}"))?;
        let tags = Tags::new([
            ("site".to_owned(), SITES[i % 10].to_owned()),
            ("floor".to_owned(), (i / 10 % 5).to_string()),
            ("fw".to_owned(), ["1.2.0", "1.3.1", "2.0.0"][i / 50 % 3].to_owned()),
        ])?;
        // States cycle every 4 ids, offset every 40 ids so they are independent of the site.
        let state = STATES[(i + i / 40) % 4];
        let initial = match state {
            LifecycleState::Suspended => LifecycleState::Active,
            LifecycleState::Decommissioned => LifecycleState::Registered,
            other => other,
        };
        batch.push(ImportRow {
            line: i as u64 + 1,
            id: id.clone(),
            patch: DevicePatch {
                name: Some(DisplayName::new(format!("Sensor {i}"))?),
                tags: Some(tags),
                attributes: None,
                state: Some(initial),
            },
        });
        if state != initial {
            // A later row for the same id applies on top of the first: the honest way to reach
            // a non-initial state through the Store API.
            let patch = DevicePatch { state: Some(state), ..DevicePatch::default() };
            batch.push(ImportRow { line: i as u64 + 1, id, patch });
        }
        if batch.len() >= BATCH || i + 1 == devices {
            let m = Mutation { actor: actor.clone(), at: Timestamp::now() };
            let outcomes = store.import_devices(&batch, ImportMode::Atomic, &m).await?;
            if let Some(bad) = outcomes.iter().find(|o| matches!(o, ImportOutcome::Rejected(_))) {
                return Err(format!("import rejected a row: {bad:?}").into());
            }
            applied += batch.len();
            batch.clear();
        }
    }
    Ok(applied)
}

/// Times executions of the query; returns the page length, the number of runs, their median and
/// 99th percentile.
async fn time_page(
    store: &dyn Store,
    q: &DeviceQuery,
) -> Result<(usize, usize, Duration, Duration), Box<dyn std::error::Error>> {
    let mut rows = 0;
    for _ in 0..5 {
        rows = store.list_devices(q).await?.items.len();
    }
    let mut samples = Vec::with_capacity(RUNS);
    let all = Instant::now();
    while samples.len() < RUNS && (samples.len() < MIN_RUNS || all.elapsed() < BUDGET) {
        let started = Instant::now();
        let page = store.list_devices(q).await?;
        samples.push(started.elapsed());
        std::hint::black_box(page);
    }
    samples.sort();
    let n = samples.len();
    Ok((rows, n, samples[n / 2], samples[(n * 99).div_ceil(100) - 1]))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

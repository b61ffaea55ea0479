//! The embedded store's write rate and read times under the smart-meter workload: `--devices`
//! devices each sending `{"ts":..,"values":{"pulseCounter":N,"leakage":false,"batteryLevel":..}}`
//! (three data points a message) with its own increasing `ts`, arriving interleaved. Messages
//! go to the real `EmbeddedStore` the way the sink hands them over: `WriteBatch`es of
//! `--batch` messages (the sink's `store.batch_size`, 10 000 by default, which is what it polls
//! under sustained load), one write at a time, each awaited before the next.
//!
//! Then the REST read paths, each the median of several runs: the raw range of one key of one
//! device over the whole run (up to `api.max_points_per_response` points), AVG and MAX of one
//! key over 700 intervals (`api.max_intervals`), and a device's latest values.
//!
//! Prints one JSON line.
//!
//! ```sh
//! cargo run --release -p benches --bin storebench -- --messages 2000000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::batch::WriteBatch;
use actors::model::{DeviceId, KvEntry, KvValue, Message, MessageBody, TenantId, TsRecord};
use actors::ports::{Aggregation, Order, RangeQuery, Store};
use anyhow::Context;
use clap::Parser;
use engine::store::embedded::EmbeddedStore;

#[derive(Parser)]
#[command(about = "Write rate and read times of the embedded store under the smart-meter load")]
struct Args {
    /// Messages in all (three time-series rows each).
    #[arg(long, default_value_t = 2_000_000)]
    messages: usize,
    /// Messages per write (the sink's `store.batch_size`).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Runs of each read; the median is reported.
    #[arg(long, default_value_t = 7)]
    reads: usize,
    /// Where the database goes (a fresh temporary directory when unset). An existing database
    /// there is opened (and migrated) as the engine would.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const T0: i64 = 1_780_000_000_000;

/// The messages of one batch: devices in a fixed pseudo-random order, as connections interleave.
struct Workload {
    devices: Vec<DeviceId>,
    tenant: TenantId,
    next_ts: Vec<i64>,
    counter: Vec<i64>,
    rng: u64,
}

impl Workload {
    fn new(devices: usize) -> Workload {
        let tenant = TenantId::from_name("storebench");
        Workload {
            devices: (0..devices)
                .map(|i| DeviceId::derive(tenant, &format!("meter-{i}")))
                .collect(),
            tenant,
            next_ts: vec![T0; devices],
            counter: vec![0; devices],
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn messages(&mut self, n: usize) -> Vec<Message> {
        (0..n)
            .map(|_| {
                #[allow(clippy::cast_possible_truncation)]
                let d = (self.random() % self.devices.len() as u64) as usize;
                let ts = self.next_ts[d];
                self.next_ts[d] += 1;
                #[allow(clippy::cast_possible_wrap)]
                let step = 1 + (self.random() % 3) as i64;
                self.counter[d] += step;
                #[allow(clippy::cast_precision_loss)]
                let battery = 87.5 - (self.counter[d] % 100) as f64 * 0.01;
                Message {
                    tenant_id: self.tenant,
                    device_id: self.devices[d],
                    received_ts: ts,
                    body: MessageBody::Telemetry(vec![TsRecord {
                        ts,
                        entries: vec![
                            KvEntry::new("pulseCounter", KvValue::Long(self.counter[d])),
                            KvEntry::new("leakage", KvValue::Bool(false)),
                            KvEntry::new("batteryLevel", KvValue::Double(battery)),
                        ],
                    }]),
                }
            })
            .collect()
    }
}

fn median(mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    runs[runs.len() / 2].as_secs_f64() * 1e3
}

fn query(key: &str, start: i64, end: i64, agg: Aggregation, interval: i64) -> RangeQuery {
    RangeQuery {
        keys: Some(vec![key.to_owned()]),
        start_ts: start,
        end_ts: end,
        interval,
        limit: 50_000,
        agg,
        order: Order::Asc,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.batch > 0 && args.devices > 0,
        "--batch and --devices must be > 0"
    );
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let opened = Instant::now();
    let (store, _registry) = EmbeddedStore::open(&dir).context("opening the store")?;
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    let store: Arc<dyn Store> = Arc::new(store);

    let mut workload = Workload::new(args.devices);
    let (mut rows, mut written, mut building) = (0usize, 0usize, Duration::ZERO);
    let mut writing = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    let cpu_before = cpu_seconds();
    while written < args.messages {
        let n = args.batch.min(args.messages - written);
        let built = Instant::now();
        let messages = workload.messages(n);
        let batch = Arc::new(WriteBatch::from_messages(messages.iter()));
        building += built.elapsed();
        rows += batch.timeseries.len();
        let started = Instant::now();
        store.write(batch).await.context("write")?;
        let took = started.elapsed();
        writing += took;
        slowest = slowest.max(took);
        written += n;
    }
    let secs = writing.as_secs_f64();
    // CPU of the whole process (the writer's thread, SQLite, building the batches), per row.
    let cpu = cpu_seconds().map(|after| after - cpu_before.unwrap_or(0.0));

    let device = workload.devices[7];
    let end = workload.next_ts[7] + 1;
    let interval = ((end - T0) / 700).max(1);
    let timed = |q: RangeQuery| {
        let store = store.clone();
        async move {
            let mut runs = Vec::new();
            let mut points = 0;
            for _ in 0..args.reads.max(1) {
                let started = Instant::now();
                let got = store.range(device, &q).await?;
                runs.push(started.elapsed());
                points = got.values().map(Vec::len).sum::<usize>();
            }
            anyhow::Ok((median(runs), points))
        }
    };
    let (range_ms, range_points) =
        timed(query("pulseCounter", T0, end, Aggregation::None, 0)).await?;
    let (avg_ms, buckets) =
        timed(query("batteryLevel", T0, end, Aggregation::Avg, interval)).await?;
    let (max_ms, _) = timed(query("pulseCounter", T0, end, Aggregation::Max, interval)).await?;
    let mut runs = Vec::new();
    for _ in 0..args.reads.max(1) {
        let started = Instant::now();
        let latest = store.latest(device, None).await?;
        runs.push(started.elapsed());
        anyhow::ensure!(latest.len() == 3, "latest values of a device: {latest:?}");
    }
    let latest_ms = median(runs);

    #[allow(clippy::cast_precision_loss)]
    let rows_per_s = rows as f64 / secs;
    #[allow(clippy::cast_precision_loss)]
    let messages_per_s = written as f64 / secs;
    println!(
        "{{\"messages\":{written},\"rows\":{rows},\"batch\":{},\"write_s\":{secs:.2},\
         \"rows_per_s\":{rows_per_s:.0},\"messages_per_s\":{messages_per_s:.0},\
         \"slowest_write_ms\":{:.1},\"cpu_s\":{:.2},\"batch_build_s\":{:.2},\"open_ms\":{open_ms:.1},\
         \"range_ms\":{range_ms:.2},\"range_points\":{range_points},\"avg_ms\":{avg_ms:.2},\
         \"max_ms\":{max_ms:.2},\"buckets\":{buckets},\"latest_ms\":{latest_ms:.3}}}",
        args.batch,
        slowest.as_secs_f64() * 1e3,
        cpu.unwrap_or(f64::NAN),
        building.as_secs_f64(),
    );
    Ok(())
}

/// User and system CPU seconds of this process so far (Linux), to tell the store's cost from
/// the wait for a core on a shared machine.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

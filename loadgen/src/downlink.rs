//! `loadgen downlink`: the way back under load. N MQTT devices stay connected, subscribed to
//! server-side RPC and shared attributes; each answers every RPC request at once with its
//! params. Then, through the REST API:
//!
//! 1. RPC: `--concurrency` callers send two-way RPC (`POST /api/rpc/twoway/{id}`) round-robin
//!    over the devices for `--duration`; every answer is checked (200 and the params echoed).
//!    Reported: round trips per second and the REST call's latency.
//! 2. Fan-out: `--rounds` rounds of one shared-attribute update per device
//!    (`POST .../attributes/SHARED_SCOPE`, `--concurrency` in flight); reported: updates
//!    delivered to devices per second (from the first post to the last delivery), and each
//!    update's latency from its post to its arrival at the device.
//!
//! The report also gives this process's own CPU time, so a reader can see whether the load
//! generator or the engine was the limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::{Value, json};

use crate::report::Percentiles;
use crate::rest::Rest;

#[derive(clap::Args, Debug)]
pub struct DownlinkArgs {
    /// Number of connected devices
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Device i is named and authenticated by the token <prefix><i>; the devices are created
    /// when missing
    #[arg(long, default_value = "downlink-")]
    pub token_prefix: String,
    /// MQTT server address
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub target: std::net::SocketAddr,
    /// Base URL of the REST API
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub rest: String,
    #[arg(long, default_value = "tenant@thingsboard.org")]
    pub username: String,
    #[arg(long, default_value = "tenant")]
    pub password: String,
    /// REST calls in flight at once
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long the RPC phase runs
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Shared-attribute rounds (one update per device each)
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Also write the report as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// No progress lines on stderr
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
pub struct DownlinkReport {
    pub devices: usize,
    pub rpc_calls: u64,
    pub rpc_failed: u64,
    pub rpc_per_second: f64,
    /// REST call latency, milliseconds.
    pub rpc_latency: Percentiles,
    pub updates_sent: u64,
    pub updates_delivered: u64,
    pub updates_per_second: f64,
    /// From the REST post to the device's receipt, milliseconds.
    pub update_latency: Percentiles,
    /// CPU time this process used (user + system) during the RPC phase, seconds.
    pub loadgen_rpc_cpu_seconds: f64,
    /// CPU time the engine used during the RPC phase (its `process_cpu_seconds_total`), when
    /// its `/metrics` answers.
    pub engine_rpc_cpu_seconds: Option<f64>,
    /// The RPC phase's length, seconds.
    pub rpc_seconds: f64,
    /// The engine's resident memory before the devices connected and with them connected and
    /// subscribed (after the RPC phase, so with their RPC state), MiB.
    pub engine_rss_before_mib: Option<f64>,
    pub engine_rss_connected_mib: Option<f64>,
    /// (connected - before) / devices, KiB: a connection, its session and its downlink state.
    pub engine_rss_per_device_kib: Option<f64>,
}

impl std::fmt::Display for DownlinkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.rpc_latency;
        let u = &self.update_latency;
        writeln!(f, "devices:            {}", self.devices)?;
        writeln!(
            f,
            "two-way RPC:        {} round trips, {} failed, {:.0}/s, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            self.rpc_calls, self.rpc_failed, self.rpc_per_second, l.p50, l.p99, l.max
        )?;
        writeln!(
            f,
            "attribute fan-out:  {} of {} updates delivered, {:.0}/s, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            self.updates_delivered, self.updates_sent, self.updates_per_second, u.p50, u.p99, u.max
        )?;
        write!(
            f,
            "CPU in the RPC phase ({:.1} s): loadgen {:.2} s",
            self.rpc_seconds, self.loadgen_rpc_cpu_seconds
        )?;
        if let Some(engine) = self.engine_rpc_cpu_seconds {
            write!(f, ", engine {engine:.2} s")?;
        }
        if let (Some(before), Some(connected), Some(per)) = (
            self.engine_rss_before_mib,
            self.engine_rss_connected_mib,
            self.engine_rss_per_device_kib,
        ) {
            write!(
                f,
                "\nengine memory:      {before:.1} MiB before, {connected:.1} MiB with the devices, {per:.2} KiB per device"
            )?;
        }
        Ok(())
    }
}

/// What the devices saw.
struct Seen {
    /// Updates delivered, and when the last one came.
    updates: AtomicU64,
    last_update: Mutex<Option<Instant>>,
    update_latency: Mutex<Histogram<u64>>,
}

/// A lock that a panicking holder did not poison for the others (the data are counters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .expect("a histogram of valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Connects device `token`, subscribes, and answers RPC until the process ends. Returns once
/// both subscriptions are granted.
async fn device(
    target: std::net::SocketAddr,
    token: String,
    epoch: Instant,
    seen: Arc<Seen>,
) -> Result<()> {
    let mut options = MqttOptions::new(&token, target.ip().to_string(), target.port());
    options
        .set_credentials(&token, "")
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(options, 64);
    client
        .subscribe("v1/devices/me/rpc/request/+", QoS::AtLeastOnce)
        .await?;
    client
        .subscribe("v1/devices/me/attributes", QoS::AtLeastOnce)
        .await?;
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<Result<()>>();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut granted = 0;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    granted += 1;
                    if granted == 2
                        && let Some(tx) = ready_tx.take()
                    {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(id) = p.topic.strip_prefix("v1/devices/me/rpc/request/") {
                        // The params are the reply.
                        let reply = serde_json::from_slice::<Value>(&p.payload)
                            .map(|v| v["params"].to_string())
                            .unwrap_or_default();
                        let topic = format!("v1/devices/me/rpc/response/{id}");
                        if client
                            .try_publish(topic, QoS::AtMostOnce, false, reply)
                            .is_err()
                        {
                            return;
                        }
                    } else if p.topic == "v1/devices/me/attributes" {
                        let now = epoch.elapsed();
                        if let Ok(update) = serde_json::from_slice::<Value>(&p.payload)
                            && let Some(sent) = update["fanout_t"].as_u64()
                        {
                            let latency = micros(now).saturating_sub(sent).max(1);
                            let _ = lock(&seen.update_latency).record(latency);
                            seen.updates.fetch_add(1, Ordering::Relaxed);
                            *lock(&seen.last_update) = Some(Instant::now());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(Err(anyhow::anyhow!("device {e}")));
                    }
                    return;
                }
            }
        }
    });
    ready.await.context("the device task ended")?
}

pub async fn run(args: &DownlinkArgs) -> Result<bool> {
    if args.devices == 0 || args.concurrency == 0 {
        bail!("--devices and --concurrency must be at least 1");
    }
    let rest = Rest::login(&args.rest, &args.username, &args.password).await?;
    let names: Vec<String> = (0..args.devices)
        .map(|i| format!("{}{i}", args.token_prefix))
        .collect();
    rest.provision(&names)
        .await
        .context("provisioning devices")?;
    let ids = rest.device_ids(&names).await?;
    if !args.quiet {
        eprintln!("{} devices ready", ids.len());
    }
    let rss_before = rest.engine_process().await.map(|(_, rss)| rss);
    let epoch = Instant::now();
    let seen = Arc::new(Seen {
        updates: AtomicU64::new(0),
        last_update: Mutex::new(None),
        update_latency: Mutex::new(histogram()),
    });
    let connected: Vec<Result<()>> = stream::iter(names.iter().cloned())
        .map(|token| device(args.target, token, epoch, seen.clone()))
        .buffer_unordered(256)
        .collect()
        .await;
    connected.into_iter().collect::<Result<Vec<()>>>()?;
    if !args.quiet {
        eprintln!("{} devices connected and subscribed", names.len());
    }
    // Every device answers once before the clock starts: its subscription has reached the
    // owner of its state.
    let warm: Vec<Result<()>> = stream::iter(ids.iter())
        .map(|id| {
            let rest = &rest;
            async move {
                let (status, _) = rest.rpc_twoway(id, &json!({"warm": true}), 30_000).await?;
                anyhow::ensure!(status == 200, "warm-up RPC to {id}: HTTP {status}");
                Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    warm.into_iter().collect::<Result<Vec<()>>>()?;

    // 1. Two-way RPC round trips.
    let calls = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let latency = Mutex::new(histogram());
    let next = AtomicU64::new(0);
    let engine_cpu_at_start = rest.engine_process().await.map(|(cpu, _)| cpu);
    let cpu_at_start = process_cpu();
    let rpc_started = Instant::now();
    let until = rpc_started + args.duration;
    let callers = (0..args.concurrency).map(|_| async {
        while Instant::now() < until {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let id = &ids[usize::try_from(n).unwrap_or(0) % ids.len()];
            let params = json!({"n": n});
            let at = Instant::now();
            match rest.rpc_twoway(id, &params, 10_000).await {
                Ok((200, body)) if serde_json::from_str::<Value>(&body).ok() == Some(params) => {
                    let _ = lock(&latency).record(micros(at.elapsed()));
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    futures::future::join_all(callers).await;
    let rpc_elapsed = rpc_started.elapsed();
    let loadgen_cpu = process_cpu() - cpu_at_start;
    let engine_at_end = rest.engine_process().await;
    let engine_cpu = engine_cpu_at_start
        .zip(engine_at_end)
        .map(|(start, (end, _))| end - start);
    let rss_connected = engine_at_end.map(|(_, rss)| rss);

    // 2. Shared-attribute fan-out.
    let fanout_started = Instant::now();
    let sent = AtomicU64::new(0);
    for round in 0..args.rounds {
        let posts: Vec<Result<()>> = stream::iter(ids.iter())
            .map(|id| {
                let sent = &sent;
                let rest = &rest;
                async move {
                    let body = json!({"fanout": round, "fanout_t": micros(epoch.elapsed())});
                    let status = rest.shared_attributes(id, &body).await?;
                    anyhow::ensure!(status == 200, "attribute update of {id}: HTTP {status}");
                    sent.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        posts.into_iter().collect::<Result<Vec<()>>>()?;
    }
    let expected = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.updates.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = seen.updates.load(Ordering::Relaxed);
    let last = lock(&seen.last_update).unwrap_or_else(Instant::now);
    let fanout_elapsed = last.saturating_duration_since(fanout_started);

    #[allow(clippy::cast_precision_loss)]
    let per_second = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let report = DownlinkReport {
        devices: ids.len(),
        rpc_calls: calls.load(Ordering::Relaxed),
        rpc_failed: failed.load(Ordering::Relaxed),
        rpc_per_second: per_second(calls.load(Ordering::Relaxed), rpc_elapsed),
        rpc_latency: Percentiles::of(&lock(&latency)),
        updates_sent: expected,
        updates_delivered: delivered,
        updates_per_second: per_second(delivered, fanout_elapsed),
        update_latency: Percentiles::of(&lock(&seen.update_latency)),
        loadgen_rpc_cpu_seconds: loadgen_cpu,
        engine_rpc_cpu_seconds: engine_cpu,
        rpc_seconds: rpc_elapsed.as_secs_f64(),
        engine_rss_before_mib: rss_before.map(|b| b / MIB),
        engine_rss_connected_mib: rss_connected.map(|b| b / MIB),
        #[allow(clippy::cast_precision_loss)]
        engine_rss_per_device_kib: rss_before
            .zip(rss_connected)
            .map(|(before, connected)| (connected - before) / 1024.0 / ids.len() as f64),
    };
    println!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report.rpc_failed == 0 && report.rpc_calls > 0 && delivered == expected)
}

const MIB: f64 = 1024.0 * 1024.0;

/// User plus system CPU seconds of this process so far, from `/proc/self/stat` (Linux; 0
/// elsewhere).
pub(crate) fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    (ticks(11) + ticks(12)) / 100.0
}

//! `loadgen live`: live data fan-out to apps. `--sessions` WebSocket sessions (ThingsBoard's
//! legacy endpoint `/api/ws/plugins/telemetry`, one login) each subscribe to `--key` of each of
//! `--devices` devices; while devices send telemetry (e.g. `loadgen mqtt --wall-clock-ts` in
//! parallel), every session counts the points it receives for `--duration`. Reported: updates
//! (points) received per second over all sessions, and each point's latency from its
//! timestamp to its arrival, which is the ingest-to-WebSocket latency when the sender stamps
//! points with the wall clock.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::report::Percentiles;
use crate::rest::Rest;

/// Subscriptions sent per WebSocket frame (ThingsBoard's frame limit is 32 KiB).
const COMMANDS_PER_FRAME: usize = 150;

#[derive(clap::Args, Debug)]
pub struct LiveArgs {
    /// WebSocket sessions
    #[arg(long, default_value_t = 10)]
    pub sessions: usize,
    /// Devices each session watches: those named <prefix><i>, which must exist
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    #[arg(long, default_value = "loadgen-")]
    pub token_prefix: String,
    /// The time-series key subscribed to
    #[arg(long, default_value = "pulseCounter")]
    pub key: String,
    /// Base URL of the REST API (the WebSocket endpoint is on the same port)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub rest: String,
    #[arg(long, default_value = "tenant@thingsboard.org")]
    pub username: String,
    #[arg(long, default_value = "tenant")]
    pub password: String,
    /// How long to count, once every session has its snapshots
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Also write the report as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct LiveReport {
    pub sessions: usize,
    pub devices: usize,
    /// Points received over all sessions while counting.
    pub updates: u64,
    /// WebSocket messages received while counting.
    pub messages: u64,
    pub seconds: f64,
    pub updates_per_second: f64,
    /// From a point's timestamp to its arrival, milliseconds.
    pub latency: Percentiles,
    /// Sessions the server closed while counting.
    pub closed: u64,
    /// CPU time this process used while counting (user + system), seconds: compared with
    /// the engine's, it shows whether the receiver could have been the limit.
    pub loadgen_cpu_seconds: f64,
    /// CPU time the engine used while counting (its `process_cpu_seconds_total`).
    pub engine_cpu_seconds: Option<f64>,
}

impl std::fmt::Display for LiveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency;
        writeln!(
            f,
            "sessions x devices: {} x {} subscriptions",
            self.sessions, self.devices
        )?;
        writeln!(
            f,
            "updates:            {} points in {} messages over {:.1} s, {:.0}/s",
            self.updates, self.messages, self.seconds, self.updates_per_second
        )?;
        writeln!(
            f,
            "latency:            p50 {:.1} ms p99 {:.1} ms max {:.1} ms; {} sessions closed",
            l.p50, l.p99, l.max, self.closed
        )?;
        write!(
            f,
            "CPU while counting: loadgen {:.2} s",
            self.loadgen_cpu_seconds
        )?;
        if let Some(engine) = self.engine_cpu_seconds {
            write!(f, ", engine {engine:.2} s")?;
        }
        Ok(())
    }
}

/// What one session counted.
struct Counted {
    updates: u64,
    messages: u64,
    latency: Histogram<u64>,
    closed: bool,
}

/// Points of one key: `[ts, "value"]`.
type Points = Vec<(i64, Option<String>)>;

#[derive(Deserialize)]
struct Update {
    #[serde(default)]
    data: Option<std::collections::HashMap<String, Points>>,
}

/// Runs, prints the report (and writes it as JSON); false when no update arrived or a session
/// was closed.
pub async fn run(args: &LiveArgs) -> Result<bool> {
    let report = measure(args).await?;
    println!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report.updates > 0 && report.closed == 0)
}

async fn measure(args: &LiveArgs) -> Result<LiveReport> {
    let rest = Rest::login(&args.rest, &args.username, &args.password).await?;
    let names: Vec<String> = (0..args.devices)
        .map(|i| format!("{}{i}", args.token_prefix))
        .collect();
    let ids = rest.device_ids(&names).await?;
    let url = format!(
        "{}/api/ws/plugins/telemetry?token={}",
        args.rest.replacen("http", "ws", 1),
        rest.token()
    );
    let mut sockets = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .context("websocket connect")?;
        for (chunk_no, chunk) in ids.chunks(COMMANDS_PER_FRAME).enumerate() {
            let cmds: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    json!({"cmdId": chunk_no * COMMANDS_PER_FRAME + i, "entityType": "DEVICE",
                           "entityId": id, "keys": args.key})
                })
                .collect();
            ws.send(Message::text(json!({ "tsSubCmds": cmds }).to_string()))
                .await?;
        }
        // One snapshot per subscription before counting starts.
        let mut snapshots = 0;
        while snapshots < ids.len() {
            match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => snapshots += 1,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => bail!("websocket: {e}"),
                Ok(None) => bail!("the server closed a session while subscribing"),
                Err(_) => bail!("no snapshots within 60 s ({snapshots} of {})", ids.len()),
            }
        }
        sockets.push(ws);
    }
    let engine_at_start = rest.engine_process().await;
    let cpu_at_start = crate::downlink::process_cpu();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tasks = Vec::with_capacity(sockets.len());
    for mut ws in sockets {
        tasks.push(tokio::spawn(async move {
            let mut c = Counted {
                updates: 0,
                messages: 0,
                latency: latency_histogram(),
                closed: false,
            };
            loop {
                let m = match tokio::time::timeout_at(deadline, ws.next()).await {
                    Err(_) => break,
                    Ok(None | Some(Err(_))) => {
                        c.closed = true;
                        break;
                    }
                    Ok(Some(Ok(m))) => m,
                };
                let Message::Text(text) = m else { continue };
                let now = crate::now_ms();
                c.messages += 1;
                let update: Update = serde_json::from_str(text.as_str())?;
                for points in update.data.into_iter().flat_map(|d| d.into_values()) {
                    for (ts, _) in points {
                        c.updates += 1;
                        // Timestamps are milliseconds.
                        let late_ms = u64::try_from(now.saturating_sub(ts)).unwrap_or(0);
                        c.latency
                            .saturating_record(late_ms.saturating_mul(1000).max(1));
                    }
                }
            }
            anyhow::Ok(c)
        }));
    }
    let mut latency = latency_histogram();
    let (mut updates, mut messages, mut closed) = (0, 0, 0);
    for t in tasks {
        let c = t.await??;
        updates += c.updates;
        messages += c.messages;
        closed += u64::from(c.closed);
        latency.add(&c.latency)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let loadgen_cpu_seconds = crate::downlink::process_cpu() - cpu_at_start;
    let engine_at_end = rest.engine_process().await;
    let engine_cpu_seconds = engine_at_start
        .zip(engine_at_end)
        .map(|((before, _), (after, _))| after - before);
    #[allow(clippy::cast_precision_loss)]
    Ok(LiveReport {
        sessions: args.sessions,
        devices: args.devices,
        updates,
        messages,
        seconds,
        updates_per_second: updates as f64 / seconds.max(1e-9),
        latency: Percentiles::of(&latency),
        closed,
        loadgen_cpu_seconds,
        engine_cpu_seconds,
    })
}

/// Latencies in microseconds (the report's unit), up to an hour.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

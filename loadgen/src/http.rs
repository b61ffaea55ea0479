//! The HTTP driver: `concurrency` workers over keep-alive connections, each posting for its
//! share of the devices in turn (`POST /api/v1/{token}/telemetry`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Result;

use crate::{HttpArgs, Run};

pub async fn run(run: Arc<Run>, args: &HttpArgs) -> Result<()> {
    let workers = args.concurrency.clamp(1, run.devices.len().max(1) * 64);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(workers)
        .build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    // Connections are per request pool, not per device: nothing to ramp.
    run.stats
        .connected
        .store(run.devices.len() as u64, Ordering::Relaxed);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (run, client, base) = (run.clone(), client.clone(), base.clone());
        tasks.spawn(async move { worker(&run, &client, &base, w, workers).await });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn worker(run: &Run, client: &reqwest::Client, base: &str, w: usize, workers: usize) {
    let stats = &run.stats;
    let schedule = run.schedule(workers, w);
    let mine: Vec<usize> = (w..run.devices.len()).step_by(workers).collect();
    if mine.is_empty() {
        return;
    }
    let quota: u64 = mine.iter().map(|&d| run.quota(d)).sum();
    let mut k: u64 = 0;
    let mut payload = String::with_capacity(256);
    tokio::time::sleep_until(run.start.into()).await;
    while k < quota && !run.sending_over(Instant::now()) {
        if let Some(s) = &schedule {
            tokio::time::sleep_until(s.due(k).into()).await;
            stats.lag(w, s.lag(k, Instant::now()));
        }
        #[allow(clippy::cast_possible_truncation)]
        let lane = mine[(k % mine.len() as u64) as usize];
        let dev = &run.devices[lane];
        if dev.sent.load(Ordering::Relaxed) >= run.quota(lane) {
            k += 1;
            continue;
        }
        let seq = dev.sent.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_possible_wrap)]
        run.template
            .render_into(seq, run.start_ms + seq as i64, &dev.name, &mut payload);
        stats.sent();
        let started = Instant::now();
        let result = client
            .post(format!("{base}/api/v1/{}/telemetry", dev.token))
            .header("Content-Type", "application/json")
            .body(payload.clone())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                stats.acked(w, started.elapsed());
                dev.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(resp) => stats.failed(&format!("HTTP {}", resp.status().as_u16()), 1),
            Err(e) if e.is_connect() => stats.failed("connection refused", 1),
            Err(_) => stats.failed("request error", 1),
        }
        k += 1;
    }
}

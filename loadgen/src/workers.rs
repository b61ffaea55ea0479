//! `--processes N`: one load test over several loadgen processes, so it can hold more
//! connections than one process may open files (20,000 on some machines). The parent provisions,
//! starts N copies of itself with the same arguments plus `--worker i --start-ms T`, shows their
//! summed progress, merges their final reports and verifies. Worker `i` drives the devices
//! `share(i)` of the whole range; all workers publish from the same instant `T` (wall clock,
//! milliseconds), so message `k` of every device carries the same timestamp it would carry in
//! one process.
//!
//! A worker talks to its parent over its standard output, one JSON line at a time: a progress
//! line every half second, then its final report.

use std::ops::Range;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Run;
use crate::report::{DeviceCount, WorkerReport};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Progress {
        sent: u64,
        acked: u64,
        connected: u64,
    },
    Final(Box<WorkerReport>),
}

/// The devices worker `index` of `workers` drives: a contiguous share, the remainder going to
/// the first workers.
pub fn lanes(devices: usize, workers: usize, index: usize) -> Range<usize> {
    let workers = workers.max(1);
    let (per, extra) = (devices / workers, devices % workers);
    let start = index * per + index.min(extra);
    let len = per + usize::from(index < extra);
    start.min(devices)..(start + len).min(devices)
}

/// Runs in a worker: drives its lanes with `drive`, printing progress lines until it is done,
/// then its final report.
pub async fn worker(
    run: Arc<Run>,
    lanes: Range<usize>,
    drive: impl Future<Output = Result<()>>,
) -> Result<()> {
    let progress = {
        let run = run.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                print_line(&Line::Progress {
                    sent: run.stats.sent.load(Ordering::Relaxed),
                    acked: run.stats.acked.load(Ordering::Relaxed),
                    connected: run.stats.connected.load(Ordering::Relaxed),
                });
            }
        })
    };
    let outcome = drive.await;
    progress.abort();
    let devices = lanes
        .map(|lane| DeviceCount {
            lane,
            sent: run.devices[lane].sent.load(Ordering::Relaxed),
            acked: run.devices[lane].acked.load(Ordering::Relaxed),
        })
        .collect();
    print_line(&Line::Final(Box::new(run.stats.worker_report(devices))));
    outcome
}

fn print_line(line: &Line) {
    if let Ok(text) = serde_json::to_string(line) {
        println!("{text}");
    }
}

/// Runs in the parent: starts `workers` copies of this process, keeps `run.stats` showing
/// their summed progress, and merges their final reports into `run`.
pub async fn parent(run: Arc<Run>, workers: usize) -> Result<()> {
    let exe = std::env::current_exe().context("finding the loadgen executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut children = Vec::with_capacity(workers);
    for i in 0..workers {
        let child = tokio::process::Command::new(&exe)
            .args(&args)
            .arg("--worker")
            .arg(i.to_string())
            .arg("--start-ms")
            .arg(run.start_ms.to_string())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {i}"))?;
        children.push(child);
    }
    let progress: Arc<Vec<[std::sync::atomic::AtomicU64; 3]>> = Arc::new(
        (0..workers)
            .map(|_| std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)))
            .collect(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut child) in children.into_iter().enumerate() {
        let (run, progress) = (run.clone(), progress.clone());
        let stdout = child.stdout.take().context("worker stdout")?;
        tasks.spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut report = None;
            while let Some(line) = lines.next_line().await? {
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Progress {
                        sent,
                        acked,
                        connected,
                    }) => {
                        for (slot, v) in progress[i].iter().zip([sent, acked, connected]) {
                            slot.store(v, Ordering::Relaxed);
                        }
                        let sum =
                            |k: usize| progress.iter().map(|p| p[k].load(Ordering::Relaxed)).sum();
                        run.stats.sent.store(sum(0), Ordering::Relaxed);
                        run.stats.acked.store(sum(1), Ordering::Relaxed);
                        run.stats.connected.store(sum(2), Ordering::Relaxed);
                    }
                    Ok(Line::Final(r)) => report = Some(r),
                    Err(_) => eprintln!("worker {i}: {line}"),
                }
            }
            let status = child.wait().await?;
            match report {
                Some(r) => Ok::<_, anyhow::Error>(r),
                None => bail!("worker {i} ended ({status}) without a report"),
            }
        });
    }
    let mut reports = Vec::with_capacity(workers);
    while let Some(joined) = tasks.join_next().await {
        reports.push(joined.context("a worker's reader panicked")??);
    }
    for counter in [&run.stats.sent, &run.stats.acked, &run.stats.connected] {
        counter.store(0, Ordering::Relaxed);
    }
    for report in &reports {
        run.stats.absorb(report);
        for d in &report.devices {
            if let Some(dev) = run.devices.get(d.lane) {
                dev.sent.store(d.sent, Ordering::Relaxed);
                dev.acked.store(d.acked, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lanes_cover_every_device_once() {
        for (devices, workers) in [(10, 3), (3, 8), (20_000, 4), (1, 1), (7, 7)] {
            let mut next = 0;
            for i in 0..workers {
                let r = lanes(devices, workers, i);
                assert_eq!(r.start, next, "{devices} over {workers}: worker {i}");
                assert!(r.len() <= devices.div_ceil(workers));
                next = r.end;
            }
            assert_eq!(next, devices, "{devices} over {workers}");
        }
    }
}

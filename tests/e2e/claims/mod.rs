//! Claims of the README and ARCHITECTURE.md that no other test checked, one module per area;
//! `production` needs tansu and ClickHouse and runs with the other production tests.

mod config;
mod converters;
mod production;
mod rest;
mod transport;

use anyhow::Result;
use tests::Engine;

/// The sum of a metric's series whose line contains every one of `labels`.
pub async fn metric(engine: &Engine, name: &str, labels: &[&str]) -> Result<f64> {
    let text = reqwest::get(engine.url("/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Now in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

//! The hostile-client suite: each module sends one transport's malformed, oversized,
//! out-of-order and unauthorised input and checks the protocol's own answer, that the engine
//! stays up, that other sessions keep flowing and that memory stays bounded.

mod auth;
mod coap;
mod http;
mod integrations;
mod limits;
mod mqtt;
mod rest;

use anyhow::{Context, Result};
use tests::Engine;

/// Checks the engine is still alive and serving: the process runs, `/metrics` answers and a
/// fresh login succeeds. Call after every attack.
#[allow(dead_code)] // not every module uses every helper
pub async fn still_serving(engine: &Engine) -> Result<()> {
    let resp = reqwest::get(engine.url("/metrics"))
        .await
        .context("engine no longer answers HTTP")?;
    anyhow::ensure!(resp.status().is_success(), "/metrics: {}", resp.status());
    engine.rest().await.context("login after the attack")?;
    Ok(())
}

/// Fails when the engine's resident memory is above `max_mib`, printing what it is.
#[allow(dead_code)] // not every module uses every helper
pub fn rss_below(engine: &Engine, max_mib: u64) -> Result<()> {
    let rss = engine.rss_kib()? / 1024;
    anyhow::ensure!(rss <= max_mib, "engine RSS {rss} MiB is over {max_mib} MiB");
    Ok(())
}

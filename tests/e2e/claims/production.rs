//! The production path's acknowledgement and commit rules, forced rather than raced: with the
//! broker stopped, PUBACKs wait and at most `queue.max_in_flight` records are in flight; with
//! ClickHouse stopped, the offsets of what the sink could not write are not committed, so an
//! engine that shut down without storing them reads them again at its next start.
//! (Named `production` so the suite runs it one at a time with the other production tests.)

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tests::Engine;
use tests::mqtt::{Device3, Outcome, connect_v3};
use tests::servers::{ClickHouse, Tansu};

use super::metric;
use crate::SETTLE;

const TELEMETRY: &str = "v1/devices/me/telemetry";
const BASE_TS: i64 = 1_600_000_000_000;
/// Records the producer may have unconfirmed at once.
const MAX_IN_FLIGHT: usize = 4;
const DEVICES: usize = 10;

fn engine(dir: &std::path::Path, kafka: &Tansu, clickhouse: &ClickHouse) -> Result<Engine> {
    let brokers = kafka.brokers();
    let url = clickhouse.url();
    let max_in_flight = MAX_IN_FLIGHT.to_string();
    Engine::start_with(
        dir,
        &[
            ("ENGINE_QUEUE__KIND", "kafka"),
            ("ENGINE_QUEUE__BROKERS", &brokers),
            ("ENGINE_QUEUE__PARTITIONS", "4"),
            ("ENGINE_QUEUE__MAX_IN_FLIGHT", &max_in_flight),
            ("ENGINE_STORE__KIND", "clickhouse"),
            ("ENGINE_STORE__URL", &url),
            ("ENGINE_STORE__DATABASE", "engine"),
            ("ENGINE_STORE__BATCH_INTERVAL", "200ms"),
            ("ENGINE_STORE__RETRY_MAX", "500ms"),
            ("ENGINE_SHUTDOWN_TIMEOUT", "3s"),
        ],
    )
}

/// Distinct stored points of the key `seq`, as ClickHouse counts them.
async fn stored(clickhouse: &ClickHouse) -> Result<u64> {
    let text = clickhouse
        .query("SELECT count() FROM engine.ts_kv FINAL WHERE key = 'seq'")
        .await?;
    text.trim().parse().context("a count")
}

async fn wait_stored(clickhouse: &ClickHouse, want: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + 3 * SETTLE;
    loop {
        let now = stored(clickhouse).await.unwrap_or(0);
        if now == want {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{now} points stored, {want} expected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn point(seq: i64) -> String {
    json!({"ts": BASE_TS + seq, "values": {"seq": seq}}).to_string()
}

/// Waits until the metric reaches `want` (at least), failing with what it saw.
async fn wait_metric(engine: &Engine, name: &str, labels: &[&str], want: f64) -> Result<f64> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let now = metric(engine, name, labels).await?;
        if now >= want {
            return Ok(now);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {now}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_wait_for_the_broker_and_offsets_for_the_store() -> Result<()> {
    let mut kafka = Tansu::start()?;
    let mut clickhouse = ClickHouse::start()?;
    let dir = tempfile::tempdir()?;
    let mut node = engine(dir.path(), &kafka, &clickhouse)?;
    let rest = node.rest().await?;
    let mut devices: Vec<Device3> = Vec::new();
    for i in 0..DEVICES {
        let token = format!("held-{i}");
        rest.create_device(&token, &token).await?;
        devices.push(
            connect_v3(&node, &token, &token)
                .await
                .map_err(|c| anyhow::anyhow!("{token}: {c:?}"))?,
        );
    }
    // The path works: one point acknowledged and stored.
    assert_eq!(
        devices[0].publish(TELEMETRY, point(0)).await?,
        Outcome::Acked(0)
    );
    wait_stored(&clickhouse, 1).await?;

    // 1. The broker is down: every device publishes once. All ten reach the ingress, at most
    //    MAX_IN_FLIGHT records go to the producer, and no PUBACK comes.
    let received = "engine_messages_received_total";
    let mqtt = ["transport=\"mqtt\""];
    let before = metric(&node, received, &mqtt).await?;
    let blocked = "engine_queue_produce_blocked_seconds_count";
    let blocked_before = metric(&node, blocked, &[]).await?;
    kafka.pause();
    for (i, device) in devices.iter().enumerate() {
        device.send(TELEMETRY, point(1 + i64::try_from(i)?)).await?;
    }
    wait_metric(&node, received, &mqtt, before + DEVICES as f64).await?;
    let in_flight = "engine_queue_in_flight_messages";
    let held = wait_metric(&node, in_flight, &[], MAX_IN_FLIGHT as f64).await?;
    assert_eq!(held, MAX_IN_FLIGHT as f64, "records in flight");
    for (i, device) in devices.iter_mut().enumerate() {
        let early = device.outcome(Duration::from_millis(100)).await?;
        assert_eq!(early, None, "device {i} answered while the broker is down");
    }
    assert_eq!(
        metric(&node, in_flight, &[]).await?,
        MAX_IN_FLIGHT as f64,
        "still at the bound"
    );

    // The broker is back: every PUBACK comes, the six held back waited for a place, and
    // everything is stored.
    kafka.resume()?;
    for (i, device) in devices.iter_mut().enumerate() {
        let late = device.outcome(3 * SETTLE).await?;
        assert_eq!(late, Some(Outcome::Acked(0)), "device {i}");
    }
    let waited = metric(&node, blocked, &[]).await? - blocked_before;
    assert!(
        waited >= (DEVICES - MAX_IN_FLIGHT) as f64,
        "{waited} sends waited for a place in flight"
    );
    wait_stored(&clickhouse, 1 + DEVICES as u64).await?;

    // 2. ClickHouse is down: five more points are acknowledged (the broker has them) but
    //    cannot be stored. A graceful stop gives up after shutdown_timeout; what it commits
    //    must not include them.
    let failed = "engine_storage_errors_total";
    let failed_before = metric(&node, failed, &[]).await?;
    clickhouse.pause();
    for seq in 100..105 {
        assert_eq!(
            devices[1].publish(TELEMETRY, point(seq)).await?,
            Outcome::Acked(0),
            "the broker takes it while the store is down"
        );
    }
    // The sink holds a batch of them (everything before is stored): its write fails. From
    // here a sink that committed before writing would lose that batch.
    wait_metric(&node, failed, &[], failed_before + 1.0).await?;
    drop(devices);
    let status = node.terminate()?;
    ensure!(
        !status.success(),
        "nothing could be stored, yet exit {status}; log:\n{}",
        node.log()
    );
    ensure!(
        node.log().contains("shutdown timed out"),
        "log:\n{}",
        node.log()
    );
    clickhouse.resume()?;
    // The next start reads them again from the committed offsets and stores them.
    let node = engine(dir.path(), &kafka, &clickhouse)?;
    wait_stored(&clickhouse, 1 + DEVICES as u64 + 5)
        .await
        .with_context(|| format!("engine log:\n{}", node.log()))?;
    Ok(())
}

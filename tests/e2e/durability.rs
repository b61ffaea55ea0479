//! What was acknowledged is stored, across a graceful shutdown and a restart.

use anyhow::Result;
use serde_json::json;
use tests::Engine;
use tests::mqtt::{Outcome, connect_v3};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_qos1_messages_survive_sigterm_and_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for d in 0..4 {
        ids.push(
            rest.create_device(&format!("durable-{d}"), &format!("DURABLE_{d}"))
                .await?,
        );
        clients.push(
            connect_v3(&engine, &format!("DURABLE_{d}"), &format!("c{d}"))
                .await
                .map_err(|c| anyhow::anyhow!("{c:?}"))?,
        );
    }
    const PER_DEVICE: i64 = 250;
    let mut acked = 0;
    for i in 0..PER_DEVICE {
        for client in &mut clients {
            let payload = json!({"ts": 1_000_000 + i, "values": {"seq": i}}).to_string();
            if client.publish("v1/devices/me/telemetry", payload).await? == Outcome::Acked(0) {
                acked += 1;
            }
        }
    }
    assert_eq!(acked, 4 * PER_DEVICE);
    // Stop at once: acknowledged messages may still be in the queue, not yet in storage.
    let status = engine.terminate()?;
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status}; log:\n{}",
        engine.log()
    );
    drop(engine);

    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    for id in &ids {
        let count = rest
            .json(&format!(
                "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=seq&startTs=0&endTs=2000000&agg=COUNT&interval=2000000&useStrictDataTypes=true"
            ))
            .await?;
        assert_eq!(count["seq"][0]["value"], json!(PER_DEVICE), "device {id}");
    }
    // The devices and their tokens survived too.
    assert!(connect_v3(&engine, "DURABLE_0", "again").await.is_ok());
    Ok(())
}

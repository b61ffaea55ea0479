//! A full queue slows senders down instead of growing or dropping: HTTP gets 503 with
//! Retry-After, MQTT's PUBACK is held back until storage has taken the queue.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tests::Engine;
use tests::mqtt::{Outcome, connect_v3};

use crate::SETTLE;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_holds_back_acknowledgements() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // One partition of two places, and a sink that writes only every 8 s (or 1000 messages):
    // after two messages the queue is full until the next write.
    let engine = Engine::start_with(
        dir.path(),
        &[
            ("ENGINE_QUEUE__PARTITIONS", "1"),
            ("ENGINE_QUEUE__PARTITION_CAPACITY", "2"),
            ("ENGINE_STORE__BATCH_SIZE", "1000"),
            ("ENGINE_STORE__BATCH_INTERVAL", "8s"),
            ("ENGINE_HTTP__QUEUE_WAIT", "200ms"),
        ],
    )?;
    let rest = engine.rest().await?;
    let id = rest.create_device("pressed", "PRESSED").await?;
    let http = reqwest::Client::new();
    let post = |n: i64| {
        http.post(engine.url("/api/v1/PRESSED/telemetry"))
            .json(&json!({"n": n}))
            .send()
    };
    assert_eq!(post(1).await?.status().as_u16(), 200);
    assert_eq!(post(2).await?.status().as_u16(), 200);
    let busy = post(3).await?;
    assert_eq!(busy.status().as_u16(), 503, "a third message does not fit");
    assert_eq!(
        busy.headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // MQTT: the publish is received but not acknowledged while the queue is full.
    let mut device = connect_v3(&engine, "PRESSED", "pressed")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    device.send("v1/devices/me/telemetry", r#"{"n":4}"#).await?;
    let early = device.outcome(Duration::from_millis(500)).await?;
    assert_eq!(early, None, "no PUBACK while the queue is full");
    // The sink's next write frees the queue; then the PUBACK comes.
    let started = Instant::now();
    let late = device.outcome(SETTLE).await?;
    assert_eq!(
        late,
        Some(Outcome::Acked(0)),
        "PUBACK after {:?}",
        started.elapsed()
    );

    // Everything acknowledged is stored; the refused message is not. The last message waits
    // for the sink's next write (up to 8 s after the PUBACK); a loaded CI machine may stretch
    // that, so the poll is generous and says what it saw when it gives up.
    let url = format!(
        "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=n&startTs=0&endTs=9999999999999&agg=COUNT&interval=9999999999999&useStrictDataTypes=true"
    );
    let deadline = Instant::now() + 2 * SETTLE;
    loop {
        let v = rest.json(&url).await?;
        if v["n"][0]["value"] == json!(3) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "stored count is {} {:?} after the PUBACK, not 3",
            v["n"][0]["value"],
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let max = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=n&startTs=0&endTs=9999999999999&agg=SUM&interval=9999999999999&useStrictDataTypes=true"
        ))
        .await?;
    assert_eq!(max["n"][0]["value"], json!(1 + 2 + 4));
    Ok(())
}

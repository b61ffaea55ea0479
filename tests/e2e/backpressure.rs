//! A full queue slows senders down instead of growing or dropping: HTTP gets 503 with
//! Retry-After, MQTT's PUBACK is held back until storage has taken the queue.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tests::Engine;
use tests::mqtt::{Outcome, connect_v3};

use crate::SETTLE;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_holds_back_acknowledgements() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // One partition of two places, and storage held still (`store.test_pause_file`) until the
    // test lets it go: after two messages the queue is full, whatever the machine's speed.
    let pause = dir.path().join("store-paused");
    std::fs::write(&pause, b"")?;
    let pause_file = pause.to_string_lossy().into_owned();
    let engine = Engine::start_with(
        &dir.path().join("data"),
        &[
            ("ENGINE_QUEUE__PARTITIONS", "1"),
            ("ENGINE_QUEUE__PARTITION_CAPACITY", "2"),
            ("ENGINE_STORE__TEST_PAUSE_FILE", &pause_file),
            ("ENGINE_HTTP__QUEUE_WAIT", "200ms"),
        ],
    )?;
    let rest = engine.rest().await?;
    let id = rest.create_device("pressed", "PRESSED").await?;
    let http = reqwest::Client::new();
    // Each message carries its own time: two posts in the same millisecond with the server's
    // time would be one data point (same device, key and ts), as in ThingsBoard.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let post = |n: i64| {
        http.post(engine.url("/api/v1/PRESSED/telemetry"))
            .json(&json!({"ts": base + n.unsigned_abs() as u128, "values": {"n": n}}))
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
    engine
        .wait_for_sample(
            r#"engine_messages_received_total{transport="mqtt"}"#,
            SETTLE,
            |v| v >= 1.0,
        )
        .await?;
    // Storage is held, so nothing can free the queue: a PUBACK now would be a wrong one.
    let early = device.outcome(Duration::from_millis(200)).await?;
    assert_eq!(early, None, "no PUBACK while the queue is full");
    assert_eq!(
        engine
            .sample(r#"engine_messages_accepted_total{transport="mqtt"}"#)
            .await?,
        Some(0.0),
        "the held publish is not counted as accepted"
    );
    let count_url = format!(
        "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=n&startTs=0&endTs=9999999999999&agg=COUNT&interval=9999999999999&useStrictDataTypes=true"
    );
    let stored = rest.json(&count_url).await?;
    assert!(
        stored["n"][0]["value"].as_i64().unwrap_or(0) == 0,
        "nothing is stored while storage is held: {stored}"
    );

    // Storage goes on: the queue drains, and then the PUBACK comes.
    std::fs::remove_file(&pause)?;
    let late = device.outcome(SETTLE).await?;
    assert_eq!(late, Some(Outcome::Acked(0)), "PUBACK once storage went on");

    // Everything acknowledged is stored; the refused message is not.
    rest.eventually(SETTLE, || async {
        let v = rest.json(&count_url).await?;
        Ok((v["n"][0]["value"] == json!(3)).then_some(()))
    })
    .await?;
    let sum = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=n&startTs=0&endTs=9999999999999&agg=SUM&interval=9999999999999&useStrictDataTypes=true"
        ))
        .await?;
    assert_eq!(sum["n"][0]["value"], json!(1 + 2 + 4));
    Ok(())
}

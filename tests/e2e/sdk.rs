//! ThingsBoard's official Python device SDK (`tb-mqtt-client` from PyPI, in the virtual
//! environment `tests/run.sh` makes) against the engine, unchanged: `tests/sdk/*.py`.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tests::{Engine, sdk_python, sdk_script};

#[tokio::test(flavor = "multi_thread")]
async fn the_python_device_sdk_gets_its_limits_sends_and_reads_attributes() -> Result<()> {
    let python = sdk_python()?;
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("sdk-device", "SDK_TOKEN").await?;
    let resp = rest
        .post(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE"
        ))
        .json(&json!({"interval": 30}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let port = engine.mqtt.port().to_string();
    let script = sdk_script("device_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["127.0.0.1", &port, "SDK_TOKEN"])
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the SDK script failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().context("no output")?)?;
    // The SDK applied the engine's getSessionLimits answer (it keeps 80 % of maxPayloadSize).
    assert_eq!(seen["limits_received"], true, "{seen}");
    assert_eq!(seen["max_payload_size"], 65536 * 80 / 100, "{seen}");
    assert_eq!(seen["telemetry_rc"], 0, "{seen}");
    assert_eq!(seen["attributes_rc"], 0, "{seen}");
    assert_eq!(
        seen["attributes"],
        json!({"client": {"sdk_fw": "1.0"}, "shared": {"interval": 30}}),
        "{seen}"
    );
    // What it sent is stored.
    let latest = rest
        .eventually(std::time::Duration::from_secs(20), || async {
            let latest = rest.latest(&id).await?;
            Ok(latest.get("sdk_temp").is_some().then_some(latest))
        })
        .await?;
    assert_eq!(latest["sdk_temp"][0]["value"], 21.5);
    Ok(())
}

//! Converters over REST: `testUpLink` and `testDownLink` run the reference guides' decoders on a
//! sample against the running engine.

use anyhow::Result;
use serde_json::{Value, json};
use tests::Engine;

fn script(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/converters")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn test_uplink_and_downlink_run_scripts_on_samples() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;

    let body = json!({
        "payload": base64(b"SN-001,default,temperature,25.7,humidity,69\n"),
        "metadata": {"integrationName": "CoAP"},
        "decoder": script("coap-csv.rhai"),
    });
    let resp: Value = rest
        .post("/api/converter/testUpLink")
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(resp["error"], "", "{resp}");
    let output: Value = serde_json::from_str(resp["output"].as_str().unwrap_or_default())?;
    assert_eq!(output["deviceName"], "SN-001");
    assert_eq!(output["deviceType"], "default");
    assert_eq!(output["telemetry"]["temperature"], json!(25.7));
    assert_eq!(output["telemetry"]["humidity"], json!(69.0));

    // A script error comes back with its position; a runaway script is stopped.
    for (decoder, want) in [
        (
            "let a = 1;\nraiseError(\"bad frame \" + a);",
            "bad frame 1 (line 2",
        ),
        ("loop {}", "limit"),
        (
            "#{deviceType: \"x\"}",
            "deviceName (or assetName) must be a non-empty string",
        ),
        ("let x = ;", "syntax error"),
    ] {
        let body = json!({"payload": base64(b"x"), "decoder": decoder});
        let resp: Value = rest
            .post("/api/converter/testUpLink")
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let error = resp["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "{decoder}: {resp}");
        assert_eq!(resp["output"], "");
    }

    let body = json!({
        "msg": "{\"uploadFrequency\":60}",
        "metadata": {"deviceName": "sensorA", "firmwareVersion": "1.2.3"},
        "msgType": "ATTRIBUTES_UPDATED",
        "integrationMetadata": {},
        "encoder": script("mqtt-downlink.rhai"),
    });
    let resp: Value = rest
        .post("/api/converter/testDownLink")
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(resp["error"], "", "{resp}");
    let output: Value = serde_json::from_str(resp["output"].as_str().unwrap_or_default())?;
    assert_eq!(output["contentType"], "JSON");
    assert_eq!(
        output["data"],
        r#"{"firmwareVersion":"1.2.3","tempFreq":60}"#
    );
    assert_eq!(output["metadata"]["topic"], "temp-sensor/sensorA/upload");

    // Not without logging in.
    let anonymous = reqwest::Client::new()
        .post(engine.url("/api/converter/testUpLink"))
        .json(&json!({"payload": "", "decoder": "1"}))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);
    Ok(())
}

//! ThingsBoard's official Python device SDK (`tb-mqtt-client` from PyPI, in the virtual
//! environment `tests/run.sh` makes) against the engine, unchanged: `tests/sdk/*.py`.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tests::{Engine, SdkScript, sdk_python, sdk_script};

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
    // ThingsBoard's type cast: a string that parses as a number is stored as that number.
    assert_eq!(
        seen["attributes"],
        json!({"client": {"sdk_fw": "v1.0", "sdk_rev": 7}, "shared": {"interval": 30}}),
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

#[tokio::test(flavor = "multi_thread")]
async fn the_python_device_sdk_provisions_a_device_over_mqtt_and_uses_its_token() -> Result<()> {
    let python = sdk_python()?;
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let resp = rest
        .post("/api/deviceProfile")
        .json(&json!({
            "name": "sdk-meters",
            "provisionType": "ALLOW_CREATE_NEW_DEVICES",
            "provisionDeviceKey": "sdk-key",
            "profileData": {"provisionConfiguration": {
                "type": "ALLOW_CREATE_NEW_DEVICES", "provisionDeviceSecret": "sdk-secret"}}
        }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "profile: {}",
        resp.text().await?
    );
    let port = engine.mqtt.port().to_string();
    let run = |secret: &'static str| {
        let (python, script, port) = (
            python.clone(),
            sdk_script("provision_client.py"),
            port.clone(),
        );
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .args(["127.0.0.1", &port, "sdk-key", secret, "sdk-provisioned"])
                .output()
        })
    };
    let out = run("sdk-secret").await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the SDK script failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().context("no output")?)?;
    assert_eq!(seen["credentials"]["status"], "SUCCESS", "{seen}");
    assert_eq!(
        seen["credentials"]["credentialsType"], "ACCESS_TOKEN",
        "{seen}"
    );
    assert_eq!(seen["telemetry_rc"], 0, "{seen}");
    // The device exists under the name asked for, and what it sent with its new token is stored.
    let devices = rest.json("/api/tenant/devices?pageSize=100&page=0").await?;
    let id = devices["data"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["name"] == "sdk-provisioned"))
        .and_then(|d| d["id"]["id"].as_str())
        .context("the provisioned device is listed")?
        .to_owned();
    let latest = rest
        .eventually(std::time::Duration::from_secs(20), || async {
            let latest = rest.latest(&id).await?;
            Ok(latest.get("provisioned_temp").is_some().then_some(latest))
        })
        .await?;
    assert_eq!(latest["provisioned_temp"][0]["value"], 19.5);

    // The same name again fails (the SDK logs ThingsBoard's FAILURE and returns nothing; the
    // answer itself is checked byte for byte in `provisioning.rs`).
    let out = run("sdk-secret").await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = serde_json::from_str(stdout.lines().last().context("no output")?)?;
    assert_eq!(seen["credentials"], Value::Null, "{seen}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Failed to provision device!"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_device_sdk_answers_rpc_and_gets_shared_attribute_changes() -> Result<()> {
    use std::time::Duration;
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("sdk-downlinks", "SDK_DOWNLINKS").await?;
    let port = engine.mqtt.port().to_string();
    let mut script = SdkScript::start(
        "device_downlinks.py",
        &["127.0.0.1", &port, "SDK_DOWNLINKS"],
    )?;
    let ready = tokio::task::block_in_place(|| script.next(Duration::from_secs(60)))?;
    assert_eq!(ready, Some(json!("ready")));

    // Two-way: the SDK's handler gets the request and its reply is the REST answer; one-way
    // requests reach it too.
    let response = rest
        .post(&format!("/api/rpc/twoway/{id}"))
        .json(&json!({"method": "echo", "params": {"x": 1}, "timeout": 20000}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await?, json!({"echo": {"x": 1}}));
    let response = rest
        .post(&format!("/api/plugins/rpc/oneway/{id}"))
        .json(&json!({"method": "blink", "params": [1, 2]}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let mut rpcs: Vec<Value> = Vec::new();
    let mut attributes: Vec<Value> = Vec::new();
    // Shared attributes: saved until the SDK's callback has one, then deleted until it has the
    // deletion (the subscription reaches the owner through the queue).
    let shared = format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE");
    let deleting = format!("/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE?keys=interval");
    for round in 0..40 {
        let saved = attributes.iter().any(|a| a.get("interval").is_some());
        if attributes.iter().any(|a| a.get("deleted").is_some()) {
            break;
        }
        anyhow::ensure!(round < 39, "the SDK got {attributes:?}");
        let request = if saved {
            rest.delete(&deleting)
        } else {
            rest.post(&shared)
                .json(&json!({"interval": 5, "mode": "eco"}))
        };
        assert_eq!(request.send().await?.status(), 200);
        while let Some(event) =
            tokio::task::block_in_place(|| script.next(Duration::from_millis(500)))?
        {
            if let Some(rpc) = event.get("rpc") {
                rpcs.push(rpc["body"].clone());
            } else if let Some(update) = event.get("attributes") {
                attributes.push(update.clone());
            }
        }
    }
    assert_eq!(
        rpcs,
        [
            json!({"method": "echo", "params": {"x": 1}}),
            json!({"method": "blink", "params": [1, 2]})
        ]
    );
    assert_eq!(attributes[0], json!({"interval": 5, "mode": "eco"}));
    assert_eq!(attributes.last(), Some(&json!({"deleted": ["interval"]})));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_http_device_sdk_long_polls_for_rpc_and_shared_attributes() -> Result<()> {
    use std::time::Duration;
    let dir = tempfile::tempdir()?;
    // A device's own request is answered {"error":"timeout"} after http.request_timeout.
    let engine = Engine::start_with(dir.path(), &[("ENGINE_HTTP__REQUEST_TIMEOUT", "3s")])?;
    let rest = engine.rest().await?;
    let id = rest.create_device("sdk-http", "SDK_HTTP").await?;
    let base = engine.url("");
    let mut script = SdkScript::start("device_http.py", &[base.trim_end_matches('/'), "SDK_HTTP"])?;
    let ready = tokio::task::block_in_place(|| script.next(Duration::from_secs(60)))?;
    assert_eq!(ready, Some(json!("ready")));

    // The SDK cannot answer id 0 (it takes 0 for "no id" and posts the reply as a request of
    // its own), with ThingsBoard as with us: a one-way request takes id 0 first.
    let response = rest
        .post(&format!("/api/rpc/oneway/{id}"))
        .json(&json!({"method": "hello", "params": {}, "timeout": 20000}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let response = rest
        .post(&format!("/api/rpc/twoway/{id}"))
        .json(&json!({"method": "setLed", "params": {"on": true}, "timeout": 20000}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    // The HTTP SDK answers with a body of its own shape.
    assert_eq!(
        response.json::<Value>().await?,
        json!({"method": "echo", "params": {"on": true}})
    );
    let mut events: Vec<Value> = Vec::new();
    let shared = format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE");
    for round in 0..40 {
        if events.iter().any(|e| e["attributes"]["interval"] == 7) {
            break;
        }
        anyhow::ensure!(round < 39, "the SDK got {events:?}");
        let r = rest
            .post(&shared)
            .json(&json!({"interval": 7}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        while let Some(event) =
            tokio::task::block_in_place(|| script.next(Duration::from_millis(500)))?
        {
            events.push(event);
        }
    }
    let rpcs: Vec<&Value> = events.iter().filter_map(|e| e.get("rpc")).collect();
    assert_eq!(
        rpcs,
        [
            &json!({"id": 0, "method": "hello", "params": {}}),
            &json!({"id": 1, "method": "setLed", "params": {"on": true}})
        ]
    );
    // Its own request, which no rule answers: ThingsBoard's timeout answer.
    let own = match events.iter().find_map(|e| e.get("own_rpc")).cloned() {
        Some(own) => own,
        None => tokio::task::block_in_place(|| script.next(Duration::from_secs(30)))?
            .context("no own RPC answer")?["own_rpc"]
            .clone(),
    };
    assert_eq!(own, json!({"error": "timeout"}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_device_sdk_connects_with_mqtt_basic_credentials() -> Result<()> {
    let python = sdk_python()?;
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("sdk-basic", "SDK_BASIC_TOKEN").await?;
    let value = json!({"clientId": "sdk-client", "userName": "sdk-user", "password": "sdk-pass"});
    let resp = rest
        .post("/api/device/credentials")
        .json(&json!({"deviceId": {"entityType": "DEVICE", "id": id},
                      "credentialsType": "MQTT_BASIC", "credentialsValue": value.to_string()}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let port = engine.mqtt.port().to_string();
    let script = sdk_script("device_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["127.0.0.1", &port, "sdk-user", "sdk-pass", "sdk-client"])
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
    assert_eq!(seen["limits_received"], true, "{seen}");
    assert_eq!(seen["telemetry_rc"], 0, "{seen}");
    assert_eq!(seen["attributes"]["client"]["sdk_fw"], "v1.0", "{seen}");
    Ok(())
}

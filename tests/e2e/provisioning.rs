//! Device profiles over REST, device provisioning over HTTP (`POST /api/v1/provision`) and
//! over MQTT's provision-only session (raw packets here; the official SDK in `sdk.rs`),
//! in ThingsBoard's shapes: both strategies, every answer, and the hostile cases.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tests::Engine;
use tests::mqtt::raw::{self, Raw};

fn profile(name: &str, provision_type: &str, key: &str, secret: &str) -> Value {
    json!({
        "name": name,
        "type": "DEFAULT",
        "transportType": "DEFAULT",
        "provisionType": provision_type,
        "provisionDeviceKey": key,
        "profileData": {
            "configuration": {"type": "DEFAULT"},
            "transportConfiguration": {"type": "DEFAULT"},
            "provisionConfiguration": {"type": provision_type, "provisionDeviceSecret": secret},
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn device_profiles_over_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;

    // Every tenant has a default profile.
    let default = rest.json("/api/deviceProfileInfo/default").await?;
    assert_eq!(default["name"], "default");
    let default_id = default["id"]["id"]
        .as_str()
        .context("default id")?
        .to_owned();

    let saved: Value = rest
        .post("/api/deviceProfile")
        .json(&profile(
            "thermostats",
            "ALLOW_CREATE_NEW_DEVICES",
            "k1",
            "s1",
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(saved["name"], "thermostats");
    assert_eq!(saved["default"], false);
    assert_eq!(saved["provisionDeviceKey"], "k1");
    assert_eq!(
        saved["profileData"]["provisionConfiguration"]["provisionDeviceSecret"],
        "s1"
    );
    let id = saved["id"]["id"].as_str().context("profile id")?.to_owned();
    assert_eq!(rest.json(&format!("/api/deviceProfile/{id}")).await?, saved);

    // A device created with the profile's id has the profile's name as its type, and names it.
    let device: Value = rest
        .post("/api/device")
        .json(
            &json!({"name": "t-1", "deviceProfileId": {"entityType": "DEVICE_PROFILE", "id": id}}),
        )
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(device["type"], "thermostats");
    assert_eq!(device["deviceProfileId"]["id"], id.as_str());

    let page = rest.json("/api/deviceProfiles?pageSize=10&page=0").await?;
    assert_eq!(page["totalElements"], 2);
    let names: Vec<&str> = page["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["default", "thermostats"]);

    // Errors: a name or a provision key taken, no name, no secret for a provisioning profile,
    // an unknown provision type, a bad or unknown id, deleting the default, no token.
    let status = |resp: reqwest::Response| resp.status().as_u16();
    let cases = [
        (profile("thermostats", "DISABLED", "", ""), 400),
        (
            profile("other", "ALLOW_CREATE_NEW_DEVICES", "k1", "s2"),
            400,
        ),
        (json!({"description": "no name"}), 400),
        (profile("p", "ALLOW_CREATE_NEW_DEVICES", "k9", ""), 400),
        (profile("p", "SOMETIMES", "k9", "s9"), 400),
        (json!({"name": "x".repeat(300)}), 400),
    ];
    for (body, expected) in cases {
        let got = status(rest.post("/api/deviceProfile").json(&body).send().await?);
        assert_eq!(got, expected, "{body}");
    }
    assert_eq!(
        status(rest.get("/api/deviceProfile/nope").send().await?),
        400
    );
    assert_eq!(
        status(
            rest.get("/api/deviceProfile/6f1e5b8a-37a4-4c7e-9a53-2a2c1d1f0b1c")
                .send()
                .await?
        ),
        404
    );
    assert_eq!(
        status(
            rest.delete(&format!("/api/deviceProfile/{default_id}"))
                .send()
                .await?
        ),
        400
    );
    let anonymous = reqwest::Client::new()
        .get(engine.url("/api/deviceProfiles?pageSize=10&page=0"))
        .send()
        .await?;
    assert_eq!(anonymous.status().as_u16(), 401);

    // Another profile made default takes over; then the old default may go.
    let made: Value = rest
        .post(&format!("/api/deviceProfile/{id}/default"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(made["default"], true);
    let default = rest.json("/api/deviceProfileInfo/default").await?;
    assert_eq!(default["id"]["id"], id.as_str());
    assert_eq!(
        status(
            rest.delete(&format!("/api/deviceProfile/{default_id}"))
                .send()
                .await?
        ),
        200
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_over_http() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    for body in [
        profile(
            "meters",
            "ALLOW_CREATE_NEW_DEVICES",
            "meter-key",
            "meter-secret",
        ),
        profile(
            "pre",
            "CHECK_PRE_PROVISIONED_DEVICES",
            "pre-key",
            "pre-secret",
        ),
        profile("off", "DISABLED", "", ""),
    ] {
        let resp = rest.post("/api/deviceProfile").json(&body).send().await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "profile: {}",
            resp.text().await?
        );
    }
    let http = reqwest::Client::new();
    let provision = |body: Value| {
        let http = http.clone();
        let url = engine.url("/api/v1/provision");
        async move {
            let resp = http.post(url).json(&body).send().await?;
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            anyhow::Ok((status, text))
        }
    };
    let answer = |text: &str| -> Result<Value> { Ok(serde_json::from_str(text)?) };

    // Allow-create: a new device with the token asked for, then the same name again fails.
    let request = json!({"deviceName": "meter-1", "provisionDeviceKey": "meter-key",
        "provisionDeviceSecret": "meter-secret", "token": "METER_1_TOKEN"});
    let (status, text) = provision(request.clone()).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        answer(&text)?,
        json!({"credentialsValue": "METER_1_TOKEN", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"})
    );
    let (status, text) = provision(request).await?;
    assert_eq!(status, 200);
    assert_eq!(
        answer(&text)?,
        json!({"errorMsg": "Failed to provision device!", "status": "FAILURE"})
    );
    // The device exists, of the profile's type, and its token works on the device API.
    let device = rest.json("/api/tenant/devices?deviceName=meter-1").await?;
    assert_eq!(device["type"], "meters");
    let id = device["id"]["id"].as_str().context("id")?.to_owned();
    let upload = http
        .post(engine.url("/api/v1/METER_1_TOKEN/telemetry"))
        .body(r#"{"kwh":12.5}"#)
        .send()
        .await?;
    assert_eq!(upload.status().as_u16(), 200);
    // The server attribute marking it provisioned.
    let marked = rest
        .eventually(Duration::from_secs(20), || async {
            let attrs = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/values/attributes/SERVER_SCOPE?keys=provisionState"
                ))
                .await?;
            Ok(attrs.as_array().and_then(|a| a.first()).map(|a| a["value"].clone()))
        })
        .await?;
    assert_eq!(marked, "provisioned");

    // Without a name or token: a generated name and token.
    let (status, text) = provision(json!({"provisionDeviceKey": "meter-key",
        "provisionDeviceSecret": "meter-secret"}))
    .await?;
    assert_eq!(status, 200);
    let generated = answer(&text)?;
    assert_eq!(generated["status"], "SUCCESS");
    assert_eq!(
        generated["credentialsValue"].as_str().map(str::len),
        Some(20)
    );

    // Pre-provisioned: a device of that profile made by the tenant answers with its token,
    // once; a device of another profile or none at all fails.
    let resp = rest
        .post("/api/device?accessToken=PRE_TOKEN")
        .json(&json!({"name": "pre-1", "type": "pre"}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "device: {}", resp.text().await?);
    rest.create_device("not-pre", "NOT_PRE_TOKEN").await?;
    let pre = |name: &str| json!({"deviceName": name, "provisionDeviceKey": "pre-key", "provisionDeviceSecret": "pre-secret"});
    let (_, text) = provision(pre("pre-1")).await?;
    assert_eq!(
        answer(&text)?,
        json!({"credentialsValue": "PRE_TOKEN", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"})
    );
    let again = rest
        .eventually(Duration::from_secs(20), || async {
            let (_, text) = provision(pre("pre-1")).await?;
            let v = answer(&text)?;
            Ok((v["status"] == "FAILURE").then_some(v))
        })
        .await?;
    assert_eq!(again["errorMsg"], "Failed to provision device!");
    for name in ["not-pre", "nobody"] {
        let (_, text) = provision(pre(name)).await?;
        assert_eq!(answer(&text)?["status"], "FAILURE", "{name}");
    }

    // NOT_FOUND: wrong secret, unknown key, empty key, a profile that does not provision.
    let not_found = json!({"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"});
    for body in [
        json!({"deviceName": "x", "provisionDeviceKey": "meter-key", "provisionDeviceSecret": "wrong"}),
        json!({"deviceName": "x", "provisionDeviceKey": "nope", "provisionDeviceSecret": "meter-secret"}),
        json!({"deviceName": "x", "provisionDeviceKey": "", "provisionDeviceSecret": ""}),
    ] {
        let (status, text) = provision(body.clone()).await?;
        assert_eq!((status, answer(&text)?), (200, not_found.clone()), "{body}");
    }
    // MQTT basic credentials: answered as asked (ThingsBoard's `userName` spelling), and the
    // device connects with them; X.509 is not served: FAILURE, nothing created.
    let (_, text) = provision(
        json!({"deviceName": "basic-1", "provisionDeviceKey": "meter-key",
        "provisionDeviceSecret": "meter-secret", "credentialsType": "MQTT_BASIC",
        "clientId": "basic-client", "username": "basic-user", "password": "basic-pass"}),
    )
    .await?;
    assert_eq!(
        answer(&text)?,
        json!({"credentialsValue": {"clientId": "basic-client", "userName": "basic-user",
               "password": "basic-pass"}, "credentialsType": "MQTT_BASIC", "status": "SUCCESS"})
    );
    let device = tests::mqtt::connect_v3_basic(&engine, "basic-client", "basic-user", "basic-pass")
        .await
        .map_err(|c| anyhow::anyhow!("connect: {c:?}"))?;
    device.disconnect().await;
    let (_, text) = provision(
        json!({"deviceName": "x509-1", "provisionDeviceKey": "meter-key",
        "provisionDeviceSecret": "meter-secret", "credentialsType": "X509_CERTIFICATE",
        "hash": "-----BEGIN CERTIFICATE-----"}),
    )
    .await?;
    assert_eq!(answer(&text)?["status"], "FAILURE");
    let missing = rest
        .get("/api/tenant/devices?deviceName=x509-1")
        .send()
        .await?;
    assert_eq!(missing.status().as_u16(), 404);

    // Hostile bodies: not JSON, no key, not an object, too large: a clear 4xx, node still up.
    for (body, expected) in [
        ("{broken".to_owned(), 400),
        (r#"{"provisionDeviceSecret":"s"}"#.to_owned(), 400),
        ("[1,2]".to_owned(), 400),
        (
            format!(r#"{{"deviceName":"{}"}}"#, "n".repeat(70 * 1024)),
            413,
        ),
    ] {
        let resp = http
            .post(engine.url("/api/v1/provision"))
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(
            resp.status().as_u16(),
            expected,
            "{}",
            &body[..body.len().min(40)]
        );
    }
    // A device name the registry refuses (too long) fails, as ThingsBoard's validation does.
    let (_, text) = provision(
        json!({"deviceName": "d".repeat(300), "provisionDeviceKey": "meter-key",
        "provisionDeviceSecret": "meter-secret"}),
    )
    .await?;
    assert_eq!(answer(&text)?["status"], "FAILURE");
    assert!(
        rest.json("/api/deviceProfiles?pageSize=10&page=0")
            .await
            .is_ok()
    );
    Ok(())
}

/// Reads the next packet; fails on a close.
async fn next(raw: &mut Raw) -> Result<Vec<u8>> {
    raw.packet()
        .await?
        .context("the server closed the connection")
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_over_mqtt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let resp = rest
        .post("/api/deviceProfile")
        .json(&profile(
            "mqtt-meters",
            "ALLOW_CREATE_NEW_DEVICES",
            "mk",
            "ms",
        ))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "profile: {}",
        resp.text().await?
    );
    for level in [4u8, 5] {
        let v5 = level == 5;
        // Username `provision`, no token: accepted for provisioning only.
        let mut raw = Raw::open(&engine).await?;
        raw.send(&raw::connect(level, "provision")).await?;
        let connack = next(&mut raw).await?;
        assert_eq!(raw::connack_code(&connack), Some(0), "{connack:02x?}");
        // Only the response topic may be subscribed to.
        raw.send(&raw::subscribe(v5, 1, "/provision/response", 1))
            .await?;
        let suback = next(&mut raw).await?;
        assert_eq!(suback.last(), Some(&1), "level {level}: {suback:02x?}");
        raw.send(&raw::subscribe(v5, 2, "v1/devices/me/attributes", 1))
            .await?;
        let suback = next(&mut raw).await?;
        let refused = if v5 { 0x8f } else { 0x80 };
        assert_eq!(
            suback.last(),
            Some(&refused),
            "level {level}: {suback:02x?}"
        );

        // A request: PUBACK, then the answer on /provision/response at the subscription's QoS.
        let name = format!("mqtt-meter-{level}");
        let token = format!("MQTT_METER_{level}");
        let request = json!({"deviceName": name, "provisionDeviceKey": "mk",
            "provisionDeviceSecret": "ms", "token": token})
        .to_string();
        for (secret_ok, want) in [
            (
                true,
                json!({"credentialsValue": token, "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}),
            ),
            (
                true,
                json!({"errorMsg": "Failed to provision device!", "status": "FAILURE"}),
            ),
            (
                false,
                json!({"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}),
            ),
        ] {
            let body = if secret_ok {
                request.clone()
            } else {
                request.replace("\"ms\"", "\"wrong\"")
            };
            raw.send(&raw::publish(
                v5,
                b"/provision/request",
                Some(7),
                body.as_bytes(),
            ))
            .await?;
            let ack = next(&mut raw).await?;
            assert_eq!(raw::puback(&ack).map(|(id, _)| id), Some(7), "{ack:02x?}");
            let answer = next(&mut raw).await?;
            let (topic, payload) = raw::published(v5, &answer).context("a PUBLISH")?;
            assert_eq!(topic, "/provision/response");
            assert_eq!(
                serde_json::from_slice::<Value>(&payload)?,
                want,
                "level {level}"
            );
            if answer[0] & 0x06 != 0 {
                // QoS 1: acknowledge it.
                let id = &answer[answer.len() - payload.len() - 2 - usize::from(v5)..];
                raw.send(&[0x40, 0x02, id[0], id[1]]).await?;
            }
        }
        // Any other topic is acknowledged (MQTT 5: 0x90) and ends the session.
        raw.send(&raw::publish(
            v5,
            b"v1/devices/me/telemetry",
            Some(8),
            br#"{"a":1}"#,
        ))
        .await?;
        let ack = next(&mut raw).await?;
        let want = if v5 { 0x90 } else { 0 };
        assert_eq!(
            raw::puback(&ack),
            Some((8, want)),
            "level {level}: {ack:02x?}"
        );
        raw.closed().await?;

        // The provisioned token logs in like any other.
        let mut device = Raw::open(&engine).await?;
        device.send(&raw::connect(level, &token)).await?;
        let connack = next(&mut device).await?;
        assert_eq!(raw::connack_code(&connack), Some(0), "{connack:02x?}");
    }

    // A request that is not JSON closes the session without an answer (MQTT 5 says 0x83).
    for level in [4u8, 5] {
        let v5 = level == 5;
        let mut raw = Raw::open(&engine).await?;
        raw.send(&raw::connect(level, "provision")).await?;
        next(&mut raw).await?;
        raw.send(&raw::publish(
            v5,
            b"/provision/request",
            Some(1),
            b"\x00\x01 not json",
        ))
        .await?;
        match raw.packet().await? {
            None => {}
            Some(packet) => {
                assert!(v5, "3.1.1 closes without an answer: {packet:02x?}");
                assert_eq!(raw::disconnect_reason(&packet), Some(0x83), "{packet:02x?}");
                raw.closed().await?;
            }
        }
    }
    Ok(())
}

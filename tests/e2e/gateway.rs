//! The gateway MQTT API (`v1/gateway/*`): ThingsBoard's official gateway client and the
//! reference's command lines against the engine, and what a gateway gets back when it sends
//! something wrong.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tests::mqtt::raw::{self, Raw};
use tests::{Engine, Rest, SdkScript, mosquitto_pub};

const WAIT: Duration = Duration::from_secs(20);

/// Creates a gateway device (ThingsBoard's `additionalInfo.gateway`); returns its id.
async fn create_gateway(rest: &Rest, name: &str, token: &str) -> Result<String> {
    let resp = rest
        .post(&format!("/api/device?accessToken={token}"))
        .json(&json!({"name": name, "type": "gateway", "additionalInfo": {"gateway": true}}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    anyhow::ensure!(status.is_success(), "create gateway: {status} {body}");
    assert_eq!(body["additionalInfo"], json!({"gateway": true}));
    Ok(body["id"]["id"].as_str().context("id")?.to_owned())
}

/// The device of this name, once it exists.
async fn device_named(rest: &Rest, name: &str) -> Result<Value> {
    rest.eventually(WAIT, || async {
        let r = rest
            .get(&format!(
                "/api/tenant/devices?deviceName={}",
                urlencode(name)
            ))
            .send()
            .await?;
        Ok(if r.status() == 200 {
            Some(r.json::<Value>().await?)
        } else {
            None
        })
    })
    .await
    .with_context(|| format!("device {name} never appeared"))
}

fn urlencode(s: &str) -> String {
    s.replace(' ', "%20")
}

async fn latest_has(rest: &Rest, id: &str, key: &str, want: Value) -> Result<()> {
    rest.eventually(WAIT, || async {
        let latest = rest.latest(id).await?;
        Ok((latest[key][0]["value"] == want).then_some(()))
    })
    .await
    .with_context(|| format!("{key} never became {want}"))
}

/// The next event of the gateway client with `key` (the script is read on a blocking wait).
fn event(script: &mut SdkScript, key: &str) -> Result<Value> {
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match script.next(left)? {
                Some(e) if e.get(key).is_some() => return Ok(e[key].clone()),
                Some(_) => {}
                None => anyhow::bail!("no {key} event came"),
            }
        }
    })
}

/// A command to the gateway client and its answer (`key`).
fn ask(script: &mut SdkScript, command: &Value, key: &str) -> Result<Value> {
    tokio::task::block_in_place(|| script.ask(command, key))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_gateway_client_works_unchanged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let gateway_id = create_gateway(&rest, "Gateway 1", "GW_TOKEN").await?;
    let port = engine.mqtt.port().to_string();
    let mut gw = SdkScript::start("gateway_client.py", &["127.0.0.1", &port, "GW_TOKEN"])?;
    // The client asks getSessionLimits first (a gateway's answer has gatewayRateLimits) and
    // keeps 80 % of the payload limit.
    assert_eq!(
        event(&mut gw, "limits")?["max_payload_size"],
        65536 * 80 / 100
    );

    // connect: the device is made, with its type, and marked with its gateway.
    let rc = ask(&mut gw, &json!({"connect": "Pump 1", "type": "pump"}), "rc")?;
    assert_eq!(rc["rc"], 0);
    let pump = device_named(&rest, "Pump 1").await?;
    assert_eq!(pump["type"], "pump");
    assert_eq!(
        pump["additionalInfo"]["lastConnectedGateway"],
        gateway_id.as_str()
    );
    let pump_id = pump["id"]["id"].as_str().context("id")?.to_owned();

    // Telemetry and attributes of the device, as the client sends them.
    let rc = ask(
        &mut gw,
        &json!({"telemetry": "Pump 1", "values": {"temp": 42.5, "on": true}}),
        "rc",
    )?;
    assert_eq!(rc["rc"], 0);
    latest_has(&rest, &pump_id, "temp", json!(42.5)).await?;
    latest_has(&rest, &pump_id, "on", json!(true)).await?;
    let rc = ask(
        &mut gw,
        &json!({"attributes": "Pump 1", "values": {"fw": "v1.0"}}),
        "rc",
    )?;
    assert_eq!(rc["rc"], 0);
    // A device the gateway only sends data for is made too.
    let rc = ask(
        &mut gw,
        &json!({"telemetry": "Valve 7", "values": {"open": 1}}),
        "rc",
    )?;
    assert_eq!(rc["rc"], 0);
    let valve = device_named(&rest, "Valve 7").await?;
    assert_eq!(valve["type"], "default");

    // Shared attributes set over REST reach the gateway, tagged with the device.
    let shared = format!("/api/plugins/telemetry/DEVICE/{pump_id}/attributes/SHARED_SCOPE");
    let r = rest
        .post(&shared)
        .json(&json!({"interval": 60}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        event(&mut gw, "attributes")?,
        json!({"device": "Pump 1", "data": {"interval": 60}})
    );

    // Attribute requests: `value` for one key asked, `values` for several.
    let answer = ask(
        &mut gw,
        &json!({"request": "Pump 1", "keys": ["interval"], "client": false}),
        "response",
    )?;
    assert_eq!(answer["response"]["device"], "Pump 1");
    assert_eq!(answer["response"]["value"], 60, "{answer}");
    // Two keys asked, one found: `values`. The client attribute is stored in a batch: asked
    // until it is there.
    let deadline = std::time::Instant::now() + WAIT;
    let answer = loop {
        let answer = ask(
            &mut gw,
            &json!({"request": "Pump 1", "keys": ["fw", "missing"], "client": true}),
            "response",
        )?;
        if answer["response"]["values"] == json!({"fw": "v1.0"}) {
            break answer;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "fw never came: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer["response"].get("value").is_none(), "{answer}");

    // Two-way RPC from REST to the device: the client answers {"echo": params}.
    let reply = tokio::spawn(
        rest.post(&format!("/api/rpc/twoway/{pump_id}"))
            .json(&json!({"method": "setSpeed", "params": {"rpm": 900}}))
            .send(),
    );
    let rpc = event(&mut gw, "rpc")?;
    assert_eq!(rpc["device"], "Pump 1");
    assert_eq!(rpc["data"]["method"], "setSpeed");
    assert_eq!(rpc["data"]["params"], json!({"rpm": 900}));
    let reply = reply.await??;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.json::<Value>().await?, json!({"echo": {"rpm": 900}}));

    // Claiming a device through the gateway.
    let rc = ask(
        &mut gw,
        &json!({"claim": "Pump 1", "secret": "s3", "ms": 60000}),
        "rc",
    )?;
    assert_eq!(rc["rc"], 0);

    // A deletion, tagged the same way.
    let r = rest
        .delete(&format!(
            "/api/plugins/telemetry/DEVICE/{pump_id}/SHARED_SCOPE?keys=interval"
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        event(&mut gw, "attributes")?,
        json!({"device": "Pump 1", "data": {"deleted": ["interval"]}})
    );

    // disconnect: no more updates for the device.
    let rc = ask(&mut gw, &json!({"disconnect": "Pump 1"}), "rc")?;
    assert_eq!(rc["rc"], 0);
    let r = rest
        .post(&shared)
        .json(&json!({"interval": 61}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(
        tokio::task::block_in_place(|| gw.next(Duration::from_secs(2)))?.is_none(),
        "an update for a disconnected device"
    );
    Ok(())
}

fn publish(v5: bool, topic: &str, id: Option<u16>, payload: &str) -> Vec<u8> {
    raw::publish(v5, topic.as_bytes(), id, payload.as_bytes())
}

/// Publishes at QoS 1 (`v5`: MQTT 5) and returns the PUBACK's (packet id, reason code).
async fn acked(raw: &mut Raw, v5: bool, topic: &str, id: u16, payload: &str) -> Result<(u16, u8)> {
    raw.send(&publish(v5, topic, Some(id), payload)).await?;
    loop {
        let packet = raw.packet().await?.context("closed")?;
        // A downlink for one of its devices may come first.
        if raw::published(v5, &packet).is_some() {
            if let Some(pid) = raw::publish_id(&packet) {
                raw.send(&raw::puback_of(pid)).await?;
            }
            continue;
        }
        return raw::puback(&packet).with_context(|| format!("not a PUBACK: {packet:02x?}"));
    }
}

/// A raw gateway (or device) connection at protocol level 4 or 5.
async fn open(engine: &Engine, level: u8, token: &str) -> Result<Raw> {
    let mut raw = Raw::open(engine).await?;
    raw.send(&raw::connect(level, token)).await?;
    let connack = raw.packet().await?.context("closed at CONNECT")?;
    anyhow::ensure!(raw::connack_code(&connack) == Some(0), "{connack:02x?}");
    Ok(raw)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_references_command_lines_and_bad_gateway_messages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_MQTT__GATEWAY_MAX_DEVICES", "3")])?;
    let rest = engine.rest().await?;
    create_gateway(&rest, "Gateway R", "GW_REF").await?;

    // The reference's command lines, exactly as printed (with our host and port).
    for (topic, message) in [
        ("v1/gateway/connect", r#"{"device": "Device A"}"#),
        (
            "v1/gateway/connect",
            r#"{"device": "Device A", "type": "Sensor A"}"#,
        ),
        (
            "v1/gateway/attributes",
            r#"{"Device A": { "fw_version": "1.0", "battery": 87 }}"#,
        ),
        (
            "v1/gateway/telemetry",
            r#"{"Device A": [{"ts": 1700000000000, "values": {"temperature": 23.5, "humidity": 61 }}]}"#,
        ),
        (
            "v1/gateway/claim",
            r#"{"Device A": {"secretKey": "mySecret", "durationMs": 60000}}"#,
        ),
        ("v1/gateway/disconnect", r#"{"device": "Device A"}"#),
    ] {
        let (code, out) = mosquitto_pub(&engine, &["-t", topic, "-u", "GW_REF", "-m", message])?;
        assert_eq!(code, 0, "{topic}: {out}");
    }
    let a = device_named(&rest, "Device A").await?;
    // Made by the first connect (no type: `default`); a later type does not change it.
    assert_eq!(a["type"], "default");
    let a_id = a["id"]["id"].as_str().context("id")?.to_owned();
    let series = rest
        .eventually(WAIT, || async {
            let r = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{a_id}/values/timeseries?keys=temperature&startTs=1699999999000&endTs=1700000001000"
                ))
                .await?;
            Ok((r["temperature"][0]["ts"] == 1_700_000_000_000i64).then_some(r))
        })
        .await?;
    assert_eq!(series["temperature"][0]["value"], "23.5");
    let client = rest
        .eventually(WAIT, || async {
            let r = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{a_id}/values/attributes/CLIENT_SCOPE"
                ))
                .await?;
            Ok((r.as_array().map(Vec::len) == Some(2)).then_some(r))
        })
        .await?;
    assert!(client.to_string().contains("fw_version"), "{client}");

    // A device that is not a gateway: no PUBACK at all, nothing stored (ThingsBoard).
    rest.create_device("plain", "PLAIN").await?;
    let mut plain = open(&engine, 4, "PLAIN").await?;
    plain
        .send(&publish(
            false,
            "v1/gateway/telemetry",
            Some(7),
            r#"{"Ghost":[{"t":1}]}"#,
        ))
        .await?;
    plain.send(&raw::PINGREQ).await?;
    let next = plain.packet().await?.context("closed")?;
    assert_eq!(
        next,
        [0xd0, 0x00],
        "the PINGRESP comes, no PUBACK before it"
    );
    let r = rest
        .get("/api/tenant/devices?deviceName=Ghost")
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    // MQTT 5: each refusal with its reason; the good parts of a message are taken.
    let mut gw5 = open(&engine, 5, "GW_REF").await?;
    let cases = [
        // Not JSON, not an object, a device's part of the wrong shape: 0x99.
        ("v1/gateway/telemetry", "not json", 0x99),
        ("v1/gateway/telemetry", r#"["A"]"#, 0x99),
        ("v1/gateway/telemetry", r#"{"B1":{"t":1}}"#, 0x99),
        ("v1/gateway/attributes", r#"{"B1":[1]}"#, 0x99),
        ("v1/gateway/connect", r#"{"type":"x"}"#, 0x99),
        (
            "v1/gateway/attributes/request",
            r#"{"device":"B1","client":true}"#,
            0x99,
        ),
        ("v1/gateway/rpc", r#"{"device":"B1","data":{}}"#, 0x99),
        // One good part and one bad: the good one is stored, the PUBACK says the bad one.
        (
            "v1/gateway/telemetry",
            r#"{"B1":[{"t":5}],"B2":{"t":6}}"#,
            0x99,
        ),
        // An unknown gateway topic.
        ("v1/gateway/nothing", "{}", 0x90),
    ];
    for (i, (topic, payload, code)) in cases.iter().enumerate() {
        let id = u16::try_from(i + 1)?;
        gw5.send(&publish(true, topic, Some(id), payload)).await?;
        let ack = gw5.packet().await?.context("closed")?;
        assert_eq!(raw::puback(&ack), Some((id, *code)), "{topic} {payload}");
    }
    let b1 = device_named(&rest, "B1").await?;
    let b1_id = b1["id"]["id"].as_str().context("id")?.to_owned();
    latest_has(&rest, &b1_id, "t", json!(5)).await?;
    // Attribute requests: the reference's documented array form, and nothing found.
    let r = rest
        .post(&format!(
            "/api/plugins/telemetry/DEVICE/{b1_id}/attributes/SHARED_SCOPE"
        ))
        .json(&json!({"mode": "eco", "level": 3}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    for (id, request, answer) in [
        (
            41,
            json!({"id": 41, "device": "B1", "client": [], "shared": ["mode", "level"]}),
            json!({"id": 41, "device": "B1", "values": {"mode": "eco", "level": 3}}),
        ),
        (
            42,
            json!({"id": 42, "device": "B1", "client": false, "key": "missing"}),
            json!({"id": 42, "device": "B1"}),
        ),
    ] {
        let deadline = std::time::Instant::now() + WAIT;
        let answered = loop {
            gw5.send(&publish(
                true,
                "v1/gateway/attributes/request",
                Some(id),
                &request.to_string(),
            ))
            .await?;
            let (mut acked, mut response) = (false, None);
            while !acked || response.is_none() {
                let packet = gw5.packet().await?.context("closed")?;
                if let Some((topic, body)) = raw::published(true, &packet) {
                    if let Some(pid) = raw::publish_id(&packet) {
                        gw5.send(&raw::puback_of(pid)).await?;
                    }
                    // The update of B1's shared attributes comes too (B1 is connected).
                    if topic == "v1/gateway/attributes/response" {
                        response = Some(serde_json::from_slice::<Value>(&body)?);
                    }
                } else {
                    acked |= raw::puback(&packet) == Some((id, 0));
                }
            }
            let response = response.unwrap_or_default();
            // The shared attributes are stored in a batch: asked until they are.
            if response == answer || std::time::Instant::now() > deadline {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(answered, answer);
    }
    // The gateway speaks for at most 3 devices at once (Device A was disconnected, B1 and a
    // new one are held): a fourth is refused, quota exceeded; after a disconnect it fits.
    let next = u16::try_from(cases.len() + 1)?;
    assert_eq!(
        acked(
            &mut gw5,
            true,
            "v1/gateway/connect",
            next,
            r#"{"device":"C1"}"#
        )
        .await?,
        (next, 0)
    );
    assert_eq!(
        acked(
            &mut gw5,
            true,
            "v1/gateway/connect",
            next + 1,
            r#"{"device":"C2"}"#
        )
        .await?,
        (next + 1, 0)
    );
    assert_eq!(
        acked(
            &mut gw5,
            true,
            "v1/gateway/connect",
            next + 2,
            r#"{"device":"C3"}"#
        )
        .await?,
        (next + 2, 0x97)
    );
    assert_eq!(
        acked(
            &mut gw5,
            true,
            "v1/gateway/disconnect",
            next + 3,
            r#"{"device":"C1"}"#
        )
        .await?,
        (next + 3, 0)
    );
    assert_eq!(
        acked(
            &mut gw5,
            true,
            "v1/gateway/connect",
            next + 4,
            r#"{"device":"C3"}"#
        )
        .await?,
        (next + 4, 0)
    );

    // MQTT 3.1.1: a message taken in part is acknowledged (3.1.1 cannot say more); the good
    // part is stored. A message that is not an object closes the connection.
    create_gateway(&rest, "Gateway R2", "GW_REF2").await?;
    let mut gw3 = open(&engine, 4, "GW_REF2").await?;
    assert_eq!(
        acked(
            &mut gw3,
            false,
            "v1/gateway/telemetry",
            1,
            r#"{"D1":[{"u":7}],"D2":"bad"}"#
        )
        .await?,
        (1, 0)
    );
    let d1 = device_named(&rest, "D1").await?;
    let d1_id = d1["id"]["id"].as_str().context("id")?.to_owned();
    latest_has(&rest, &d1_id, "u", json!(7)).await?;
    // At its quota (D1 and two more), one device more is acknowledged, not a reason to close
    // a 3.1.1 gateway (ThingsBoard acknowledges it); its data is not taken.
    for (id, name) in [(2u16, "D3"), (3, "D4"), (4, "D5")] {
        let body = format!(r#"{{"{name}":[{{"u":1}}]}}"#);
        assert_eq!(
            acked(&mut gw3, false, "v1/gateway/telemetry", id, &body).await?,
            (id, 0),
            "{name}"
        );
    }
    let r = rest.get("/api/tenant/devices?deviceName=D5").send().await?;
    assert_eq!(r.status(), 404, "one past the quota is not made");
    // A device deleted while the gateway holds it is let go: the gateway's next message
    // makes it anew (a new device, its data stored).
    let r = rest.delete(&format!("/api/device/{d1_id}")).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        acked(
            &mut gw3,
            false,
            "v1/gateway/telemetry",
            5,
            r#"{"D1":[{"u":8}]}"#
        )
        .await?,
        (5, 0)
    );
    let again = device_named(&rest, "D1").await?;
    let again_id = again["id"]["id"].as_str().context("id")?.to_owned();
    latest_has(&rest, &again_id, "u", json!(8)).await?;
    // A message over mqtt.max_payload_size as a whole (each part under it): refused.
    let part = format!(r#"[{{"s":"{}"}}]"#, "x".repeat(40_000));
    let big = format!(r#"{{"D3":{part},"D4":{part}}}"#);
    assert_eq!(
        acked(&mut gw5, true, "v1/gateway/telemetry", 100, &big).await?,
        (100, 0x97)
    );
    gw3.send(&publish(false, "v1/gateway/telemetry", Some(6), "[1,2]"))
        .await?;
    gw3.closed().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_or_rekeying_a_device_ends_its_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("doomed", "DOOMED").await?;
    let mut own = open(&engine, 5, "DOOMED").await?;
    let r = rest.delete(&format!("/api/device/{id}")).send().await?;
    assert_eq!(r.status(), 200);
    let goodbye = own.packet().await?.context("closed without DISCONNECT")?;
    assert_eq!(
        raw::disconnect_reason(&goodbye),
        Some(0x98),
        "{goodbye:02x?}"
    );
    // New credentials end the connection made with the old ones.
    let id = rest.create_device("rekeyed", "REKEYED").await?;
    let mut own = open(&engine, 5, "REKEYED").await?;
    let r = rest
        .post("/api/device/credentials")
        .json(
            &json!({"deviceId": {"id": id}, "credentialsType": "ACCESS_TOKEN",
                      "credentialsId": "REKEYED_2"}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let goodbye = own.packet().await?.context("closed without DISCONNECT")?;
    assert_eq!(
        raw::disconnect_reason(&goodbye),
        Some(0x98),
        "{goodbye:02x?}"
    );
    open(&engine, 5, "REKEYED_2").await?;
    // A deleted gateway's connection ends too.
    create_gateway(&rest, "Gateway D", "GW_D").await?;
    let gateway = device_named(&rest, "Gateway D").await?;
    let mut gw = open(&engine, 4, "GW_D").await?;
    assert_eq!(
        acked(
            &mut gw,
            false,
            "v1/gateway/connect",
            1,
            r#"{"device":"behind-d"}"#
        )
        .await?,
        (1, 0)
    );
    let r = rest
        .delete(&format!(
            "/api/device/{}",
            gateway["id"]["id"].as_str().context("id")?
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    gw.closed().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_to_a_gateway_device_waits_for_it_to_connect() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    create_gateway(&rest, "Gateway Q", "GW_Q").await?;
    let id = rest.create_device("Later", "LATER").await?;
    // The gateway connected the device once, then went away (a gateway restart): the device
    // is no longer connected through it.
    let mut before = open(&engine, 4, "GW_Q").await?;
    before
        .send(&publish(
            false,
            "v1/gateway/connect",
            Some(1),
            r#"{"device":"Later"}"#,
        ))
        .await?;
    assert_eq!(
        raw::puback(&before.packet().await?.context("closed")?),
        Some((1, 0))
    );
    // Its own getSessionLimits answer carries the limits of the devices behind it.
    before
        .send(&publish(
            false,
            "v1/devices/me/rpc/request/7",
            Some(2),
            r#"{"method":"getSessionLimits","params":{}}"#,
        ))
        .await?;
    let limits = loop {
        let packet = before.packet().await?.context("closed")?;
        if let Some((topic, body)) = raw::published(false, &packet) {
            assert_eq!(topic, "v1/devices/me/rpc/response/7");
            break serde_json::from_slice::<Value>(&body)?;
        }
    };
    assert!(limits.get("gatewayRateLimits").is_some(), "{limits}");
    assert!(limits.get("rateLimits").is_some(), "{limits}");
    drop(before);
    let mut gw = open(&engine, 4, "GW_Q").await?;
    gw.send(&raw::subscribe(false, 1, "v1/gateway/rpc", 1))
        .await?;
    let suback = gw.packet().await?.context("closed")?;
    assert_eq!(suback.last(), Some(&1), "{suback:02x?}");
    // The device is not connected through the gateway yet: the request waits.
    let call = tokio::spawn(
        rest.post(&format!("/api/plugins/rpc/twoway/{id}"))
            .json(&json!({"method": "wake", "params": {}, "timeout": 20000}))
            .send(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    gw.send(&publish(
        false,
        "v1/gateway/connect",
        Some(2),
        r#"{"device":"Later"}"#,
    ))
    .await?;
    let mut request = None;
    for _ in 0..3 {
        let packet = gw.packet().await?.context("closed")?;
        if let Some((topic, body)) = raw::published(false, &packet) {
            assert_eq!(topic, "v1/gateway/rpc");
            request = Some(serde_json::from_slice::<Value>(&body)?);
            if let Some(id) = raw::publish_id(&packet) {
                gw.send(&raw::puback_of(id)).await?;
            }
            break;
        }
    }
    let request = request.context("no RPC came")?;
    assert_eq!(request["device"], "Later");
    assert_eq!(request["data"]["method"], "wake");
    let n = request["data"]["id"].as_i64().context("an id")?;
    gw.send(&publish(
        false,
        "v1/gateway/rpc",
        Some(3),
        &json!({"device": "Later", "id": n, "data": {"awake": true}}).to_string(),
    ))
    .await?;
    let response = call.await??;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await?, json!({"awake": true}));
    // A device made over REST and connected by a gateway is marked with it, as ThingsBoard
    // marks it.
    let gateway = device_named(&rest, "Gateway Q").await?;
    let later = rest.json(&format!("/api/device/{id}")).await?;
    assert_eq!(
        later["additionalInfo"]["lastConnectedGateway"], gateway["id"]["id"],
        "{later}"
    );
    Ok(())
}

/// The next PUBLISH on `raw` (skipping acknowledgements), as topic and JSON.
async fn next_publish(raw: &mut Raw, v5: bool) -> Result<(String, Value)> {
    loop {
        let packet = raw.packet().await?.context("closed")?;
        if let Some((topic, body)) = raw::published(v5, &packet) {
            if let Some(id) = raw::publish_id(&packet) {
                raw.send(&raw::puback_of(id)).await?;
            }
            return Ok((topic, serde_json::from_slice(&body)?));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_has_one_session_behind_a_gateway_or_on_its_own() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    create_gateway(&rest, "Gateway S", "GW_S").await?;
    let mut gw = open(&engine, 5, "GW_S").await?;
    gw.send(&raw::subscribe(true, 1, "v1/gateway/rpc", 1))
        .await?;
    gw.packet().await?.context("no SUBACK")?;
    assert_eq!(
        acked(
            &mut gw,
            true,
            "v1/gateway/connect",
            2,
            r#"{"device":"Both"}"#
        )
        .await?,
        (2, 0)
    );
    // A gateway cannot speak for itself (its session for itself would push out its own
    // connection).
    assert_eq!(
        acked(
            &mut gw,
            true,
            "v1/gateway/connect",
            3,
            r#"{"device":"Gateway S"}"#
        )
        .await?,
        (3, 0x99)
    );

    // The device connects on its own (its token is the one the engine gave it): the
    // gateway's session for it is pushed out; RPC goes to the device only.
    let both = device_named(&rest, "Both").await?;
    let id = both["id"]["id"].as_str().context("id")?.to_owned();
    let creds = rest.json(&format!("/api/device/{id}/credentials")).await?;
    let token = creds["credentialsId"].as_str().context("token")?.to_owned();
    let mut own = open(&engine, 5, &token).await?;
    own.send(&raw::subscribe(true, 1, "v1/devices/me/rpc/request/+", 1))
        .await?;
    own.packet().await?.context("no SUBACK")?;
    let call = |method: &str| {
        tokio::spawn(
            rest.post(&format!("/api/rpc/oneway/{id}"))
                .json(&json!({"method": method, "params": {}, "timeout": 10000}))
                .send(),
        )
    };
    // The owner learns of the new session through the queue: the first call may still find
    // the gateway's; calls until one reaches the device.
    let mut reached = false;
    for n in 0..20 {
        let method = format!("own{n}");
        let answer = call(&method).await??;
        assert_eq!(answer.status(), 200);
        if let Ok(Ok((topic, body))) =
            tokio::time::timeout(Duration::from_millis(500), next_publish(&mut own, true)).await
        {
            assert!(topic.starts_with("v1/devices/me/rpc/request/"), "{topic}");
            // An earlier call's request may come late: any of them shows the way.
            assert!(
                body["method"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("own")),
                "{body}"
            );
            reached = true;
            break;
        }
    }
    assert!(reached, "no RPC reached the device's own connection");
    // Whatever the gateway got went before the take-over; nothing comes after it.
    let answer = call("afterTakeOver").await??;
    assert_eq!(answer.status(), 200);
    loop {
        let (_, body) = next_publish(&mut own, true).await?;
        if body["method"] == "afterTakeOver" {
            break;
        }
        // Late requests of the calls above.
        assert!(
            body["method"]
                .as_str()
                .is_some_and(|m| m.starts_with("own")),
            "{body}"
        );
    }
    while let Ok(Ok((_, body))) =
        tokio::time::timeout(Duration::from_millis(500), next_publish(&mut gw, true)).await
    {
        assert_ne!(body["data"]["method"], "afterTakeOver", "{body}");
    }

    // The gateway names the device again: its session takes over in turn, and the device's
    // own connection is closed (MQTT 5: DISCONNECT 0x8E, session taken over).
    gw.send(&publish(
        true,
        "v1/gateway/telemetry",
        Some(4),
        r#"{"Both":[{"t":1}]}"#,
    ))
    .await?;
    loop {
        let packet = gw.packet().await?.context("closed")?;
        if raw::puback(&packet) == Some((4, 0)) {
            break;
        }
    }
    let goodbye = own.packet().await?.context("closed without DISCONNECT")?;
    assert_eq!(
        raw::disconnect_reason(&goodbye),
        Some(0x8e),
        "{goodbye:02x?}"
    );
    Ok(())
}

/// A gateway naming tens of thousands of devices: it holds at most its quota, the rest is
/// refused per device (the connection stays, and what it holds keeps working), and other
/// devices are not disturbed.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_naming_tens_of_thousands_of_devices_is_held_to_its_quota() -> Result<()> {
    const NAMES: usize = 20_000;
    const QUOTA: usize = 5_000;
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(
        dir.path(),
        &[("ENGINE_MQTT__GATEWAY_MAX_DEVICES", &QUOTA.to_string())],
    )?;
    let rest = engine.rest().await?;
    create_gateway(&rest, "Gateway T", "GW_T").await?;
    let mut gw = open(&engine, 5, "GW_T").await?;
    let mut refused = 0;
    for (m, chunk) in (0..NAMES).collect::<Vec<_>>().chunks(250).enumerate() {
        let body: serde_json::Map<String, Value> = chunk
            .iter()
            .map(|i| (format!("many-{i}"), json!([{"n": i}])))
            .collect();
        let id = u16::try_from(m + 1)?;
        gw.send(&publish(
            true,
            "v1/gateway/telemetry",
            Some(id),
            &Value::Object(body).to_string(),
        ))
        .await?;
        let ack = gw.packet().await?.context("closed")?;
        match raw::puback(&ack) {
            Some((got, 0)) if got == id => {}
            Some((got, 0x97)) if got == id => refused += 1,
            other => anyhow::bail!("message {id}: {other:?}"),
        }
    }
    // The quota's worth of devices was taken, every later message refused in part or whole.
    assert_eq!(refused, (NAMES - QUOTA) / 250, "messages past the quota");
    let r = rest
        .get(&format!(
            "/api/tenant/devices?deviceName=many-{}",
            QUOTA - 1
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 200, "the last one within the quota was made");
    let r = rest
        .get(&format!("/api/tenant/devices?deviceName=many-{QUOTA}"))
        .send()
        .await?;
    assert_eq!(r.status(), 404, "none past it");
    // Its devices keep working, and so does a device of its own.
    assert_eq!(
        acked(
            &mut gw,
            true,
            "v1/gateway/telemetry",
            9_000,
            r#"{"many-7":[{"n":-7}]}"#
        )
        .await?,
        (9_000, 0)
    );
    let seven = device_named(&rest, "many-7").await?;
    latest_has(
        &rest,
        seven["id"]["id"].as_str().context("id")?,
        "n",
        json!(-7),
    )
    .await?;
    rest.create_device("bystander", "BYSTANDER").await?;
    let mut own = open(&engine, 5, "BYSTANDER").await?;
    assert_eq!(
        acked(&mut own, true, "v1/devices/me/telemetry", 1, r#"{"b":1}"#).await?,
        (1, 0)
    );
    Ok(())
}

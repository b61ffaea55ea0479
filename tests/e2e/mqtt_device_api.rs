//! ThingsBoard's MQTT device API, driven by `mosquitto_pub` exactly as the reference shows and
//! by MQTT 3.1.1 and 5 client libraries.

use anyhow::{Context, Result};
use rumqttc::{ConnectReturnCode, QoS};
use serde_json::{Value, json};
use tests::mqtt::{Outcome, connect_v3, connect_v3_keep_alive, v5};
use tests::{Engine, Rest, mosquitto_pub};

use crate::{SETTLE, fixture};

const TELEMETRY: &str = "v1/devices/me/telemetry";
const ATTRIBUTES: &str = "v1/devices/me/attributes";

/// Waits until the device's latest telemetry has `key`, then returns all of it.
async fn latest_with(rest: &Rest, device: &str, key: &str) -> Result<Value> {
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(device).await?;
        Ok(latest.get(key).is_some().then_some(latest))
    })
    .await
}

fn value(latest: &Value, key: &str) -> Value {
    latest[key][0]["value"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn reference_telemetry_formats_round_trip_with_types() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;

    // Object without ts, given inline: the server's timestamp is used.
    let before = now_ms();
    let inline = rest.create_device("inline", "TOKEN_INLINE").await?;
    let (code, out) = mosquitto_pub(
        &engine,
        &[
            "-d",
            "-q",
            "1",
            "-t",
            TELEMETRY,
            "-u",
            "TOKEN_INLINE",
            "-m",
            r#"{"temperature":42}"#,
        ],
    )?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("received PUBACK"), "{out}");
    let latest = latest_with(&rest, &inline, "temperature").await?;
    assert_eq!(value(&latest, "temperature"), json!(42));
    let ts = latest["temperature"][0]["ts"].as_i64().unwrap_or_default();
    assert!(
        ts >= before && ts <= now_ms(),
        "server timestamp {ts} not in [{before}, now]"
    );

    // The three files of the reference.
    let object = rest.create_device("object", "TOKEN_OBJECT").await?;
    let array = rest.create_device("array", "TOKEN_ARRAY").await?;
    let with_ts = rest.create_device("with-ts", "TOKEN_WITH_TS").await?;
    for (token, file) in [
        ("TOKEN_OBJECT", "telemetry-data-as-object.json"),
        ("TOKEN_ARRAY", "telemetry-data-as-array.json"),
        ("TOKEN_WITH_TS", "telemetry-data-with-ts.json"),
    ] {
        let (code, out) = mosquitto_pub(
            &engine,
            &[
                "-d",
                "-q",
                "1",
                "-t",
                TELEMETRY,
                "-u",
                token,
                "-f",
                &fixture(file),
            ],
        )?;
        assert_eq!(code, 0, "{file}: {out}");
    }

    let latest = latest_with(&rest, &object, "jsonKey").await?;
    let typed = [
        ("stringKey", json!("value1")),
        ("booleanKey", json!(true)),
        ("doubleKey", json!(42.0)),
        ("longKey", json!(73)),
    ];
    for (key, want) in &typed {
        assert_eq!(&value(&latest, key), want, "{key}");
    }
    // Types are kept exactly: 42.0 is a double, 73 a long.
    assert!(value(&latest, "doubleKey").is_f64());
    assert!(value(&latest, "longKey").is_i64());
    let json_value: Value =
        serde_json::from_str(value(&latest, "jsonKey").as_str().unwrap_or_default())?;
    assert_eq!(
        json_value,
        json!({"someNumber": 42, "someArray": [1, 2, 3], "someNestedObject": {"key": "value"}})
    );

    // Without strict types every value is a string, as ThingsBoard shows them.
    let loose = rest.json(&format!("/api/plugins/telemetry/DEVICE/{object}/values/timeseries?keys=doubleKey,longKey,booleanKey")).await?;
    assert_eq!(value(&loose, "doubleKey"), json!("42.0"));
    assert_eq!(value(&loose, "longKey"), json!("73"));
    assert_eq!(value(&loose, "booleanKey"), json!("true"));

    let latest = latest_with(&rest, &array, "key2").await?;
    assert_eq!(value(&latest, "key1"), json!("value1"));
    assert_eq!(value(&latest, "key2"), json!(true));

    let latest = latest_with(&rest, &with_ts, "longKey").await?;
    for (key, want) in &typed {
        assert_eq!(&value(&latest, key), want, "{key}");
        assert_eq!(latest[key][0]["ts"], json!(1_451_649_600_512_i64), "{key}");
    }
    let keys = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{with_ts}/keys/timeseries"
        ))
        .await?;
    assert_eq!(
        keys,
        json!(["booleanKey", "doubleKey", "jsonKey", "longKey", "stringKey"])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn attributes_round_trip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let device = rest.create_device("attr-device", "ATTR_TOKEN").await?;
    let (code, out) = mosquitto_pub(
        &engine,
        &[
            "-d",
            "-t",
            ATTRIBUTES,
            "-u",
            "ATTR_TOKEN",
            "-f",
            &fixture("new-attributes-values.json"),
        ],
    )?;
    assert_eq!(code, 0, "{out}");
    let path = format!("/api/plugins/telemetry/DEVICE/{device}/values/attributes/CLIENT_SCOPE");
    let attrs = rest
        .eventually(SETTLE, || async {
            let attrs = rest.json(&path).await?;
            Ok((attrs.as_array().map_or(0, Vec::len) == 5).then_some(attrs))
        })
        .await?;
    let by_key = |k: &str| {
        attrs
            .as_array()
            .and_then(|a| a.iter().find(|x| x["key"] == k))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_key("attribute1")["value"], json!("value1"));
    assert_eq!(by_key("attribute2")["value"], json!(true));
    assert_eq!(by_key("attribute3")["value"], json!(42.0));
    assert_eq!(by_key("attribute4")["value"], json!(73));
    assert!(by_key("attribute4")["lastUpdateTs"].as_i64().is_some());
    // Client attributes are not shared ones; all scopes together hold the same five.
    let shared = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/values/attributes/SHARED_SCOPE"
        ))
        .await?;
    assert_eq!(shared, json!([]));
    let keys = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/keys/attributes"
        ))
        .await?;
    assert_eq!(
        keys,
        json!([
            "attribute1",
            "attribute2",
            "attribute3",
            "attribute4",
            "attribute5"
        ])
    );
    let picked = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/values/attributes?keys=attribute2"
        ))
        .await?;
    assert_eq!(picked.as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_empty_tokens_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    rest.create_device("known", "KNOWN_TOKEN").await?;

    let (code, out) = mosquitto_pub(
        &engine,
        &[
            "-d",
            "-q",
            "1",
            "-t",
            TELEMETRY,
            "-u",
            "NO_SUCH_TOKEN",
            "-m",
            "{}",
        ],
    )?;
    assert_ne!(code, 0);
    assert!(out.contains("received CONNACK (5)"), "{out}");

    assert_eq!(
        connect_v3(&engine, "NO_SUCH_TOKEN", "c1").await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        connect_v3(&engine, "", "c2").await.err(),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5;
    assert_eq!(
        v5::connect(&engine, "NO_SUCH_TOKEN", "c3").await.err(),
        Some(Some(V5::NotAuthorized))
    );
    assert_eq!(
        v5::connect(&engine, "", "c4").await.err(),
        Some(Some(V5::BadUserNamePassword))
    );
    assert!(connect_v3(&engine, "KNOWN_TOKEN", "c5").await.is_ok());

    let metrics = reqwest::get(engine.url("/metrics")).await?.text().await?;
    assert!(
        metric_at_least(
            &metrics,
            r#"engine_connections_refused_total{reason="bad_token",transport="mqtt"}"#,
            3.0
        ),
        "{metrics}"
    );
    Ok(())
}

/// Whether the Prometheus exposition has the series (`name{a="x",b="y"}`, labels in any
/// order) with a value of at least `min`.
pub fn metric_at_least(exposition: &str, series: &str, min: f64) -> bool {
    let (name, labels) = split_series(series);
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|line| {
            let Some((key, value)) = line.rsplit_once(' ') else {
                return false;
            };
            let (n, mut l) = split_series(key);
            let mut want = labels.clone();
            l.sort();
            want.sort();
            n == name && l == want && value.parse::<f64>().is_ok_and(|v| v >= min)
        })
}

fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|s| !s.is_empty())
                .collect(),
        ),
        None => (series, Vec::new()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_payload_disconnects_only_its_own_session() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let good_id = rest.create_device("good", "GOOD").await?;
    rest.create_device("bad", "BAD").await?;

    let mut good = connect_v3(&engine, "GOOD", "good")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    let mut bad = connect_v3(&engine, "BAD", "bad")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(
        good.publish(TELEMETRY, r#"{"n":1}"#).await?,
        Outcome::Acked(0)
    );
    assert_eq!(
        bad.publish(TELEMETRY, "{not json").await?,
        Outcome::Disconnected
    );
    // The healthy session never noticed.
    assert_eq!(
        good.publish(TELEMETRY, r#"{"n":2}"#).await?,
        Outcome::Acked(0)
    );
    let latest = rest
        .eventually(SETTLE, || async {
            let latest = rest.latest(&good_id).await?;
            Ok((latest["n"][0]["value"] == json!(2)).then_some(latest))
        })
        .await?;
    assert_eq!(value(&latest, "n"), json!(2));

    // Each bad shape is refused the same way, and counted by reason.
    let shapes = [
        ("[1,2]", "wrong_shape"),
        (r#"{"a":null}"#, "null_value"),
        ("", "empty"),
    ];
    for (payload, _) in shapes {
        let mut bad = connect_v3(&engine, "BAD", "bad")
            .await
            .map_err(|c| anyhow::anyhow!("{c:?}"))?;
        assert_eq!(
            bad.publish(TELEMETRY, payload).await?,
            Outcome::Disconnected,
            "{payload}"
        );
    }
    let metrics = reqwest::get(engine.url("/metrics")).await?.text().await?;
    let reasons = std::iter::once("invalid_json").chain(shapes.iter().map(|(_, r)| *r));
    for reason in reasons {
        let series =
            format!(r#"engine_messages_rejected_total{{reason="{reason}",transport="mqtt"}}"#);
        assert!(metric_at_least(&metrics, &series, 1.0), "{series} missing");
    }
    assert!(
        engine.log().contains("device=\"bad\""),
        "rejections are logged with the device name"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_payloads_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_MQTT__MAX_PAYLOAD_SIZE", "1KiB")])?;
    let rest = engine.rest().await?;
    rest.create_device("big", "BIG").await?;
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2000));
    let mut v3 = connect_v3(&engine, "BIG", "big3")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(
        v3.publish(TELEMETRY, big.clone()).await?,
        Outcome::Disconnected
    );
    let mut v5 = v5::connect(&engine, "BIG", "big5")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(v5.publish(TELEMETRY, big).await?, Outcome::Acked(0x97));
    assert_eq!(
        v5.publish(TELEMETRY, r#"{"small":1}"#).await?,
        Outcome::Acked(0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_refusals_are_reason_codes_and_the_session_lives_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("five", "FIVE").await?;
    let mut device = v5::connect(&engine, "FIVE", "five")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    let cases = [
        (TELEMETRY, "{oops", 0x99),
        (TELEMETRY, r#"{"ts":"yesterday","values":{"a":1}}"#, 0x99),
        (ATTRIBUTES, r#"[{"a":1}]"#, 0x99),
        ("v1/devices/me/unknown", r#"{"a":1}"#, 0x90),
        (TELEMETRY, r#"{"ok":true}"#, 0x00),
        (ATTRIBUTES, r#"{"fw":"2.1"}"#, 0x00),
    ];
    for (topic, payload, code) in cases {
        assert_eq!(
            device.publish(topic, payload).await?,
            Outcome::Acked(code),
            "{topic} {payload}"
        );
    }
    let latest = latest_with(&rest, &id, "ok").await?;
    assert_eq!(value(&latest, "ok"), json!(true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_and_qos2() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("sub", "SUB").await?;
    let mut device = connect_v3(&engine, "SUB", "sub")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    // Device topics are granted, at most at QoS 1; anything else is refused (0x80).
    assert_eq!(device.subscribe(ATTRIBUTES, QoS::ExactlyOnce).await?, [1]);
    assert_eq!(
        device
            .subscribe("v1/devices/me/rpc/request/+", QoS::AtMostOnce)
            .await?,
        [0]
    );
    assert_eq!(
        device.subscribe("some/other/#", QoS::AtLeastOnce).await?,
        [0x80]
    );
    // The session keeps working after subscribing.
    assert_eq!(
        device.publish(TELEMETRY, r#"{"after_sub":1}"#).await?,
        Outcome::Acked(0)
    );
    device.disconnect().await;

    // A QoS 2 publish completes its handshake and is stored at least once.
    let (code, out) = mosquitto_pub(
        &engine,
        &[
            "-d",
            "-q",
            "2",
            "-t",
            TELEMETRY,
            "-u",
            "SUB",
            "-m",
            r#"{"q2":2}"#,
        ],
    )?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("received PUBCOMP"), "{out}");
    let latest = latest_with(&rest, &id, "q2").await?;
    assert_eq!(value(&latest, "q2"), json!(2));
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or_default())
        .unwrap_or_default()
}

/// `mosquitto_pub -m` at QoS 0 sends PUBLISH, DISCONNECT and closes the socket at once; the
/// message must still be stored, every time.
#[tokio::test(flavor = "multi_thread")]
async fn qos0_publishes_right_before_disconnect_are_stored() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("fire-and-forget", "FAF").await?;
    const N: usize = 20;
    for i in 0..N {
        let payload = format!(r#"{{"k{i}":{i}}}"#);
        for version in ["mqttv311", "mqttv5"] {
            let (code, out) = mosquitto_pub(
                &engine,
                &["-V", version, "-t", TELEMETRY, "-u", "FAF", "-m", &payload],
            )?;
            assert_eq!(code, 0, "{out}");
        }
    }
    let keys = rest
        .eventually(SETTLE, || async {
            let keys = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/keys/timeseries"
                ))
                .await?;
            Ok((keys.as_array().map_or(0, Vec::len) == N).then_some(keys))
        })
        .await?;
    assert_eq!(keys.as_array().map(Vec::len), Some(N));
    Ok(())
}

/// A device that goes quiet has its session actor passivated at its next PINGREQ; the next
/// publish wakes it and is stored like any other.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_session_hibernates_and_wakes_on_its_next_publish() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("sleepy", "SLEEPY").await?;
    let keep_alive = std::time::Duration::from_secs(1);
    let mut device = connect_v3_keep_alive(&engine, "SLEEPY", "sleepy", keep_alive)
        .await
        .map_err(|code| anyhow::anyhow!("refused: {code:?}"))?;
    assert_eq!(
        device.publish(TELEMETRY, r#"{"wake":1}"#).await?,
        Outcome::Acked(0)
    );

    let series = r#"engine_sessions_hibernated_total{transport="mqtt"}"#;
    rest.eventually(SETTLE, || async {
        let metrics = reqwest::get(engine.url("/metrics")).await?.text().await?;
        Ok(metric_at_least(&metrics, series, 1.0).then_some(()))
    })
    .await?;

    assert_eq!(
        device.publish(TELEMETRY, r#"{"wake":2}"#).await?,
        Outcome::Acked(0)
    );
    let latest = rest
        .eventually(SETTLE, || async {
            let latest = rest.latest(&id).await?;
            Ok((value(&latest, "wake") == json!(2)).then_some(latest))
        })
        .await?;
    assert_eq!(value(&latest, "wake"), json!(2));
    let metrics = reqwest::get(engine.url("/metrics")).await?.text().await?;
    assert!(
        metric_at_least(&metrics, r#"engine_sessions_active{transport="mqtt"}"#, 1.0),
        "a hibernating session is still an open session: {metrics}"
    );
    Ok(())
}

/// `v1/devices/me/attributes/request/{id}`: ThingsBoard answers on
/// `v1/devices/me/attributes/response/{id}` whether or not the device subscribed, with typed
/// values and its key selection; a negative id gets no answer; a bad request closes an MQTT
/// 3.1.1 connection and gets PUBACK 0x99 on MQTT 5.
#[tokio::test(flavor = "multi_thread")]
async fn attribute_requests_are_answered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("asker", "ASKER").await?;
    rest.create_device("asker5", "ASKER5").await?;
    let resp = rest
        .post(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE"
        ))
        .json(&json!({"interval": 30, "ratio": 2.0}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let mut device = connect_v3(&engine, "ASKER", "asker")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(
        device
            .publish(ATTRIBUTES, r#"{"fw":"v2","battery":80}"#)
            .await?,
        Outcome::Acked(0)
    );
    let wait = std::time::Duration::from_secs(20);
    let everything =
        json!({"client": {"fw": "v2", "battery": 80}, "shared": {"interval": 30, "ratio": 2.0}});
    // Storage is written in batches: ask until everything shows (ids count up).
    let deadline = std::time::Instant::now() + wait;
    for request in 100.. {
        let topic = format!("v1/devices/me/attributes/request/{request}");
        assert_eq!(device.publish(&topic, "{}").await?, Outcome::Acked(0));
        let (topic, payload) = device.next_publish(wait).await?.context("no answer")?;
        assert_eq!(
            topic,
            format!("v1/devices/me/attributes/response/{request}")
        );
        if serde_json::from_slice::<Value>(&payload)? == everything {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "never stored: {everything}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let cases = [
        (
            7,
            r#"{"clientKeys":"fw","sharedKeys":"interval"}"#,
            json!({"client": {"fw": "v2"}, "shared": {"interval": 30}}),
        ),
        (8, r#"{"sharedKeys":"nope"}"#, json!({})),
        (
            9,
            r#"{"sharedKeys":"ratio,interval,ratio"}"#,
            json!({"shared": {"ratio": 2.0, "interval": 30}}),
        ),
        (
            10,
            r#"{"clientKeys":"battery"}"#,
            json!({"client": {"battery": 80}}),
        ),
    ];
    for (request, payload, expected) in cases {
        let topic = format!("v1/devices/me/attributes/request/{request}");
        assert_eq!(device.publish(&topic, payload).await?, Outcome::Acked(0));
        let (topic, body) = device.next_publish(wait).await?.context("no answer")?;
        assert_eq!(
            topic,
            format!("v1/devices/me/attributes/response/{request}")
        );
        let body: Value = serde_json::from_slice(&body)?;
        assert_eq!(body, expected, "{payload}");
        // 2.0 stays a double on the wire.
        if request == 9 {
            assert!(String::from_utf8_lossy(&serde_json::to_vec(&body)?).contains("2.0"));
        }
    }
    // A negative id: acknowledged, no answer; the next answer is the next request's.
    assert_eq!(
        device
            .publish("v1/devices/me/attributes/request/-1", "{}")
            .await?,
        Outcome::Acked(0)
    );
    assert_eq!(
        device
            .publish(
                "v1/devices/me/attributes/request/11",
                r#"{"clientKeys":"fw"}"#
            )
            .await?,
        Outcome::Acked(0)
    );
    let (topic, _) = device.next_publish(wait).await?.context("no answer")?;
    assert_eq!(topic, "v1/devices/me/attributes/response/11");
    // MQTT 5: a bad request is PUBACK 0x99 and the session lives on.
    let mut five = v5::connect(&engine, "ASKER5", "asker5")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    for (topic, payload) in [
        ("v1/devices/me/attributes/request/1", ""),
        ("v1/devices/me/attributes/request/1", "[1]"),
        (
            "v1/devices/me/attributes/request/1",
            r#"{"sharedKeys":["a","b"]}"#,
        ),
        ("v1/devices/me/attributes/request/x", "{}"),
        ("v1/devices/me/attributes/request/99999999999", "{}"),
    ] {
        assert_eq!(
            five.publish(topic, payload).await?,
            Outcome::Acked(0x99),
            "{topic} {payload}"
        );
    }
    assert_eq!(
        five.publish(TELEMETRY, r#"{"still":1}"#).await?,
        Outcome::Acked(0)
    );
    // MQTT 3.1.1: an empty request closes the connection (ThingsBoard's behaviour).
    assert_eq!(
        device
            .publish("v1/devices/me/attributes/request/12", "")
            .await?,
        Outcome::Disconnected
    );
    Ok(())
}

/// A device's own RPC requests: `getSessionLimits` is answered at once with the engine's
/// limits (what ThingsBoard's SDK sizes its window from); another method, which nothing
/// answers, gets `{"error":"timeout"}` after `mqtt.client_rpc_timeout`, and past 16 waiting on
/// one connection at once; a request without a method is a bad payload.
#[tokio::test(flavor = "multi_thread")]
async fn device_rpc_requests_get_session_limits_or_a_timeout() -> Result<()> {
    let wait = std::time::Duration::from_secs(20);
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_MQTT__CLIENT_RPC_TIMEOUT", "1h")])?;
    let rest = engine.rest().await?;
    rest.create_device("rpc-asker", "RPC_ASKER").await?;
    rest.create_device("rpc-asker5", "RPC_ASKER5").await?;
    let mut device = connect_v3(&engine, "RPC_ASKER", "rpc-asker")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(
        device
            .publish(
                "v1/devices/me/rpc/request/1",
                r#"{"method":"getSessionLimits","params":{"timeout":5000}}"#
            )
            .await?,
        Outcome::Acked(0)
    );
    let (topic, body) = device.next_publish(wait).await?.context("no answer")?;
    assert_eq!(topic, "v1/devices/me/rpc/response/1");
    let limits: Value = serde_json::from_slice(&body)?;
    assert_eq!(
        limits,
        json!({"maxPayloadSize": 65536, "maxInflightMessages": 16,
            "rateLimits": {"messages": null, "telemetryMessages": null, "telemetryDataPoints": null}})
    );
    // 16 unanswered requests wait (an hour here); the 17th is answered at once.
    for id in 2..=18 {
        let topic = format!("v1/devices/me/rpc/request/{id}");
        assert_eq!(
            device
                .publish(&topic, r#"{"method":"noSuchMethod","params":{}}"#)
                .await?,
            Outcome::Acked(0)
        );
    }
    let (topic, body) = device.next_publish(wait).await?.context("no answer")?;
    assert_eq!(
        (topic.as_str(), body.as_slice()),
        (
            "v1/devices/me/rpc/response/18",
            br#"{"error":"timeout"}"#.as_slice()
        )
    );
    // MQTT 5: requests that are not requests get PUBACK 0x99; the session lives on.
    let mut five = v5::connect(&engine, "RPC_ASKER5", "rpc-asker5")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    for (topic, payload) in [
        ("v1/devices/me/rpc/request/1", r#"{"params":{}}"#),
        ("v1/devices/me/rpc/request/1", "not json"),
        ("v1/devices/me/rpc/request/one", r#"{"method":"m"}"#),
    ] {
        assert_eq!(
            five.publish(topic, payload).await?,
            Outcome::Acked(0x99),
            "{topic} {payload}"
        );
    }
    assert_eq!(
        five.publish(TELEMETRY, r#"{"still":1}"#).await?,
        Outcome::Acked(0)
    );
    // MQTT 3.1.1: the same closes the connection.
    assert_eq!(
        device
            .publish("v1/devices/me/rpc/request/19", r#"{"params":{}}"#)
            .await?,
        Outcome::Disconnected
    );
    drop(engine);

    // The timeout answer itself.
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_MQTT__CLIENT_RPC_TIMEOUT", "1s")])?;
    engine
        .rest()
        .await?
        .create_device("rpc-waiter", "RPC_WAITER")
        .await?;
    let mut device = connect_v3(&engine, "RPC_WAITER", "rpc-waiter")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(
        device
            .publish("v1/devices/me/rpc/request/7", r#"{"method":"getTime"}"#)
            .await?,
        Outcome::Acked(0)
    );
    let (topic, body) = device
        .next_publish(wait)
        .await?
        .context("no timeout answer")?;
    assert_eq!(topic, "v1/devices/me/rpc/response/7");
    assert_eq!(body, br#"{"error":"timeout"}"#);
    Ok(())
}

/// `v1/devices/me/claim`: a claim request is acknowledged (ThingsBoard tells the device
/// nothing more); one that is not a claim request is a bad payload.
#[tokio::test(flavor = "multi_thread")]
async fn claim_requests_over_mqtt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    rest.create_device("claimer", "CLAIMER").await?;
    rest.create_device("claimer5", "CLAIMER5").await?;
    let mut five = v5::connect(&engine, "CLAIMER5", "claimer5")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    let long = format!(r#"{{"secretKey":"{}"}}"#, "s".repeat(300));
    let cases = [
        (r#"{"secretKey":"abc","durationMs":60000}"#, 0x00),
        (r#"{"secretKey":"again"}"#, 0x00),
        ("", 0x00),
        ("{}", 0x00),
        ("[1]", 0x99),
        ("{oops", 0x99),
        (r#"{"secretKey":7}"#, 0x99),
        (long.as_str(), 0x99),
    ];
    for (payload, code) in cases {
        assert_eq!(
            five.publish("v1/devices/me/claim", payload).await?,
            Outcome::Acked(code),
            "{}",
            &payload[..payload.len().min(40)]
        );
    }
    let mut device = connect_v3(&engine, "CLAIMER", "claimer")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(
        device
            .publish("v1/devices/me/claim", r#"{"secretKey":"abc"}"#)
            .await?,
        Outcome::Acked(0)
    );
    assert_eq!(
        device.publish("v1/devices/me/claim", "[1]").await?,
        Outcome::Disconnected
    );
    Ok(())
}

/// The reference's command line exactly as printed, through a shell:
/// `-m "{"temperature":42}"` reaches the server as `{temperature:42}` (the shell ate the inner
/// quotes). ThingsBoard's lenient JSON reader stores it, and so does the engine; over HTTP too.
#[tokio::test(flavor = "multi_thread")]
async fn the_reference_command_line_with_its_shell_quoting_is_stored() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("quoted", "QUOTED_TOKEN").await?;
    let line = format!(
        r#"mosquitto_pub -d -q 1 -h "127.0.0.1" -p {} -t "v1/devices/me/telemetry" -u "QUOTED_TOKEN" -m "{{"temperature":42}}""#,
        engine.mqtt.port()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &line])
        .output()
        .context("sh")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{line}: {text}");
    assert!(text.contains("received PUBACK"), "{text}");
    let latest = latest_with(&rest, &id, "temperature").await?;
    assert_eq!(value(&latest, "temperature"), json!(42));

    // The same over HTTP, and the other lenient forms ThingsBoard takes.
    let http = reqwest::Client::new();
    for body in ["{humidity:40.5}", "{mode:eco}", "{'door':'open'}"] {
        let resp = http
            .post(engine.url("/api/v1/QUOTED_TOKEN/telemetry"))
            .body(body)
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 200, "{body}");
    }
    let latest = latest_with(&rest, &id, "door").await?;
    assert_eq!(value(&latest, "door"), json!("open"));
    let latest = latest_with(&rest, &id, "mode").await?;
    assert_eq!(value(&latest, "mode"), json!("eco"));
    assert_eq!(value(&latest, "humidity"), json!(40.5));
    // Still refused: what no JSON reader takes.
    let resp = http
        .post(engine.url("/api/v1/QUOTED_TOKEN/telemetry"))
        .body("{broken")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    Ok(())
}

/// CONNACK's Session Present as ThingsBoard sets it: on whenever the client asked to keep its
/// session (3.1.1 clean session off, MQTT 5 clean start off), though no session is kept.
#[tokio::test(flavor = "multi_thread")]
async fn session_present_follows_thingsboard() -> Result<()> {
    use tests::mqtt::raw::{self, Raw};
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    engine
        .rest()
        .await?
        .create_device("present", "PRESENT")
        .await?;
    for level in [4u8, 5] {
        for clean in [true, false] {
            let mut connect = raw::connect(level, "PRESENT");
            // The flags byte: fixed header (2), protocol name (6), level (1).
            connect[9] = if clean { 0x82 } else { 0x80 };
            let mut raw = Raw::open(&engine).await?;
            raw.send(&connect).await?;
            let connack = raw.packet().await?.context("no CONNACK")?;
            assert_eq!(
                raw::connack_code(&connack),
                Some(0),
                "level {level} clean {clean}"
            );
            assert_eq!(
                connack.get(2).copied(),
                Some(u8::from(!clean)),
                "level {level} clean {clean}: {connack:?}"
            );
        }
    }
    Ok(())
}

/// Sets a device's MQTT basic credentials over REST; returns the answer.
async fn set_basic(rest: &Rest, id: &str, value: Value) -> Result<(u16, Value)> {
    let response = rest
        .post("/api/device/credentials")
        .json(&json!({"deviceId": {"entityType": "DEVICE", "id": id},
                      "credentialsType": "MQTT_BASIC", "credentialsValue": value.to_string()}))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_basic_credentials_connect_devices() -> Result<()> {
    use tests::mqtt::connect_v3_basic;
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let full = rest.create_device("basic-full", "BASIC_FULL_TOKEN").await?;
    let user = rest.create_device("basic-user", "BASIC_USER_TOKEN").await?;
    let client = rest
        .create_device("basic-client", "BASIC_CLIENT_TOKEN")
        .await?;

    // All three fields; then a user name and password with any client id; then a client id.
    let (status, answer) = set_basic(
        &rest,
        &full,
        json!({"clientId": "c-full", "userName": "u-full", "password": "p-full"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["credentialsType"], "MQTT_BASIC");
    let value: Value = serde_json::from_str(answer["credentialsValue"].as_str().context("value")?)?;
    assert_eq!(
        value,
        json!({"clientId": "c-full", "userName": "u-full", "password": "p-full"})
    );
    set_basic(
        &rest,
        &user,
        json!({"userName": "u-only", "password": "p-user"}),
    )
    .await?;
    set_basic(&rest, &client, json!({"clientId": "c-only"})).await?;

    let mut device = connect_v3_basic(&engine, "c-full", "u-full", "p-full")
        .await
        .map_err(|c| anyhow::anyhow!("full: {c:?}"))?;
    assert_eq!(
        device.publish(TELEMETRY, r#"{"basic":1}"#).await?,
        Outcome::Acked(0)
    );
    device.disconnect().await;
    latest_with(&rest, &full, "basic").await?;
    connect_v3_basic(&engine, "any-client", "u-only", "p-user")
        .await
        .map_err(|c| anyhow::anyhow!("user: {c:?}"))?
        .disconnect()
        .await;
    connect_v3_basic(&engine, "c-only", "", "")
        .await
        .map_err(|c| anyhow::anyhow!("client: {c:?}"))?
        .disconnect()
        .await;

    // Wrong password, wrong client id, the old token: refused with 0x05 (0x04 without a user
    // name), as ThingsBoard.
    for (c, u, p) in [
        ("c-full", "u-full", "wrong"),
        ("other", "u-full", "p-full"),
        ("x", "u-only", ""),
        ("x", "BASIC_FULL_TOKEN", ""),
    ] {
        assert_eq!(
            connect_v3_basic(&engine, c, u, p).await.err(),
            Some(ConnectReturnCode::NotAuthorized),
            "{c} {u} {p}"
        );
    }
    assert_eq!(
        connect_v3_basic(&engine, "c-unknown", "", "").await.err(),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    // The credentials' token is no token: not over MQTT, not over HTTP.
    let credentials = rest
        .json(&format!("/api/device/{full}/credentials"))
        .await?;
    assert_eq!(credentials["credentialsType"], "MQTT_BASIC");
    let basic_token = credentials["credentialsId"]
        .as_str()
        .context("id")?
        .to_owned();
    assert_eq!(
        connect_v3_basic(&engine, "x", &basic_token, "").await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let r = reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/{basic_token}/telemetry")))
        .body(r#"{"a":1}"#)
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // Bad credentials bodies: 400; nor may a user choose a token that looks like one.
    for value in [
        json!({"password": "p"}),
        json!({"clientId": "c".repeat(300)}),
    ] {
        assert_eq!(set_basic(&rest, &client, value).await?.0, 400);
    }
    let r = rest
        .post("/api/device/credentials")
        .json(&json!({"deviceId": {"entityType": "DEVICE", "id": client},
                      "credentialsType": "MQTT_BASIC", "credentialsValue": "not json"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let r = rest
        .post("/api/device/credentials")
        .json(&json!({"deviceId": {"entityType": "DEVICE", "id": client},
                      "credentialsType": "ACCESS_TOKEN", "credentialsId": "mqtt-basic:mine"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    // Two devices may not hold the same credentials.
    let (status, _) = set_basic(&rest, &user, json!({"clientId": "c-only"})).await?;
    assert_eq!(status, 400);
    // Back to an access token: the basic credentials stop working.
    let r = rest
        .post("/api/device/credentials")
        .json(&json!({"deviceId": {"entityType": "DEVICE", "id": client},
                      "credentialsType": "ACCESS_TOKEN", "credentialsId": "CLIENT_AGAIN"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(connect_v3_basic(&engine, "c-only", "", "").await.is_err());
    connect_v3(&engine, "CLIENT_AGAIN", "again")
        .await
        .map_err(|c| anyhow::anyhow!("token: {c:?}"))?
        .disconnect()
        .await;
    Ok(())
}

//! Hostile input against the ingress limits every transport shares: the payload size at its
//! exact boundary, numbers no storage type holds, keys a device keeps inventing, and log lines
//! a peer can trigger.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use tests::mqtt::{Outcome, connect_v3, v5};
use tests::{Engine, Rest};

use super::still_serving;
use crate::SETTLE;
use crate::mqtt_device_api::metric_at_least;

const TELEMETRY: &str = "v1/devices/me/telemetry";
/// The documented default payload limit, 64 KiB.
const LIMIT: usize = 64 * 1024;

/// A telemetry object of exactly `size` bytes.
fn payload_of(size: usize) -> String {
    let overhead = r#"{"blob":""}"#.len();
    format!(r#"{{"blob":"{}"}}"#, "x".repeat(size - overhead))
}

async fn post(engine: &Engine, path: &str, body: impl Into<String>) -> Result<(u16, String)> {
    let resp = reqwest::Client::new()
        .post(engine.url(path))
        .header("Content-Type", "application/json")
        .body(body.into())
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

async fn post_json(rest: &Rest, path: &str, body: &Value) -> Result<Value> {
    let resp = rest.post(path).json(body).send().await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    anyhow::ensure!(status.is_success(), "POST {path}: {status} {answer}");
    Ok(answer)
}

/// An HTTP integration whose converter names one device; returns its routing key.
async fn http_integration(rest: &Rest, device: &str) -> Result<String> {
    let script = format!(r#"#{{deviceName: "{device}", telemetry: #{{seen: 1}}}}"#);
    let converter = post_json(
        rest,
        "/api/converter",
        &json!({"name": "limits", "type": "UPLINK",
                "configuration": {"scriptLang": "TBEL", "tbelDecoder": script}}),
    )
    .await?;
    let integration = post_json(
        rest,
        "/api/integration",
        &json!({"name": "limits", "type": "HTTP",
                "defaultConverterId": {"id": converter["id"]["id"]}}),
    )
    .await?;
    Ok(integration["routingKey"]
        .as_str()
        .context("routing key")?
        .to_owned())
}

async fn metrics(engine: &Engine) -> Result<String> {
    Ok(reqwest::get(engine.url("/metrics")).await?.text().await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_payload_limit_is_exactly_64_kib_on_every_transport() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    rest.create_device("limit", "LIMIT_TOKEN").await?;
    let (fits, over) = (payload_of(LIMIT), payload_of(LIMIT + 1));
    assert_eq!(fits.len(), 65_536);

    let mut v3 = connect_v3(&engine, "LIMIT_TOKEN", "limit3")
        .await
        .map_err(|c| anyhow!("{c:?}"))?;
    assert_eq!(
        v3.publish(TELEMETRY, fits.clone()).await?,
        Outcome::Acked(0)
    );
    assert_eq!(
        v3.publish(TELEMETRY, over.clone()).await?,
        Outcome::Disconnected,
        "MQTT 3.1.1 has no refusal code: the connection is closed"
    );
    let mut v5 = v5::connect(&engine, "LIMIT_TOKEN", "limit5")
        .await
        .map_err(|c| anyhow!("{c:?}"))?;
    assert_eq!(
        v5.publish(TELEMETRY, fits.clone()).await?,
        Outcome::Acked(0)
    );
    assert_eq!(
        v5.publish(TELEMETRY, over.clone()).await?,
        Outcome::Acked(0x97)
    );

    let device_api = "/api/v1/LIMIT_TOKEN/telemetry";
    assert_eq!(post(&engine, device_api, fits.clone()).await?.0, 200);
    assert_eq!(post(&engine, device_api, over.clone()).await?.0, 413);

    let key = http_integration(&rest, "limit-integration").await?;
    let path = format!("/api/v1/integrations/http/{key}");
    let (status, text) = post(&engine, &path, fits).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(post(&engine, &path, over).await?.0, 413);
    still_serving(&engine).await
}

/// Latest values of `device` with strict data types, once `key` is there.
async fn latest_with(rest: &Rest, device: &str, key: &str) -> Result<Value> {
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(device).await?;
        Ok(latest.get(key).is_some().then_some(latest))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn numbers_beyond_long_and_double_are_kept_as_thingsboard_keeps_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("numbers", "NUMBERS_TOKEN").await?;
    let device_api = "/api/v1/NUMBERS_TOKEN/telemetry";
    // ThingsBoard's JsonConverter: an integral value that no LONG holds, or a fraction with
    // more than 16 decimals, is kept as a STRING (its type cast is on by default); an
    // integral value in exponent form is a LONG.
    let body = r#"{"huge":1e400,"negHuge":-1E+400,"tiny":1e-400,
        "big":1000000000000000000000000000000,"precise":0.30000000000000004,
        "negZero":-0.0,"sci":1.5e3,"plain":42.0,"last":1}"#;
    let (status, text) = post(&engine, device_api, body).await?;
    assert_eq!(status, 200, "{text}");
    let latest = latest_with(&rest, &id, "last").await?;
    let value = |key: &str| latest[key][0]["value"].clone();
    assert_eq!(value("huge"), json!("1e400"));
    assert_eq!(value("negHuge"), json!("-1E+400"));
    assert_eq!(value("tiny"), json!("1e-400"));
    assert_eq!(value("big"), json!("1000000000000000000000000000000"));
    assert_eq!(value("precise"), json!("0.30000000000000004"));
    // ThingsBoard's BigDecimal has no negative zero; JSON equality would not tell them apart.
    assert_eq!(value("negZero").to_string(), "0.0");
    assert_eq!(value("sci"), json!(1500));
    assert_eq!(value("plain"), json!(42.0));
    for (key, v) in latest.as_object().context("latest is an object")? {
        assert!(!v[0]["value"].is_null(), "{key} reads back as null");
    }

    // Averages never meet an infinity: the text values take no part.
    let (status, _) = post(
        &engine,
        device_api,
        r#"[{"ts":1000,"values":{"avg":2}},{"ts":2000,"values":{"avg":1e400}}]"#,
    )
    .await?;
    assert_eq!(status, 200);
    let avg = rest
        .eventually(SETTLE, || async {
            let v = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=avg&startTs=0&endTs=3000&agg=AVG&interval=3000&useStrictDataTypes=true"
                ))
                .await?;
            Ok(v["avg"][0].get("value").cloned())
        })
        .await?;
    assert_eq!(avg, json!(2.0));

    // What no type holds at all is refused with the protocol's own code.
    let nested = format!(r#"{{"deep":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
    let refused = [
        r#"{"x":1e99999999999999999999}"#.to_owned(),
        r#"{"x":1e-3000000000}"#.to_owned(),
        nested,
    ];
    for body in &refused {
        let (status, text) = post(&engine, device_api, body.as_str()).await?;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let mut v5 = v5::connect(&engine, "NUMBERS_TOKEN", "numbers5")
        .await
        .map_err(|c| anyhow!("{c:?}"))?;
    for body in &refused {
        assert_eq!(
            v5.publish(TELEMETRY, body.as_str()).await?,
            Outcome::Acked(0x99)
        );
    }
    assert_eq!(
        v5.publish(TELEMETRY, r#"{"huge":1e400}"#).await?,
        Outcome::Acked(0)
    );
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_cannot_invent_keys_without_bound() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(
        dir.path(),
        &[
            ("ENGINE_LIMITS__MAX_KEYS_PER_DEVICE", "3"),
            ("ENGINE_LIMITS__MAX_DATA_POINTS_PER_MESSAGE", "8"),
        ],
    )?;
    let rest = engine.rest().await?;
    let id = rest.create_device("keys", "KEYS_TOKEN").await?;
    let telemetry = "/api/v1/KEYS_TOKEN/telemetry";
    let attributes = "/api/v1/KEYS_TOKEN/attributes";
    let cases: &[(&str, &str, u16)] = &[
        (telemetry, r#"{"a":1,"b":2}"#, 200),
        (telemetry, r#"{"c":3}"#, 200),
        // A fourth key is one too many; nothing of the message is taken.
        (telemetry, r#"{"a":4,"d":4}"#, 400),
        // The keys it has keep flowing.
        (telemetry, r#"{"a":5,"b":5,"c":5}"#, 200),
        // Attributes have their own count.
        (attributes, r#"{"x":1,"y":2,"z":3}"#, 200),
        (attributes, r#"{"w":1}"#, 400),
        (attributes, r#"{"x":2}"#, 200),
        // Points per message: 9 over 8.
        (
            telemetry,
            r#"[{"ts":1,"values":{"a":1,"b":1,"c":1}},{"ts":2,"values":{"a":1,"b":1,"c":1}},{"ts":3,"values":{"a":1,"b":1,"c":1}}]"#,
            400,
        ),
    ];
    for (path, body, want) in cases {
        let (status, text) = post(&engine, path, *body).await?;
        assert_eq!(status, *want, "{path} {body}: {text}");
        if *want == 400 {
            assert!(text.contains("limit") || text.contains("most"), "{text}");
        }
    }
    let long_key = format!(r#"{{"{}":1}}"#, "k".repeat(256));
    let (status, text) = post(&engine, telemetry, long_key.as_str()).await?;
    assert_eq!(status, 400, "{text}");

    let mut v5 = v5::connect(&engine, "KEYS_TOKEN", "keys5")
        .await
        .map_err(|c| anyhow!("{c:?}"))?;
    assert_eq!(
        v5.publish(TELEMETRY, r#"{"e":1}"#).await?,
        Outcome::Acked(0x97)
    );
    assert_eq!(
        v5.publish(TELEMETRY, long_key.as_str()).await?,
        Outcome::Acked(0x99)
    );
    assert_eq!(
        v5.publish(TELEMETRY, r#"{"c":6}"#).await?,
        Outcome::Acked(0)
    );
    let mut v3 = connect_v3(&engine, "KEYS_TOKEN", "keys3")
        .await
        .map_err(|c| anyhow!("{c:?}"))?;
    assert_eq!(
        v3.publish(TELEMETRY, r#"{"f":1}"#).await?,
        Outcome::Disconnected
    );

    let latest = latest_with(&rest, &id, "c").await?;
    let mut keys: Vec<&str> = latest
        .as_object()
        .context("latest")?
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["a", "b", "c"], "{latest}");

    let metrics = metrics(&engine).await?;
    for (reason, transport) in [
        ("too_many_keys", "http"),
        ("too_many_keys", "mqtt"),
        ("too_many_data_points", "http"),
        ("key_too_long", "http"),
    ] {
        let series = format!(
            r#"engine_messages_rejected_total{{reason="{reason}",transport="{transport}"}}"#
        );
        assert!(
            metric_at_least(&metrics, &series, 1.0),
            "{series} not counted"
        );
    }
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_are_logged_at_a_bounded_rate_and_escaped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    rest.create_device("noisy", "NOISY_TOKEN").await?;
    let device_api = "/api/v1/NOISY_TOKEN/telemetry";
    // A timestamp whose raw text carries a newline and a forged log line.
    let forged = "{\"ts\":{\n\"ERROR forged line\":1},\"values\":{\"a\":1}}";
    let (status, _) = post(&engine, device_api, forged).await?;
    assert_eq!(status, 400);
    let sent = 300;
    for _ in 0..sent {
        assert_eq!(post(&engine, device_api, "{broken").await?.0, 400);
    }
    let lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("uplink rejected"))
            .count()
    };
    let logged = lines(&engine.log());
    assert!(
        logged < sent / 2,
        "{logged} WARN lines for {sent} rejections: not rate-limited"
    );
    // Once the limiter lets a line through again, it says how many it held back.
    rest.eventually(Duration::from_secs(30), || async {
        post(&engine, device_api, "{broken").await?;
        Ok(engine.log().contains("suppressed=").then_some(()))
    })
    .await
    .context("no line reports the suppressed rejections")?;
    let log = engine.log();
    assert!(
        !log.lines().any(|l| l.starts_with("\"ERROR forged")),
        "a peer's newline reached the log unescaped:\n{log}"
    );
    let metrics = metrics(&engine).await?;
    assert!(
        metric_at_least(
            &metrics,
            r#"engine_messages_rejected_total{reason="invalid_json",transport="http"}"#,
            sent as f64
        ),
        "every rejection is still counted"
    );
    assert!(
        metric_at_least(
            &metrics,
            r#"engine_log_lines_suppressed_total{site="uplink_rejected"}"#,
            1.0
        ),
        "held-back lines are counted"
    );
    still_serving(&engine).await
}

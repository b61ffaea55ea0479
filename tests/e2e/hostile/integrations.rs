//! Hostile input: integrations. Converter scripts whose helpers are asked for terabytes, names
//! that would forge log lines, one datagram naming thousands of devices, and debug events fed
//! large payloads and credentials, each through the REST test run and the real CoAP and HTTP
//! integration endpoints.

use anyhow::{Context, Result};
use coap_lite::{Packet, RequestType};
use serde_json::{Value, json};
use tests::coap::{RawClient, code, request};
use tests::{Engine, Rest};

use super::{rss_below, still_serving};
use crate::integrations::{converter, device_id, events, integration, latest};

/// A CoAP and an HTTP integration sharing one uplink converter: their routing keys.
async fn both_integrations(rest: &Rest, name: &str, script: &str) -> Result<(String, String)> {
    let conv = converter(rest, name, "UPLINK", script).await?;
    let (_, coap) = integration(
        rest,
        &json!({"name": format!("{name} coap"), "type": "COAP", "debugMode": true,
                "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let (_, http) = integration(
        rest,
        &json!({"name": format!("{name} http"), "type": "HTTP", "debugMode": true,
                "defaultConverterId": {"id": conv}}),
    )
    .await?;
    Ok((coap, http))
}

/// A confirmable CoAP POST to the integration; returns the answer.
async fn coap_post(engine: &Engine, key: &str, payload: &[u8], id: u16) -> Result<Packet> {
    let client = RawClient::connect(engine.coap).await?;
    client
        .call(&request(
            true,
            RequestType::Post,
            &format!("i/{key}"),
            payload,
            id,
        )?)
        .await
}

/// An HTTP integration POST; returns the status and the body.
async fn http_post(engine: &Engine, key: &str, payload: &[u8]) -> Result<(u16, String)> {
    let resp = reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/integrations/http/{key}")))
        .body(payload.to_vec())
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

fn text(p: &Packet) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// The value of a counter (summed over its series) whose labels contain all of `labels`.
async fn counter(engine: &Engine, name: &str, labels: &[&str]) -> Result<f64> {
    let metrics = reqwest::get(engine.url("/metrics")).await?.text().await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_asked_for_a_terabyte_fails_its_message_and_the_engine_serves_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let want = "padEnd: the result would be 1000000000000 bytes, over the string limit";

    // The issue's test run: it used to abort the engine ("memory allocation failed").
    let resp: Value = rest
        .post("/api/converter/testUpLink")
        .json(&json!({"payload": "eA==", "decoder": r#"padEnd("x", 1000000000000, "y")"#}))
        .send()
        .await?
        .json()
        .await?;
    let error = resp["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(want), "{resp}");
    still_serving(&engine).await?;

    // The same through the integrations, the width taken from the payload.
    let (coap, http) = both_integrations(
        &rest,
        "pad",
        r#"let n = parseInt(decodeToString(payload));
           #{deviceName: "padded", telemetry: #{s: padEnd("x", n, "y")}}"#,
    )
    .await?;
    for (i, width) in ["1000000000000", "200000000"].into_iter().enumerate() {
        let answer = coap_post(&engine, &coap, width.as_bytes(), i as u16).await?;
        assert_eq!(code(&answer), "4.00", "{width}: {}", text(&answer));
        assert!(
            text(&answer).contains("padEnd: the result would be"),
            "{}",
            text(&answer)
        );
        let (status, body) = http_post(&engine, &http, width.as_bytes()).await?;
        assert_eq!(status, 400, "{width}: {body}");
        assert!(body.contains("padEnd: the result would be"), "{body}");
    }
    still_serving(&engine).await?;
    rss_below(&engine, 300)?;

    // A sane width is converted and stored, on both.
    let answer = coap_post(&engine, &coap, b"3", 9).await?;
    assert_eq!(code(&answer), "2.04", "{}", text(&answer));
    let (status, body) = http_post(&engine, &http, b"4").await?;
    assert_eq!(status, 200, "{body}");
    let id = device_id(&rest, "padded").await?;
    let stored = rest
        .eventually(crate::SETTLE, || async {
            let v = latest(&rest, &id, "s").await?;
            Ok((v == json!("xyyy")).then_some(v))
        })
        .await?;
    assert_eq!(stored, json!("xyyy"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converter_made_name_cannot_forge_a_log_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let (coap, http) = both_integrations(
        &rest,
        "names",
        r#"#{deviceName: decodeToString(payload), telemetry: #{t: 1}}"#,
    )
    .await?;
    let forged = b"bad\nERROR forged line";
    let answer = coap_post(&engine, &coap, forged, 1).await?;
    assert_eq!(code(&answer), "4.00", "{}", text(&answer));
    assert!(
        text(&answer).contains("device name must not contain control characters"),
        "{}",
        text(&answer)
    );
    for name in [&forged[..], b"\x1b[31mred", "n".repeat(256).as_bytes()] {
        let (status, body) = http_post(&engine, &http, name).await?;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("converter error: deviceName: device name"),
            "{body}"
        );
    }
    let missing = rest
        .get("/api/tenant/devices")
        .query(&[("deviceName", "bad\nERROR forged line")])
        .send()
        .await?;
    assert_eq!(missing.status().as_u16(), 404);

    // A good name afterwards: once its creation is logged, everything before it is too.
    let answer = coap_post(&engine, &coap, b"good-1", 2).await?;
    assert_eq!(code(&answer), "2.04");
    device_id(&rest, "good-1").await?;
    let log = engine.log();
    assert!(
        log.lines()
            .any(|l| l.contains("device created by integration")),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("ERROR forged")) && !log.contains('\x1b'),
        "a forged line in the log:\n{log}"
    );
    still_serving(&engine).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_made_per_uplink_and_per_integration_are_capped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(
        dir.path(),
        &[
            ("ENGINE_INTEGRATIONS__MAX_DEVICES_PER_INTEGRATION", "5"),
            // Unoptimised builds need the time to make 3 000 records, more on a loaded machine.
            ("ENGINE_INTEGRATIONS__SCRIPT__MAX_WALL_TIME", "60s"),
        ],
    )?;
    let rest = engine.rest().await?;

    // The issue's case: one 10-byte datagram, 300 devices per byte.
    let (fan_out, _) = both_integrations(
        &rest,
        "fan-out",
        r#"let out = [];
           for b in payload { for i in 0..300 { out.push(#{deviceName: `fan-${b}-${i}`, telemetry: #{t: 1}}); } }
           out"#,
    )
    .await?;
    let answer = coap_post(&engine, &fan_out, b"0123456789", 1).await?;
    assert_eq!(code(&answer), "4.00", "{}", text(&answer));
    assert!(
        text(&answer).contains("named 3000 devices") && text(&answer).contains("at most 100"),
        "{}",
        text(&answer)
    );
    let none = rest
        .get("/api/tenant/devices?deviceName=fan-48-0")
        .send()
        .await?;
    assert_eq!(none.status().as_u16(), 404, "no device of it was created");
    let page = rest.json("/api/tenant/devices?pageSize=10&page=0").await?;
    assert_eq!(page["totalElements"], json!(0), "{page}");
    assert_eq!(
        counter(
            &engine,
            "engine_integration_devices_refused_total",
            &["reason=\"per_uplink\""]
        )
        .await?,
        1.0
    );

    // One integration creates at most 5; the devices it made still send.
    let (_, http) = both_integrations(
        &rest,
        "one-each",
        r#"#{deviceName: decodeToString(payload), telemetry: #{t: 1}}"#,
    )
    .await?;
    for n in 0..5 {
        let (status, body) = http_post(&engine, &http, format!("dev-{n}").as_bytes()).await?;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = http_post(&engine, &http, b"dev-5").await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit of 5 devices"), "{body}");
    let (status, _) = http_post(&engine, &http, b"dev-0").await?;
    assert_eq!(status, 200);
    assert_eq!(
        counter(
            &engine,
            "engine_integration_devices_refused_total",
            &["reason=\"per_integration\""]
        )
        .await?,
        1.0
    );
    still_serving(&engine).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_events_are_bounded_in_bytes_and_show_no_credentials() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let conv = converter(
        &rest,
        "auth",
        "UPLINK",
        r#"#{deviceName: "big", attributes: #{auth: metadata.authorization}, telemetry: #{n: payload.len()}}"#,
    )
    .await?;
    let (integration_id, key) = integration(
        &rest,
        &json!({"name": "events", "type": "HTTP", "debugMode": true,
                "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let url = engine.url(&format!("/api/v1/integrations/http/{key}"));
    let payload = "p".repeat(60 * 1024);
    let http = reqwest::Client::new();
    let rss_before = engine.rss_kib()? / 1024;
    const MESSAGES: usize = 500;
    for _ in 0..MESSAGES {
        let resp = http
            .post(&url)
            .header("Authorization", "Bearer s3cret-token")
            .header("Cookie", "session=abc123")
            .body(payload.clone())
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "{}", resp.status());
    }
    let rss_after = engine.rss_kib()? / 1024;

    // The converter got the header; the events do not show it.
    let id = device_id(&rest, "big").await?;
    let attrs = rest
        .eventually(crate::SETTLE, || async {
            let a = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/values/attributes/CLIENT_SCOPE"
                ))
                .await?;
            Ok((a[0]["key"] == "auth").then_some(a))
        })
        .await?;
    assert_eq!(attrs[0]["value"], "Bearer s3cret-token");
    let shown = events(&rest, "CONVERTER", &conv, "DEBUG_CONVERTER").await?;
    let body = &shown.first().context("converter events")?["body"];
    let metadata = body["metadata"].as_str().unwrap_or_default();
    assert!(
        !metadata.contains("s3cret") && !metadata.contains("abc123"),
        "{metadata}"
    );
    assert!(metadata.contains("[redacted]"), "{metadata}");

    // Each event's payload is cut, and says so; far fewer than 500 are kept of 60 KB each.
    let input = body["in"].as_str().unwrap_or_default();
    assert!(input.len() < 20 * 1024, "{} bytes shown", input.len());
    assert!(input.ends_with("[truncated: 61440 bytes in all]"));
    assert_eq!(body["truncated"], true);
    for (entity, id, kind) in [
        ("CONVERTER", conv.as_str(), "DEBUG_CONVERTER"),
        ("INTEGRATION", integration_id.as_str(), "DEBUG_INTEGRATION"),
    ] {
        let page = rest
            .json(&format!(
                "/api/events/{entity}/{id}/{kind}?pageSize=10&page=0"
            ))
            .await?;
        let total = page["totalElements"].as_u64().context("totalElements")?;
        assert!(
            (100..MESSAGES as u64).contains(&total),
            "{entity}: {total} events kept"
        );
    }
    assert!(
        counter(
            &engine,
            "engine_integration_debug_events_truncated_total",
            &[]
        )
        .await?
            >= MESSAGES as f64
    );
    assert!(
        counter(
            &engine,
            "engine_integration_debug_events_dropped_total",
            &["reason=\"entity_bytes\""]
        )
        .await?
            > 0.0
    );
    // 500 payloads of 60 KB, twice each (converter and integration events), were 60 MB.
    assert!(
        rss_after <= rss_before + 40,
        "RSS grew from {rss_before} to {rss_after} MiB"
    );
    still_serving(&engine).await?;
    Ok(())
}

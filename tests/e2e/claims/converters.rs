//! What a converter sees: CoAP's Location-Path and Location-Query options as
//! `Option:location-path` and `Option:location-query`, and an HTTP integration request's query
//! parameters (and headers) as metadata, each shown in the converter's debug event and stored
//! through the script's output.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tests::Rest;
use tests::coap::{Raw, RawClient, code};

use crate::integrations::{converter, device_id, events, integration, latest};

/// Option numbers of RFC 7252 §5.10 not in the harness.
const LOCATION_PATH: u16 = 8;
const URI_QUERY: u16 = 15;
const LOCATION_QUERY: u16 = 20;

/// Stores the metadata entries `keys` as telemetry of device `device`.
fn echo_script(device: &str, keys: &[(&str, &str)]) -> String {
    let fields: Vec<String> = keys
        .iter()
        .map(|(field, key)| format!("{field}: metadata[\"{key}\"]"))
        .collect();
    format!(
        "#{{deviceName: \"{device}\", telemetry: #{{{}}}}}",
        fields.join(", ")
    )
}

/// The metadata of the converter's newest debug event.
async fn seen_metadata(rest: &Rest, conv: &str) -> Result<Value> {
    let list = events(rest, "CONVERTER", conv, "DEBUG_CONVERTER").await?;
    let newest = list.first().context("no converter debug event")?;
    let text = newest["body"]["metadata"].as_str().unwrap_or_default();
    serde_json::from_str(text).with_context(|| format!("metadata of {newest}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn coap_location_options_reach_the_converter_as_metadata() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = tests::Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let conv = converter(
        &rest,
        "coap meta",
        "UPLINK",
        &echo_script(
            "COAPMETA",
            &[
                ("lp", "Option:location-path"),
                ("lq", "Option:location-query"),
                ("uri", "Option:uri"),
            ],
        ),
    )
    .await?;
    let (_, key) = integration(
        &rest,
        &json!({"name": "coap meta", "type": "COAP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let client = RawClient::connect(engine.coap).await?;
    let datagram = Raw::post(&format!("i/{key}"), b"x", 0x0300)
        .with(LOCATION_PATH, b"site")
        .with(LOCATION_PATH, b"room-4")
        .with(URI_QUERY, b"a=1")
        .with(LOCATION_QUERY, b"shelf=2")
        .with(LOCATION_QUERY, b"bin=9")
        .encode();
    let answer = client.call(&datagram).await?;
    assert_eq!(code(&answer), "2.04", "{answer:?}");

    let seen = seen_metadata(&rest, &conv).await?;
    assert_eq!(seen["Option:location-path"], "site/room-4", "{seen}");
    assert_eq!(seen["Option:location-query"], "shelf=2&bin=9", "{seen}");
    let uri = seen["Option:uri"].as_str().unwrap_or_default();
    assert!(uri.ends_with(&format!("/i/{key}?a=1")), "{seen}");
    let device = device_id(&rest, "COAPMETA").await?;
    assert_eq!(latest(&rest, &device, "lp").await?, json!("site/room-4"));
    assert_eq!(latest(&rest, &device, "lq").await?, json!("shelf=2&bin=9"));
    // Without the options the keys are absent, not empty.
    let plain = Raw::post(&format!("i/{key}"), b"x", 0x0301).encode();
    assert_eq!(code(&client.call(&plain).await?), "2.04");
    let seen = seen_metadata(&rest, &conv).await?;
    assert!(seen.get("Option:location-path").is_none(), "{seen}");
    assert!(seen.get("Option:location-query").is_none(), "{seen}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_integration_query_parameters_and_headers_reach_the_converter() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = tests::Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let conv = converter(
        &rest,
        "http meta",
        "UPLINK",
        &echo_script(
            "HTTPMETA",
            &[("unit", "unit"), ("vendor", "x-vendor"), ("site", "site")],
        ),
    )
    .await?;
    let (_, key) = integration(
        &rest,
        &json!({"name": "http meta", "type": "HTTP", "defaultConverterId": {"id": conv},
                "configuration": {"metadata": {"site": "lab", "region": "eu"}}}),
    )
    .await?;
    let resp = reqwest::Client::new()
        .post(engine.url(&format!(
            "/api/v1/integrations/http/{key}?unit=celsius&site=roof"
        )))
        .header("X-Vendor", "acme")
        .body("x")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);

    let seen = seen_metadata(&rest, &conv).await?;
    assert_eq!(seen["unit"], "celsius", "{seen}");
    assert_eq!(seen["x-vendor"], "acme", "{seen}");
    // The request's parameter over the integration's own metadata; the rest of it stays.
    assert_eq!(seen["site"], "roof", "{seen}");
    assert_eq!(seen["region"], "eu", "{seen}");
    let device = device_id(&rest, "HTTPMETA").await?;
    assert_eq!(latest(&rest, &device, "unit").await?, json!("celsius"));
    assert_eq!(latest(&rest, &device, "vendor").await?, json!("acme"));
    assert_eq!(latest(&rest, &device, "site").await?, json!("roof"));
    Ok(())
}

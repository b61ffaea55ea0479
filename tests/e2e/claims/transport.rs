//! Transports: MQTT 5's PUBACK waits for the queue like 3.1.1's and CONNACK grants QoS 1 at
//! most; `mqtt.connect_timeout` is the configured one; CoAP's `coap.max_in_flight` answers
//! 5.03 and counts the non-confirmable requests it drops; oversized integration payloads get
//! CoAP 4.13 with Size1 and HTTP 413. A full queue is forced by holding the embedded store's
//! write lock ([`StoreLock`]), not by racing a sink's timer.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use coap_lite::{CoapOption, RequestType};
use serde_json::{Value, json};
use tests::coap::{RawClient, code, request};
use tests::mqtt::raw::{self, Raw};
use tests::store_lock::StoreLock;
use tests::{Engine, Rest};

use super::metric;
use crate::SETTLE;
use crate::integrations::{converter, integration};

const TELEMETRY: &[u8] = b"v1/devices/me/telemetry";

/// The properties of an MQTT 5 CONNACK: (identifier, value bytes).
fn connack_properties(packet: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
    ensure!(
        packet.first() == Some(&0x20),
        "not a CONNACK: {packet:02x?}"
    );
    // Fixed header (1 + remaining length), flags, reason code, then the property length.
    let mut at = 1;
    while packet.get(at).context("short CONNACK")? & 0x80 != 0 {
        at += 1;
    }
    at += 3;
    let (len, used) = var_int(&packet[at..])?;
    at += used;
    let end = at + len;
    ensure!(
        end <= packet.len(),
        "properties past the packet: {packet:02x?}"
    );
    let mut out = Vec::new();
    while at < end {
        let id = packet[at];
        at += 1;
        let size = match id {
            // Byte properties.
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            // Two-byte integers.
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            // Four-byte integers.
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            // Strings and binary data: a two-byte length first.
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                2 + usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]))
            }
            // User property: two strings.
            0x26 => {
                let first = 2 + usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
                let at2 = at + first;
                first + 2 + usize::from(u16::from_be_bytes([packet[at2], packet[at2 + 1]]))
            }
            other => anyhow::bail!("unknown CONNACK property {other:#04x}: {packet:02x?}"),
        };
        out.push((id, packet[at..at + size].to_vec()));
        at += size;
    }
    Ok(out)
}

fn var_int(bytes: &[u8]) -> Result<(usize, usize)> {
    let mut value = 0usize;
    for (i, b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    anyhow::bail!("bad variable byte integer")
}

/// The packet id and reason code of a PUBACK (a PUBACK without a reason code is 0x00).
fn puback(packet: &[u8]) -> Result<(u16, u8)> {
    ensure!(packet.first() == Some(&0x40), "not a PUBACK: {packet:02x?}");
    let id = u16::from_be_bytes([packet[2], packet[3]]);
    Ok((id, packet.get(4).copied().unwrap_or(0)))
}

/// The number of stored values of `key`.
async fn stored_count(rest: &Rest, device: &str, key: &str) -> Result<Value> {
    let v = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/values/timeseries?keys={key}&startTs=0&endTs=9999999999999&agg=COUNT&interval=9999999999999&useStrictDataTypes=true"
        ))
        .await?;
    Ok(v[key][0]["value"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_puback_waits_for_the_queue_and_connack_grants_qos_1() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // One partition of one place: one message held in it fills the queue.
    let engine = Engine::start_with(
        dir.path(),
        &[
            ("ENGINE_QUEUE__PARTITIONS", "1"),
            ("ENGINE_QUEUE__PARTITION_CAPACITY", "1"),
            ("ENGINE_HTTP__QUEUE_WAIT", "200ms"),
            ("ENGINE_STORE__RETRY_MAX", "500ms"),
        ],
    )?;
    let rest = engine.rest().await?;
    let id = rest.create_device("five-held", "FIVE_HELD").await?;

    let mut mqtt = Raw::open(&engine).await?;
    mqtt.send(&raw::connect(5, "FIVE_HELD")).await?;
    let connack = mqtt.packet().await?.context("no CONNACK")?;
    assert_eq!(raw::connack_code(&connack), Some(0x00), "{connack:02x?}");
    // QoS 2 is granted as 1, and MQTT 5 says so in CONNACK's Maximum QoS (0x24).
    let properties = connack_properties(&connack)?;
    assert!(
        properties.contains(&(0x24, vec![1])),
        "CONNACK properties {properties:02x?} without Maximum QoS 1"
    );

    // The store cannot write: what the queue holds stays there. One message fills it.
    let lock = StoreLock::take(&engine.data_dir)?;
    let http = reqwest::Client::new();
    let post = |n: i64| {
        http.post(engine.url("/api/v1/FIVE_HELD/telemetry"))
            .json(&json!({"n": n}))
            .send()
    };
    assert_eq!(post(1).await?.status().as_u16(), 200);
    assert_eq!(
        post(2).await?.status().as_u16(),
        503,
        "the queue is full: a second message does not fit"
    );

    // The MQTT 5 publish is read but not acknowledged while the queue is full...
    mqtt.send(&raw::publish(true, TELEMETRY, Some(7), br#"{"n":3}"#))
        .await?;
    let early = tokio::time::timeout(Duration::from_secs(2), mqtt.packet()).await;
    ensure!(
        early.is_err(),
        "an answer while the queue is full: {:02x?}",
        early.ok()
    );
    // ...and acknowledged, with success, once the store took the queue.
    lock.release()?;
    let ack = mqtt.packet().await?.context("closed instead of PUBACK")?;
    assert_eq!(puback(&ack)?, (7, 0x00));
    let count = rest
        .eventually(SETTLE, || async {
            let c = stored_count(&rest, &id, "n").await?;
            Ok((c == json!(2)).then_some(c))
        })
        .await
        .context("both acknowledged messages stored")?;
    assert_eq!(count, json!(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_mqtt_connection_is_closed_at_the_configured_connect_timeout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_MQTT__CONNECT_TIMEOUT", "2s")])?;
    let started = Instant::now();
    let mut silent = Raw::open(&engine).await?;
    silent.closed().await?;
    let after = started.elapsed();
    // Not before the configured 2 s; and well before the 10 s default, which is what an
    // engine ignoring the setting would take (a timer does not fire 8 s late).
    ensure!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(10),
        "closed after {after:?}"
    );
    Ok(())
}

/// A CoAP integration whose converter names the existing device `HELD` and stores `n`.
async fn held_integration(rest: &Rest) -> Result<String> {
    let conv = converter(
        rest,
        "held",
        "UPLINK",
        "#{deviceName: \"HELD\", telemetry: #{n: parseInt(decodeToString(payload))}}",
    )
    .await?;
    let (_, key) = integration(
        rest,
        &json!({"name": "held", "type": "COAP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    Ok(key)
}

#[tokio::test(flavor = "multi_thread")]
async fn coap_past_max_in_flight_answers_5_03_and_counts_dropped_non_confirmable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(
        dir.path(),
        &[
            ("ENGINE_QUEUE__PARTITIONS", "1"),
            ("ENGINE_QUEUE__PARTITION_CAPACITY", "1"),
            ("ENGINE_HTTP__QUEUE_WAIT", "200ms"),
            ("ENGINE_STORE__RETRY_MAX", "500ms"),
            ("ENGINE_COAP__MAX_IN_FLIGHT", "1"),
            // An uplink waits for room as long as the test needs: a 5.03 can come only from
            // the in-flight bound.
            ("ENGINE_INTEGRATIONS__QUEUE_WAIT", "1h"),
        ],
    )?;
    let rest = engine.rest().await?;
    let id = rest.create_device("HELD", "HELD_TOKEN").await?;
    let key = held_integration(&rest).await?;
    let path = format!("i/{key}");
    let dropped = "engine_coap_dropped_total";
    let before = metric(&engine, dropped, &["reason=\"overloaded\""]).await?;

    // A full queue the store cannot empty.
    let lock = StoreLock::take(&engine.data_dir)?;
    let http = reqwest::Client::new();
    let post = |n: i64| {
        http.post(engine.url("/api/v1/HELD_TOKEN/telemetry"))
            .json(&json!({"n": n}))
            .send()
    };
    assert_eq!(post(1).await?.status().as_u16(), 200);
    assert_eq!(post(2).await?.status().as_u16(), 503, "the queue is full");

    // The first request takes the one in-flight place and waits for the queue.
    let client = RawClient::connect(engine.coap).await?;
    client
        .send(&request(true, RequestType::Post, &path, b"10", 0x0100)?)
        .await?;
    // The next confirmable one is told to come back, with Max-Age...
    let busy = client
        .call(&request(true, RequestType::Post, &path, b"11", 0x0101)?)
        .await?;
    assert_eq!(code(&busy), "5.03", "{busy:?}");
    assert_eq!(busy.header.message_id, 0x0101);
    assert!(busy.get_first_option(CoapOption::MaxAge).is_some());
    // ...a non-confirmable one is dropped without an answer, and counted.
    client
        .send(&request(false, RequestType::Post, &path, b"12", 0x0102)?)
        .await?;
    let counted = rest
        .eventually(SETTLE, || async {
            let now = metric(&engine, dropped, &["reason=\"overloaded\""]).await?;
            Ok((now >= before + 1.0).then_some(now))
        })
        .await
        .context("the dropped non-confirmable request is counted")?;
    assert_eq!(counted, before + 1.0);

    // Once the store takes the queue, the first request is answered 2.04 and stored.
    lock.release()?;
    let first = client
        .recv(SETTLE)
        .await?
        .context("no answer to the first request")?;
    assert_eq!(
        (code(&first), first.header.message_id),
        ("2.04".into(), 0x0100),
        "{first:?}"
    );
    let stored = rest
        .eventually(SETTLE, || async {
            let v = rest.latest(&id).await?;
            Ok((v["n"][0]["value"] == json!(10)).then_some(()))
        })
        .await;
    stored.context("the first request's value stored")?;
    // Neither the refused nor the dropped request was stored: 1 (HTTP) + 1 (CoAP).
    assert_eq!(
        rest.eventually(SETTLE, || async {
            let c = stored_count(&rest, &id, "n").await?;
            Ok((c == json!(2)).then_some(c))
        })
        .await?,
        json!(2)
    );
    // The place is free again.
    let again = client
        .call(&request(true, RequestType::Post, &path, b"13", 0x0103)?)
        .await?;
    assert_eq!(code(&again), "2.04");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_integration_payloads_get_4_13_with_size1_and_http_413() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(
        dir.path(),
        &[("ENGINE_INTEGRATIONS__MAX_PAYLOAD_SIZE", "64")],
    )?;
    let rest = engine.rest().await?;
    let conv = converter(
        &rest,
        "csv",
        "UPLINK",
        &crate::integrations::script("coap-csv.rhai")?,
    )
    .await?;
    let (_, coap_key) = integration(
        &rest,
        &json!({"name": "coap", "type": "COAP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let (_, http_key) = integration(
        &rest,
        &json!({"name": "http", "type": "HTTP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let big = format!("BIG,default,t,1{}", " ".repeat(100));

    // One datagram (no Block1) over the limit: 4.13 with Size1 = the limit (RFC 7252 §5.9.2.9).
    let client = RawClient::connect(engine.coap).await?;
    let answer = client
        .call(&request(
            true,
            RequestType::Post,
            &format!("i/{coap_key}"),
            big.as_bytes(),
            0x0200,
        )?)
        .await?;
    assert_eq!(code(&answer), "4.13", "{answer:?}");
    assert_eq!(
        answer.get_first_option(CoapOption::Size1),
        Some(&vec![64]),
        "{answer:?}"
    );
    // HTTP: 413 Payload Too Large, saying the limit.
    let resp = reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/integrations/http/{http_key}")))
        .body(big.clone())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 413);
    let text = resp.text().await?;
    assert!(text.contains("64"), "{text}");
    // At the limit both are taken.
    let fits = "FITS,default,t,1";
    let ok = client
        .call(&request(
            true,
            RequestType::Post,
            &format!("i/{coap_key}"),
            fits.as_bytes(),
            0x0201,
        )?)
        .await?;
    assert_eq!(code(&ok), "2.04");
    let resp = reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/integrations/http/{http_key}")))
        .body(fits)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    // The oversized message made no device.
    let missing = rest
        .get("/api/tenant/devices?deviceName=BIG")
        .send()
        .await?
        .status();
    ensure!(missing.as_u16() == 404, "BIG: {missing}");
    Ok(())
}

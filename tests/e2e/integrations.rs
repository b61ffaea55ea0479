//! Platform integrations end to end: converters and integrations made over REST, the reference
//! `coap-client` command and raw CoAP datagrams against the CoAP endpoint, HTTP uplinks with
//! their downlinks, every error path, debug events, metrics, a restart, and hot reload of a
//! converter under load. Data is checked through the REST read API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use coap_lite::{CoapOption, RequestType};
use serde_json::{Value, json};
use tests::coap::{RawClient, coap_client, code, request};
use tests::{Engine, Rest};

use crate::SETTLE;

pub(crate) fn script(name: &str) -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/converters")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| path.display().to_string())
}

pub(crate) async fn post_json(rest: &Rest, path: &str, body: &Value) -> Result<Value> {
    let resp = rest.post(path).json(body).send().await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    anyhow::ensure!(status.is_success(), "POST {path}: {status} {answer}");
    Ok(answer)
}

pub(crate) async fn converter(rest: &Rest, name: &str, kind: &str, script: &str) -> Result<String> {
    let field = if kind == "UPLINK" {
        "tbelDecoder"
    } else {
        "tbelEncoder"
    };
    let c = post_json(
        rest,
        "/api/converter",
        &json!({"name": name, "type": kind, "debugMode": true,
                "configuration": {"scriptLang": "TBEL", field: script}}),
    )
    .await?;
    Ok(c["id"]["id"].as_str().context("converter id")?.to_owned())
}

/// Creates an integration; returns (id, routing key).
pub(crate) async fn integration(rest: &Rest, body: &Value) -> Result<(String, String)> {
    let i = post_json(rest, "/api/integration", body).await?;
    Ok((
        i["id"]["id"].as_str().context("integration id")?.to_owned(),
        i["routingKey"].as_str().context("routing key")?.to_owned(),
    ))
}

/// The device's id once it exists.
pub(crate) async fn device_id(rest: &Rest, name: &str) -> Result<String> {
    let path = format!("/api/tenant/devices?deviceName={name}");
    rest.eventually(SETTLE, || async {
        let resp = rest.get(&path).send().await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let d: Value = resp.json().await?;
        Ok(d["id"]["id"].as_str().map(str::to_owned))
    })
    .await
}

/// The latest value of `key` once it is stored.
pub(crate) async fn latest(rest: &Rest, device: &str, key: &str) -> Result<Value> {
    rest.eventually(SETTLE, || async {
        let v = rest.latest(device).await?;
        Ok(v[key][0].get("value").cloned())
    })
    .await
}

/// COUNT, MIN or MAX of a key over all time, once the count reaches `count`.
async fn aggregate(rest: &Rest, device: &str, key: &str, agg: &str) -> Result<Value> {
    let v = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/values/timeseries?keys={key}&startTs=0&endTs=9999999999999&agg={agg}&interval=9999999999999&useStrictDataTypes=true"
        ))
        .await?;
    Ok(v[key][0]["value"].clone())
}

pub(crate) async fn events(rest: &Rest, entity: &str, id: &str, kind: &str) -> Result<Vec<Value>> {
    let page = rest
        .json(&format!(
            "/api/events/{entity}/{id}/{kind}?pageSize=100&page=0"
        ))
        .await?;
    Ok(page["data"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_coap_client_command_reaches_a_rest_made_integration() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let conv = converter(
        &rest,
        "CoAP Uplink Converter",
        "UPLINK",
        &script("coap-csv.rhai")?,
    )
    .await?;
    let (coap_id, key) = integration(
        &rest,
        &json!({"name": "CoAP integration", "type": "COAP", "debugMode": true,
                "defaultConverterId": {"entityType": "CONVERTER", "id": conv},
                "configuration": {"metadata": {"site": "lab"}}}),
    )
    .await?;
    let url = format!("coap://{}/i/{key}", engine.coap);

    // The reference: echo -e 'SN-001,...' | coap-client -m post URL -t text/plain -f-
    let reply = coap_client(
        &["-m", "post", &url, "-t", "text/plain", "-f-"],
        b"SN-001,default,temperature,25.7,humidity,69\n",
    )?;
    assert_eq!(reply.code, "2.04", "coap-client said: {}", reply.output);
    let sn1 = device_id(&rest, "SN-001").await?;
    let device = rest.json(&format!("/api/device/{sn1}")).await?;
    assert_eq!(device["type"], "default");
    assert_eq!(latest(&rest, &sn1, "temperature").await?, json!(25.7));
    assert_eq!(latest(&rest, &sn1, "humidity").await?, json!(69.0));

    // Debug events: the integration's message and the converter's In/Out with the metadata.
    let integration_events = events(&rest, "INTEGRATION", &coap_id, "DEBUG_INTEGRATION").await?;
    assert_eq!(integration_events[0]["body"]["status"], "OK");
    let converter_events = events(&rest, "CONVERTER", &conv, "DEBUG_CONVERTER").await?;
    let body = &converter_events[0]["body"];
    assert_eq!(body["in"], "SN-001,default,temperature,25.7,humidity,69\n");
    let out: Value = serde_json::from_str(body["out"].as_str().unwrap_or_default())?;
    assert_eq!(out["deviceName"], "SN-001");
    let metadata: Value = serde_json::from_str(body["metadata"].as_str().unwrap_or_default())?;
    assert_eq!(metadata["site"], "lab");
    assert_eq!(metadata["Option:content-format"], "text/plain");
    assert_eq!(metadata["Option:uri"], json!(url));

    // A non-confirmable PUT under a path prefix, and a block-wise upload of 300 readings.
    let reply = coap_client(
        &[
            "-N",
            "-m",
            "put",
            &format!("coap://{}/my-path/i/{key}", engine.coap),
            "-f-",
        ],
        b"SN-002,meter,t,1",
    )?;
    assert_eq!(reply.code, "2.04", "{}", reply.output);
    let sn2 = device_id(&rest, "SN-002").await?;
    assert_eq!(latest(&rest, &sn2, "t").await?, json!(1.0));
    let big: String = std::iter::once("SN-003,default".to_owned())
        .chain((0..300).map(|i| format!("k{i},{i}")))
        .collect::<Vec<_>>()
        .join(",");
    assert!(big.len() > 2000, "several blocks of 64 bytes");
    let reply = coap_client(&["-m", "post", "-b", "64", &url, "-f-"], big.as_bytes())?;
    assert_eq!(reply.code, "2.04", "{}", reply.output);
    let sn3 = device_id(&rest, "SN-003").await?;
    assert_eq!(latest(&rest, &sn3, "k299").await?, json!(299.0));
    let keys = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{sn3}/keys/timeseries"
        ))
        .await?;
    assert_eq!(keys.as_array().map(Vec::len), Some(300));

    // The troubleshooting table's errors.
    let get = coap_client(&["-m", "get", &url], b"")?;
    assert_eq!(get.code, "4.05", "GET: {}", get.output);
    let unknown = coap_client(
        &[
            "-m",
            "post",
            &format!("coap://{}/i/no-such-key", engine.coap),
            "-f-",
        ],
        b"SN-9,default,t,1",
    )?;
    assert_eq!(unknown.code, "4.04", "unknown key: {}", unknown.output);
    let empty = coap_client(&["-m", "post", &url], b"")?;
    assert_eq!(empty.code, "4.00", "empty: {}", empty.output);
    let broken = coap_client(&["-m", "post", &url, "-f-"], b"garbage")?;
    assert_eq!(broken.code, "4.00", "{}", broken.output);
    assert!(
        broken.output.contains("converter error") && broken.output.contains("line"),
        "a converter error comes with the reason: {}",
        broken.output
    );
    let errors = events(&rest, "CONVERTER", &conv, "DEBUG_CONVERTER").await?;
    assert!(
        errors.iter().any(|e| e["body"]["error"]
            .as_str()
            .is_some_and(|m| m.contains("out of bounds"))),
        "the converter error is an event: {errors:?}"
    );

    // An integration that may not create devices refuses an unknown one, with an event.
    let (strict_id, strict_key) = integration(
        &rest,
        &json!({"name": "strict", "type": "COAP", "allowCreateDevicesOrAssets": false,
                "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let refused = coap_client(
        &[
            "-m",
            "post",
            &format!("coap://{}/i/{strict_key}", engine.coap),
            "-f-",
        ],
        b"SN-404,default,t,1",
    )?;
    assert_eq!(refused.code, "4.00", "{}", refused.output);
    assert!(
        refused.output.contains("may not create"),
        "{}",
        refused.output
    );
    let errors = events(&rest, "INTEGRATION", &strict_id, "ERROR").await?;
    assert!(
        errors[0]["body"]["error"]
            .as_str()
            .is_some_and(|m| m.contains("SN-404"))
    );
    let missing = rest
        .get("/api/tenant/devices?deviceName=SN-404")
        .send()
        .await?;
    assert_eq!(missing.status().as_u16(), 404);
    // ...while known devices are fine through it.
    let reply = coap_client(
        &[
            "-m",
            "post",
            &format!("coap://{}/i/{strict_key}", engine.coap),
            "-f-",
        ],
        b"SN-001,default,temperature,30",
    )?;
    assert_eq!(reply.code, "2.04", "{}", reply.output);
    rest.eventually(SETTLE, || async {
        let v = rest.latest(&sn1).await?;
        Ok((v["temperature"][0]["value"] == json!(30.0)).then_some(()))
    })
    .await
    .context("the known device's reading through the strict integration is stored")?;

    // Per-integration metrics.
    let metrics = rest.get("/metrics").send().await?.text().await?;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("engine_integration_messages_total")
                && l.contains("integration=\"CoAP integration\"")
        })
        .context("integration message counter")?;
    // SN-001, SN-002, SN-003 (one message of many blocks), the empty and the garbage one; the
    // GET never reached it.
    assert!(line.ends_with(" 5"), "five messages reached it: {line}");
    assert!(metrics.contains("engine_integration_conversion_seconds"));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("engine_integration_errors_total")
                && l.contains("reason=\"converter\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retransmissions_overload_and_http_integration_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A queue of one place, and storage held still (`store.test_pause_file`) until the test
    // lets it go: after one message the queue is full, whatever the machine's speed.
    let pause = dir.path().join("store-paused");
    std::fs::write(&pause, b"")?;
    let pause_file = pause.to_string_lossy().into_owned();
    let engine = Engine::start_with(
        &dir.path().join("data"),
        &[
            ("ENGINE_QUEUE__PARTITIONS", "1"),
            ("ENGINE_QUEUE__PARTITION_CAPACITY", "1"),
            ("ENGINE_STORE__TEST_PAUSE_FILE", &pause_file),
            ("ENGINE_INTEGRATIONS__QUEUE_WAIT", "200ms"),
        ],
    )?;
    let rest = engine.rest().await?;
    let conv = converter(&rest, "csv", "UPLINK", &script("coap-csv.rhai")?).await?;
    let (_, key) = integration(
        &rest,
        &json!({"name": "coap", "type": "COAP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let (_, http_key) = integration(
        &rest,
        &json!({"name": "http", "type": "HTTP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let client = RawClient::connect(engine.coap).await?;
    let path = format!("i/{key}");

    // A confirmable request and its retransmission (same message id): one answer, twice,
    // and one stored message.
    let first = request(true, RequestType::Post, &path, b"DUP,default,n,1", 0x1234)?;
    client.send(&first).await?;
    let answer = client
        .recv_raw(Duration::from_secs(10))
        .await?
        .context("first answer")?;
    client.send(&first).await?;
    let again = client
        .recv_raw(Duration::from_secs(10))
        .await?
        .context("answer to the retransmission")?;
    assert_eq!(answer, again, "the retransmission gets the same answer");
    let parsed = coap_lite::Packet::from_bytes(&answer).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(code(&parsed), "2.04");
    assert_eq!(parsed.header.message_id, 0x1234, "a piggybacked ACK");

    // The queue is now full: a new request waits 200 ms for room, then is told to come back.
    let busy = client
        .call(&request(
            true,
            RequestType::Post,
            &path,
            b"DUP,default,n,2",
            0x1235,
        )?)
        .await?;
    assert_eq!(code(&busy), "5.03");
    let max_age = busy
        .get_first_option(CoapOption::MaxAge)
        .context("5.03 carries Max-Age")?;
    assert_eq!(max_age.as_slice(), &[2]);
    let http = reqwest::Client::new();
    let url = engine.url(&format!("/api/v1/integrations/http/{http_key}"));
    let resp = http.post(&url).body("DUPH,default,n,3").send().await?;
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // Malformed input never takes the endpoint down: garbage, a ping, a bad option.
    client.send(&[0x40, 0x01]).await?;
    client.send(&[0x40, 0x00, 0x00, 0x07]).await?;
    let reset = client
        .recv(Duration::from_secs(10))
        .await?
        .context("ping answered")?;
    assert_eq!(reset.header.get_type(), coap_lite::MessageType::Reset);
    assert_eq!(reset.header.message_id, 7);

    // HTTP integration errors.
    let resp = http
        .post(engine.url("/api/v1/integrations/http/no-such-key"))
        .body("x")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 404);
    let resp = http.post(&url).send().await?;
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await?.contains("empty"));
    let resp = http.post(&url).body("garbage").send().await?;
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await?.contains("converter error"));

    // Nothing is stored while storage is held; once it goes on, exactly the one acknowledged
    // message is.
    let dup = device_id(&rest, "DUP").await?;
    let held = aggregate(&rest, &dup, "n", "COUNT").await?;
    assert!(held.as_i64().unwrap_or(0) == 0, "stored while held: {held}");
    std::fs::remove_file(&pause)?;
    let count = rest
        .eventually(SETTLE, || async {
            let c = aggregate(&rest, &dup, "n", "COUNT").await?;
            Ok((c == json!(1)).then_some(c))
        })
        .await?;
    assert_eq!(count, json!(1));
    // The queue has room again: the endpoint serves as before.
    let ok = client
        .call(&request(
            true,
            RequestType::Post,
            &path,
            b"DUP,default,n,4",
            0x1236,
        )?)
        .await?;
    assert_eq!(code(&ok), "2.04");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_integration_stores_headers_and_answers_with_the_pending_downlink() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let up = converter(
        &rest,
        "json",
        "UPLINK",
        r#"let data = decodeToJson(payload);
           #{deviceName: data.serialNumber, deviceType: "thermostat",
             attributes: #{model: data.model, site: metadata["x-site"], integration: metadata.integrationName},
             telemetry: #{temperature: data.temperature}}"#,
    )
    .await?;
    let down = converter(
        &rest,
        "freq",
        "DOWNLINK",
        r#"#{contentType: "JSON", data: JSON.stringify(#{freq: msg.uploadFrequency, kind: msgType}), metadata: #{}}"#,
    )
    .await?;
    let (_, key) = integration(
        &rest,
        &json!({"name": "HTTP integration", "type": "HTTP",
                "defaultConverterId": {"id": up}, "downlinkConverterId": {"id": down},
                "configuration": {"metadata": {"integrationName": "HTTP integration"}}}),
    )
    .await?;
    let http = reqwest::Client::new();
    let url = engine.url(&format!("/api/v1/integrations/http/{key}"));
    let send = |t: i64| {
        http.post(&url)
            .header("X-Site", "plant-7")
            .json(&json!({"serialNumber": "SN-111", "model": "Model A", "temperature": t}))
            .send()
    };
    let resp = send(42).await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await?, "", "no downlink pending yet");
    let id = device_id(&rest, "SN-111").await?;
    assert_eq!(latest(&rest, &id, "temperature").await?, json!(42));
    let attrs = rest
        .eventually(SETTLE, || async {
            let a = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/values/attributes/CLIENT_SCOPE"
                ))
                .await?;
            Ok((a.as_array().map(Vec::len) == Some(3)).then_some(a))
        })
        .await?;
    let value = |k: &str| {
        attrs
            .as_array()
            .and_then(|a| a.iter().find(|e| e["key"] == k))
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        value("site"),
        Some(json!("plant-7")),
        "request headers are metadata"
    );
    assert_eq!(value("integration"), Some(json!("HTTP integration")));
    assert_eq!(value("model"), Some(json!("Model A")));

    // A shared attribute update is a downlink; the device gets it with its next uplink.
    let resp = rest
        .post(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE"
        ))
        .json(&json!({"uploadFrequency": 30}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = send(43).await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let downlink: Value = resp.json().await?;
    assert_eq!(downlink, json!({"freq": 30, "kind": "ATTRIBUTES_UPDATED"}));
    let resp = send(44).await?;
    assert_eq!(resp.text().await?, "", "a downlink is delivered once");
    let shared = rest
        .eventually(SETTLE, || async {
            let a = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/values/attributes/SHARED_SCOPE"
                ))
                .await?;
            Ok((a[0]["value"] == json!(30)).then_some(a))
        })
        .await?;
    assert_eq!(
        shared[0]["key"], "uploadFrequency",
        "the shared attribute is stored too"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converter_changed_under_load_loses_nothing_and_integrations_survive_a_restart()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let version = |v: u32| {
        format!(
            r#"let n = parseInt(decodeToString(payload));
               #{{deviceName: "reloaded", telemetry: #{{ts: 1000000 + n, values: #{{n: n, version: {v}}}}}}}"#
        )
    };
    let conv = converter(&rest, "versioned", "UPLINK", &version(1)).await?;
    let (_, key) = integration(
        &rest,
        &json!({"name": "reload", "type": "COAP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    // Four senders of confirmable requests while the converter changes twice. Each message
    // has its own timestamp (points of a key with the same time overwrite each other). Each
    // change waits until the senders had more messages acknowledged since the last one, and the
    // senders stop only once messages were acknowledged after the last change: every version
    // runs, however slow the machine.
    const SENDERS: u16 = 4;
    /// Message ids per sender (each its own socket, so ids only need to differ per sender).
    const EACH: u32 = 10_000;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (addr, path) = (engine.coap, format!("i/{key}"));
        let (acked, stop) = (acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let client = RawClient::connect(addr).await?;
            for i in 0..EACH {
                if stop.load(Ordering::SeqCst) {
                    // Messages 0..i were sent and acknowledged.
                    return anyhow::Ok(u64::from(i));
                }
                let n = u32::from(s) * EACH + i;
                let id = u16::try_from(i)?;
                let answer = client
                    .call(&request(
                        true,
                        RequestType::Post,
                        &path,
                        n.to_string().as_bytes(),
                        id,
                    )?)
                    .await?;
                anyhow::ensure!(code(&answer) == "2.04", "message {n}: {}", code(&answer));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::bail!("sender {s} ran out of message ids before it was stopped")
        }));
    }
    let more_acked = |from: u64, by: u64| {
        let acked = acked.clone();
        async move {
            let deadline = std::time::Instant::now() + SETTLE;
            while acked.load(Ordering::SeqCst) < from + by {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the senders got no {by} acknowledgements within {SETTLE:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        }
    };
    more_acked(0, 50).await?;
    for v in [2, 3] {
        post_json(
            &rest,
            "/api/converter",
            &json!({"id": {"entityType": "CONVERTER", "id": conv}, "name": "versioned",
                    "type": "UPLINK", "configuration": {"tbelDecoder": version(v)}}),
        )
        .await?;
        more_acked(acked.load(Ordering::SeqCst), 50).await?;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for s in senders {
        total += s.await??;
    }
    let id = device_id(&rest, "reloaded").await?;
    rest.eventually(SETTLE, || async {
        let c = aggregate(&rest, &id, "n", "COUNT").await?;
        Ok((c == json!(total)).then_some(c))
    })
    .await
    .context("every acknowledged message stored")?;
    let (min, max) = (
        aggregate(&rest, &id, "version", "MIN").await?,
        aggregate(&rest, &id, "version", "MAX").await?,
    );
    assert_eq!(
        (min.as_f64(), max.as_f64()),
        (Some(1.0), Some(3.0)),
        "messages ran the first and the last version"
    );

    // Restart: the catalog is durable; the converter is the last version.
    engine.terminate()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let client = RawClient::connect(engine.coap).await?;
    let answer = client
        .call(&request(
            true,
            RequestType::Post,
            &format!("i/{key}"),
            // Later than every message above (n < SENDERS * EACH), so the latest value.
            b"99999",
            1,
        )?)
        .await?;
    assert_eq!(code(&answer), "2.04");
    rest.eventually(SETTLE, || async {
        let v = rest.latest(&id).await?;
        Ok((v["n"][0]["value"] == json!(99999)).then_some(v))
    })
    .await?;
    assert_eq!(latest(&rest, &id, "version").await?, json!(3));
    let list = rest.json("/api/integrations?pageSize=10&page=0").await?;
    assert_eq!(list["totalElements"], json!(1));
    let converters = rest
        .json("/api/converters?pageSize=10&page=0&converterType=UPLINK")
        .await?;
    assert_eq!(converters["data"][0]["name"], "versioned");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn integrations_declared_in_the_config_file_serve_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let decoder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/converters/coap-csv.rhai");
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[integrations.converter]]
name = "CoAP Uplink Converter"
type = "uplink"
script_file = "{}"

[[integrations.integration]]
name = "CoAP integration"
type = "coap"
routing_key = "declared-key"
uplink_converter = "CoAP Uplink Converter"
metadata = {{ site = "declared" }}
"#,
            decoder.display()
        ),
    )?;
    let data = dir.path().join("data");
    let config = config.to_string_lossy().into_owned();
    let engine = Engine::start_with(&data, &[("ENGINE_CONFIG", &config)])?;
    let rest = engine.rest().await?;
    let reply = coap_client(
        &[
            "-m",
            "post",
            &format!("coap://{}/i/declared-key", engine.coap),
            "-f-",
        ],
        b"SN-042,default,temperature,21.5",
    )?;
    assert_eq!(reply.code, "2.04", "{}", reply.output);
    let id = device_id(&rest, "SN-042").await?;
    assert_eq!(latest(&rest, &id, "temperature").await?, json!(21.5));
    let list = rest.json("/api/integrations?pageSize=10&page=0").await?;
    assert_eq!(list["data"][0]["routingKey"], "declared-key");
    assert_eq!(
        list["data"][0]["configuration"]["metadata"]["site"],
        "declared"
    );
    Ok(())
}

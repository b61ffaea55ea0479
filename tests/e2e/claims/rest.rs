//! The REST API: deleting converters and integrations (refused while in use, gone after, also
//! after a restart), `GET /api/integration/routingKey/{key}`, `SERVER_SCOPE` attribute writes,
//! and the time window and order of `/api/events`.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tests::{Engine, Rest};

use super::now_ms;
use crate::SETTLE;
use crate::integrations::{converter, integration};

async fn status(resp: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    let resp = resp.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn http_uplink(engine: &Engine, key: &str, body: &str) -> Result<u16> {
    Ok(reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/integrations/http/{key}")))
        .body(body.to_owned())
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn converters_and_integrations_are_found_by_key_and_deleted_for_good() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let conv = converter(
        &rest,
        "deletable",
        "UPLINK",
        "#{deviceName: \"DEL\", telemetry: #{t: 1}}",
    )
    .await?;
    let (id, key) = integration(
        &rest,
        &json!({"name": "deletable", "type": "HTTP", "routingKey": "del-key",
                "defaultConverterId": {"id": conv}}),
    )
    .await?;
    assert_eq!(key, "del-key");

    // Found by its routing key; an unknown key is 404.
    let found = rest.json("/api/integration/routingKey/del-key").await?;
    assert_eq!(found["id"]["id"], json!(id));
    assert_eq!(found["name"], "deletable");
    assert_eq!(found["type"], "HTTP");
    let (code, _) = status(rest.get("/api/integration/routingKey/no-such-key")).await?;
    assert_eq!(code, 404);
    assert_eq!(http_uplink(&engine, "del-key", "x").await?, 200);

    // A converter in use cannot be deleted, and stays.
    let (code, body) = status(rest.delete(&format!("/api/converter/{conv}"))).await?;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("used by the integration 'deletable'")),
        "{body}"
    );
    assert_eq!(
        rest.json(&format!("/api/converter/{conv}")).await?["name"],
        "deletable"
    );

    // Deleting the integration: gone by id, by key, from the list and from its endpoint.
    let (code, body) = status(rest.delete(&format!("/api/integration/{id}"))).await?;
    assert_eq!(code, 200, "{body}");
    let (code, _) = status(rest.get(&format!("/api/integration/{id}"))).await?;
    assert_eq!(code, 404);
    let (code, _) = status(rest.get("/api/integration/routingKey/del-key")).await?;
    assert_eq!(code, 404);
    let list = rest.json("/api/integrations?pageSize=10&page=0").await?;
    assert_eq!(list["totalElements"], json!(0), "{list}");
    assert_eq!(http_uplink(&engine, "del-key", "x").await?, 404);
    let (code, _) = status(rest.delete(&format!("/api/integration/{id}"))).await?;
    assert_eq!(code, 404, "deleted once");

    // Now the converter can go.
    let (code, body) = status(rest.delete(&format!("/api/converter/{conv}"))).await?;
    assert_eq!(code, 200, "{body}");
    let (code, _) = status(rest.get(&format!("/api/converter/{conv}"))).await?;
    assert_eq!(code, 404);
    let list = rest.json("/api/converters?pageSize=10&page=0").await?;
    assert_eq!(list["totalElements"], json!(0), "{list}");

    // Both stay deleted across a restart (the catalog is persisted).
    engine.terminate()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let (code, _) = status(rest.get(&format!("/api/converter/{conv}"))).await?;
    assert_eq!(code, 404);
    let (code, _) = status(rest.get(&format!("/api/integration/{id}"))).await?;
    assert_eq!(code, 404);
    assert_eq!(http_uplink(&engine, "del-key", "x").await?, 404);
    Ok(())
}

async fn attributes(rest: &Rest, device: &str, scope: &str) -> Result<Value> {
    rest.json(&format!(
        "/api/plugins/telemetry/DEVICE/{device}/values/attributes/{scope}"
    ))
    .await
}

/// The `key` entry of an attribute list.
fn entry<'a>(list: &'a Value, key: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|e| e["key"] == json!(key))
        .map(|e| &e["value"])
}

#[tokio::test(flavor = "multi_thread")]
async fn server_scope_attributes_are_written_and_read_back_in_their_scope() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let device = rest.create_device("scoped", "SCOPED").await?;
    // Both of ThingsBoard's paths.
    let (code, body) = status(
        rest.post(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/attributes/SERVER_SCOPE"
        ))
        .json(&json!({"serialNumber": "SN-7", "calibrated": true})),
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    let (code, body) = status(
        rest.post(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/SERVER_SCOPE"
        ))
        .json(&json!({"floor": 3})),
    )
    .await?;
    assert_eq!(code, 200, "{body}");

    let server = rest
        .eventually(SETTLE, || async {
            let list = attributes(&rest, &device, "SERVER_SCOPE").await?;
            Ok(entry(&list, "floor").is_some().then_some(list))
        })
        .await
        .context("server attributes stored")?;
    assert_eq!(entry(&server, "serialNumber"), Some(&json!("SN-7")));
    assert_eq!(entry(&server, "calibrated"), Some(&json!(true)));
    assert_eq!(entry(&server, "floor"), Some(&json!(3)));
    // In no other scope.
    for scope in ["CLIENT_SCOPE", "SHARED_SCOPE"] {
        let list = attributes(&rest, &device, scope).await?;
        ensure!(
            entry(&list, "serialNumber").is_none() && entry(&list, "floor").is_none(),
            "{scope}: {list}"
        );
    }
    let keys = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/keys/attributes/SERVER_SCOPE"
        ))
        .await?;
    let mut keys: Vec<&str> = keys
        .as_array()
        .context("key list")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["calibrated", "floor", "serialNumber"]);
    // The device's own scope is not the REST API's to write.
    let (code, body) = status(
        rest.post(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/attributes/CLIENT_SCOPE"
        ))
        .json(&json!({"x": 1})),
    )
    .await?;
    assert_eq!(code, 400, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_filtered_by_time_and_sorted_both_ways() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let conv = converter(
        &rest,
        "events",
        "UPLINK",
        "#{deviceName: \"EV\", telemetry: #{n: parseInt(decodeToString(payload))}}",
    )
    .await?;
    let (id, key) = integration(
        &rest,
        &json!({"name": "events", "type": "HTTP", "debugMode": true,
                "defaultConverterId": {"id": conv}}),
    )
    .await?;
    // Three uplinks, each event in its own millisecond.
    for n in 1..=3 {
        let sent = now_ms();
        assert_eq!(http_uplink(&engine, &key, &n.to_string()).await?, 200);
        while now_ms() <= sent + 1 {
            tokio::task::yield_now().await;
        }
    }
    let page = |query: String| {
        let rest = &rest;
        let id = &id;
        async move {
            let page = rest
                .json(&format!(
                    "/api/events/INTEGRATION/{id}/DEBUG_INTEGRATION?pageSize=100&page=0{query}"
                ))
                .await?;
            let events = page["data"].as_array().cloned().unwrap_or_default();
            anyhow::Ok(
                events
                    .iter()
                    .map(|e| {
                        (
                            e["createdTime"].as_i64().unwrap_or(0),
                            e["body"]["message"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    // Newest first by default; ASC reverses it.
    let all = page(String::new()).await?;
    let messages: Vec<&str> = all.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(messages, ["3", "2", "1"], "{all:?}");
    let ascending = page("&sortOrder=ASC".into()).await?;
    let messages: Vec<&str> = ascending.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(messages, ["1", "2", "3"], "{ascending:?}");
    let (t3, t2, t1) = (all[0].0, all[1].0, all[2].0);
    ensure!(t1 < t2 && t2 < t3, "{all:?}");

    // The window is inclusive at both ends.
    let only_second = page(format!("&startTime={t2}&endTime={t2}")).await?;
    assert_eq!(only_second, [(t2, "2".to_owned())]);
    let from_second = page(format!("&startTime={t2}")).await?;
    let messages: Vec<&str> = from_second.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(messages, ["3", "2"]);
    let until_second = page(format!("&endTime={t2}&sortOrder=ASC")).await?;
    let messages: Vec<&str> = until_second.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(messages, ["1", "2"]);
    let none = page(format!("&startTime={}", t3 + 1)).await?;
    assert!(none.is_empty(), "{none:?}");
    Ok(())
}

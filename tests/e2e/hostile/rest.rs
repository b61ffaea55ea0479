//! Hostile REST callers: reads that ask for the same key a hundred times, for too many keys,
//! points or buckets, ranges and pages at the ends of the integer types, heavy reads that would
//! hold every storage reader, and devices with names and tokens no one should be able to save.
//! Each case checks the answer (status and ThingsBoard's error shape) and that the engine keeps
//! serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tests::{Engine, Rest};

use super::still_serving;
use crate::SETTLE;

/// Longest wait for something that must happen; never a measure of speed.
const HANG: Duration = Duration::from_secs(120);

/// Posts `entries` (ThingsBoard's `[{"ts", "values"}]`) for the device with `token` in requests
/// under the device API's body limit.
async fn ingest(engine: &Engine, token: &str, entries: &[Value]) -> Result<()> {
    let http = reqwest::Client::new();
    let mut batch: Vec<&Value> = Vec::new();
    let mut size = 0;
    for entry in entries {
        let len = entry.to_string().len() + 1;
        if size + len > 60 * 1024 {
            post(&http, engine, token, &batch).await?;
            batch.clear();
            size = 0;
        }
        batch.push(entry);
        size += len;
    }
    post(&http, engine, token, &batch).await
}

async fn post(
    http: &reqwest::Client,
    engine: &Engine,
    token: &str,
    batch: &[&Value],
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let resp = http
        .post(engine.url(&format!("/api/v1/{token}/telemetry")))
        .json(&batch)
        .send()
        .await?;
    ensure!(resp.status() == 200, "ingest: {}", resp.status());
    Ok(())
}

/// `GET path`: the status and the JSON body.
async fn get(rest: &Rest, path: &str) -> Result<(u16, Value)> {
    let resp = rest.get(path).send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Checks a refusal is ThingsBoard's 400 error body with `errorCode` 31 or 30 and a message
/// that mentions `needle`.
fn refused(case: &str, status: u16, body: &Value, needle: &str) -> Result<()> {
    let shown: String = body.to_string().chars().take(300).collect();
    ensure!(status == 400, "{case}: {status} {shown}");
    ensure!(body["status"] == json!(400), "{case}: {shown}");
    ensure!(
        [json!(30), json!(31)].contains(&body["errorCode"]),
        "{case}: {shown}"
    );
    ensure!(body["timestamp"].is_i64(), "{case}: {shown}");
    let message = body["message"].as_str().unwrap_or_default();
    ensure!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "{case}: {message:?} should mention {needle:?}"
    );
    Ok(())
}

/// A device `series` (token `SERIES`) with `v` = 1..=10 at ts 1000..=10000 and `s` strings.
async fn engine_with_series(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<(Engine, Rest, String)> {
    let engine = Engine::start_with(dir, env)?;
    let rest = engine.rest().await?;
    let id = rest.create_device("series", "SERIES").await?;
    let points: Vec<Value> = (1..=10)
        .map(|i| json!({"ts": i * 1000, "values": {"v": i, "s": format!("n{i}")}}))
        .collect();
    ingest(&engine, "SERIES", &points).await?;
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(&id).await?;
        Ok((latest["v"][0]["value"] == json!(10)).then_some(()))
    })
    .await?;
    Ok((engine, rest, id))
}

/// `keys=v,v,…` is read once, and more distinct keys than `api.max_keys_per_request` (100)
/// are refused with a 400 that names the limit, on every read that takes `keys` (before: every
/// copy was read again, and any number of keys was accepted).
#[tokio::test(flavor = "multi_thread")]
async fn keys_are_deduplicated_and_capped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, rest, id) = engine_with_series(dir.path(), &[]).await?;
    let ts = format!("/api/plugins/telemetry/DEVICE/{id}/values/timeseries");
    let attributes = format!("/api/plugins/telemetry/DEVICE/{id}/values/attributes");

    let repeated = vec!["v"; 150].join(",");
    let once = get(&rest, &format!("{ts}?keys=v&startTs=0&endTs=100000")).await?;
    let many = get(
        &rest,
        &format!("{ts}?keys={repeated}&startTs=0&endTs=100000"),
    )
    .await?;
    ensure!(once.0 == 200 && many == once, "{many:?} vs {once:?}");
    let latest = get(&rest, &format!("{ts}?keys={repeated}")).await?;
    ensure!(latest.0 == 200, "{latest:?}");
    ensure!(
        latest.1.as_object().map(serde_json::Map::len) == Some(1),
        "{latest:?}"
    );

    let distinct: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let distinct = distinct.join(",");
    for path in [
        format!("{ts}?keys={distinct}&startTs=0&endTs=100000"),
        format!("{ts}?keys={distinct}"),
        format!("{attributes}?keys={distinct}"),
    ] {
        let (status, body) = get(&rest, &path).await?;
        refused(&path[..60.min(path.len())], status, &body, "100")?;
    }
    // Exactly the limit is fine.
    let hundred: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let (status, body) = get(
        &rest,
        &format!("{ts}?keys={}&startTs=0&endTs=100000", hundred.join(",")),
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    still_serving(&engine).await
}

/// `limit` defaults to 100 (ThingsBoard's default) and may not exceed
/// `api.max_points_per_response` (50 000), nor may keys × limit; a bad `limit` is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn points_per_response_are_capped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, rest, id) = engine_with_series(dir.path(), &[]).await?;
    let many: Vec<Value> = (0..150)
        .map(|i| json!({"ts": 100_000 + i, "values": {"w": i}}))
        .collect();
    ingest(&engine, "SERIES", &many).await?;
    let ts = format!("/api/plugins/telemetry/DEVICE/{id}/values/timeseries");
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(&id).await?;
        Ok((latest["w"][0]["value"] == json!(149)).then_some(()))
    })
    .await?;

    let (status, body) = get(&rest, &format!("{ts}?keys=w&startTs=0&endTs=1000000")).await?;
    ensure!(status == 200, "{body}");
    ensure!(
        body["w"].as_array().map(Vec::len) == Some(100),
        "default limit 100: {}",
        body["w"].as_array().map_or(0, Vec::len)
    );
    for (params, needle) in [
        ("keys=w&limit=50001", "50000"),
        ("keys=w,v&limit=30000", "50000"),
        ("keys=w&limit=0", "limit"),
        ("keys=w&limit=-1", "limit"),
        ("keys=w&limit=18446744073709551616", "limit"),
    ] {
        let (status, body) = get(&rest, &format!("{ts}?{params}&startTs=0&endTs=1000000")).await?;
        refused(params, status, &body, needle)?;
    }
    let (status, _) = get(
        &rest,
        &format!("{ts}?keys=w&limit=50000&startTs=0&endTs=1000000"),
    )
    .await?;
    ensure!(status == 200, "the limit itself is allowed");
    still_serving(&engine).await
}

/// An aggregation may make at most `api.max_intervals` (700, ThingsBoard's
/// `database.ts_max_intervals`) buckets per key; more is a 400 with ThingsBoard's message
/// (before: a 1 ms interval over a long range made a million buckets).
#[tokio::test(flavor = "multi_thread")]
async fn aggregation_intervals_are_capped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, rest, id) = engine_with_series(dir.path(), &[]).await?;
    let ts = format!("/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=v&agg=SUM");
    for (params, ok) in [
        ("startTs=0&endTs=700000&interval=1000", true),
        ("startTs=0&endTs=700001&interval=1000", false),
        ("startTs=0&endTs=100000000&interval=1", false),
        ("startTs=0&endTs=9223372036854775807&interval=1000", false),
    ] {
        let (status, body) = get(&rest, &format!("{ts}&{params}")).await?;
        if ok {
            ensure!(status == 200, "{params}: {status} {body}");
        } else {
            refused(params, status, &body, "intervals")?;
        }
    }
    still_serving(&engine).await
}

/// Time arithmetic at the ends of i64 answers 400 with a clear message or a correct result,
/// never 500 (before: `startTs` = i64::MIN with an aggregation answered 500, and a huge
/// interval overflowed the bucket's end).
#[tokio::test(flavor = "multi_thread")]
async fn ranges_at_the_ends_of_i64_never_fail() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, rest, id) = engine_with_series(dir.path(), &[]).await?;
    let ts = format!("/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=v");
    let (min, max) = (i64::MIN, i64::MAX);
    // Raw reads over the whole i64 range are fine.
    let (status, body) = get(
        &rest,
        &format!("{ts}&startTs={min}&endTs={max}&orderBy=ASC&useStrictDataTypes=true"),
    )
    .await?;
    ensure!(status == 200, "{body}");
    ensure!(body["v"][0] == json!({"ts": 1000, "value": 1}), "{body}");
    // One bucket as wide as i64 allows, starting after 0: its end is past i64::MAX.
    let (status, body) = get(
        &rest,
        &format!("{ts}&startTs=1&endTs=100000&agg=SUM&interval={max}&useStrictDataTypes=true"),
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(body == json!({"v": [{"ts": 50000, "value": 55}]}), "{body}");
    for params in [
        format!("startTs={min}&endTs=100000&agg=AVG&interval=1000"),
        format!("startTs={min}&endTs=100000&agg=COUNT"),
        format!("startTs={min}&endTs={max}&agg=MAX&interval={max}"),
    ] {
        let (status, body) = get(&rest, &format!("{ts}&{params}")).await?;
        ensure!(status == 400, "{params}: {status} {body}");
        refused(&params, status, &body, "range")?;
    }
    let (status, body) = get(&rest, &format!("{ts}&startTs={max}&endTs={min}")).await?;
    refused("reversed", status, &body, "endTs")?;
    // A SUM past i64::MAX is a DOUBLE, not an error (SQLite's SUM refuses to overflow).
    let big = [
        json!({"ts": 20_000, "values": {"big": max}}),
        json!({"ts": 20_001, "values": {"big": max}}),
    ];
    ingest(&engine, "SERIES", &big).await?;
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(&id).await?;
        Ok((latest["big"][0]["ts"] == json!(20_001)).then_some(()))
    })
    .await?;
    let (status, body) = get(
        &rest,
        &format!("/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=big&startTs=0&endTs=100000&agg=SUM&useStrictDataTypes=true"),
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(
        body["big"][0]["value"].as_f64().is_some_and(|v| v > 1.8e19),
        "{body}"
    );
    let (status, body) = get(&rest, &format!("{ts}&startTs=9223372036854775808")).await?;
    refused("past i64", status, &body, "startTs")?;
    still_serving(&engine).await
}

/// `page=2^64-1` is a page past the end: empty, `hasNext: false` (before: page + 1 wrapped and
/// said there was a next page), on every paged list.
#[tokio::test(flavor = "multi_thread")]
async fn pages_at_the_end_of_usize() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, rest, _) = engine_with_series(dir.path(), &[]).await?;
    let last = u64::MAX;
    for list in [
        "/api/tenant/devices",
        "/api/converters",
        "/api/integrations",
    ] {
        for query in [
            format!("pageSize=10&page={last}"),
            format!("pageSize={last}&page={last}"),
        ] {
            let (status, body) = get(&rest, &format!("{list}?{query}")).await?;
            ensure!(status == 200, "{list}?{query}: {status} {body}");
            ensure!(body["hasNext"] == json!(false), "{list}?{query}: {body}");
            ensure!(body["data"] == json!([]), "{list}?{query}: {body}");
        }
        let (status, body) = get(&rest, &format!("{list}?pageSize=10&page=-1")).await?;
        refused(list, status, &body, "")?;
    }
    still_serving(&engine).await
}

/// Device names, types, labels and access tokens are checked before anything is saved: a
/// 1.5 MB name, control characters (a newline and an ANSI escape would forge a log line), a
/// one-character or spaced token are each a 400 (errorCode 31), and none is created.
#[tokio::test(flavor = "multi_thread")]
async fn device_names_and_tokens_are_validated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let long = "n".repeat(256);
    let huge = "n".repeat(1_500_000);
    let cases: Vec<(String, Value, &str)> = vec![
        (String::new(), json!({"name": huge}), "longer than 255"),
        (String::new(), json!({"name": long}), "longer than 255"),
        (String::new(), json!({"name": "two\nlines"}), "control"),
        (
            String::new(),
            json!({"name": "x\u{1b}[31m ERROR forged"}),
            "control",
        ),
        (String::new(), json!({"name": "   "}), "name"),
        (
            String::new(),
            json!({"name": "ok", "type": "t\u{7}"}),
            "type",
        ),
        (String::new(), json!({"name": "ok", "type": long}), "type"),
        (String::new(), json!({"name": "ok", "label": long}), "label"),
        (
            String::new(),
            json!({"name": "ok", "label": "a\rb"}),
            "label",
        ),
        ("?accessToken=x".into(), json!({"name": "ok"}), "token"),
        ("?accessToken=a%20b".into(), json!({"name": "ok"}), "token"),
        (
            format!("?accessToken={}", "t".repeat(257)),
            json!({"name": "ok"}),
            "token",
        ),
    ];
    for (query, body, needle) in &cases {
        let resp = rest
            .post(&format!("/api/device{query}"))
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await?;
        let case = format!(
            "{query} {}",
            &body.to_string()[..40.min(body.to_string().len())]
        );
        refused(&case, status, &answer, needle)?;
        ensure!(
            answer["errorCode"] == json!(31),
            "{case}: {}",
            answer["message"]
        );
    }
    let page = rest.json("/api/tenant/devices?pageSize=100&page=0").await?;
    ensure!(page["totalElements"] == json!(0), "nothing created: {page}");

    // The limits themselves are fine.
    let name = "n".repeat(255);
    let token = "t".repeat(256);
    let resp = rest
        .post(&format!("/api/device?accessToken={token}"))
        .json(&json!({"name": name, "type": "t".repeat(255), "label": "l".repeat(255)}))
        .send()
        .await?;
    ensure!(resp.status() == 200, "limits: {}", resp.status());
    let device: Value = resp.json().await?;
    let id = device["id"]["id"].as_str().context("id")?;

    for credentials in ["x", "a b", "tab\there"] {
        let resp = rest
            .post("/api/device/credentials")
            .json(&json!({"deviceId": {"entityType": "DEVICE", "id": id}, "credentialsType": "ACCESS_TOKEN", "credentialsId": credentials}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await?;
        refused(credentials, status, &answer, "token")?;
    }
    let creds = rest.json(&format!("/api/device/{id}/credentials")).await?;
    ensure!(creds["credentialsId"] == json!(token), "token unchanged");
    still_serving(&engine).await
}

/// Ten keys × 20 000 points for heavy aggregations.
async fn engine_with_heavy_series(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<(Engine, Rest, String)> {
    let engine = Engine::start_with(dir, env)?;
    let rest = engine.rest().await?;
    let id = rest.create_device("heavy", "HEAVY").await?;
    let entries: Vec<Value> = (0..20_000)
        .map(|i| {
            json!({"ts": 1_000_000 + i, "values": {
                "a": i, "b": i, "c": i, "d": i, "e": i, "f": i, "g": i, "h": i, "i": i, "j": i
            }})
        })
        .collect();
    ingest(&engine, "HEAVY", &entries).await?;
    rest.eventually(HANG, || async {
        let latest = rest.latest(&id).await?;
        Ok((latest["j"][0]["value"] == json!(19_999)).then_some(()))
    })
    .await?;
    Ok((engine, rest, id))
}

const HEAVY_KEYS: &str = "a,b,c,d,e,f,g,h,i,j";

/// Heavy range reads cannot take every storage reader: with eight of them running, a cheap read
/// (latest values) completes before any of them does (before: four heavy reads held all four
/// SQLite readers and every other read waited behind them).
#[tokio::test(flavor = "multi_thread")]
async fn heavy_reads_do_not_starve_other_reads() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, rest, id) = engine_with_heavy_series(dir.path(), &[]).await?;
    let rest = Arc::new(rest);
    let heavy = format!(
        "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys={HEAVY_KEYS}&startTs=0&endTs=100000000&agg=AVG&interval=0&useStrictDataTypes=true"
    );
    let finished = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (rest, heavy, finished) = (rest.clone(), heavy.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let answer = get(&rest, &heavy).await;
            finished.fetch_add(1, Ordering::SeqCst);
            answer
        }));
    }
    // Wait until the storage reports heavy reads running, then ask for something cheap.
    rest.eventually(HANG, || async {
        let exposition = reqwest::get(engine.url("/metrics")).await?.text().await?;
        Ok(crate::mqtt_device_api::metric_at_least(
            &exposition,
            r#"engine_store_reads_running{kind="heavy"}"#,
            1.0,
        )
        .then_some(()))
    })
    .await?;
    let latest = rest.latest(&id).await?;
    let done_meanwhile = finished.load(Ordering::SeqCst);
    ensure!(latest["a"][0]["value"] == json!(19_999), "{latest}");
    ensure!(
        done_meanwhile == 0,
        "the cheap read waited for {done_meanwhile} heavy reads to finish"
    );
    for task in tasks {
        let (status, body) = task.await??;
        ensure!(status == 200, "heavy read: {status} {body}");
        ensure!(body["a"][0]["value"] == json!(9999.5), "{body}");
    }
    still_serving(&engine).await
}

/// A range read that runs past `api.query_timeout` is stopped and answered 400 naming the
/// budget; cheap reads are not subject to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_past_its_time_budget_is_stopped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, rest, id) =
        engine_with_heavy_series(dir.path(), &[("ENGINE_API__QUERY_TIMEOUT", "1ms")]).await?;
    let heavy = format!(
        "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys={HEAVY_KEYS}&startTs=0&endTs=100000000&agg=AVG&interval=0"
    );
    let (status, body) = get(&rest, &heavy).await?;
    refused("over budget", status, &body, "time")?;
    let latest = rest.latest(&id).await?;
    ensure!(latest["a"][0]["value"] == json!(19_999), "{latest}");
    let exposition = reqwest::get(engine.url("/metrics")).await?.text().await?;
    ensure!(
        crate::mqtt_device_api::metric_at_least(
            &exposition,
            r#"engine_api_requests_refused_total{reason="time_budget"}"#,
            1.0
        ),
        "refusal counted"
    );
    still_serving(&engine).await
}

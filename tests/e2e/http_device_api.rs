//! ThingsBoard's HTTP device API: `POST /api/v1/{token}/telemetry` and `/attributes`.

use anyhow::Result;
use serde_json::json;
use tests::Engine;

use crate::SETTLE;

#[tokio::test(flavor = "multi_thread")]
async fn uploads_answers_and_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("http-device", "HTTP_TOKEN").await?;
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str| {
        http.post(engine.url(path))
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
    };

    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "/api/v1/HTTP_TOKEN/telemetry",
            r#"{"temperature":21.5,"count":3}"#,
            200,
            "",
        ),
        (
            "/api/v1/HTTP_TOKEN/telemetry",
            r#"[{"ts":1000,"values":{"series":1}},{"ts":2000,"values":{"series":2}}]"#,
            200,
            "",
        ),
        (
            "/api/v1/HTTP_TOKEN/attributes",
            r#"{"firmware":"1.2.3","active":true}"#,
            200,
            "",
        ),
        (
            "/api/v1/NOPE/telemetry",
            r#"{"a":1}"#,
            401,
            "unknown access token",
        ),
        (
            "/api/v1/HTTP_TOKEN/telemetry",
            "{broken",
            400,
            "not valid JSON",
        ),
        ("/api/v1/HTTP_TOKEN/telemetry", r#"{"a":null}"#, 400, "null"),
        (
            "/api/v1/HTTP_TOKEN/attributes",
            r#"[{"a":1}]"#,
            400,
            "expected object",
        ),
    ];
    for (path, body, status, reason) in cases {
        let resp = post(path, body).await?;
        let got = resp.status().as_u16();
        let text = resp.text().await?;
        assert_eq!(got, *status, "{path} {body}: {text}");
        assert!(
            text.contains(reason),
            "{path} {body}: {text:?} should mention {reason:?}"
        );
    }
    let too_big = format!(r#"{{"x":"{}"}}"#, "y".repeat(70 * 1024));
    assert_eq!(
        post("/api/v1/HTTP_TOKEN/telemetry", &too_big)
            .await?
            .status()
            .as_u16(),
        413
    );

    let latest = rest
        .eventually(SETTLE, || async {
            let latest = rest.latest(&id).await?;
            Ok(latest.get("count").is_some().then_some(latest))
        })
        .await?;
    assert_eq!(latest["temperature"][0]["value"], json!(21.5));
    assert_eq!(latest["count"][0]["value"], json!(3));
    // Each upload was acknowledged once queued; each may be stored in a later batch than the
    // one before it, so each is waited for.
    let series = rest
        .eventually(SETTLE, || async {
            let series = rest
                .json(&format!("/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=series&startTs=0&endTs=10000&orderBy=ASC&useStrictDataTypes=true"))
                .await?;
            let points = series["series"].as_array().map_or(0, Vec::len);
            Ok((points >= 2).then_some(series))
        })
        .await?;
    assert_eq!(
        series,
        json!({"series": [{"ts": 1000, "value": 1}, {"ts": 2000, "value": 2}]})
    );
    let attrs = rest
        .eventually(SETTLE, || async {
            let attrs = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/values/attributes/CLIENT_SCOPE?keys=firmware"
                ))
                .await?;
            Ok(attrs.as_array().is_some_and(|a| !a.is_empty()).then_some(attrs))
        })
        .await?;
    assert_eq!(attrs[0]["value"], json!("1.2.3"));
    Ok(())
}

/// `POST /api/v1/{token}/claim`: a device asks to be claimed (the app side of claiming comes
/// later); every refusal is a clear 4xx and the node keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn claim_requests_are_taken_and_bad_ones_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    rest.create_device("claimable", "CLAIM_TOKEN").await?;
    let http = reqwest::Client::new();
    let long_secret = format!(r#"{{"secretKey":"{}"}}"#, "s".repeat(300));
    let too_big = format!(r#"{{"secretKey":"{}"}}"#, "s".repeat(70 * 1024));
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "/api/v1/CLAIM_TOKEN/claim",
            r#"{"secretKey":"abc","durationMs":60000}"#.into(),
            200,
        ),
        // A second request while the first stands: still 200 (ThingsBoard tells the device
        // nothing), the first one is kept.
        (
            "/api/v1/CLAIM_TOKEN/claim",
            r#"{"secretKey":"other"}"#.into(),
            200,
        ),
        ("/api/v1/CLAIM_TOKEN/claim", String::new(), 200),
        ("/api/v1/CLAIM_TOKEN/claim", "{}".into(), 200),
        ("/api/v1/NOPE/claim", r#"{"secretKey":"abc"}"#.into(), 401),
        ("/api/v1/CLAIM_TOKEN/claim", "{broken".into(), 400),
        ("/api/v1/CLAIM_TOKEN/claim", r#""abc""#.into(), 400),
        (
            "/api/v1/CLAIM_TOKEN/claim",
            r#"{"secretKey":5}"#.into(),
            400,
        ),
        ("/api/v1/CLAIM_TOKEN/claim", long_secret, 400),
        ("/api/v1/CLAIM_TOKEN/claim", too_big, 413),
    ];
    for (path, body, status) in cases {
        let resp = http
            .post(engine.url(path))
            .body(body.clone())
            .send()
            .await?;
        let got = resp.status().as_u16();
        let text = resp.text().await?;
        assert_eq!(
            got,
            status,
            "{path} {}: {text}",
            &body[..body.len().min(60)]
        );
    }
    // The node still takes data.
    let resp = http
        .post(engine.url("/api/v1/CLAIM_TOKEN/telemetry"))
        .body(r#"{"t":1}"#)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    Ok(())
}

/// `GET /api/v1/{token}/attributes`: ThingsBoard's answer shape and key selection.
#[tokio::test(flavor = "multi_thread")]
async fn attribute_requests_answer_as_thingsboard() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("attr-device", "ATTR_TOKEN").await?;
    let http = reqwest::Client::new();
    let resp = http
        .post(engine.url("/api/v1/ATTR_TOKEN/attributes"))
        .body(r#"{"fw":"v1.2","battery":80,"ratio":0.5}"#)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = rest
        .post(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE"
        ))
        .json(&json!({"interval": 30, "mode": "eco", "cfg": {"a": [1, 2]}}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let get = |query: &str| {
        let url = engine.url(&format!("/api/v1/ATTR_TOKEN/attributes{query}"));
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await?;
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await?;
            anyhow::Ok((status, body))
        }
    };
    let everything = json!({
        "client": {"fw": "v1.2", "battery": 80, "ratio": 0.5},
        "shared": {"interval": 30, "mode": "eco", "cfg": {"a": [1, 2]}},
    });
    // Both writes are stored in batches: wait until the full answer shows.
    rest.eventually(std::time::Duration::from_secs(20), || async {
        let (_, body) = get("").await?;
        Ok((body == everything).then_some(()))
    })
    .await?;
    let cases = [
        (
            "?sharedKeys=interval,nope",
            json!({"shared": {"interval": 30}}),
        ),
        ("?clientKeys=fw", json!({"client": {"fw": "v1.2"}})),
        (
            "?clientKeys=battery&sharedKeys=mode",
            json!({"client": {"battery": 80}, "shared": {"mode": "eco"}}),
        ),
        ("?sharedKeys=nope", json!({})),
        // Unknown parameters (the Python SDK's snake case) are ignored: everything.
        ("?client_keys=fw", everything.clone()),
    ];
    for (query, expected) in cases {
        assert_eq!(get(query).await?, (200, expected), "{query}");
    }
    let unknown = http
        .get(engine.url("/api/v1/NOPE/attributes"))
        .send()
        .await?;
    assert_eq!(unknown.status().as_u16(), 401);
    Ok(())
}

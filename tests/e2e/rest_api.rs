//! The REST API: authentication, devices, and telemetry queries, in ThingsBoard's shapes.

use anyhow::Result;
use rumqttc::ConnectReturnCode;
use serde_json::{Value, json};
use tests::Engine;
use tests::mqtt::connect_v3;

use crate::SETTLE;

#[tokio::test(flavor = "multi_thread")]
async fn authentication() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let http = reqwest::Client::new();
    let login = |user: &str, pass: &str| {
        http.post(engine.url("/api/auth/login"))
            .json(&json!({"username": user, "password": pass}))
            .send()
    };

    let wrong = login("tenant@thingsboard.org", "wrong").await?;
    assert_eq!(wrong.status().as_u16(), 401);
    let body: Value = wrong.json().await?;
    assert_eq!(body["errorCode"], json!(10));
    assert_eq!(body["status"], json!(401));

    let pair: Value = login("tenant@thingsboard.org", "tenant")
        .await?
        .json()
        .await?;
    let token = pair["token"].as_str().unwrap_or_default().to_owned();
    let refresh = pair["refreshToken"].as_str().unwrap_or_default().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let cases: &[(Option<String>, u16)] = &[
        (None, 401),
        (Some("Bearer not-a-jwt".into()), 401),
        (Some(format!("Bearer {refresh}")), 401),
        (Some(format!("Bearer {token}")), 200),
    ];
    for (header, status) in cases {
        let mut req = http.get(engine.url("/api/tenant/devices?pageSize=10&page=0"));
        if let Some(h) = header {
            req = req.header("X-Authorization", h);
        }
        let resp = req.send().await?;
        assert_eq!(resp.status().as_u16(), *status, "{header:?}");
        if *status == 401 {
            let body: Value = resp.json().await?;
            assert_eq!(body["status"], json!(401));
            assert!(body["message"].is_string());
        }
    }

    let renewed = http
        .post(engine.url("/api/auth/token"))
        .json(&json!({"refreshToken": refresh}))
        .send()
        .await?;
    assert_eq!(renewed.status().as_u16(), 200);
    let renewed: Value = renewed.json().await?;
    let user = http
        .get(engine.url("/api/auth/user"))
        .header(
            "X-Authorization",
            format!("Bearer {}", renewed["token"].as_str().unwrap_or_default()),
        )
        .send()
        .await?;
    let user: Value = user.json().await?;
    assert_eq!(user["email"], json!("tenant@thingsboard.org"));
    assert_eq!(user["authority"], json!("TENANT_ADMIN"));
    Ok(())
}

/// `POST /api/auth/logout` ends the caller's session: its access and refresh tokens stop
/// working, also after a restart; other sessions keep theirs.
#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_session() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(dir.path())?;
    let http = reqwest::Client::new();
    let login = || async {
        let pair: Value = http
            .post(engine.url("/api/auth/login"))
            .json(&json!({"username": "tenant@thingsboard.org", "password": "tenant"}))
            .send()
            .await?
            .json()
            .await?;
        let field = |f: &str| pair[f].as_str().unwrap_or_default().to_owned();
        anyhow::Ok((field("token"), field("refreshToken")))
    };
    let (token, refresh) = login().await?;
    let (other, _) = login().await?;
    let user = |engine: &Engine, token: &str| {
        http.get(engine.url("/api/auth/user"))
            .header("X-Authorization", format!("Bearer {token}"))
            .send()
    };

    let anonymous = http.post(engine.url("/api/auth/logout")).send().await?;
    assert_eq!(anonymous.status().as_u16(), 401);
    let logout = http
        .post(engine.url("/api/auth/logout"))
        .header("X-Authorization", format!("Bearer {token}"))
        .send()
        .await?;
    assert_eq!(logout.status().as_u16(), 200);

    let check = |engine: &Engine| {
        let (token, refresh, other) = (token.clone(), refresh.clone(), other.clone());
        let (http, user_url, token_url) = (
            http.clone(),
            engine.url("/api/auth/user"),
            engine.url("/api/auth/token"),
        );
        async move {
            let revoked = http
                .get(&user_url)
                .header("X-Authorization", format!("Bearer {token}"))
                .send()
                .await?;
            assert_eq!(revoked.status().as_u16(), 401);
            let body: Value = revoked.json().await?;
            assert_eq!(body["status"], json!(401));
            assert_eq!(body["errorCode"], json!(11), "{body}");
            let renewed = http
                .post(&token_url)
                .json(&json!({"refreshToken": refresh}))
                .send()
                .await?;
            assert_eq!(renewed.status().as_u16(), 401);
            let still = http
                .get(&user_url)
                .header("X-Authorization", format!("Bearer {other}"))
                .send()
                .await?;
            assert_eq!(still.status().as_u16(), 200, "another session is kept");
            anyhow::Ok(())
        }
    };
    check(&engine).await?;
    assert_eq!(user(&engine, &other).await?.status().as_u16(), 200);
    engine.terminate()?;
    let engine = Engine::start(dir.path())?;
    check(&engine).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn devices() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;

    let created: Value = rest
        .post("/api/device?accessToken=TOKEN_ONE")
        .json(&json!({"name": "Device One", "type": "sensor", "label": "roof"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(created["id"]["entityType"], json!("DEVICE"));
    assert_eq!(created["name"], json!("Device One"));
    assert_eq!(created["type"], json!("sensor"));
    let id = created["id"]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id.chars().nth(14), Some('5'), "a UUIDv5: {id}");

    // Same name in the same tenant: the same id, so any node derives it; creating twice is refused.
    let again = rest
        .post("/api/device")
        .json(&json!({"name": "Device One"}))
        .send()
        .await?;
    assert_eq!(again.status().as_u16(), 400);
    let dup = rest
        .post("/api/device?accessToken=TOKEN_ONE")
        .json(&json!({"name": "Device Two"}))
        .send()
        .await?;
    assert_eq!(dup.status().as_u16(), 400);
    let body: Value = dup.json().await?;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("access token"),
        "{body}"
    );
    let nameless = rest
        .post("/api/device")
        .json(&json!({"type": "x"}))
        .send()
        .await?;
    assert_eq!(nameless.status().as_u16(), 400);

    // A generated token when none is given.
    let auto: Value = rest
        .post("/api/device")
        .json(&json!({"name": "Device Auto"}))
        .send()
        .await?
        .json()
        .await?;
    let auto_id = auto["id"]["id"].as_str().unwrap_or_default().to_owned();
    let creds = rest
        .json(&format!("/api/device/{auto_id}/credentials"))
        .await?;
    assert_eq!(creds["credentialsType"], json!("ACCESS_TOKEN"));
    assert_eq!(creds["credentialsId"].as_str().map(str::len), Some(20));
    let creds = rest.json(&format!("/api/device/{id}/credentials")).await?;
    assert_eq!(creds["credentialsId"], json!("TOKEN_ONE"));

    assert_eq!(
        rest.json(&format!("/api/device/{id}")).await?["label"],
        json!("roof")
    );
    let by_name = rest
        .json("/api/tenant/devices?deviceName=Device%20One")
        .await?;
    assert_eq!(by_name["id"]["id"], json!(id));
    let missing = rest
        .get("/api/tenant/devices?deviceName=Nobody")
        .send()
        .await?;
    assert_eq!(missing.status().as_u16(), 404);
    let bad_id = rest.get("/api/device/not-a-uuid").send().await?;
    assert_eq!(bad_id.status().as_u16(), 400);

    rest.create_device("Device Three", "TOKEN_THREE").await?;
    let page = rest.json("/api/tenant/devices?pageSize=2&page=0").await?;
    assert_eq!(page["totalElements"], json!(3));
    assert_eq!(page["totalPages"], json!(2));
    assert_eq!(page["hasNext"], json!(true));
    let names: Vec<&str> = page["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["Device Auto", "Device One"]);
    let last = rest.json("/api/tenant/devices?pageSize=2&page=1").await?;
    assert_eq!(last["hasNext"], json!(false));
    let searched = rest
        .json("/api/tenant/devices?pageSize=10&page=0&textSearch=device%20t")
        .await?;
    assert_eq!(searched["totalElements"], json!(1));
    assert_eq!(
        rest.get("/api/tenant/devices")
            .send()
            .await?
            .status()
            .as_u16(),
        400
    );

    // Update by id keeps id and token.
    let updated: Value = rest
        .post("/api/device")
        .json(&json!({"id": {"entityType": "DEVICE", "id": id}, "name": "Device Renamed", "type": "sensor"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(updated["id"]["id"], json!(id));
    assert_eq!(updated["name"], json!("Device Renamed"));
    assert!(connect_v3(&engine, "TOKEN_ONE", "one").await.is_ok());

    // A new token through the credentials endpoint.
    let changed = rest
        .post("/api/device/credentials")
        .json(&json!({"deviceId": {"entityType": "DEVICE", "id": id}, "credentialsType": "ACCESS_TOKEN", "credentialsId": "TOKEN_NEW"}))
        .send()
        .await?;
    assert_eq!(changed.status().as_u16(), 200);
    // Refused with CONNACK 5 (not authorized), as an unknown token is; not a timeout or a
    // dropped connection.
    assert_eq!(
        connect_v3(&engine, "TOKEN_ONE", "one").await.err(),
        Some(ConnectReturnCode::NotAuthorized),
        "the old token"
    );
    assert!(connect_v3(&engine, "TOKEN_NEW", "one").await.is_ok());

    // Delete: gone for REST and for MQTT.
    assert_eq!(
        rest.delete(&format!("/api/device/{id}"))
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        rest.get(&format!("/api/device/{id}"))
            .send()
            .await?
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        connect_v3(&engine, "TOKEN_NEW", "one").await.err(),
        Some(ConnectReturnCode::NotAuthorized),
        "the deleted device's token"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_queries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("series", "SERIES").await?;
    // Ten points of "v" = 1..=10 at ts 1000, 2000, ..., 10000, and a string key.
    let points: Vec<Value> = (1..=10)
        .map(|i| json!({"ts": i * 1000, "values": {"v": i, "s": format!("n{i}")}}))
        .collect();
    let resp = reqwest::Client::new()
        .post(engine.url("/api/v1/SERIES/telemetry"))
        .json(&points)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let base = format!("/api/plugins/telemetry/DEVICE/{id}/values/timeseries");
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(&id).await?;
        Ok((latest["v"][0]["value"] == json!(10)).then_some(()))
    })
    .await?;

    let q = |params: &str| {
        format!("{base}?keys=v&startTs=0&endTs=100000&useStrictDataTypes=true&{params}")
    };
    let series = |v: &Value| -> Vec<(i64, Value)> {
        v["v"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| (p["ts"].as_i64().unwrap_or(-1), p["value"].clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cases: &[(&str, Vec<(i64, Value)>)] = &[
        (
            "limit=3",
            vec![(10000, json!(10)), (9000, json!(9)), (8000, json!(8))],
        ),
        (
            "limit=2&orderBy=ASC",
            vec![(1000, json!(1)), (2000, json!(2))],
        ),
        ("agg=SUM&interval=100000", vec![(50000, json!(55))]),
        ("agg=COUNT&interval=100000", vec![(50000, json!(10))]),
        (
            "agg=AVG&interval=5000&orderBy=ASC",
            vec![(2500, json!(2.5)), (7500, json!(7.0)), (12500, json!(10.0))],
        ),
        (
            "agg=MAX&interval=5000&orderBy=ASC",
            vec![(2500, json!(4)), (7500, json!(9)), (12500, json!(10))],
        ),
        ("agg=MIN&interval=100000", vec![(50000, json!(1))]),
    ];
    for (params, want) in cases {
        let got = rest.json(&q(params)).await?;
        assert_eq!(&series(&got), want, "{params}");
    }
    // Range end is exclusive.
    let got = rest
        .json(&format!(
            "{base}?keys=v&startTs=1000&endTs=3000&orderBy=ASC"
        ))
        .await?;
    assert_eq!(
        got,
        json!({"v": [{"ts": 1000, "value": "1"}, {"ts": 2000, "value": "2"}]})
    );
    // A missing key in a latest query has no value.
    let latest = rest.json(&format!("{base}?keys=v,absent")).await?;
    assert_eq!(latest["absent"][0]["value"], Value::Null);
    assert_eq!(latest["v"][0]["value"], json!("10"));

    for bad in ["agg=MEDIAN", "orderBy=UP", "interval=-5"] {
        let resp = rest.get(&q(bad)).send().await?;
        assert_eq!(resp.status().as_u16(), 400, "{bad}");
        let body: Value = resp.json().await?;
        assert_eq!(body["status"], json!(400), "{bad}");
    }
    let other_type = rest
        .get(&format!(
            "/api/plugins/telemetry/ASSET/{id}/values/timeseries"
        ))
        .send()
        .await?;
    assert_eq!(other_type.status().as_u16(), 400);
    let bad_scope = rest
        .get(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/values/attributes/NO_SCOPE"
        ))
        .send()
        .await?;
    assert_eq!(bad_scope.status().as_u16(), 400);
    let unknown = rest
        .get("/api/plugins/telemetry/DEVICE/6b1f4e3a-9c55-4d0e-8f2a-5e0c7d41a9b3/values/timeseries")
        .send()
        .await?;
    assert_eq!(unknown.status().as_u16(), 404);
    Ok(())
}

//! The WebSocket telemetry API (reference §5) with a real WebSocket client: both endpoints and
//! wrappers, snapshot then updates, ThingsBoard's message shapes, error codes and close codes,
//! liveness and the bounds on what a client can make the engine hold.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tests::ws::{Ended, WsClient};
use tests::{Engine, Rest};
use tokio_tungstenite::tungstenite::Message;

use crate::SETTLE;

const WAIT: Duration = Duration::from_secs(30);
/// How long a test waits to be sure nothing more comes.
const QUIET: Duration = Duration::from_millis(1500);

/// Posts telemetry (or attributes) through the HTTP device API.
async fn post(engine: &Engine, token: &str, kind: &str, body: &Value) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/{token}/{kind}")))
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "post {kind}: {}", resp.status());
    Ok(())
}

/// Waits until a REST read shows `key` = `value` (stored).
async fn stored(rest: &Rest, device: &str, key: &str, value: &Value) -> Result<()> {
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(device).await?;
        Ok((latest[key][0]["value"] == *value).then_some(()))
    })
    .await
}

async fn engine_with(env: &[(&str, &str)]) -> Result<(tempfile::TempDir, Engine, Rest)> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), env)?;
    let rest = engine.rest().await?;
    Ok((dir, engine, rest))
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_timeseries_snapshot_then_updates_that_agree_with_rest() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[]).await?;
    let device = rest.create_device("ws-1", "WS1").await?;
    post(
        &engine,
        "WS1",
        "telemetry",
        &json!({"ts": 1000, "values": {"temp": 21.5, "hum": 40}}),
    )
    .await?;
    stored(&rest, &device, "temp", &json!(21.5)).await?;

    let mut ws = WsClient::legacy(&engine, &rest.token).await?;
    ws.send(
        &json!({"tsSubCmds": [{"entityType": "DEVICE", "entityId": device,
        "keys": "temp,nokey", "scope": "LATEST_TELEMETRY", "cmdId": 7}]}),
    )
    .await?;
    let snapshot = ws.expect(WAIT).await?;
    assert_eq!(snapshot["subscriptionId"], 7);
    assert_eq!(snapshot["errorCode"], 0);
    assert_eq!(snapshot["errorMsg"], Value::Null);
    assert_eq!(
        snapshot["data"]["temp"],
        json!([[1000, "21.5"]]),
        "{snapshot}"
    );
    assert_eq!(snapshot["latestValues"]["temp"], 1000);
    // Never written: [now, null].
    assert_eq!(snapshot["data"]["nokey"][0][1], Value::Null, "{snapshot}");
    assert!(snapshot["data"]["nokey"][0][0].as_i64().unwrap_or(0) > 1000);
    assert!(
        snapshot["data"].get("hum").is_none(),
        "only the keys asked for"
    );

    post(
        &engine,
        "WS1",
        "telemetry",
        &json!({"ts": 2000, "values": {"temp": 22, "hum": 41}}),
    )
    .await?;
    let update = ws.expect(WAIT).await?;
    assert_eq!(
        update,
        json!({"subscriptionId": 7, "errorCode": 0, "errorMsg": null,
               "data": {"temp": [[2000, "22"]]}, "latestValues": {"temp": 2000}})
    );
    // Sent once stored: a REST read made now sees it.
    let latest = rest.latest(&device).await?;
    assert_eq!(latest["temp"][0]["ts"], 2000);

    // LATEST_TELEMETRY: an older point is not sent; a newer one is.
    post(
        &engine,
        "WS1",
        "telemetry",
        &json!({"ts": 1500, "values": {"temp": 1}}),
    )
    .await?;
    post(
        &engine,
        "WS1",
        "telemetry",
        &json!({"ts": 3000, "values": {"temp": true}}),
    )
    .await?;
    let update = ws.expect(WAIT).await?;
    assert_eq!(
        update["data"],
        json!({"temp": [[3000, "true"]]}),
        "{update}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unified_endpoint_attributes_history_and_unsubscribe() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[]).await?;
    let device = rest.create_device("ws-2", "WS2").await?;
    let shared = format!("/api/plugins/telemetry/DEVICE/{device}/attributes/SHARED_SCOPE");
    let resp = rest
        .post(&shared)
        .json(&json!({"mode": "eco", "level": 3}))
        .send()
        .await?;
    assert!(resp.status().is_success());
    post(&engine, "WS2", "attributes", &json!({"fw": "1.0"})).await?;
    post(&engine, "WS2", "telemetry", &json!([{"ts": 10, "values": {"t": 1}}, {"ts": 20, "values": {"t": 2}}, {"ts": 30, "values": {"t": 3}}])).await?;
    stored(&rest, &device, "t", &json!(3)).await?;
    rest.eventually(SETTLE, || async {
        let attrs = rest
            .json(&format!(
                "/api/plugins/telemetry/DEVICE/{device}/values/attributes"
            ))
            .await?;
        Ok((attrs.as_array().map_or(0, Vec::len) == 3).then_some(()))
    })
    .await?;

    // No token in the URL: the first message authenticates, and its commands run.
    let mut ws = WsClient::connect(&engine, "/api/ws").await?;
    ws.send(&json!({"authCmd": {"cmdId": 0, "token": rest.token},
        "cmds": [{"type": "ATTRIBUTES", "cmdId": 1, "entityType": "DEVICE", "entityId": device, "scope": "SHARED_SCOPE"},
                 {"type": "ATTRIBUTES", "cmdId": 2, "entityType": "DEVICE", "entityId": device}]}))
        .await?;
    let first = ws.expect(WAIT).await?;
    assert_eq!(first["subscriptionId"], 1);
    let data = first["data"].as_object().context("data")?;
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["level", "mode"],
        "{first}"
    );
    assert_eq!(data["level"][0][1], "3", "values are strings");
    let all = ws.expect(WAIT).await?;
    assert_eq!(all["subscriptionId"], 2);
    assert_eq!(all["data"].as_object().map(|d| d.len()), Some(3), "{all}");

    // A client attribute: only the scope-less subscription hears of it.
    post(&engine, "WS2", "attributes", &json!({"fw": "1.1"})).await?;
    let update = ws.expect(WAIT).await?;
    assert_eq!(update["subscriptionId"], 2, "{update}");
    assert_eq!(update["data"]["fw"][0][1], "1.1");
    assert!(
        ws.next(QUIET).await?.is_none(),
        "the shared-scope subscription hears nothing"
    );

    // A deletion is [0, ""] for both.
    let resp = rest
        .delete(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/SHARED_SCOPE?keys=mode"
        ))
        .send()
        .await?;
    assert!(resp.status().is_success());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let m = ws.expect(WAIT).await?;
        assert_eq!(m["data"], json!({"mode": [[0, ""]]}), "{m}");
        ids.push(m["subscriptionId"].as_i64().unwrap_or(-1));
    }
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);

    // History: one answer, newest first, and nothing after.
    ws.send(
        &json!({"cmds": [{"type": "TIMESERIES_HISTORY", "cmdId": 5, "entityType": "DEVICE",
        "entityId": device, "keys": "t", "startTs": 0, "endTs": 25}]}),
    )
    .await?;
    let history = ws.expect(WAIT).await?;
    assert_eq!(history["subscriptionId"], 5);
    assert_eq!(
        history["data"]["t"],
        json!([[20, "2"], [10, "1"]]),
        "{history}"
    );
    post(
        &engine,
        "WS2",
        "telemetry",
        &json!({"ts": 40, "values": {"t": 4}}),
    )
    .await?;
    assert!(
        ws.next(QUIET).await?.is_none(),
        "history does not subscribe"
    );

    // Unsubscribing one leaves the other; an empty entityId cancels all.
    ws.send(&json!({"cmds": [{"type": "ATTRIBUTES", "cmdId": 1, "entityType": "DEVICE", "entityId": device, "unsubscribe": true}]})).await?;
    let resp = rest
        .post(&shared)
        .json(&json!({"mode": "boost"}))
        .send()
        .await?;
    assert!(resp.status().is_success());
    let m = ws.expect(WAIT).await?;
    assert_eq!(m["subscriptionId"], 2, "{m}");
    assert!(ws.next(QUIET).await?.is_none());
    ws.send(&json!({"attrSubCmds": [{"cmdId": 9, "entityType": "DEVICE", "entityId": "", "unsubscribe": true}]})).await?;
    let resp = rest
        .post(&shared)
        .json(&json!({"mode": "off"}))
        .send()
        .await?;
    assert!(resp.status().is_success());
    assert!(
        ws.next(QUIET).await?.is_none(),
        "every subscription cancelled"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_commands_get_thingsboards_error_codes() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[]).await?;
    let device = rest.create_device("ws-3", "WS3").await?;
    let mut ws = WsClient::legacy(&engine, &rest.token).await?;
    let cases = [
        (
            json!({"tsSubCmds": [{"cmdId": -1, "entityType": "DEVICE", "entityId": device}]}),
            -1,
            2,
            "Cmd id is negative value!",
        ),
        (
            json!({"tsSubCmds": [{"cmdId": 8, "entityType": "DEVICE", "keys": "temp"}]}),
            8,
            2,
            "Device id is empty!",
        ),
        (
            json!({"tsSubCmds": [{"cmdId": 9, "entityType": "DEVICE", "entityId": "not-a-uuid"}]}),
            9,
            2,
            "Invalid entity id!",
        ),
        (
            json!({"attrSubCmds": [{"cmdId": 10, "entityType": "DEVICE", "entityId": "6b0bfa0e-4bdb-4a8f-8b37-2a6c9c0f3a11"}]}),
            10,
            3,
            "Unauthorized",
        ),
        (
            json!({"historyCmds": [{"cmdId": 11, "entityType": "DEVICE", "entityId": device, "startTs": 0, "endTs": 5}]}),
            11,
            2,
            "Keys are empty!",
        ),
        (
            json!({"historyCmds": [{"cmdId": 12, "entityType": "DEVICE", "entityId": device, "keys": "a", "startTs": 9, "endTs": 5}]}),
            12,
            2,
            "endTs must not be before startTs",
        ),
        (
            json!({"attrSubCmds": [{"cmdId": 13, "entityType": "DEVICE", "entityId": device, "scope": "NOPE"}]}),
            13,
            2,
            "Invalid attribute scope: NOPE",
        ),
        (
            json!({"tsSubCmds": [{"cmdId": 14, "entityType": "ASSET", "entityId": device}]}),
            14,
            2,
            "Entity type ASSET is not supported",
        ),
    ];
    for (cmd, id, code, message) in cases {
        ws.send(&cmd).await?;
        let m = ws.expect(WAIT).await?;
        assert_eq!(m["subscriptionId"], id, "{cmd} -> {m}");
        assert_eq!(m["errorCode"], code, "{cmd} -> {m}");
        assert_eq!(m["errorMsg"], message, "{cmd} -> {m}");
        assert_eq!(m["data"], Value::Null);
    }
    let too_many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    ws.send(&json!({"tsSubCmds": [{"cmdId": 15, "entityType": "DEVICE", "entityId": device, "keys": too_many.join(",")}]})).await?;
    let m = ws.expect(WAIT).await?;
    assert_eq!(
        (m["subscriptionId"].clone(), m["errorCode"].clone()),
        (json!(15), json!(2)),
        "{m}"
    );

    // Not JSON, or not a command object: ThingsBoard's hard-coded id 1; the socket stays.
    for bad in [
        "{nope",
        "[1,2]",
        r#"{"cmds":[{"type":"NO_SUCH","cmdId":4}]}"#,
        r#"{"tsSubCmds":[{"cmdId":"x"}]}"#,
    ] {
        ws.send_text(bad).await?;
        let m = ws.expect(WAIT).await?;
        assert_eq!(
            m,
            json!({"subscriptionId": 1, "errorCode": 2, "errorMsg": "Failed to parse the payload", "data": null, "latestValues": {}}),
            "{bad}"
        );
    }
    // Still serving.
    ws.send(&json!({"attrSubCmds": [{"cmdId": 20, "entityType": "DEVICE", "entityId": device}]}))
        .await?;
    let m = ws.expect(WAIT).await?;
    assert_eq!(
        (m["subscriptionId"].clone(), m["errorCode"].clone()),
        (json!(20), json!(0))
    );

    // Commands for features this engine has nothing of get empty answers.
    ws.send(
        &json!({"cmds": [{"type": "ALARM_COUNT", "cmdId": 30, "query": {}},
                             {"type": "NOTIFICATIONS_COUNT", "cmdId": 31},
                             {"type": "ENTITY_DATA", "cmdId": 32}]}),
    )
    .await?;
    let alarms = ws.expect(WAIT).await?;
    assert_eq!(
        (alarms["cmdId"].clone(), alarms["count"].clone()),
        (json!(30), json!(0)),
        "{alarms}"
    );
    let unread = ws.expect(WAIT).await?;
    assert_eq!(unread["totalUnreadCount"], 0, "{unread}");
    let empty = ws.expect(WAIT).await?;
    assert_eq!(
        (
            empty["cmdId"].clone(),
            empty["errorCode"].clone(),
            empty["errorMsg"].clone()
        ),
        (json!(32), json!(2), json!("Query is empty!")),
        "{empty}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_failures_close_with_thingsboards_codes() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[("ENGINE_WS__AUTH_TIMEOUT", "1s")]).await?;
    let closed = |code: u16, reason: &str| Ended::Closed(code, reason.to_owned());

    let mut ws = WsClient::connect(&engine, "/api/ws/plugins/telemetry?token=not-a-jwt").await?;
    assert_eq!(ws.ended(WAIT).await?, closed(1011, "Invalid JWT token"));

    let mut ws = WsClient::connect(&engine, "/api/ws").await?;
    ws.send(&json!({"cmds": []})).await?;
    assert_eq!(ws.ended(WAIT).await?, closed(1008, "Auth cmd is missing"));

    let mut ws = WsClient::connect(&engine, "/api/ws").await?;
    ws.send(&json!({"authCmd": {"cmdId": 0, "token": "bad"}}))
        .await?;
    assert_eq!(ws.ended(WAIT).await?, closed(1007, "Invalid JWT token"));

    let mut ws = WsClient::connect(&engine, "/api/ws").await?;
    ws.send_text("{not json").await?;
    assert_eq!(
        ws.ended(WAIT).await?,
        closed(1007, "Failed to parse the payload")
    );

    let mut ws = WsClient::connect(&engine, "/api/ws").await?;
    assert_eq!(ws.ended(WAIT).await?, closed(1008, "Auth timeout"));

    let mut ws = WsClient::connect(&engine, "/api/ws/plugins/notifications2").await?;
    assert_eq!(ws.ended(WAIT).await?, closed(1007, "Unknown session type"));

    // A refresh token is not an access token.
    let login: Value = reqwest::Client::new()
        .post(engine.url("/api/auth/login"))
        .json(&json!({"username": "tenant@thingsboard.org", "password": "tenant"}))
        .send()
        .await?
        .json()
        .await?;
    let refresh = login["refreshToken"].as_str().context("refresh")?;
    let mut ws = WsClient::legacy(&engine, refresh).await?;
    assert!(matches!(ws.ended(WAIT).await?, Ended::Closed(1011, _)));

    // The right token still works after all that.
    let device = rest.create_device("ws-4", "WS4").await?;
    let mut ws = WsClient::connect(&engine, "/api/ws").await?;
    ws.send(&json!({"authCmd": {"cmdId": 0, "token": rest.token}}))
        .await?;
    ws.send(&json!({"cmds": [{"type": "TIMESERIES", "cmdId": 1, "entityType": "DEVICE", "entityId": device, "keys": "a"}]})).await?;
    let m = ws.expect(WAIT).await?;
    assert_eq!(m["errorCode"], 0, "{m}");
    let closes = engine
        .wait_for_sample(
            "engine_ws_sessions_closed_total{reason=\"auth\"}",
            WAIT,
            |v| v >= 5.0,
        )
        .await?;
    assert!(closes >= 5.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn server_pings_and_closes_a_client_that_never_pongs() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[
        ("ENGINE_WS__PING_INTERVAL", "500ms"),
        ("ENGINE_WS__PONG_TIMEOUT", "2s"),
    ])
    .await?;
    // A client that reads answers pings (tungstenite does): it stays well past the timeout,
    // while one that does not read cannot pong and is closed with 4500.
    let mut live = WsClient::legacy(&engine, &rest.token).await?;
    let mut silent = WsClient::legacy(&engine, &rest.token).await?;
    let reading = tokio::spawn(async move { live.next(Duration::from_secs(8)).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        matches!(
            silent.ended(WAIT).await?,
            Ended::Closed(4500, _) | Ended::Dropped
        ),
        "closed"
    );
    let live = reading.await?;
    assert!(
        matches!(live, Ok(None)),
        "the reading client stays: {live:?}"
    );
    let closes = engine
        .wait_for_sample(
            "engine_ws_sessions_closed_total{reason=\"no_pong\"}",
            WAIT,
            |v| v >= 1.0,
        )
        .await?;
    assert_eq!(closes, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_and_limits_past_their_bounds_close_the_session() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[
        ("ENGINE_WS__MAX_SESSIONS_PER_USER", "2"),
        ("ENGINE_WS__MAX_SUBSCRIPTIONS_PER_USER", "3"),
        ("ENGINE_WS__MAX_FRAME_SIZE", "4096"),
    ])
    .await?;
    let device = rest.create_device("ws-5", "WS5").await?;
    let sub = |id: i32| json!({"tsSubCmds": [{"cmdId": id, "entityType": "DEVICE", "entityId": device, "keys": "a"}]});

    let mut a = WsClient::legacy(&engine, &rest.token).await?;
    let mut b = WsClient::legacy(&engine, &rest.token).await?;
    // Both are open (answered) before the third comes.
    a.send(&sub(1)).await?;
    a.expect(WAIT).await?;
    b.send(&sub(2)).await?;
    b.expect(WAIT).await?;
    let mut c = WsClient::legacy(&engine, &rest.token).await?;
    assert_eq!(
        c.ended(WAIT).await?,
        Ended::Closed(1008, "Max sessions limit reached!".into())
    );

    // Subscriptions count across the user's sessions: a has 1, b has 1; one more fits.
    b.send(&sub(3)).await?;
    b.expect(WAIT).await?;
    // Re-subscribing an id replaces it, and does not count twice.
    b.send(&sub(3)).await?;
    b.expect(WAIT).await?;
    a.send(&sub(4)).await?;
    assert_eq!(
        a.ended(WAIT).await?,
        Ended::Closed(1008, "Max subscriptions limit reached!".into())
    );
    // a's subscriptions were given back with its session: another session may take them.
    let mut d = WsClient::legacy(&engine, &rest.token).await?;
    d.send(&sub(5)).await?;
    assert_eq!(d.expect(WAIT).await?["errorCode"], 0);

    // A frame over the limit: 1009.
    d.send_text(&format!(
        "{{\"tsSubCmds\":[],\"pad\":\"{}\"}}",
        "x".repeat(5000)
    ))
    .await?;
    assert_eq!(
        d.ended(WAIT).await?,
        Ended::Closed(1009, "Message too big".into())
    );
    // Binary: 1003.
    b.send_raw(Message::binary(vec![1, 2, 3])).await?;
    assert!(matches!(b.ended(WAIT).await?, Ended::Closed(1003, _)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_is_closed_and_others_keep_their_updates() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[
        ("ENGINE_WS__MAX_PENDING_UPDATES", "300"),
        ("ENGINE_WS__SEND_TIMEOUT", "120s"),
        ("ENGINE_WS__PONG_TIMEOUT", "600s"),
    ])
    .await?;
    let device = rest.create_device("ws-6", "WS6").await?;
    let sub = json!({"tsSubCmds": [{"cmdId": 1, "entityType": "DEVICE", "entityId": device, "keys": "blob,n"}]});
    let path = format!("/api/ws/plugins/telemetry?token={}", rest.token);
    let mut slow = WsClient::connect_small_buffer(&engine, &path, 16 * 1024).await?;
    slow.send(&sub).await?;
    slow.expect(WAIT).await?;
    let mut fast = WsClient::legacy(&engine, &rest.token).await?;
    fast.send(&sub).await?;
    fast.expect(WAIT).await?;

    // 48 KiB updates (30 MB in all, far more than the slow client's socket buffers hold) until
    // its queue overflows. The fast client reads all along; posts wait for it every 50, so
    // its own queue never holds more than a few batches.
    let blob = "b".repeat(48 * 1024);
    let (progress, mut seen) = tokio::sync::watch::channel(0i64);
    let reader = tokio::spawn(async move {
        loop {
            let m = fast.expect(WAIT).await?;
            if let Some(n) = m["data"]["n"][0][1].as_str() {
                let _ = progress.send(n.parse::<i64>()?);
            }
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    // Until the slow one is closed, however much the machine's socket buffers hold.
    let overflowed = "engine_ws_sessions_closed_total{reason=\"overflow\"}";
    let mut n = 0i64;
    while engine.sample(overflowed).await?.unwrap_or(0.0) < 1.0 {
        anyhow::ensure!(n < 20_000, "no overflow after {n} updates of 48 KiB");
        for _ in 0..50 {
            n += 1;
            post(
                &engine,
                "WS6",
                "telemetry",
                &json!({"ts": n, "values": {"blob": blob, "n": n}}),
            )
            .await?;
        }
        tokio::time::timeout(WAIT, seen.wait_for(|s| *s >= n)).await??;
    }
    // Each round waited for the reading client to have the round's last update.
    assert_eq!(*seen.borrow(), n, "the reading client got every update");
    assert!(!reader.is_finished(), "the reading client's session ended");
    reader.abort();
    // The slow one finds its socket closed once it reads what was buffered.
    assert!(matches!(
        slow.ended(WAIT).await?,
        Ended::Closed(1008, _) | Ended::Dropped
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_made_during_ingest_misses_nothing_after_its_snapshot() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[]).await?;
    let device = rest.create_device("ws-7", "WS7").await?;
    post(
        &engine,
        "WS7",
        "telemetry",
        &json!({"ts": 1, "values": {"n": 1}}),
    )
    .await?;
    stored(&rest, &device, "n", &json!(1)).await?;
    // The writer sends n = 2, 3, ... until told to stop, so the subscription is made while
    // data flows whatever the machine's speed.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let url = engine.url("/api/v1/WS7/telemetry");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 2i64;
            while !*stopped.borrow_and_update() {
                let r = http
                    .post(&url)
                    .json(&json!({"ts": n, "values": {"n": n}}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success());
                n += 1;
            }
            anyhow::Ok(n - 1)
        })
    };
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(&device).await?;
        Ok((latest["n"][0]["value"].as_i64().unwrap_or(0) >= 20).then_some(()))
    })
    .await?;
    let mut ws = WsClient::legacy(&engine, &rest.token).await?;
    ws.send(&json!({"tsSubCmds": [{"cmdId": 1, "entityType": "DEVICE", "entityId": device, "keys": "n"}]})).await?;
    let snapshot = ws.expect(WAIT).await?;
    let from = snapshot["data"]["n"][0][0]
        .as_i64()
        .context("snapshot ts")?;
    // Let a good stretch flow after the snapshot, then stop.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 200 {
        let m = ws.expect(WAIT).await?;
        for point in m["data"]["n"].as_array().context("points")? {
            let ts = point[0].as_i64().context("ts")?;
            assert_eq!(point[1], json!(ts.to_string()));
            seen.insert(ts);
        }
    }
    let _ = stop.send(true);
    let last = writer.await??;
    while seen.last().is_none_or(|l| *l < last) {
        let m = ws.expect(WAIT).await?;
        for point in m["data"]["n"].as_array().context("points")? {
            seen.insert(point[0].as_i64().context("ts")?);
        }
    }
    // Every point stored after the snapshot came, none skipped.
    let missing: Vec<i64> = ((from + 1)..=last).filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "after snapshot {from}: missing {missing:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn entity_data_query_latest_and_time_series_commands() -> Result<()> {
    let (_dir, engine, rest) = engine_with(&[]).await?;
    let a = rest.create_device("ed-a", "EDA").await?;
    let b = rest.create_device("ed-b", "EDB").await?;
    let resp = rest
        .post("/api/device?accessToken=EDC")
        .json(&json!({"name": "ed-c", "type": "meter", "label": "Meter C"}))
        .send()
        .await?;
    assert!(resp.status().is_success());
    let c: Value = resp.json().await?;
    let c = c["id"]["id"].as_str().context("id")?.to_owned();
    post(
        &engine,
        "EDA",
        "telemetry",
        &json!({"ts": 100, "values": {"temp": 20.5}}),
    )
    .await?;
    post(
        &engine,
        "EDC",
        "telemetry",
        &json!({"ts": 100, "values": {"temp": 7}}),
    )
    .await?;
    stored(&rest, &c, "temp", &json!(7)).await?;
    stored(&rest, &a, "temp", &json!(20.5)).await?;

    let mut ws = WsClient::connect(&engine, &format!("/api/ws?token={}", rest.token)).await?;
    ws.send(&json!({"cmds": [{"type": "ENTITY_DATA", "cmdId": 3,
        "query": {"entityFilter": {"type": "singleEntity", "singleEntity": {"entityType": "DEVICE", "id": a}},
                  "pageLink": {"pageSize": 1, "page": 0, "textSearch": null, "sortOrder": null, "dynamic": false},
                  "entityFields": [{"type": "ENTITY_FIELD", "key": "name"}],
                  "latestValues": [{"type": "TIME_SERIES", "key": "temp"}], "keyFilters": []},
        "latestCmd": {"keys": [{"type": "TIME_SERIES", "key": "temp"}]}}]}))
        .await?;
    let first = ws.expect(WAIT).await?;
    assert_eq!(first["cmdUpdateType"], "ENTITY_DATA", "{first}");
    assert_eq!(first["errorCode"], 0);
    assert_eq!(first["update"], Value::Null);
    assert_eq!(first["data"]["totalElements"], 1);
    let entity = &first["data"]["data"][0];
    assert_eq!(entity["entityId"], json!({"entityType": "DEVICE", "id": a}));
    assert_eq!(entity["latest"]["ENTITY_FIELD"]["name"]["value"], "ed-a");
    assert_eq!(
        entity["latest"]["TIME_SERIES"]["temp"],
        json!({"ts": 100, "value": "20.5"})
    );
    let latest = ws.expect(WAIT).await?;
    assert_eq!(latest["data"], Value::Null);
    assert_eq!(
        latest["update"][0]["latest"]["TIME_SERIES"]["temp"]["value"], "20.5",
        "{latest}"
    );

    post(
        &engine,
        "EDA",
        "telemetry",
        &json!({"ts": 200, "values": {"temp": 21, "other": 1}}),
    )
    .await?;
    let update = ws.expect(WAIT).await?;
    assert_eq!(update["cmdId"], 3);
    assert_eq!(update["data"], Value::Null);
    assert_eq!(
        update["update"],
        json!([{"entityId": {"entityType": "DEVICE", "id": a},
                "latest": {"TIME_SERIES": {"temp": {"ts": 200, "value": "21"}}},
                "timeseries": {}, "aggLatest": null}])
    );
    // Another device is not in this subscription.
    post(
        &engine,
        "EDB",
        "telemetry",
        &json!({"ts": 200, "values": {"temp": 5}}),
    )
    .await?;
    assert!(ws.next(QUIET).await?.is_none());

    // The same cmdId adds a tsCmd: the window, then live points.
    ws.send(&json!({"cmds": [{"type": "ENTITY_DATA", "cmdId": 3,
        "tsCmd": {"keys": ["temp"], "startTs": 0, "timeWindow": 1000, "interval": 0, "limit": 10, "agg": "NONE"}}]}))
        .await?;
    let window = ws.expect(WAIT).await?;
    assert_eq!(
        window["update"][0]["timeseries"]["temp"],
        json!([{"ts": 200, "value": "21"}, {"ts": 100, "value": "20.5"}]),
        "{window}"
    );
    post(
        &engine,
        "EDA",
        "telemetry",
        &json!({"ts": 300, "values": {"temp": 22}}),
    )
    .await?;
    let update = ws.expect(WAIT).await?;
    assert_eq!(
        update["update"][0]["timeseries"]["temp"],
        json!([{"ts": 300, "value": "22"}]),
        "{update}"
    );
    assert_eq!(
        update["update"][0]["latest"]["TIME_SERIES"]["temp"]["value"],
        "22"
    );

    // Unsubscribed: nothing more.
    ws.send(&json!({"cmds": [{"type": "ENTITY_DATA_UNSUBSCRIBE", "cmdId": 3}]}))
        .await?;
    post(
        &engine,
        "EDA",
        "telemetry",
        &json!({"ts": 400, "values": {"temp": 23}}),
    )
    .await?;
    assert!(ws.next(QUIET).await?.is_none());

    // Device-type and entity-list filters, pages, counts.
    ws.send(&json!({"cmds": [
        {"type": "ENTITY_DATA", "cmdId": 4, "query": {"entityFilter": {"type": "deviceType", "deviceTypes": ["meter"]},
            "pageLink": {"pageSize": 10, "page": 0}, "entityFields": [{"type": "ENTITY_FIELD", "key": "label"}], "latestValues": []}},
        {"type": "ENTITY_DATA", "cmdId": 5, "query": {"entityFilter": {"type": "entityList", "entityType": "DEVICE", "entityList": [a, b, c, "6b0bfa0e-4bdb-4a8f-8b37-2a6c9c0f3a11"]},
            "pageLink": {"pageSize": 2, "page": 1}, "entityFields": [], "latestValues": []}},
        {"type": "ENTITY_COUNT", "cmdId": 6, "query": {"entityFilter": {"type": "entityType", "entityType": "DEVICE"}}},
        {"type": "ENTITY_COUNT", "cmdId": 7, "query": {"entityFilter": {"type": "deviceType", "deviceType": "default"}}},
        {"type": "ENTITY_DATA", "cmdId": 8, "query": {"entityFilter": {"type": "relationsQuery"}, "pageLink": {"pageSize": 1}}}
    ]}))
    .await?;
    let meters = ws.expect(WAIT).await?;
    assert_eq!(meters["data"]["totalElements"], 1, "{meters}");
    assert_eq!(
        meters["data"]["data"][0]["latest"]["ENTITY_FIELD"]["label"]["value"],
        "Meter C"
    );
    let listed = ws.expect(WAIT).await?;
    assert_eq!(
        listed["data"]["totalElements"], 3,
        "unknown ids are left out: {listed}"
    );
    assert_eq!(listed["data"]["totalPages"], 2);
    assert_eq!(listed["data"]["hasNext"], false);
    assert_eq!(listed["data"]["data"].as_array().map(Vec::len), Some(1));
    let count = ws.expect(WAIT).await?;
    assert_eq!(
        (count["cmdUpdateType"].clone(), count["count"].clone()),
        (json!("COUNT_DATA"), json!(3)),
        "{count}"
    );
    let count = ws.expect(WAIT).await?;
    assert_eq!(count["count"], 2, "{count}");
    let unsupported = ws.expect(WAIT).await?;
    assert_eq!(unsupported["errorCode"], 2, "{unsupported}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_frames_and_commands_are_refused_without_holding_memory() -> Result<()> {
    use tests::ws::RawWs;
    let (_dir, engine, rest) = engine_with(&[
        ("ENGINE_WS__SEND_TIMEOUT", "1s"),
        ("ENGINE_WS__AUTH_TIMEOUT", "3s"),
    ])
    .await?;
    let device = rest.create_device("ws-8", "WS8").await?;
    let legacy = format!("/api/ws/plugins/telemetry?token={}", rest.token);
    let rss_before = engine.rss_kib()?;

    // A header declaring 2^40 bytes: closed with 1009 at once, before any of them comes.
    for path in ["/api/ws", legacy.as_str()] {
        let mut raw = RawWs::connect(&engine, path, None).await?;
        raw.frame(0x81, 1 << 40, &[]).await?;
        raw.frame(0x81, 1 << 40, &vec![b'x'; 1 << 20]).await.ok();
        assert_eq!(raw.close_code(WAIT).await?, Some(1009), "{path}");
    }
    // Fragments adding up past the limit: 1009 too.
    let mut raw = RawWs::connect(&engine, &legacy, None).await?;
    raw.frame(0x01, 20_000, &vec![b' '; 20_000]).await?;
    raw.frame(0x00, 20_000, &vec![b' '; 20_000]).await?;
    assert_eq!(raw.close_code(WAIT).await?, Some(1009));
    // Text that is not UTF-8: 1007.
    let mut raw = RawWs::connect(&engine, &legacy, None).await?;
    raw.frame(0x81, 2, &[0xc3, 0x28]).await?;
    assert_eq!(raw.close_code(WAIT).await?, Some(1007));
    // Pings from a client that reads nothing cannot hold its session past the auth timeout.
    let mut flood = RawWs::connect(&engine, "/api/ws", Some(4096)).await?;
    let ping = vec![b'p'; 125];
    let flooding = tokio::spawn(async move {
        for _ in 0..200_000 {
            if flood.frame(0x89, 125, &ping).await.is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut closed = 0.0;
        for reason in ["send_timeout", "auth"] {
            let series = format!("engine_ws_sessions_closed_total{{reason=\"{reason}\"}}");
            closed += engine.sample(&series).await?.unwrap_or(0.0);
        }
        if closed >= 1.0 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the ping flood kept its session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flooding.abort();

    // Commands whose reads would be huge, or whose numbers overflow: errorCode 2.
    let mut ws = WsClient::legacy(&engine, &rest.token).await?;
    let all_keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let cases = [
        json!({"historyCmds": [{"cmdId": 1, "entityType": "DEVICE", "entityId": device, "keys": "t",
            "startTs": i64::MIN, "endTs": i64::MAX, "interval": 1, "agg": "AVG"}]}),
        json!({"historyCmds": [{"cmdId": 2, "entityType": "DEVICE", "entityId": device,
            "keys": all_keys.join(","), "startTs": 0, "endTs": 10, "limit": 700}]}),
        json!({"cmds": [{"type": "ENTITY_DATA", "cmdId": 3,
            "query": {"entityFilter": {"type": "entityType", "entityType": "DEVICE"}, "pageLink": {"pageSize": 10000}},
            "historyCmd": {"keys": all_keys, "startTs": 0, "endTs": 10, "limit": 700}}]}),
    ];
    for cmd in cases {
        ws.send(&cmd).await?;
        let mut m = ws.expect(WAIT).await?;
        if m["cmdUpdateType"] == "ENTITY_DATA" && m["errorCode"] == 0 {
            // The query's page comes first; the history command is refused after it.
            m = ws.expect(WAIT).await?;
        }
        assert_eq!(m["errorCode"], 2, "{cmd} -> {m}");
    }
    // Still serving, and the engine did not take the gigabyte.
    ws.send(&json!({"tsSubCmds": [{"cmdId": 9, "entityType": "DEVICE", "entityId": device, "keys": "t"}]})).await?;
    assert_eq!(ws.expect(WAIT).await?["errorCode"], 0);
    let grown = engine.rss_kib()?.saturating_sub(rss_before);
    assert!(grown < 256 * 1024, "RSS grew by {grown} KiB");
    Ok(())
}

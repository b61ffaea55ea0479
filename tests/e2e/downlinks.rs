//! The way back to devices: shared attribute updates and server-side RPC from the REST API to
//! MQTT devices (3.1.1 and 5), with ThingsBoard's topics, payloads and REST statuses.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::QoS;
use serde_json::{Value, json};
use tests::mqtt::{Device3, Outcome, connect_v3};
use tests::{Engine, Rest};

const ATTRIBUTES: &str = "v1/devices/me/attributes";
const RPC_REQUESTS: &str = "v1/devices/me/rpc/request/+";
const WAIT: Duration = Duration::from_secs(20);

async fn device(engine: &Engine, rest: &Rest, name: &str) -> Result<(String, Device3)> {
    let token = name.to_uppercase().replace('-', "_");
    let id = rest.create_device(name, &token).await?;
    let device = connect_v3(engine, &token, name)
        .await
        .map_err(|c| anyhow::anyhow!("connect {name}: {c:?}"))?;
    Ok((id, device))
}

/// A REST RPC call running while the test plays the device: its status and body.
fn rpc(rest: &Rest, path: String, body: Value) -> tokio::task::JoinHandle<Result<(u16, String)>> {
    let request = rest.post(&path).json(&body).send();
    tokio::spawn(async move {
        let response = request.await?;
        Ok((response.status().as_u16(), response.text().await?))
    })
}

async fn next(device: &mut Device3) -> Result<(String, Value)> {
    let (topic, body) = device
        .next_publish(WAIT)
        .await?
        .context("no downlink came")?;
    let body = serde_json::from_slice(&body)
        .with_context(|| format!("{topic}: {}", String::from_utf8_lossy(&body)))?;
    Ok((topic, body))
}

/// Waits until the owner of the device's state knows its RPC subscription: a one-way request
/// is answered 200 only once a subscribed session took it.
async fn until_subscribed(rest: &Rest, device: &mut Device3, id: &str) -> Result<()> {
    let call = rpc(
        rest,
        format!("/api/rpc/oneway/{id}"),
        json!({"method": "hello", "params": {}}),
    );
    let (topic, body) = next(device).await?;
    assert!(topic.starts_with("v1/devices/me/rpc/request/"), "{topic}");
    assert_eq!(body, json!({"method": "hello", "params": {}}));
    assert_eq!(call.await??, (200, String::new()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_way_rpc_round_trips_through_an_mqtt_device() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let (id, mut device) = device(&engine, &rest, "rpc-device").await?;
    assert_eq!(device.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?, [1]);
    until_subscribed(&rest, &mut device, &id).await?;

    // Two-way, v2 and v1 paths: the device gets the request without an id in the body, under
    // the next id; its reply is the REST answer.
    for (n, path) in [(1, "/api/rpc/twoway"), (2, "/api/plugins/rpc/twoway")] {
        let call = rpc(
            &rest,
            format!("{path}/{id}"),
            json!({"method": "setGpio", "params": {"pin": 7, "value": 1}}),
        );
        let (topic, body) = next(&mut device).await?;
        assert_eq!(topic, format!("v1/devices/me/rpc/request/{n}"));
        assert_eq!(
            body,
            json!({"method": "setGpio", "params": {"pin": 7, "value": 1}})
        );
        assert_eq!(
            device
                .publish(
                    &format!("v1/devices/me/rpc/response/{n}"),
                    r#"{"pin":7,"value":1}"#
                )
                .await?,
            Outcome::Acked(0)
        );
        let (status, body) = call.await??;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body)?,
            json!({"pin": 7, "value": 1})
        );
    }

    // A reply that is not JSON: 406. An empty one: 200, empty.
    for (n, reply, want) in [(3, "ok", 406), (4, "", 200)] {
        let call = rpc(
            &rest,
            format!("/api/rpc/twoway/{id}"),
            json!({"method": "m", "params": null}),
        );
        let (topic, _) = device.next_publish(WAIT).await?.context("no request")?;
        assert_eq!(topic, format!("v1/devices/me/rpc/request/{n}"));
        device
            .publish(&format!("v1/devices/me/rpc/response/{n}"), reply)
            .await?;
        assert_eq!(call.await??, (want, String::new()));
    }

    // A reply to an id nobody waits for is taken and ignored; so is a second reply.
    assert_eq!(
        device
            .publish("v1/devices/me/rpc/response/999", "{}")
            .await?,
        Outcome::Acked(0)
    );
    assert_eq!(
        device.publish("v1/devices/me/rpc/response/1", "{}").await?,
        Outcome::Acked(0)
    );

    // Subscribed but silent: v1 408, v2 504, after the 5 s minimum timeout (1 s asked).
    for (path, want) in [("/api/plugins/rpc/twoway", 408), ("/api/rpc/twoway", 504)] {
        let started = Instant::now();
        let call = rpc(
            &rest,
            format!("{path}/{id}"),
            json!({"method": "silent", "params": {}, "timeout": 1000}),
        );
        let (_, body) = next(&mut device).await?;
        assert_eq!(body["method"], "silent");
        assert_eq!(call.await??.0, want, "{path}");
        assert!(started.elapsed() >= Duration::from_millis(4_900));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_to_an_offline_device_waits_for_its_subscription_or_times_out() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("sleeper", "SLEEPER").await?;

    // Never connects: v1 409 (never delivered), v2 504.
    let v1 = rpc(
        &rest,
        format!("/api/plugins/rpc/twoway/{id}"),
        json!({"method": "m", "params": {}, "timeout": 5000}),
    );
    let v2 = rpc(
        &rest,
        format!("/api/rpc/oneway/{id}"),
        json!({"method": "m", "params": {}, "timeout": 5000}),
    );
    assert_eq!(v1.await??.0, 409);
    assert_eq!(v2.await??.0, 504);

    // Connected without the RPC subscription counts as offline; it subscribes within the
    // timeout and gets the request then, under the next id (the two expired ones had 0 and
    // 1): ids keep counting while the engine runs, as ThingsBoard's device actor counts.
    let mut device = connect_v3(&engine, "SLEEPER", "sleeper")
        .await
        .map_err(|c| anyhow::anyhow!("{c:?}"))?;
    let call = rpc(
        &rest,
        format!("/api/rpc/twoway/{id}"),
        json!({"method": "late", "params": [1, 2], "timeout": 20000}),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        device
            .next_publish(Duration::from_millis(300))
            .await?
            .is_none()
    );
    device.subscribe(RPC_REQUESTS, QoS::AtMostOnce).await?;
    let (topic, body) = next(&mut device).await?;
    assert_eq!(topic, "v1/devices/me/rpc/request/2");
    assert_eq!(body, json!({"method": "late", "params": [1, 2]}));
    device
        .publish("v1/devices/me/rpc/response/2", r#"{"late":true}"#)
        .await?;
    let (status, body) = call.await??;
    assert_eq!((status, body.as_str()), (200, r#"{"late":true}"#));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_attribute_updates_reach_subscribed_sessions_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let (id, mut subscribed) = device(&engine, &rest, "attr-listener").await?;
    let (other_id, mut other) = device(&engine, &rest, "attr-deaf").await?;
    assert_eq!(
        subscribed.subscribe(ATTRIBUTES, QoS::AtLeastOnce).await?,
        [1]
    );
    assert_eq!(
        subscribed.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?,
        [1]
    );
    other.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?;
    until_subscribed(&rest, &mut subscribed, &id).await?;
    until_subscribed(&rest, &mut other, &other_id).await?;

    for path in [
        format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE"),
        format!("/api/plugins/telemetry/DEVICE/{other_id}/SHARED_SCOPE"),
    ] {
        let response = rest
            .post(&path)
            .json(&json!({"target": "5", "mode": "eco", "on": true, "cfg": {"a": 1}}))
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{path}");
    }
    // Only the posted keys, typed as ThingsBoard types them ("5" is a number).
    let (topic, body) = next(&mut subscribed).await?;
    assert_eq!(topic, ATTRIBUTES);
    assert_eq!(
        body,
        json!({"target": 5, "mode": "eco", "on": true, "cfg": {"a": 1}})
    );
    // The device without the attribute subscription gets nothing; server-scope changes are
    // not pushed either.
    assert!(other.next_publish(Duration::from_secs(1)).await?.is_none());
    rest.post(&format!(
        "/api/plugins/telemetry/DEVICE/{id}/attributes/SERVER_SCOPE"
    ))
    .json(&json!({"secret": 1}))
    .send()
    .await?;
    assert!(
        subscribed
            .next_publish(Duration::from_secs(1))
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_requests_that_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("refuser", "REFUSER").await?;
    let status = |r: reqwest::Response| r.status().as_u16();
    // Not JSON; no method: 400.
    for body in ["{not json", r#"{"params":{}}"#, "[]"] {
        let r = rest
            .post(&format!("/api/rpc/twoway/{id}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(status(r), 400, "{body}");
    }
    // Unknown device: 404; no token: 401; neither one- nor two-way: 404.
    let unknown = "6d7b2a40-0000-4000-8000-000000000000";
    let r = rest
        .post(&format!("/api/rpc/twoway/{unknown}"))
        .json(&json!({"method": "m"}))
        .send()
        .await?;
    assert_eq!(status(r), 404);
    let r = rest
        .http
        .post(engine.url(&format!("/api/rpc/twoway/{id}")))
        .json(&json!({"method": "m"}))
        .send()
        .await?;
    assert_eq!(status(r), 401);
    let r = rest
        .post(&format!("/api/rpc/sideways/{id}"))
        .json(&json!({"method": "m"}))
        .send()
        .await?;
    assert_eq!(status(r), 404);
    Ok(())
}

/// Answers one HTTP device API request: status and body.
async fn answer(request: reqwest::RequestBuilder) -> Result<(u16, String)> {
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Repeats `change` every half second until `poll` is answered; the poll subscribes through
/// the queue, so a change made before its subscription reached the device's owner misses it.
async fn poll_while(
    poll: tokio::task::JoinHandle<Result<(u16, String)>>,
    mut change: impl AsyncFnMut() -> Result<()>,
) -> Result<(u16, String)> {
    let deadline = Instant::now() + WAIT;
    while !poll.is_finished() {
        anyhow::ensure!(Instant::now() < deadline, "the long poll got nothing");
        change().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    poll.await?
}

#[tokio::test(flavor = "multi_thread")]
async fn http_devices_long_poll_for_rpc_and_shared_attribute_changes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("http-poller", "HTTP_POLLER").await?;
    let http = reqwest::Client::new();
    let url = |path: &str| engine.url(&format!("/api/v1/HTTP_POLLER{path}"));

    // Nothing comes: 408 with an empty body once the device's timeout is up.
    let started = Instant::now();
    assert_eq!(
        answer(http.get(url("/attributes/updates?timeout=1000"))).await?,
        (408, String::new())
    );
    assert_eq!(
        answer(http.get(url("/rpc?timeout=1000"))).await?,
        (408, String::new())
    );
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // A two-way request made before the poll: the poll gets it at once, with its id.
    let call = rpc(
        &rest,
        format!("/api/rpc/twoway/{id}"),
        json!({"method": "m", "params": {"a": 1}, "timeout": 20000}),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = answer(http.get(url("/rpc?timeout=10000"))).await?;
    assert_eq!(status, 200, "{body}");
    let request: Value = serde_json::from_str(&body)?;
    assert_eq!(request, json!({"id": 0, "method": "m", "params": {"a": 1}}));
    assert_eq!(
        answer(http.post(url("/rpc/0")).body(r#"{"r":2}"#)).await?,
        (200, String::new())
    );
    let (status, body) = call.await??;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body)?, json!({"r": 2}));

    // A poll first, then the request: it waits for the poll's subscription.
    let poll = tokio::spawn(answer(http.get(url("/rpc?timeout=20000"))));
    let call = rpc(
        &rest,
        format!("/api/plugins/rpc/oneway/{id}"),
        json!({"method": "reboot", "params": null}),
    );
    let (status, body) = poll.await??;
    assert_eq!(status, 200, "{body}");
    // The next id: the counter outlives the poll that ended.
    assert_eq!(
        serde_json::from_str::<Value>(&body)?,
        json!({"id": 1, "method": "reboot", "params": null})
    );
    assert_eq!(call.await??, (200, String::new()));

    // Two one-way requests pending: each poll takes one, in order, and both callers get 200.
    let first = rpc(
        &rest,
        format!("/api/rpc/oneway/{id}"),
        json!({"method": "first", "params": 1, "timeout": 20000}),
    );
    let second = rpc(
        &rest,
        format!("/api/rpc/oneway/{id}"),
        json!({"method": "second", "params": 2, "timeout": 20000}),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut methods = Vec::new();
    for _ in 0..2 {
        let (status, body) = answer(http.get(url("/rpc?timeout=10000"))).await?;
        assert_eq!(status, 200, "{body}");
        methods.push(serde_json::from_str::<Value>(&body)?["method"].clone());
    }
    methods.sort_by_key(Value::to_string);
    assert_eq!(methods, [json!("first"), json!("second")]);
    assert_eq!(first.await??.0, 200);
    assert_eq!(second.await??.0, 200);

    // A persistent request is DELIVERED once it is a poll's answer (HTTP has no PUBACK).
    let stored = persist(
        &rest,
        &format!("/api/rpc/oneway/{id}"),
        json!({"method": "stored", "params": {}, "persistent": true, "timeout": 60000}),
    )
    .await?;
    let (status, body) = answer(http.get(url("/rpc?timeout=10000"))).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body)?["method"], "stored");
    record_with(&rest, &stored, "DELIVERED").await?;

    // Shared attribute changes: only the posted keys, typed; deletions as {"deleted":[..]}.
    let attributes = format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE");
    let poll = tokio::spawn(answer(http.get(url("/attributes/updates?timeout=30000"))));
    let (status, body) = poll_while(poll, async || {
        let r = rest
            .post(&attributes)
            .json(&json!({"interval": "60"}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "save: {}", r.status());
        Ok(())
    })
    .await?;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body)?),
        (200, json!({"interval": 60}))
    );
    let poll = tokio::spawn(answer(http.get(url("/attributes/updates?timeout=30000"))));
    let (status, body) = poll_while(poll, async || {
        let r = rest
            .delete(&format!(
                "/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE?keys=interval"
            ))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "delete: {}", r.status());
        Ok(())
    })
    .await?;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body)?),
        (200, json!({"deleted": ["interval"]}))
    );
    // Deleted for the device's attribute request and for the REST reads too.
    let (status, body) = answer(http.get(url("/attributes?sharedKeys=interval"))).await?;
    assert_eq!((status, body.as_str()), (200, "{}"));
    let keys = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/keys/attributes/SHARED_SCOPE"
        ))
        .await?;
    assert_eq!(keys, json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_devices_get_shared_attribute_deletions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let (id, mut device) = device(&engine, &rest, "attr-deletions").await?;
    device.subscribe(ATTRIBUTES, QoS::AtLeastOnce).await?;
    device.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?;
    until_subscribed(&rest, &mut device, &id).await?;
    let r = rest
        .post(&format!("/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE"))
        .json(&json!({"a": 1, "b": 2, "c": 3}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(next(&mut device).await?.1, json!({"a": 1, "b": 2, "c": 3}));
    // The current form and ThingsBoard's oldest one (no entity type).
    for (path, keys) in [
        (
            format!("/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE?keys=a,b"),
            json!(["a", "b"]),
        ),
        (
            format!("/api/plugins/telemetry/{id}/SHARED_SCOPE?keys=c"),
            json!(["c"]),
        ),
    ] {
        let r = rest.delete(&path).send().await?;
        assert_eq!(r.status(), 200, "{path}");
        let (topic, body) = next(&mut device).await?;
        assert_eq!(
            (topic.as_str(), body),
            (ATTRIBUTES, json!({"deleted": keys}))
        );
    }
    // Deleting a server-scope key is not pushed.
    rest.post(&format!("/api/plugins/telemetry/DEVICE/{id}/SERVER_SCOPE"))
        .json(&json!({"s": 1}))
        .send()
        .await?;
    let r = rest
        .delete(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/SERVER_SCOPE?keys=s"
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(device.next_publish(Duration::from_secs(1)).await?.is_none());
    let left = rest
        .json(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/values/attributes"
        ))
        .await?;
    assert_eq!(left, json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_way_back_refuses_bad_requests() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(
        dir.path(),
        &[
            ("ENGINE_HTTP__REQUEST_TIMEOUT", "2s"),
            ("ENGINE_HTTP__MAX_REQUEST_TIMEOUT", "3s"),
            ("ENGINE_HTTP__MAX_WAITING_REQUESTS", "2"),
        ],
    )?;
    let rest = engine.rest().await?;
    let id = rest.create_device("http-hostile", "HTTP_HOSTILE").await?;
    let http = reqwest::Client::new();
    let url = |path: &str| engine.url(&format!("/api/v1/HTTP_HOSTILE{path}"));

    // Unknown token: 401 on every path, before anything else.
    for (method, path) in [
        ("GET", "/api/v1/NOPE/rpc"),
        ("GET", "/api/v1/NOPE/attributes/updates"),
        ("POST", "/api/v1/NOPE/rpc/0"),
        ("POST", "/api/v1/NOPE/rpc"),
    ] {
        let request = http.request(method.parse()?, engine.url(path)).body("{}");
        assert_eq!(answer(request).await?.0, 401, "{method} {path}");
    }
    // Replies: an id that is no 32-bit integer is 400; an unknown id is taken and ignored; a
    // body over the size limit is 413.
    for bad in ["abc", "99999999999", "-"] {
        assert_eq!(
            answer(http.post(url(&format!("/rpc/{bad}"))).body("{}"))
                .await?
                .0,
            400
        );
    }
    assert_eq!(
        answer(http.post(url("/rpc/7")).body("{}")).await?,
        (200, String::new())
    );
    let huge = "x".repeat(70_000);
    assert_eq!(answer(http.post(url("/rpc/0")).body(huge)).await?.0, 413);
    // The device's own requests: without params or not JSON, 400; a good one is answered
    // {"error":"timeout"} after http.request_timeout, since no rule answers it.
    for bad in [r#"{"method":"x"}"#, "not json", r#"{"params":{}}"#] {
        assert_eq!(
            answer(http.post(url("/rpc")).body(bad)).await?.0,
            400,
            "{bad}"
        );
    }
    // `params` present as null is a request (ThingsBoard takes it).
    let (status, body) = answer(
        http.post(url("/rpc"))
            .body(r#"{"method":"getTime","params":null}"#),
    )
    .await?;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body)?),
        (200, json!({"error": "timeout"}))
    );
    let started = Instant::now();
    let (status, body) = answer(
        http.post(url("/rpc"))
            .body(r#"{"method":"getTime","params":{}}"#),
    )
    .await?;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body)?),
        (200, json!({"error": "timeout"}))
    );
    assert!(started.elapsed() >= Duration::from_millis(1900));
    // A timeout that is not a number is 400; a longer one than allowed is cut to it.
    assert_eq!(answer(http.get(url("/rpc?timeout=soon"))).await?.0, 400);
    let started = Instant::now();
    assert_eq!(answer(http.get(url("/rpc?timeout=600000"))).await?.0, 408);
    assert!(started.elapsed() < Duration::from_secs(30));
    // Past http.max_waiting_requests: 503 at once, and the waiting ones are answered.
    let polls: Vec<_> = (0..2)
        .map(|_| tokio::spawn(answer(http.get(url("/attributes/updates?timeout=3000")))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(answer(http.get(url("/rpc?timeout=1000"))).await?.0, 503);
    for poll in polls {
        assert_eq!(poll.await??.0, 408);
    }

    // Deleting attributes: no keys, an unknown entity type or device, no token.
    let base = format!("/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE");
    for query in ["", "?keys=", "?keys=,,"] {
        let r = rest.delete(&format!("{base}{query}")).send().await?;
        assert_eq!(r.status(), 400, "{query}");
        assert!(r.text().await?.contains("Empty keys: []"));
    }
    let r = rest
        .delete(&format!(
            "/api/plugins/telemetry/ASSET/{id}/SHARED_SCOPE?keys=a"
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let r = rest
        .delete(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/NO_SCOPE?keys=a"
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let unknown = "6d7b2a40-0000-4000-8000-000000000000";
    let r = rest
        .delete(&format!(
            "/api/plugins/telemetry/DEVICE/{unknown}/SHARED_SCOPE?keys=a"
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = http
        .delete(engine.url(&format!("{base}?keys=a")))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // A key no device could have stored (longer than limits.max_key_length): 400.
    let long = "k".repeat(300);
    let r = rest.delete(&format!("{base}?keys={long}")).send().await?;
    assert_eq!(r.status(), 400);
    // The device's client attributes may be deleted too.
    let r = rest
        .delete(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/CLIENT_SCOPE?keys=a"
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // The engine still serves.
    assert_eq!(
        answer(http.get(url("/attributes"))).await?,
        (200, "{}".to_owned())
    );
    Ok(())
}

/// Posts a persistent request and returns its record id.
async fn persist(rest: &Rest, path: &str, body: Value) -> Result<String> {
    let response = rest.post(path).json(&body).send().await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status == 200, "{path}: {status} {text}");
    let answer: Value = serde_json::from_str(&text)?;
    answer["rpcId"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no rpcId in {text}"))
}

/// Waits until the stored RPC has `status`; returns its record.
async fn record_with(rest: &Rest, rpc: &str, status: &str) -> Result<Value> {
    rest.eventually(WAIT, || async {
        let record = rest.json(&format!("/api/rpc/persistent/{rpc}")).await?;
        Ok((record["status"] == status).then_some(record))
    })
    .await
    .with_context(|| format!("RPC {rpc} never became {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_rpc_is_stored_delivered_answered_expired_and_deleted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("persistent", "PERSISTENT").await?;

    // Stored before the device is there: QUEUED, with its request and additional info.
    let twoway = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "setX", "params": {"v": 1}, "persistent": true, "timeout": 60000,
               "additionalInfo": {"note": "n"}}),
    )
    .await?;
    let record = rest.json(&format!("/api/rpc/persistent/{twoway}")).await?;
    assert_eq!(record["status"], "QUEUED", "{record}");
    assert_eq!(record["id"], json!({"entityType": "RPC", "id": twoway}));
    assert_eq!(
        record["deviceId"],
        json!({"entityType": "DEVICE", "id": id})
    );
    assert_eq!(record["request"]["body"]["method"], "setX");
    assert_eq!(record["request"]["oneway"], false);
    assert_eq!(record["additionalInfo"], json!({"note": "n"}));
    assert_eq!(record["response"], Value::Null);
    // One deleted while queued is never sent.
    let deleted = persist(
        &rest,
        &format!("/api/plugins/rpc/oneway/{id}"),
        json!({"method": "never", "params": {}, "persistent": true, "timeout": 60000}),
    )
    .await?;
    let r = rest
        .delete(&format!("/api/rpc/persistent/{deleted}"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = rest
        .get(&format!("/api/rpc/persistent/{deleted}"))
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    // The device subscribes: it gets the queued request (only that one), DELIVERED; its reply
    // makes it SUCCESSFUL with the reply as the response.
    let mut device = connect_v3(&engine, "PERSISTENT", "persistent")
        .await
        .map_err(|c| anyhow::anyhow!("connect: {c:?}"))?;
    device.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?;
    let (topic, body) = next(&mut device).await?;
    assert_eq!(body, json!({"method": "setX", "params": {"v": 1}}));
    record_with(&rest, &twoway, "DELIVERED").await?;
    let n = topic.rsplit('/').next().context("an id")?.to_owned();
    device
        .publish(
            &format!("v1/devices/me/rpc/response/{n}"),
            r#"{"done":true}"#,
        )
        .await?;
    let record = record_with(&rest, &twoway, "SUCCESSFUL").await?;
    assert_eq!(record["response"], json!({"done": true}));
    assert!(device.next_publish(Duration::from_secs(1)).await?.is_none());

    // Online: a one-way one is DELIVERED and stays so; a reply that is not JSON is kept as
    // {"error": text}, still SUCCESSFUL (ThingsBoard).
    let oneway = persist(
        &rest,
        &format!("/api/rpc/oneway/{id}"),
        json!({"method": "blink", "params": null, "persistent": true}),
    )
    .await?;
    assert_eq!(next(&mut device).await?.1["method"], "blink");
    record_with(&rest, &oneway, "DELIVERED").await?;
    let plain = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "plain", "params": null, "persistent": true, "requestUUID":
               "0b6c39e4-5b0e-4bd4-9c5a-1f1a6f0c0001"}),
    )
    .await?;
    assert_eq!(plain, "0b6c39e4-5b0e-4bd4-9c5a-1f1a6f0c0001");
    let (topic, _) = next(&mut device).await?;
    let n = topic.rsplit('/').next().context("an id")?.to_owned();
    device
        .publish(&format!("v1/devices/me/rpc/response/{n}"), "ok")
        .await?;
    let record = record_with(&rest, &plain, "SUCCESSFUL").await?;
    assert_eq!(record["response"], json!({"error": "ok"}));
    // The same requestUUID again: 400.
    let r = rest
        .post(&format!("/api/rpc/twoway/{id}"))
        .json(&json!({"method": "again", "persistent": true,
                      "requestUUID": "0b6c39e4-5b0e-4bd4-9c5a-1f1a6f0c0001"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    // Sent, never answered: EXPIRED at its expiry (5 s, the minimum).
    let silent = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "silent", "params": {}, "persistent": true, "timeout": 1}),
    )
    .await?;
    assert_eq!(next(&mut device).await?.1["method"], "silent");
    record_with(&rest, &silent, "EXPIRED").await?;

    // The device's list: newest first, by status, paged; DELETED is not a filter.
    let page = rest
        .json(&format!(
            "/api/rpc/persistent/device/{id}?pageSize=10&page=0"
        ))
        .await?;
    assert_eq!(page["totalElements"], 4, "{page}");
    assert_eq!(page["data"][0]["id"]["id"], silent.as_str());
    let page = rest
        .json(&format!(
            "/api/rpc/persistent/device/{id}?pageSize=1&page=0&rpcStatus=SUCCESSFUL"
        ))
        .await?;
    assert_eq!(
        (page["totalElements"].clone(), page["hasNext"].clone()),
        (json!(2), json!(true))
    );
    for query in [
        "pageSize=10&rpcStatus=DELETED",
        "pageSize=10&rpcStatus=NOPE",
        "page=0",
    ] {
        let r = rest
            .get(&format!("/api/rpc/persistent/device/{id}?{query}"))
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{query}");
    }
    // Unknown or malformed ids; no token.
    let r = rest
        .get("/api/rpc/persistent/6d7b2a40-0000-4000-8000-000000000000")
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = rest.get("/api/rpc/persistent/not-a-uuid").send().await?;
    assert_eq!(r.status(), 400);
    let r = rest
        .http
        .get(engine.url(&format!("/api/rpc/persistent/{twoway}")))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_persistent_rpc_survives_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest.create_device("restarted", "RESTARTED").await?;
    let queued = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "afterRestart", "params": {"n": 1}, "persistent": true,
               "timeout": 120000}),
    )
    .await?;
    let gone = persist(
        &rest,
        &format!("/api/rpc/oneway/{id}"),
        json!({"method": "expiresMeanwhile", "params": {}, "persistent": true,
               "timeout": 5000}),
    )
    .await?;
    assert!(engine.terminate()?.success());
    tokio::time::sleep(Duration::from_secs(5)).await;

    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let mut device = connect_v3(&engine, "RESTARTED", "restarted")
        .await
        .map_err(|c| anyhow::anyhow!("connect: {c:?}"))?;
    device.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?;
    let (topic, body) = next(&mut device).await?;
    assert_eq!(body, json!({"method": "afterRestart", "params": {"n": 1}}));
    let n = topic.rsplit('/').next().context("an id")?.to_owned();
    device
        .publish(&format!("v1/devices/me/rpc/response/{n}"), "{}")
        .await?;
    record_with(&rest, &queued, "SUCCESSFUL").await?;
    // The one that expired while the engine was down is marked so, and never sent.
    record_with(&rest, &gone, "EXPIRED").await?;
    assert!(device.next_publish(Duration::from_secs(1)).await?.is_none());
    Ok(())
}

/// A device played packet by packet: it acknowledges only when the test says so.
struct Silent {
    raw: tests::mqtt::raw::Raw,
}

impl Silent {
    /// Connects as `token` (MQTT 3.1.1) and subscribes to RPC requests at `qos`.
    async fn subscribed(engine: &Engine, token: &str, qos: u8) -> Result<Silent> {
        use tests::mqtt::raw;
        let mut raw = raw::Raw::open(engine).await?;
        raw.send(&raw::connect(4, token)).await?;
        let connack = raw.packet().await?.context("closed at CONNECT")?;
        anyhow::ensure!(raw::connack_code(&connack) == Some(0), "{connack:02x?}");
        raw.send(&raw::subscribe(false, 1, RPC_REQUESTS, qos))
            .await?;
        let suback = raw.packet().await?.context("closed at SUBSCRIBE")?;
        anyhow::ensure!(suback.last() == Some(&qos), "{suback:02x?}");
        Ok(Silent { raw })
    }

    /// The next RPC request: its id, body and packet id (`None` at QoS 0).
    async fn request(&mut self) -> Result<(String, Value, Option<u16>)> {
        use tests::mqtt::raw;
        let packet = self.raw.packet().await?.context("closed")?;
        let (topic, body) = raw::published(false, &packet).context("not a PUBLISH")?;
        let n = topic
            .strip_prefix("v1/devices/me/rpc/request/")
            .with_context(|| format!("not a request: {topic}"))?
            .to_owned();
        Ok((n, serde_json::from_slice(&body)?, raw::publish_id(&packet)))
    }

    async fn ack(&mut self, packet_id: Option<u16>) -> Result<()> {
        let id = packet_id.context("a QoS 1 request has a packet id")?;
        self.raw.send(&tests::mqtt::raw::puback_of(id)).await
    }

    async fn reply(&mut self, n: &str, body: &str) -> Result<()> {
        let topic = format!("v1/devices/me/rpc/response/{n}");
        self.raw
            .send(&tests::mqtt::raw::publish(
                false,
                topic.as_bytes(),
                None,
                body.as_bytes(),
            ))
            .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_rpc_follows_the_devices_acknowledgements() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Acknowledgements may take their time: what is SENT stays SENT until the PUBACK.
    let env = [("ENGINE_MQTT__RPC_ACK_TIMEOUT", "1h")];
    let mut engine = Engine::start_with(dir.path(), &env)?;
    let rest = engine.rest().await?;
    let id = rest.create_device("acking", "ACKING").await?;
    let mut device = Silent::subscribed(&engine, "ACKING", 1).await?;

    // Two-way: SENT when written, DELIVERED at the PUBACK, SUCCESSFUL with the reply.
    let twoway = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "setY", "params": {"y": 2}, "persistent": true, "timeout": 600000}),
    )
    .await?;
    let (n, body, packet) = device.request().await?;
    assert_eq!(body, json!({"method": "setY", "params": {"y": 2}}));
    record_with(&rest, &twoway, "SENT").await?;
    device.ack(packet).await?;
    record_with(&rest, &twoway, "DELIVERED").await?;
    device.reply(&n, r#"{"y":2}"#).await?;
    let record = record_with(&rest, &twoway, "SUCCESSFUL").await?;
    assert_eq!(record["response"], json!({"y": 2}));

    // One-way: SENT, then DELIVERED at the PUBACK, where it ends; a second PUBACK of the
    // same packet changes nothing.
    let oneway = persist(
        &rest,
        &format!("/api/rpc/oneway/{id}"),
        json!({"method": "blink", "persistent": true, "timeout": 600000}),
    )
    .await?;
    let (_, body, packet) = device.request().await?;
    assert_eq!(body["method"], "blink");
    record_with(&rest, &oneway, "SENT").await?;
    device.ack(packet).await?;
    device.ack(packet).await?;
    record_with(&rest, &oneway, "DELIVERED").await?;

    // A device subscribed at QoS 0 acknowledges nothing: written is delivered.
    let qos0_id = rest.create_device("qos0", "QOS0").await?;
    let mut qos0 = Silent::subscribed(&engine, "QOS0", 0).await?;
    let fire = persist(
        &rest,
        &format!("/api/rpc/oneway/{qos0_id}"),
        json!({"method": "fire", "persistent": true, "timeout": 600000}),
    )
    .await?;
    let (_, body, packet) = qos0.request().await?;
    assert_eq!((body["method"].clone(), packet), (json!("fire"), None));
    record_with(&rest, &fire, "DELIVERED").await?;

    // Written, never acknowledged, and the engine restarts: sent again after the restart
    // (ThingsBoard reloads only QUEUED requests, and would leave this one SENT for good).
    let unacked = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "unacked", "persistent": true, "timeout": 600000}),
    )
    .await?;
    assert_eq!(device.request().await?.1["method"], "unacked");
    record_with(&rest, &unacked, "SENT").await?;
    drop(device);
    drop(qos0);
    assert!(engine.terminate()?.success());
    let engine = Engine::start_with(dir.path(), &env)?;
    let rest = engine.rest().await?;
    let mut device = Silent::subscribed(&engine, "ACKING", 1).await?;
    let (n, body, packet) = device.request().await?;
    assert_eq!(body["method"], "unacked");
    device.ack(packet).await?;
    device.reply(&n, "{}").await?;
    record_with(&rest, &unacked, "SUCCESSFUL").await?;
    // Finished requests are not sent again: the one-way one delivered before the restart, the
    // answered two-way one.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), device.request())
            .await
            .is_err(),
        "nothing more is sent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unacknowledged_persistent_rpc_times_out_then_fails_past_its_retries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_MQTT__RPC_ACK_TIMEOUT", "1s")])?;
    let rest = engine.rest().await?;
    let id = rest.create_device("deaf", "DEAF").await?;
    let mut device = Silent::subscribed(&engine, "DEAF", 1).await?;

    // retries 1: the first unacknowledged send is a TIMEOUT, and it is not sent again on the
    // same connection (BURST; MQTT 5 forbids it).
    let once = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "once", "persistent": true, "retries": 1, "timeout": 600000}),
    )
    .await?;
    assert_eq!(device.request().await?.1["method"], "once");
    let record = record_with(&rest, &once, "TIMEOUT").await?;
    assert_eq!(record["request"]["retries"], 1);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), device.request())
            .await
            .is_err(),
        "not sent again on the same connection"
    );
    // The device reconnects: sent again; unacknowledged again, one more than its retries:
    // FAILED, with ThingsBoard's message.
    drop(device);
    let mut device = Silent::subscribed(&engine, "DEAF", 1).await?;
    assert_eq!(device.request().await?.1["method"], "once");
    let record = record_with(&rest, &once, "FAILED").await?;
    assert_eq!(
        record["response"],
        json!({"error": "There was a Timeout and all retry attempts have been exhausted. Retry attempts set: 1"})
    );

    // retries 0: failed at the first timeout; a late PUBACK changes nothing. A reply to the
    // failed request is ignored, as to any finished one.
    let none = persist(
        &rest,
        &format!("/api/rpc/twoway/{id}"),
        json!({"method": "none", "persistent": true, "retries": 0, "timeout": 600000}),
    )
    .await?;
    let (n, body, packet) = device.request().await?;
    assert_eq!(body["method"], "none");
    record_with(&rest, &none, "FAILED").await?;
    device.ack(packet).await?;
    device.reply(&n, "{}").await?;
    // A request on the same connection still goes through, acknowledged in time.
    let fine = persist(
        &rest,
        &format!("/api/rpc/oneway/{id}"),
        json!({"method": "fine", "persistent": true, "timeout": 600000}),
    )
    .await?;
    let (_, body, packet) = device.request().await?;
    assert_eq!(body["method"], "fine");
    device.ack(packet).await?;
    record_with(&rest, &fine, "DELIVERED").await?;
    let record = rest.json(&format!("/api/rpc/persistent/{none}")).await?;
    assert_eq!(record["status"], "FAILED", "{record}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_devices_take_rpc_and_shared_attribute_updates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest
        .create_device("five-downlinks", "FIVE_DOWNLINKS")
        .await?;
    let mut device = tests::mqtt::v5::connect(&engine, "FIVE_DOWNLINKS", "five-downlinks")
        .await
        .map_err(|c| anyhow::anyhow!("connect: {c:?}"))?;
    assert_eq!(device.subscribe(ATTRIBUTES).await?, [1]);
    assert_eq!(device.subscribe(RPC_REQUESTS).await?, [1]);
    let call = rpc(
        &rest,
        format!("/api/rpc/twoway/{id}"),
        json!({"method": "m5", "params": {"v": 5}, "timeout": 20000}),
    );
    let (topic, body) = device.next_publish(WAIT).await?.context("no request")?;
    assert!(topic.starts_with("v1/devices/me/rpc/request/"), "{topic}");
    assert_eq!(
        serde_json::from_slice::<Value>(&body)?,
        json!({"method": "m5", "params": {"v": 5}})
    );
    let n = topic.rsplit('/').next().context("an id")?.to_owned();
    assert_eq!(
        device
            .publish(&format!("v1/devices/me/rpc/response/{n}"), r#"{"ok":5}"#)
            .await?,
        Outcome::Acked(0)
    );
    assert_eq!(call.await??, (200, r#"{"ok":5}"#.to_owned()));
    let r = rest
        .post(&format!("/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE"))
        .json(&json!({"k": 5}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let (topic, body) = device.next_publish(WAIT).await?.context("no update")?;
    assert_eq!(topic, ATTRIBUTES);
    assert_eq!(serde_json::from_slice::<Value>(&body)?, json!({"k": 5}));
    Ok(())
}

/// Runs mosquitto_sub with the reference's arguments (plus the test's port, `-C 1` to stop
/// after one message and `-W` as a bound) until it exits: its output.
fn mosquitto_sub(engine: &Engine, args: &[&str]) -> Result<std::process::Child> {
    let port = engine.mqtt.port().to_string();
    std::process::Command::new("mosquitto_sub")
        .args(args)
        .args(["-p", &port, "-C", "1", "-W", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("mosquitto_sub is not installed (Debian package mosquitto-clients)")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_references_mosquitto_command_lines_take_the_way_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.rest().await?;
    let id = rest
        .create_device("mosquitto-device", "MOSQUITTO_TOKEN")
        .await?;

    // The MQTT guide's command line for shared attribute updates.
    let mut sub = mosquitto_sub(
        &engine,
        &[
            "-d",
            "-h",
            "127.0.0.1",
            "-t",
            "v1/devices/me/attributes",
            "-u",
            "MOSQUITTO_TOKEN",
        ],
    )?;
    let deadline = Instant::now() + WAIT;
    while sub.try_wait()?.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "mosquitto_sub got nothing");
        let r = rest
            .post(&format!("/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE"))
            .json(&json!({"attribute1": "value1", "attribute2": true}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = sub.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l == r#"{"attribute1":"value1","attribute2":true}"#),
        "{text}"
    );

    // RPC: mosquitto_sub takes the request, mosquitto_pub answers it.
    let sub = mosquitto_sub(
        &engine,
        &[
            "-h",
            "127.0.0.1",
            "-t",
            "v1/devices/me/rpc/request/+",
            "-u",
            "MOSQUITTO_TOKEN",
            "-v",
        ],
    )?;
    let call = rpc(
        &rest,
        format!("/api/rpc/twoway/{id}"),
        json!({"method": "getTemp", "params": {}, "timeout": 30000}),
    );
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output()).await??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (topic, body) = text.trim().split_once(' ').context("topic and payload")?;
    assert_eq!(
        serde_json::from_str::<Value>(body)?,
        json!({"method": "getTemp", "params": {}})
    );
    let n = topic.rsplit('/').next().context("an id")?;
    let (code, output) = tests::mosquitto_pub(
        &engine,
        &[
            "-d",
            "-q",
            "1",
            "-t",
            &format!("v1/devices/me/rpc/response/{n}"),
            "-u",
            "MOSQUITTO_TOKEN",
            "-m",
            r#"{"temperature":21}"#,
        ],
    )?;
    assert_eq!(code, 0, "{output}");
    assert_eq!(call.await??, (200, r#"{"temperature":21}"#.to_owned()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_of_the_way_back_does_not_cut_devices_off() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_HTTP__MAX_REQUEST_TIMEOUT", "3s")])?;
    let rest = engine.rest().await?;
    let (id, mut device) = device(&engine, &rest, "abused").await?;
    device.subscribe(ATTRIBUTES, QoS::AtLeastOnce).await?;
    device.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?;
    until_subscribed(&rest, &mut device, &id).await?;
    let http = reqwest::Client::new();

    // More long polls than a device may have sessions: the MQTT connection keeps its own.
    let polls: Vec<_> = (0..24)
        .map(|_| {
            let request = http.get(engine.url("/api/v1/ABUSED/attributes/updates?timeout=1000"));
            tokio::spawn(answer(request))
        })
        .collect();
    for poll in polls {
        assert_eq!(poll.await??.0, 408);
    }
    let call = rpc(
        &rest,
        format!("/api/rpc/twoway/{id}"),
        json!({"method": "still", "params": {}, "timeout": 20000}),
    );
    let (topic, body) = next(&mut device).await?;
    assert_eq!(body["method"], "still");
    let n = topic.rsplit('/').next().context("an id")?.to_owned();
    device
        .publish(&format!("v1/devices/me/rpc/response/{n}"), "{}")
        .await?;
    assert_eq!(call.await??.0, 200);
    let r = rest
        .post(&format!("/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE"))
        .json(&json!({"after_polls": 1}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(next(&mut device).await?.1, json!({"after_polls": 1}));

    // A call waits at most http.max_request_timeout (3 s here): 64 calls of a very long
    // timeout to an offline device end (504) and give the device's places back.
    let offline = rest.create_device("abandoned", "ABANDONED").await?;
    let long: Vec<_> = (0..64)
        .map(|_| {
            rpc(
                &rest,
                format!("/api/rpc/twoway/{offline}"),
                json!({"method": "m", "params": {}, "timeout": 1_000_000_000_000i64}),
            )
        })
        .collect();
    for call in long {
        assert_eq!(call.await??.0, 504);
    }
    let r = rest
        .post(&format!("/api/rpc/twoway/{offline}"))
        .json(&json!({"method": "m", "params": {}, "timeout": 1}))
        .send()
        .await?;
    assert_eq!(r.status(), 504);

    // The same requestUUID at once: one is stored, the others are refused.
    let uuid = "5a1c0de0-0000-4000-8000-00000000abcd";
    let calls: Vec<_> = (0..10)
        .map(|_| {
            rpc(
                &rest,
                format!("/api/rpc/oneway/{offline}"),
                json!({"method": "once", "persistent": true, "requestUUID": uuid}),
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await??.0);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400, 400, 400, 400, 400, 400, 400, 400, 400]);
    // additionalInfo nested deeper than it can be read back: 400, not stored and lost.
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let r = rest
        .post(&format!("/api/rpc/oneway/{offline}"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"method":"m","persistent":true,"additionalInfo":{deep}}}"#
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    Ok(())
}

/// A device that stops reading, floods requests whose answers fill its channel, then vanishes
/// (its socket reset): the engine lets the connection go, though it had stopped reading it.
/// Its own connection and one of a gateway alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_stops_reading_and_vanishes_is_let_go() -> Result<()> {
    use tests::mqtt::raw;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), &[("ENGINE_MQTT__WRITE_TIMEOUT", "3s")])?;
    let rest = engine.rest().await?;
    let id = rest.create_device("vanishing", "VANISHING").await?;
    let r = rest
        .post(&format!(
            "/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE"
        ))
        .json(&json!({"big": "z".repeat(30_000)}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = rest
        .post("/api/device?accessToken=VANISHING_GW")
        .json(&json!({"name": "vanishing-gw", "additionalInfo": {"gateway": true}}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let cases = [
        (
            "VANISHING",
            (1..400)
                .map(|i| {
                    raw::publish(
                        true,
                        format!("v1/devices/me/attributes/request/{i}").as_bytes(),
                        Some(i),
                        br#"{"sharedKeys":"big"}"#,
                    )
                })
                .collect::<Vec<_>>(),
        ),
        (
            "VANISHING_GW",
            (1..400)
                .map(|i| {
                    raw::publish(
                        true,
                        b"v1/gateway/attributes/request",
                        Some(i),
                        br#"{"id":1,"device":"vanishing","client":false,"key":"big"}"#,
                    )
                })
                .collect(),
        ),
    ];
    for (token, requests) in cases {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut stream = socket.connect(engine.mqtt).await?;
        stream
            .write_all(&raw::connect_keep_alive(5, token, 5))
            .await?;
        engine
            .wait_for_sample("engine_mqtt_connections_open", WAIT, |n| n == 1.0)
            .await?;
        // As many requests as the engine reads before it stops reading (its answers wait for
        // a device that does not read).
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for request in &requests {
                if stream.write_all(request).await.is_err() {
                    return;
                }
            }
        })
        .await;
        // Gone, with unread data in its buffer: closing resets the connection.
        drop(stream);
        engine
            .wait_for_sample(
                "engine_mqtt_connections_open",
                Duration::from_secs(60),
                |n| n == 0.0,
            )
            .await
            .with_context(|| format!("{token}'s connection was kept"))?;
    }
    // The device connects again as usual.
    let mut device = connect_v3(&engine, "VANISHING", "vanishing-again")
        .await
        .map_err(|c| anyhow::anyhow!("connect: {c:?}"))?;
    assert!(matches!(
        device
            .publish("v1/devices/me/telemetry", r#"{"t":1}"#)
            .await?,
        Outcome::Acked(_)
    ));
    Ok(())
}

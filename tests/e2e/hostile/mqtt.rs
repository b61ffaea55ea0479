//! Hostile input: MQTT. Raw sockets with hand-built packets (what client libraries refuse to
//! send), each case checking the exact bytes of the answer (CONNACK code, DISCONNECT reason, or
//! the socket closing without a PUBACK), while a well-behaved device connected beside the
//! attack keeps publishing and its data is stored.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::json;
use tests::mqtt::raw::{self, Raw};
use tests::mqtt::{Device3, Outcome, connect_v3};
use tests::{Engine, Rest};

use super::{rss_below, still_serving};
use crate::SETTLE;
use crate::mqtt_device_api::metric_at_least;

const TELEMETRY: &str = "v1/devices/me/telemetry";
const TOKEN: &str = "HOSTILE";

/// A well-behaved device connected through the attack: it must keep getting PUBACKs and its
/// data must be stored.
struct Bystander {
    device: Device3,
    id: String,
    sent: i64,
}

impl Bystander {
    async fn join(engine: &Engine, rest: &Rest) -> Result<Bystander> {
        let id = rest.create_device("bystander", "BYSTANDER").await?;
        let device = connect_v3(engine, "BYSTANDER", "bystander")
            .await
            .map_err(|c| anyhow!("bystander refused: {c:?}"))?;
        Ok(Bystander {
            device,
            id,
            sent: 0,
        })
    }

    async fn still_flows(&mut self, rest: &Rest) -> Result<()> {
        self.sent += 1;
        let n = self.sent;
        let outcome = self
            .device
            .publish(TELEMETRY, json!({ "bystander": n }).to_string())
            .await?;
        ensure!(
            outcome == Outcome::Acked(0),
            "bystander publish: {outcome:?}"
        );
        rest.eventually(SETTLE, || async {
            let latest = rest.latest(&self.id).await?;
            Ok((latest["bystander"][0]["value"] == json!(n)).then_some(()))
        })
        .await
        .context("bystander's data stored")
    }
}

/// An engine with the attacker's device (token `HOSTILE`) and a bystander already connected.
async fn arena(env: &[(&str, &str)]) -> Result<(tempfile::TempDir, Engine, Rest, Bystander)> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), env)?;
    let rest = engine.rest().await?;
    rest.create_device("hostile", TOKEN).await?;
    let bystander = Bystander::join(&engine, &rest).await?;
    Ok((dir, engine, rest, bystander))
}

/// Opens a connection, sends CONNECT, and returns it with the server's first answer.
async fn connect(engine: &Engine, packet: &[u8]) -> Result<(Raw, Option<Vec<u8>>)> {
    let mut raw = Raw::open(engine).await?;
    raw.send(packet).await?;
    let answer = raw.packet().await?;
    Ok((raw, answer))
}

/// Opens a session of the attacker's device; fails unless CONNACK accepts it.
async fn session(engine: &Engine, level: u8) -> Result<Raw> {
    session_of(engine, level, TOKEN).await
}

/// Opens a session of the device with this token; fails unless CONNACK accepts it.
async fn session_of(engine: &Engine, level: u8, token: &str) -> Result<Raw> {
    let (raw, answer) = connect(engine, &raw::connect(level, token)).await?;
    let code = answer.as_deref().and_then(raw::connack_code);
    ensure!(
        code == Some(0),
        "CONNACK expected to accept, got {answer:02x?}"
    );
    Ok(raw)
}

async fn metrics(engine: &Engine) -> Result<String> {
    Ok(reqwest::get(engine.url("/metrics")).await?.text().await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsupported_protocol_level_gets_connack_0x01_then_the_close() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    // MQTT 3.1.1 §3.1.2.2: CONNACK 0x01 (unacceptable protocol version), then disconnect. The
    // 3.1.1 form is the one every version's client reads (MQTT 3.1 uses the name MQIsdp).
    let cases = [
        ("MQTT", 0),
        ("MQTT", 1),
        ("MQTT", 2),
        ("MQTT", 3),
        ("MQTT", 6),
        ("MQTT", 7),
        ("MQTT", 255),
        ("MQIsdp", 3),
    ];
    for (name, level) in cases {
        let (mut raw, answer) = connect(&engine, &raw::connect_as(name, level, TOKEN, &[])).await?;
        assert_eq!(
            answer.as_deref(),
            Some(&[0x20, 0x02, 0x00, 0x01][..]),
            "{name} level {level}"
        );
        raw.closed().await?;
    }
    let metrics = metrics(&engine).await?;
    let series =
        r#"engine_connections_refused_total{reason="unsupported_protocol",transport="mqtt"}"#;
    assert!(
        metric_at_least(&metrics, series, 8.0),
        "{series} not counted"
    );
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_connect_closes_the_connection() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    // MQTT 3.1.1 §3.1.0-2: a second CONNECT is a protocol violation; the server disconnects.
    // What was sent after it is not acknowledged.
    let mut v3 = session(&engine, 4).await?;
    let mut after = raw::connect(4, TOKEN);
    after.extend(raw::publish(
        false,
        TELEMETRY.as_bytes(),
        Some(1),
        br#"{"a":1}"#,
    ));
    v3.send(&after).await?;
    v3.closed().await?;

    // MQTT 5: DISCONNECT 0x82 (protocol error).
    let mut v5 = session(&engine, 5).await?;
    let mut after = raw::connect(5, TOKEN);
    after.extend(raw::publish(
        true,
        TELEMETRY.as_bytes(),
        Some(1),
        br#"{"a":1}"#,
    ));
    v5.send(&after).await?;
    let answer = v5.packet().await?;
    assert_eq!(
        answer.as_deref().and_then(raw::disconnect_reason),
        Some(0x82),
        "{answer:02x?}"
    );
    v5.closed().await?;

    let metrics = metrics(&engine).await?;
    let series = r#"engine_mqtt_protocol_errors_total{reason="second_connect"}"#;
    assert!(
        metric_at_least(&metrics, series, 2.0),
        "{series} not counted"
    );
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_to_an_invalid_topic_closes_the_connection() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    // (topic, MQTT 5 DISCONNECT reason): an empty topic without a Topic Alias is a protocol
    // error (MQTT 5 §3.3.2.3.4), U+0000 makes the packet malformed (§1.5.4), wildcards are
    // not allowed in a topic name (§3.3.2-2). MQTT 3.1.1 just closes (§4.7.3, §4.8).
    let cases: [(&[u8], u8); 5] = [
        (b"", 0x82),
        (b"v1/devices/me/telemetry\0", 0x81),
        (b"\0", 0x81),
        (b"v1/devices/+/telemetry", 0x82),
        (b"v1/devices/me/#", 0x82),
    ];
    for (topic, reason) in cases {
        for qos1 in [true, false] {
            let id = qos1.then_some(7);
            let mut v3 = session(&engine, 4).await?;
            v3.send(&raw::publish(false, topic, id, br#"{"a":1}"#))
                .await?;
            v3.closed()
                .await
                .with_context(|| format!("3.1.1, topic {topic:?}, qos1 {qos1}"))?;

            let mut v5 = session(&engine, 5).await?;
            v5.send(&raw::publish(true, topic, id, br#"{"a":1}"#))
                .await?;
            let answer = v5.packet().await?;
            assert_eq!(
                answer.as_deref().and_then(raw::disconnect_reason),
                Some(reason),
                "5, topic {topic:?}, qos1 {qos1}: {answer:02x?}"
            );
            v5.closed().await?;
        }
    }
    let metrics = metrics(&engine).await?;
    for (reason, count) in [
        ("empty_topic", 4.0),
        ("nul_in_topic", 8.0),
        ("wildcard_in_topic", 8.0),
    ] {
        let series = format!(r#"engine_mqtt_protocol_errors_total{{reason="{reason}"}}"#);
        assert!(
            metric_at_least(&metrics, &series, count),
            "{series} not counted"
        );
    }
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsupported_authentication_method_gets_connack_0x8c() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    // MQTT 5 §3.1.2.11.9 / §4.12: enhanced authentication the server does not support is
    // refused with 0x8C (bad authentication method), even with a valid token.
    for method in ["SCRAM-SHA-1", ""] {
        let packet = raw::connect_as("MQTT", 5, TOKEN, &raw::auth_method(method));
        let (mut raw, answer) = connect(&engine, &packet).await?;
        assert_eq!(
            answer.as_deref().and_then(raw::connack_code),
            Some(0x8c),
            "method {method:?}: {answer:02x?}"
        );
        raw.closed().await?;
    }
    // AUTH after a CONNECT without a method is a protocol error (MQTT 5 §4.12).
    let mut v5 = session(&engine, 5).await?;
    v5.send(&[0xf0, 0x00]).await?;
    let answer = v5.packet().await?;
    assert_eq!(
        answer.as_deref().and_then(raw::disconnect_reason),
        Some(0x82),
        "{answer:02x?}"
    );
    v5.closed().await?;
    let metrics = metrics(&engine).await?;
    let series = r#"engine_connections_refused_total{reason="bad_auth_method",transport="mqtt"}"#;
    assert!(
        metric_at_least(&metrics, series, 2.0),
        "{series} not counted"
    );
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_connecting_again_takes_over_its_session() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    // ThingsBoard keeps one session per device (actors.session.max_concurrent_sessions_per_device
    // = 1)
    // and closes the older one: MQTT 5 gets DISCONNECT 0x8E (session taken over).
    let mut old = session(&engine, 4).await?;
    let mut new = session(&engine, 4).await?;
    old.closed().await?;
    new.send(&raw::publish(
        false,
        TELEMETRY.as_bytes(),
        Some(1),
        br#"{"kept":1}"#,
    ))
    .await?;
    assert_eq!(new.packet().await?, Some(vec![0x40, 0x02, 0x00, 0x01]));

    let mut old5 = session(&engine, 5).await?;
    let answer = new.packet().await?;
    assert_eq!(
        answer, None,
        "the 3.1.1 session is closed by the MQTT 5 one"
    );
    let _new5 = session(&engine, 5).await?;
    let answer = old5.packet().await?;
    assert_eq!(
        answer.as_deref().and_then(raw::disconnect_reason),
        Some(0x8e),
        "{answer:02x?}"
    );
    old5.closed().await?;

    // The probe's case: hundreds of connections with one token no longer pile up.
    let mut all = Vec::new();
    for _ in 0..300 {
        all.push(session(&engine, 4).await?);
    }
    let last = all.pop().context("connections")?;
    for mut raw in all {
        raw.closed().await?;
    }
    let metrics = metrics(&engine).await?;
    let series = r#"engine_mqtt_sessions_taken_over_total"#;
    assert!(
        metric_at_least(&metrics, series, 301.0),
        "{series} not counted"
    );
    drop(last);
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_refused_and_memory_stays_bounded() -> Result<()> {
    const CAP: usize = 50;
    let (_dir, engine, rest, mut bystander) = arena(&[
        ("ENGINE_MQTT__MAX_CONNECTIONS", "50"),
        ("ENGINE_MQTT__MAX_CONNECTIONS_PER_DEVICE", "10000"),
    ])
    .await?;
    // The bystander holds one place; idle sessions of one token fill the others.
    let mut idle = Vec::new();
    for _ in 1..CAP {
        idle.push(session(&engine, 4).await?);
    }
    let before = engine.rss_kib()?;
    // Past the cap: CONNACK 0x03 (server unavailable) / MQTT 5 0x97 (quota exceeded), then
    // the close; 5,000 attempts, 50 at a time.
    const ATTEMPTS: usize = 5_000;
    for batch in 0..ATTEMPTS / 50 {
        let mut attempts = tokio::task::JoinSet::new();
        for i in 0..50 {
            let level = if (batch + i) % 2 == 0 { 4 } else { 5 };
            attempts.spawn(refused(engine.mqtt, level));
        }
        while let Some(result) = attempts.join_next().await {
            result??;
        }
    }
    // Measured before the checks below log in again (one Argon2 hash takes 19 MiB).
    eprintln!(
        "engine RSS with {CAP} sessions: {before} KiB; after {ATTEMPTS} refused connections: {} KiB",
        engine.rss_kib()?
    );
    rss_below(&engine, before / 1024 + 32)?;
    let metrics = metrics(&engine).await?;
    let series = r#"engine_connections_refused_total{reason="max_connections",transport="mqtt"}"#;
    assert!(
        metric_at_least(&metrics, series, ATTEMPTS as f64),
        "{series} not counted"
    );
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await?;

    // A place freed is a place taken again.
    drop(idle.pop());
    rest.eventually(SETTLE, || async {
        let (_raw, answer) = connect(&engine, &raw::connect(4, TOKEN)).await?;
        Ok((answer.as_deref().and_then(raw::connack_code) == Some(0)).then_some(()))
    })
    .await?;
    Ok(())
}

/// One connection past the cap: CONNACK 0x03 (MQTT 3.1.1) or 0x97 (MQTT 5), then the close.
async fn refused(mqtt: std::net::SocketAddr, level: u8) -> Result<()> {
    let mut raw = Raw::open_at(mqtt).await?;
    raw.send(&raw::connect(level, TOKEN)).await?;
    let answer = raw.packet().await?;
    let want = if level == 4 { 0x03 } else { 0x97 };
    ensure!(
        answer.as_deref().and_then(raw::connack_code) == Some(want),
        "level {level}: {answer:02x?}"
    );
    raw.closed().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_nothing_or_dribbles_is_closed_at_connect_timeout() -> Result<()> {
    let (_dir, engine, rest, mut bystander) =
        arena(&[("ENGINE_MQTT__CONNECT_TIMEOUT", "1s")]).await?;
    // Silent: closed without an answer.
    let mut silent = Raw::open(&engine).await?;
    silent.closed().await?;

    // Dribbling: one byte every 250 ms would take several times the timeout; the server
    // closes before the CONNECT is complete, and never answers it.
    let connect = raw::connect(4, TOKEN);
    let mut dribbler = Raw::open(&engine).await?;
    let mut cut = false;
    for byte in &connect {
        if dribbler.send(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !cut {
        dribbler.closed().await?;
    }
    let metrics = metrics(&engine).await?;
    let series = r#"engine_mqtt_protocol_errors_total{reason="timeout"}"#;
    assert!(
        metric_at_least(&metrics, series, 2.0),
        "{series} not counted"
    );
    // The same CONNECT sent at once is accepted.
    session(&engine, 4).await?;
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_triggered_warnings_are_rate_limited_and_escaped() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    let mut device = connect_v3(&engine, TOKEN, "noisy")
        .await
        .map_err(|c| anyhow!("{c:?}"))?;
    // A topic that would forge a log line if written raw.
    let forged = "x\n2099-01-01T00:00:00.000000Z ERROR forged line";
    assert_eq!(device.publish(forged, "{}").await?, Outcome::Acked(0));
    const FLOOD: usize = 500;
    for _ in 0..FLOOD {
        assert_eq!(
            device.publish("v1/devices/me/nowhere", "{}").await?,
            Outcome::Acked(0)
        );
    }
    // What was held back is reported once the budget refills.
    rest.eventually(SETTLE, || async {
        device.send("v1/devices/me/nowhere", "{}").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(engine.log().contains("suppressed").then_some(()))
    })
    .await
    .context("no line reports the suppressed warnings")?;

    let log = engine.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("publish to an unsupported topic ignored"))
        .count();
    assert!(
        warned < FLOOD / 10,
        "{warned} warnings for {FLOOD} publishes to an unknown topic"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2099-01-01")),
        "a topic forged a log line"
    );
    assert!(log.contains(r"x\n2099"), "the topic is logged escaped");
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

/// Reads packets until one that is not a PINGRESP (or the close).
async fn next_not_pong(raw: &mut Raw) -> Result<Option<Vec<u8>>> {
    loop {
        match raw.packet().await? {
            Some(packet) if packet.first() == Some(&0xd0) => continue,
            other => return Ok(other),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_closes_a_silent_session_and_pings_keep_one_open() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    // [MQTT-3.1.2-24]: no packet for one and a half keep-alive periods closes the connection;
    // MQTT 5 says why first (DISCONNECT 0x8D).
    let (mut v3, answer) = connect(&engine, &raw::connect_keep_alive(4, TOKEN, 1)).await?;
    ensure!(answer.as_deref().and_then(raw::connack_code) == Some(0));
    v3.closed()
        .await
        .context("3.1.1 closed after its keep-alive")?;
    let (mut v5, answer) = connect(&engine, &raw::connect_keep_alive(5, TOKEN, 1)).await?;
    ensure!(answer.as_deref().and_then(raw::connack_code) == Some(0));
    let goodbye = v5.packet().await?;
    assert_eq!(
        goodbye.as_deref().and_then(raw::disconnect_reason),
        Some(0x8d),
        "{goodbye:02x?}"
    );
    v5.closed().await?;

    // A device that pings well within its keep-alive (2 s, so 3 s of silence) stays connected
    // through several periods and still publishes.
    let (mut pinger, answer) = connect(&engine, &raw::connect_keep_alive(4, TOKEN, 2)).await?;
    ensure!(answer.as_deref().and_then(raw::connack_code) == Some(0));
    for _ in 0..10 {
        pinger.send(&raw::PINGREQ).await?;
        let pong = pinger.packet().await?;
        assert_eq!(pong.as_deref(), Some(&[0xd0, 0x00][..]), "PINGRESP");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pinger
        .send(&raw::publish(
            false,
            TELEMETRY.as_bytes(),
            Some(3),
            br#"{"pinged":1}"#,
        ))
        .await?;
    let ack = next_not_pong(&mut pinger).await?;
    assert_eq!(
        ack.as_deref(),
        Some(&[0x40, 0x02, 0x00, 0x03][..]),
        "PUBACK"
    );

    let metrics = metrics(&engine).await?;
    let series = r#"engine_mqtt_protocol_errors_total{reason="timeout"}"#;
    assert!(
        metric_at_least(&metrics, series, 2.0),
        "{series} not counted"
    );
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_topic_aliases_are_resolved_and_bounded() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    let id = rest.create_device("aliased", "ALIASED").await?;
    // Alias 1 set with the topic, then used alone: both stored.
    let mut v5 = session_of(&engine, 5, "ALIASED").await?;
    let alias = raw::topic_alias(1);
    v5.send(&raw::publish5(
        TELEMETRY.as_bytes(),
        1,
        1,
        &alias,
        br#"{"aliased":1}"#,
    ))
    .await?;
    v5.send(&raw::publish5(b"", 1, 2, &alias, br#"{"aliased":2}"#))
        .await?;
    for want in [1, 2] {
        let ack = v5.packet().await?;
        assert_eq!(
            ack.as_deref().and_then(raw::puback),
            Some((want, 0)),
            "{ack:02x?}"
        );
    }
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(&id).await?;
        Ok((latest["aliased"][0]["value"] == json!(2)).then_some(()))
    })
    .await
    .context("the publish by alias stored")?;

    // CONNACK offers 32 aliases: 33 is invalid, and so is an alias never set (0x94).
    let cases: [(&[u8], u16); 2] = [(TELEMETRY.as_bytes(), 33), (b"", 5)];
    for (topic, alias) in cases {
        let mut v5 = session(&engine, 5).await?;
        v5.send(&raw::publish5(
            topic,
            1,
            1,
            &raw::topic_alias(alias),
            br#"{"a":1}"#,
        ))
        .await?;
        let answer = v5.packet().await?;
        assert_eq!(
            answer.as_deref().and_then(raw::disconnect_reason),
            Some(0x94),
            "alias {alias}: {answer:02x?}"
        );
        v5.closed().await?;
    }
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_qos2_and_oversized_packets_get_their_reason_codes() -> Result<()> {
    let (_dir, engine, rest, mut bystander) =
        arena(&[("ENGINE_MQTT__MAX_PAYLOAD_SIZE", "1KiB")]).await?;
    // CONNACK says Maximum QoS 1: a QoS 2 PUBLISH is refused with 0x9B [MQTT-3.2.2-11].
    let mut v5 = session(&engine, 5).await?;
    v5.send(&raw::publish5(
        TELEMETRY.as_bytes(),
        2,
        1,
        &[],
        br#"{"q":2}"#,
    ))
    .await?;
    let answer = v5.packet().await?;
    assert_eq!(
        answer.as_deref().and_then(raw::disconnect_reason),
        Some(0x9b),
        "{answer:02x?}"
    );
    v5.closed().await?;

    // A packet over the frame limit (the payload limit plus 64 KiB) is not read: 3.1.1 closes,
    // MQTT 5 says 0x95 first. The server may close before the client wrote it all.
    let huge = vec![b'x'; 70 * 1024];
    for level in [4, 5] {
        let mut raw = session(&engine, level).await?;
        let publish = raw::publish(level == 5, TELEMETRY.as_bytes(), Some(1), &huge);
        let _ = raw.send(&publish).await;
        let answer = raw.packet().await?;
        if let Some(packet) = &answer {
            assert_eq!(
                raw::disconnect_reason(packet).filter(|_| level == 5),
                Some(0x95),
                "level {level}: {packet:02x?}"
            );
            raw.closed().await?;
        }
    }
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_arriving_in_pieces_is_stored_once_whole() -> Result<()> {
    let (_dir, engine, rest, mut bystander) = arena(&[]).await?;
    let id = rest.create_device("pieces", "PIECES").await?;
    for level in [4u8, 5] {
        let mut raw = session_of(&engine, level, "PIECES").await?;
        let payload = json!({ "pieces": level, "pad": "y".repeat(3000) }).to_string();
        let publish = raw::publish(
            level == 5,
            TELEMETRY.as_bytes(),
            Some(9),
            payload.as_bytes(),
        );
        // The header, then the payload in three parts, each after a pause.
        let cut = [
            0,
            20,
            40 + payload.len() / 3,
            40 + 2 * payload.len() / 3,
            publish.len(),
        ];
        for part in cut.windows(2) {
            raw.send(&publish[part[0]..part[1]]).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ack = raw.packet().await?;
        assert_eq!(
            ack.as_deref().and_then(raw::puback).map(|(id, _)| id),
            Some(9),
            "level {level}: {ack:02x?}"
        );
        rest.eventually(SETTLE, || async {
            let latest = rest.latest(&id).await?;
            Ok((latest["pieces"][0]["value"] == json!(level)).then_some(()))
        })
        .await
        .with_context(|| format!("level {level}: the publish stored"))?;
    }
    bystander.still_flows(&rest).await?;
    still_serving(&engine).await
}

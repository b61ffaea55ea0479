//! Hostile clients of the HTTP listener (device API first): bodies and headers sent a byte at a
//! time, unknown tokens with huge bodies, oversized bodies, odd content types, and more
//! connections than the listener takes. Each case checks the status line a client gets, that
//! the connection is let go, and that the engine keeps serving everyone else.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tests::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::still_serving;
use crate::SETTLE;

/// How long a test waits for something that must happen, so a broken engine fails the test
/// instead of hanging it. Never a measure of speed: every wait here ends on an event.
const HANG: Duration = Duration::from_secs(60);
/// Pause between two dribbled bytes.
const PACE: Duration = Duration::from_millis(200);

/// Short limits so the cases run quickly; the defaults are the same mechanism, only longer.
const FAST: &[(&str, &str)] = &[
    ("ENGINE_HTTP__HEADER_TIMEOUT", "1s"),
    ("ENGINE_HTTP__BODY_TIMEOUT", "1s"),
];

/// An answer read off a raw socket: the status code and the head's lines.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response head, then its body when it declares a length. `None`: the server
/// closed the connection without answering.
async fn read_answer(reader: &mut OwnedReadHalf) -> Result<Reply> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match reader.read(&mut byte).await {
            Ok(0) | Err(_) if buf.is_empty() => return Ok(None),
            Ok(0) => bail!("connection closed inside a response head: {buf:?}"),
            Ok(_) => buf.push(byte[0]),
            Err(e) => bail!("read failed inside a response head: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let answer = Answer { status, head };
    let length: usize = answer
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(Some((answer, body)))
}

/// Whether the server closes the connection (EOF or reset) before `HANG` passes.
async fn closed(reader: &mut OwnedReadHalf) -> bool {
    let mut rest = [0u8; 1024];
    let drained = async {
        loop {
            match reader.read(&mut rest).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(HANG, drained).await.is_ok()
}

/// A response head and body, or `None` when the server closed without answering.
type Reply = Option<(Answer, Vec<u8>)>;

/// Sends `bytes` one per [`PACE`] on `writer`, watching `reader` for an answer all the while.
/// Returns the answer and how many bytes had been sent when it came; sending stops at the
/// answer or when the socket fails. The writer stays open: closing it would end the request.
async fn dribble_on(
    mut reader: OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    bytes: &[u8],
) -> Result<(Reply, usize, OwnedReadHalf)> {
    let watch = tokio::spawn(async move {
        let answer = read_answer(&mut reader).await;
        (answer, reader)
    });
    let mut sent = 0;
    for byte in bytes {
        if watch.is_finished() || writer.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(PACE).await;
    }
    let (answer, reader) = tokio::time::timeout(HANG, watch)
        .await
        .context("no answer and no close after the whole dribble")??;
    Ok((answer?, sent, reader))
}

/// Connects, sends `head` at once, then dribbles `bytes` (see [`dribble_on`]).
async fn dribble(
    engine: &Engine,
    head: &[u8],
    bytes: &[u8],
) -> Result<(Reply, usize, OwnedReadHalf)> {
    let stream = TcpStream::connect(engine.http).await?;
    let (reader, mut writer) = stream.into_split();
    writer.write_all(head).await?;
    dribble_on(reader, &mut writer, bytes).await
}

fn post_head(path: &str, extra: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n{extra}\r\n")
        .into_bytes()
}

/// Starts the engine with `env` and a device with token `TOKEN`; returns it with the device id.
async fn engine_with_device(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<(Engine, String)> {
    let engine = Engine::start_with(dir, env)?;
    let id = engine
        .rest()
        .await?
        .create_device("hostile-http", "TOKEN")
        .await?;
    Ok((engine, id))
}

/// A normal upload on a fresh connection works: the engine serves others during an attack.
async fn upload_works(engine: &Engine, value: i64) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(engine.url("/api/v1/TOKEN/telemetry"))
        .json(&json!({ "other": value }))
        .send()
        .await?;
    ensure!(
        resp.status() == 200,
        "a normal upload got {}",
        resp.status()
    );
    Ok(())
}

async fn metrics(engine: &Engine) -> Result<String> {
    Ok(reqwest::get(engine.url("/metrics")).await?.text().await?)
}

/// The value of one series (`name{a="x",b="y"}`, labels in any order), 0 when absent.
fn metric(exposition: &str, series: &str) -> f64 {
    fn split(series: &str) -> (&str, Vec<&str>) {
        match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                (name, labels)
            }
            None => (series, Vec::new()),
        }
    }
    let want = split(series);
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (split(key) == want).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A body sent one byte every 200 ms is answered 408 once `http.body_timeout` has passed, long
/// before the body would be complete, and the connection is closed; other devices are served
/// meanwhile. (Before: the request stayed open as long as the client kept dribbling.)
#[tokio::test(flavor = "multi_thread")]
async fn a_dribbled_body_is_answered_408() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, _) = engine_with_device(dir.path(), FAST).await?;
    let body = format!(r#"{{"slow":"{}"}}"#, "x".repeat(200));
    let cases = [
        format!("Content-Length: {}\r\n", body.len()),
        "Transfer-Encoding: chunked\r\n".to_owned(),
    ];
    for extra in cases {
        let dribbled = if extra.contains("chunked") {
            // One-byte chunks: "1\r\nX\r\n" each.
            body.bytes()
                .flat_map(|b| [b'1', b'\r', b'\n', b, b'\r', b'\n'])
                .collect()
        } else {
            body.clone().into_bytes()
        };
        let check = async {
            upload_works(&engine, 1).await?;
            Ok::<_, anyhow::Error>(())
        };
        let head = post_head("/api/v1/TOKEN/telemetry", &extra);
        let ((answer, sent, mut reader), ()) =
            tokio::try_join!(dribble(&engine, &head, &dribbled), check)?;
        let (answer, _) = answer.with_context(|| format!("{extra}: closed without an answer"))?;
        ensure!(answer.status == 408, "{extra}: {answer:?}");
        ensure!(
            sent < dribbled.len(),
            "{extra}: answered only once the whole body was sent"
        );
        ensure!(
            answer
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "{extra}: a 408 closes the connection: {answer:?}"
        );
        ensure!(closed(&mut reader).await, "{extra}: connection kept open");
    }
    let exposition = metrics(&engine).await?;
    ensure!(
        metric(&exposition, r#"engine_http_timeouts_total{phase="body"}"#) >= 2.0,
        "body timeouts are counted"
    );
    still_serving(&engine).await
}

/// The same for a REST body (a login), and for the integration endpoint: every body on the
/// listener is bounded, not only the device API's.
#[tokio::test(flavor = "multi_thread")]
async fn every_dribbled_body_on_the_listener_is_answered_408() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), FAST)?;
    let body = json!({"username": "tenant@thingsboard.org", "password": "tenant"}).to_string();
    for path in ["/api/auth/login", "/api/v1/integrations/http/nokey"] {
        let extra = format!("Content-Length: {}\r\n", body.len() + 100);
        let (answer, sent, _) = dribble(&engine, &post_head(path, &extra), body.as_bytes()).await?;
        let (answer, body_bytes) = answer.with_context(|| format!("{path}: no answer"))?;
        ensure!(answer.status == 408, "{path}: {answer:?}");
        ensure!(sent < body.len(), "{path}: answered after the whole body");
        let error: serde_json::Value = serde_json::from_slice(&body_bytes)?;
        ensure!(error["status"] == json!(408), "{path}: {error}");
    }
    still_serving(&engine).await
}

/// Headers sent a byte at a time are cut off at `http.header_timeout` with a 408, on a new
/// connection and on a kept-alive one after a first request (before: only the first request's
/// headers had a deadline, the next ones could take forever).
#[tokio::test(flavor = "multi_thread")]
async fn dribbled_headers_are_answered_408() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, _) = engine_with_device(dir.path(), FAST).await?;
    let headers: Vec<u8> = format!(
        "POST /api/v1/TOKEN/telemetry HTTP/1.1\r\nHost: engine\r\nX-Slow: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "s".repeat(100)
    )
    .into_bytes();

    let (answer, sent, mut reader) = dribble(&engine, b"", &headers).await?;
    let (answer, _) = answer.context("first request: closed without an answer")?;
    ensure!(answer.status == 408, "first request: {answer:?}");
    ensure!(
        sent < headers.len(),
        "first request: answered after the headers"
    );
    ensure!(closed(&mut reader).await, "first request: kept open");

    // A complete first request, then the next one's headers dribbled on the same connection.
    let stream = TcpStream::connect(engine.http).await?;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /api/auth/user HTTP/1.1\r\nHost: engine\r\n\r\n")
        .await?;
    let (first, _) = read_answer(&mut reader).await?.context("no first answer")?;
    ensure!(first.status == 401, "{first:?}");
    let (answer, sent, mut reader) = dribble_on(reader, &mut writer, &headers).await?;
    let (answer, _) = answer.context("kept-alive: closed without an answer")?;
    ensure!(answer.status == 408, "kept-alive: {answer:?}");
    ensure!(
        sent < headers.len(),
        "kept-alive: answered after the headers"
    );
    ensure!(closed(&mut reader).await, "kept-alive: kept open");
    drop(writer);

    let exposition = metrics(&engine).await?;
    ensure!(
        metric(&exposition, r#"engine_http_timeouts_total{phase="header"}"#) >= 2.0,
        "header timeouts are counted"
    );
    upload_works(&engine, 2).await?;
    still_serving(&engine).await
}

/// An unknown token is answered 401 from the path alone: the body is never waited for, even
/// when it is announced as huge or never sent (before: 413 for a big declared body, and no
/// answer at all while the body was missing).
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_token_is_refused_before_the_body() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, _) = engine_with_device(dir.path(), &[]).await?;
    let before = metric(
        &metrics(&engine).await?,
        r#"engine_connections_refused_total{reason="bad_token",transport="http"}"#,
    );
    let cases = [
        ("NOPE", "Content-Length: 1000000000\r\n"),
        ("NOPE", "Content-Length: 100\r\n"),
        ("NOPE", "Transfer-Encoding: chunked\r\n"),
        // Not even a possible token (one character): refused without a look-up.
        ("x", "Content-Length: 100\r\n"),
    ];
    for (token, extra) in cases {
        let stream = TcpStream::connect(engine.http).await?;
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(&post_head(&format!("/api/v1/{token}/telemetry"), extra))
            .await?;
        // The body is never sent: the answer must come from the path alone.
        let answer = tokio::time::timeout(HANG, read_answer(&mut reader))
            .await
            .with_context(|| format!("{token} {extra}: no answer without the body"))??;
        let (answer, body) = answer.with_context(|| format!("{token} {extra}: closed"))?;
        ensure!(answer.status == 401, "{token} {extra}: {answer:?}");
        ensure!(
            String::from_utf8_lossy(&body).contains("Unauthorized"),
            "{token} {extra}: {body:?}"
        );
        drop(writer);
    }
    let after = metric(
        &metrics(&engine).await?,
        r#"engine_connections_refused_total{reason="bad_token",transport="http"}"#,
    );
    ensure!(
        after - before >= 4.0,
        "refusals counted: {before} -> {after}"
    );
    upload_works(&engine, 3).await?;
    still_serving(&engine).await
}

/// Bodies over `http.max_payload_size` are answered 413 whether their size is announced (at
/// once, without reading them) or found while reading a chunked body.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_answered_413() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, _) = engine_with_device(dir.path(), &[]).await?;

    let stream = TcpStream::connect(engine.http).await?;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(&post_head(
            "/api/v1/TOKEN/telemetry",
            "Content-Length: 10000000\r\n",
        ))
        .await?;
    let (answer, _) = tokio::time::timeout(HANG, read_answer(&mut reader))
        .await??
        .context("announced: closed without an answer")?;
    ensure!(answer.status == 413, "announced: {answer:?}");
    drop(writer);

    // A chunked body that passes the limit while it is read: 8 KiB chunks, sent until the
    // answer comes or the server stops reading.
    let stream = TcpStream::connect(engine.http).await?;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(&post_head(
            "/api/v1/TOKEN/telemetry",
            "Transfer-Encoding: chunked\r\n",
        ))
        .await?;
    let watch = tokio::spawn(async move { read_answer(&mut reader).await });
    let chunk = format!("2000\r\n{}\r\n", "y".repeat(0x2000));
    for _ in 0..64 {
        if watch.is_finished() || writer.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let (answer, _) = tokio::time::timeout(HANG, watch)
        .await???
        .context("chunked: closed without an answer")?;
    ensure!(answer.status == 413, "chunked: {answer:?}");
    drop(writer);
    upload_works(&engine, 4).await?;
    still_serving(&engine).await
}

/// The content type is not checked, as in ThingsBoard (its controller takes any body as a
/// string): JSON is JSON whatever the header says, and anything else is a 400 with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn content_types_do_not_matter_only_the_json_does() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, id) = engine_with_device(dir.path(), &[]).await?;
    let http = reqwest::Client::new();
    let cases: &[(Option<&str>, &[u8], u16)] = &[
        (Some("text/plain"), br#"{"plain":1}"#, 200),
        (None, br#"{"untyped":2}"#, 200),
        (Some("application/octet-stream"), b"\x00\x01\xff\xfe", 400),
        (
            Some("multipart/form-data; boundary=x"),
            b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
            400,
        ),
        (Some("application/x-www-form-urlencoded"), b"a=1&b=2", 400),
    ];
    for (content_type, body, status) in cases {
        let mut req = http
            .post(engine.url("/api/v1/TOKEN/telemetry"))
            .body(body.to_vec());
        if let Some(t) = content_type {
            req = req.header("Content-Type", *t);
        }
        let resp = req.send().await?;
        let got = resp.status().as_u16();
        let text = resp.text().await?;
        ensure!(got == *status, "{content_type:?}: {got} {text}");
        if *status == 400 {
            ensure!(text.contains("Invalid payload"), "{content_type:?}: {text}");
        }
    }
    let rest = engine.rest().await?;
    rest.eventually(SETTLE, || async {
        let latest = rest.latest(&id).await?;
        Ok((latest.get("plain").is_some() && latest.get("untyped").is_some()).then_some(()))
    })
    .await?;
    still_serving(&engine).await
}

/// Past `http.max_connections` open connections, new ones are answered 503 and closed at once,
/// and counted:
/// the engine keeps its file descriptors for storage and the other transports, and idle
/// connections are let go after `http.header_timeout` (before: every connection was accepted,
/// up to the process's file limit).
#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_refused_and_counted() -> Result<()> {
    const CAP: usize = 20;
    const OPENED: usize = 100;
    let dir = tempfile::tempdir()?;
    let cap = CAP.to_string();
    let env = [
        ("ENGINE_HTTP__MAX_CONNECTIONS", cap.as_str()),
        ("ENGINE_HTTP__HEADER_TIMEOUT", "2s"),
    ];
    let (engine, _) = engine_with_device(dir.path(), &env).await?;
    let device = tests::mqtt::connect_v3(&engine, "TOKEN", "beside-the-flood")
        .await
        .map_err(|e| anyhow::anyhow!("mqtt connect: {e:?}"))?;

    // Idle connections: they send nothing. Each is either refused (503, or closed when even that
    // could not be written) or held until its header deadline (then answered 408).
    let mut sockets = Vec::new();
    for _ in 0..OPENED {
        sockets.push(TcpStream::connect(engine.http).await?);
    }
    let outcomes = sockets.into_iter().map(|s| async move {
        let (mut reader, _writer) = s.into_split();
        tokio::time::timeout(HANG, read_answer(&mut reader))
            .await
            .map_err(|_| anyhow::anyhow!("an idle connection was never let go"))?
    });
    let mut refused = 0;
    let mut held = 0;
    for outcome in futures_join_all(outcomes).await {
        match outcome? {
            None => refused += 1,
            Some((answer, _)) if answer.status == 503 => refused += 1,
            Some((answer, _)) if answer.status == 408 => held += 1,
            Some((answer, _)) => bail!("an idle connection got {answer:?}"),
        }
    }
    ensure!(
        held <= CAP,
        "{held} connections were held, over the cap of {CAP}"
    );
    ensure!(
        refused >= OPENED - CAP,
        "{refused} of {OPENED} were refused"
    );
    // MQTT was never touched by the HTTP flood.
    device.disconnect().await;
    let exposition = metrics(&engine).await?;
    let counted = metric(
        &exposition,
        r#"engine_connections_refused_total{reason="too_many_connections",transport="http"}"#,
    );
    ensure!(
        counted >= (OPENED - CAP) as f64,
        "refusals counted: {counted}"
    );
    upload_works(&engine, 5).await?;
    still_serving(&engine).await
}

/// Awaits every future, in order (the test crate has no `futures`).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

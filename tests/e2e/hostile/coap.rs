//! Hostile input: the CoAP integration endpoint. Raw datagrams written byte by byte (another
//! version, reserved codes, responses sent as requests, unknown critical options, over-long
//! options, broken Block1 transfers, a converter error too long for one datagram, a flood of
//! junk) and the exact answer RFC 7252 / RFC 7959 ask for: its type, code, message id and token,
//! or silence. Between the attacks a well-behaved client keeps getting 2.04.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tests::coap::{
    ACK, BLOCK1, CON, Head, NON, RST, Raw, RawClient, SIZE1, URI_HOST, URI_PATH, block, coap_client,
};
use tests::{Engine, Rest};

use super::{rss_below, still_serving};
use crate::SETTLE;

/// How long an answer may take before the test says there was none.
const WAIT: Duration = Duration::from_secs(10);

/// An engine with one CoAP integration running the README's CSV converter.
struct Setup {
    engine: Engine,
    rest: Rest,
    /// `i/{routingKey}` of the integration.
    path: String,
    _dir: tempfile::TempDir,
}

async fn setup(env: &[(&str, &str)]) -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), env)?;
    let rest = engine.rest().await?;
    let script_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/converters/coap-csv.rhai");
    let script = std::fs::read_to_string(&script_path)?;
    let conv = post(
        &rest,
        "/api/converter",
        &json!({"name": "csv", "type": "UPLINK",
                "configuration": {"scriptLang": "TBEL", "tbelDecoder": script}}),
    )
    .await?;
    let conv = conv["id"]["id"]
        .as_str()
        .context("converter id")?
        .to_owned();
    let integration = post(
        &rest,
        "/api/integration",
        &json!({"name": "coap", "type": "COAP", "defaultConverterId": {"id": conv}}),
    )
    .await?;
    let key = integration["routingKey"]
        .as_str()
        .context("routing key")?
        .to_owned();
    Ok(Setup {
        engine,
        rest,
        path: format!("i/{key}"),
        _dir: dir,
    })
}

async fn post(rest: &Rest, path: &str, body: &Value) -> Result<Value> {
    let resp = rest.post(path).json(body).send().await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    ensure!(status.is_success(), "POST {path}: {status} {answer}");
    Ok(answer)
}

/// Sends `raw` and returns the answer's datagram.
async fn answer_bytes(client: &RawClient, raw: &Raw) -> Result<Vec<u8>> {
    client.send(&raw.encode()).await?;
    client
        .recv_raw(WAIT)
        .await?
        .with_context(|| format!("no answer to {raw:?}"))
}

/// Sends `raw` and checks the answer: `kind` and `code`; an ACK or RST carries the request's
/// message id; an RST has no token, any other answer echoes the request's token.
async fn check(client: &RawClient, raw: &Raw, kind: u8, code: &str) -> Result<Vec<u8>> {
    let bytes = answer_bytes(client, raw).await?;
    let head = Head::of(&bytes)?;
    let context = || format!("answer {head:?} to {raw:?}");
    ensure!(head.kind == kind, "type: {}", context());
    ensure!(head.code == code, "code: {}", context());
    if kind == ACK || kind == RST {
        ensure!(
            head.message_id == raw.message_id,
            "message id: {}",
            context()
        );
    }
    let token: &[u8] = if kind == RST { &[] } else { &raw.token };
    ensure!(head.token == token, "token: {}", context());
    ensure!(
        kind != RST || bytes.len() == 4,
        "a Reset is the 4-byte header alone: {bytes:?}"
    );
    Ok(bytes)
}

/// Sends `raw`, then a ping: the endpoint reads datagrams in order, so the first answer being
/// the ping's Reset proves `raw` got none.
async fn silent(client: &RawClient, raw: &Raw) -> Result<()> {
    client.send(&raw.encode()).await?;
    let ping = Raw::empty(CON, raw.message_id.wrapping_add(1));
    check(client, &ping, RST, "0.00")
        .await
        .with_context(|| format!("{raw:?} must be ignored"))?;
    Ok(())
}

/// The payload of an answer (after the 0xFF marker), found by skipping its options.
fn payload(datagram: &[u8]) -> Result<&[u8]> {
    let mut i = 4 + usize::from(datagram[0] & 0x0f);
    while i < datagram.len() {
        if datagram[i] == 0xff {
            return Ok(&datagram[i + 1..]);
        }
        let (delta, len) = (datagram[i] >> 4, usize::from(datagram[i] & 0x0f));
        i += 1;
        i += match delta {
            13 => 1,
            14 => 2,
            _ => 0,
        };
        let len = match len {
            13 => usize::from(datagram[i]) + 13,
            14 => usize::from(u16::from_be_bytes([datagram[i], datagram[i + 1]])) + 269,
            _ => len,
        } + match len {
            13 => 1,
            14 => 2,
            _ => 0,
        };
        i += len;
    }
    Ok(&[])
}

/// A well-behaved confirmable POST, retransmitted as RFC 7252 §4.2 has it (same message id)
/// when a flood made the endpoint's socket drop it; must be answered 2.04.
async fn well_behaved(client: &RawClient, path: &str, payload: &[u8], mid: u16) -> Result<()> {
    let raw = Raw::post(path, payload, mid);
    for _ in 0..5 {
        client.send(&raw.encode()).await?;
        while let Some(bytes) = client.recv_raw(Duration::from_secs(2)).await? {
            let head = Head::of(&bytes)?;
            if head.message_id == mid && head.kind == ACK {
                ensure!(
                    head.code == "2.04",
                    "well-behaved request answered {head:?}"
                );
                ensure!(head.token == raw.token, "token of {head:?}");
                return Ok(());
            }
        }
    }
    anyhow::bail!("a well-behaved request got no answer in five transmissions")
}

/// A counter of the engine's /metrics, summed over the series whose labels contain `labels`.
async fn metric(engine: &Engine, name: &str, labels: &str) -> Result<f64> {
    let text = reqwest::get(engine.url("/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_deviations_get_the_answers_rfc_7252_asks_for() -> Result<()> {
    let s = setup(&[]).await?;
    let client = RawClient::connect(s.engine.coap).await?;
    let ok = |mid: u16| Raw::post(&s.path, b"PROTO,default,t,1", mid);

    // A ping is answered by a Reset, whose code is 0.00 (an Empty message, §4.1).
    check(&client, &Raw::empty(CON, 0x0100), RST, "0.00").await?;

    // Version bits other than 1: silently ignored (§3).
    for version in [0, 2, 3] {
        silent(
            &client,
            &ok(0x0200 + u16::from(version) * 2).version(version),
        )
        .await?;
    }
    // Empty non-confirmable, acknowledgement and reset messages expect no answer.
    silent(&client, &Raw::empty(NON, 0x0300)).await?;
    silent(&client, &Raw::empty(ACK, 0x0302)).await?;
    silent(&client, &Raw::empty(RST, 0x0304)).await?;

    // An unknown method code is 4.05 (§5.8), piggybacked or non-confirmable; so is GET, a
    // known method the endpoint does not allow.
    check(&client, &ok(0x0400).code(0x1f), ACK, "4.05").await?;
    check(&client, &ok(0x0401).code(0x08), ACK, "4.05").await?;
    check(&client, &ok(0x0402).code(0x1f).non(), NON, "4.05").await?;
    check(&client, &ok(0x0403).code(0x01), ACK, "4.05").await?;

    // A confirmable message carrying a response code (2.05, 4.04, 5.00) or a reserved class
    // (1.00, 7.00) is rejected with a Reset (§4.2); a non-confirmable one is ignored (§4.3).
    for (mid, code) in [
        (0x0500, 0x45),
        (0x0501, 0x84),
        (0x0502, 0xa0),
        (0x0503, 0x20),
        (0x0504, 0xe0),
    ] {
        check(&client, &ok(mid).code(code), RST, "0.00").await?;
    }
    silent(&client, &ok(0x0510).code(0x45).non()).await?;

    // Message format errors in a confirmable message: Reset (§4.2). A payload marker followed by
    // nothing (§3), an Empty message with a token or bytes after the header (§4.1), a token
    // length of 9, a reserved option delta of 15.
    check(&client, &ok(0x0600).marker_only(), RST, "0.00").await?;
    let ping_with_token = Raw {
        token: vec![1, 2],
        ..Raw::empty(CON, 0x0601)
    };
    check(&client, &ping_with_token, RST, "0.00").await?;
    for datagram in [
        &[0x40, 0x00, 0x06, 0x02, 0xff, 0x01][..],
        &[0x49, 0x02, 0x06, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        &[0x40, 0x02, 0x06, 0x04, 0xf1, 0x00],
    ] {
        client.send(datagram).await?;
        let answer = client.recv_raw(WAIT).await?;
        let reset = Head::of(&answer.with_context(|| format!("no answer to {datagram:02x?}"))?)?;
        let expected = Head {
            kind: RST,
            code: "0.00".into(),
            message_id: u16::from_be_bytes([datagram[2], datagram[3]]),
            token: Vec::new(),
        };
        ensure!(reset == expected, "{reset:?} to {datagram:02x?}");
    }
    // Shorter than a header: nothing to answer to.
    client.send(&[0x40, 0x02, 0x06]).await?;
    silent(&client, &Raw::empty(NON, 0x0606)).await?;

    // Unrecognised critical options and options outside their length range (§5.4.1, §5.4.3,
    // §5.10) are 4.02 Bad Option in a confirmable request, with the reason.
    let bad_options: &[(u16, &[u8])] = &[
        (9, b"\x01"),             // OSCORE: critical, not supported
        (65_001, b"x"),           // an experimental critical option
        (URI_HOST, &[b'h'; 300]), // Uri-Host is 1-255 bytes
        (URI_HOST, b""),
        (7, &[1, 2, 3]),          // Uri-Port is 0-2 bytes
        (URI_PATH, &[b'p'; 256]), // a Uri-Path segment is 0-255 bytes
        (BLOCK1, &[0, 0, 0, 0]),  // Block1 is 0-3 bytes
    ];
    for (i, (number, value)) in bad_options.iter().enumerate() {
        let raw = ok(0x0700 + i as u16).with(*number, value);
        let answer = check(&client, &raw, ACK, "4.02").await?;
        ensure!(!payload(&answer)?.is_empty(), "4.02 says why: {answer:?}");
    }
    // An option that may occur once, twice: the second is unrecognised (§5.4.5).
    let twice = ok(0x0720).with(URI_HOST, b"a").with(URI_HOST, b"b");
    check(&client, &twice, ACK, "4.02").await?;
    // In a non-confirmable request the message is rejected: no answer (§4.3).
    silent(&client, &ok(0x0730).with(9, b"\x01").non()).await?;
    // Proxy-Uri: this endpoint is no proxy (§5.7.2).
    check(
        &client,
        &ok(0x0740).with(35, b"coap://elsewhere/i/x"),
        ACK,
        "5.05",
    )
    .await?;

    // What is allowed still works: an unknown elective option, a Uri-Host of 255 bytes, a
    // Content-Format too long to be one (elective: ignored), empty path segments.
    check(&client, &ok(0x0800).with(65_000, b"x"), ACK, "2.04").await?;
    check(
        &client,
        &ok(0x0801).with(URI_HOST, &[b'h'; 255]),
        ACK,
        "2.04",
    )
    .await?;
    check(&client, &ok(0x0802).with(12, &[0, 0, 50]), ACK, "2.04").await?;
    check(&client, &ok(0x0803).non(), NON, "2.04").await?;

    still_serving(&s.engine).await?;
    let device = s
        .rest
        .eventually(SETTLE, || async {
            let resp = s
                .rest
                .get("/api/tenant/devices?deviceName=PROTO")
                .send()
                .await?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let d: Value = resp.json().await?;
            Ok(d["id"]["id"].as_str().map(str::to_owned))
        })
        .await?;
    ensure!(!device.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converter_error_too_long_for_a_datagram_is_answered_truncated() -> Result<()> {
    let s = setup(&[]).await?;
    let client = RawClient::connect(s.engine.coap).await?;
    // The README's CSV converter with one long field: parseFloat's error quotes it, 2,000 bytes
    // of two-byte characters, so a cut in the middle of one would show.
    let long = format!("LONG,default,t,{}", "é".repeat(1000));
    let raw = Raw::post(&s.path, long.as_bytes(), 0x0900);
    let answer = check(&client, &raw, ACK, "4.00").await?;
    ensure!(
        answer.len() <= 1152,
        "{} bytes: over RFC 7252 §4.6's 1152",
        answer.len()
    );
    let text = std::str::from_utf8(payload(&answer)?).context("the diagnostic is UTF-8")?;
    ensure!(text.starts_with("converter error"), "{text}");
    // A retransmission gets the same answer, from the exchange cache.
    let again = answer_bytes(&client, &raw).await?;
    ensure!(again == answer, "the retransmission is answered alike");
    // Non-confirmable: the same answer as a non-confirmable response.
    let non = Raw::post(&s.path, long.as_bytes(), 0x0901).non();
    let answer = check(&client, &non, NON, "4.00").await?;
    ensure!(answer.len() <= 1152);
    std::str::from_utf8(payload(&answer)?).context("the diagnostic is UTF-8")?;
    well_behaved(&client, &s.path, b"AFTER,default,t,1", 0x0902).await?;
    still_serving(&s.engine).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_block1_transfers_are_refused_and_bounded() -> Result<()> {
    let s = setup(&[
        ("ENGINE_INTEGRATIONS__MAX_PAYLOAD_SIZE", "4096"),
        ("ENGINE_COAP__MAX_BLOCK_BYTES", "16384"),
    ])
    .await?;
    let client = RawClient::connect(s.engine.coap).await?;
    let path = &s.path;
    let chunk = vec![b'x'; 1024];

    // SZX 7 is reserved: 4.00 (RFC 7959 §2.2).
    let szx7 = Raw::post(path, &chunk, 0x0a00).with(BLOCK1, &block(0, true, 7));
    check(&client, &szx7, ACK, "4.00").await?;
    // A block far into a transfer that never started: 4.08 Request Entity Incomplete.
    let far = Raw::post(path, &chunk, 0x0a01).with(BLOCK1, &block(0xf_ffff, true, 6));
    check(&client, &far, ACK, "4.08").await?;
    // A first block announcing (Size1) more than the payload limit: 4.13 at once, with Size1.
    let announced = Raw::post(path, &chunk, 0x0a02)
        .with(BLOCK1, &block(0, true, 6))
        .with(SIZE1, &1_000_000u32.to_be_bytes());
    let answer = check(&client, &announced, ACK, "4.13").await?;
    ensure!(
        answer.windows(2).any(|w| w == [0x10, 0x00]),
        "4.13 carries Size1 = 4096: {answer:?}"
    );
    // Blocks adding up past the limit: 4.13 on the block that crosses it.
    for num in 0..4u16 {
        let raw = Raw::post(path, &chunk, 0x0a10 + num).with(BLOCK1, &block(num.into(), true, 6));
        check(&client, &raw, ACK, "2.31").await?;
    }
    let over = Raw::post(path, &chunk, 0x0a14).with(BLOCK1, &block(4, false, 6));
    check(&client, &over, ACK, "4.13").await?;

    // Transfers per peer are bounded: the oldest of one peer's transfers goes first.
    let first = Raw::post("i/first", &chunk, 0x0b00).with(BLOCK1, &block(0, true, 6));
    check(&client, &first, ACK, "2.31").await?;
    for i in 0..8u16 {
        let raw =
            Raw::post(&format!("i/other-{i}"), &chunk, 0x0b01 + i).with(BLOCK1, &block(0, true, 6));
        check(&client, &raw, ACK, "2.31").await?;
    }
    let next = Raw::post("i/first", &chunk, 0x0b20).with(BLOCK1, &block(1, true, 6));
    check(&client, &next, ACK, "4.08").await?;

    // Bytes being assembled are bounded over all peers: 16 KiB here, so 24 peers with 1 KiB
    // each push the oldest out.
    let peers = peers(s.engine.coap, 24).await?;
    for (i, peer) in peers.iter().enumerate() {
        let raw = Raw::post(path, &chunk, 0x0c00 + i as u16).with(BLOCK1, &block(0, true, 6));
        check(peer, &raw, ACK, "2.31").await?;
    }
    let next = Raw::post(path, &chunk, 0x0c20).with(BLOCK1, &block(1, true, 6));
    check(&peers[0], &next, ACK, "4.08").await?;
    ensure!(
        metric(&s.engine, "engine_coap_evicted_total", "block_transfer").await? >= 2.0,
        "evicted transfers are counted"
    );

    // A whole transfer still works.
    let text = b"BLOCKS,default,t,12345678";
    for (num, part) in text.chunks(16).enumerate() {
        let more = (num + 1) * 16 < text.len();
        let raw =
            Raw::post(path, part, 0x0d00 + num as u16).with(BLOCK1, &block(num as u32, more, 0));
        check(&client, &raw, ACK, if more { "2.31" } else { "2.04" }).await?;
    }
    still_serving(&s.engine).await?;
    Ok(())
}

async fn peers(server: SocketAddr, n: usize) -> Result<Vec<RawClient>> {
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        peers.push(RawClient::connect(server).await?);
    }
    Ok(peers)
}

/// A small deterministic generator for junk (xorshift64).
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// One hostile datagram: random bytes, a request to an unknown key, a Block1 start to a
    /// random key, a request under another version, an unknown method or a bad option.
    fn datagram(&mut self, i: u32) -> Vec<u8> {
        let mid = i as u16;
        let n = (self.next() % 1200) as usize + 1;
        match self.next() % 6 {
            0 => self.bytes(n),
            1 => Raw::post(&format!("i/junk-{}", self.next()), b"X,d,t,1", mid).encode(),
            2 => Raw::post(
                &format!("i/junk-{}", self.next() % 100_000),
                &self.bytes(1024),
                mid,
            )
            .with(BLOCK1, &block(0, true, 6))
            .encode(),
            3 => Raw::post("i/x", &self.bytes(n), mid).version(2).encode(),
            4 => Raw::post("i/x", b"", mid).code(0x1f).encode(),
            _ => Raw::post("i/x", b"", mid)
                .with(URI_HOST, &self.bytes(300))
                .encode(),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_junk_leaves_the_endpoint_serving_with_bounded_memory() -> Result<()> {
    let s = setup(&[("RUST_LOG", "engine=debug,info")]).await?;
    let good = RawClient::connect(s.engine.coap).await?;
    well_behaved(&good, &s.path, b"GOOD,default,n,0", 1).await?;
    let before = s.engine.rss_kib()? / 1024;

    // 100,000 junk datagrams from 64 sockets, a well-behaved request after every 10,000.
    let senders = peers(s.engine.coap, 64).await?;
    let mut junk = Junk(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    for round in 0..10u32 {
        for i in 0..10_000u32 {
            let n = round * 10_000 + i;
            senders[(n % 64) as usize].send(&junk.datagram(n)).await?;
        }
        let mid = 2 + round as u16;
        well_behaved(
            &good,
            &s.path,
            format!("GOOD,default,n,{}", round + 1).as_bytes(),
            mid,
        )
        .await?;
    }
    let elapsed = started.elapsed();

    // The log lines a peer can cause are rate-limited: at most 10 a second after a burst.
    let log = s.engine.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("coap") && !l.contains(" INFO "))
        .count() as u64;
    let allowed = 20 + 10 * (started.elapsed().as_secs() + 1);
    println!("{lines} coap log lines written during the flood (at most {allowed} allowed)");
    ensure!(
        lines <= allowed,
        "{lines} coap log lines, at most {allowed} expected"
    );

    // The reference client too: answered 2.04, and its reading is stored.
    let url = format!("coap://{}/{}", s.engine.coap, s.path);
    let reply = coap_client(&["-m", "post", &url, "-f-"], b"LIBCOAP,default,n,42")?;
    ensure!(reply.code == "2.04", "coap-client said: {}", reply.output);
    let device = s
        .rest
        .eventually(SETTLE, || async {
            let resp = s
                .rest
                .get("/api/tenant/devices?deviceName=LIBCOAP")
                .send()
                .await?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let d: Value = resp.json().await?;
            Ok(d["id"]["id"].as_str().map(str::to_owned))
        })
        .await?;
    let n = s
        .rest
        .eventually(SETTLE, || async {
            Ok(s.rest.latest(&device).await?["n"][0].get("value").cloned())
        })
        .await?;
    ensure!(n == json!(42.0), "stored {n}");

    still_serving(&s.engine).await?;
    let after = s.engine.rss_kib()? / 1024;
    println!("RSS {before} MiB before, {after} MiB after 100,000 junk datagrams in {elapsed:?}");
    // The exchange cache (at most 32 MiB) and Block1 assembly (at most 16 MiB) are the
    // endpoint's only state, both within their bounds; the rest is allocator slack.
    rss_below(&s.engine, before + 64)?;
    let block_bytes = metric(&s.engine, "engine_coap_block_bytes", "").await?;
    ensure!(
        block_bytes <= 16.0 * 1024.0 * 1024.0,
        "{block_bytes} bytes in Block1 uploads"
    );
    let exchanges = metric(&s.engine, "engine_coap_exchanges", "").await?;
    ensure!(exchanges <= 100_000.0, "{exchanges} exchanges kept");
    let evicted = metric(&s.engine, "engine_coap_evicted_total", "block_transfer").await?;
    ensure!(
        evicted > 0.0,
        "64 peers opening uploads to random keys hit the per-peer bound"
    );

    // Every datagram a peer can send is counted.
    let dropped = metric(&s.engine, "engine_coap_dropped_total", "").await?;
    let refused = metric(&s.engine, "engine_coap_refused_total", "").await?;
    ensure!(
        dropped > 0.0 && refused > 0.0,
        "dropped {dropped}, refused {refused}"
    );
    Ok(())
}

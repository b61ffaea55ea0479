//! The CoAP driver: simulated devices sending to a CoAP integration
//! (`coap://target/[path/]i/{routingKey}`), `concurrency` workers each with its own UDP socket
//! and one request outstanding. Confirmable requests are retransmitted as RFC 7252 says
//! (ACK_TIMEOUT 2 s, doubling, MAX_RETRANSMIT 4); a non-confirmable request has one wait for
//! its response. A 2.xx answer counts as acknowledged.
//!
//! The payload is `{"deviceName": "<device>", "telemetry": <template>}`, which the converter
//! `examples/converters/loadgen-json.rhai` turns into the device's telemetry; `--provision`
//! creates that converter and an integration named `loadgen CoAP` when missing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use tokio::net::UdpSocket;

use crate::{CoapArgs, Run};

pub const DECODER: &str = include_str!("../../examples/converters/loadgen-json.rhai");

const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;

pub async fn run(run: Arc<Run>, args: &CoapArgs, routing_key: &str) -> Result<()> {
    let workers = args.concurrency.clamp(1, run.devices.len().max(1) * 64);
    let path: Vec<String> = args
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .chain(["i".to_owned(), routing_key.to_owned()])
        .collect();
    let path = Arc::new(path);
    run.stats
        .connected
        .store(run.devices.len() as u64, Ordering::Relaxed);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let local = if args.target.ip().is_loopback() {
            "127.0.0.1:0"
        } else {
            "0.0.0.0:0"
        };
        let socket = UdpSocket::bind(local).await?;
        socket
            .connect(args.target)
            .await
            .with_context(|| format!("cannot reach {}", args.target))?;
        let (run, path, confirmable) = (run.clone(), path.clone(), !args.non);
        tasks.spawn(async move { worker(&run, &socket, &path, confirmable, w, workers).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn request(
    confirmable: bool,
    path: &[String],
    id: u16,
    token: u32,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let mut p = Packet::new();
    p.header.set_type(if confirmable {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = id;
    p.set_token(token.to_be_bytes().to_vec());
    for segment in path {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    // Content-Format: application/json (50).
    p.add_option(CoapOption::ContentFormat, vec![50]);
    p.payload = payload.to_vec();
    p.to_bytes()
        .map_err(|e| anyhow::anyhow!("encoding a CoAP request: {e:?}"))
}

/// The code of `answer` if it is the answer to the request with `token` (4 bytes): its header
/// says a 4-byte token and the token matches. Parsed in place, no packet is built.
fn answer_code(answer: &[u8], token: u32) -> Option<u8> {
    (answer.len() >= 8 && answer[0] & 0x0F == 4 && answer[4..8] == token.to_be_bytes())
        .then(|| answer[1])
}

/// A CoAP code as text, "2.04".
fn code_text(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1F)
}

/// Sends one request and waits for its answer; the answer's code, or `None` when none came.
async fn exchange(
    socket: &UdpSocket,
    datagram: &[u8],
    token: u32,
    confirmable: bool,
    buf: &mut [u8],
) -> Result<Option<u8>> {
    let mut wait = ACK_TIMEOUT;
    let tries = if confirmable { MAX_RETRANSMIT + 1 } else { 1 };
    for _ in 0..tries {
        socket.send(datagram).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(n) = tokio::time::timeout_at(deadline, socket.recv(buf)).await else {
                break;
            };
            // Late answers to earlier requests are skipped by their token.
            if let Some(code) = answer_code(&buf[..n?], token) {
                return Ok(Some(code));
            }
        }
        wait *= 2;
    }
    Ok(None)
}

/// Counters and latencies are handed to the shared statistics in batches of this many.
const FLUSH_EVERY: usize = 64;

/// One socket with one request outstanding. With at least as many devices as workers, worker
/// `w` sends for devices w, w + workers, ...; with more workers than devices, several workers
/// share a device (its sequence numbers are taken atomically, so every message stays unique).
async fn worker(
    run: &Run,
    socket: &UdpSocket,
    path: &[String],
    confirmable: bool,
    w: usize,
    workers: usize,
) -> Result<()> {
    let stats = &run.stats;
    let schedule = run.schedule(workers, w);
    let devices = run.devices.len();
    let mine: Vec<usize> = if workers <= devices {
        (w..devices).step_by(workers).collect()
    } else {
        vec![w % devices]
    };
    if mine.is_empty() {
        return Ok(());
    }
    let quota: u64 = mine.iter().map(|&d| run.quota(d)).sum();
    // Each device's `"deviceName":"..."` prefix, built once.
    let prefixes: Vec<String> = mine
        .iter()
        .map(|&d| {
            let name = serde_json::to_string(&run.devices[d].name)?;
            Ok(format!("{{\"deviceName\":{name},\"telemetry\":"))
        })
        .collect::<Result<_>>()?;
    // The header, token and options are encoded once; per request the message id and token
    // are patched in and the payload appended.
    let head = request(confirmable, path, 0, 0, b"")?;
    let mut datagram = Vec::with_capacity(head.len() + 512);
    let mut telemetry = String::with_capacity(256);
    let mut buf = vec![0u8; 2048];
    let mut latencies: Vec<Duration> = Vec::with_capacity(FLUSH_EVERY);
    let mut sent: u64 = 0;
    // Message ids and tokens are per socket; start each worker somewhere else.
    #[allow(clippy::cast_possible_truncation)]
    let mut id = (w as u32).wrapping_mul(7919);
    let mut k: u64 = 0;
    tokio::time::sleep_until(run.start.into()).await;
    while k < quota && !run.sending_over(Instant::now()) {
        if let Some(s) = &schedule {
            tokio::time::sleep_until(s.due(k).into()).await;
            stats.lag(w, s.lag(k, Instant::now()));
        }
        #[allow(clippy::cast_possible_truncation)]
        let which = (k % mine.len() as u64) as usize;
        let lane = mine[which];
        let dev = &run.devices[lane];
        k += 1;
        if dev.sent.load(Ordering::Relaxed) >= run.quota(lane) {
            continue;
        }
        let seq = dev.sent.fetch_add(1, Ordering::Relaxed);
        if seq >= run.quota(lane) {
            // Another worker sharing this device took its last message.
            dev.sent.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        #[allow(clippy::cast_possible_wrap)]
        run.template
            .render_into(seq, run.start_ms + seq as i64, &dev.name, &mut telemetry);
        id = id.wrapping_add(1);
        datagram.clear();
        datagram.extend_from_slice(&head);
        #[allow(clippy::cast_possible_truncation)]
        datagram[2..4].copy_from_slice(&(id as u16).to_be_bytes());
        datagram[4..8].copy_from_slice(&id.to_be_bytes());
        datagram.push(0xFF);
        datagram.extend_from_slice(prefixes[which].as_bytes());
        datagram.extend_from_slice(telemetry.as_bytes());
        datagram.push(b'}');
        sent += 1;
        let started = Instant::now();
        match exchange(socket, &datagram, id, confirmable, &mut buf).await? {
            Some(code) if code >> 5 == 2 => {
                latencies.push(started.elapsed());
                dev.acked.fetch_add(1, Ordering::Relaxed);
            }
            Some(code) => stats.failed(&format!("CoAP {}", code_text(code)), 1),
            None => stats.failed("no answer", 1),
        }
        if latencies.len() >= FLUSH_EVERY || sent >= FLUSH_EVERY as u64 {
            stats.sent_n(std::mem::take(&mut sent));
            stats.acked_n(w, &latencies, 0);
            latencies.clear();
        }
    }
    stats.sent_n(sent);
    stats.acked_n(w, &latencies, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_path_type_token_and_json_format() {
        let path = vec!["api".to_owned(), "i".to_owned(), "key".to_owned()];
        let bytes = request(true, &path, 7, 0x0102_0304, b"{}").expect("encodes");
        let p = Packet::from_bytes(&bytes).expect("decodes");
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(p.header.message_id, 7);
        assert_eq!(p.get_token(), [1, 2, 3, 4]);
        let segments: Vec<&[u8]> = p
            .get_option(CoapOption::UriPath)
            .map(|v| v.iter().map(Vec::as_slice).collect())
            .unwrap_or_default();
        assert_eq!(segments, [b"api".as_slice(), b"i", b"key"]);
        assert_eq!(
            p.get_option(CoapOption::ContentFormat)
                .and_then(|v| v.front().cloned()),
            Some(vec![50])
        );
        assert_eq!(p.payload, b"{}");

        // The hot path's form: the head encoded once, id and token patched, payload appended.
        let mut patched = request(true, &path, 0, 0, b"").expect("encodes");
        patched[2..4].copy_from_slice(&9u16.to_be_bytes());
        patched[4..8].copy_from_slice(&0x0A0B_0C0Du32.to_be_bytes());
        patched.push(0xFF);
        patched.extend_from_slice(b"{\"a\":1}");
        assert_eq!(
            Packet::from_bytes(&patched).expect("decodes"),
            Packet::from_bytes(
                &request(true, &path, 9, 0x0A0B_0C0D, b"{\"a\":1}").expect("encodes")
            )
            .expect("decodes")
        );
        let mut answer = Packet::new();
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.code = MessageClass::Response(coap_lite::ResponseType::NotFound);
        answer.set_token(0x0A0B_0C0Du32.to_be_bytes().to_vec());
        let answer = answer.to_bytes().expect("encodes");
        let code = answer_code(&answer, 0x0A0B_0C0D).expect("its answer");
        assert_eq!(code_text(code), "4.04");
        assert_eq!(answer_code(&answer, 1), None, "another request's answer");
        assert_eq!(answer_code(&answer[..5], 0x0A0B_0C0D), None, "truncated");
        let non = request(false, &path, 8, 1, b"x").expect("encodes");
        let p = Packet::from_bytes(&non).expect("decodes");
        assert_eq!(p.header.get_type(), MessageType::NonConfirmable);
    }
}

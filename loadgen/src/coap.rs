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

/// Sends one request and waits for its answer; the answer's code, or `None` when none came.
async fn exchange(
    socket: &UdpSocket,
    datagram: &[u8],
    token: u32,
    confirmable: bool,
    buf: &mut [u8],
) -> Result<Option<String>> {
    let mut wait = ACK_TIMEOUT;
    let tries = if confirmable { MAX_RETRANSMIT + 1 } else { 1 };
    for _ in 0..tries {
        socket.send(datagram).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(n) = tokio::time::timeout_at(deadline, socket.recv(buf)).await else {
                break;
            };
            let Ok(answer) = Packet::from_bytes(&buf[..n?]) else {
                continue;
            };
            // Late answers to earlier requests are skipped by their token.
            if answer.get_token() == token.to_be_bytes() {
                return Ok(Some(answer.header.get_code()));
            }
        }
        wait *= 2;
    }
    Ok(None)
}

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
    let mine: Vec<usize> = (w..run.devices.len()).step_by(workers).collect();
    if mine.is_empty() {
        return Ok(());
    }
    let quota: u64 = mine.iter().map(|&d| run.quota(d)).sum();
    let mut k: u64 = 0;
    let (mut telemetry, mut payload) = (String::with_capacity(256), String::with_capacity(320));
    let mut buf = vec![0u8; 2048];
    // Message ids and tokens are per socket; start each worker somewhere else.
    #[allow(clippy::cast_possible_truncation)]
    let mut id = (w as u32).wrapping_mul(7919);
    tokio::time::sleep_until(run.start.into()).await;
    while k < quota && !run.sending_over(Instant::now()) {
        if let Some(s) = &schedule {
            tokio::time::sleep_until(s.due(k).into()).await;
            stats.lag(w, s.lag(k, Instant::now()));
        }
        #[allow(clippy::cast_possible_truncation)]
        let lane = mine[(k % mine.len() as u64) as usize];
        let dev = &run.devices[lane];
        k += 1;
        if dev.sent.load(Ordering::Relaxed) >= run.quota(lane) {
            continue;
        }
        let seq = dev.sent.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_possible_wrap)]
        run.template
            .render_into(seq, run.start_ms + seq as i64, &dev.name, &mut telemetry);
        payload.clear();
        payload.push_str("{\"deviceName\":");
        payload.push_str(&serde_json::to_string(&dev.name)?);
        payload.push_str(",\"telemetry\":");
        payload.push_str(&telemetry);
        payload.push('}');
        id = id.wrapping_add(1);
        #[allow(clippy::cast_possible_truncation)]
        let datagram = request(confirmable, path, id as u16, id, payload.as_bytes())?;
        stats.sent();
        let started = Instant::now();
        match exchange(socket, &datagram, id, confirmable, &mut buf).await? {
            Some(code) if code.starts_with("2.") => {
                stats.acked(w, started.elapsed());
                dev.acked.fetch_add(1, Ordering::Relaxed);
            }
            Some(code) => stats.failed(&format!("CoAP {code}"), 1),
            None => stats.failed("no answer", 1),
        }
    }
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

        let non = request(false, &path, 8, 1, b"x").expect("encodes");
        let p = Packet::from_bytes(&non).expect("decodes");
        assert_eq!(p.header.get_type(), MessageType::NonConfirmable);
    }
}

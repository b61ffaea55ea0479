//! The yardstick of the CoAP benchmarks: a minimal raw CoAP client, no codec crate, no latency
//! recording, no progress display. `--concurrency` UDP sockets each keep one POST outstanding
//! (confirmable, or non-confirmable with `--non`), as `loadgen coap` does; a request whose
//! answer does not come within `--timeout` counts as lost and the socket goes on.
//!
//! Prints one JSON line: requests answered 2.xx, other answers, lost, seconds, answered/s.
//!
//! ```sh
//! rawcoap --target 127.0.0.1:5683 --path i/<routing key> --concurrency 128 --messages 200000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use tokio::net::UdpSocket;

#[derive(Parser)]
#[command(about = "Minimal CoAP client: the instrument `loadgen coap` is held to")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5683")]
    target: String,
    /// URI path, segments separated by '/': e.g. i/<routing key>
    #[arg(long, default_value = "i/bench")]
    path: String,
    /// Sockets, each with one request outstanding.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Requests over all sockets.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Non-confirmable requests (default: confirmable).
    #[arg(long)]
    non: bool,
    /// How long to wait for an answer before counting the request lost.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(
        long,
        default_value = r#"{"deviceName":"rawcoap","telemetry":{"ts":1764654000000,"values":{"pulseCounter":123456,"leakage":false,"batteryLevel":87.5}}}"#
    )]
    payload: String,
}

/// A POST with a 4-byte token, the path and Content-Format JSON; the message id sits at bytes
/// 2..4 and the token at 4..8, patched per request.
fn request(non: bool, path: &str, payload: &[u8]) -> Vec<u8> {
    let kind = if non { 1 } else { 0 };
    let mut out = vec![0x40 | (kind << 4) | 4, 0x02, 0, 0, 0, 0, 0, 0];
    let mut last = 0u16;
    let mut option = |out: &mut Vec<u8>, number: u16, value: &[u8]| {
        let nibble = |n: usize| -> (u8, Vec<u8>) {
            match n {
                0..=12 => (n as u8, vec![]),
                13..=268 => (13, vec![(n - 13) as u8]),
                _ => (14, ((n - 269) as u16).to_be_bytes().to_vec()),
            }
        };
        let (d, dext) = nibble(usize::from(number - last));
        let (l, lext) = nibble(value.len());
        out.push((d << 4) | l);
        out.extend(dext);
        out.extend(lext);
        out.extend_from_slice(value);
        last = number;
    };
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        option(&mut out, 11, segment.as_bytes());
    }
    option(&mut out, 12, &[50]);
    out.push(0xFF);
    out.extend_from_slice(payload);
    out
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    other: AtomicU64,
    lost: AtomicU64,
}

async fn worker(
    socket: UdpSocket,
    mut datagram: Vec<u8>,
    count: u64,
    w: u32,
    timeout: Duration,
    counts: &Counts,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 1500];
    let mut id = w.wrapping_mul(7919);
    for _ in 0..count {
        id = id.wrapping_add(1);
        datagram[2..4].copy_from_slice(&(id as u16).to_be_bytes());
        datagram[4..8].copy_from_slice(&id.to_be_bytes());
        socket.send(&datagram).await?;
        let answer = tokio::time::timeout(timeout, async {
            loop {
                let n = socket.recv(&mut buf).await?;
                // Header 4 bytes, then the token; late answers to earlier requests are skipped.
                if n >= 8 && buf[0] & 0x0F == 4 && buf[4..8] == id.to_be_bytes() {
                    return Ok::<u8, std::io::Error>(buf[1]);
                }
            }
        })
        .await;
        match answer {
            Ok(code) => {
                let counter = if code? >> 5 == 2 {
                    &counts.ok
                } else {
                    &counts.other
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counts.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.concurrency > 0, "--concurrency is at least 1");
    let datagram = request(args.non, &args.path, args.payload.as_bytes());
    let counts = Arc::new(Counts::default());
    let mut sockets = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket
            .connect(&args.target)
            .await
            .with_context(|| format!("cannot reach {}", args.target))?;
        sockets.push(socket);
    }
    let start = Instant::now();
    let (per, extra) = (
        args.messages / args.concurrency as u64,
        args.messages % args.concurrency as u64,
    );
    let mut tasks = Vec::with_capacity(args.concurrency);
    for (i, socket) in sockets.into_iter().enumerate() {
        let count = per + u64::from((i as u64) < extra);
        let (datagram, counts, timeout) = (datagram.clone(), counts.clone(), args.timeout);
        tasks.push(tokio::spawn(async move {
            worker(socket, datagram, count, i as u32, timeout, &counts).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = start.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    let ok = counts.ok.load(Ordering::Relaxed);
    println!(
        r#"{{"client":"rawcoap","confirmable":{},"concurrency":{},"messages":{},"ok":{},"other":{},"lost":{},"seconds":{:.3},"rate":{:.0}}}"#,
        !args.non,
        args.concurrency,
        args.messages,
        ok,
        counts.other.load(Ordering::Relaxed),
        counts.lost.load(Ordering::Relaxed),
        secs,
        ok as f64 / secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_with_a_real_codec() {
        let bytes = request(false, "api/i/key", b"{}");
        let p = coap_lite::Packet::from_bytes(&bytes).expect("decodes");
        assert_eq!(p.header.get_type(), coap_lite::MessageType::Confirmable);
        let path: Vec<Vec<u8>> = p
            .get_option(coap_lite::CoapOption::UriPath)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        assert_eq!(path, [b"api".to_vec(), b"i".to_vec(), b"key".to_vec()]);
        assert_eq!(p.payload, b"{}");
        let long = "x".repeat(300);
        let bytes = request(true, &long, b"1");
        let p = coap_lite::Packet::from_bytes(&bytes).expect("decodes");
        assert_eq!(p.header.get_type(), coap_lite::MessageType::NonConfirmable);
        assert_eq!(
            p.get_option(coap_lite::CoapOption::UriPath)
                .and_then(|v| v.front().cloned()),
            Some(long.into_bytes())
        );
    }
}

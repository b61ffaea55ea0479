//! Gateway mode of the MQTT driver (`--gateways G --devices-per-gateway D`): G connections,
//! each a ThingsBoard gateway speaking for D devices over the gateway API. A gateway first
//! connects each of its devices (`v1/gateway/connect`, as real gateways do, so the engine has
//! made them before the clock starts), then sends their telemetry batched per message as real
//! gateways do: `{"<device>":[{"ts":..,"values":{..}}],...}` on `v1/gateway/telemetry`, the next
//! `--batch-devices` devices per message in turn, each with its next message. A PUBACK
//! acknowledges every device message the publish carried; counts, rates and latencies are per
//! device message, so they compare with direct connections one to one.
//!
//! Device `i` (over all gateways) is named `<prefix><i>`; gateway `g` logs in with the token
//! `<prefix>gw<g>` (`--provision` makes the gateways, with `additionalInfo.gateway`; the engine
//! makes their devices). QoS 1 only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::mqtt::{Conn, Read, login, put_publish, take_packets};
use crate::{MqttArgs, Run};

const CONNECT_TOPIC: &[u8] = b"v1/gateway/connect";
const TELEMETRY_TOPIC: &[u8] = b"v1/gateway/telemetry";
const MAX_PACKET: usize = 1024 * 1024;

/// How the devices are spread over gateways.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub gateways: usize,
    pub per_gateway: usize,
    /// Devices per telemetry message.
    pub batch: usize,
}

/// The access token (and name) of gateway `g`.
pub fn gateway_token(prefix: &str, g: usize) -> String {
    format!("{prefix}gw{g}")
}

/// Connects the gateways one after the other over the connection ramp and drives them.
pub async fn run(run: Arc<Run>, args: &MqttArgs, plan: Plan) -> Result<()> {
    if args.qos != 1 {
        bail!("gateway mode sends at QoS 1 only");
    }
    let per_device = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    let ramp_start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..plan.gateways {
        let run = run.clone();
        let conn = Conn {
            target: args.target,
            source: crate::mqtt::source_addr(args.source_addrs, g),
            qos: rumqttc::mqttbytes::QoS::AtLeastOnce,
            window: usize::from(args.inflight.max(1)),
            keep_alive: args.keep_alive,
            // Refused with --gateways by clap.
            wall_clock_ts: false,
        };
        let token = gateway_token(&args.common.token_prefix, g);
        #[allow(clippy::cast_possible_truncation)]
        let connect_at = ramp_start + per_device * (g * plan.per_gateway) as u32;
        tasks.spawn(async move {
            tokio::time::sleep_until(connect_at.into()).await;
            gateway(&run, g, plan, &conn, &token).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One gateway's connection: login, its devices connected, then their telemetry.
async fn gateway(run: &Run, g: usize, plan: Plan, conn: &Conn, token: &str) {
    let stats = &run.stats;
    let Some((mut stream, mut rbuf)) = login(conn, &format!("loadgen-gw-{g}"), token, stats).await
    else {
        return;
    };
    let devices = g * plan.per_gateway..(g + 1) * plan.per_gateway;
    if let Err(reason) =
        connect_devices(run, devices.clone(), conn.window, &mut stream, &mut rbuf).await
    {
        stats.connect_failed(&reason);
        return;
    }
    stats
        .connected
        .fetch_add(plan.per_gateway as u64, Ordering::Relaxed);
    if let Err((reason, lost)) = telemetry(run, g, plan, devices, conn, &mut stream, rbuf).await {
        stats.failed(&reason, lost);
    }
    let mut bye = BytesMut::new();
    if Packet::Disconnect.write(&mut bye, MAX_PACKET).is_ok() {
        let _ = stream.write_all_buf(&mut bye).await;
    }
    let _ = stream.shutdown().await;
}

/// `v1/gateway/connect` for each device, at most `window` unacknowledged.
async fn connect_devices(
    run: &Run,
    devices: std::ops::Range<usize>,
    window: usize,
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> Result<(), String> {
    let mut wbuf = BytesMut::new();
    let mut read = Read::default();
    let mut next = devices.start;
    let mut waiting = 0usize;
    let mut pkid: u16 = 0;
    while next < devices.end || waiting > 0 {
        while next < devices.end && waiting < window {
            let body = serde_json::json!({"device": run.devices[next].name}).to_string();
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            put_publish(&mut wbuf, true, CONNECT_TOPIC, pkid, body.as_bytes());
            next += 1;
            waiting += 1;
        }
        if !wbuf.is_empty() && stream.write_all_buf(&mut wbuf).await.is_err() {
            return Err("gateway connect: connection closed by the server".into());
        }
        let got = tokio::time::timeout(Duration::from_secs(30), stream_read(stream, rbuf)).await;
        match got {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("gateway connect: {e}")),
            Err(_) => return Err("gateway connect: no PUBACK within 30 s".into()),
        }
        take_packets(rbuf, &mut read).map_err(|e| format!("gateway connect: {e}"))?;
        waiting = waiting.saturating_sub(read.pubacks.len());
        read.pubacks.clear();
        if read.disconnect {
            return Err("gateway connect: disconnected by the server".into());
        }
    }
    Ok(())
}

async fn stream_read(stream: &mut TcpStream, rbuf: &mut BytesMut) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    match stream.read_buf(rbuf).await {
        Ok(0) => Err("connection closed by the server".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read error: {}", e.kind())),
    }
}

/// One publish awaiting its PUBACK: the devices whose messages it carried.
struct Sent {
    pkid: u16,
    at: Instant,
    devices: Vec<usize>,
}

/// Sends the gateway's devices' telemetry, `plan.batch` devices per message, keeping at most
/// `conn.window` publishes unacknowledged.
async fn telemetry(
    run: &Run,
    g: usize,
    plan: Plan,
    devices: std::ops::Range<usize>,
    conn: &Conn,
    stream: &mut TcpStream,
    mut rbuf: BytesMut,
) -> Result<(), (String, u64)> {
    let stats = &run.stats;
    let lanes = plan.gateways;
    // The run's rate counts device messages; a gateway's schedule counts its publishes.
    let schedule = match run.rate {
        crate::Rate::Max => None,
        crate::Rate::PerSecond(r) => Some(crate::schedule::Schedule::lane(
            run.start,
            r / plan.batch.min(plan.per_gateway).max(1) as f64,
            lanes,
            g,
        )),
    };
    let mut seqs: Vec<u64> = vec![0; devices.len()];
    let quotas: Vec<u64> = devices.clone().map(|i| run.quota(i)).collect();
    let mut in_flight: VecDeque<Sent> = VecDeque::new();
    let mut read = Read::default();
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut body = String::with_capacity(plan.batch * 256);
    let mut message = String::with_capacity(256);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut cursor = 0usize;
    let mut publishes: u64 = 0;
    let mut pkid: u16 = 0;
    let lost = |in_flight: &VecDeque<Sent>| in_flight.iter().map(|s| s.devices.len() as u64).sum();
    tokio::time::sleep_until(run.start.into()).await;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let left = seqs.iter().zip(&quotas).any(|(s, q)| s < q);
        let sending = left && !run.sending_over(now);
        if !sending {
            if in_flight.is_empty() {
                return Ok(());
            }
            let deadline = *drain_deadline.get_or_insert(now + run.drain_timeout);
            if now >= deadline {
                return Err((
                    "no PUBACK before the drain timeout".into(),
                    lost(&in_flight),
                ));
            }
        }
        // Write what the window and the schedule allow.
        let mut written = 0u64;
        while sending && in_flight.len() < conn.window {
            if let Some(s) = &schedule {
                if s.due(publishes) > now {
                    break;
                }
                stats.lag(g, s.lag(publishes, now));
            }
            body.clear();
            body.push('{');
            let mut carried = Vec::with_capacity(plan.batch);
            let mut looked = 0;
            while carried.len() < plan.batch && looked < devices.len() {
                let d = cursor % devices.len();
                cursor += 1;
                looked += 1;
                if seqs[d] >= quotas[d] {
                    continue;
                }
                let i = devices.start + d;
                let dev = &run.devices[i];
                #[allow(clippy::cast_possible_wrap)]
                run.template.render_into(
                    seqs[d],
                    run.start_ms + seqs[d] as i64,
                    &dev.name,
                    &mut message,
                );
                if !carried.is_empty() {
                    body.push(',');
                }
                body.push('"');
                body.push_str(&dev.name);
                body.push_str("\":[");
                body.push_str(&message);
                body.push(']');
                seqs[d] += 1;
                dev.sent.store(seqs[d], Ordering::Relaxed);
                carried.push(i);
            }
            body.push('}');
            if carried.is_empty() {
                break;
            }
            if body.len() + TELEMETRY_TOPIC.len() + 4 > MAX_PACKET {
                return Err(("payload too large to encode".into(), carried.len() as u64));
            }
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            put_publish(&mut wbuf, true, TELEMETRY_TOPIC, pkid, body.as_bytes());
            written += carried.len() as u64;
            publishes += 1;
            in_flight.push_back(Sent {
                pkid,
                at: now,
                devices: carried,
            });
        }
        if written > 0 {
            stats.sent_n(written);
        }
        if !wbuf.is_empty() && stream.write_all_buf(&mut wbuf).await.is_err() {
            return Err(("connection closed by the server".into(), lost(&in_flight)));
        }
        // Wait for PUBACKs, or the next publish due.
        let wake = [
            schedule
                .as_ref()
                .filter(|_| sending && in_flight.len() < conn.window)
                .map(|s| s.due(publishes)),
            drain_deadline,
            run.stop_at.filter(|_| sending),
            Some(now + Duration::from_secs(1)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
        let got = tokio::select! {
            biased;
            r = stream_read(stream, &mut rbuf) => Some(r),
            () = tokio::time::sleep_until(wake.into()) => None,
        };
        match got {
            None => continue,
            Some(Err(e)) => return Err((e, lost(&in_flight))),
            Some(Ok(())) => {}
        }
        if let Err(reason) = take_packets(&mut rbuf, &mut read) {
            return Err((reason, lost(&in_flight)));
        }
        let at = Instant::now();
        for id in read.pubacks.drain(..) {
            let Some(pos) = in_flight.iter().position(|s| s.pkid == id) else {
                continue;
            };
            if let Some(sent) = in_flight.remove(pos) {
                let latency = at.saturating_duration_since(sent.at);
                for i in &sent.devices {
                    run.devices[*i].acked.fetch_add(1, Ordering::Relaxed);
                    latencies.push(latency);
                }
            }
        }
        if !latencies.is_empty() {
            stats.acked_n(g, &latencies, 0);
            latencies.clear();
        }
        if std::mem::take(&mut read.disconnect) {
            return Err(("disconnected by the server".into(), lost(&in_flight)));
        }
    }
}

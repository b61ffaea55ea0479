//! The MQTT driver: one task and one connection per simulated device, speaking MQTT 3.1.1
//! through rumqttc's packet codec on a plain tokio socket (no client event loop, so the
//! in-flight window, the timing of every PUBACK and the memory per connection are ours).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, Login, Packet, PingReq, Publish};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{MqttArgs, Run};

const TOPIC: &str = "v1/devices/me/telemetry";
const MAX_PACKET: usize = 1024 * 1024;

pub async fn run(run: Arc<Run>, args: &MqttArgs) -> Result<()> {
    let lanes = run.devices.len();
    let connect_gap = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    let ramp_start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let run = run.clone();
        let conn = Conn {
            target: args.target,
            source: source_addr(args.source_addrs, lane),
            qos: if args.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            window: usize::from(args.inflight.max(1)),
            keep_alive: args.keep_alive,
        };
        #[allow(clippy::cast_possible_truncation)]
        let connect_at = ramp_start + connect_gap * lane as u32;
        tasks.spawn(async move {
            tokio::time::sleep_until(connect_at.into()).await;
            device(&run, lane, lanes, &conn).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

struct Conn {
    target: SocketAddr,
    source: Option<IpAddr>,
    qos: QoS,
    window: usize,
    keep_alive: Duration,
}

/// 127.0.0.1 .. 127.0.0.n, round-robin; `None` (let the OS choose) with one address.
fn source_addr(addrs: u8, lane: usize) -> Option<IpAddr> {
    if addrs <= 1 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let host = 1 + (lane % usize::from(addrs)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

async fn open(conn: &Conn) -> std::io::Result<TcpStream> {
    let socket = if conn.target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = conn.source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(conn.target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn connack_reason(ack: &ConnAck) -> Option<String> {
    use rumqttc::mqttbytes::v4::ConnectReturnCode::*;
    match ack.code {
        Success => None,
        RefusedProtocolVersion => Some("refused: protocol version (0x01)".into()),
        BadClientId => Some("refused: client id (0x02)".into()),
        ServiceUnavailable => Some("refused: server unavailable (0x03)".into()),
        BadUserNamePassword => Some("refused: empty or bad username (0x04)".into()),
        NotAuthorized => Some("refused: unknown access token (0x05)".into()),
    }
}

/// Reads until one whole packet is buffered and returns it.
async fn next_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet, String> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(packet) => return Ok(packet),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            // Reasons are report keys: fixed labels, never text that varies per message.
            Err(_) => return Err("protocol error".into()),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err("connection closed by the server".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {}", e.kind())),
        }
    }
}

async fn device(run: &Run, lane: usize, lanes: usize, conn: &Conn) {
    let stats = &run.stats;
    let dev = &run.devices[lane];
    let mut stream = match open(conn).await {
        Ok(s) => s,
        Err(e) => {
            stats.connect_failed(&format!("connect: {}", e.kind()));
            return;
        }
    };
    let mut rbuf = BytesMut::with_capacity(256);
    let mut wbuf = BytesMut::with_capacity(512);
    let mut connect = Connect::new(format!("loadgen-{lane}"));
    connect.keep_alive = u16::try_from(conn.keep_alive.as_secs()).unwrap_or(u16::MAX);
    connect.login = Some(Login::new(dev.token.clone(), String::new()));
    if Packet::Connect(connect)
        .write(&mut wbuf, MAX_PACKET)
        .is_err()
        || stream.write_all_buf(&mut wbuf).await.is_err()
    {
        stats.connect_failed("connect: write failed");
        return;
    }
    match tokio::time::timeout(Duration::from_secs(30), next_packet(&mut stream, &mut rbuf)).await {
        Ok(Ok(Packet::ConnAck(ack))) => match connack_reason(&ack) {
            None => {
                stats.connected.fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => {
                stats.connect_failed(&reason);
                return;
            }
        },
        Ok(Ok(_)) => {
            stats.connect_failed("a packet other than CONNACK");
            return;
        }
        Ok(Err(e)) => {
            stats.connect_failed(&e);
            return;
        }
        Err(_) => {
            stats.connect_failed("no CONNACK within 30 s");
            return;
        }
    }
    let outcome = publish_loop(run, lane, lanes, conn, &mut stream, rbuf, wbuf).await;
    if let Err((reason, lost)) = outcome {
        stats.failed(&reason, lost);
    }
    let mut bye = BytesMut::new();
    if Packet::Disconnect.write(&mut bye, MAX_PACKET).is_ok() {
        let _ = stream.write_all_buf(&mut bye).await;
    }
    let _ = stream.shutdown().await;
}

/// Sends this device's share, keeping at most `window` QoS 1 publishes unacknowledged; returns
/// the reason and the number of unacknowledged messages if the run ends badly.
async fn publish_loop(
    run: &Run,
    lane: usize,
    lanes: usize,
    conn: &Conn,
    stream: &mut TcpStream,
    mut rbuf: BytesMut,
    mut wbuf: BytesMut,
) -> Result<(), (String, u64)> {
    let stats = &run.stats;
    let dev = &run.devices[lane];
    let quota = run.quota(lane);
    let schedule = run.schedule(lanes, lane);
    let window = if conn.qos == QoS::AtMostOnce {
        usize::MAX
    } else {
        conn.window
    };
    let mut in_flight: VecDeque<(u16, Instant)> = VecDeque::with_capacity(conn.window.min(1024));
    let mut seq: u64 = 0;
    let mut pkid: u16 = 0;
    let mut payload = String::with_capacity(256);
    let ping_every = conn.keep_alive.max(Duration::from_secs(1)) / 2;
    let mut last_write = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    tokio::time::sleep_until(run.start.into()).await;
    loop {
        let now = Instant::now();
        let sending = seq < quota && !run.sending_over(now);
        if !sending && in_flight.is_empty() {
            // Idle devices (e.g. --messages 0) stay connected until the run ends.
            match run.stop_at {
                Some(stop) if now < stop && quota == 0 => {}
                _ => return Ok(()),
            }
        }
        if !sending && drain_deadline.is_none() {
            drain_deadline = Some(now + run.drain_timeout);
        }
        if let Some(deadline) = drain_deadline
            && now >= deadline
            && !in_flight.is_empty()
        {
            return Err((
                "no PUBACK before the drain timeout".into(),
                in_flight.len() as u64,
            ));
        }
        let can_send = sending && in_flight.len() < window;
        let due = match (&schedule, can_send) {
            (Some(s), true) => Some(s.due(seq)),
            (None, true) => Some(now),
            _ => None,
        };
        // Wake for the next send, the next ping, the drain deadline, or the end of an idle run.
        let mut wake = last_write + ping_every;
        for t in [due, drain_deadline, run.stop_at].into_iter().flatten() {
            wake = wake.min(t);
        }
        tokio::select! {
            biased;
            read = stream.read_buf(&mut rbuf) => {
                match read {
                    Ok(0) | Err(_) => return Err(("connection closed by the server".into(), in_flight.len() as u64)),
                    Ok(_) => {}
                }
                loop {
                    match Packet::read(&mut rbuf, MAX_PACKET) {
                        Ok(Packet::PubAck(ack)) => {
                            if let Some(pos) = in_flight.iter().position(|(id, _)| *id == ack.pkid)
                                && let Some((_, sent_at)) = in_flight.remove(pos)
                            {
                                stats.acked(lane, sent_at.elapsed());
                                dev.acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Packet::Disconnect) => {
                            return Err(("disconnected by the server".into(), in_flight.len() as u64));
                        }
                        Ok(_) => {}
                        Err(mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(_) => return Err(("protocol error".into(), in_flight.len() as u64)),
                    }
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if due.is_some_and(|d| now >= d) {
                    if let Some(s) = &schedule {
                        stats.lag(lane, s.lag(seq, now));
                    }
                    #[allow(clippy::cast_possible_wrap)]
                    run.template.render_into(seq, run.start_ms + seq as i64, &dev.name, &mut payload);
                    let mut publish = Publish::new(TOPIC, conn.qos, payload.as_bytes());
                    if conn.qos == QoS::AtLeastOnce {
                        pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                        publish.pkid = pkid;
                        in_flight.push_back((pkid, now));
                    }
                    if Packet::Publish(publish).write(&mut wbuf, MAX_PACKET).is_err() {
                        return Err(("payload too large to encode".into(), 1));
                    }
                    seq += 1;
                    dev.sent.store(seq, Ordering::Relaxed);
                    stats.sent();
                } else if now >= last_write + ping_every {
                    let _ = PingReq.write(&mut wbuf);
                } else {
                    continue;
                }
                if stream.write_all_buf(&mut wbuf).await.is_err() {
                    return Err(("connection closed by the server".into(), in_flight.len() as u64));
                }
                last_write = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_round_robin_over_loopback() {
        assert_eq!(source_addr(1, 5), None);
        let addrs: Vec<String> = (0..5)
            .filter_map(|l| source_addr(3, l))
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.1",
                "127.0.0.2"
            ]
        );
    }
}

//! The MQTT driver: one task and one connection per simulated device, speaking MQTT 3.1.1
//! through rumqttc's packet codec on a plain tokio socket (no client event loop, so the
//! in-flight window, the timing of every PUBACK and the memory per connection are ours).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{Buf, BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, Login, Packet, PingReq};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{MqttArgs, Run};

const TOPIC: &str = "v1/devices/me/telemetry";
const MAX_PACKET: usize = 1024 * 1024;

/// Connects and drives the devices `lanes` (all of them, or this worker's share with
/// `--processes`).
pub async fn run(run: Arc<Run>, args: &MqttArgs, lanes: std::ops::Range<usize>) -> Result<()> {
    let connect_gap = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    let ramp_start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
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
            wall_clock_ts: args.wall_clock_ts,
        };
        #[allow(clippy::cast_possible_truncation)]
        let connect_at = ramp_start + connect_gap * lane as u32;
        tasks.spawn(async move {
            tokio::time::sleep_until(connect_at.into()).await;
            device(&run, lane, &conn).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

pub(crate) struct Conn {
    pub(crate) target: SocketAddr,
    pub(crate) source: Option<IpAddr>,
    pub(crate) qos: QoS,
    pub(crate) window: usize,
    pub(crate) keep_alive: Duration,
    /// Stamp messages with the wall clock (`--wall-clock-ts`).
    pub(crate) wall_clock_ts: bool,
}

/// 127.0.0.1 .. 127.0.0.n, round-robin; `None` (let the OS choose) with one address.
pub(crate) fn source_addr(addrs: u8, lane: usize) -> Option<IpAddr> {
    if addrs <= 1 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let host = 1 + (lane % usize::from(addrs)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

pub(crate) async fn open(conn: &Conn) -> std::io::Result<TcpStream> {
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

pub(crate) fn connack_reason(ack: &ConnAck) -> Option<String> {
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
pub(crate) async fn next_packet(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Packet, String> {
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

async fn device(run: &Run, lane: usize, conn: &Conn) {
    let stats = &run.stats;
    let dev = &run.devices[lane];
    let Some((mut stream, rbuf)) = login(conn, &format!("loadgen-{lane}"), &dev.token, stats).await
    else {
        return;
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let wbuf = BytesMut::with_capacity(512);
    let outcome = publish_loop(run, lane, conn, &mut stream, rbuf, wbuf).await;
    if let Err((reason, lost)) = outcome {
        stats.failed(&reason, lost);
    }
    let mut bye = BytesMut::new();
    if Packet::Disconnect.write(&mut bye, MAX_PACKET).is_ok() {
        let _ = stream.write_all_buf(&mut bye).await;
    }
    let _ = stream.shutdown().await;
}

/// Opens a connection and logs in with `token`; `None` (the reason counted) when refused.
/// Returns the socket and what was read past the CONNACK.
pub(crate) async fn login(
    conn: &Conn,
    client_id: &str,
    token: &str,
    stats: &crate::report::Stats,
) -> Option<(TcpStream, BytesMut)> {
    let mut stream = match open(conn).await {
        Ok(s) => s,
        Err(e) => {
            stats.connect_failed(&format!("connect: {}", e.kind()));
            return None;
        }
    };
    let mut rbuf = BytesMut::with_capacity(256);
    let mut wbuf = BytesMut::with_capacity(512);
    let mut connect = Connect::new(client_id);
    connect.keep_alive = u16::try_from(conn.keep_alive.as_secs()).unwrap_or(u16::MAX);
    connect.login = Some(Login::new(token.to_owned(), String::new()));
    if Packet::Connect(connect)
        .write(&mut wbuf, MAX_PACKET)
        .is_err()
        || stream.write_all_buf(&mut wbuf).await.is_err()
    {
        stats.connect_failed("connect: write failed");
        return None;
    }
    let reason =
        match tokio::time::timeout(Duration::from_secs(30), next_packet(&mut stream, &mut rbuf))
            .await
        {
            Ok(Ok(Packet::ConnAck(ack))) => match connack_reason(&ack) {
                None => return Some((stream, rbuf)),
                Some(reason) => reason,
            },
            Ok(Ok(_)) => "a packet other than CONNACK".into(),
            Ok(Err(e)) => e,
            Err(_) => "no CONNACK within 30 s".into(),
        };
    stats.connect_failed(&reason);
    None
}

/// Writes a PUBLISH to `topic` (QoS 1 with `pkid` when `qos1`, else QoS 0) straight into `out`:
/// no packet struct, no copy of the topic or payload into owned buffers.
pub(crate) fn put_publish(out: &mut BytesMut, qos1: bool, topic: &[u8], pkid: u16, payload: &[u8]) {
    let remaining = 2 + topic.len() + if qos1 { 2 } else { 0 } + payload.len();
    out.reserve(5 + remaining);
    out.put_u8(if qos1 { 0x32 } else { 0x30 });
    let mut n = remaining;
    loop {
        #[allow(clippy::cast_possible_truncation)]
        let byte = (n % 128) as u8;
        n /= 128;
        out.put_u8(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    #[allow(clippy::cast_possible_truncation)]
    out.put_u16(topic.len() as u16);
    out.put_slice(topic);
    if qos1 {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
}

/// What a batch of bytes read from the server held.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Read {
    pub(crate) pubacks: Vec<u16>,
    pub(crate) pingresps: usize,
    pub(crate) disconnect: bool,
}

/// Takes every whole packet out of `buf`. PUBACKs (4 bytes each, the bulk of what comes back)
/// are parsed in place; anything else goes through the codec.
pub(crate) fn take_packets(buf: &mut BytesMut, read: &mut Read) -> Result<(), String> {
    loop {
        if buf.len() >= 4 && buf[0] == 0x40 && buf[1] == 0x02 {
            read.pubacks.push(u16::from_be_bytes([buf[2], buf[3]]));
            buf.advance(4);
            continue;
        }
        if buf.len() >= 2 && buf[0] == 0xD0 && buf[1] == 0 {
            read.pingresps += 1;
            buf.advance(2);
            continue;
        }
        match Packet::read(buf, MAX_PACKET) {
            Ok(Packet::PubAck(ack)) => read.pubacks.push(ack.pkid),
            Ok(Packet::PingResp) => read.pingresps += 1,
            Ok(Packet::Disconnect) => {
                read.disconnect = true;
                return Ok(());
            }
            Ok(_) => {}
            Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
            // Reasons are report keys: fixed labels, never text that varies per message.
            Err(_) => return Err("protocol error".into()),
        }
    }
}

/// The QoS 1 publishes awaiting their PUBACK, oldest first, with when each was written.
struct InFlight {
    queue: VecDeque<(u16, Instant)>,
}

impl InFlight {
    /// Removes `pkid`, returning when it was sent; PUBACKs nearly always come in order, so the
    /// front is checked first.
    fn ack(&mut self, pkid: u16) -> Option<Instant> {
        if self.queue.front().is_some_and(|(id, _)| *id == pkid) {
            return self.queue.pop_front().map(|(_, at)| at);
        }
        let pos = self.queue.iter().position(|(id, _)| *id == pkid)?;
        self.queue.remove(pos).map(|(_, at)| at)
    }
}

/// Sends this device's share, keeping at most `window` QoS 1 publishes unacknowledged; returns
/// the reason and the number of unacknowledged messages if the run ends badly.
///
/// Per turn of the loop: as many publishes as the window (and the schedule) allow are encoded
/// into one buffer and written with one `write`; then every PUBACK the socket holds is taken
/// in one read. Counters and histograms are updated once per turn, not once per message, and
/// the clock is read once per turn: a publish's latency runs from the start of the write that
/// carried it to the read that found its PUBACK. QoS 0 publishes are confirmed by a PINGREQ
/// after the last one: its PINGRESP shows the server has read them all.
async fn publish_loop(
    run: &Run,
    lane: usize,
    conn: &Conn,
    stream: &mut TcpStream,
    mut rbuf: BytesMut,
    mut wbuf: BytesMut,
) -> Result<(), (String, u64)> {
    let stats = &run.stats;
    let dev = &run.devices[lane];
    let quota = run.quota(lane);
    let schedule = run.schedule(run.devices.len(), lane);
    let qos1 = conn.qos == QoS::AtLeastOnce;
    let wall_clock_ts = conn.wall_clock_ts;
    let window = if qos1 { conn.window } else { usize::MAX };
    // Publishes per write: the window for QoS 1; for QoS 0 (no window) the same number, so a
    // connection still reads between writes.
    let batch_cap = conn.window.max(1);
    let topic = TOPIC.as_bytes();
    let mut in_flight = InFlight {
        queue: VecDeque::with_capacity(conn.window.min(1024)),
    };
    let mut read = Read::default();
    let mut latencies: Vec<Duration> = Vec::with_capacity(conn.window.min(1024));
    let mut lags: Vec<Duration> = Vec::new();
    let mut seq: u64 = 0;
    let mut pkid: u16 = 0;
    let mut payload = String::with_capacity(256);
    let ping_every = conn.keep_alive.max(Duration::from_secs(1)) / 2;
    // QoS 0: messages written and not yet covered by a PINGRESP; the PINGREQ that confirms them.
    let mut unconfirmed: u64 = 0;
    let mut confirming: VecDeque<u64> = VecDeque::new();
    let mut last_write = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let mut last_ts = i64::MIN;
    tokio::time::sleep_until(run.start.into()).await;
    let mut timer_at = run.start;
    let timer = tokio::time::sleep_until(timer_at.into());
    tokio::pin!(timer);
    loop {
        let now = Instant::now();
        let sending = seq < quota && !run.sending_over(now);
        if !sending && unconfirmed > 0 {
            // The last QoS 0 publishes: the PINGRESP to this PINGREQ confirms them.
            let _ = PingReq.write(&mut wbuf);
            confirming.push_back(std::mem::take(&mut unconfirmed));
        }
        let waiting = in_flight.queue.len() as u64 + confirming.iter().sum::<u64>();
        if !sending && waiting == 0 && wbuf.is_empty() {
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
            && waiting > 0
        {
            let what = if qos1 { "no PUBACK" } else { "no PINGRESP" };
            return Err((format!("{what} before the drain timeout"), waiting));
        }

        // Write: everything the window and the schedule allow now, in one buffer.
        let mut written: u64 = 0;
        while sending && seq < quota && in_flight.queue.len() < window && written < batch_cap as u64
        {
            if let Some(s) = &schedule {
                if s.due(seq) > now {
                    break;
                }
                lags.push(s.lag(seq, now));
            }
            #[allow(clippy::cast_possible_wrap)]
            let ts = if wall_clock_ts {
                last_ts = crate::now_ms().max(last_ts + 1);
                last_ts
            } else {
                run.start_ms + seq as i64
            };
            run.template.render_into(seq, ts, &dev.name, &mut payload);
            if 2 + topic.len() + 2 + payload.len() > MAX_PACKET {
                return Err(("payload too large to encode".into(), 1));
            }
            if qos1 {
                pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                in_flight.queue.push_back((pkid, now));
            }
            put_publish(&mut wbuf, qos1, topic, pkid, payload.as_bytes());
            seq += 1;
            written += 1;
        }
        if written > 0 {
            dev.sent.store(seq, Ordering::Relaxed);
            stats.sent_n(written);
            if !qos1 {
                unconfirmed += written;
            }
            if !lags.is_empty() {
                stats.lags(lane, &lags);
                lags.clear();
            }
        } else if wbuf.is_empty() && now >= last_write + ping_every {
            let _ = PingReq.write(&mut wbuf);
            confirming.push_back(0);
        }
        if !wbuf.is_empty() {
            if stream.write_all_buf(&mut wbuf).await.is_err() {
                let lost = in_flight.queue.len() as u64 + confirming.iter().sum::<u64>();
                return Err(("connection closed by the server".into(), lost));
            }
            last_write = now;
        }

        if sending && seq >= quota {
            // That was the last publish: the next turn starts the drain (and confirms QoS 0).
            continue;
        }
        // Wait: for the server's answers, or for the next thing due. When more can be sent
        // at once, only what is already readable is taken.
        let more_now = seq < quota
            && in_flight.queue.len() < window
            && schedule
                .as_ref()
                .is_none_or(|s| s.due(seq) <= Instant::now());
        let got = if more_now && sending {
            match stream.try_read_buf(&mut rbuf) {
                Ok(0) => Err(()),
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::task::consume_budget().await;
                    Ok(false)
                }
                Err(_) => Err(()),
            }
        } else {
            let mut wake = last_write + ping_every;
            let next_due = (sending && in_flight.queue.len() < window)
                .then(|| schedule.as_ref().map(|s| s.due(seq)))
                .flatten();
            for t in [next_due, drain_deadline, run.stop_at]
                .into_iter()
                .flatten()
            {
                wake = wake.min(t);
            }
            if wake != timer_at {
                timer_at = wake;
                timer.as_mut().reset(wake.into());
            }
            tokio::select! {
                biased;
                r = stream.read_buf(&mut rbuf) => match r {
                    Ok(0) | Err(_) => Err(()),
                    Ok(_) => Ok(true),
                },
                () = &mut timer => Ok(false),
            }
        };
        match got {
            Err(()) => {
                let lost = in_flight.queue.len() as u64 + confirming.iter().sum::<u64>();
                return Err(("connection closed by the server".into(), lost));
            }
            Ok(false) => continue,
            Ok(true) => {}
        }
        if let Err(reason) = take_packets(&mut rbuf, &mut read) {
            let lost = in_flight.queue.len() as u64 + confirming.iter().sum::<u64>();
            return Err((reason, lost));
        }
        let at = Instant::now();
        for id in read.pubacks.drain(..) {
            if let Some(sent_at) = in_flight.ack(id) {
                latencies.push(at.saturating_duration_since(sent_at));
            }
        }
        let mut confirmed: u64 = 0;
        for _ in 0..std::mem::take(&mut read.pingresps) {
            confirmed += confirming.pop_front().unwrap_or(0);
        }
        let acked = latencies.len() as u64 + confirmed;
        if acked > 0 {
            dev.acked.fetch_add(acked, Ordering::Relaxed);
            stats.acked_n(lane, &latencies, confirmed);
            latencies.clear();
        }
        if std::mem::take(&mut read.disconnect) {
            let lost = in_flight.queue.len() as u64 + confirming.iter().sum::<u64>();
            return Err(("disconnected by the server".into(), lost));
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

//! The yardstick of the MQTT benchmarks: a minimal raw-socket MQTT 3.1.1 publisher, with no
//! codec crate, no latency recording and no progress display, so that what it measures is the
//! server. Each connection keeps `--inflight` QoS 1 publishes unacknowledged: it writes the whole
//! window at once, then for every batch of PUBACKs read it writes as many new publishes in one
//! `write`. QoS 0 writes in batches of `--inflight` and ends each connection with a PINGREQ, whose
//! PINGRESP shows the server has read everything before it.
//!
//! Prints one JSON line: messages, seconds, messages per second (acknowledged for QoS 1).
//!
//! ```sh
//! rawpub --target 127.0.0.1:1883 --connections 100 --inflight 16 --messages 1000000
//! rawpub --target 127.0.0.1:1883 --token-prefix loadgen- ...   # the engine's devices
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "Minimal MQTT 3.1.1 publisher: the instrument the load generator is held to")]
struct Args {
    /// The MQTT server.
    #[arg(long, default_value = "127.0.0.1:1883")]
    target: String,
    /// Connections, each its own client id (`rawpub-<i>`).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Publishes in flight per connection (QoS 1), or per write (QoS 0).
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Messages over all connections.
    #[arg(long, default_value_t = 300_000)]
    messages: u64,
    /// 0 or 1.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// When given, connection i logs in with the username `<prefix><i>` (the engine's access
    /// tokens, as `loadgen --token-prefix` creates them).
    #[arg(long)]
    token_prefix: Option<String>,
    #[arg(long, default_value = "v1/devices/me/telemetry")]
    topic: String,
    #[arg(
        long,
        default_value = r#"{"temperature":21.5,"humidity":60,"active":true}"#
    )]
    payload: String,
}

/// MQTT's variable-length "remaining length".
fn put_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn connect_packet(client_id: &str, username: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4); // 3.1.1
    body.push(0x02 | if username.is_some() { 0x80 } else { 0 }); // clean session
    body.extend_from_slice(&60u16.to_be_bytes()); // keep-alive
    put_str(&mut body, client_id.as_bytes());
    if let Some(user) = username {
        put_str(&mut body, user.as_bytes());
    }
    let mut packet = vec![0x10];
    put_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// A PUBLISH whose packet id sits at `id_at`, to be patched per message.
struct Template {
    bytes: Vec<u8>,
    id_at: Option<usize>,
}

impl Template {
    fn new(topic: &str, payload: &[u8], qos: u8) -> Template {
        let id_len = if qos == 1 { 2 } else { 0 };
        let mut bytes = vec![0x30 | (qos << 1)];
        put_length(&mut bytes, 2 + topic.len() + id_len + payload.len());
        put_str(&mut bytes, topic.as_bytes());
        let id_at = (qos == 1).then(|| {
            let at = bytes.len();
            bytes.extend_from_slice(&[0, 0]);
            at
        });
        bytes.extend_from_slice(payload);
        Template { bytes, id_at }
    }

    fn push(&self, out: &mut Vec<u8>, id: u16) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.id_at {
            out[start + at..start + at + 2].copy_from_slice(&id.to_be_bytes());
        }
    }
}

/// Packet ids 1..=65535, in turn.
fn next_id(id: &mut u16) -> u16 {
    *id = id.wrapping_add(1);
    if *id == 0 {
        *id = 1;
    }
    *id
}

async fn connect(args: &Args, i: usize) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(&args.target)
        .await
        .with_context(|| format!("connecting to {}", args.target))?;
    stream.set_nodelay(true)?;
    let username = args.token_prefix.as_ref().map(|p| format!("{p}{i}"));
    stream
        .write_all(&connect_packet(&format!("rawpub-{i}"), username.as_deref()))
        .await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.context("CONNACK")?;
    ensure!(
        connack[0] == 0x20 && connack[3] == 0,
        "connection {i} refused: {connack:?}"
    );
    Ok(stream)
}

/// Sends `count` QoS 1 publishes with `window` unacknowledged; returns when all are acknowledged.
async fn run_qos1(
    mut stream: TcpStream,
    template: &Template,
    count: u64,
    window: usize,
) -> anyhow::Result<()> {
    let mut out = Vec::with_capacity(template.bytes.len() * window);
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let (mut sent, mut acked, mut id) = (0u64, 0u64, 0u16);
    let mut due = window.min(count as usize);
    while acked < count {
        out.clear();
        for _ in 0..due {
            template.push(&mut out, next_id(&mut id));
        }
        sent += due as u64;
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        // Read until at least one PUBACK is complete; every PUBACK is 4 bytes (0x40 0x02 id id).
        loop {
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                bail!("the server closed the connection after {acked} acknowledgements");
            }
            filled += n;
            if filled >= 4 {
                break;
            }
        }
        let whole = filled / 4 * 4;
        for ack in buf[..whole].chunks_exact(4) {
            ensure!(ack[0] == 0x40 && ack[1] == 2, "not a PUBACK: {ack:?}");
        }
        let got = (whole / 4) as u64;
        acked += got;
        buf.copy_within(whole..filled, 0);
        filled -= whole;
        due = got.min(count - sent) as usize;
    }
    stream.write_all(&[0xE0, 0]).await?;
    Ok(())
}

/// Sends `count` QoS 0 publishes in writes of `batch`, then waits for a PINGRESP.
async fn run_qos0(
    mut stream: TcpStream,
    template: &Template,
    count: u64,
    batch: usize,
) -> anyhow::Result<()> {
    let mut out = Vec::with_capacity(template.bytes.len() * batch);
    let mut sent = 0u64;
    while sent < count {
        out.clear();
        let n = (batch as u64).min(count - sent);
        for _ in 0..n {
            template.push(&mut out, 0);
        }
        stream.write_all(&out).await?;
        sent += n;
    }
    stream.write_all(&[0xC0, 0]).await?;
    let mut pingresp = [0u8; 2];
    stream.read_exact(&mut pingresp).await.context("PINGRESP")?;
    ensure!(pingresp == [0xD0, 0], "not a PINGRESP: {pingresp:?}");
    stream.write_all(&[0xE0, 0]).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.qos <= 1, "--qos is 0 or 1");
    ensure!(
        (1..=65_535).contains(&args.inflight),
        "--inflight is 1 to 65535"
    );
    ensure!(args.connections > 0, "--connections is at least 1");
    let template = std::sync::Arc::new(Template::new(
        &args.topic,
        args.payload.as_bytes(),
        args.qos,
    ));

    let mut streams = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        streams.push(connect(&args, i).await?);
    }

    let start = Instant::now();
    let per = args.messages / args.connections as u64;
    let extra = args.messages % args.connections as u64;
    let mut tasks = Vec::with_capacity(args.connections);
    for (i, stream) in streams.into_iter().enumerate() {
        let count = per + u64::from((i as u64) < extra);
        let (template, window, qos) = (template.clone(), args.inflight, args.qos);
        tasks.push(tokio::spawn(async move {
            if qos == 1 {
                run_qos1(stream, &template, count, window).await
            } else {
                run_qos0(stream, &template, count, window).await
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = start.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    println!(
        r#"{{"client":"rawpub","qos":{},"connections":{},"inflight":{},"messages":{},"seconds":{:.3},"rate":{:.0}}}"#,
        args.qos,
        args.connections,
        args.inflight,
        args.messages,
        secs,
        args.messages as f64 / secs
    );
    Ok(())
}

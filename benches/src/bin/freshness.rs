//! Ingest-to-queryable latency of the production path: one probe device publishes a numbered
//! QoS 1 message every `--every`; for each, the time from its PUBACK until ClickHouse answers a
//! query with it. Run it beside a load; prints one JSON line with p50/p90/p99/max in ms.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Parser)]
#[command(about = "Measure PUBACK-to-queryable latency through the engine into ClickHouse")]
struct Args {
    /// The engine's MQTT listener.
    #[arg(long)]
    mqtt: String,
    /// The probe device's access token (the device must exist).
    #[arg(long)]
    token: String,
    /// ClickHouse's HTTP interface and the engine's database.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse: String,
    #[arg(long, default_value = "engine")]
    database: String,
    /// Probes to send, one every `every_ms`.
    #[arg(long, default_value_t = 50)]
    probes: u32,
    #[arg(long, default_value_t = 200)]
    every_ms: u64,
}

/// The highest probe number ClickHouse shows.
async fn visible(http: &reqwest::Client, args: &Args) -> anyhow::Result<i64> {
    let sql = format!(
        "SELECT max(long_v) FROM {}.ts_kv WHERE key = 'probe'",
        args.database
    );
    let text = http
        .post(&args.clickhouse)
        .body(sql)
        .send()
        .await?
        .text()
        .await?;
    Ok(text.trim().parse().unwrap_or(-1))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (host, port) = args.mqtt.rsplit_once(':').context("--mqtt is host:port")?;
    let mut options = MqttOptions::new("freshness-probe", host, port.parse()?);
    options.set_credentials(args.token.clone(), "");
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 100);
    // PUBACK times by packet id, and packet ids by probe number.
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<(u16, Instant)>();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let _ = acks_tx.send((ack.pkid, Instant::now()));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("probe connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let http = reqwest::Client::new();
    let base = visible(&http, &args).await?.max(0) + 1;
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut acked_at: HashMap<i64, Instant> = HashMap::new();
    let mut pkid_of = 1u16;
    let mut pkids: HashMap<u16, i64> = HashMap::new();
    let mut next_send = Instant::now();
    let mut sent = 0;
    let mut seen = base - 1;
    let deadline_after_last = Duration::from_secs(60);
    let mut last_sent_at = Instant::now();
    while seen < base + i64::from(args.probes) - 1 {
        if sent < args.probes && Instant::now() >= next_send {
            let n = base + i64::from(sent);
            let payload = format!(r#"{{"probe":{n}}}"#);
            client
                .publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, payload)
                .await?;
            // rumqttc numbers packets 1, 2, 3, ... in order.
            pkids.insert(pkid_of, n);
            pkid_of = pkid_of.wrapping_add(1).max(1);
            sent += 1;
            next_send += Duration::from_millis(args.every_ms);
            last_sent_at = Instant::now();
        }
        while let Ok((pkid, at)) = acks.try_recv() {
            if let Some(n) = pkids.remove(&pkid) {
                acked_at.insert(n, at);
            }
        }
        let now_visible = visible(&http, &args).await?;
        let now = Instant::now();
        while seen < now_visible {
            seen += 1;
            if let Some(at) = acked_at.remove(&seen) {
                let ms = u64::try_from(now.saturating_duration_since(at).as_millis())
                    .unwrap_or(u64::MAX);
                histogram.record(ms.max(1))?;
            }
        }
        anyhow::ensure!(
            last_sent_at.elapsed() < deadline_after_last,
            "probes not visible 60 s after the last was sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        r#"{{"probes":{},"p50_ms":{},"p90_ms":{},"p99_ms":{},"max_ms":{}}}"#,
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.9),
        histogram.value_at_quantile(0.99),
        histogram.max()
    );
    Ok(())
}

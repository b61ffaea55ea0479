//! The ceiling of the production-path benchmark: how fast this machine's ClickHouse takes the
//! same time-series rows the engine writes (smart-meter messages: a long, a bool and a double
//! per message), bulk-inserted straight from Rust in RowBinary batches by one writer, as the
//! engine's sink does, into a copy of the engine's `ts_kv` table. Prints one JSON line.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clickhouse::{Client, Row};
use serde::Serialize;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Bulk-insert smart-meter rows into a copy of the engine's ts_kv table")]
struct Args {
    /// ClickHouse's HTTP interface.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    url: String,
    /// The engine's database (its `ts_kv` gives the table's structure).
    #[arg(long, default_value = "engine")]
    database: String,
    /// Data points to insert.
    #[arg(long, default_value_t = 3_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Rows per INSERT (the engine's sink writes batches of up to 50 000 messages).
    #[arg(long, default_value_t = 150_000)]
    batch: usize,
}

/// A row of `ts_kv`, in its column order.
#[derive(Row, Serialize)]
struct TsKv {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    key: &'static str,
    ts: i64,
    #[serde(rename = "type")]
    kind: i8,
    bool_v: u8,
    long_v: i64,
    dbl_v: f64,
    str_v: &'static str,
    json_v: &'static str,
    ver: u64,
}

fn row(i: usize, devices: &[Uuid]) -> TsKv {
    let message = i / 3;
    let device = devices[message % devices.len()];
    let ts = 1_700_000_000_000 + i64::try_from(message / devices.len()).unwrap_or(0);
    let mut r = TsKv {
        device_id: device,
        key: "",
        ts,
        kind: 0,
        bool_v: 0,
        long_v: 0,
        dbl_v: 0.0,
        str_v: "",
        json_v: "",
        ver: 1,
    };
    match i % 3 {
        0 => (r.key, r.kind, r.long_v) = ("pulseCounter", 2, i64::try_from(message).unwrap_or(0)),
        1 => (r.key, r.kind, r.bool_v) = ("leakage", 1, u8::from(message.is_multiple_of(7))),
        _ => {
            #[allow(clippy::cast_precision_loss)]
            let level = (message % 1000) as f64 / 10.0;
            (r.key, r.kind, r.dbl_v) = ("batteryLevel", 3, level);
        }
    }
    r
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::default()
        .with_url(&args.url)
        .with_database(&args.database)
        .with_validation(false);
    client
        .query("DROP TABLE IF EXISTS bulk_ceiling")
        .execute()
        .await
        .context("cannot reach ClickHouse")?;
    client
        .query("CREATE TABLE bulk_ceiling AS ts_kv")
        .execute()
        .await
        .context(
            "the engine's ts_kv table is needed (run the engine against this database first)",
        )?;
    let devices: Vec<Uuid> = (0..args.devices.max(1)).map(|_| Uuid::new_v4()).collect();
    let started = Instant::now();
    let mut written = 0;
    while written < args.rows {
        let n = args.batch.min(args.rows - written);
        let mut insert = client.insert::<TsKv>("bulk_ceiling").await?;
        for i in written..written + n {
            insert.write(&row(i, &devices)).await?;
        }
        insert.end().await?;
        written += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    client.query("DROP TABLE bulk_ceiling").execute().await?;
    #[allow(clippy::cast_precision_loss)]
    let rate = written as f64 / seconds;
    println!(r#"{{"rows":{written},"seconds":{seconds:.3},"rows_per_s":{rate:.0}}}"#);
    Ok(())
}

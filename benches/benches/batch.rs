//! Building the storage write batch from queued messages.

use std::hint::black_box;

use actors::batch::WriteBatch;
use actors::model::{DeviceId, Message, MessageBody, TenantId};
use actors::payload::parse_telemetry;
use benches::OBJECT;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn batch(c: &mut Criterion) {
    let tenant = TenantId::from_name("bench");
    let messages: Vec<Message> = (0..10_000)
        .map(|i| Message {
            tenant_id: tenant,
            device_id: DeviceId::derive(tenant, &format!("device-{}", i % 1000)),
            received_ts: i,
            body: MessageBody::Telemetry(parse_telemetry(OBJECT.as_bytes(), i).unwrap_or_default()),
        })
        .collect();
    let mut group = c.benchmark_group("write_batch");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("from_10k_messages", |b| {
        b.iter(|| WriteBatch::from_messages(black_box(&messages).iter()))
    });
    group.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);

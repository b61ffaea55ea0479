//! The way back's hot paths: the owner's state handling an RPC round trip for a subscribed
//! device, a shared-attribute update's fan-out decision, and the bodies devices get.

use std::hint::black_box;

use actors::downlink::event::{Caller, DeviceEvent, NodeId};
use actors::downlink::owner::Owned;
use actors::downlink::rpc::{Direction, RpcRequest};
use actors::model::{DeviceId, KvEntry, KvValue, TenantId};
use actors::protocol::{attributes, rpc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const DEVICES: usize = 10_000;

fn downlink(c: &mut Criterion) {
    let tenant = TenantId::from_name("bench");
    let devices: Vec<DeviceId> = (0..DEVICES)
        .map(|i| DeviceId::derive(tenant, &format!("device-{i}")))
        .collect();
    let node = NodeId::from("node-a");
    let mut owned = Owned::new(64, 10_000);
    for (i, d) in devices.iter().enumerate() {
        let session = DeviceEvent::Session {
            node: node.clone(),
            session: i as u64,
            seq: 1,
            rpc: true,
            attributes: true,
            live: false,
            once: false,
        };
        owned.handle(*d, session, 0);
    }
    let request = RpcRequest {
        method: "setGpio".into(),
        params: r#"{"pin":7,"value":1}"#.into(),
        direction: Direction::TwoWay,
        expires_at: i64::MAX,
        retries: 0,
    };
    let mut group = c.benchmark_group("downlink_owner");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    group.bench_function("rpc_round_trip_10k_devices", |b| {
        b.iter(|| {
            next = (next + 1) % DEVICES;
            let device = devices[next];
            let sent = owned.handle(
                device,
                DeviceEvent::RpcRequest {
                    caller: Caller::Call {
                        node: node.clone(),
                        call: next as u64,
                    },
                    request: request.clone(),
                },
                1,
            );
            black_box(&sent);
            // Every request of a device gets the next id; the reply names the last one.
            let id = match sent.first() {
                Some(actors::downlink::owner::Effect::Send {
                    message:
                        actors::downlink::event::ToNode::Deliver {
                            delivery: actors::downlink::event::Delivery::Rpc(o),
                            ..
                        },
                    ..
                }) => o.id,
                _ => 0,
            };
            black_box(owned.handle(
                device,
                DeviceEvent::RpcReply {
                    id,
                    payload: b"{\"ok\":true}".to_vec(),
                },
                2,
            ))
        })
    });
    let entries = vec![
        KvEntry::new("interval", KvValue::Long(30)),
        KvEntry::new("mode", KvValue::String("eco".into())),
    ];
    group.bench_function("shared_update_fan_out_decision", |b| {
        b.iter(|| {
            next = (next + 1) % DEVICES;
            black_box(owned.shared_updated(devices[next], black_box(&entries)))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("downlink_bodies");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mqtt_rpc_request", |b| {
        b.iter(|| rpc::mqtt_request(black_box(&request)))
    });
    group.bench_function("http_rpc_request", |b| {
        b.iter(|| rpc::http_request(black_box(7), black_box(&request)))
    });
    group.bench_function("attribute_update", |b| {
        b.iter(|| attributes::update(black_box(&entries)))
    });
    group.finish();
}

criterion_group!(benches, downlink);
criterion_main!(benches);

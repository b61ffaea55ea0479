//! Telemetry JSON to normalised records, per payload format.

use std::hint::black_box;

use actors::payload::{parse_attributes, parse_telemetry};
use benches::{ALL_TYPES, ARRAY, OBJECT, WITH_TS, many_keys};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn payloads(c: &mut Criterion) {
    let plc = many_keys(50);
    let cases: [(&str, &str); 5] = [
        ("object", OBJECT),
        ("all_types", ALL_TYPES),
        ("array", ARRAY),
        ("with_ts", WITH_TS),
        ("plc_50_keys", &plc),
    ];
    let mut group = c.benchmark_group("parse_telemetry");
    for (name, payload) in cases {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| parse_telemetry(black_box(payload.as_bytes()), 1_700_000_000_000))
        });
    }
    group.finish();
    c.bench_function("parse_attributes/all_types", |b| {
        b.iter(|| parse_attributes(black_box(ALL_TYPES.as_bytes())))
    });
}

criterion_group!(benches, payloads);
criterion_main!(benches);

//! Converters through the project's runtime against a plain Rhai engine, on the CoAP guide's CSV
//! decoder and on a JSON decoder.
//!
//! - runtime: `ConverterRuntime::uplink_compiled`, the path integrations use: the script
//!   compiled once per converter version, limits on, output checked and converted to typed
//!   records.
//! - plain: `rhai::Engine::new()` with the same helper functions registered (the script needs
//!   them), evaluating the script text with a fresh `Scope` per message, output left as is.
//!
//! Criterion measures both; then one interleaved timing run prints both rates and the ratio.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use actors::converter::{ConverterRuntime, Limits, helpers};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rhai::{Blob, Dynamic, Engine, Map, Scope};

const CSV: &str = include_str!("../../examples/converters/coap-csv.rhai");
const CSV_PAYLOAD: &[u8] = b"SN-001,default,temperature,25.7,humidity,69\n";
const JSON: &str = include_str!("../../examples/converters/json-uplink.rhai");
const JSON_PAYLOAD: &[u8] =
    br#"{"serialNumber":"SN-111","model":"Model A","temperature":42,"humidity":80.5}"#;

fn plain_engine() -> Engine {
    let mut engine = Engine::new();
    helpers::register(&mut engine);
    engine
}

fn plain(engine: &Engine, script: &str, payload: &[u8]) -> Dynamic {
    let mut scope = Scope::new();
    scope.push_constant("payload", Blob::from(payload));
    scope.push_constant("metadata", Map::new());
    scope.push_constant("JSON", helpers::JsonApi);
    engine
        .eval_with_scope::<Dynamic>(&mut scope, script)
        .expect("the plain engine runs the script")
}

fn cases() -> [(&'static str, &'static str, &'static [u8]); 2] {
    [("coap_csv", CSV, CSV_PAYLOAD), ("json", JSON, JSON_PAYLOAD)]
}

fn converters(c: &mut Criterion) {
    let runtime = ConverterRuntime::new(&Limits::default());
    let engine = plain_engine();
    let metadata = BTreeMap::new();
    for (name, script, payload) in cases() {
        let mut group = c.benchmark_group(format!("converter/{name}"));
        group.throughput(Throughput::Elements(1));
        let compiled = runtime.compile(script).expect("compiles");
        group.bench_function("runtime", |b| {
            b.iter(|| runtime.uplink_compiled(&compiled, black_box(payload), &metadata))
        });
        group.bench_function("plain_engine", |b| {
            b.iter(|| plain(&engine, black_box(script), black_box(payload)))
        });
        group.finish();
    }
    print_ratios(&runtime, &engine);
}

/// Conversions per second over `window`, alternating the two in slices so machine noise hits
/// both alike.
fn print_ratios(runtime: &ConverterRuntime, engine: &Engine) {
    let metadata = BTreeMap::new();
    let window = Duration::from_secs(2);
    println!();
    println!("| converter | runtime conv/s | plain engine conv/s | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, script, payload) in cases() {
        let compiled = runtime.compile(script).expect("compiles");
        let (mut ours, mut theirs) = ((0u64, Duration::ZERO), (0u64, Duration::ZERO));
        let deadline = Instant::now() + window * 2;
        while Instant::now() < deadline {
            let t = Instant::now();
            for _ in 0..200 {
                let _ = black_box(runtime.uplink_compiled(&compiled, payload, &metadata));
            }
            ours = (ours.0 + 200, ours.1 + t.elapsed());
            let t = Instant::now();
            for _ in 0..200 {
                let _ = black_box(plain(engine, script, payload));
            }
            theirs = (theirs.0 + 200, theirs.1 + t.elapsed());
        }
        let rate = |(n, d): (u64, Duration)| n as f64 / d.as_secs_f64();
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            rate(ours),
            rate(theirs),
            rate(ours) / rate(theirs)
        );
    }
}

criterion_group!(benches, converters);
criterion_main!(benches);

#!/usr/bin/env bash
# Where the engine's time goes under sustained MQTT load: the engine (release, embedded
# defaults, every message stored) takes MESSAGES (1 000 000) QoS 1 publishes from the raw
# publisher (DEVICES connections, INFLIGHT in flight each) while `perf record` samples it; the
# call stacks are summed by component (benches/profile_summary.py: a sample belongs to the
# innermost frame that names a component) and printed as a table of shares of the engine's CPU
# time. Needs perf (Debian: linux-perf). QOS=0 profiles QoS 0 publishes.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-100}
INFLIGHT=${INFLIGHT:-16}
MESSAGES=${MESSAGES:-1000000}
QOS=${QOS:-1}
MQTT=127.0.0.1:21893
HTTP=127.0.0.1:28090
COAP=127.0.0.1:25693
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release -p engine -p loadgen -p benches --bins >&2
work=$(mktemp -d)
engine_pid=""
cleanup() { [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
target/release/engine serve --mqtt-bind "$MQTT" --http-bind "$HTTP" --coap-bind "$COAP" \
  --data-dir "$work/data" --log warn &
engine_pid=$!
wait_port "$HTTP"; wait_port "$MQTT"
target/release/loadgen mqtt --target "$MQTT" --devices "$DEVICES" --provision "http://$HTTP" \
  --provision-only --quiet >/dev/null
perf record -F 199 --call-graph dwarf,16384 -p "$engine_pid" -o "$work/perf.data" 2>/dev/null &
perf_pid=$!
sleep 1
target/release/rawpub --target "$MQTT" --connections "$DEVICES" --inflight "$INFLIGHT" \
  --messages "$MESSAGES" --qos "$QOS" --token-prefix loadgen- >&2
# The store may still be writing what was acknowledged: keep sampling until the engine idles.
for _ in $(seq 60); do
  sleep 1
  [ "$(ps -o cputime= -p "$engine_pid")" = "${last:-}" ] && break
  last=$(ps -o cputime= -p "$engine_pid")
done
kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
perf script -i "$work/perf.data" 2>/dev/null | python3 benches/profile_summary.py

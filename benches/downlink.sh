#!/usr/bin/env bash
# The way back, benchmarked: `loadgen downlink` against the engine (embedded defaults, release
# build), all on loopback in one run, for each device count in DEVICE_COUNTS (1000 10000):
#  - two-way RPC round trips through the REST API (CONCURRENCY callers, DURATION) to MQTT
#    devices that answer at once: round trips/s and the REST call's latency;
#  - shared-attribute fan-out: ROUNDS updates per device through the REST API, each delivered
#    to the device's MQTT session: deliveries/s and post-to-delivery latency;
#  - CPU seconds of loadgen and of the engine over the RPC phase (the honesty check: a load
#    generator using a fraction of what the engine uses is not what limits the figures), and
#    the engine's resident memory per connected, subscribed device.
# Prints a table and writes it to benches/results/<date>-<commit>-downlink.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE_COUNTS=${DEVICE_COUNTS:-"1000 10000"}
CONCURRENCY=${CONCURRENCY:-64}
DURATION=${DURATION:-20s}
ROUNDS=${ROUNDS:-5}
ENGINE_MQTT=127.0.0.1:21983
ENGINE_HTTP=127.0.0.1:28180

cargo build --release -p engine -p loadgen --bins
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split('.'): v=v[k]
print(v if not isinstance(v, float) else round(v, 2))" "$1" "$2"; }

commit=$(git rev-parse --short HEAD)
out="benches/results/$(date +%F)-$commit-downlink.md"
{
  echo "#### The way back, $(date +%F), commit $commit, $(nproc) cores"
  echo
  echo "loadgen downlink against the engine (embedded defaults, release build): MQTT devices"
  echo "answering every two-way RPC at once; $CONCURRENCY REST callers for $DURATION; $ROUNDS"
  echo "shared-attribute updates per device. Every client on the same machine over loopback."
  echo
  echo "| devices | RPC round trips/s | RPC p50 / p99 | failed | attribute deliveries/s | delivery p50 / p99 | CPU loadgen / engine (RPC phase) | engine RSS per device |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$out.head"
rows=""
for n in $DEVICE_COUNTS; do
  target/release/engine serve --mqtt-bind "$ENGINE_MQTT" --http-bind "$ENGINE_HTTP" \
    --coap-bind 127.0.0.1:0 --data-dir "$work/engine-$n" --log warn &
  engine_pid=$!; pids+=("$engine_pid")
  wait_port "$ENGINE_HTTP"; wait_port "$ENGINE_MQTT"
  json="$work/downlink-$n.json"
  target/release/loadgen downlink --target "$ENGINE_MQTT" --rest "http://$ENGINE_HTTP" \
    --devices "$n" --concurrency "$CONCURRENCY" --duration "$DURATION" --rounds "$ROUNDS" \
    --token-prefix "bench-$n-" --json "$json"
  rows+="| $n | $(field "$json" rpc_per_second) | $(field "$json" rpc_latency.p50) / $(field "$json" rpc_latency.p99) ms | $(field "$json" rpc_failed) | $(field "$json" updates_per_second) | $(field "$json" update_latency.p50) / $(field "$json" update_latency.p99) ms | $(field "$json" loadgen_rpc_cpu_seconds) / $(field "$json" engine_rpc_cpu_seconds) s of $(field "$json" rpc_seconds) s | $(field "$json" engine_rss_per_device_kib) KiB |"$'\n'
  kill -TERM "$engine_pid"; wait "$engine_pid" 2>/dev/null || true
done
{ cat "$out.head"; printf '%s' "$rows"; } >"$out"
rm -f "$out.head"
cat "$out"
echo "written to $out"

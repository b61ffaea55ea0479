#!/usr/bin/env bash
# Live fan-out, benchmarked: devices send telemetry over MQTT (`loadgen mqtt --wall-clock-ts`,
# RATE messages/s over DEVICES devices, QoS 1) while `loadgen live` holds SESSIONS WebSocket
# sessions, each subscribed to every device's `pulseCounter`, against the engine (embedded
# defaults, release build), all on loopback in one run, for each count in SESSION_COUNTS:
#  - uplink: messages/s the engine acknowledged (the same run);
#  - fan-out: points delivered to WebSocket clients per second (ideally RATE x SESSIONS), and
#    each point's latency from its wall-clock timestamp to its arrival (ingest -> storage ->
#    live hub -> WebSocket);
#  - CPU seconds of the WebSocket receiver and of the engine while counting (the honesty check:
#    a receiver using a fraction of what the engine uses is not what limits the figures).
# Prints a table and writes it to benches/results/<date>-<commit>-live.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000}
RATE=${RATE:-10000}
SESSION_COUNTS=${SESSION_COUNTS:-"1 10 25"}
DURATION=${DURATION:-20s}
ENGINE_MQTT=127.0.0.1:22983
ENGINE_HTTP=127.0.0.1:29180

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
seconds() { python3 -c "import sys; s=sys.argv[1]; print(int(s[:-1]) if s.endswith('s') else int(s))" "$1"; }

commit=$(git rev-parse --short HEAD)
out="benches/results/$(date +%F)-$commit-live.md"
{
  echo "#### Live fan-out, $(date +%F), commit $commit, $(nproc) cores"
  echo
  echo "loadgen mqtt (QoS 1, $RATE msg/s over $DEVICES devices, wall-clock timestamps) and"
  echo "loadgen live (WebSocket sessions, each subscribed to every device) against the engine"
  echo "(embedded defaults, release build), $DURATION counted. Every client on the same machine."
  echo
  echo "| sessions | subscriptions | uplink acked msg/s | updates delivered/s | of offered | latency p50 / p99 | sessions closed | CPU receiver / engine |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$out.head"
rows=""
send_for=$(( $(seconds "$DURATION") + 30 ))
for s in $SESSION_COUNTS; do
  ENGINE_WS__MAX_SUBSCRIPTIONS_PER_USER=$((s * DEVICES + 1)) \
    target/release/engine serve --mqtt-bind "$ENGINE_MQTT" --http-bind "$ENGINE_HTTP" \
    --coap-bind 127.0.0.1:0 --data-dir "$work/engine-$s" --log warn &
  engine_pid=$!; pids+=("$engine_pid")
  wait_port "$ENGINE_HTTP"; wait_port "$ENGINE_MQTT"
  target/release/loadgen mqtt --target "$ENGINE_MQTT" --provision "http://$ENGINE_HTTP" \
    --provision-only --devices "$DEVICES" --quiet
  target/release/loadgen mqtt --target "$ENGINE_MQTT" --devices "$DEVICES" --rate "$RATE" \
    --duration "${send_for}s" --wall-clock-ts --quiet --json "$work/uplink-$s.json" >/dev/null &
  uplink_pid=$!; pids+=("$uplink_pid")
  live="$work/live-$s.json"
  # Exits non-zero when the engine closed a session (it could not keep up): still reported.
  target/release/loadgen live --rest "http://$ENGINE_HTTP" --sessions "$s" --devices "$DEVICES" \
    --duration "$DURATION" --json "$live" || true
  wait "$uplink_pid" || true
  offered=$(python3 -c "print(round($(field "$live" updates_per_second) / ($RATE * $s), 3))")
  rows+="| $s | $((s * DEVICES)) | $(field "$work/uplink-$s.json" acked_per_second) | $(field "$live" updates_per_second) | $offered | $(field "$live" latency.p50) / $(field "$live" latency.p99) ms | $(field "$live" closed) | $(field "$live" loadgen_cpu_seconds) / $(field "$live" engine_cpu_seconds) s of $(field "$live" seconds) s |"$'\n'
  kill -TERM "$engine_pid"; wait "$engine_pid" 2>/dev/null || true
done
{ cat "$out.head"; printf '%s' "$rows"; } >"$out"
rm -f "$out.head"
cat "$out"
echo "written to $out"

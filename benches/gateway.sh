#!/usr/bin/env bash
# Data through gateways against the same data through direct connections, in one run, with the
# engine on embedded defaults (release build), every client on loopback:
#  - direct: DEVICES = GATEWAYS x PER_GATEWAY devices, one MQTT connection each (QoS 1,
#    inflight 16), DURATION, every acknowledged data point verified stored;
#  - gateways: GATEWAYS gateway connections, each speaking for PER_GATEWAY devices over
#    ThingsBoard's gateway API, BATCH devices' next message per publish (QoS 1, inflight 16),
#    DURATION, verified the same way;
#  - the load generator's own ceiling in gateway mode: the same gateway load against rumqttd
#    (which acknowledges any topic), so the gateway figure is the engine's, not loadgen's;
#  - CPU seconds of loadgen and of the engine in each phase, and the engine's resident memory
#    per device behind a gateway (idle, connected) beside that per direct connection.
# Prints a table and writes it to benches/results/<date>-<commit>-gateway.md.
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAYS=${GATEWAYS:-10}
PER_GATEWAY=${PER_GATEWAY:-1000}
BATCH=${BATCH:-100}
DURATION=${DURATION:-30s}
PROFILE=${PROFILE:-smart-meter}
ENGINE_MQTT=127.0.0.1:22983
ENGINE_HTTP=127.0.0.1:28280
RUMQTTD_PORT=22984
DEVICES=$((GATEWAYS * PER_GATEWAY))

cargo build --release -p engine -p loadgen --bins
command -v rumqttd >/dev/null || cargo install rumqttd --version 0.20.0
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split('.'): v=v[k]
print(v if not isinstance(v, float) else round(v, 2))" "$1" "$2"; }
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }
sub() { python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 2))" "$1" "$2"; }
div() { python3 -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 2))" "$1" "$2"; }

start_engine() {
  target/release/engine serve --mqtt-bind "$ENGINE_MQTT" --http-bind "$ENGINE_HTTP" \
    --coap-bind 127.0.0.1:0 --data-dir "$work/engine" --log warn &
  engine_pid=$!; pids+=("$engine_pid")
  wait_port "$ENGINE_HTTP"; wait_port "$ENGINE_MQTT"
}

# One loadgen phase: name, target, then loadgen arguments. Prints loadgen's report; leaves
# the JSON report in $work/<name>.json and the CPU seconds used in $work/<name>.cpu.
phase() {
  local name=$1 target=$2 server_pid=$3; shift 3
  echo "== $name" >&2
  local before; before=$(cpu_s "$server_pid")
  target/release/loadgen mqtt --target "$target" --profile "$PROFILE" --quiet \
    --json "$work/$name.json" "$@" &
  local lg=$!
  local lg_cpu=0
  while kill -0 "$lg" 2>/dev/null; do lg_cpu=$(cpu_s "$lg" 2>/dev/null || echo "$lg_cpu"); sleep 0.5; done
  wait "$lg"
  echo "$lg_cpu $(sub "$(cpu_s "$server_pid")" "$before")" >"$work/$name.cpu"
}

# Idle memory: the engine's RSS with the devices connected and quiet, against before.
idle_rss() { # name, then loadgen arguments
  local name=$1; shift
  sleep 2
  local before; before=$(rss_kib "$engine_pid")
  target/release/loadgen mqtt --target "$ENGINE_MQTT" --quiet --messages 0 --duration 20s "$@" \
    >/dev/null &
  local lg=$!
  sleep 15
  local during; during=$(rss_kib "$engine_pid")
  wait "$lg" || true
  div "$(sub "$during" "$before")" "$DEVICES" >"$work/$name.rss"
}

start_engine
phase direct "$ENGINE_MQTT" "$engine_pid" --devices "$DEVICES" --token-prefix "bd-" \
  --provision "http://$ENGINE_HTTP" --duration "$DURATION" --verify "http://$ENGINE_HTTP"
phase gateways "$ENGINE_MQTT" "$engine_pid" --gateways "$GATEWAYS" \
  --devices-per-gateway "$PER_GATEWAY" --batch-devices "$BATCH" --token-prefix "bg-" \
  --provision "http://$ENGINE_HTTP" --duration "$DURATION" --verify "http://$ENGINE_HTTP"
kill -TERM "$engine_pid"; wait "$engine_pid" 2>/dev/null || true
# Idle memory, each on a fresh engine over the same data (the devices exist; a process that
# carried load keeps memory its allocator holds): per device behind gateways, per direct
# connection.
start_engine
idle_rss gateways-idle --gateways "$GATEWAYS" --devices-per-gateway "$PER_GATEWAY" \
  --token-prefix "bg-"
kill -TERM "$engine_pid"; wait "$engine_pid" 2>/dev/null || true
start_engine
idle_rss direct-idle --devices "$DEVICES" --token-prefix "bd-"
kill -TERM "$engine_pid"; wait "$engine_pid" 2>/dev/null || true

cat > "$work/rumqttd.toml" <<TOML
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RUMQTTD_PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
TOML
rumqttd --config "$work/rumqttd.toml" >/dev/null 2>&1 &
rumqttd_pid=$!; pids+=("$rumqttd_pid")
wait_port "127.0.0.1:$RUMQTTD_PORT"
phase gateways-rumqttd "127.0.0.1:$RUMQTTD_PORT" "$rumqttd_pid" --gateways "$GATEWAYS" \
  --devices-per-gateway "$PER_GATEWAY" --batch-devices "$BATCH" --token-prefix "bg-" \
  --duration "$DURATION"

commit=$(git rev-parse --short HEAD)
out="benches/results/$(date +%F)-$commit-gateway.md"
row() { # label name server
  local j="$work/$2.json"; read -r lg en <"$work/$2.cpu"
  local verified="-"
  if python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get('verify') else 1)" "$j"; then
    verified="$(field "$j" verify.stored) of $(field "$j" verify.expected)"
  fi
  echo "| $1 | $(field "$j" acked_per_second) | $(field "$j" latency_ms.p50) / $(field "$j" latency_ms.p99) ms | $(field "$j" failed) | $verified | $lg / $en s ($3) |"
}
{
  echo "#### Gateways against direct connections, $(date +%F), commit $commit, $(nproc) cores"
  echo
  echo "$DEVICES devices: direct (one MQTT connection each) or behind $GATEWAYS gateways of"
  echo "$PER_GATEWAY devices ($BATCH devices' next message per publish); QoS 1, inflight 16,"
  echo "$DURATION each, profile $PROFILE; the engine on embedded defaults (release build);"
  echo "every client on the same machine over loopback. Throughput counts device messages."
  echo
  echo "| path | device msg/s acked | p50 / p99 ack | failed | verified stored | CPU loadgen / server |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  row "direct connections -> engine" direct engine
  row "gateways -> engine" gateways engine
  row "gateways -> rumqttd (loadgen's ceiling)" gateways-rumqttd rumqttd
  echo
  echo "Engine resident memory, idle and connected: $(cat "$work/gateways-idle.rss") KiB per device"
  echo "behind a gateway, $(cat "$work/direct-idle.rss") KiB per direct connection."
} >"$out"
cat "$out"
echo "written to $out"

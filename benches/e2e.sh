#!/usr/bin/env bash
# End-to-end benchmark, one command, all on loopback in one run:
#  1. the same loadgen workload (MQTT QoS 1, closed loop) against the engine (embedded defaults,
#     every message stored and verified), Mosquitto and rumqttd: acknowledged messages/s and
#     p99 acknowledgement latency, and the engine's rate as a ratio to each broker's;
#  2. idle memory: IDLE_CONNECTIONS (15 000) connected devices held by the engine and by
#     Mosquitto, resident memory per connection.
# Prints a table and writes it to benches/results/<date>-<commit>.md with the machine's cores.
# Tunables: DEVICES (100), DURATION (20s), INFLIGHT (16), PROFILE (smart-meter),
# IDLE_CONNECTIONS (15000; 0 skips part 2).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-100}
DURATION=${DURATION:-20s}
INFLIGHT=${INFLIGHT:-16}
PROFILE=${PROFILE:-smart-meter}
IDLE=${IDLE_CONNECTIONS:-15000}
# Below the ephemeral port range (32768+), which the idle test fills with client ports.
ENGINE_MQTT=127.0.0.1:21883
ENGINE_HTTP=127.0.0.1:28080
MOSQUITTO_PORT=21884
RUMQTTD_PORT=21885

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
command -v mosquitto >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }
command -v rumqttd >/dev/null || cargo install rumqttd
command -v python3 >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
cargo build --release -p engine -p loadgen
LOADGEN=target/release/loadgen

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split('.'): v=v[k]
print(v)" "$1" "$2"; }
rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

start_engine() {
  target/release/engine serve --mqtt-bind "$ENGINE_MQTT" --http-bind "$ENGINE_HTTP" --data-dir "$work/engine-$1" --log warn &
  engine_pid=$!; pids+=("$engine_pid")
  wait_port "$ENGINE_HTTP"; wait_port "$ENGINE_MQTT"
}
stop() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }

start_mosquitto() {
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\nmax_inflight_messages 0\nmax_queued_messages 0\n' "$MOSQUITTO_PORT" > "$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" 2>/dev/null &
  mosquitto_pid=$!; pids+=("$mosquitto_pid")
  wait_port "127.0.0.1:$MOSQUITTO_PORT"
}

start_rumqttd() {
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
    max_payload_size = 65536
    max_inflight_count = 100
    dynamic_filters = true
TOML
  rumqttd --config "$work/rumqttd.toml" >/dev/null 2>&1 &
  rumqttd_pid=$!; pids+=("$rumqttd_pid")
  wait_port "127.0.0.1:$RUMQTTD_PORT"
}

load() { # name target [extra loadgen args]
  local name=$1 target=$2; shift 2
  echo "== $name: $DEVICES devices, QoS 1, inflight $INFLIGHT, $DURATION, $PROFILE" >&2
  "$LOADGEN" mqtt --target "$target" --devices "$DEVICES" --duration "$DURATION" --qos 1 \
    --inflight "$INFLIGHT" --profile "$PROFILE" --quiet --json "$work/$name.json" "$@" >&2
}

# --- 1. throughput --------------------------------------------------------------------------
start_engine load
load engine "$ENGINE_MQTT" --provision "http://$ENGINE_HTTP" --verify "http://$ENGINE_HTTP"
stop "$engine_pid"
start_mosquitto; load mosquitto "127.0.0.1:$MOSQUITTO_PORT"; stop "$mosquitto_pid"
start_rumqttd; load rumqttd "127.0.0.1:$RUMQTTD_PORT"; stop "$rumqttd_pid"

rate() { field "$work/$1.json" acked_per_second; }
p99() { field "$work/$1.json" latency_ms.p99; }
ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / max(float(sys.argv[2]), 1e-9)))" "$1" "$2"; }
e=$(rate engine); m=$(rate mosquitto); r=$(rate rumqttd)
stored="$(field "$work/engine.json" verify.stored) of $(field "$work/engine.json" verify.expected)"

# --- 2. idle memory per connection ------------------------------------------------------------
idle_row() { # name pid port
  local name=$1 pid=$2 port=$3; shift 3
  local before after n
  before=$(rss_kib "$pid")
  "$LOADGEN" mqtt --target "127.0.0.1:$port" --devices "$IDLE" --messages 0 --duration 60s \
    --connect-rate 4000 --source-addrs 4 --quiet "$@" > "$work/$name-idle.txt" 2>&1 &
  local lg=$!
  for _ in $(seq 300); do n=$(established "$port"); [ "$n" -ge "$IDLE" ] && break; sleep 0.2; done
  sleep 2
  n=$(established "$port"); after=$(rss_kib "$pid")
  kill "$lg" 2>/dev/null || true; wait "$lg" 2>/dev/null || true
  python3 -c "import sys; b,a,n=map(int,sys.argv[1:4]); print('| %s | %d | %.1f MiB | %.1f MiB | %.2f KiB |' % (sys.argv[4], n, b/1024, a/1024, (a-b)/max(n,1)))" "$before" "$after" "$n" "$name"
}
idle_table=""
if [ "$IDLE" -gt 0 ]; then
  echo "== idle memory: $IDLE connections" >&2
  start_engine idle
  # Create the devices first, without connecting, so the baseline includes the device registry.
  "$LOADGEN" mqtt --target "$ENGINE_MQTT" --devices "$IDLE" --provision "http://$ENGINE_HTTP" --provision-only --quiet >/dev/null
  sleep 1
  idle_table+="$(idle_row engine "$engine_pid" "${ENGINE_MQTT#*:}")"$'\n'
  stop "$engine_pid"
  start_mosquitto
  idle_table+="$(idle_row mosquitto "$mosquitto_pid" "$MOSQUITTO_PORT")"$'\n'
  stop "$mosquitto_pid"
fi

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches/results' || echo "+dirty")
date=$(date -u +%Y-%m-%d)
report=$(cat <<MD
### End-to-end benchmark, $date, commit $commit, $(nproc) cores

Workload: $DEVICES MQTT devices, QoS 1, closed loop, $INFLIGHT in flight per connection,
$DURATION, payload \`$PROFILE\`, loadgen on the same machine. The engine stores every message
(embedded SQLite, verified: $stored data points); the brokers store nothing.

| server | acked msg/s | p99 ack latency | engine rate as ratio |
| --- | ---: | ---: | ---: |
| engine (embedded) | $(printf '%.0f' "$e") | $(printf '%.2f' "$(p99 engine)") ms | 1.00 |
| mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') | $(printf '%.0f' "$m") | $(printf '%.2f' "$(p99 mosquitto)") ms | $(ratio "$e" "$m") |
| rumqttd $(rumqttd --version 2>/dev/null | awk '{print $2}') | $(printf '%.0f' "$r") | $(printf '%.2f' "$(p99 rumqttd)") ms | $(ratio "$e" "$r") |
MD
)
if [ -n "$idle_table" ]; then
  report+=$'\n\n'"Idle connections (connected, not publishing):"$'\n\n'"| server | connections | RSS before | RSS connected | per connection |"$'\n'"| --- | ---: | ---: | ---: | ---: |"$'\n'"$idle_table"
fi
echo
echo "$report"
mkdir -p benches/results
echo "$report" > "benches/results/$date-$commit.md"
echo
echo "written to benches/results/$date-$commit.md"

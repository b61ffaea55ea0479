#!/usr/bin/env bash
# End-to-end benchmark, one command, all on loopback in one run, one workload throughout:
# DEVICES (100) MQTT connections, INFLIGHT (16) publishes unacknowledged on each, MESSAGES
# (1 000 000: sustained, more than any queue absorbs) with a small JSON payload (PROFILE).
#  0. the instrument: the minimal raw publisher (benches/src/bin/rawpub.rs) and loadgen against
#     rumqttd, QoS 1 and QoS 0, and loadgen's rate as a ratio of the raw publisher's: the load
#     generator is not the limit when this ratio is near 1 and rumqttd outruns every other row;
#  1. the servers, with loadgen: the engine (embedded defaults, every message stored and
#     verified), Mosquitto and rumqttd, QoS 1 and QoS 0: acknowledged messages/s, p99
#     acknowledgement latency, the engine's rate as a ratio to each broker's; and the raw
#     publisher against the engine, showing loadgen is not what limits the engine's row;
#  2. idle memory: IDLE_CONNECTIONS (15 000) connected devices held by the engine and Mosquitto,
#     resident memory per connection;
#  3. the production path: the same workload through engine -> Kafka-protocol broker (tansu,
#     in-memory storage) -> ClickHouse, all on this machine: acknowledged messages/s, data
#     points/s written, ingest-to-queryable latency (PUBACK until a query sees the row), the
#     rate storage catches up a backlog at, and a plain bulk insert of the same rows straight
#     into ClickHouse from Rust as the ceiling;
#  4. CoAP: the minimal raw CoAP client (rawcoap) and loadgen coap against a CoAP server that
#     answers at once (coapsink), then loadgen coap (confirmable, then non-confirmable requests,
#     COAP_CONCURRENCY outstanding) against the engine's CoAP integration with a Rhai uplink
#     converter, every message stored and verified.
# Prints a table and writes it to benches/results/<date>-<commit>.md with the machine's cores.
# Tunables: DEVICES, INFLIGHT, MESSAGES, PROFILE, IDLE_CONNECTIONS (0 skips part 2), PRODUCTION
# (1; 0 skips part 3), COAP (1; 0 skips part 4), COAP_CONCURRENCY (128), COAP_MESSAGES (200 000).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-100}
INFLIGHT=${INFLIGHT:-16}
MESSAGES=${MESSAGES:-1000000}
COAP_MESSAGES=${COAP_MESSAGES:-200000}
PROFILE=${PROFILE:-smart-meter}
IDLE=${IDLE_CONNECTIONS:-15000}
PRODUCTION=${PRODUCTION:-1}
COAP=${COAP:-1}
COAP_CONCURRENCY=${COAP_CONCURRENCY:-128}
CH_HTTP_PORT=28123
CH_TCP_PORT=29000
KAFKA_PORT=29092
# Below the ephemeral port range (32768+), which the idle test fills with client ports.
ENGINE_MQTT=127.0.0.1:21883
ENGINE_HTTP=127.0.0.1:28080
ENGINE_COAP=127.0.0.1:25683
MOSQUITTO_PORT=21884
RUMQTTD_PORT=21885
COAPSINK=127.0.0.1:25699

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
command -v mosquitto >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }
command -v rumqttd >/dev/null || cargo install rumqttd
command -v python3 >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
if [ "$PRODUCTION" = 1 ]; then
  [ -x /usr/sbin/clickhouse-server ] || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server; }
  TANSU_BIN=${TANSU_BIN:-${ENGINE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/engine-tests}/tansu-0.6.0/bin/tansu}
  [ -x "$TANSU_BIN" ] || cargo install --locked --root "$(dirname "$(dirname "$TANSU_BIN")")" tansu --version 0.6.0 --features dynostore,libsql
fi
cargo build --release -p engine -p loadgen -p benches --bins
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
  target/release/engine serve --mqtt-bind "$ENGINE_MQTT" --http-bind "$ENGINE_HTTP" --coap-bind "$ENGINE_COAP" \
    --data-dir "$work/engine-$1" --log warn &
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

load() { # name target qos [extra loadgen args]
  local name=$1 target=$2 qos=$3; shift 3
  echo "== $name: loadgen, $DEVICES connections, QoS $qos, inflight $INFLIGHT, $MESSAGES messages, $PROFILE" >&2
  "$LOADGEN" mqtt --target "$target" --devices "$DEVICES" --messages "$MESSAGES" --qos "$qos" \
    --inflight "$INFLIGHT" --profile "$PROFILE" --drain-timeout 600s --quiet \
    --json "$work/$name.json" "$@" >&2
}
# (QoS 0: the kernel's socket buffers take a million small publishes at once; the run ends when
# the PINGRESP after the last one shows the server has read them all, hence the long drain.)
# The raw publisher sends a payload of the profile's size as loadgen renders it.
case "$PROFILE" in
  smart-meter) SAMPLE='{"ts":1764654000000,"values":{"pulseCounter":123456,"leakage":false,"batteryLevel":87.5}}' ;;
  *) SAMPLE=$(python3 -c 'import sys; print("{\"ts\":1764654000000,\"values\":{\"pad\":\"" + "x" * 200 + "\"}}")') ;;
esac
raw() { # name target qos [extra rawpub args]
  local name=$1 target=$2 qos=$3; shift 3
  echo "== $name: rawpub, $DEVICES connections, QoS $qos, inflight $INFLIGHT, $MESSAGES messages" >&2
  target/release/rawpub --target "$target" --connections "$DEVICES" --inflight "$INFLIGHT" \
    --messages "$MESSAGES" --qos "$qos" --payload "$SAMPLE" "$@" > "$work/$name.json"
  cat "$work/$name.json" >&2
}

rate() { field "$work/$1.json" acked_per_second; }
rawrate() { field "$work/$1.json" rate; }
p99() { field "$work/$1.json" latency_ms.p99; }
ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / max(float(sys.argv[2]), 1e-9)))" "$1" "$2"; }
num() { printf '%.0f' "$1"; }

# --- 0. the instrument, and 1. the servers ----------------------------------------------------
start_rumqttd
raw raw-rumqttd "127.0.0.1:$RUMQTTD_PORT" 1
load rumqttd "127.0.0.1:$RUMQTTD_PORT" 1
raw raw-rumqttd-q0 "127.0.0.1:$RUMQTTD_PORT" 0
load rumqttd-q0 "127.0.0.1:$RUMQTTD_PORT" 0
stop "$rumqttd_pid"
start_mosquitto
load mosquitto "127.0.0.1:$MOSQUITTO_PORT" 1
load mosquitto-q0 "127.0.0.1:$MOSQUITTO_PORT" 0
stop "$mosquitto_pid"
start_engine load
load engine "$ENGINE_MQTT" 1 --provision "http://$ENGINE_HTTP" --verify "http://$ENGINE_HTTP"
# QoS 0 may be shed under overload (counted by the engine); its row reports what was stored.
load engine-q0 "$ENGINE_MQTT" 0 --verify "http://$ENGINE_HTTP" || true
raw raw-engine "$ENGINE_MQTT" 1 --token-prefix loadgen-
stop "$engine_pid"

r=$(rate rumqttd); r0=$(rate rumqttd-q0); m=$(rate mosquitto); m0=$(rate mosquitto-q0)
e=$(rate engine); e0=$(rate engine-q0); re=$(rawrate raw-engine)
stored="$(field "$work/engine.json" verify.stored) of $(field "$work/engine.json" verify.expected)"
stored0="$(field "$work/engine-q0.json" verify.stored) of $(field "$work/engine-q0.json" verify.expected)"
instrument_table=$(cat <<MD
| client -> rumqttd | QoS 1 msg/s | QoS 0 msg/s |
| --- | ---: | ---: |
| rawpub (minimal raw publisher) | $(num "$(rawrate raw-rumqttd)") | $(num "$(rawrate raw-rumqttd-q0)") |
| loadgen (report and HDR latencies on) | $(num "$r") | $(num "$r0") |
| loadgen as a ratio of rawpub | $(ratio "$r" "$(rawrate raw-rumqttd)") | $(ratio "$r0" "$(rawrate raw-rumqttd-q0)") |
MD
)

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

# --- 3. the production path -------------------------------------------------------------------
ch_count() { curl -s "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "SELECT count() FROM bench.ts_kv"; }
production_table=""
if [ "$PRODUCTION" = 1 ]; then
  echo "== production path: engine -> tansu -> clickhouse" >&2
  mkdir -p "$work/ch/data"
  cat > "$work/ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$work/ch/data/</path>
    <tmp_path>$work/ch/data/tmp/</tmp_path>
    <user_files_path>$work/ch/data/user_files/</user_files_path>
    <format_schema_path>$work/ch/data/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
  cat > "$work/ch/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
XML
  (cd "$work/ch" && exec clickhouse-server --config-file="$work/ch/config.xml" >/dev/null 2>&1) &
  ch_pid=$!; pids+=("$ch_pid")
  wait_port "127.0.0.1:$CH_HTTP_PORT"
  "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ >/dev/null 2>&1 &
  pids+=("$!")
  wait_port "127.0.0.1:$KAFKA_PORT"
  ENGINE_QUEUE__KIND=kafka ENGINE_QUEUE__BROKERS="127.0.0.1:$KAFKA_PORT" \
  ENGINE_STORE__KIND=clickhouse ENGINE_STORE__URL="http://127.0.0.1:$CH_HTTP_PORT" ENGINE_STORE__DATABASE=bench \
    start_engine production
  "$LOADGEN" mqtt --target "$ENGINE_MQTT" --devices 1 --token-prefix probe- \
    --provision "http://$ENGINE_HTTP" --provision-only --quiet >/dev/null
  # Ingest-to-queryable latency, probed while the load runs.
  (sleep 3; target/release/freshness --mqtt "$ENGINE_MQTT" --token probe-0 \
    --clickhouse "http://127.0.0.1:$CH_HTTP_PORT" --database bench --probes 50 --every-ms 200 \
    > "$work/freshness.json") &
  probe=$!
  t0=$(date +%s.%N)
  load production "$ENGINE_MQTT" 1 --provision "http://$ENGINE_HTTP" --verify "http://$ENGINE_HTTP"
  t1=$(date +%s.%N)
  wait "$probe"
  written=$(ch_count)
  # Storage catching up a backlog: ClickHouse frozen while devices keep being acknowledged
  # (Kafka holds the messages), then thawed; the rate rows arrive at is the storage pipeline's.
  echo "== production path: backlog catch-up" >&2
  before=$(ch_count)
  kill -STOP "$ch_pid"
  "$LOADGEN" mqtt --target "$ENGINE_MQTT" --devices "$DEVICES" --duration 10s --qos 1 \
    --inflight "$INFLIGHT" --profile "$PROFILE" --quiet --json "$work/backlog.json" >&2
  kill -CONT "$ch_pid"
  catchup=$(python3 - "$CH_HTTP_PORT" "$before" <<'PY'
import sys, time, urllib.request
port, before = sys.argv[1], int(sys.argv[2])
def count():
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"SELECT count() FROM bench.ts_kv")
    return int(urllib.request.urlopen(req).read())
first = last = None
value = before
deadline = time.time() + 300
while time.time() < deadline:
    now, c = time.time(), count()
    if c > value:
        if first is None:
            first = (now, value)
        last, value = (now, c), c
    elif last and now - last[0] > 5:
        break
    time.sleep(0.05)
if first and last and last[0] > first[0]:
    print("%.0f" % ((last[1] - first[1]) / (last[0] - first[0])))
else:
    print(0)
PY
)
  stop "$engine_pid"
  ceiling=$(target/release/ch_bulk --url "http://127.0.0.1:$CH_HTTP_PORT" --database bench --rows 3000000)
  ceiling_rate=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['rows_per_s'])" "$ceiling")
  points_rate=$(python3 -c "import sys; print('%.0f' % (int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2]))))" "$written" "$t0" "$t1")
  pe=$(rate production)
  production_table=$(cat <<MD
| path | acked msg/s | p99 ack latency | ratio to rumqttd | data points/s written | ingest-to-queryable p50 / p99 |
| --- | ---: | ---: | ---: | ---: | ---: |
| engine -> tansu -> ClickHouse | $(printf '%.0f' "$pe") | $(printf '%.2f' "$(p99 production)") ms | $(ratio "$pe" "$r") | $points_rate | $(field "$work/freshness.json" p50_ms) / $(field "$work/freshness.json" p99_ms) ms |

Storage alone (a 10 s backlog written after ClickHouse was frozen): $catchup data points/s;
a plain bulk insert of the same rows from Rust (one writer, 150 000-row batches): $ceiling_rate rows/s,
so the pipeline writes at $(ratio "$catchup" "$ceiling_rate") of the ceiling, and under the load above at $(ratio "$points_rate" "$ceiling_rate").
MD
)
fi

# --- 4. CoAP: the instrument, then the engine's CoAP integration ------------------------------
coap_table=""
coap_instrument=""
if [ "$COAP" = 1 ]; then
  target/release/coapsink --bind "$COAPSINK" --threads 2 &
  sink_pid=$!; pids+=("$sink_pid")
  for _ in $(seq 100); do
    target/release/rawcoap --target "$COAPSINK" --concurrency 1 --messages 1 --timeout 100ms 2>/dev/null | grep -q '"ok":1' && break
    sleep 0.1
  done
  coap_yardstick() { # name [--non]
    echo "== $1: rawcoap and loadgen coap against coapsink" >&2
    target/release/rawcoap --target "$COAPSINK" --path i/bench --concurrency "$COAP_CONCURRENCY" \
      --messages "$COAP_MESSAGES" "${@:2}" > "$work/raw-$1.json"
    "$LOADGEN" coap --target "$COAPSINK" --routing-key bench --devices "$DEVICES" \
      --messages "$COAP_MESSAGES" --concurrency "$COAP_CONCURRENCY" --profile "$PROFILE" --quiet \
      --json "$work/sink-$1.json" "${@:2}" >&2
    local a b; a=$(rawrate "raw-$1"); b=$(rate "sink-$1")
    echo "| $1 | $(num "$a") | $(num "$b") | $(ratio "$b" "$a") |"
  }
  coap_instrument="| requests | rawcoap msg/s | loadgen coap msg/s | ratio |"$'\n'"| --- | ---: | ---: | ---: |"$'\n'
  coap_instrument+="$(coap_yardstick confirmable)"$'\n'
  coap_instrument+="$(coap_yardstick non-confirmable --non)"
  stop "$sink_pid"
  start_engine coap
  coap_row() { # name label [extra loadgen args]
    local name=$1 label=$2; shift 2
    echo "== $name: $DEVICES devices, $COAP_CONCURRENCY outstanding, $COAP_MESSAGES requests, $PROFILE" >&2
    "$LOADGEN" coap --target "$ENGINE_COAP" --devices "$DEVICES" --messages "$COAP_MESSAGES" \
      --concurrency "$COAP_CONCURRENCY" --profile "$PROFILE" --provision "http://$ENGINE_HTTP" \
      --verify "http://$ENGINE_HTTP" --quiet --json "$work/$name.json" "$@" >&2
    local c; c=$(rate "$name")
    echo "| $label | $(num "$c") | $(printf '%.2f' "$(p99 "$name")") ms | $(field "$work/$name.json" verify.stored) of $(field "$work/$name.json" verify.expected) | $(ratio "$c" "$e") |"
  }
  coap_table+="$(coap_row coap-con confirmable --token-prefix coap-con-)"$'\n'
  coap_table+="$(coap_row coap-non non-confirmable --token-prefix coap-non- --non)"$'\n'
  stop "$engine_pid"
fi

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches/results' || echo "+dirty")
date=$(date -u +%Y-%m-%d)
report=$(cat <<MD
### End-to-end benchmark, $date, commit $commit, $(nproc) cores

Workload: $DEVICES MQTT connections, $INFLIGHT publishes in flight on each (closed loop),
$MESSAGES messages, payload \`$PROFILE\`, every client on the same machine over loopback.

The instrument (the load generator must not be the limit):

$instrument_table

The servers, with loadgen. The engine stores every message (embedded store; QoS 1 verified:
$stored data points; QoS 0, which a saturated engine may shed: $stored0 stored); the brokers
store nothing.

| server | QoS 1 acked msg/s | p99 ack latency | engine as ratio | QoS 0 msg/s | engine as ratio |
| --- | ---: | ---: | ---: | ---: | ---: |
| engine (embedded) | $(num "$e") | $(printf '%.2f' "$(p99 engine)") ms | 1.00 | $(num "$e0") | 1.00 |
| mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') | $(num "$m") | $(printf '%.2f' "$(p99 mosquitto)") ms | $(ratio "$e" "$m") | $(num "$m0") | $(ratio "$e0" "$m0") |
| rumqttd $(rumqttd --version 2>/dev/null | awk '{print $2}') | $(num "$r") | $(printf '%.2f' "$(p99 rumqttd)") ms | $(ratio "$e" "$r") | $(num "$r0") | $(ratio "$e0" "$r0") |

The raw publisher against the engine, same workload: $(num "$re") acked msg/s
(loadgen reached $(ratio "$e" "$re") of it, so loadgen is not what limits the engine's row).
MD
)
if [ -n "$production_table" ]; then
  report+=$'\n\n'"The production path (same workload; the engine stores every message in ClickHouse through Kafka, $(field "$work/production.json" verify.stored) of $(field "$work/production.json" verify.expected) verified):"$'\n\n'"$production_table"
fi
if [ -n "$coap_table" ]; then
  report+=$'\n\n'"CoAP, $COAP_MESSAGES requests, $COAP_CONCURRENCY outstanding (one per UDP socket). The instrument, against coapsink (a server that answers 2.04 at once):"$'\n\n'"$coap_instrument"$'\n\n'"The engine's CoAP integration (each request decoded by a Rhai uplink converter and stored, embedded store):"$'\n\n'"| requests | acked msg/s | p99 ack latency | stored (verified) | ratio to engine MQTT |"$'\n'"| --- | ---: | ---: | ---: | ---: |"$'\n'"$coap_table"
fi
if [ -n "$idle_table" ]; then
  report+=$'\n\n'"Idle connections (connected, not publishing):"$'\n\n'"| server | connections | RSS before | RSS connected | per connection |"$'\n'"| --- | ---: | ---: | ---: | ---: |"$'\n'"$idle_table"
fi
echo
echo "$report"
mkdir -p benches/results
echo "$report" > "benches/results/$date-$commit.md"
echo
echo "written to benches/results/$date-$commit.md"

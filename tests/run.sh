#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine with the Rust toolchain:
# installs what the tests need (Debian packages via apt-get), builds the engine, then runs
# formatting and lint checks, unit, actor, contract and end-to-end tests. Servers started by
# the tests bind to 127.0.0.1 only, in throw-away directories.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the tests use: mosquitto_pub (a real MQTT client, the reference's own command
# lines), prometheus (the dashboards' queries are checked against it) and clickhouse-server (the
# production store; tests start it with their own config and data path, never the system
# service).
packages=()
command -v mosquitto_pub >/dev/null || packages+=(mosquitto-clients)
command -v prometheus >/dev/null || packages+=(prometheus)
[ -x /usr/sbin/clickhouse-server ] || command -v clickhouse-server >/dev/null || packages+=(clickhouse-server)
# ss shows the kernel's unread bytes of a socket (the TCP backpressure test).
command -v ss >/dev/null || packages+=(iproute2)
# libcoap's coap-client, the CoAP integration guide's own client (Debian names it
# coap-client-notls).
command -v coap-client >/dev/null || command -v coap-client-notls >/dev/null || packages+=(libcoap3-bin)
# Python for ThingsBoard's official clients (below).
command -v python3 >/dev/null || packages+=(python3 python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
  echo "== installing ${packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi

# The Kafka-protocol broker the production-path tests run (it has no Debian package). Building
# it takes about a quarter of an hour on two cores, so it is built once into a cache outside
# the clone and reused by later runs on the same machine.
TANSU_VERSION=0.6.0
cache=${ENGINE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/engine-tests}
export TANSU_BIN="$cache/tansu-$TANSU_VERSION/bin/tansu"
if [ ! -x "$TANSU_BIN" ]; then
  echo "== building tansu $TANSU_VERSION into $cache (once; about 15 minutes)"
  cargo install --locked --quiet --root "$cache/tansu-$TANSU_VERSION" tansu \
    --version "$TANSU_VERSION" --features dynostore,libsql
fi

# cargo-fuzz runs the fuzz targets (tests/fuzz) for a short fixed time below; built once into
# the same cache.
CARGO_FUZZ_VERSION=0.13.2
CARGO_FUZZ="$cache/cargo-fuzz-$CARGO_FUZZ_VERSION/bin/cargo-fuzz"
if [ ! -x "$CARGO_FUZZ" ]; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $cache (once)"
  cargo install --locked --quiet --root "$cache/cargo-fuzz-$CARGO_FUZZ_VERSION" cargo-fuzz \
    --version "$CARGO_FUZZ_VERSION"
fi

# ThingsBoard's official Python clients from PyPI, which the end-to-end tests drive against the
# engine unchanged: the device SDK (tb-mqtt-client; tests/e2e/sdk.rs, gateway.rs) and the REST
# client (tb-rest-client; tests/e2e/apps.rs). 4.3 is the last REST client with RestClientCE, the
# community edition's client (4.4 speaks the professional edition's owner API). One virtual
# environment in the same cache.
TB_MQTT_CLIENT_VERSION=1.13.14
TB_REST_CLIENT_VERSION=4.3
venv="$cache/tb-clients-$TB_MQTT_CLIENT_VERSION-rest-$TB_REST_CLIENT_VERSION"
if ! "$venv/bin/python" -c "import tb_device_mqtt, mmh3, tb_rest_client.rest_client_ce" >/dev/null 2>&1; then
  echo "== installing tb-mqtt-client $TB_MQTT_CLIENT_VERSION and tb-rest-client $TB_REST_CLIENT_VERSION into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
  # mmh3: the SDK would otherwise pip-install it on first import.
  "$venv/bin/pip" install --quiet "tb-mqtt-client==$TB_MQTT_CLIENT_VERSION" mmh3 \
    "tb-rest-client==$TB_REST_CLIENT_VERSION"
fi
export TB_SDK_PYTHON="$venv/bin/python"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
# The end-to-end tests run the real `engine` binary from target/debug.
cargo build --workspace --bins --locked

echo "== tests"
# The production-path tests each run a Kafka-protocol broker, ClickHouse and an engine and
# inject faults; they run one at a time, after the rest, so two such stacks never starve each
# other on a two-core machine (a starved tansu 0.6 group can keep a stale twin of a static
# member, which then holds partitions nobody reads).
cargo test --workspace --locked -- --skip production::
cargo test -p tests --test e2e --locked production:: -- --test-threads=1
echo "== fuzz targets (${FUZZ_SECONDS:=20} s each; longer by hand: tests/fuzz/README.md)"
# Stable toolchain: RUSTC_BOOTSTRAP lets cargo-fuzz pass its nightly-only flags. No sanitizer:
# the code has no `unsafe`; what is looked for is panics, aborts and runaway allocations.
for target in payload_json converter_helpers coap_datagram mqtt_publish; do
  RUSTC_BOOTSTRAP=1 "$CARGO_FUZZ" run --fuzz-dir tests/fuzz --sanitizer none "$target" -- \
    -max_total_time="$FUZZ_SECONDS" -malloc_limit_mb=1024 -rss_limit_mb=2048 -print_final_stats=1
done
echo "== all tests passed"

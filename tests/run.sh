#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine with the Rust toolchain:
# installs what the tests need (Debian packages via apt-get), builds the engine, then runs
# formatting and lint checks, unit, actor, contract and end-to-end tests. Servers started by
# the tests bind to 127.0.0.1 only, in throw-away directories.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the end-to-end tests use: mosquitto_pub (a real MQTT client, the reference's
# own command lines) and prometheus (the dashboards' queries are checked against it).
packages=()
command -v mosquitto_pub >/dev/null || packages+=(mosquitto-clients)
command -v prometheus >/dev/null || packages+=(prometheus)
if [ ${#packages[@]} -gt 0 ]; then
  echo "== installing ${packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
# The end-to-end tests run the real `engine` binary from target/debug.
cargo build --workspace --bins --locked

echo "== tests"
cargo test --workspace --locked
echo "== all tests passed"

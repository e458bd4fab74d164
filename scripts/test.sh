#!/usr/bin/env bash
# Runs every test of the workspace, the way CI does: formatting, lints (warnings are
# errors), then `cargo test --workspace`. Installs what the tests need when missing, so
# it passes on a fresh machine on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

step "test dependencies"
# The interop test drives the server with a client nobody here wrote: Python websockets.
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check websockets
fi
python3 -c 'import websockets; print("python websockets", websockets.__version__)'
# The accounts tests start a throwaway PostgreSQL cluster (initdb + pg_ctl).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; fi
fi
ls -d /usr/lib/postgresql/*/bin/initdb
# The Kafka tests (gateway-ws/tests/kafka.rs) start a real Kafka-protocol broker per
# test, tansu, and produce from Python's confluent-kafka as well. tansu builds from
# source once (about 12 minutes on 2 cores); its memory storage needs `dynostore`.
tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$tansu_bin" ]; then
  cargo install tansu --version 0.6.0 --locked --features dynostore
fi
"$(command -v tansu || echo "$tansu_bin")" --version
if ! python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check confluent-kafka
fi
python3 -c 'import confluent_kafka; print("python confluent-kafka", confluent_kafka.version(), "librdkafka", confluent_kafka.libversion()[0])'
# The bench's peer smoke test runs against NATS, nginx + nchan and Node ws.
bash bench/peers/peers.sh install
bash bench/peers/peers.sh status

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
log=$(mktemp)
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log" | awk '{s += $2} END {print s + 0}')
rm -f "$log"
echo
echo "$passed passed, $failed failed"
if [ "$status" -ne 0 ]; then exit "$status"; fi

step "fuzz (every target, ${FUZZ_SECONDS:-30} s each)"
# Hostile input on a bounded clock: the committed corpus plus what libFuzzer finds in
# the time given; any crash, leak or OOM fails (scripts/fuzz.sh, docs/RELIABILITY.md).
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" bash scripts/fuzz.sh

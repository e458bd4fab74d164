#!/usr/bin/env bash
# Runs every test of the workspace, the way CI does: formatting, lints (warnings are
# errors), then `cargo test --workspace` (which runs the README's commands as written:
# gateway-ws/tests/readme.rs; they use ports 8080, 7000 and 8081). Installs what the tests need when missing, so
# it passes on a fresh machine on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; df -h . | awk 'NR == 2 {print "   disk: " $4 " free of " $2}'; }

# On CI nothing is rebuilt twice: incremental caches only cost disk (gigabytes).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

step "toolchain"
cargo --version
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

step "test dependencies"
# librdkafka is built with OpenSSL (SASL/SCRAM and TLS to the brokers): its headers.
if ! pkg-config --exists openssl 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config; fi
fi
# The README test runs the pages' commands as written, some with curl.
if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; fi
fi
# The interop test drives the server with a client nobody here wrote: Python websockets.
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check websockets
fi
python3 -c 'import websockets; print("python websockets", websockets.__version__)'
# The Python client's tests run under pytest (no plugins).
if ! python3 -c 'import pytest' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check pytest
fi
# The accounts tests start a throwaway PostgreSQL cluster (initdb + pg_ctl).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; fi
fi
ls -d /usr/lib/postgresql/*/bin/initdb
# The Kafka tests (gateway-ws/tests/kafka.rs) start a real Kafka-protocol broker per
# test, tansu, and produce from Python's confluent-kafka as well. tansu builds from
# source once (about 15 minutes on 2 cores); its memory storage needs `dynostore`, the
# SQLite storage that outlives a broker restart needs `libsql`.
tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
tansu_features="dynostore,libsql"
tansu_has_features() {
  grep -o '"tansu 0.6.0[^}]*' "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" 2>/dev/null | grep -q '"dynostore","libsql"'
}
if ! { command -v tansu >/dev/null 2>&1 || [ -x "$tansu_bin" ]; } || ! tansu_has_features; then
  cargo install tansu --version 0.6.0 --locked --features "$tansu_features" --force
fi
"$(command -v tansu || echo "$tansu_bin")" --version
if ! python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check confluent-kafka
fi
python3 -c 'import confluent_kafka; print("python confluent-kafka", confluent_kafka.version(), "librdkafka", confluent_kafka.libversion()[0])'
# The TypeScript client's tests run under Node against the real binary, and the
# dashboard's in Debian's Chromium (driven by playwright-core; no browser download).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi
fi
chromium --version
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; fi
fi
node --version
(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
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
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log" | awk '{s += $2} END {print s + 0}')
rm -f "$log"
echo
echo "$passed passed, $failed failed"
if [ "$status" -ne 0 ]; then exit "$status"; fi

step "TypeScript client and dashboard (node --test; headless Chromium)"
# After cargo test, so target/debug/signalcast is the binary just tested.
(cd clients/typescript && npm test)

step "Python client (pip install ./clients/python; pytest against the binary)"
# Installed as a user would (the tests import the installed package), then tested
# against target/debug/signalcast, the binary cargo test just built.
python3 -m pip install --quiet --disable-pip-version-check ./clients/python
(cd clients/python && python3 -m pytest -q -p no:cacheprovider)

step "fuzz (every target, ${FUZZ_SECONDS:-30} s each)"
# The fuzz build (AddressSanitizer, its own target dir) needs room of its own; on CI
# the tests' build is no longer needed, so its disk goes first. A local run keeps it.
if [ "${CI:-}" = true ]; then
  rm -rf target/debug
  df -h . | awk 'NR == 2 {print "   disk after removing target/debug: " $4 " free"}'
fi
# Hostile input on a bounded clock: the committed corpus plus what libFuzzer finds in
# the time given; any crash, leak or OOM fails (scripts/fuzz.sh, docs/RELIABILITY.md).
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" bash scripts/fuzz.sh

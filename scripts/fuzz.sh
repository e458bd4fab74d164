#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz + libFuzzer with AddressSanitizer) for a
# bounded time on a copy of its committed corpus. A crash, a panic, a leak or an
# out-of-memory fails the run and leaves the input under fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh            # 60 s per target (what CI runs)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh feed_frames
#
# The machine's toolchain is stable; RUSTC_BOOTSTRAP=1 lets it take the -Z sanitizer
# flags cargo-fuzz passes (no nightly toolchain can be fetched here).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(feed_frames client_messages upgrade_request kafka_value kafka_relay sidecar_bodies)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1

for t in "${targets[@]}"; do
  cargo fuzz build -O "$t"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  rm -rf "fuzz/artifacts/$t"
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  cp -r "fuzz/corpus/$t/." "$work/$t/" 2>/dev/null || true
  echo "== fuzz $t for ${seconds}s"
  # -rss_limit_mb: a target that grows without bound is a failure, not a slow machine.
  cargo fuzz run -O "$t" "$work/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|panicked|Done)" || true
  if [ -n "$(find "fuzz/artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'oom-*' -o -name 'timeout-*' \))" ]; then
    echo "fuzz $t found a failing input: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzzing: no crash in ${#targets[@]} targets x ${seconds}s"

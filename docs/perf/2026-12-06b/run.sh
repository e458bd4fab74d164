#!/usr/bin/env bash
# [2/10] hub core: old (3279903, before) and new (the hub-core commit) alternated, 3 runs
# each, both client modes, then memory at 10,000 idle connections for each build.
set -u
OLD=/work/old/target/release/signalcast-bench
NEW=/work/main/target/release/signalcast-bench
OUT=${OUT:-/tmp/perf2}
mkdir -p "$OUT"
for i in 1 2 3; do
  for b in old new; do
    BIN=$OLD; [ $b = new ] && BIN=$NEW
    for mode in light tungstenite; do
      $BIN latency --client $mode --targets signalcast --subscribers 1000 --rates 50 --sizes 0 --duration 10 --json "$OUT/$b-$mode-1k-$i.json" > "$OUT/$b-$mode-1k-$i.log" 2>&1
      $BIN latency --client $mode --targets signalcast --subscribers 5000 --rates 10 --sizes 0 --duration 10 --json "$OUT/$b-$mode-5k-$i.json" > "$OUT/$b-$mode-5k-$i.log" 2>&1
    done
  done
done
for i in 1 2; do
  $OLD memory --targets signalcast --counts 10000 --json "$OUT/old-mem-$i.json" > "$OUT/old-mem-$i.log" 2>&1
  $NEW memory --targets signalcast --counts 10000 --json "$OUT/new-mem-$i.json" > "$OUT/new-mem-$i.log" 2>&1
done
echo DONE
# Afterwards, by hand (PERFORMANCE.md): more memory runs of each build alternated, the
# same two with MIMALLOC_PURGE_DELAY=0, and, after SLOTS_RESERVED, five more of the new
# build alternated with two of the old:
#   signalcast-bench memory --targets signalcast --counts 10000

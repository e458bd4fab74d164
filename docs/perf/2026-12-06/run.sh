#!/usr/bin/env bash
# Old (e65bb93) and new (HEAD) alternated, 3 runs each, light client; then tungstenite on new.
set -u
OLD=/work/old/target/release/signalcast-bench
NEW=/work/main/target/release/signalcast-bench
for i in 1 2 3; do
  for b in old new; do
    BIN=$OLD; [ $b = new ] && BIN=$NEW
    $BIN latency --targets signalcast --subscribers 1000 --rates 50 --sizes 0 --duration 10 --json /tmp/perf/$b-1k-$i.json > /tmp/perf/$b-1k-$i.log 2>&1
    $BIN latency --targets signalcast --subscribers 5000 --rates 10 --sizes 0 --duration 10 --json /tmp/perf/$b-5k-$i.json > /tmp/perf/$b-5k-$i.log 2>&1
  done
done
for i in 1 2 3; do
  $NEW latency --client tungstenite --targets signalcast,reference --subscribers 1000 --rates 50 --sizes 0 --duration 10 --json /tmp/perf/tung-1k-$i.json > /tmp/perf/tung-1k-$i.log 2>&1
  $NEW latency --client tungstenite --targets signalcast,reference --subscribers 5000 --rates 10 --sizes 0 --duration 10 --json /tmp/perf/tung-5k-$i.json > /tmp/perf/tung-5k-$i.log 2>&1
done
$NEW memory --targets signalcast,reference --counts 10000 --json /tmp/perf/new-mem.json > /tmp/perf/new-mem.log 2>&1
$OLD memory --targets signalcast --counts 10000 --json /tmp/perf/old-mem.json > /tmp/perf/old-mem.log 2>&1
echo DONE

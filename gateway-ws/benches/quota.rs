//! What a daily quota costs a delivery (figures go to docs/PERFORMANCE.md).
//!
//! ```text
//! cargo bench -p signalcast-gateway --bench quota
//! ```
//!
//! Two threads stand for two hub shards fanning out the same messages at once, each to
//! 500 subscribers, charging every delivery as a shard does (`UserQuota::take`):
//!
//! - `distinct_users`: 1,000 users, one connection each (what a deployment sees);
//! - `one_user`: the 1,000 connections are one user's (what the `fanout` bench's clients
//!   are);
//!
//! on a node with a store (`journaled`: the charges kept for the store, taken by a third
//! thread every 100 ms, where the quota writer does it every second) and without. The
//! figure is per delivery (criterion's element): a message's 1,000 charges ÷ 1,000.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::hub::{QuotaBook, UserQuota};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PER_SHARD: usize = 500;
/// A new UTC day every this many messages, so that the charged sets stay small.
const DAY_EVERY: u64 = 1_000;

/// `iters` messages fanned out by two threads at once, each to its `PER_SHARD`.
fn fan_out(book: &QuotaBook, shards: &[Vec<Arc<UserQuota>>; 2], first: u64, iters: u64) -> Duration {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // The quota writer's part: take what is waiting (ten times as often as it does).
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::hint::black_box(book.journaled());
                let slept = Instant::now();
                while !done.load(Ordering::Relaxed) && slept.elapsed() < Duration::from_millis(100) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let start = Instant::now();
        let workers: Vec<_> = shards
            .iter()
            .map(|subs| {
                s.spawn(move || {
                    for seq in first..first + iters {
                        let day = (seq / DAY_EVERY) as u32;
                        for q in subs {
                            std::hint::black_box(q.take(0, seq, u32::MAX, day));
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let took = start.elapsed();
        done.store(true, Ordering::Relaxed);
        took
    })
}

fn quota(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(2 * PER_SHARD as u64));
    for (name, users, journaled) in [
        ("distinct_users/journaled", 2 * PER_SHARD, true),
        ("distinct_users", 2 * PER_SHARD, false),
        ("one_user/journaled", 1, true),
        ("one_user", 1, false),
    ] {
        let book = QuotaBook::default();
        if journaled {
            let _ = book.journal();
        }
        let of = |k: usize| book.user(&format!("user-{}", k % users), 0);
        let shards = [(0..PER_SHARD).map(of).collect(), (PER_SHARD..2 * PER_SHARD).map(of).collect()];
        let mut next = 1;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let took = fan_out(&book, &shards, next, iters);
                next += iters;
                took
            })
        });
    }
    g.finish();
}

criterion_group!(benches, quota);
criterion_main!(benches);

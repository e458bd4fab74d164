//! Subscribe with `since`: the exact gap from the ring, then live; or "not recovered".
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use engine::channels::{Epoch, Resume};
use engine::config::EngineConfig;
use engine::model::Tier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_inside_the_ring_replays_the_gap_then_goes_live() {
    let t = start(EngineConfig { ring_capacity: 20, ..EngineConfig::default() }).await;
    let p = producer(t.feed_addr, "alpha").await;
    for n in 1..=30 {
        p.send_signal(&equity(n, 9_100)).await.unwrap();
    }
    p.flush().await.unwrap();
    let log = t.engine.channels.live(Tier::Free);
    eventually("seq 30 published", || log.head() == 30).await;
    let epoch = log.epoch();

    // A client that saw up to seq 15 comes back.
    let sub = log.subscribe(Some(Resume { since: 15, epoch }));
    assert_eq!((sub.epoch, sub.head, sub.recovered), (epoch, 30, Some(true)));
    assert_eq!(sub.replay.iter().map(|m| m.seq()).collect::<Vec<_>>(), (16..=30).collect::<Vec<_>>());
    assert_eq!(sub.replay.iter().map(id_of).collect::<Vec<_>>(), (16..=30).collect::<Vec<_>>());

    for n in 31..=35 {
        p.send_signal(&equity(n, 9_100)).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut bell = t.engine.channels.watch();
    let mut live = Vec::new();
    let mut cursor = sub.cursor;
    while live.len() < 5 {
        cursor = log.read_after(cursor, &mut live, 100).unwrap();
        if live.len() < 5 {
            bell.changed().await.unwrap();
        }
    }
    assert_eq!(
        live.iter().map(|m| m.seq()).collect::<Vec<_>>(),
        vec![31, 32, 33, 34, 35],
        "live follows the replay with no gap"
    );

    // Older than the ring (which holds 16..=35, so since 15 still works), a wrong
    // epoch, or ahead of the head.
    for (since, epoch) in [(5, epoch), (14, epoch), (20, Epoch(epoch.0 ^ 1)), (36, epoch)] {
        let sub = log.subscribe(Some(Resume { since, epoch }));
        assert_eq!(sub.recovered, Some(false), "since {since}");
        assert!(sub.replay.is_empty());
        assert_eq!(sub.cursor, 35, "only live messages follow");
    }
    let sub = log.subscribe(Some(Resume { since: 35, epoch }));
    assert_eq!((sub.recovered, sub.replay.len()), (Some(true), 0));
}

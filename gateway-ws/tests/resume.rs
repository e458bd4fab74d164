//! Disconnect, let signals pass, reconnect with `since` + `epoch`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use engine::model::Category;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gap_is_replayed_from_the_ring_and_from_the_store_beyond_it() {
    let mut cfg = config();
    cfg.engine.ring_capacity = 20;
    let server = start(cfg).await;
    let tok = token(&server, "u-premium-1");
    let p = producer(&server).await;

    let mut c = Client::connect(&url(&server, &tok)).await;
    let sub = c.subscribe("signals_premium").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        p.send_signal(&signal(n, 9_000, Category::Equity)).await.unwrap();
    }
    let seen = c.signals(5).await;
    let last = seen[4]["seq"].as_u64().unwrap();
    drop(c);

    for n in 6..=15 {
        p.send_signal(&signal(n, 9_000, Category::Equity)).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut c = Client::connect(&url(&server, &tok)).await;
    c.send(json!({"type": "SUBSCRIBE", "channel": "signals_premium", "since": last, "epoch": epoch})).await;
    let sub = c.next_of(&["SUBSCRIBED"]).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["seq"].as_u64(), sub["epoch"].as_str()),
        (Some(true), Some(15), Some(epoch.as_str()))
    );
    let replay = c.signals(10).await;
    assert_eq!(
        replay.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        (6..=15).collect::<Vec<_>>()
    );
    assert_eq!(replay.iter().map(id_of).collect::<Vec<_>>(), (6..=15).collect::<Vec<_>>());
    p.send_signal(&signal(16, 9_000, Category::Equity)).await.unwrap();
    assert_eq!(c.signals(1).await[0]["seq"], 16, "live follows the replay without a gap");
    drop(c);

    // 30 more while away: the ring (20) no longer holds seq 17, the store does.
    for n in 17..=46 {
        p.send_signal(&signal(n, 9_000, Category::Equity)).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut c = Client::connect(&url(&server, &tok)).await;
    c.send(json!({"type": "SUBSCRIBE", "channel": "signals_premium", "since": 16, "epoch": epoch})).await;
    let sub = c.next_of(&["SUBSCRIBED"]).await;
    assert_eq!((sub["recovered"].as_bool(), sub["seq"].as_u64()), (Some(true), Some(46)));
    let replay = c.signals(30).await;
    assert_eq!(replay.iter().map(id_of).collect::<Vec<_>>(), (17..=46).collect::<Vec<_>>());
    p.send_signal(&signal(47, 9_000, Category::Equity)).await.unwrap();
    assert_eq!(c.signals(1).await[0]["seq"], 47, "live follows without a gap");

    // Without the store (memory only), beyond the ring is refused: live only.
    let mut cfg = config();
    cfg.engine.ring_capacity = 20;
    cfg.store.enabled = false;
    let memory = start(cfg).await;
    let mem_tok = token(&memory, "u-premium-1");
    let mp = producer(&memory).await;
    let mut c = Client::connect(&url(&memory, &mem_tok)).await;
    let mem_epoch = c.subscribe("signals_premium").await["epoch"].as_str().unwrap().to_owned();
    drop(c);
    for n in 1..=30 {
        mp.send_signal(&signal(n, 9_000, Category::Equity)).await.unwrap();
    }
    mp.flush().await.unwrap();
    let mut c = Client::connect(&url(&memory, &mem_tok)).await;
    c.send(json!({"type": "SUBSCRIBE", "channel": "signals_premium", "since": 1, "epoch": mem_epoch})).await;
    let sub = c.next_of(&["SUBSCRIBED"]).await;
    assert_eq!((sub["recovered"].as_bool(), sub["seq"].as_u64()), (Some(false), Some(30)));
    mp.send_signal(&signal(31, 9_000, Category::Equity)).await.unwrap();
    assert_eq!(c.signals(1).await[0]["seq"], 31, "only live messages follow");
    memory.shutdown().await;

    // Any epoch string that is not the channel's: recovered false, subscribed, live only.
    for foreign in ["yesterday", "", "0000000000000000000", "DEADBEEFDEADBEEF"] {
        let mut c = Client::connect(&url(&server, &tok)).await;
        c.send(json!({"type": "SUBSCRIBE", "channel": "signals_premium", "since": 40, "epoch": foreign}))
            .await;
        let sub = c.next_of(&["SUBSCRIBED", "ERROR"]).await;
        assert_eq!(
            (sub["type"].as_str(), sub["recovered"].as_bool()),
            (Some("SUBSCRIBED"), Some(false)),
            "{sub}"
        );
    }
    // Wrong JSON types stay bad requests.
    let mut c = Client::connect(&url(&server, &tok)).await;
    c.send(json!({"type": "SUBSCRIBE", "channel": "signals_premium", "since": 40, "epoch": 7})).await;
    assert_eq!(c.next_of(&["SUBSCRIBED", "ERROR"]).await["code"], "bad_request");

    // A stale epoch (an earlier run of the log) is never trusted.
    c.send(json!({"type": "SUBSCRIBE", "channel": "signals_basic", "since": 1, "epoch": "0123456789abcdef"}))
        .await;
    let r = c.next_of(&["SUBSCRIBED", "ERROR"]).await;
    assert_eq!(r["recovered"], false, "{r}");
    server.shutdown().await;
}

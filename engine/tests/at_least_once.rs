//! At-least-once delivery on the wire, exactly once in the channels.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use engine::config::EngineConfig;
use engine::feed::codec::{
    ApiKey, EngineMessage, Hello, PROTOCOL_VERSION, ProducerMessage, encode_signal, next_frame,
};
use engine::model::Tier;
use engine::pipeline::DropReason;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_stream_lose_and_repeat_nothing() {
    let t = start(EngineConfig::default()).await;
    let proxy = CutProxy::start(t.feed_addr).await;
    let mut cfg = producer_config(proxy.addr, "alpha");
    cfg.max_in_flight = 64;
    let p = producer_with(cfg).await;

    const N: u128 = 3_000;
    let mut cuts = 0;
    for n in 1..=N {
        p.send_signal(&equity(n, 9_500)).await.unwrap();
        if n % 700 == 0 {
            // Signals are in flight (written, not yet acked) when the line goes dead.
            cuts += proxy.cut();
        }
    }
    p.flush().await.unwrap();
    assert!(cuts >= 4, "the proxy cut {cuts} connections");
    assert!(p.reconnects() >= 4, "the producer reconnected {} times", p.reconnects());

    for tier in Tier::ALL {
        let msgs = wait_for(&t.engine, t.engine.channels.live(tier), N as usize).await;
        let mut seen = HashMap::new();
        for m in &msgs {
            *seen.entry(id_of(m)).or_insert(0) += 1;
        }
        assert_eq!(msgs.len(), N as usize, "{tier}: no duplicates");
        assert!((1..=N).all(|n| seen.get(&n) == Some(&1)), "{tier}: every signal exactly once");
        assert!(msgs.windows(2).all(|w| id_of(&w[0]) < id_of(&w[1])), "{tier}: in the producer's order");
    }
}

async fn producer_with(cfg: engine::feed::ProducerConfig) -> engine::feed::Producer {
    engine::feed::Producer::connect(cfg).await.unwrap()
}

/// Raw frames, so that the resend is exactly what the test says.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    scratch: AlignedVec,
}

impl Raw {
    async fn hello(addr: std::net::SocketAddr) -> (Self, u64) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut raw = Self { stream, buf: BytesMut::new(), scratch: AlignedVec::new() };
        let mut out = Vec::new();
        ProducerMessage::Hello(Hello {
            producer_id: "gamma".into(),
            api_key: ApiKey("key-gamma".into()),
            version: PROTOCOL_VERSION,
        })
        .encode(&mut out);
        raw.stream.write_all(&out).await.unwrap();
        match raw.next().await {
            EngineMessage::Welcome { last_acked_seq } => (raw, last_acked_seq),
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    async fn next(&mut self) -> EngineMessage {
        loop {
            if let Some((kind, payload)) = next_frame(&mut self.buf).unwrap() {
                return EngineMessage::decode(kind, &payload, &mut self.scratch).unwrap();
            }
            assert_ne!(self.stream.read_buf(&mut self.buf).await.unwrap(), 0, "closed");
        }
    }

    async fn send(&mut self, seqs: std::ops::RangeInclusive<u64>) {
        let mut out = Vec::new();
        for seq in seqs {
            encode_signal(&mut out, seq, None, &equity(u128::from(seq), 9_500));
        }
        self.stream.write_all(&out).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_after_reconnect_are_dropped_by_producer_seq() {
    let t = start(EngineConfig::default()).await;
    let (mut raw, last) = Raw::hello(t.feed_addr).await;
    assert_eq!(last, 0);
    raw.send(1..=10).await;
    // Vanish without reading a single ACK.
    drop(raw);
    let slot = t.engine.producers.get("gamma").unwrap();
    eventually("the stage took seq 10", || slot.acked() == 10).await;

    let (mut raw, last) = Raw::hello(t.feed_addr).await;
    assert_eq!(last, 10, "WELCOME says where to resume");
    // A producer that did not trust the WELCOME resends an overlap.
    raw.send(5..=12).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), raw.next()).await.unwrap() {
            EngineMessage::Ack { up_to_seq: 12 } => break,
            EngineMessage::Ack { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let msgs = wait_for(&t.engine, t.engine.channels.live(Tier::Premium), 12).await;
    assert_eq!(msgs.iter().map(id_of).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    assert_eq!(t.engine.stats.drops(DropReason::DuplicateSeq), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_id_sent_twice_is_routed_once() {
    let t = start(EngineConfig::default()).await;
    let a = producer(t.feed_addr, "alpha").await;
    let b = producer(t.feed_addr, "beta").await;
    let s = equity(77, 9_900);
    a.send_signal(&s).await.unwrap();
    a.flush().await.unwrap();
    // Another producer (or the same one under a new seq) repeats the id.
    b.send_signal(&s).await.unwrap();
    a.send_signal(&s).await.unwrap();
    a.send_signal(&equity(78, 9_900)).await.unwrap();
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let msgs = wait_for(&t.engine, t.engine.channels.live(Tier::Free), 2).await;
    assert_eq!(msgs.iter().map(id_of).collect::<Vec<_>>(), vec![77, 78]);
    assert_eq!(t.engine.stats.drops(DropReason::DuplicateId), 2);
}

/// A feed that welcomes the producer and never acknowledges: how many signals reach
/// it, and whether `send_signal` still returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_max_in_flight_unacknowledged_writes_no_more_and_send_waits() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = std::sync::Arc::clone(&received);
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (mut buf, mut scratch) = (BytesMut::new(), AlignedVec::new());
        loop {
            while let Some((kind, payload)) = next_frame(&mut buf).unwrap() {
                match ProducerMessage::decode(kind, &payload, &mut scratch, 4_096).unwrap() {
                    ProducerMessage::Hello(_) => {
                        let mut out = Vec::new();
                        EngineMessage::Welcome { last_acked_seq: 0 }.encode(&mut out);
                        stream.write_all(&out).await.unwrap();
                    }
                    ProducerMessage::Signal { .. } => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
        }
    });
    let mut cfg = engine::feed::ProducerConfig::new(addr.to_string(), "gamma", "key-gamma");
    cfg.max_in_flight = 8;
    let producer = producer_with(cfg).await;
    // The client queues up to 1,024 commands ahead of its connection: those return at
    // once, whatever is in flight.
    for n in 1..=8 + 1_024 {
        tokio::time::timeout(Duration::from_secs(5), producer.send_signal(&equity(n, 9_500)))
            .await
            .expect("room in flight or in the client's queue")
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.load(std::sync::atomic::Ordering::Relaxed) < 8 {
        assert!(tokio::time::Instant::now() < deadline, "the first 8 never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let next =
        tokio::time::timeout(Duration::from_millis(500), producer.send_signal(&equity(2_000, 9_500))).await;
    assert!(next.is_err(), "send_signal waits while 8 are in flight and the queue is full");
    assert_eq!(received.load(std::sync::atomic::Ordering::Relaxed), 8, "no more than max_in_flight written");
}

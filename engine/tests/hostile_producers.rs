//! A producer that sends garbage is cut off; everyone else carries on.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use engine::config::{EngineConfig, FeedConfig};
use engine::feed::codec::{ApiKey, EngineMessage, Hello, PROTOCOL_VERSION, ProducerMessage, next_frame};
use engine::feed::{Producer, ProducerError};
use engine::model::Tier;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn hello(id: &str, key: &str, version: u16) -> Vec<u8> {
    let mut out = Vec::new();
    ProducerMessage::Hello(Hello { producer_id: id.into(), api_key: ApiKey(key.into()), version })
        .encode(&mut out);
    out
}

/// Writes `bytes` and returns every frame the engine sends until it closes.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<EngineMessage> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = BytesMut::new();
    let mut scratch = AlignedVec::new();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the engine neither answered nor closed; got {got:?}"),
        }
        while let Some((kind, payload)) = next_frame(&mut buf).unwrap() {
            got.push(EngineMessage::decode(kind, &payload, &mut scratch).unwrap());
        }
    }
    got
}

fn error_code(msgs: &[EngineMessage]) -> &str {
    match msgs.last() {
        Some(EngineMessage::Error { code, .. }) => code,
        other => panic!("expected an ERROR last, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused_per_connection_while_a_good_producer_loses_nothing() {
    let feed = FeedConfig { handshake_timeout: Duration::from_millis(300), ..FeedConfig::default() };
    let t = start_with(EngineConfig::default(), feed).await;
    let good = producer(t.feed_addr, "alpha").await;
    const N: u128 = 2_000;
    let sender = tokio::spawn(async move {
        for n in 1..=N {
            good.send_signal(&equity(n, 9_500)).await.unwrap();
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        good.flush().await.unwrap();
        good
    });

    let addr = t.feed_addr;
    let mut authed_garbage = hello("beta", "key-beta", PROTOCOL_VERSION);
    authed_garbage.extend_from_slice(&[7, 0, 0, 0, 2, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
    let got = exchange(addr, &authed_garbage).await;
    assert!(matches!(got[0], EngineMessage::Welcome { .. }));
    assert_eq!(error_code(&got), "invalid_archive");

    let mut huge = hello("gamma", "key-gamma", PROTOCOL_VERSION);
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(error_code(&exchange(addr, &huge).await), "frame_too_large");

    let mut unknown = hello("gamma", "key-gamma", PROTOCOL_VERSION);
    unknown.extend_from_slice(&[1, 0, 0, 0, 0x7f]);
    assert_eq!(error_code(&exchange(addr, &unknown).await), "unknown_kind");

    assert_eq!(error_code(&exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await), "frame_too_large");
    assert_eq!(error_code(&exchange(addr, &[3, 0, 0, 0, 4, 1, 2]).await), "bad_frame");
    assert_eq!(error_code(&exchange(addr, &hello("beta", "stolen", PROTOCOL_VERSION)).await), "auth_failed");
    assert_eq!(error_code(&exchange(addr, &hello("beta", "key-beta", 99)).await), "unsupported_version");
    assert_eq!(error_code(&exchange(addr, &[]).await), "handshake_timeout");
    let mut twice = hello("gamma", "key-gamma", PROTOCOL_VERSION);
    twice.extend(hello("gamma", "key-gamma", PROTOCOL_VERSION));
    assert_eq!(error_code(&exchange(addr, &twice).await), "unexpected_frame");

    let good = sender.await.unwrap();
    assert_eq!(good.reconnects(), 0, "the good producer was never disturbed");
    let msgs = wait_for(&t.engine, t.engine.channels.live(Tier::Premium), N as usize).await;
    assert_eq!(msgs.len(), N as usize);
    assert!(msgs.iter().zip(1..=N).all(|(m, n)| id_of(m) == n), "every good signal, in order");
    assert!(t.feed_stats.errors() >= 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reports_refusals_instead_of_reconnecting_forever() {
    let t = start(EngineConfig::default()).await;
    let mut cfg = producer_config(t.feed_addr, "alpha");
    cfg.api_key = "nope".into();
    match Producer::connect(cfg).await {
        Err(ProducerError::Refused { code, .. }) => assert_eq!(code, "auth_failed"),
        other => panic!("{other:?}"),
    }
    // An invalid signal is refused at the caller and the connection stays up.
    let p = producer(t.feed_addr, "alpha").await;
    let mut bad = equity(1, 9_000);
    bad.expires_at = bad.generated_at;
    assert!(matches!(p.send_signal(&bad).await, Err(ProducerError::Invalid(_))));
    p.send_signal(&equity(2, 9_000)).await.unwrap();
    p.flush().await.unwrap();
    // Nobody listens here: connect fails fast.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert!(matches!(Producer::connect(producer_config(dead, "alpha")).await, Err(ProducerError::Io(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_the_same_producer_replaces_the_first() {
    let t = start(EngineConfig::default()).await;
    let first = producer(t.feed_addr, "alpha").await;
    first.send_signal(&equity(1, 9_000)).await.unwrap();
    first.flush().await.unwrap();
    let second = producer(t.feed_addr, "alpha").await;
    assert_eq!(second.acked(), 1, "the new session starts from the old one's ACK");
    second.send_signal(&equity(2, 9_000)).await.unwrap();
    second.flush().await.unwrap();
    eventually("the ghost session is gone", || t.feed_stats.connected() == 1).await;
    match first.flush().await {
        Ok(()) => {}
        Err(e) => assert_eq!(
            e,
            ProducerError::Refused {
                code: "replaced".into(),
                message: "a newer connection of this producer took over".into()
            }
        ),
    }
    let msgs = wait_for(&t.engine, t.engine.channels.live(Tier::Basic), 2).await;
    assert_eq!(msgs.iter().map(id_of).collect::<Vec<_>>(), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_need_the_right_sources_their_producers_and_a_seq_near_u64_max_cannot_poison_the_producer() {
    let t = start(EngineConfig::default()).await;
    let addr = t.feed_addr;

    // gamma may send signals, not ticks: refused, and its tick never reaches the book.
    let mut tick_frame = hello("gamma", "key-gamma", PROTOCOL_VERSION);
    ProducerMessage::Tick(tick("RELIANCE", "NSE", "1.00")).encode(&mut tick_frame);
    let got = exchange(addr, &tick_frame).await;
    assert!(matches!(got[0], EngineMessage::Welcome { .. }));
    assert_eq!(error_code(&got), "forbidden_tick");
    let alpha = producer(addr, "alpha").await;
    alpha.send_tick(&tick("RELIANCE", "NSE", "2456.80")).await.unwrap();
    eventually("alpha's tick in the book", || {
        t.engine.ticks.iter().any(|(_, k, _)| k.last.raw() == 24_568_000)
    })
    .await;
    assert_eq!(t.engine.ticks.len(), 1, "gamma's tick never reached the book");

    // A seq 2^32 past gamma's highest (0 so far) is refused; the producer is not poisoned.
    let mut poison = hello("gamma", "key-gamma", PROTOCOL_VERSION);
    engine::feed::codec::encode_signal(&mut poison, u64::MAX, None, &equity(1, 9_500));
    let got = exchange(addr, &poison).await;
    assert_eq!(error_code(&got), "bad_seq");
    let gamma = producer(addr, "gamma").await;
    gamma.send_signal(&equity(2, 9_500)).await.unwrap();
    gamma.flush().await.unwrap();
    let routed = wait_for(&t.engine, t.engine.channels.live(Tier::Premium), 1).await;
    assert_eq!(id_of(&routed[0]), 2, "a normal seq still routes after the refused one");

    // A signal under a source gamma is not bound to: refused, never routed.
    let mut foreign = equity(3, 9_500);
    foreign.source_id = uuid::Uuid::from_u128(0xbad);
    let mut frame = hello("gamma", "key-gamma", PROTOCOL_VERSION);
    engine::feed::codec::encode_signal(&mut frame, 3, None, &foreign);
    let got = exchange(addr, &frame).await;
    assert_eq!(error_code(&got), "foreign_source");
    let gamma = producer(addr, "gamma").await;
    gamma.send_signal(&equity(4, 9_500)).await.unwrap();
    gamma.flush().await.unwrap();
    let routed = wait_for(&t.engine, t.engine.channels.live(Tier::Premium), 2).await;
    assert_eq!(routed.iter().map(id_of).collect::<Vec<_>>(), [2, 4], "signal 3 never routed");
}

/// Connects from `source` (any 127.0.0.0/8 address is loopback), sends `bytes`, and
/// returns the first frame the engine answers, if any within 5 s.
async fn first_frame_from(
    source: &str,
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> (TcpStream, Option<EngineMessage>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = BytesMut::new();
    let mut scratch = AlignedVec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((kind, payload)) = next_frame(&mut buf).unwrap() {
            return (s, Some(EngineMessage::decode(kind, &payload, &mut scratch).unwrap()));
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return (s, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_sockets_hold_no_producer_place_and_are_capped_per_address() {
    let feed = FeedConfig {
        max_connections: 2,
        max_unauthenticated: 10,
        max_unauthenticated_per_ip: 5,
        handshake_timeout: Duration::from_secs(2),
        ..FeedConfig::default()
    };
    let t = start_with(EngineConfig::default(), feed).await;
    let addr = t.feed_addr;
    // Five idle sockets from one address fill its share of the door.
    let mut idle = Vec::new();
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, sixth) = first_frame_from("127.0.0.1", addr, &[]).await;
    assert!(
        matches!(&sixth, Some(EngineMessage::Error { code, .. }) if code == "too_many_connections"),
        "a sixth from the same address is turned away at once: {sixth:?}"
    );
    // Producers from elsewhere still get in: the idle sockets hold none of their 2 places.
    let (_a, first) =
        first_frame_from("127.0.0.2", addr, &hello("alpha", "key-alpha", PROTOCOL_VERSION)).await;
    assert!(matches!(first, Some(EngineMessage::Welcome { .. })), "{first:?}");
    let (_b, second) =
        first_frame_from("127.0.0.3", addr, &hello("beta", "key-beta", PROTOCOL_VERSION)).await;
    assert!(matches!(second, Some(EngineMessage::Welcome { .. })), "{second:?}");
    // The producers' own cap applies after HELLO.
    let (_, third) =
        first_frame_from("127.0.0.4", addr, &hello("gamma", "key-gamma", PROTOCOL_VERSION)).await;
    assert!(
        matches!(&third, Some(EngineMessage::Error { code, .. }) if code == "too_many_connections"),
        "{third:?}"
    );
    // The idle ones are cut at the HELLO deadline, and their address gets its places back.
    for mut s in idle {
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "an idle socket outlived the HELLO deadline");
    }
    let (_, back) = first_frame_from("127.0.0.1", addr, &[]).await;
    assert!(
        matches!(&back, Some(EngineMessage::Error { code, .. }) if code == "handshake_timeout"),
        "let in again, then timed out for want of a HELLO: {back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_frames_before_a_bad_one_in_the_same_read_are_still_routed() {
    let t = start_with(EngineConfig::default(), FeedConfig::default()).await;
    // One write: HELLO, three valid signals, then garbage. The engine decodes a read's
    // frames before it hands them to the pipeline together: the bad frame must not take
    // the good ones down with it.
    let mut bytes = hello("beta", "key-beta", PROTOCOL_VERSION);
    for n in 1..=3u128 {
        engine::feed::codec::encode_signal(&mut bytes, n as u64, None, &equity(n, 9_500));
    }
    bytes.extend_from_slice(&[7, 0, 0, 0, 2, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
    let got = exchange(t.feed_addr, &bytes).await;
    assert_eq!(error_code(&got), "invalid_archive");
    let msgs = wait_for(&t.engine, t.engine.channels.live(Tier::Premium), 3).await;
    assert_eq!(msgs.iter().map(id_of).collect::<Vec<_>>(), [1, 2, 3]);
}

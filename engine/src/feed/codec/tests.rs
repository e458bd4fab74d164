use bytes::BytesMut;
use proptest::prelude::*;
use rkyv::util::AlignedVec;
use uuid::Uuid;

use super::*;
use crate::model::{
    Analysis, Category, Confidence, Exchange, Price, Signal, SignalType, SourceType, Symbol, Tick,
};

const MAX_ANALYSIS: usize = 4096;

fn text_strategy(max: usize) -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = (0x20u8..=0x7e).filter(|&c| c != b'"' && c != b'\\').map(char::from).collect();
    proptest::collection::vec(proptest::sample::select(alphabet), 1..=max)
        .prop_map(|v| v.into_iter().collect())
}

fn price_strategy() -> impl Strategy<Value = Price> {
    (1..=Price::MAX_RAW).prop_map(|r| Price::from_raw(r).unwrap())
}

prop_compose! {
    fn signal_strategy()(
        id in any::<[u8; 16]>(), source in any::<[u8; 16]>(),
        st in 0u8..4, cat in 0u8..4, sig in 0u8..4,
        symbol in text_strategy(20), exchange in text_strategy(50),
        // Three distinct levels, placed by the signal's type (a buy's stop below its entry
        // and its target above; a sell's the other way round: `Signal::validate`).
        low in 1..=Price::MAX_RAW / 3, up in 1..=Price::MAX_RAW / 3, up2 in 1..=Price::MAX_RAW / 3,
        qty in proptest::option::of(any::<u32>()),
        conf in 0u16..=10_000,
        generated in -1_000_000_000_000_000_000i64..4_000_000_000_000_000_000,
        ttl in 1i64..1_000_000_000_000_000,
        analysis in proptest::option::of((any::<i32>(), text_strategy(30))),
    ) -> Signal {
        Signal {
            id: Uuid::from_bytes(id), source_id: Uuid::from_bytes(source),
            source_type: SourceType::from_code(st).unwrap(),
            symbol: Symbol::new(&symbol).unwrap(), exchange: Exchange::new(&exchange).unwrap(),
            category: Category::from_code(cat).unwrap(), signal_type: SignalType::from_code(sig).unwrap(),
            entry_price: Price::from_raw(low + up).unwrap(),
            target_price: Price::from_raw(if sig == 1 { low } else { low + up + up2 }).unwrap(),
            stop_loss: Price::from_raw(if sig == 1 { low + up + up2 } else { low }).unwrap(),
            quantity_recommended: qty, confidence: Confidence::new(conf).unwrap(),
            generated_at: UnixNanos(generated), expires_at: UnixNanos(generated + ttl),
            analysis: analysis.map(|(n, s)| {
                Analysis::from_json(serde_json::json!({"score": n, "note": s}).to_string()).unwrap()
            }),
        }
    }
}

prop_compose! {
    fn tick_strategy()(symbol in text_strategy(20), exchange in text_strategy(50),
        bid in price_strategy(), ask in price_strategy(), last in price_strategy(),
        volume in any::<u64>(), ts in any::<i64>()) -> Tick {
        Tick { symbol: Symbol::new(&symbol).unwrap(), exchange: Exchange::new(&exchange).unwrap(),
               bid, ask, last, volume, ts: UnixNanos(ts) }
    }
}

/// Cuts every frame out of `bytes` and decodes it as a producer message.
fn decode_all(bytes: &[u8]) -> Result<Vec<ProducerMessage>, CodecError> {
    let mut buf = BytesMut::from(bytes);
    let mut scratch = AlignedVec::new();
    let mut out = Vec::new();
    while let Some((kind, payload)) = next_frame(&mut buf)? {
        out.push(ProducerMessage::decode(kind, &payload, &mut scratch, MAX_ANALYSIS)?);
    }
    if buf.is_empty() { Ok(out) } else { Err(CodecError::Truncated) }
}

fn signal_frame(s: &Signal, seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_signal(&mut out, seq, Some(UnixNanos(42)), s);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_signal_round_trips(s in signal_strategy(), seq in any::<u64>()) {
        let got = decode_all(&signal_frame(&s, seq)).unwrap();
        prop_assert_eq!(got, vec![ProducerMessage::Signal { producer_seq: seq, sent_at: Some(UnixNanos(42)), signal: s }]);
    }

    #[test]
    fn any_valid_tick_round_trips(t in tick_strategy()) {
        let mut out = Vec::new();
        ProducerMessage::Tick(t).encode(&mut out);
        prop_assert_eq!(decode_all(&out).unwrap(), vec![ProducerMessage::Tick(t)]);
    }

    #[test]
    fn frames_survive_any_split_into_reads(
        signals in proptest::collection::vec(signal_strategy(), 1..6),
        cuts in proptest::collection::vec(1usize..300, 0..20),
    ) {
        let mut wire = Vec::new();
        for (i, s) in signals.iter().enumerate() {
            encode_signal(&mut wire, i as u64, None, s);
            ProducerMessage::Heartbeat.encode(&mut wire);
        }
        // Feed the bytes in arbitrary chunks, as a socket would deliver them.
        let mut buf = BytesMut::new();
        let mut scratch = AlignedVec::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cuts = cuts.into_iter();
        while pos < wire.len() {
            let n = cuts.next().unwrap_or(wire.len()).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some((kind, payload)) = next_frame(&mut buf).unwrap() {
                got.push(ProducerMessage::decode(kind, &payload, &mut scratch, MAX_ANALYSIS).unwrap());
            }
        }
        prop_assert_eq!(got.len(), signals.len() * 2);
        for (i, s) in signals.into_iter().enumerate() {
            prop_assert_eq!(&got[2 * i], &ProducerMessage::Signal { producer_seq: i as u64, sent_at: None, signal: s });
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_all(&bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut scratch = AlignedVec::new();
        if let Ok(Some((kind, payload))) = next_frame(&mut buf) {
            let _ = EngineMessage::decode(kind, &payload, &mut scratch);
        }
    }

    #[test]
    fn arbitrary_payloads_under_a_valid_header_never_panic(
        kind in prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(0x81u8), Just(0x82u8), Just(0x83u8)],
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut wire = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
        wire.push(kind);
        wire.extend_from_slice(&payload);
        let _ = decode_all(&wire);
    }
}

fn sample_signal() -> Signal {
    serde_json::from_str(
        r#"{"id":"6f1c2a0e-5b7d-4c1e-9a43-2f0d9e8b7c61","source_id":"3b9d0c52-7a4e-4f0a-8d5e-1c2b3a4d5e6f",
        "source_type":"ai_model","symbol":"RELIANCE","exchange":"NSE","category":"equity","signal_type":"buy",
        "entry_price":"2456.7500","target_price":"2520.0000","stop_loss":"2420.0000","quantity_recommended":50,
        "confidence":87.25,"generated_at":1795400000123456,"expires_at":1795403600000000,"analysis":{"rsi":70}}"#,
    )
    .unwrap()
}

#[test]
fn every_strict_prefix_waits_and_the_whole_frame_decodes() {
    let frame = signal_frame(&sample_signal(), 7);
    for cut in 0..frame.len() {
        let mut buf = BytesMut::from(&frame[..cut]);
        assert_eq!(next_frame(&mut buf), Ok(None), "prefix of {cut} bytes");
    }
    assert_eq!(decode_all(&frame).unwrap().len(), 1);
    // A connection that closes mid-frame is reported, not ignored.
    assert_eq!(decode_all(&frame[..frame.len() - 1]), Err(CodecError::Truncated));
}

#[test]
fn bit_flips_are_typed_errors_or_valid_values() {
    let frame = signal_frame(&sample_signal(), 7);
    let mut detected = 0;
    let mut total = 0;
    for byte in HEADER_LEN..frame.len() {
        for bit in 0..8 {
            let mut f = frame.clone();
            f[byte] ^= 1 << bit;
            total += 1;
            match decode_all(&f) {
                Ok(_) => {}
                Err(CodecError::InvalidArchive { .. } | CodecError::InvalidSignal(_)) => detected += 1,
                Err(other) => panic!("unexpected error kind {other:?}"),
            }
        }
    }
    // Flips in lengths, offsets, enum codes, UTF-8 and the analysis JSON are all caught;
    // flips inside a price or an id give another valid signal.
    assert!(detected > total / 10, "only {detected} of {total} flips detected");
}

#[test]
fn header_errors_are_caught_before_buffering() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(next_frame(&mut buf), Err(CodecError::TooLarge(u32::MAX as usize)));
    let mut buf = BytesMut::from(&(MAX_FRAME_LEN as u32 + 1).to_le_bytes()[..]);
    assert_eq!(next_frame(&mut buf), Err(CodecError::TooLarge(MAX_FRAME_LEN + 1)));
    let mut buf = BytesMut::from(&(MAX_FRAME_LEN as u32).to_le_bytes()[..]);
    buf.extend_from_slice(&[2]);
    assert_eq!(next_frame(&mut buf), Ok(None), "exactly 64 KiB is allowed");
    let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
    assert_eq!(next_frame(&mut buf), Err(CodecError::Empty));
    let mut buf = BytesMut::from(&[1, 0, 0, 0, 0x42][..]);
    assert_eq!(next_frame(&mut buf), Err(CodecError::UnknownKind(0x42)));
    assert_eq!(decode_all(&[2, 0, 0, 0, 4, 0]), Err(CodecError::HeartbeatPayload));
    assert_eq!(decode_all(&[1, 0, 0, 0, 1]).unwrap_err().code(), "invalid_archive");
    let mut ack = Vec::new();
    EngineMessage::Ack { up_to_seq: 3 }.encode(&mut ack);
    assert_eq!(decode_all(&ack), Err(CodecError::WrongDirection(FrameKind::Ack)));
}

#[test]
fn semantic_checks_apply_to_archived_signals() {
    let mut s = sample_signal();
    s.expires_at = s.generated_at;
    assert!(matches!(decode_all(&signal_frame(&s, 1)), Err(CodecError::InvalidSignal(_))));
    let mut s = sample_signal();
    s.analysis = Some(Analysis::from_json(format!("\"{}\"", "x".repeat(MAX_ANALYSIS))).unwrap());
    assert!(matches!(decode_all(&signal_frame(&s, 1)), Err(CodecError::InvalidSignal(_))));
}

#[test]
fn engine_messages_round_trip_and_hello_hides_its_key() {
    let mut scratch = AlignedVec::new();
    for m in [
        EngineMessage::Welcome { last_acked_seq: 9 },
        EngineMessage::Ack { up_to_seq: u64::MAX },
        EngineMessage::Error { code: "auth_failed".into(), message: "nope".into() },
    ] {
        let mut out = Vec::new();
        m.encode(&mut out);
        let mut buf = BytesMut::from(&out[..]);
        let (kind, payload) = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(EngineMessage::decode(kind, &payload, &mut scratch).unwrap(), m);
    }
    let hello = Hello { producer_id: "p".into(), api_key: ApiKey("s3cret".into()), version: 1 };
    assert!(!format!("{hello:?}").contains("s3cret"));
    let mut out = Vec::new();
    ProducerMessage::Hello(hello.clone()).encode(&mut out);
    assert_eq!(decode_all(&out).unwrap(), vec![ProducerMessage::Hello(hello)]);
}

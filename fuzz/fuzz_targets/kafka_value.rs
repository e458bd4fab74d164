//! Kafka record values: `raw-signals` and `market-data`, as JSON and as rkyv, with any
//! content-type header. Every input is decoded or refused with a reason; no panic.
#![no_main]

use engine::kafka::value::{ContentType, decode_signal, decode_tick};
use libfuzzer_sys::fuzz_target;
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    // First byte picks the header the record came with; the rest is the value.
    let Some((&pick, value)) = data.split_first() else { return };
    let header: Option<&[u8]> = match pick % 4 {
        0 => None,
        1 => Some(b"application/json"),
        2 => Some(b"application/x-rkyv"),
        _ => Some(value.get(..value.len().min(16)).unwrap_or_default()),
    };
    let mut scratch = AlignedVec::new();
    match ContentType::from_header(header) {
        Ok(ct) => {
            if let Err(e) = decode_signal(value, ct, 4096, &mut scratch) {
                assert!(!e.code().is_empty());
            }
            let _ = decode_tick(value, ct, &mut scratch);
        }
        Err(e) => assert_eq!(e.code(), "content_type"),
    }
});

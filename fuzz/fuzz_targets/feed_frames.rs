//! The producer feed: any bytes a producer's socket may carry, cut into frames and
//! decoded (rkyv validation included) as the engine does. No panic, and the buffer only
//! ever shrinks by whole frames.
#![no_main]

use bytes::BytesMut;
use engine::feed::codec::{EngineMessage, ProducerMessage, next_frame};
use libfuzzer_sys::fuzz_target;
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut scratch = AlignedVec::new();
    while let Ok(Some((kind, payload))) = next_frame(&mut buf) {
        let _ = ProducerMessage::decode(kind, &payload, &mut scratch, 4096);
        let _ = EngineMessage::decode(kind, &payload, &mut scratch);
    }
});

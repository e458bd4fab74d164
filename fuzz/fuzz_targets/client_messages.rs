//! What a client sends after the upgrade: WebSocket frames (masked or not, fragmented,
//! control frames, bad opcodes, oversize lengths) reassembled by the gateway's frame
//! reader, and every text message parsed by the client protocol; the same with
//! permessage-deflate negotiated (RSV1 frames inflated, never past the limit). No panic;
//! a violation is a close code.
#![no_main]

use bytes::BytesMut;
use gateway::protocol;
use gateway::ws::inbound::{FrameReader, Inbound};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The protocol parser alone, on the raw input as text.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = protocol::parse(text);
    }
    // The frame reader, on the raw input as socket bytes: plain, then with
    // permessage-deflate.
    for deflate in [false, true] {
        let mut reader = FrameReader::new(4096);
        if deflate {
            reader.enable_deflate();
        }
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = reader.next(&mut buf) {
            if let Inbound::Text(text) = frame {
                assert!(text.len() <= 4096, "inflated past the limit");
                let _ = protocol::parse(&text);
            }
        }
    }
});

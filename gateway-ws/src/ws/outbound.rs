//! Server-to-client frames. Server frames are never masked (RFC 6455 §5.1).

use super::CloseCode;

use engine::channels::frame_header as header;

/// A text frame around `text`.
pub fn text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 10);
    header(&mut out, 0x1, text.len());
    out.extend_from_slice(text);
    out
}

pub fn pong(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let mut out = Vec::with_capacity(payload.len() + 2);
    header(&mut out, 0xA, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A close frame with `code` (raw, to echo a client's code) and a reason.
pub fn close_raw(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut out = Vec::with_capacity(reason.len() + 4);
    header(&mut out, 0x8, reason.len() + 2);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    out
}

pub fn close(code: CloseCode) -> Vec<u8> {
    close_raw(code.code(), code.reason())
}

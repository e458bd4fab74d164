//! Client-to-server frames, parsed incrementally from a read buffer.
//!
//! Clients send small JSON text messages, so the limits are tight: a message (all its
//! fragments together) is at most `max_message` bytes, and anything else is a close
//! with the code docs/protocol.md gives. Pings are answered, a client close is echoed.

use bytes::{Buf, BytesMut};

use super::CloseCode;

/// What the connection should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete text message, valid UTF-8, within the size limit.
    Text(String),
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// A pong from the client (counts as liveness only).
    Pong,
    /// The client closed; echo this code (or 1000) and end.
    Close(Option<u16>),
}

/// A violation: close the connection with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("closing with {0:?}")]
pub struct Violation(pub CloseCode);

/// Reassembles client messages; one per connection.
#[derive(Debug)]
pub struct FrameReader {
    max_message: usize,
    /// Payload of a fragmented text message so far.
    partial: Option<Vec<u8>>,
    /// permessage-deflate was negotiated: a message whose first frame has RSV1 set is
    /// compressed, and is inflated here, never past `max_message`.
    inflater: Option<super::deflate::Inflater>,
    /// The message being reassembled came compressed.
    compressed: bool,
}

/// How much larger than the message limit a compressed message may be on the wire (a
/// message that does not compress grows by a few bytes).
const DEFLATE_SLACK: usize = 64;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

impl FrameReader {
    pub fn new(max_message: usize) -> Self {
        Self { max_message, partial: None, inflater: None, compressed: false }
    }

    /// permessage-deflate was negotiated for this connection.
    pub fn enable_deflate(&mut self) {
        self.inflater.get_or_insert_with(Default::default);
    }

    /// The most bytes a message may have on the wire.
    fn wire_limit(&self) -> usize {
        if self.compressed { self.max_message.saturating_add(DEFLATE_SLACK) } else { self.max_message }
    }

    /// Takes the next whole frame from `buf` and returns what it means, `Ok(None)` when
    /// more bytes are needed (or a fragment was absorbed).
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, Violation> {
        loop {
            let Some((fin, opcode, payload)) = self.frame(buf)? else { return Ok(None) };
            match opcode {
                OP_TEXT | OP_CONT => {
                    let mut msg = match (opcode, self.partial.take()) {
                        (OP_TEXT, None) => payload,
                        (OP_CONT, Some(mut p)) => {
                            p.extend_from_slice(&payload);
                            p
                        }
                        // A new message inside a fragmented one, or a continuation of nothing.
                        _ => return Err(Violation(CloseCode::Protocol)),
                    };
                    if msg.len() > self.wire_limit() {
                        return Err(Violation(CloseCode::TooBig));
                    }
                    if !fin {
                        self.partial = Some(std::mem::take(&mut msg));
                        continue;
                    }
                    if std::mem::take(&mut self.compressed) {
                        let Some(inflater) = self.inflater.as_mut() else {
                            return Err(Violation(CloseCode::Protocol));
                        };
                        let mut text = Vec::new();
                        inflater.inflate(&msg, self.max_message, &mut text).map_err(|e| match e {
                            super::deflate::InflateError::TooLarge => Violation(CloseCode::TooBig),
                            super::deflate::InflateError::Corrupt => Violation(CloseCode::InvalidPayload),
                        })?;
                        msg = text;
                    }
                    return String::from_utf8(msg)
                        .map(|s| Some(Inbound::Text(s)))
                        .map_err(|_| Violation(CloseCode::InvalidPayload));
                }
                OP_BINARY => return Err(Violation(CloseCode::Unsupported)),
                OP_PING => return Ok(Some(Inbound::Ping(payload))),
                OP_PONG => return Ok(Some(Inbound::Pong)),
                OP_CLOSE => {
                    return match payload.len() {
                        0 => Ok(Some(Inbound::Close(None))),
                        1 => Err(Violation(CloseCode::Protocol)),
                        _ => {
                            if std::str::from_utf8(&payload[2..]).is_err() {
                                return Err(Violation(CloseCode::InvalidPayload));
                            }
                            Ok(Some(Inbound::Close(Some(u16::from_be_bytes([payload[0], payload[1]])))))
                        }
                    };
                }
                _ => return Err(Violation(CloseCode::Protocol)),
            }
        }
    }

    /// Cuts one frame off `buf`: (fin, opcode, unmasked payload).
    fn frame(&mut self, buf: &mut BytesMut) -> Result<Option<(bool, u8, Vec<u8>)>, Violation> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        // RSV2 and RSV3 mean nothing here; RSV1 only with permessage-deflate, and only on
        // a message's first frame (RFC 7692 §6.1).
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || rsv1 && (self.inflater.is_none() || !(opcode == OP_TEXT || opcode == OP_BINARY))
        {
            return Err(Violation(CloseCode::Protocol));
        }
        if b1 & 0x80 == 0 {
            return Err(Violation(CloseCode::Protocol)); // clients must mask (RFC 6455 §5.1)
        }
        let control = opcode & 0x8 != 0;
        let (len, at) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(Violation(CloseCode::Protocol));
        }
        // Refuse on the header alone: nothing is buffered for an oversize claim.
        // Saturating: a 64-bit length near u64::MAX after a fragment must not wrap
        // around the limit (found by the client_messages fuzz target).
        let already = self.partial.as_ref().map_or(0, Vec::len) as u64;
        let limit = if rsv1 || (opcode == OP_CONT && self.compressed) {
            self.max_message.saturating_add(DEFLATE_SLACK)
        } else {
            self.max_message
        };
        if !control && already.saturating_add(len) > limit as u64 {
            return Err(Violation(CloseCode::TooBig));
        }
        let len = len as usize;
        if buf.len() < at + 4 + len {
            buf.reserve(at + 4 + len - buf.len());
            return Ok(None);
        }
        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        buf.advance(at + 4);
        let mut payload = buf.split_to(len).to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        if opcode == OP_TEXT || opcode == OP_BINARY {
            self.compressed = rsv1;
        }
        Ok(Some((fin, opcode, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked as clients must.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        crate::ws::client_frame(fin, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
    }

    fn read(bytes: &[u8]) -> Result<Vec<Inbound>, Violation> {
        read_with(FrameReader::new(4096), bytes)
    }

    fn read_with(mut r: FrameReader, bytes: &[u8]) -> Result<Vec<Inbound>, Violation> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = r.next(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn a_64_bit_length_after_a_fragment_is_too_big_not_a_wraparound() {
        // Found by fuzz/fuzz_targets/client_messages.rs: the limit check overflowed and
        // the reader then panicked slicing the buffer.
        let mut b = client_frame(false, OP_TEXT, b"0123456789");
        b.extend([0x80, 0xff]); // FIN continuation, masked, 64-bit length…
        b.extend([0xff; 8]); // …of u64::MAX
        b.extend([1, 2, 3, 4, b'x']);
        let mut r = FrameReader::new(4096);
        let mut buf = BytesMut::from(&b[..]);
        assert_eq!(r.next(&mut buf), Err(Violation(CloseCode::TooBig)));
    }

    #[test]
    fn text_ping_close_and_fragments() {
        let mut b = client_frame(true, OP_TEXT, b"{\"type\":\"PING\"}");
        b.extend(client_frame(true, OP_PING, b"hi"));
        b.extend(client_frame(false, OP_TEXT, "caf".as_bytes()));
        b.extend(client_frame(true, OP_PING, b""));
        b.extend(client_frame(true, OP_CONT, "é".as_bytes()));
        b.extend(client_frame(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
        assert_eq!(
            read(&b).unwrap(),
            vec![
                Inbound::Text("{\"type\":\"PING\"}".into()),
                Inbound::Ping(b"hi".to_vec()),
                Inbound::Ping(vec![]),
                Inbound::Text("café".into()),
                Inbound::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn every_byte_boundary_waits_for_more() {
        let f = client_frame(true, OP_TEXT, &[b'x'; 300]);
        let mut r = FrameReader::new(4096);
        let mut buf = BytesMut::new();
        for (i, b) in f.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = r.next(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == f.len() - 1);
        }
    }

    #[test]
    fn limits_map_to_close_codes() {
        let v = |b: &[u8]| read(b).unwrap_err().0;
        assert_eq!(read(&client_frame(true, OP_TEXT, &[b'a'; 4096])).unwrap().len(), 1, "4,096 is allowed");
        assert_eq!(v(&client_frame(true, OP_TEXT, &[b'a'; 4097])), CloseCode::TooBig);
        // Fragments add up: 3 × 1,500 is over the limit even though each frame is not.
        let mut b = client_frame(false, OP_TEXT, &[b'a'; 1500]);
        b.extend(client_frame(false, OP_CONT, &[b'a'; 1500]));
        b.extend(client_frame(true, OP_CONT, &[b'a'; 1500]));
        assert_eq!(v(&b), CloseCode::TooBig);
        // A header claiming 2^63 bytes is refused before anything is buffered.
        assert_eq!(v(&[0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), CloseCode::TooBig);
        assert_eq!(v(&client_frame(true, OP_BINARY, b"\x00")), CloseCode::Unsupported);
        assert_eq!(v(&client_frame(true, OP_TEXT, &[0xc3, 0x28])), CloseCode::InvalidPayload);
        assert_eq!(v(&[0x81, 0x02, b'h', b'i']), CloseCode::Protocol, "unmasked");
        assert_eq!(v(&client_frame(true, 0x3, b"")), CloseCode::Protocol, "reserved opcode");
        assert_eq!(v(&client_frame(false, OP_PING, b"")), CloseCode::Protocol, "fragmented control");
        assert_eq!(v(&client_frame(true, OP_PING, &[0; 126])), CloseCode::Protocol);
        assert_eq!(v(&client_frame(true, OP_CONT, b"x")), CloseCode::Protocol);
        let mut rsv = client_frame(true, OP_TEXT, b"x");
        rsv[0] |= 0x40;
        assert_eq!(v(&rsv), CloseCode::Protocol);
        assert_eq!(v(&client_frame(true, OP_CLOSE, &[3])), CloseCode::Protocol);
    }

    /// A masked client frame with RSV1 set (permessage-deflate's "compressed").
    fn rsv1_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = client_frame(fin, opcode, payload);
        f[0] |= 0x40;
        f
    }

    fn read_deflate(bytes: &[u8]) -> Result<Vec<Inbound>, Violation> {
        let mut r = FrameReader::new(4096);
        r.enable_deflate();
        read_with(r, bytes)
    }

    #[test]
    fn compressed_messages_are_inflated_within_the_limit_only_when_negotiated() {
        let text = br#"{"type":"SUBSCRIBE","channel":"signals_premium","filter":{"symbols":["TCS","TCS","TCS","TCS"]}}"#;
        let z = crate::ws::deflate::Deflater::new(6).compress(text).unwrap();
        let want = Inbound::Text(String::from_utf8(text.to_vec()).unwrap());
        assert_eq!(read_deflate(&rsv1_frame(true, OP_TEXT, &z)), Ok(vec![want.clone()]));
        // Fragmented: RSV1 on the first frame only; plain messages still read plain.
        let (a, b) = z.split_at(z.len() / 2);
        let mut two = rsv1_frame(false, OP_TEXT, a);
        two.extend(client_frame(true, OP_CONT, b));
        two.extend(client_frame(true, OP_TEXT, b"{}"));
        assert_eq!(read_deflate(&two), Ok(vec![want, Inbound::Text("{}".into())]));
        // Not negotiated, on a continuation, on a control frame, RSV2: 1002.
        let protocol = Err(Violation(CloseCode::Protocol));
        assert_eq!(read(&rsv1_frame(true, OP_TEXT, &z)), protocol);
        let mut cont = client_frame(false, OP_TEXT, b"{");
        cont.extend(rsv1_frame(true, OP_CONT, b"}"));
        assert_eq!(read_deflate(&cont), protocol);
        assert_eq!(read_deflate(&rsv1_frame(true, OP_PING, b"x")), protocol);
        let mut rsv2 = client_frame(true, OP_TEXT, b"{}");
        rsv2[0] |= 0x20;
        assert_eq!(read_deflate(&rsv2), protocol);
        // A bomb: 1009, garbage: 1007.
        let bomb = crate::ws::deflate::Deflater::new(6).compress(&[b' '; 100_000]).unwrap();
        assert_eq!(read_deflate(&rsv1_frame(true, OP_TEXT, &bomb)), Err(Violation(CloseCode::TooBig)));
        assert_eq!(
            read_deflate(&rsv1_frame(true, OP_TEXT, &[0xff, 0xff, 0x00])),
            Err(Violation(CloseCode::InvalidPayload))
        );
    }
}

//! A routed message: encoded once, framed once, shared by every reader and socket.

use std::sync::Arc;

use crate::model::{Category, UnixNanos};

/// What the gateway needs to know about a message without parsing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    pub seq: u64,
    /// For the per-user category test at the hub.
    pub category: Category,
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    pub sent_ts: Option<UnixNanos>,
    /// A signal's close (docs/outcomes.md): delivered to whoever its channel and
    /// categories reach, charged to no quota.
    pub outcome: bool,
}

/// One immutable buffer: a 40-byte metadata header, then the message as a complete
/// WebSocket text frame (RFC 6455 §5.2: server frames are unmasked, so the very same
/// bytes go to every client).
///
/// One allocation per channel message, not one for the metadata and one for the text:
/// messages die in FIFO order long after they were made (ring eviction, delayed views),
/// so every allocation is a cache miss when it is freed, and the stage benchmark showed
/// allocation and freeing as its largest cost. Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq)]
pub struct Message(Arc<[u8]>);

const SEQ: usize = 0;
const INGEST: usize = 8;
const ROUTED: usize = 16;
const SENT: usize = 24;
const CATEGORY: usize = 32;
const JSON_AT: usize = 33;
const FLAGS: usize = 34;
const FRAME: usize = 40;

/// [`FLAGS`] bit: the message is a close ([`MessageMeta::outcome`]).
const OUTCOME: u8 = 1;
/// [`FLAGS`] bit: the frame's payload is compressed (permessage-deflate, RSV1 set).
const DEFLATED: u8 = 2;

impl Message {
    /// Builds the message around `json` (the WebSocket payload), using `scratch` so
    /// that the only allocation is the shared buffer itself.
    pub fn new(meta: &MessageMeta, json: &[u8], scratch: &mut Vec<u8>) -> Self {
        scratch.clear();
        scratch.extend_from_slice(&meta.seq.to_le_bytes());
        scratch.extend_from_slice(&meta.ingest_ts.0.to_le_bytes());
        scratch.extend_from_slice(&meta.routed_ts.0.to_le_bytes());
        scratch.extend_from_slice(&meta.sent_ts.map_or(i64::MIN, |t| t.0).to_le_bytes());
        scratch.push(meta.category.code());
        let header_at = FRAME;
        scratch.resize(FRAME, 0);
        scratch[FLAGS] = if meta.outcome { OUTCOME } else { 0 };
        frame_header(scratch, 0x1, json.len());
        scratch[JSON_AT] = (scratch.len() - header_at) as u8;
        scratch.extend_from_slice(json);
        Self(Arc::from(&scratch[..]))
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }

    pub fn seq(&self) -> u64 {
        self.u64_at(SEQ)
    }

    pub fn category(&self) -> Category {
        // Only valid codes are ever written (see `new`).
        Category::from_code(self.0[CATEGORY]).unwrap_or(Category::Equity)
    }

    pub fn ingest_ts(&self) -> UnixNanos {
        UnixNanos(self.u64_at(INGEST) as i64)
    }

    pub fn routed_ts(&self) -> UnixNanos {
        UnixNanos(self.u64_at(ROUTED) as i64)
    }

    pub fn sent_ts(&self) -> Option<UnixNanos> {
        let t = self.u64_at(SENT) as i64;
        (t != i64::MIN).then_some(UnixNanos(t))
    }

    /// Whether this is a signal's close (no quota is charged for it).
    pub fn is_outcome(&self) -> bool {
        self.0[FLAGS] & OUTCOME != 0
    }

    pub fn meta(&self) -> MessageMeta {
        MessageMeta {
            seq: self.seq(),
            category: self.category(),
            ingest_ts: self.ingest_ts(),
            routed_ts: self.routed_ts(),
            sent_ts: self.sent_ts(),
            outcome: self.is_outcome(),
        }
    }

    /// Brings the buffer's first bytes and its reference counts into the cache ahead
    /// of a drop or a read: ring eviction and delayed release touch buffers written
    /// long ago, a cache miss each otherwise (the stage's largest cost, PERFORMANCE.md).
    #[inline]
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let data = Arc::as_ptr(&self.0).cast::<i8>();
            // The counts sit just before the data in the same allocation.
            let counts = data.wrapping_sub(16);
            // SAFETY: PREFETCHT0 is a hint: it never faults, whatever the address, and
            // changes no memory the program can observe (Intel SDM vol. 2B,
            // "PREFETCHh"); both addresses are in or next to the live allocation `self`
            // owns besides. `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is
            // in the target's baseline features), so calling it here is defined.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(counts);
                _mm_prefetch::<_MM_HINT_T0>(data);
            }
        }
    }

    /// The same message with `payload` (this one's text compressed on its own, without
    /// the sync flush's tail) as its frame: RSV1 set, for connections that negotiated
    /// permessage-deflate. Made once per message and shared like the plain one.
    pub fn deflated(&self, payload: &[u8], scratch: &mut Vec<u8>) -> Self {
        scratch.clear();
        scratch.extend_from_slice(&self.0[..FRAME]);
        scratch[FLAGS] |= DEFLATED;
        frame_header(scratch, 0x1, payload.len());
        scratch[FRAME] |= 0x40; // RSV1: "this message is compressed" (RFC 7692 §6)
        scratch[JSON_AT] = (scratch.len() - FRAME) as u8;
        scratch.extend_from_slice(payload);
        Self(Arc::from(&scratch[..]))
    }

    /// Whether the frame carries the compressed text ([`Message::deflated`]).
    pub fn is_deflated(&self) -> bool {
        self.0[FLAGS] & DEFLATED != 0
    }

    /// The complete WebSocket text frame, ready for the socket.
    pub fn frame(&self) -> &[u8] {
        &self.0[FRAME..]
    }

    /// The JSON text (the frame's payload; compressed bytes for a
    /// [deflated](Message::deflated) one, which only sockets read).
    pub fn json(&self) -> &[u8] {
        &self.0[FRAME + usize::from(self.0[JSON_AT])..]
    }
}

/// Appends a server frame header (RFC 6455 §5.2): FIN, `opcode`, no mask, and the
/// payload length in its shortest form.
pub fn frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    match len {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("meta", &self.meta())
            .field("json", &String::from_utf8_lossy(self.json()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_frame_survive_every_length_form() {
        for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let json = vec![b'x'; len];
            let meta = MessageMeta {
                seq: u64::MAX - 3,
                category: Category::Commodity,
                ingest_ts: UnixNanos(-5),
                routed_ts: UnixNanos(1_795_400_000_124_100_000),
                sent_ts: if len % 2 == 0 { None } else { Some(UnixNanos(7)) },
                outcome: false,
            };
            let m = Message::new(&meta, &json, &mut Vec::new());
            assert_eq!(m.meta(), meta);
            assert_eq!(m.json(), &json[..]);
            let f = m.frame();
            assert_eq!(f.len(), header + len);
            assert_eq!(f[0], 0x81, "FIN, text, unmasked");
            let declared = match f[1] {
                126 => usize::from(u16::from_be_bytes([f[2], f[3]])),
                127 => u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                n => usize::from(n),
            };
            assert_eq!(declared, len);
        }
    }

    #[test]
    fn a_deflated_copy_keeps_the_metadata_and_sets_rsv1() {
        let meta = MessageMeta {
            seq: 9,
            category: Category::Crypto,
            ingest_ts: UnixNanos(1),
            routed_ts: UnixNanos(2),
            sent_ts: Some(UnixNanos(3)),
            outcome: true,
        };
        let m = Message::new(&meta, b"{\"a\":1}", &mut Vec::new());
        let d = m.deflated(&[1, 2, 3, 4, 5], &mut Vec::new());
        assert_eq!(d.meta(), meta);
        assert!(d.is_deflated() && d.is_outcome() && !m.is_deflated());
        assert_eq!(d.frame(), [0xC1, 5, 1, 2, 3, 4, 5], "FIN, RSV1, text, unmasked");
    }
}

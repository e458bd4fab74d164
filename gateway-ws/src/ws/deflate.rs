//! permessage-deflate (RFC 7692): reading a client's offers and choosing the answer.
//!
//! By default the gateway compresses a channel message once and sends the same bytes to
//! every connection that negotiated the extension, which is only sound when no side
//! keeps a compression context between messages: the answer is
//! `server_no_context_takeover; client_no_context_takeover`, with the server's window at
//! its full 15 bits (so an offer that limits the server's window below 15 is declined
//! and the next offer tried). Declining every offer is not an error: the connection goes
//! on uncompressed.
//!
//! An operator may opt in to per-connection context takeover (`deflate_context_takeover`):
//! each such connection gets a compressor of its own that keeps its window across
//! messages (about 0.17 × the bytes instead of 0.6 ×, for a compression per delivery and
//! a compressor's memory per connection). A client that asks for
//! `server_no_context_takeover` still gets the shared mode. The client never keeps a
//! context (`client_no_context_takeover`): its messages are few and small.

/// What the gateway answers when it accepts an offer in the shared mode (with
/// `; server_max_window_bits=15` after it when the offer named that parameter).
pub const SHARED_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// An accepted offer: what was agreed, and the `Sec-WebSocket-Extensions` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub agreed: Agreed,
    pub response: String,
}

/// How offers are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Never: every connection is uncompressed.
    Off,
    /// One compression per channel message, shared by every connection.
    Shared,
    /// A compressor per connection that keeps its window (`window_bits`, 9–15), unless
    /// the client asks for `server_no_context_takeover`.
    Context { window_bits: u8 },
}

/// What one connection agreed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreed {
    Shared,
    /// The server keeps a context of `2^window_bits` bytes for this connection.
    Context {
        window_bits: u8,
    },
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` answer. A `server_max_window_bits` the client
    /// offered is answered (RFC 7692 §7.1.2.1: a server accepts it by including it),
    /// with the window used; a window below 15 bits is always named.
    fn response(self, window_offered: bool) -> String {
        let (base, bits) = match self {
            Self::Shared => (SHARED_RESPONSE, 15),
            Self::Context { window_bits } => ("permessage-deflate; client_no_context_takeover", window_bits),
        };
        if window_offered || bits < 15 {
            format!("{base}; server_max_window_bits={bits}")
        } else {
            base.to_owned()
        }
    }
}

/// The answer to the offers in `headers` (the values of every `Sec-WebSocket-Extensions`
/// line, in order) under `policy`: the first acceptable `permessage-deflate` offer.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>, policy: Policy) -> Option<Negotiated> {
    if policy == Policy::Off {
        return None;
    }
    headers.into_iter().flat_map(split_outside_quotes).find_map(|offer| {
        let o = parse_offer(offer)?;
        let agreed = match policy {
            Policy::Context { window_bits } if !o.server_no_context_takeover => {
                // zlib cannot compress with an 8-bit window (it makes it 9): declined.
                let bits = window_bits.min(o.server_max_window_bits.unwrap_or(15));
                (bits >= 9).then_some(Agreed::Context { window_bits: bits })
            }
            // We compress shared messages with a 15-bit window: only an offer that allows it.
            _ => o.server_max_window_bits.is_none_or(|b| b == 15).then_some(Agreed::Shared),
        }?;
        Some(Negotiated { agreed, response: agreed.response(o.server_max_window_bits.is_some()) })
    })
}

/// WebKit 15.0–15.3 ignores `client_no_context_takeover` and compresses with a context
/// the server does not keep: the gateway does not negotiate with Safari of those
/// versions (macOS and iOS; uWebSockets makes the same exception,
/// uNetworking/uWebSockets#1347), nor with any browser on iOS/iPadOS 15.0–15.3, where
/// every browser (Chrome's `CriOS`, Firefox's `FxiOS`, in-app views) is WebKit.
pub fn broken_client(user_agent: &str) -> bool {
    let minor_at_most_3 = |rest: &str| {
        let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
        minor.parse::<u32>().is_ok_and(|m| m <= 3)
    };
    let safari = user_agent.find(" Version/15.").is_some_and(|at| {
        let rest = &user_agent[at + " Version/15.".len()..];
        minor_at_most_3(rest) && rest.contains(" Safari/")
    });
    // "iPhone OS 15_2 like Mac OS X", "CPU OS 15_1 like Mac OS X" (iPad); 15_0 may be
    // written "OS 15 like".
    let ios = [" OS 15_", " OS 15 like"].iter().any(|p| {
        user_agent.find(p).is_some_and(|at| {
            let rest = &user_agent[at + p.len()..];
            (p.ends_with("like") || minor_at_most_3(rest)) && user_agent.contains("like Mac OS X")
        })
    });
    safari || ios
}

/// `a, b; x="1,2", c` → `a`, `b; x="1,2"`, `c`.
fn split_outside_quotes(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(line[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(line[start..].trim());
    out.retain(|o| !o.is_empty());
    out
}

/// What an offer asks of the server.
struct Offer {
    server_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
}

/// One offer (`permessage-deflate; param[=value]…`), or `None` when it is not a valid
/// permessage-deflate offer (RFC 7692 §7: unknown or repeated parameters, bad values).
fn parse_offer(offer: &str) -> Option<Offer> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
        return None;
    }
    let mut o = Offer { server_no_context_takeover: false, server_max_window_bits: None };
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(unquote(v.trim()))),
            None => (param.to_ascii_lowercase(), None),
        };
        // A parameter given twice makes the offer invalid (RFC 7692 §7).
        if seen.contains(&name) {
            return None;
        }
        match name.as_str() {
            "server_no_context_takeover" if value.is_none() => o.server_no_context_takeover = true,
            "client_no_context_takeover" if value.is_none() => {}
            "server_max_window_bits" => o.server_max_window_bits = Some(value.and_then(window_bits)?),
            // The client's window is the client's business: our inflater takes any.
            "client_max_window_bits" if value.is_none_or(|v| window_bits(v).is_some()) => {}
            _ => return None,
        }
        seen.push(name);
    }
    Some(o)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

/// A window size: 8 to 15, in decimal without a leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// What ends a sync-flushed deflate block: left off the wire (RFC 7692 §7.2.1) and put
/// back by the receiver before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compresses messages one at a time, no context kept between them: a hub shard's one
/// compressor for every channel message it sends compressed.
pub struct Deflater {
    c: flate2::Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// `level` 0–9 (zlib's).
    pub fn new(level: u32) -> Self {
        Self { c: flate2::Compress::new(flate2::Compression::new(level.min(9)), false) }
    }

    /// `data` compressed on its own, without the sync flush's tail (what a message's
    /// payload carries), or `None` when it would not be smaller.
    pub fn compress(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.c.reset();
        sync_flush(&mut self.c, data).filter(|out| out.len() < data.len())
    }
}

/// One connection's compressor with context takeover: each message is compressed after
/// the ones before it (the client's inflater keeps the same window), so it must be sent,
/// compressed, in the order it was compressed, and never skipped.
pub struct ContextDeflater {
    c: flate2::Compress,
}

impl std::fmt::Debug for ContextDeflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextDeflater").finish_non_exhaustive()
    }
}

impl ContextDeflater {
    /// `level` 0–9, `window_bits` 9–15.
    pub fn new(level: u32, window_bits: u8) -> Self {
        let c = flate2::Compress::new_with_window_bits(
            flate2::Compression::new(level.min(9)),
            false,
            window_bits.clamp(9, 15),
        );
        Self { c }
    }

    /// `data` compressed after everything before it, without the tail; larger than
    /// `data` at times (it is in the window now, so it must go compressed). `None`
    /// only if zlib fails, after which this compressor must not be used again.
    pub fn compress(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        sync_flush(&mut self.c, data)
    }
}

/// `data` through `c` with a sync flush, the flush's `00 00 ff ff` tail cut off.
fn sync_flush(c: &mut flate2::Compress, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let start_in = c.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let taken = usize::try_from(c.total_in() - start_in).ok()?;
        let status = c.compress_vec(&data[taken..], &mut out, flate2::FlushCompress::Sync).ok()?;
        let taken = usize::try_from(c.total_in() - start_in).ok()?;
        // Done when all of it went in and the flush fit (room was left over).
        if taken == data.len() && out.len() < out.capacity() && status == flate2::Status::Ok {
            break;
        }
        // Deflate never grows data by more than a few bytes per block: a guard, not a path.
        if out.len() > data.len() * 2 + 1024 {
            return None;
        }
    }
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    Some(out)
}

/// Why a compressed client message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates to more than the message limit (close 1009).
    #[error("the message inflates past the limit")]
    TooLarge,
    /// Not a deflate stream (close 1007).
    #[error("the compressed message is not valid deflate data")]
    Corrupt,
}

/// Inflates client messages one at a time (the client keeps no context either:
/// `client_no_context_takeover`), never holding more than the limit plus one byte.
pub struct Inflater {
    d: flate2::Decompress,
    /// The sender keeps its window across messages (a client of a server with context
    /// takeover): so must we.
    keep_context: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self { d: flate2::Decompress::new(false), keep_context: false }
    }
}

impl Inflater {
    /// For messages compressed with context takeover: the window is kept from one
    /// message to the next (what a client of the opt-in mode does).
    pub fn keeping_context() -> Self {
        Self { keep_context: true, ..Self::default() }
    }

    /// Inflates `payload` (a message's data without the tail) into `out`, at most `max`
    /// bytes.
    pub fn inflate(&mut self, payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        if !self.keep_context {
            self.d.reset(false);
        }
        out.clear();
        let limit = max.saturating_add(1);
        for input in [payload, &TAIL[..]] {
            let base = self.d.total_in();
            loop {
                let taken = usize::try_from(self.d.total_in() - base).map_err(|_| InflateError::Corrupt)?;
                if taken == input.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() == out.capacity() {
                    if out.len() >= limit {
                        return Err(InflateError::TooLarge);
                    }
                    // Grow by doubling, never past the limit plus one byte.
                    let want = (out.capacity().max(256) * 2).min(limit);
                    out.reserve_exact(want - out.len());
                }
                let before = (self.d.total_in(), out.len());
                let status = self
                    .d
                    .decompress_vec(&input[taken..], out, flate2::FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                if status == flate2::Status::StreamEnd {
                    // A final block (allowed, RFC 7692 §7.2.3.3): nothing may follow.
                    break;
                }
                if (self.d.total_in(), out.len()) == before && out.len() < out.capacity() {
                    // No progress with room to spare: the input is used up.
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed<'a>(offers: impl IntoIterator<Item = &'a str>, policy: Policy) -> Option<Agreed> {
        negotiate(offers, policy).map(|n| n.agreed)
    }

    fn response(offer: &str, policy: Policy) -> Option<String> {
        negotiate([offer], policy).map(|n| n.response)
    }

    #[test]
    fn browsers_and_python_websockets_get_the_shared_answer() {
        // What Chromium and Python `websockets` offer by default.
        assert_eq!(
            agreed(["permessage-deflate; client_max_window_bits"], Policy::Shared),
            Some(Agreed::Shared)
        );
        // Firefox and Safari offer the same or less.
        assert_eq!(agreed(["permessage-deflate"], Policy::Shared), Some(Agreed::Shared));
        assert_eq!(
            agreed(
                ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
                Policy::Shared
            ),
            Some(Agreed::Shared)
        );
        assert_eq!(
            agreed(["PerMessage-Deflate; Client_Max_Window_Bits=\"10\""], Policy::Shared),
            Some(Agreed::Shared)
        );
    }

    #[test]
    fn with_context_takeover_opted_in_offers_get_a_compressor_of_their_own_unless_they_ask_not_to() {
        let context = Policy::Context { window_bits: 12 };
        let offer = "permessage-deflate; client_max_window_bits";
        assert_eq!(agreed([offer], context), Some(Agreed::Context { window_bits: 12 }));
        assert_eq!(
            response(offer, context).as_deref(),
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=12")
        );
        assert_eq!(
            response(offer, Policy::Context { window_bits: 15 }).as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
        // The client limits our window further: its limit.
        let limited = "permessage-deflate; server_max_window_bits=10";
        assert_eq!(agreed([limited], context), Some(Agreed::Context { window_bits: 10 }));
        // 8 bits is below what zlib compresses with: declined, the next offer taken.
        let eight = "permessage-deflate; server_max_window_bits=8, permessage-deflate";
        assert_eq!(agreed([eight], context), Some(Agreed::Context { window_bits: 12 }));
        // The client wants no context kept: the shared mode.
        let no_context = "permessage-deflate; server_no_context_takeover";
        assert_eq!(agreed([no_context], context), Some(Agreed::Shared));
        assert_eq!(agreed([offer], Policy::Off), None);
    }

    #[test]
    fn a_context_compressor_makes_a_stream_the_client_inflates_message_by_message() {
        let messages: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"type":"SIGNAL_UPDATE","channel":"signals_premium","seq":{i},"data":{{"symbol":"RELIANCE"}}}}"#))
            .collect();
        let mut c = ContextDeflater::new(6, 10);
        // The client's side: one inflater kept across messages, the tail put back.
        let mut d = flate2::Decompress::new_with_window_bits(false, 10);
        let (mut plain, mut sent) = (0, 0);
        for m in &messages {
            let mut z = c.compress(m.as_bytes()).unwrap();
            sent += z.len();
            plain += m.len();
            z.extend_from_slice(&TAIL);
            let mut out = Vec::with_capacity(4096);
            d.decompress_vec(&z, &mut out, flate2::FlushDecompress::Sync).unwrap();
            assert_eq!(out, m.as_bytes());
        }
        assert!(sent * 4 < plain, "later messages cost a few bytes each: {sent} of {plain}");
    }

    #[test]
    fn a_window_the_client_named_is_answered() {
        assert_eq!(response("permessage-deflate", Policy::Shared).as_deref(), Some(SHARED_RESPONSE));
        let named = "permessage-deflate; server_max_window_bits=15";
        assert_eq!(
            response(named, Policy::Shared),
            Some(format!("{SHARED_RESPONSE}; server_max_window_bits=15"))
        );
        assert_eq!(
            response(named, Policy::Context { window_bits: 15 }).as_deref(),
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=15")
        );
    }

    #[test]
    fn only_safari_15_0_to_15_3_is_refused() {
        let safari = |v: &str| {
            format!(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v} Safari/605.1.15"
            )
        };
        for v in ["15.0", "15.1", "15.2", "15.3", "15.3.1"] {
            assert!(broken_client(&safari(v)), "{v}");
        }
        for v in ["15.4", "15.10", "16.0", "14.1.2", "17.4"] {
            assert!(!broken_client(&safari(v)), "{v}");
        }
        let ios = "Mozilla/5.0 (iPhone; CPU iPhone OS 15_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.2 Mobile/15E148 Safari/604.1";
        assert!(broken_client(ios));
        // Every iOS 15.0–15.3 browser is WebKit.
        let crios = "Mozilla/5.0 (iPhone; CPU iPhone OS 15_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/96.0.4664.53 Mobile/15E148 Safari/604.1";
        assert!(broken_client(crios));
        let ipad = "Mozilla/5.0 (iPad; CPU OS 15_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/40.0 Mobile/15E148 Safari/605.1.15";
        assert!(broken_client(ipad));
        let ios_15_4 = "Mozilla/5.0 (iPhone; CPU iPhone OS 15_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/100.0 Mobile/15E148 Safari/604.1";
        assert!(!broken_client(ios_15_4));
        let ios_16 = "Mozilla/5.0 (iPhone; CPU iPhone OS 16_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.1 Mobile/15E148 Safari/604.1";
        assert!(!broken_client(ios_16));
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert!(!broken_client(chrome));
        assert!(!broken_client("Python/3.11 websockets/17.4"));
        assert!(!broken_client(""));
    }

    #[test]
    fn offers_we_cannot_take_are_declined_and_the_next_one_tried() {
        // The server's window limited below ours: declined, then the plain offer taken.
        assert_eq!(
            agreed(["permessage-deflate; server_max_window_bits=10, permessage-deflate"], Policy::Shared),
            Some(Agreed::Shared)
        );
        // The same across two header lines.
        assert_eq!(
            agreed(["permessage-deflate; server_max_window_bits=10", "permessage-deflate"], Policy::Shared),
            Some(Agreed::Shared)
        );
        for bad in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=016",
            "permessage-deflate; client_max_window_bits=\"x\"",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "permessage-bzip2",
            "",
        ] {
            assert_eq!(agreed([bad], Policy::Shared), None, "{bad:?}");
        }
        assert_eq!(
            agreed(["permessage-deflate; server_max_window_bits=15"], Policy::Shared),
            Some(Agreed::Shared)
        );
        assert_eq!(negotiate(Vec::<&str>::new(), Policy::Shared), None);
    }

    #[test]
    fn commas_inside_quotes_do_not_split_offers() {
        assert_eq!(split_outside_quotes(r#"a; x="1,2", b"#), [r#"a; x="1,2""#, "b"]);
        assert_eq!(agreed([r#"foo; x="a,b", permessage-deflate"#], Policy::Shared), Some(Agreed::Shared));
    }

    fn deflated(text: &[u8]) -> Vec<u8> {
        Deflater::new(6).compress(text).expect("compressible")
    }

    #[test]
    fn a_message_round_trips_without_its_tail_and_each_one_alone() {
        let text = br#"{"type":"SIGNAL_UPDATE","channel":"signals_premium","seq":42,"data":{"symbol":"RELIANCE","exchange":"NSE","category":"equity","signal_type":"buy","confidence":"87.50","entry_price":"2456.7500","target_price":"2600.0000","stop_loss":"2400.0000"}}"#;
        let mut d = Deflater::new(6);
        let a = d.compress(text).unwrap();
        let b = d.compress(text).unwrap();
        assert_eq!(a, b, "no context kept: the same message compresses the same every time");
        assert!(a.len() < text.len() * 3 / 4, "{} of {}", a.len(), text.len());
        let mut inf = Inflater::default();
        let mut out = Vec::new();
        for _ in 0..2 {
            inf.inflate(&a, 4096, &mut out).unwrap();
            assert_eq!(out, text);
        }
        // A message that does not shrink stays plain.
        assert_eq!(d.compress(b"{}"), None);
    }

    #[test]
    fn inflates_what_other_deflaters_send() {
        // Python: zlib.compressobj(6, zlib.DEFLATED, -15), compress(b"hello hello hello
        // hello") + flush(Z_SYNC_FLUSH), the last four bytes left off (what Python
        // `websockets` and browsers send).
        let from_zlib = [0xca, 0x48, 0xcd, 0xc9, 0xc9, 0x57, 0xc8, 0x40, 0x27, 0x01, 0x00];
        let mut out = Vec::new();
        Inflater::default().inflate(&from_zlib, 4096, &mut out).unwrap();
        assert_eq!(out, b"hello hello hello hello");
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let bomb = deflated(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 2_000, "a MiB of one byte is small: {}", bomb.len());
        let mut inf = Inflater::default();
        let mut out = Vec::new();
        assert_eq!(inf.inflate(&bomb, 4096, &mut out), Err(InflateError::TooLarge));
        assert!(out.capacity() <= 4097, "never held more than the limit: {}", out.capacity());
        assert_eq!(inf.inflate(&[0xff, 0xff, 0xff, 0x00, 0x13], 4096, &mut out), Err(InflateError::Corrupt));
        // Exactly at the limit is fine, and the inflater is usable after a refusal.
        let exact = deflated(&vec![b'b'; 4096]);
        inf.inflate(&exact, 4096, &mut out).unwrap();
        assert_eq!(out.len(), 4096);
    }
}

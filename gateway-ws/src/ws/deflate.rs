//! permessage-deflate (RFC 7692): reading a client's offers and choosing the answer.
//!
//! The gateway compresses a channel message once and sends the same bytes to every
//! connection that negotiated the extension, which is only sound when no side keeps a
//! compression context between messages: the answer is always
//! `server_no_context_takeover; client_no_context_takeover`, with the server's window at
//! its full 15 bits (so an offer that limits the server's window below 15 is declined
//! and the next offer tried). Declining every offer is not an error: the connection goes
//! on uncompressed.

/// What the gateway answers when it accepts an offer.
pub const SHARED_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to the offers in `headers` (the values of every `Sec-WebSocket-Extensions`
/// line, in order): the first acceptable `permessage-deflate` offer, or `None`.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    headers
        .into_iter()
        .flat_map(split_outside_quotes)
        .find(|offer| acceptable(offer))
        .map(|_| SHARED_RESPONSE)
}

/// Safari 15.0–15.3 (macOS and iOS) ignore `client_no_context_takeover` and compress
/// with a context the server does not keep: the gateway does not negotiate with them
/// (uWebSockets makes the same exception, uNetworking/uWebSockets#1347).
pub fn broken_client(user_agent: &str) -> bool {
    const VERSION: &str = " Version/15.";
    let Some(at) = user_agent.find(VERSION) else { return false };
    let rest = &user_agent[at + VERSION.len()..];
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(minor) = minor.parse::<u32>() else { return false };
    minor <= 3 && rest.contains(" Safari/")
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

/// Whether one offer (`permessage-deflate; param[=value]…`) is one the gateway can take.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(unquote(v.trim()))),
            None => (param.to_ascii_lowercase(), None),
        };
        // A parameter given twice makes the offer invalid (RFC 7692 §7).
        if seen.contains(&name) {
            return false;
        }
        let ok = match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // We compress with a 15-bit window: only an offer that allows it.
            "server_max_window_bits" => value.and_then(window_bits) == Some(15),
            // The client's window is the client's business: our inflater takes any.
            "client_max_window_bits" => value.is_none_or(|v| window_bits(v).is_some()),
            _ => false,
        };
        if !ok {
            return false;
        }
        seen.push(name);
    }
    true
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
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let start_in = self.c.total_in();
        loop {
            let taken = usize::try_from(self.c.total_in() - start_in).ok()?;
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let status = self.c.compress_vec(&data[taken..], &mut out, flate2::FlushCompress::Sync).ok()?;
            let taken = usize::try_from(self.c.total_in() - start_in).ok()?;
            // Done when all of it went in and the flush fit (room was left over).
            if taken == data.len() && out.len() < out.capacity() && status == flate2::Status::Ok {
                break;
            }
            if out.len() > data.len() + 64 {
                return None;
            }
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < data.len()).then_some(out)
    }
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
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self { d: flate2::Decompress::new(false) }
    }
}

impl Inflater {
    /// Inflates `payload` (a message's data without the tail) into `out`, at most `max`
    /// bytes.
    pub fn inflate(&mut self, payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        self.d.reset(false);
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

    #[test]
    fn browsers_and_python_websockets_get_the_shared_answer() {
        // What Chromium and Python `websockets` offer by default.
        assert_eq!(negotiate(["permessage-deflate; client_max_window_bits"]), Some(SHARED_RESPONSE));
        // Firefox and Safari offer the same or less.
        assert_eq!(negotiate(["permessage-deflate"]), Some(SHARED_RESPONSE));
        assert_eq!(
            negotiate(["permessage-deflate; server_no_context_takeover; client_no_context_takeover"]),
            Some(SHARED_RESPONSE)
        );
        assert_eq!(negotiate(["PerMessage-Deflate; Client_Max_Window_Bits=\"10\""]), Some(SHARED_RESPONSE));
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
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert!(!broken_client(chrome));
        assert!(!broken_client("Python/3.11 websockets/17.4"));
        assert!(!broken_client(""));
    }

    #[test]
    fn offers_we_cannot_take_are_declined_and_the_next_one_tried() {
        // The server's window limited below ours: declined, then the plain offer taken.
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=10, permessage-deflate"]),
            Some(SHARED_RESPONSE)
        );
        // The same across two header lines.
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=10", "permessage-deflate"]),
            Some(SHARED_RESPONSE)
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
            assert_eq!(negotiate([bad]), None, "{bad:?}");
        }
        assert_eq!(negotiate(["permessage-deflate; server_max_window_bits=15"]), Some(SHARED_RESPONSE));
        assert_eq!(negotiate(Vec::<&str>::new()), None);
    }

    #[test]
    fn commas_inside_quotes_do_not_split_offers() {
        assert_eq!(split_outside_quotes(r#"a; x="1,2", b"#), [r#"a; x="1,2""#, "b"]);
        assert_eq!(negotiate([r#"foo; x="a,b", permessage-deflate"#]), Some(SHARED_RESPONSE));
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

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
}

//! The load client's side of each target's protocol: a minimal WebSocket client (the
//! test clients share two cores with the server, so they must cost as little as
//! possible: no JSON parsing, no per-message allocation beyond the read buffer), the
//! subscribe step of each target, and where the send timestamp sits in a message.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects and upgrades with `headers` (whole `Name: value\r\n` lines) added to the
/// request; returns the stream, any bytes read past the response, and the response head.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> std::io::Result<(TcpStream, BytesMut, String)> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    upgrade(s, addr, path, headers).await
}

/// A byte stream a client reads and writes (TCP, or TLS over it).
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// As [`ws_connect`], over TLS when `tls` is given (WSS).
pub async fn wss_connect(
    addr: SocketAddr,
    path: &str,
    headers: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> std::io::Result<(Box<dyn Io>, BytesMut, String)> {
    let Some(connector) = tls else {
        let (s, buf, head) = ws_connect(addr, path, headers).await?;
        return Ok((Box::new(s), buf, head));
    };
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let s = connector.connect(name, tcp).await?;
    let (s, buf, head) = upgrade(s, addr, path, headers).await?;
    Ok((Box::new(s), buf, head))
}

/// The upgrade request and response on a connected stream.
async fn upgrade<S: Io>(
    mut s: S,
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> std::io::Result<(S, BytesMut, String)> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: c2lnbmFsY2FzdGJlbmNoIQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let head = String::from_utf8_lossy(&buf[..end.min(200)]).into_owned();
                return Err(std::io::Error::other(format!("upgrade refused: {head}")));
            }
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.advance(end + 4);
            return Ok((s, buf, head));
        }
        if buf.len() > 16 * 1024 {
            return Err(std::io::Error::other("oversize upgrade response"));
        }
    }
}

/// A masked client frame (FIN set).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    gateway::ws::client_frame(true, opcode, payload, Some([0x5a, 0x3c, 0x96, 0xe1]))
}

/// Cuts the next server frame off `buf`: (opcode, payload range in `buf` after the
/// header). Returns the frame's total length so the caller can advance past it.
pub fn next_frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0f;
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    (buf.len() >= at + len).then_some((op, at, at + len))
}

/// The producer's send time (µs since the epoch) carried in a message as
/// `"sent_ts":<integer>`.
pub fn sent_us(payload: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"sent_ts\":";
    let at = payload.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let mut v: i64 = 0;
    let mut any = false;
    for &b in &payload[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v * 10 + i64::from(b - b'0');
        any = true;
    }
    any.then_some(v)
}

/// Wall-clock microseconds now.
pub fn now_us() -> i64 {
    engine::model::UnixNanos::now().as_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_timestamps() {
        assert_eq!(
            sent_us(br#"{"a":1,"sent_ts":1795416858123456,"analysis":null}"#),
            Some(1_795_416_858_123_456)
        );
        assert_eq!(sent_us(br#"{"sent_ts":null}"#), None);
        let f = [0x81, 0x03, b'a', b'b', b'c', 0x81];
        assert_eq!(next_frame(&f), Some((1, 2, 5)));
        assert_eq!(next_frame(&f[..4]), None);
        let big = [&[0x81u8, 126, 0x01, 0x00][..], &[b'x'; 256][..]].concat();
        assert_eq!(next_frame(&big), Some((1, 4, 260)));
    }
}

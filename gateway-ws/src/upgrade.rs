//! A connection's first request, read here before hyper sees the connection, so that a
//! WebSocket upgrade (`GET /ws`) skips hyper's connection machinery: the request head is
//! parsed once (httparse), the same checks as hyper's route run on it
//! ([`crate::http::accept_websocket`]), and the socket goes straight to a hub shard with
//! the 101 still unwritten. The shard writes the 101, WELCOME and the SUBSCRIBEDs of
//! `?subscribe=` in one `writev`: one segment for the client to read instead of two or
//! three, one task and one hand-over fewer for the server (docs/DECISIONS.md, 146).
//!
//! Every other request (and anything this reader cannot take whole: a head longer than
//! [`HEAD_LIMIT`], bytes that do not parse, a request with a body) goes to hyper with the
//! bytes already read put back in front of the stream ([`Prefixed`]); hyper's `/ws`
//! route stays for a WebSocket opened later on a keep-alive connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{Request, Response, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::conn::{HandshakeStream, Io};

/// Bytes of request head read before the connection is left to hyper (whose own limit is
/// higher): a WebSocket upgrade with its token fits in well under this.
pub const HEAD_LIMIT: usize = 16 * 1024;

/// Headers parsed at most; a request with more is left to hyper.
const MAX_HEADERS: usize = 64;

/// What came of reading a connection's first request head.
#[derive(Debug)]
pub enum Head {
    /// A whole head with no body (`Content-Length` 0 or absent, no
    /// `Transfer-Encoding`): the request, every byte read (the head and what came after
    /// it), and the head's length.
    Request(Box<Request<()>>, BytesMut, usize),
    /// Anything else, for hyper: the bytes read so far, none of them consumed.
    Hyper(Bytes),
    /// The client closed (or the socket failed) before sending a byte.
    Gone,
}

/// Reads until a request head is whole, [`HEAD_LIMIT`] bytes have come, or the
/// client closes; `buf` holds what was read before. The caller bounds it in time.
pub async fn read_head<I: AsyncRead + Unpin>(io: &mut I, mut buf: BytesMut) -> Head {
    loop {
        if !buf.is_empty() {
            match parse(&buf) {
                Parsed::Request(req, len) => return Head::Request(req, buf, len),
                Parsed::Partial if buf.len() < HEAD_LIMIT => {}
                Parsed::Partial | Parsed::Other => return Head::Hyper(buf.freeze()),
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(2048));
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) if buf.is_empty() => return Head::Gone,
            Ok(0) | Err(_) => return Head::Hyper(buf.freeze()),
            Ok(_) => {}
        }
    }
}

/// A request head parsed from the start of a buffer.
pub(crate) enum Parsed {
    Request(Box<Request<()>>, usize),
    Partial,
    /// Not a head this reader takes (malformed, too many headers, a body, HTTP/1.0).
    Other,
}

pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(1)) = (r.method, r.path, r.version) else {
        return Parsed::Other;
    };
    let mut builder = Request::builder().method(method).uri(path).version(Version::HTTP_11);
    for h in r.headers.iter() {
        let body = h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0");
        if body {
            return Parsed::Other;
        }
        builder = builder.header(h.name, h.value);
    }
    match builder.body(()) {
        Ok(req) => Parsed::Request(Box::new(req), len),
        Err(_) => Parsed::Other,
    }
}

/// Writes `response` (a refused upgrade) whole, then closes: a client refused at the
/// upgrade opens a new connection to try again.
pub async fn refuse<I: AsyncWrite + Unpin>(io: &mut I, response: Response<crate::http::Body>) {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(never) => match never {},
    };
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        header(&mut out, name.as_str(), value.as_bytes());
    }
    header(&mut out, "content-length", itoa::Buffer::new().format(body.len()).as_bytes());
    header(&mut out, "connection", b"close");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    let _ = io.write_all(&out).await;
    let _ = io.shutdown().await;
}

/// Appends `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A stream that yields `prefix` before what is still to be read from `io`: the bytes
/// [`read_head`] took, put back for hyper.
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }

    /// The stream, and what of the prefix nobody read.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client stream a hub shard can take over after the upgrade.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket (and TLS state) for a shard to own; `input` is what the client sent
    /// after its request and gets back whatever plaintext TLS had opened beyond it.
    fn into_shard(self, input: BytesMut) -> std::io::Result<(Io, BytesMut)>;
}

fn to_mio(s: tokio::net::TcpStream) -> std::io::Result<mio::net::TcpStream> {
    s.into_std().map(mio::net::TcpStream::from_std)
}

impl Socket for tokio::net::TcpStream {
    fn into_shard(self, input: BytesMut) -> std::io::Result<(Io, BytesMut)> {
        Ok((Io::plain(to_mio(self)?), input))
    }
}

impl Socket for tokio_rustls::server::TlsStream<HandshakeStream> {
    fn into_shard(self, mut input: BytesMut) -> std::io::Result<(Io, BytesMut)> {
        let (stream, tls) = self.into_inner();
        let (sock, partial) = stream.into_parts();
        let io = Io::tls(to_mio(sock)?, tls, partial, &mut input)?;
        Ok((io, input))
    }
}

/// In-memory streams (the upgrade fuzz target): nothing a shard can poll.
impl Socket for tokio::io::DuplexStream {
    fn into_shard(self, _: BytesMut) -> std::io::Result<(Io, BytesMut)> {
        Err(std::io::Error::other("an in-memory stream has no socket for a shard"))
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455, 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455, section 1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_head_is_taken_whole_with_the_bytes_behind_it_and_anything_else_is_left_to_hyper() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let head = |bytes: &'static [u8]| rt.block_on(read_head(&mut &bytes[..], BytesMut::new()));
        match head(
            b"GET /ws?subscribe=signals_free HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\x81\x80",
        ) {
            Head::Request(req, mut all, len) => {
                let rest = all.split_off(len);
                assert_eq!(req.uri().path(), "/ws");
                assert_eq!(req.uri().query(), Some("subscribe=signals_free"));
                assert_eq!(req.headers()["upgrade"], "websocket");
                assert_eq!(&rest[..], b"\x81\x80", "a frame sent right behind the request is kept");
            }
            other => panic!("{other:?}"),
        }
        // A body, HTTP/1.0, garbage, a head cut short: hyper answers them, with every byte.
        for bytes in [
            &b"POST /v1/signals HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"[..],
            b"GET /ws HTTP/1.0\r\n\r\n",
            b"\x16\x03\x01 not http\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n",
        ] {
            match rt.block_on(read_head(&mut &bytes[..], BytesMut::new())) {
                Head::Hyper(b) => assert_eq!(&b[..], bytes),
                other => panic!("{other:?} for {bytes:?}"),
            }
        }
        assert!(matches!(head(b""), Head::Gone));
    }

    #[test]
    fn a_head_longer_than_the_limit_is_left_to_hyper_with_what_was_read() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut long = b"GET /ws HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(HEAD_LIMIT + 4096, b'a');
        match rt.block_on(read_head(&mut &long[..], BytesMut::new())) {
            Head::Hyper(b) => {
                assert!(b.len() >= HEAD_LIMIT && b.len() < long.len(), "{}", b.len());
                assert_eq!(&b[..], &long[..b.len()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_prefixed_stream_reads_its_prefix_first() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut s = Prefixed::new(Bytes::from_static(b"GET / "), &b"HTTP/1.1\r\n"[..]);
        let mut all = Vec::new();
        rt.block_on(s.read_to_end(&mut all)).expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
    }
}

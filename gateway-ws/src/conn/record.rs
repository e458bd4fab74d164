//! TLS 1.3 application data, sealed and opened by the shard that owns the socket.
//!
//! rustls does the handshake, and the HTTP upgrade runs over it as over any TLS
//! stream. When the shard takes the connection, the traffic keys are taken out of
//! rustls (`dangerous_extract_secrets`, the kTLS hand-off) and the connection's records
//! are sealed straight into one buffer per shard thread and opened from another. What a
//! connection keeps between events is its two keys and their sequence numbers; it
//! holds bytes only while a record is half-read or half-written. rustls's buffered
//! connection kept a 4 KiB receive buffer per connection for good, beside its own state,
//! and one `Vec` per record sent: a WSS connection at rest cost 9.0 KiB against 1.4 KiB
//! for plain WS (docs/PERFORMANCE.md, "The wire II").
//!
//! What this layer does not do, and what happens instead:
//! - TLS 1.2 connections stay on rustls (`Io::Tls`); so does any connection whose
//!   keys cannot be taken.
//! - A client's KeyUpdate: without the traffic secret no next key can be derived, so
//!   the connection is closed with an error (clients reconnect and resume). Browsers
//!   and the common client libraries do not send one on their own.
//! - The server sends no KeyUpdate either: after [`RECORD_LIMIT`] records under one
//!   key (below AES-GCM's limit, RFC 8446 5.5) the connection is closed the same way.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A record's header: content type, legacy version (2), length (2).
const HEADER: usize = 5;
/// The AEAD tag every suite of TLS 1.3 appends.
const TAG: usize = 16;
/// Largest plaintext of one record (RFC 8446 5.1).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest body of an encrypted record: plaintext, content type, padding, tag (5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Records under one key, each way, before the connection is closed: under AES-GCM's
/// 2^24.5 (RFC 8446 5.5); the same for ChaCha20, whose limit is far higher.
pub(crate) const RECORD_LIMIT: u64 = 1 << 24;
/// Plaintext taken per `write`: the bound rustls's send buffer had (`TLS_BUFFER`).
const WRITE_TAKE: usize = 64 * 1024;
/// Ciphertext read from the socket per `read`.
const READ_CHUNK: usize = 16 * 1024;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;
/// Records in a row that carry no data (empty ones, warning alerts) before the
/// connection is closed: without a bound a client could keep a shard opening records
/// that give it nothing to do. rustls allows 32 empty fragments and 4 warning alerts.
const EMPTY_RECORDS: u32 = 32;
const WARNING_ALERTS: u32 = 4;

thread_local! {
    /// Where a shard thread seals a connection's records before the `write`, and reads
    /// its ciphertext before opening it: one buffer per thread, not per connection.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn bad(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// One direction's key, static IV and record sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// The tests seal as the client with a copy of the receive key.
    #[cfg(test)]
    raw: Vec<u8>,
}

impl Keys {
    fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Option<Self> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return None,
        };
        Some(Self {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).ok()?),
            iv: iv.as_ref().try_into().ok()?,
            seq,
            #[cfg(test)]
            raw: key.as_ref().to_vec(),
        })
    }

    /// The next record's nonce: the IV with the sequence number XORed into its last
    /// eight bytes (RFC 8446 5.3).
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        if self.seq >= RECORD_LIMIT {
            return Err(bad("TLS record limit of this connection's key reached; reconnect"));
        }
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Seals the record whose header starts at `out[start]` and whose plaintext is the
    /// rest of `out`: appends the content type and the tag, fills in the length.
    fn seal(&mut self, out: &mut Vec<u8>, start: usize, content_type: u8) -> io::Result<()> {
        out.push(content_type);
        let body = out.len() - start - HEADER + TAG;
        let len = u16::try_from(body).map_err(|_| bad("TLS record too long"))?;
        out[start + 3..start + HEADER].copy_from_slice(&len.to_be_bytes());
        let mut header = [0; HEADER];
        header.copy_from_slice(&out[start..start + HEADER]);
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER..])
            .map_err(|_| bad("TLS record could not be sealed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens the whole record `record` (header included) in place: its content type and
    /// where its plaintext lies in `record`.
    fn open(&mut self, record: &mut [u8]) -> Result<(u8, std::ops::Range<usize>), &'static str> {
        let mut header = [0; HEADER];
        header.copy_from_slice(&record[..HEADER]);
        let nonce =
            self.next_nonce().map_err(|_| "TLS record limit of this connection's key reached; reconnect")?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut record[HEADER..])
            .map_err(|_| "TLS record failed authentication (bad_record_mac)")?;
        if plain.len() > MAX_PLAINTEXT + 1 {
            return Err("TLS record plaintext over 2^14 bytes (record_overflow)");
        }
        // The content type is the last byte that is not zero; zeros after it pad (5.4).
        let end = plain.iter().rposition(|&b| b != 0).ok_or("TLS record without a content type")?;
        Ok((plain[end], HEADER..HEADER + end))
    }
}

/// A socket whose sending side can be closed on its own (FIN).
pub trait HalfClose {
    fn half_close(&self) -> io::Result<()>;
}

impl HalfClose for mio::net::TcpStream {
    fn half_close(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Appends one record header (length filled in by [`Keys::seal`]). Every sealed record
/// says application data outside; its real type is sealed inside (RFC 8446 5.2).
fn open_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[APPLICATION_DATA, 3, 3, 0, 0]);
    start
}

/// A TLS 1.3 connection after the hand-off: its socket, keys, and the bytes of records
/// not whole yet.
pub struct Records<S = mio::net::TcpStream> {
    sock: S,
    tx: Keys,
    rx: Keys,
    /// Ciphertext of a record not yet whole; at most one record. Empty (no allocation)
    /// between records.
    partial: Vec<u8>,
    /// Plaintext opened that the reader's buffer had no room for.
    plain: Vec<u8>,
    /// Sealed records the socket has not taken yet: at most one `write`'s worth.
    unsent: Vec<u8>,
    /// The client sent close_notify: nothing more is read.
    closed: bool,
    /// What ended reading after the plaintext before it was handed out.
    failed: Option<&'static str>,
    /// Records in a row with no data; warning alerts so far.
    empty: u32,
    alerts: u32,
    /// close_notify queued; FIN goes out once it has.
    closing: bool,
}

impl<S> std::fmt::Debug for Records<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .field("partial", &self.partial.len())
            .field("unsent", &self.unsent.len())
            .finish_non_exhaustive()
    }
}

impl<S: Read + Write + HalfClose> Records<S> {
    /// Takes over a TLS 1.3 connection whose handshake is done: `partial` is ciphertext
    /// already read from `sock` that does not make a whole record yet. `None` when the
    /// connection's suite is not one this layer seals.
    pub fn new(sock: S, secrets: rustls::ExtractedSecrets, partial: Vec<u8>) -> Option<Self> {
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        Some(Self {
            sock,
            tx: Keys::new(*tx_seq, tx)?,
            rx: Keys::new(*rx_seq, rx)?,
            partial,
            plain: Vec::new(),
            unsent: Vec::new(),
            closed: false,
            failed: None,
            empty: 0,
            alerts: 0,
            closing: false,
        })
    }

    /// The client's close_notify came before the hand-off: nothing more is read (what
    /// follows it is ignored, RFC 8446 6.1).
    pub fn peer_closed(mut self) -> Self {
        self.closed = true;
        self.partial = Vec::new();
        self
    }

    pub fn socket(&mut self) -> &mut S {
        &mut self.sock
    }

    /// Reads some plaintext into `buf`: `Ok(0)` at the end of the stream (close_notify
    /// or FIN), `Err(WouldBlock)` when nothing more is available now.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(buf.len());
                buf[..n].copy_from_slice(&self.plain[..n]);
                self.plain.drain(..n);
                if self.plain.is_empty() {
                    self.plain = Vec::new();
                }
                return Ok(n);
            }
            if let Some(why) = self.failed {
                return Err(bad(why));
            }
            if self.closed {
                return Ok(0);
            }
            match SCRATCH.with_borrow_mut(|scratch| self.read_records(scratch, buf))? {
                None => return Ok(0),
                Some(0) => {} // only part of a record so far, or an ignored alert: read on
                Some(n) => return Ok(n),
            }
        }
    }

    /// One socket read, and the whole records it completes opened into `buf` (the rest
    /// into `self.plain`). `None` at the end of the stream: a FIN without close_notify
    /// ends it too (as WebSocket's own close handshake is what tells a clean end). A bad
    /// record after good ones fails the next call, once their plaintext is taken.
    fn read_records(&mut self, scratch: &mut Vec<u8>, buf: &mut [u8]) -> io::Result<Option<usize>> {
        scratch.clear();
        scratch.extend_from_slice(&self.partial);
        let have = scratch.len();
        scratch.resize(have + READ_CHUNK, 0);
        let n = self.sock.read(&mut scratch[have..])?;
        if n == 0 {
            if have > 0 {
                return Err(bad("connection closed inside a TLS record"));
            }
            return Ok(None);
        }
        scratch.truncate(have + n);
        let (mut at, mut out) = (0, 0);
        while scratch.len() - at >= HEADER {
            match self.open_one(&mut scratch[at..], buf, &mut out) {
                Ok(Some(len)) => at += len,
                Ok(None) => break,
                Err(why) if out == 0 && self.plain.is_empty() => return Err(bad(why)),
                Err(why) => {
                    self.failed = Some(why);
                    at = scratch.len();
                }
            }
        }
        if at >= scratch.len() {
            self.partial = Vec::new();
        } else {
            self.partial.clear();
            self.partial.extend_from_slice(&scratch[at..]);
        }
        Ok(Some(out))
    }

    /// Opens the record at the start of `bytes` if it is whole: its length, or `None`
    /// when more bytes are needed. Its data goes to `buf[*out..]`, the rest to
    /// `self.plain`.
    fn open_one(
        &mut self,
        bytes: &mut [u8],
        buf: &mut [u8],
        out: &mut usize,
    ) -> Result<Option<usize>, &'static str> {
        let h = &bytes[..HEADER];
        // After the handshake every record is sealed and says application data (5.2).
        if h[0] != APPLICATION_DATA || h[1] != 3 {
            return Err("unexpected TLS record type after the handshake");
        }
        let body = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if !(TAG + 1..=MAX_CIPHERTEXT).contains(&body) {
            return Err("TLS record length out of bounds (record_overflow)");
        }
        if bytes.len() < HEADER + body {
            return Ok(None);
        }
        let record = &mut bytes[..HEADER + body];
        let (content_type, range) = self.rx.open(record)?;
        let plain = &record[range];
        match content_type {
            APPLICATION_DATA if plain.is_empty() => {
                self.empty += 1;
                if self.empty > EMPTY_RECORDS {
                    return Err("too many empty TLS records in a row");
                }
            }
            APPLICATION_DATA => {
                self.empty = 0;
                let k = plain.len().min(buf.len() - *out);
                buf[*out..*out + k].copy_from_slice(&plain[..k]);
                self.plain.extend_from_slice(&plain[k..]);
                *out += k;
            }
            ALERT => match plain {
                // "Any data received after a closure alert has been received MUST be
                // ignored" (6.1).
                [_, CLOSE_NOTIFY] => {
                    self.closed = true;
                    return Ok(Some(bytes.len()));
                }
                [_, USER_CANCELED] => {
                    self.alerts += 1;
                    if self.alerts > WARNING_ALERTS {
                        return Err("too many TLS warning alerts");
                    }
                }
                _ => return Err("TLS alert from the client"),
            },
            HANDSHAKE => return Err("TLS handshake message after the handshake (key update): reconnect"),
            _ => return Err("unexpected TLS content type"),
        }
        Ok(Some(HEADER + body))
    }

    /// Seals up to 64 KiB of `bufs` into records and writes them; returns the plaintext
    /// bytes taken. What the socket does not take waits in `unsent`, and the next call
    /// takes nothing until it is out (`WouldBlock`).
    pub fn write(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush()?;
        SCRATCH.with_borrow_mut(|out| {
            out.clear();
            let taken = self.seal_from(bufs, out)?;
            let sent = match self.sock.write(out) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
                Err(e) => return Err(e),
            };
            self.unsent.extend_from_slice(&out[sent..]);
            Ok(taken)
        })
    }

    /// Seals the slices, up to [`WRITE_TAKE`] bytes, into records of at most 16 KiB.
    fn seal_from(&mut self, bufs: &[IoSlice<'_>], out: &mut Vec<u8>) -> io::Result<usize> {
        let mut slices = bufs.iter().map(|b| &b[..]);
        let mut current: &[u8] = &[];
        let mut taken = 0;
        loop {
            let start = open_record(out);
            let mut len = 0;
            while len < MAX_PLAINTEXT && taken + len < WRITE_TAKE {
                if current.is_empty() {
                    match slices.next() {
                        Some(b) => current = b,
                        None => break,
                    }
                    continue;
                }
                let k = current.len().min(MAX_PLAINTEXT - len).min(WRITE_TAKE - taken - len);
                out.extend_from_slice(&current[..k]);
                current = &current[k..];
                len += k;
            }
            if len == 0 {
                out.truncate(start);
                return Ok(taken);
            }
            self.tx.seal(out, start, APPLICATION_DATA)?;
            taken += len;
        }
    }

    /// Bytes sealed but not yet on the socket.
    pub fn has_pending(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Pushes the sealed records the socket did not take.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.unsent.is_empty() {
            match self.sock.write(&self.unsent) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.unsent = Vec::new();
        if self.closing {
            let _ = self.sock.half_close();
        }
        Ok(())
    }

    /// No more writes: close_notify, then FIN once every record queued before it is
    /// out (now, or from the `flush` that empties the queue). Once only.
    pub fn close(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        let start = open_record(&mut self.unsent);
        self.unsent.extend_from_slice(&[1, CLOSE_NOTIFY]);
        if self.tx.seal(&mut self.unsent, start, ALERT).is_err() {
            self.unsent.truncate(start);
        }
        let _ = self.flush();
    }
}

/// The TCP stream under tokio-rustls while the handshake and the HTTP upgrade run: it
/// keeps a copy of the bytes of the record it is in the middle of, so that when the
/// keys are taken out of rustls, ciphertext rustls has read but could not open yet (a
/// client that sent a frame right behind its request) is not lost.
#[derive(Debug)]
pub struct HandshakeStream {
    sock: tokio::net::TcpStream,
    framing: Framing,
}

impl HandshakeStream {
    pub fn new(sock: tokio::net::TcpStream) -> Self {
        Self { sock, framing: Framing::default() }
    }

    /// The stream, and the bytes read of a record not yet whole.
    pub fn into_parts(self) -> (tokio::net::TcpStream, Vec<u8>) {
        (self.sock, self.framing.partial)
    }
}

/// Follows the record framing of a byte stream.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes since the last record boundary (at most one record's).
    partial: Vec<u8>,
}

impl Framing {
    fn note(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            // A record that starts and ends within this read is only skipped over.
            if self.partial.is_empty() && data.len() >= HEADER {
                let whole = HEADER + usize::from(u16::from_be_bytes([data[3], data[4]]));
                if data.len() >= whole {
                    data = &data[whole..];
                    continue;
                }
            }
            if self.partial.len() < HEADER {
                let k = (HEADER - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..k]);
                data = &data[k..];
                if self.partial.len() < HEADER {
                    return;
                }
            }
            let body = usize::from(u16::from_be_bytes([self.partial[3], self.partial[4]]));
            let k = (HEADER + body - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.partial.len() == HEADER + body {
                self.partial = Vec::new(); // nothing held between records
            }
        }
    }
}

impl AsyncRead for HandshakeStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.sock).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.framing.note(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for HandshakeStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sock).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sock).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::*;

    /// An in-memory socket: reads what the test put in `incoming`, at most `max_read`
    /// bytes at a time, then `WouldBlock`; writes take at most `write_room` bytes.
    #[derive(Default)]
    struct Pipe {
        incoming: VecDeque<u8>,
        max_read: usize,
        eof: bool,
        outgoing: Vec<u8>,
        write_room: Option<usize>,
        fin: std::cell::Cell<bool>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.incoming.is_empty() {
                return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let n = buf.len().min(self.max_read).min(self.incoming.len());
            for (b, v) in buf.iter_mut().zip(self.incoming.drain(..n)) {
                *b = v;
            }
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = match &mut self.write_room {
                None => buf.len(),
                Some(0) => return Err(io::ErrorKind::WouldBlock.into()),
                Some(room) => {
                    let n = buf.len().min(*room);
                    *room -= n;
                    n
                }
            };
            self.outgoing.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl HalfClose for Pipe {
        fn half_close(&self) -> io::Result<()> {
            self.fin.set(true);
            Ok(())
        }
    }

    /// A rustls client and a server in memory, handshake done, the server's keys taken
    /// into [`Records`] over a [`Pipe`].
    fn pair(suite: Option<rustls::SupportedCipherSuite>) -> (rustls::ClientConnection, Records<Pipe>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites = vec![suite];
        }
        let provider = Arc::new(provider);
        let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap();
        server_config.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        while client.is_handshaking() || server.is_handshaking() || server.wants_write() {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        let secrets = server.dangerous_extract_secrets().unwrap();
        let pipe = Pipe { max_read: usize::MAX, ..Pipe::default() };
        (client, Records::new(pipe, secrets, Vec::new()).unwrap())
    }

    /// What the client sends, as ciphertext.
    fn client_sends(client: &mut rustls::ClientConnection, data: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in data.chunks(32 * 1024) {
            client.writer().write_all(chunk).unwrap();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
        }
        wire
    }

    /// Everything the server wrote, opened by the client.
    fn client_receives(client: &mut rustls::ClientConnection, server: &mut Records<Pipe>) -> Vec<u8> {
        let wire = std::mem::take(&mut server.sock.outgoing);
        let mut rd = &wire[..];
        let mut out = Vec::new();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut out);
        }
        out
    }

    /// Reads until `WouldBlock` or the end, as the shard does.
    fn server_reads(server: &mut Records<Pipe>) -> io::Result<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut buf = [0; 1000];
        loop {
            match server.read(&mut buf) {
                Ok(0) => return Ok((out, true)),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((out, false)),
                Err(e) => return Err(e),
            }
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn every_suite_round_trips_with_rustls_both_ways() {
        for suite in [
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let (mut client, mut server) = pair(Some(suite));
            for (i, size) in [1, 700, 16 * 1024, 16 * 1024 + 1, 70_000].into_iter().enumerate() {
                let sent = bytes(size, i as u8);
                let wire = client_sends(&mut client, &sent);
                server.sock.incoming.extend(&wire);
                assert_eq!(server_reads(&mut server).unwrap(), (sent.clone(), false), "{suite:?} {size}");
                // Server to client, the way the shard writes: several slices at once.
                let (a, b) = sent.split_at(size / 2);
                let mut taken = 0;
                while taken < size {
                    let rest: Vec<&[u8]> = [a, b]
                        .iter()
                        .scan(0, |at, s| {
                            let from = taken.saturating_sub(*at).min(s.len());
                            *at += s.len();
                            Some(&s[from..])
                        })
                        .collect();
                    let slices: Vec<IoSlice<'_>> = rest.iter().map(|s| IoSlice::new(s)).collect();
                    taken += server.write(&slices).unwrap();
                }
                assert!(!server.has_pending());
                assert_eq!(client_receives(&mut client, &mut server), sent, "{suite:?} {size}");
            }
        }
    }

    #[test]
    fn records_arriving_a_byte_at_a_time_or_half_read_before_the_hand_off_are_whole() {
        let (mut client, mut server) = pair(None);
        let sent = bytes(5_000, 7);
        let wire = [client_sends(&mut client, &sent[..10]), client_sends(&mut client, &sent[10..])].concat();
        // The first 8 bytes were read before the hand-off (a frame behind the request).
        server.partial = wire[..8].to_vec();
        server.sock.incoming.extend(&wire[8..]);
        server.sock.max_read = 1;
        let mut got = Vec::new();
        let mut buf = [0; 64];
        while got.len() < sent.len() {
            let n = server.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, sent);
        assert!(server.partial.capacity() == 0 && server.plain.capacity() == 0, "bytes kept at rest");
    }

    #[test]
    fn a_socket_that_takes_part_of_a_write_gets_the_rest_in_order_and_nothing_more_meanwhile() {
        let (mut client, mut server) = pair(None);
        server.sock.write_room = Some(100);
        let first = bytes(3_000, 1);
        assert_eq!(server.write(&[IoSlice::new(&first)]).unwrap(), 3_000);
        assert!(server.has_pending());
        let second = bytes(500, 2);
        assert_eq!(server.write(&[IoSlice::new(&second)]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        server.sock.write_room = None;
        assert_eq!(server.write(&[IoSlice::new(&second)]).unwrap(), 500);
        assert!(!server.has_pending() && server.unsent.capacity() == 0);
        assert_eq!(client_receives(&mut client, &mut server), [first, second].concat());
    }

    #[test]
    fn close_notify_ends_the_stream_both_ways() {
        let (mut client, mut server) = pair(None);
        let mut wire = client_sends(&mut client, b"last words");
        client.send_close_notify();
        client.write_tls(&mut wire).unwrap();
        wire.extend_from_slice(b"ignored after close_notify");
        server.sock.incoming.extend(&wire);
        assert_eq!(server_reads(&mut server).unwrap(), (b"last words".to_vec(), true));
        server.close();
        assert!(server.sock.fin.get());
        client_receives(&mut client, &mut server);
        assert!(client.process_new_packets().unwrap().peer_has_closed());
    }

    #[test]
    fn a_tampered_record_a_key_update_or_a_cut_record_is_an_error_not_a_panic() {
        let (mut client, mut server) = pair(None);
        let mut wire = client_sends(&mut client, b"hello");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        server.sock.incoming.extend(&wire);
        assert_eq!(server_reads(&mut server).unwrap_err().kind(), io::ErrorKind::InvalidData);

        let (mut client, mut server) = pair(None);
        client.refresh_traffic_keys().unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        server.sock.incoming.extend(&wire);
        assert!(server_reads(&mut server).unwrap_err().to_string().contains("key update"));

        let (mut client, mut server) = pair(None);
        let wire = client_sends(&mut client, b"hello");
        server.sock.incoming.extend(&wire[..wire.len() - 3]);
        server.sock.eof = true;
        assert!(server_reads(&mut server).is_err());

        // A header claiming more than a record may hold.
        let (_client, mut server) = pair(None);
        server.sock.incoming.extend([APPLICATION_DATA, 3, 3, 0xff, 0xff]);
        assert!(server_reads(&mut server).unwrap_err().to_string().contains("record_overflow"));
    }

    #[test]
    fn at_the_record_limit_the_connection_is_closed_instead_of_reusing_a_nonce() {
        let (_client, mut server) = pair(None);
        server.tx.seq = RECORD_LIMIT - 1;
        assert_eq!(server.write(&[IoSlice::new(b"one more")]).unwrap(), 8);
        let sent = server.sock.outgoing.len();
        assert!(
            server.write(&[IoSlice::new(b"and another")]).unwrap_err().to_string().contains("record limit")
        );
        assert_eq!(server.sock.outgoing.len(), sent, "nothing sealed past the limit");
    }

    /// Seals `plain` with `content_type` as the client would (for what rustls's client
    /// API does not send: empty records, warning alerts).
    fn client_record(server: &Records<Pipe>, seq: u64, content_type: u8, plain: &[u8]) -> Vec<u8> {
        // The client's keys are the server's receive keys.
        let mut keys = Keys { key: clone_key(&server.rx), iv: server.rx.iv, seq, raw: Vec::new() };
        let mut out = Vec::new();
        let start = open_record(&mut out);
        out.extend_from_slice(plain);
        keys.seal(&mut out, start, content_type).unwrap();
        out
    }

    /// A pair on AES-256-GCM, the suite [`clone_key`] rebuilds.
    fn aes256_pair() -> (rustls::ClientConnection, Records<Pipe>) {
        pair(Some(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384))
    }

    fn clone_key(k: &Keys) -> LessSafeKey {
        // Only the tests need a second copy; rebuild it from the raw key they kept.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k.raw).unwrap())
    }

    #[test]
    fn empty_records_and_warning_alerts_are_bounded_and_data_before_a_bad_record_is_kept() {
        let (_client, mut server) = aes256_pair();
        let seq = server.rx.seq;
        let mut wire = Vec::new();
        for i in 0..EMPTY_RECORDS as u64 {
            wire.extend(client_record(&server, seq + i, APPLICATION_DATA, b""));
        }
        wire.extend(client_record(&server, seq + u64::from(EMPTY_RECORDS), APPLICATION_DATA, b"data"));
        server.sock.incoming.extend(&wire);
        assert_eq!(
            server_reads(&mut server).unwrap(),
            (b"data".to_vec(), false),
            "32 empty ones are let through"
        );
        let seq = server.rx.seq;
        let wire: Vec<u8> = (0..=u64::from(EMPTY_RECORDS))
            .flat_map(|i| client_record(&server, seq + i, APPLICATION_DATA, b""))
            .collect();
        server.sock.incoming.extend(&wire);
        assert!(server_reads(&mut server).unwrap_err().to_string().contains("empty TLS records"));

        let (_client, mut server) = aes256_pair();
        let seq = server.rx.seq;
        let wire: Vec<u8> = (0..=u64::from(WARNING_ALERTS))
            .flat_map(|i| client_record(&server, seq + i, ALERT, &[1, USER_CANCELED]))
            .collect();
        server.sock.incoming.extend(&wire);
        assert!(server_reads(&mut server).unwrap_err().to_string().contains("warning alerts"));

        // Good data, then a record that fails, in one read: the data is read first.
        let (_client, mut server) = aes256_pair();
        let seq = server.rx.seq;
        let mut wire = client_record(&server, seq, APPLICATION_DATA, b"last frames");
        wire.extend(client_record(&server, seq + 1, HANDSHAKE, &[24, 0, 0, 1, 0]));
        server.sock.incoming.extend(&wire);
        let mut buf = [0; 100];
        assert_eq!(server.read(&mut buf).unwrap(), 11);
        assert!(server.read(&mut buf).unwrap_err().to_string().contains("key update"));

        // An inner plaintext over 2^14 + 1 bytes is refused even though it authenticates.
        for (n, ok) in [(MAX_PLAINTEXT, true), (MAX_PLAINTEXT + 1, false)] {
            let (_client, mut server) = aes256_pair();
            let seq = server.rx.seq;
            server.sock.incoming.extend(client_record(&server, seq, APPLICATION_DATA, &vec![1; n]));
            match server_reads(&mut server) {
                Ok((data, _)) => assert!(ok && data.len() == n),
                Err(e) => assert!(!ok && e.to_string().contains("record_overflow"), "{e}"),
            }
        }
    }

    #[test]
    fn fin_waits_for_close_notify_and_the_records_before_it() {
        let (mut client, mut server) = pair(None);
        server.sock.write_room = Some(10);
        assert_eq!(server.write(&[IoSlice::new(&bytes(2_000, 3))]).unwrap(), 2_000);
        server.close();
        server.close(); // once only
        assert!(!server.sock.fin.get(), "FIN before the records queued ahead of it");
        server.sock.write_room = None;
        server.flush().unwrap();
        assert!(server.sock.fin.get());
        assert_eq!(client_receives(&mut client, &mut server), bytes(2_000, 3));
        assert!(client.process_new_packets().unwrap().peer_has_closed());
    }

    #[test]
    fn the_handshake_stream_keeps_exactly_the_unfinished_record() {
        let records: Vec<Vec<u8>> = [3usize, 0, 700, 16_400]
            .iter()
            .map(|&n| [&[23, 3, 3][..], &(n as u16).to_be_bytes(), &bytes(n, 0)].concat())
            .collect();
        let wire = records.concat();
        let ends: Vec<usize> = records
            .iter()
            .scan(0, |at, r| {
                *at += r.len();
                Some(*at)
            })
            .collect();
        for cut in [0, 2, 5, 8, 9, 700, wire.len() - 1, wire.len()] {
            for step in [1, 3, 4096] {
                let mut framing = Framing::default();
                for chunk in wire[..cut].chunks(step) {
                    framing.note(chunk);
                }
                let boundary = ends.iter().copied().rfind(|&b| b <= cut).unwrap_or(0);
                assert_eq!(framing.partial, wire[boundary..cut], "cut {cut} step {step}");
            }
        }
    }
}

//! A connection's socket, plain or TLS, driven without blocking by the shard that owns
//! it. Every call returns at once: `WouldBlock` means "wait for the next readiness
//! event", which the shard's poller (edge-triggered) delivers.
//!
//! TLS runs sans-IO: after the handshake (done by tokio-rustls before the HTTP upgrade)
//! a TLS 1.3 connection's records are sealed and opened by the shard itself with the
//! keys taken out of rustls (`super::record`); a TLS 1.2 one keeps its
//! `rustls::ServerConnection`, driven here by hand. Either way a WSS connection costs
//! the shard the same as a plain one plus the record encryption.

use std::io::{self, IoSlice, Read, Write};

use bytes::BytesMut;
use mio::net::TcpStream;

use super::record::Records;

/// Ciphertext rustls may hold for a socket that cannot take it yet. Past it, rustls
/// accepts no more plaintext and the frames wait in the outbox (which is bounded).
const TLS_BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    /// TLS 1.3, records sealed here.
    Records(Box<Records>),
    /// TLS 1.2, through rustls.
    Tls(Box<Tls>),
}

pub struct Tls {
    sock: TcpStream,
    conn: rustls::ServerConnection,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("sock", &self.sock).finish_non_exhaustive()
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Io {
    pub fn plain(sock: TcpStream) -> Self {
        Self::Plain(sock)
    }

    /// A TLS connection after its handshake and HTTP upgrade. `partial` is ciphertext
    /// read from `sock` that rustls could not open yet (not a whole record); plaintext
    /// rustls opened but nobody read is appended to `input`.
    pub fn tls(
        sock: TcpStream,
        mut conn: rustls::ServerConnection,
        partial: Vec<u8>,
        input: &mut BytesMut,
    ) -> io::Result<Self> {
        let mut chunk = [0; 4096];
        let mut peer_closed = false;
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => {
                    peer_closed = true; // close_notify came with the upgrade
                    break;
                }
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let takeable = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
            && !conn.wants_write()
            && conn.negotiated_cipher_suite().is_some_and(|s| {
                matches!(
                    s.suite(),
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                        | rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                )
            });
        if takeable {
            let secrets = conn.dangerous_extract_secrets().map_err(invalid)?;
            return Records::new(sock, secrets, partial)
                .map(|r| if peer_closed { r.peer_closed() } else { r })
                .map(|r| Self::Records(Box::new(r)))
                .ok_or_else(|| io::Error::other("TLS suite without a record layer here"));
        }
        // rustls still holds `partial` itself: it goes on reading from there.
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Ok(Self::Tls(Box::new(Tls { sock, conn })))
    }

    /// The socket, to register with the poller.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Records(r) => r.socket(),
            Self::Tls(t) => &mut t.sock,
        }
    }

    /// Reads some plaintext into `buf`: `Ok(0)` at the end of the stream,
    /// `Err(WouldBlock)` when nothing more is available now.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Records(r) => r.read(buf),
            Self::Tls(t) => loop {
                match t.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if t.conn.read_tls(&mut t.sock)? == 0 {
                    return Ok(0);
                }
                if let Err(e) = t.conn.process_new_packets() {
                    // Let the alert rustls queued go out if it can.
                    let _ = t.flush();
                    return Err(invalid(e));
                }
                // Handshake messages after the handshake (tickets, key updates).
                t.flush()?;
            },
        }
    }

    /// Writes from `bufs`; returns the plaintext bytes taken.
    pub fn write(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write_vectored(bufs),
            Self::Records(r) => r.write(bufs),
            Self::Tls(t) => {
                t.flush()?;
                let n = t.conn.writer().write_vectored(bufs)?;
                match t.flush() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if n == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }
            }
        }
    }

    /// Bytes accepted but not yet on the socket (TLS records).
    pub fn has_pending(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Records(r) => r.has_pending(),
            Self::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Pushes pending TLS records to the socket.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(_) => Ok(()),
            Self::Records(r) => r.flush(),
            Self::Tls(t) => t.flush(),
        }
    }

    /// No more writes: TLS close_notify, then FIN. Reading goes on (lingering).
    pub fn shutdown_write(&mut self) {
        match self {
            Self::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            // FIN follows close_notify once the records before it are out.
            Self::Records(r) => r.close(),
            Self::Tls(t) => {
                t.conn.send_close_notify();
                let _ = t.flush();
                let _ = t.sock.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

impl Tls {
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

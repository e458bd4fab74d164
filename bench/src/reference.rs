//! The raw pre-framed broadcast reference: the kernel's floor on this machine.
//!
//! Shard threads each own their sockets (non-blocking, no per-connection task); a
//! published line is framed once and handed to every shard; each shard sweeps its
//! sockets continuously, writing everything a socket lacks in one `writev`, and picks
//! up new frames every few dozen sockets instead of holding them for a full pass
//! (docs/PERFORMANCE.md, "The floor"). No auth, no tiers, no filtering: it is the
//! ceiling signalcast is measured against, not a product.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// How often (in sockets) the sweep looks for new frames.
const PICKUP_EVERY: usize = 32;

enum Cmd {
    Add(TcpStream),
    Frame(Arc<[u8]>),
}

struct Conn {
    stream: TcpStream,
    /// Index of the next frame this socket lacks, and how much of it was written.
    next: u64,
    off: usize,
}

/// Runs the reference until the process ends.
pub fn serve(ws: TcpListener, publish: TcpListener, shards: usize) -> std::io::Result<()> {
    let mut senders: Vec<Sender<Cmd>> = Vec::new();
    for i in 0..shards.max(1) {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        std::thread::Builder::new().name(format!("ref-shard-{i}")).spawn(move || shard(&rx))?;
    }
    let to_shards = senders.clone();
    std::thread::Builder::new().name("ref-publish".into()).spawn(move || {
        for conn in publish.incoming().flatten() {
            let to_shards = to_shards.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(conn).split(b'\n').map_while(Result::ok) {
                    let mut frame = Vec::with_capacity(line.len() + 10);
                    engine::channels::frame_header(&mut frame, 0x1, line.len());
                    frame.extend_from_slice(&line);
                    let frame: Arc<[u8]> = frame.into();
                    for s in &to_shards {
                        let _ = s.send(Cmd::Frame(Arc::clone(&frame)));
                    }
                }
            });
        }
    })?;
    let mut next = 0;
    for stream in ws.incoming().flatten() {
        let Ok(stream) = handshake(stream) else { continue };
        let _ = senders[next % senders.len()].send(Cmd::Add(stream));
        next += 1;
    }
    Ok(())
}

/// Answers the upgrade (blocking, bounded), then sends `subscribed`.
fn handshake(mut s: TcpStream) -> std::io::Result<TcpStream> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    let mut req = Vec::with_capacity(512);
    let mut byte = [0u8; 512];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut byte)?;
        if n == 0 || req.len() > 8192 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        req.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&req);
    let key = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v.trim())
        })
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64(&sha.digest().bytes());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    resp.extend_from_slice(&[0x81, 10]);
    resp.extend_from_slice(b"subscribed");
    s.write_all(&resp)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn shard(rx: &Receiver<Cmd>) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut frames: VecDeque<Arc<[u8]>> = VecDeque::new();
    // Index of frames[0].
    let mut base: u64 = 0;
    let take = |cmd: Cmd, conns: &mut Vec<Conn>, frames: &mut VecDeque<Arc<[u8]>>, base: u64| match cmd {
        Cmd::Add(stream) => conns.push(Conn { stream, next: base + frames.len() as u64, off: 0 }),
        Cmd::Frame(f) => frames.push_back(f),
    };
    loop {
        let mut progressed = false;
        let mut i = 0;
        while i < conns.len() {
            if i % PICKUP_EVERY == 0 {
                while let Ok(cmd) = rx.try_recv() {
                    take(cmd, &mut conns, &mut frames, base);
                }
            }
            let end = base + frames.len() as u64;
            let c = &mut conns[i];
            if c.next < end {
                let first = (c.next - base) as usize;
                let mut slices = [IoSlice::new(&[]); 64];
                let mut n = 0;
                for (k, f) in frames.range(first..).take(64).enumerate() {
                    slices[k] = IoSlice::new(if k == 0 { &f[c.off..] } else { f });
                    n += 1;
                }
                match c.stream.write_vectored(&slices[..n]) {
                    Ok(0) => {
                        conns.swap_remove(i);
                        continue;
                    }
                    Ok(mut written) => {
                        progressed = true;
                        while written > 0 {
                            let left = frames[(c.next - base) as usize].len() - c.off;
                            if written >= left {
                                written -= left;
                                c.next += 1;
                                c.off = 0;
                            } else {
                                c.off += written;
                                written = 0;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        conns.swap_remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        // Frames every socket has are dropped.
        let low = conns.iter().map(|c| c.next).min().unwrap_or(base + frames.len() as u64);
        while base < low && frames.pop_front().is_some() {
            base += 1;
        }
        if !progressed {
            let wait = if frames.is_empty() { Duration::from_millis(5) } else { Duration::from_micros(200) };
            match rx.recv_timeout(wait) {
                Ok(cmd) => take(cmd, &mut conns, &mut frames, base),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

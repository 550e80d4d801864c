//! Lets go of the reader side of a stream's connection at once.
//!
//! tiny_http reads each connection on a pool thread of its own, through a
//! duplicated descriptor. Once it has handed over a request it reads on,
//! for the connection's next request, until the kept-alive connection's
//! idle timeout (`listener::KEEP_ALIVE_IDLE`, 5 s; 2 s before it was made
//! longer than the read timeout). A stream's connection never
//! carries another request, yet its reader stays those seconds: a thread, a
//! descriptor, and tiny_http's reader-side blocks (a 1 KiB buffer, the
//! request's channels). In a burst of new streams that is 2 s worth of
//! readers at once (800 at 400 connections per second), and their blocks,
//! freed between the streams' long-lived ones, leave holes in the heap that
//! stay resident.
//!
//! tiny_http gives a handler no way to its socket, so this finds the socket
//! from outside, as the head guard does. The dispatcher notes the peer of
//! every stream it opens ([`FreshStreams::push`]); a thread, every
//! [`PASS_EVERY`], lists `/proc/self/fd` (highest numbers first: a new
//! connection's descriptors are usually the newest), asks `getpeername`
//! and `getsockname` of each descriptor until every noted peer is found,
//! and shuts that socket's read side down: what tiny_http's reader does
//! itself when its timeout comes. The reader then reads end-of-file at once
//! and leaves. The stream only writes, and is not affected. A peer not
//! found within [`GIVE_UP`] (its connection may be gone already) is left to
//! the read timeout.
//!
//! A pass costs one `getpeername` per descriptor it looks at, up to all of
//! them (~20,000 at 10,000 streams, a few milliseconds) when a noted
//! connection has closed; passes are only made while streams are being
//! opened, and the pause after a pass is at least [`CPU_SHARE`] times what
//! it took.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::head_guard::{normalize, open_descriptors, socket_endpoints};
use crate::periodic::Periodic;

/// How often the peers of new streams are looked for.
pub const PASS_EVERY: Duration = Duration::from_millis(250);

/// How long a noted peer is looked for: a peer not found by then has
/// likely closed its connection (a reader not let go leaves at the idle
/// timeout, `listener::KEEP_ALIVE_IDLE`).
pub const GIVE_UP: Duration = Duration::from_millis(1500);

/// A pass that took `t` is followed by a pause of at least `CPU_SHARE * t`.
pub const CPU_SHARE: u32 = 20;

/// Peers noted between two passes at most: more than the streams a server
/// can hold. Past it (the thread gone, say) peers are not noted, and their
/// readers leave at the read timeout, as they did before this module.
pub const MAX_FRESH: usize = 20_000;

/// The peers of the streams opened since the last pass, written by the
/// dispatcher.
#[derive(Debug, Default)]
pub struct FreshStreams {
    peers: Mutex<Vec<SocketAddr>>,
}

impl FreshStreams {
    /// Notes that a stream was opened for `peer` (unless [`MAX_FRESH`]
    /// peers wait already).
    pub fn push(&self, peer: SocketAddr) {
        let mut peers = self.lock();
        if peers.len() < MAX_FRESH {
            peers.push(normalize(peer));
        }
    }

    fn take(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SocketAddr>> {
        // A plain list, each change a single push or take: valid whatever a
        // panicking holder did.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The thread that makes the passes. Stops when dropped.
#[derive(Debug)]
pub struct ReaderRelease {
    _thread: Periodic,
}

impl ReaderRelease {
    /// Starts releasing the readers of the streams noted in `fresh`, whose
    /// connections are to local port `port`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(port: u16, fresh: Arc<FreshStreams>) -> io::Result<ReaderRelease> {
        let mut passes = Passes::new(port, fresh);
        let thread = Periodic::start("reader-release", PASS_EVERY, move || passes.run())?;
        Ok(ReaderRelease { _thread: thread })
    }
}

/// What the thread keeps from pass to pass.
#[derive(Debug)]
struct Passes {
    port: u16,
    fresh: Arc<FreshStreams>,
    /// Peers looked for, and since when.
    wanted: HashMap<SocketAddr, Instant>,
}

impl Passes {
    /// Passes that look for the streams noted in `fresh` (on local port
    /// `port`); [`Passes::run`] makes one.
    fn new(port: u16, fresh: Arc<FreshStreams>) -> Passes {
        Passes {
            port,
            fresh,
            wanted: HashMap::new(),
        }
    }

    /// One pass; returns the pause before the next. Shuts down the read
    /// side of the sockets of the peers found.
    fn run(&mut self) -> Duration {
        let started = Instant::now();
        for peer in self.fresh.take() {
            self.wanted.entry(peer).or_insert(started);
        }
        self.wanted
            .retain(|_, since| started.saturating_duration_since(*since) < GIVE_UP);
        if self.wanted.is_empty() {
            return PASS_EVERY;
        }
        self.release_found();
        PASS_EVERY.max(started.elapsed() * CPU_SHARE)
    }

    /// How many peers are still looked for.
    #[cfg(test)]
    fn wanted(&self) -> usize {
        self.wanted.len()
    }

    fn release_found(&mut self) {
        use nix::sys::socket::{shutdown, Shutdown};
        let mut fds = open_descriptors();
        fds.retain(|fd| *fd > 2);
        fds.sort_unstable_by(|a, b| b.cmp(a));
        for fd in fds {
            if self.wanted.is_empty() {
                return;
            }
            let Some((peer, local_port)) = socket_endpoints(fd) else {
                continue;
            };
            if local_port != self.port || !self.wanted.contains_key(&peer) {
                continue;
            }
            // The descriptor was just checked to be that connection's; one
            // shutdown acts on the socket, whichever of tiny_http's two
            // descriptors it goes through.
            match shutdown(fd, Shutdown::Read) {
                Ok(()) => {
                    self.wanted.remove(&peer);
                }
                Err(e) => log::debug!("releasing the reader of {peer}'s stream failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A connection read as tiny_http reads it: a thread blocked in `read`
    /// on a duplicate of the accepted socket, with no timeout.
    struct BlockedReader {
        client: TcpStream,
        server_side: TcpStream,
        read: std::sync::mpsc::Receiver<io::Result<usize>>,
    }

    fn blocked_reader(listener: &TcpListener) -> BlockedReader {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut reader = server_side.try_clone().unwrap();
        let (tx, read) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let _ = tx.send(reader.read(&mut buf));
        });
        BlockedReader {
            client,
            server_side,
            read,
        }
    }

    #[test]
    fn the_reader_of_a_noted_peer_reads_end_of_file_and_others_keep_waiting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = blocked_reader(&listener);
        let other = blocked_reader(&listener);
        let fresh = Arc::new(FreshStreams::default());
        let mut passes = Passes::new(port, Arc::clone(&fresh));
        fresh.push(stream.client.local_addr().unwrap());
        passes.run();
        assert_eq!(passes.wanted(), 0, "found");
        let read = stream.read.recv_timeout(Duration::from_secs(10));
        assert!(matches!(read, Ok(Ok(0))), "end of file at once: {read:?}");
        assert!(
            other.read.recv_timeout(Duration::from_millis(200)).is_err(),
            "a connection nobody noted is left alone"
        );
        // The stream's connection still carries what the server writes.
        let mut writer = stream.server_side.try_clone().unwrap();
        std::io::Write::write_all(&mut writer, b"data: x\n\n").unwrap();
        let mut client = stream.client.try_clone().unwrap();
        let mut got = [0u8; 9];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"data: x\n\n");
        drop(other);
    }

    #[test]
    fn the_list_of_fresh_peers_is_bounded() {
        let fresh = FreshStreams::default();
        for port in 0..=u16::MAX {
            fresh.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert_eq!(fresh.take().len(), MAX_FRESH);
        assert!(fresh.take().is_empty());
    }

    #[test]
    fn a_peer_never_found_is_given_up() {
        let fresh = Arc::new(FreshStreams::default());
        let mut passes = Passes::new(1, Arc::clone(&fresh));
        fresh.push("127.0.0.1:9".parse().unwrap());
        passes.run();
        assert_eq!(passes.wanted(), 1, "looked for again at the next pass");
        // Backdate it past the deadline.
        for since in passes.wanted.values_mut() {
            *since -= GIVE_UP;
        }
        passes.run();
        assert_eq!(passes.wanted(), 0);
    }
}

//! Ends a stream whose client stopped acknowledging what it was sent.
//!
//! A client that vanishes without closing (its network gone, no FIN or RST)
//! leaves the stream writing into the kernel's buffers: writes succeed while
//! nothing comes back. The kernel gives up on the connection a write timeout
//! after the first byte it could not get acknowledged (`TCP_USER_TIMEOUT`,
//! see `src/listener.rs`), about half a second late as measured, but the
//! stream learns it only when it next writes: its next ping, one ping
//! interval later. The spec bounds the whole at one ping interval plus the
//! write timeout after the client vanished.
//!
//! So after each ping the stream asks the kernel, a write timeout later,
//! whether the client acknowledged everything written up to that ping
//! (`tcpi_bytes_acked`, through [`crate::sock_diag::bytes_acknowledged`],
//! by the connection's addresses): if not, that write timed
//! out, and the stream ends as if it had failed. A client that vanished has
//! sent its last acknowledgement before the ping that follows, so it is
//! found out at most a ping interval plus the write timeout after it went.
//! A live client's kernel acknowledges at once, read or not, unless its
//! receive buffer is full: then the client has read nothing for all that
//! time, and the kernel too would drop it.
//!
//! The check needs the connection's local address, which the stream reads
//! from its socket. Where socket diagnostics are not allowed, or the
//! connection is not found, the stream goes without the check (and ends at
//! the first write after the kernel gave up, as before).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sock_diag::bytes_acknowledged;
use crate::socket_table::normalize;

/// Pings waiting for their checks at most, the pending one included: a
/// write timeout up to 7 ping intervals long is checked ping by ping.
/// Past it, the pings that do not fit go unchecked (a later one is).
pub const MAX_PENDING: usize = 8;

/// What a stream knows of its connection for the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Not looked up yet.
    Unconfirmed { local: SocketAddr, peer: SocketAddr },
    /// Found by the kernel under these addresses.
    Confirmed { local: SocketAddr, peer: SocketAddr },
    /// No check: no peer address, or the connection could not be found.
    Off,
}

/// A stream's pending check that its client acknowledged its pings.
#[derive(Debug)]
pub struct AckWatch {
    connection: Connection,
    write_timeout: Duration,
    /// The next check: when, and how many bytes the client must have
    /// acknowledged by then.
    due: Option<(Instant, u64)>,
    /// The pings written while a check was pending, checked after it: a
    /// write timeout at least as long as the ping interval (else, empty and
    /// never allocated).
    later: VecDeque<(Instant, u64)>,
}

impl AckWatch {
    /// A watch for the connection from `peer` to `local`, the local end of
    /// the stream's socket; a write stays unacknowledged at most
    /// `write_timeout`. Without either address it never checks.
    pub fn new(local: Option<SocketAddr>, peer: Option<SocketAddr>, write_timeout: Duration) -> AckWatch {
        let connection = match (local, peer) {
            (Some(local), Some(peer)) => Connection::Unconfirmed {
                local: normalize(local),
                peer: normalize(peer),
            },
            _ => Connection::Off,
        };
        AckWatch {
            connection,
            write_timeout,
            due: None,
            later: VecDeque::new(),
        }
    }

    /// A watch that never checks.
    pub fn off() -> AckWatch {
        AckWatch::new(None, None, Duration::MAX)
    }

    /// Looks the connection up in the kernel, once: the stream calls it
    /// before it writes its first ping. Made after that write, the look-up
    /// missed a client that had closed before it: the ping drew a reset,
    /// the kernel forgot the connection, the watch took it for one it
    /// cannot find and went without checks, and the stream lived on to the
    /// second ping's failed write. (Not made when the stream opens: a
    /// look-up per connect, most of them for nothing, cost delivery
    /// latency at 10,000 streams.)
    pub fn confirm(&mut self) {
        if let Connection::Unconfirmed { local, peer } = self.connection {
            self.connection = confirm(local, peer);
        }
    }

    /// Notes that a ping was written at `now`, `written` bytes in all so
    /// far: they must all be acknowledged a write timeout later. Up to
    /// [`MAX_PENDING`] pings wait for their checks.
    pub fn pinged(&mut self, now: Instant, written: u64) {
        self.confirm();
        if self.connection == Connection::Off {
            return;
        }
        let Some(at) = now.checked_add(self.write_timeout) else {
            return;
        };
        if self.due.is_none() {
            self.due = Some((at, written));
        } else if self.later.len() + 1 < MAX_PENDING {
            self.later.push_back((at, written));
        }
    }

    /// When the stream must look again, if a check is pending.
    pub fn due(&self) -> Option<Instant> {
        self.due.map(|(at, _)| at)
    }

    /// Makes the check if it is due at `now`.
    ///
    /// # Errors
    /// `TimedOut` when the client has not acknowledged the bytes written up
    /// to the ping a write timeout ago; `ConnectionAborted` when the kernel
    /// let go of the connection. The stream then ends as on a failed write.
    pub fn check(&mut self, now: Instant) -> io::Result<()> {
        let Connection::Confirmed { local, peer } = self.connection else {
            return Ok(());
        };
        // Every check due by now, against one look at the kernel: the
        // counts only grow, so the last one due says it all.
        let mut written = None;
        while let Some((at, bytes)) = self.due {
            if at > now {
                break;
            }
            written = Some(bytes);
            self.due = self.later.pop_front();
        }
        match written {
            Some(written) => look_up(local, peer, written, self.write_timeout),
            None => Ok(()),
        }
    }
}

/// The check itself, out of line as what it calls: a stream thread's
/// stack pages, once touched, stay resident, and the wait is not deep.
#[inline(never)]
fn look_up(local: SocketAddr, peer: SocketAddr, written: u64, write_timeout: Duration) -> io::Result<()> {
    match bytes_acknowledged(local, peer) {
        Ok(Some(acknowledged)) if acknowledged >= written => Ok(()),
        found => failed(found, peer, written, write_timeout),
    }
}

/// The outcome of a check that did not pass; rare, so out of line.
#[cold]
#[inline(never)]
fn failed(
    found: io::Result<Option<u64>>,
    peer: SocketAddr,
    written: u64,
    write_timeout: Duration,
) -> io::Result<()> {
    match found {
        Ok(Some(acknowledged)) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{peer} acknowledged {acknowledged} of the {written} bytes written up to a ping {write_timeout:?} ago"),
        )),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the kernel let go of the connection from {peer}"),
        )),
        Err(e) => {
            // Tried again at the next ping; the kernel's own timeout and
            // the next write still end the stream.
            log::debug!("cannot check what {peer} acknowledged: {e}");
            Ok(())
        }
    }
}

/// The connection's addresses as the kernel knows them, or
/// [`Connection::Off`].
#[inline(never)]
fn confirm(local: SocketAddr, peer: SocketAddr) -> Connection {
    look_for(local, peer).unwrap_or_else(|| not_confirmed(Ok(None), peer))
}

/// Asks the kernel for the connection from `local` to `peer`: `Some` with
/// the outcome (confirmed, or [`Connection::Off`] when the kernel cannot be
/// asked), `None` when it has no such connection (try another address).
fn look_for(local: SocketAddr, peer: SocketAddr) -> Option<Connection> {
    match bytes_acknowledged(local, peer) {
        Ok(Some(_)) => Some(Connection::Confirmed { local, peer }),
        Ok(None) => None,
        other => Some(not_confirmed(other, peer)),
    }
}

/// A connection not found, or no way to look: no check.
#[cold]
#[inline(never)]
fn not_confirmed(found: io::Result<Option<u64>>, peer: SocketAddr) -> Connection {
    match found {
        Err(e) => log::debug!("no acknowledgement check for {peer}: {e}"),
        // Trace, not debug: the usual case is a client that reset its
        // connection before the first ping, and a log line this deep in a
        // stream's stack leaves a page resident that glibc hands on with
        // the stack to a later stream thread.
        Ok(_) => log::trace!("no acknowledgement check for {peer}: its connection was not found"),
    }
    Connection::Off
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// The local address of the server's end, both ends, and the peer.
    fn pair(listen_on: &str) -> (SocketAddr, TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind(listen_on).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        (server_side.local_addr().unwrap(), client, server_side, peer)
    }

    fn netlink_here() -> bool {
        let (local, _client, _server, peer) = pair("127.0.0.1:0");
        match bytes_acknowledged(local, peer) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("sock_diag unavailable here ({e}): skipped");
                false
            }
        }
    }

    #[test]
    fn a_ping_the_client_acknowledged_passes_the_check() {
        if !netlink_here() {
            return;
        }
        let (local, mut client, mut server_side, peer) = pair("127.0.0.1:0");
        server_side.write_all(b": ping\n\n").unwrap();
        client.read_exact(&mut [0u8; 8]).unwrap();
        let mut watch = AckWatch::new(Some(local), Some(peer), Duration::from_millis(100));
        let start = Instant::now();
        watch.pinged(start, 8);
        assert!(
            matches!(watch.connection, Connection::Confirmed { .. }),
            "{:?}",
            watch.connection
        );
        assert_eq!(watch.due(), Some(start + Duration::from_millis(100)));
        watch.check(start).unwrap();
        assert!(watch.due().is_some(), "not due yet");
        watch.check(start + Duration::from_secs(1)).unwrap();
        assert_eq!(watch.due(), None, "checked");
    }

    #[test]
    fn bytes_never_acknowledged_fail_the_check() {
        if !netlink_here() {
            return;
        }
        let (local, _client, mut server_side, peer) = pair("127.0.0.1:0");
        server_side.write_all(b": ping\n\n").unwrap();
        let mut watch = AckWatch::new(Some(local), Some(peer), Duration::from_millis(100));
        let start = Instant::now();
        // As if more had been written than the client's kernel has taken.
        watch.pinged(start, 9);
        let error = watch.check(start + Duration::from_secs(1)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    }

    #[test]
    fn a_connection_the_kernel_let_go_of_fails_the_check() {
        if !netlink_here() {
            return;
        }
        let (local, client, server_side, peer) = pair("127.0.0.1:0");
        let mut watch = AckWatch::new(Some(local), Some(peer), Duration::from_millis(100));
        let start = Instant::now();
        watch.pinged(start, 0);
        drop(client);
        drop(server_side);
        let error = watch.check(start + Duration::from_secs(1)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted, "{error}");
    }

    #[test]
    fn one_check_at_a_time_and_none_without_a_connection() {
        let mut off = AckWatch::off();
        off.pinged(Instant::now(), 10);
        assert_eq!(off.due(), None);
        off.check(Instant::now() + Duration::from_secs(60)).unwrap();

        if !netlink_here() {
            return;
        }
        let (local, _client, _server_side, peer) = pair("127.0.0.1:0");
        let mut watch = AckWatch::new(Some(local), Some(peer), Duration::from_secs(10));
        let start = Instant::now();
        watch.pinged(start, 0);
        watch.pinged(start + Duration::from_secs(5), 100);
        watch.pinged(start + Duration::from_secs(8), 200);
        assert_eq!(
            watch.due,
            Some((start + Duration::from_secs(10), 0)),
            "the first ping's check comes first"
        );
        watch.check(start + Duration::from_secs(10)).unwrap();
        assert_eq!(
            watch.due,
            Some((start + Duration::from_secs(15), 100)),
            "then the second ping's"
        );
        watch.check(start + Duration::from_secs(18)).unwrap_err();
        assert_eq!(watch.due, None, "the second and third at once, one look");
        for second in 0..20 {
            watch.pinged(start + Duration::from_secs(second), second);
        }
        assert_eq!(watch.later.len() + 1, MAX_PENDING, "pings waiting are bounded");

        let unknown_peer = SocketAddr::new(peer.ip(), peer.port().wrapping_add(1).max(1));
        let mut not_found = AckWatch::new(Some(local), Some(unknown_peer), Duration::from_secs(10));
        not_found.pinged(start, 0);
        assert_eq!(not_found.connection, Connection::Off);
        assert_eq!(not_found.due(), None);
    }
}

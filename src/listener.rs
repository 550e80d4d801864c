//! The listening socket, set up so that tiny_http's connections behave.
//!
//! tiny_http (unpatched) never lets a handler reach a connection's socket
//! before the request is handled, but on Linux an accepted socket inherits `SO_RCVTIMEO`, `SO_SNDTIMEO`, `TCP_NODELAY` and
//! `TCP_USER_TIMEOUT` from the listening socket. So the options are set once,
//! here, on the listener (through a `TcpStream` view of the same descriptor,
//! std and nix's safe `setsockopt`):
//!
//! - a short read timeout ([`IDLE_READ_TIMEOUT`]): a new connection that
//!   sends no request, or an unfinished request head, is dropped after it,
//!   and with it tiny_http's pool thread and second descriptor (a stream's
//!   connection is taken out of tiny_http at once, see `http::streams::open_stream`,
//!   so that an open stream costs one thread and one descriptor);
//! - the write timeout (`--write-timeout`): a write to a client that stopped
//!   reading fails after that long, ending its stream;
//! - `TCP_NODELAY`: each event leaves at once instead of waiting for an ACK;
//! - `TCP_USER_TIMEOUT`, also the write timeout: a client that vanishes
//!   without closing (network gone, no FIN or RST) acknowledges nothing, but
//!   a ping is small and fits in the send buffer, so the write timeout alone
//!   never fires and the stream would live for hours. With this option the
//!   kernel drops a connection whose sent data stays unacknowledged that
//!   long (on current kernels also one whose receive window stays closed
//!   that long: a live client that stops reading is dropped even if no
//!   write of ours blocks), and the stream's next write fails.
//!
//! The stream would learn of the drop only at its next write, one ping
//! interval later. So it also
//! asks the kernel, a write timeout after each ping, whether the client
//! acknowledged it (`src/ack_watch.rs`): a vanished client's stream ends at
//! most a ping interval plus the write timeout after it vanished. See the
//! README, "Disconnects".
//!
//! The catch: `accept()` obeys the read timeout too, and tiny_http's acceptor
//! thread ends on that error. [`KeepAwake`] connects to the listener more
//! often than the timeout so that `accept()` never times out; if it ever does
//! (a stalled machine), the dispatcher builds a new tiny_http server on the
//! same listener (see `http::dispatch`).
//!
//! Every keep-awake connection is a task for tiny_http's pool, which wakes
//! its idle threads in turn (first in, first out), and a surplus idle thread
//! exits only after 5 s without a task. Poking every `P` keeps about
//! `5 s / P` pool threads alive for ever (12 at 400 ms), so after a burst of
//! connections the pool shrinks back to its 4 permanent threads only if
//! `P >= 5 s / 4`. Hence the keep-awake period of 1.25 s, and the read
//! timeout of 2 s above it.
//!
//! The keep-awake connection also frees connections that tiny_http's pool
//! left queued. The published tiny_http 0.12 counted an idle worker until
//! that worker held the queue's lock again, so of two connections that
//! arrived together both could be queued for one worker: it served the
//! first, and the second waited until some worker finished a task
//! (BENCHMARKS.md, "Limits found"). The patched copy this project builds
//! (`vendor/tiny_http`) starts a thread unless an idle one is left over;
//! what can still leave a task queued is a pool thread ending in a panic
//! ([`note_pool_thread_lost`]). Every new connection makes a worker take the oldest queued task (a fresh
//! thread takes it after the connection's own short task). So the
//! keep-awake connection asks `GET /health`: an answer within
//! [`PROBE_WAIT`] means nothing is queued ahead of it; while there is
//! none, it opens and closes one more connection, each of which frees one
//! queued connection, [`MAX_RESCUES`] at most per period.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::sockopt::TcpUserTimeout;
use nix::sys::socket::{listen, setsockopt, Backlog};

use crate::periodic::Periodic;

/// How long a connection may be silent while tiny_http waits for its first
/// request head, or within a request (a head or a body).
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a kept-alive connection may be silent between the end of one
/// request and the start of the next (tiny_http as patched in
/// `vendor/tiny_http`). Longer than [`IDLE_READ_TIMEOUT`]: a client that
/// sends its next request just as the server closes gets no answer, and
/// pooled publishers that published about every 2 s lost one POST in a few
/// hundred. 5 s as Apache httpd and Node's http server; answers say it
/// (`Keep-Alive: timeout=5`, see `keep_alive`). A stream's connection is
/// not kept: it is taken out of tiny_http, whose reader stops at once.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(5);

/// How long a surplus tiny_http pool thread waits idle before it exits
/// (tiny_http 0.12, `util/task_pool.rs`).
const POOL_IDLE_EXIT: Duration = Duration::from_secs(5);

/// Permanent threads of a tiny_http pool (`MIN_THREADS` in `task_pool.rs`).
const POOL_MIN_THREADS: u64 = 4;

/// How often [`KeepAwake`] connects to the listener (1.25 s): more often
/// than the read timeout, so that `accept()` never times out, and rarely
/// enough that tiny_http's surplus pool threads still go idle long enough to
/// exit.
const KEEP_AWAKE_EVERY: Duration =
    Duration::from_millis(POOL_IDLE_EXIT.as_millis() as u64 / POOL_MIN_THREADS);

/// How long the keep-awake request waits for its answer before it takes
/// itself for queued behind other connections and opens one more.
const PROBE_WAIT: Duration = Duration::from_millis(50);

/// Extra connections the keep-awake thread opens at most per period.
const MAX_RESCUES: usize = 32;

/// Connections opened at most per period to run the tasks that tiny_http's
/// pool threads left queued when they died (see [`note_pool_thread_lost`]).
const MAX_QUEUE_RESCUES: usize = 128;

/// tiny_http's pool threads that ended in a panic so far.
static POOL_THREADS_LOST: AtomicU64 = AtomicU64::new(0);

/// Notes that one of tiny_http's pool threads ended in a panic (the
/// binary's panic hook calls it; tiny_http 0.12 panics on a connection
/// reset before it read the peer's address). A thread that dies may leave
/// connections queued in the pool for it, each holding two descriptors
/// until some thread runs it; the keep-awake thread then opens connections
/// that close at once, each of which brings a thread that runs one queued
/// task, for as long as that keeps making pool threads die.
/// Returns how many have so far.
pub fn note_pool_thread_lost() -> u64 {
    POOL_THREADS_LOST.fetch_add(1, Ordering::Relaxed) + 1
}

/// The keep-awake request: it is answered, then the connection closes.
const PROBE: &[u8] = b"GET /health HTTP/1.1\r\nHost: keep-awake\r\nConnection: close\r\n\r\n";

/// Binds `host:port` and sets the options every accepted socket inherits.
///
/// # Errors
/// The bind or `setsockopt` error.
pub fn bind(host: &str, port: u16, write_timeout: Duration) -> io::Result<TcpListener> {
    let listener = TcpListener::bind((host, port))?;
    let view = TcpStream::from(OwnedFd::from(listener));
    view.set_read_timeout(Some(IDLE_READ_TIMEOUT))?;
    view.set_write_timeout(Some(write_timeout))?;
    view.set_nodelay(true)?;
    setsockopt(&view, TcpUserTimeout, &user_timeout_ms(write_timeout))?;
    // std listens with a queue of 128; when every EventSource of a box
    // reconnects at once (after a restart, a network blip), connections past
    // it lose their SYN and wait a second or more to retry. Listening again
    // on the same socket raises the queue: -1 asks for as much as the
    // kernel allows (net.core.somaxconn). Not `Backlog::MAXCONN`: that is
    // the C library's SOMAXCONN, 4096 with glibc but 128 with musl.
    listen(&view, Backlog::MAXALLOWABLE)?;
    Ok(TcpListener::from(OwnedFd::from(view)))
}

/// `TCP_USER_TIMEOUT` for a write timeout, in milliseconds: at least 1 (0
/// would mean the kernel's default, about 15 minutes of retransmissions)
/// and at most `i32::MAX` (24.8 days): Linux refuses more (`EINVAL`).
fn user_timeout_ms(write_timeout: Duration) -> u32 {
    let most = i32::MAX.unsigned_abs();
    u32::try_from(write_timeout.as_millis())
        .unwrap_or(most)
        .clamp(1, most)
}

/// The address to connect to for reaching a listener bound to `bound`
/// (an unspecified address is reached through loopback).
pub fn connect_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// A thread that connects to the listener every 1.25 s so that tiny_http's
/// `accept()` never runs into the inherited read timeout. Stops when dropped.
#[derive(Debug)]
pub struct KeepAwake {
    /// Raised when dropped: a round in progress ends at once.
    stopping: Arc<AtomicBool>,
    _thread: Periodic,
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        // Before `_thread` is dropped (and joined): a round waiting for an
        // answer that a stopping server no longer gives ends within
        // `PROBE_WAIT`.
        self.stopping.store(true, Ordering::Release);
    }
}

impl KeepAwake {
    /// Starts poking `addr`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(addr: SocketAddr) -> io::Result<KeepAwake> {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let mut lost_seen = POOL_THREADS_LOST.load(Ordering::Relaxed);
        let thread = Periodic::start("keep-awake", Duration::ZERO, move || {
            poke(addr, &stop);
            let lost = POOL_THREADS_LOST.load(Ordering::Relaxed);
            if lost != lost_seen {
                lost_seen = lost;
                rescue_queued(addr, &stop, MAX_QUEUE_RESCUES);
            }
            KEEP_AWAKE_EVERY
        })?;
        Ok(KeepAwake {
            stopping,
            _thread: thread,
        })
    }
}

/// One keep-awake round: a `GET /health`, and while it goes unanswered, up
/// to [`MAX_RESCUES`] connections closed at once (tiny_http reads EOF and
/// forgets each), each freeing one connection queued in tiny_http's pool.
/// Returns how many it opened. Failures are retried next round; the round
/// ends as soon as `stopping` is raised.
fn poke(addr: SocketAddr, stopping: &AtomicBool) -> usize {
    let Ok(mut probe) = TcpStream::connect_timeout(&addr, KEEP_AWAKE_EVERY) else {
        return 0;
    };
    if probe.write_all(PROBE).is_err() || probe.set_read_timeout(Some(PROBE_WAIT)).is_err() {
        return 0;
    }
    let mut answer = [0u8; 256];
    let mut rescues = 0;
    while rescues < MAX_RESCUES && !stopping.load(Ordering::Acquire) {
        match probe.read(&mut answer) {
            // Answered (or closed): nothing is queued ahead of it.
            Ok(_) => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let _ = TcpStream::connect_timeout(&addr, PROBE_WAIT);
                rescues += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    rescues
}

/// Opens up to `count` connections to `addr` and closes each at once (no
/// request, no reset: tiny_http reads end-of-file and forgets it). Each
/// new connection makes tiny_http's pool run one more task, the oldest
/// queued one first. Stops early when `stopping` is raised.
fn rescue_queued(addr: SocketAddr, stopping: &AtomicBool, count: usize) {
    for _ in 0..count {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let _ = TcpStream::connect_timeout(&addr, PROBE_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    #[test]
    fn accepted_sockets_inherit_the_timeouts() {
        let listener = bind("127.0.0.1", 0, Duration::from_millis(700)).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.read_timeout().unwrap(), Some(IDLE_READ_TIMEOUT));
        assert_eq!(
            accepted.write_timeout().unwrap(),
            Some(Duration::from_millis(700))
        );
        assert!(accepted.nodelay().unwrap());
        let user_timeout = nix::sys::socket::getsockopt(&accepted, TcpUserTimeout).unwrap();
        assert_eq!(user_timeout, 700, "TCP_USER_TIMEOUT in ms");
        let start = Instant::now();
        let err = accepted.read(&mut [0u8; 8]).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        assert!(start.elapsed() >= IDLE_READ_TIMEOUT / 2);
    }

    #[test]
    fn a_burst_of_connects_finds_room_in_the_accept_queue() {
        // 300 connections, none accepted yet: with std's queue of 128 the
        // ones past it would wait for a SYN retry (a second or more).
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        if cap.is_some_and(|cap| cap < 300) {
            println!("skipped: net.core.somaxconn is {cap:?}, under 300");
            return;
        }
        let listener = bind("127.0.0.1", 0, Duration::from_secs(10)).unwrap();
        let addr = listener.local_addr().unwrap();
        let connected: Vec<TcpStream> = (0..300)
            .map(|n| {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connect {n} of 300: {e}"))
            })
            .collect();
        assert_eq!(connected.len(), 300);
    }

    #[test]
    fn poke_opens_connections_until_its_request_is_answered() {
        // A stand-in for tiny_http with connections queued: it answers the
        // keep-awake request only after three more connections came.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let poker = std::thread::spawn(move || poke(addr, &AtomicBool::new(false)));
        let (mut probe, _) = listener.accept().unwrap();
        let mut head = [0u8; 256];
        let n = probe.read(&mut head).unwrap();
        assert!(head[..n].starts_with(b"GET /health "), "{:?}", &head[..n]);
        for _ in 0..3 {
            let (extra, _) = listener.accept().unwrap();
            drop(extra);
        }
        probe
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let rescues = poker.join().unwrap();
        // More may have been on their way when the answer came (one per
        // 50 ms this thread was late), but the answer ends the round.
        assert!((3..MAX_RESCUES).contains(&rescues), "{rescues} extra connections");

        // Answered at once: no extra connection (one or two if this thread
        // was late by 50 ms or more).
        let poker = std::thread::spawn(move || poke(addr, &AtomicBool::new(false)));
        let (mut probe, _) = listener.accept().unwrap();
        probe
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let rescues = poker.join().unwrap();
        assert!(rescues < 3, "{rescues} extra connections");
    }

    #[test]
    fn a_round_ends_at_once_when_stopping() {
        // Nobody answers: only the stop flag can end the round early.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let poker = std::thread::spawn(move || poke(addr, &flag));
        let _probe = listener.accept().unwrap();
        let _first_rescue = listener.accept().unwrap();
        stopping.store(true, Ordering::Release);
        let rescues = poker.join().unwrap();
        assert!(rescues < MAX_RESCUES, "{rescues} extra connections");
    }

    #[test]
    fn user_timeout_is_the_write_timeout_within_bounds() {
        assert_eq!(user_timeout_ms(Duration::from_secs(10)), 10_000);
        assert_eq!(user_timeout_ms(Duration::from_micros(10)), 1);
        assert_eq!(user_timeout_ms(Duration::from_secs(60 * 86_400)), i32::MAX as u32);
        assert_eq!(user_timeout_ms(Duration::from_secs(597 * 3600)), i32::MAX as u32);
    }

    #[test]
    fn keep_awake_keeps_accept_alive_without_pinning_pool_threads() {
        // Fast enough that accept() never waits out the read timeout, with
        // room for a late wake-up on a busy machine.
        assert!(KEEP_AWAKE_EVERY + Duration::from_millis(500) <= IDLE_READ_TIMEOUT);
        // Slow enough that one surplus pool thread among the permanent ones,
        // woken in turn, waits longer than POOL_IDLE_EXIT for a task.
        assert!(KEEP_AWAKE_EVERY * (POOL_MIN_THREADS as u32 + 1) > POOL_IDLE_EXIT);
    }

    #[test]
    fn unspecified_addresses_are_reached_through_loopback() {
        let any: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert_eq!(connect_address(any), "127.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[::]:81".parse().unwrap();
        assert_eq!(connect_address(v6), "[::1]:81".parse().unwrap());
    }
}

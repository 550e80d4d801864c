//! The head guard: closes connections that trickle their request head, as
//! a backstop, and tells streams when their client closed.
//!
//! Unpatched, tiny_http reads a request head with no deadline and no size limit, and
//! never lets a handler reach a connection's socket. The listener's read
//! timeout (see `listener`) drops a client that goes *silent* mid-head, but
//! not one that sends a byte every second: each read succeeds, and the head
//! never ends, so a tiny_http pool thread is held for ever. Nor one that
//! sends a head without end as fast as it can: tiny_http keeps every byte
//! of it in memory (a 300 MiB request line took 310 MB of RSS in 0.5 s).
//!
//! The patched copy (`vendor/tiny_http`, `HeadLimits`) now bounds
//! each head itself, to [`HEAD_DEADLINE`] and `http::MAX_HEAD_BYTES`,
//! answering `408` or `431`: a trickler is closed 10 s after its accept,
//! to the read. The guard stays as the backstop it was before, cutting
//! what got past that from outside; it also tells a stream when its client
//! closed (see [`HeadLog::peer_closed`]).
//!
//! The guard finds such connections from outside tiny_http:
//!
//! 1. Every [`PERIOD`] (more when reads get costly, see below) it lists the
//!    ESTABLISHED TCP sockets of this network namespace whose local port is
//!    the server's and whose inode is non-zero, noting when it first saw
//!    each inode. It asks the kernel through netlink socket diagnostics
//!    (`sock_diag`: binary, 72 bytes a socket), or, where that is not
//!    allowed, reads the text tables `/proc/net/tcp` and `/proc/net/tcp6`.
//! 2. The server records the peer address of every request it reads
//!    ([`HeadLog::record`]); the guard matches it to the socket with that
//!    peer. A socket whose peer has an open stream ([`HeadLog::stream_opened`]
//!    to [`HeadLog::stream_closed`]) is passed over: it is never cut, and
//!    costs the guard nothing but its entry in that set of peers.
//! 3. A socket seen for more than [`BACKSTOP_DEADLINE`] without a request head
//!    (or, kept alive and not a stream, more than [`NEXT_HEAD_DEADLINE`]
//!    since its last head) is a trickler: the guard finds its
//!    descriptor in `/proc/self/fd` (a link to `socket:[INODE]`), checks with
//!    `getpeername`/`getsockname` that the descriptor is still that
//!    connection, and shuts it down both ways. tiny_http's reader then gets
//!    EOF and frees its thread; the client sees the connection closed.
//!
//! Cost of a cycle through the text tables (netlink skips the formatting
//! and the parsing: with 10,000 streams held by clients on the same host,
//! the guard's thread used 10.9 ms of CPU a second through netlink, 26.7
//! through the tables, `examples/thread_cpu.py`): the kernel formats one
//! 150-byte line per TCP socket of
//! the network namespace (listening, TIME_WAIT, both ends of loopback
//! connections, other programs' sockets too), handed over 4 KiB per
//! `read`; the guard parses each line (into a line buffer reused from
//! cycle to cycle) and does a hash-map lookup per server socket. Measured
//! on the 2-core development box: 12,000 lines (1.8 MB) took 60 ms to read, 22,000
//! lines (5,000 loopback connections on top) 200 ms, so about 5-9 µs per
//! line, nearly all of it in the kernel. At 10,000 remote clients that is
//! ~60-90 ms every 2 s, 3-5 % of one core. Past that the pause between
//! reads grows with the cost of a read (at least [`CPU_SHARE`] times it),
//! so the guard never takes more than about 5 % of a core, and a trickler
//! is closed a little later than 15 s. (Netlink `sock_diag` with a port
//! filter in the kernel would be cheaper at such scale, at the price of
//! hand-built binary messages.) No per-descriptor system call is made
//! unless there is a trickler: then one pass over `/proc/self/fd` (a
//! `readlink` per open descriptor, ~20,000 at 10,000 streams, some
//! milliseconds) for all the cycle's tricklers together. Each line goes
//! straight into the bookkeeping as it is read: the table is never held,
//! not even as a list of the server's sockets (40 bytes each, which a
//! reused list would keep in the RSS for good).
//!
//! The socket table is read in page-sized pieces, and the kernel may skip a
//! socket that moves while it is being read: a socket is forgotten only when
//! it is missing from two reads in a row, and a recorded head waits
//! [`HEAD_GRACE_READS`] reads for its socket to show up.
//!
//! A stream's connection is never cut, however the table reads go: it is
//! told by its peer, not by what earlier reads learnt of its inode. (With
//! thousands of connections coming and going the kernel can leave a socket
//! out of a read now and then; when streams were exempted by inode, a
//! stream's socket missing from two reads in a row was forgotten, seen
//! again as a new connection without a head, and cut 10 s later: seen once
//! in a 19,000-stream benchmark, 38 events missed.)
//!
//! Limits: a peer that reconnects from the same address and port within a
//! few seconds of a request may inherit that request's head; a stream's
//! connection is trusted for its whole life.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::HangUp;
use crate::periodic::Periodic;
use crate::socket_table::{normalize, parse_table, Listed, Seen};

/// How often the guard reads the socket table.
pub const PERIOD: Duration = Duration::from_secs(2);

/// How long a connection may take to deliver a request head (spec: "a head
/// unfinished after 10 s" is closed).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);

/// How long the guard lets a connection go without a request head before
/// it cuts it: past [`HEAD_DEADLINE`], by when tiny_http has answered `408`
/// and closed it itself (`tiny_http::HeadLimits`), so that the guard cuts
/// only what got past that.
pub const BACKSTOP_DEADLINE: Duration = Duration::from_secs(15);

/// How long a kept-alive connection that is not a stream may go without a
/// new request head after its last one: longer than a request can take to
/// be answered (a publish body has 10 s, `publish::BODY_DEADLINE`, then Redis
/// up to 2 s), so that only a next head trickled behind it is cut.
pub const NEXT_HEAD_DEADLINE: Duration = Duration::from_secs(30);

/// How many reads of the socket table a recorded head waits for its socket
/// to be seen in.
pub const HEAD_GRACE_READS: u64 = 3;

/// The guard spends at most about 1/`CPU_SHARE` of one core: a read of the
/// table that took `t` is followed by a pause of at least `CPU_SHARE * t`.
pub const CPU_SHARE: u32 = 20;

/// The peers whose request heads arrived since the guard last looked (and
/// when the last one did), shared between the connections' threads (which
/// write) and
/// the guard (which drains it every cycle); and the peers of the open
/// streams.
#[derive(Debug, Default)]
pub struct HeadLog {
    heads: Mutex<HashMap<SocketAddr, Instant>>,
    /// Peers of the open streams, with the hang-up of each channel stream
    /// once it subscribed.
    streams: Mutex<HashMap<SocketAddr, Option<HangUp>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain collections, each change a single insert or remove: valid
    // whatever a panicking holder did.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl HeadLog {
    /// Notes that `peer` delivered a request head.
    pub fn record(&self, peer: SocketAddr) {
        lock(&self.heads).insert(normalize(peer), Instant::now());
    }

    /// Notes that `peer`'s request opened a stream: its connection is out
    /// of the guard's reach until [`HeadLog::stream_closed`].
    pub fn stream_opened(&self, peer: SocketAddr) {
        lock(&self.streams).insert(normalize(peer), None);
    }

    /// Notes how to end `peer`'s stream when its client closes the
    /// connection (see [`HeadLog::peer_closed`]).
    pub fn stream_subscribed(&self, peer: SocketAddr, hang_up: HangUp) {
        if let Some(slot) = lock(&self.streams).get_mut(&normalize(peer)) {
            *slot = Some(hang_up);
        }
    }

    /// `peer` closed its side of the connection (its FIN came: the socket
    /// is in CLOSE_WAIT): its stream, if it has one, is told to end,
    /// once. A stream writes to its client and never reads, so
    /// without this it learnt of the close only when a write failed: after
    /// its next ping, and the write timeout after that on an idle channel
    /// (25 s by default), all the while counted as open and as a
    /// subscriber. A client that only half-closes (shuts its sending
    /// side, still reading) is ended too, as Go's and nginx's servers end
    /// it.
    pub fn peer_closed(&self, peer: SocketAddr) {
        let hang_up = lock(&self.streams).get_mut(&peer).and_then(Option::take);
        if let Some(hang_up) = hang_up {
            log::debug!("the client closed its connection; ending its stream: peer={peer}");
            hang_up.hang_up();
        }
    }

    /// Notes that `peer`'s stream ended.
    // Out of line and cold: a stream thread calls it once, at its end, and
    // inlined its frame (hashing, locking) would deepen the thread's stack
    // for the stream's whole life.
    #[inline(never)]
    #[cold]
    pub fn stream_closed(&self, peer: SocketAddr) {
        lock(&self.streams).remove(&normalize(peer));
    }

    /// True while `peer` has an open stream.
    fn is_stream(&self, peer: SocketAddr) -> bool {
        lock(&self.streams).contains_key(&peer)
    }

    /// Shuts down, both ways, the connection of every open stream to local
    /// port `port`; returns how many. For the end of a stop: a stream whose
    /// write is blocked (its client reads nothing) then fails at once, and
    /// ends and logs its closing line before the process exits, instead of
    /// waiting out `--write-timeout`. One pass over `/proc/self/fd`; each
    /// descriptor's endpoints are read just before its shutdown.
    pub fn shut_down_streams(&self, port: u16) -> usize {
        use nix::sys::socket::{self, Shutdown};
        let peers: HashSet<SocketAddr> = lock(&self.streams).keys().copied().collect();
        let mut shut = 0;
        for fd in open_descriptors() {
            let Some((peer, local_port)) = socket_endpoints(fd) else {
                continue;
            };
            if local_port == port && peers.contains(&peer) && socket::shutdown(fd, Shutdown::Both).is_ok() {
                shut += 1;
            }
        }
        shut
    }

    fn take(&self) -> HashMap<SocketAddr, Instant> {
        std::mem::take(&mut *lock(&self.heads))
    }
}

/// What the guard knows of one socket that may yet be a trickler.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    peer: SocketAddr,
    first_seen: Instant,
    last_scan: u64,
    last_head: Option<Instant>,
}

/// The guard's bookkeeping, without sockets: which connections it has seen
/// since when, and which of them delivered a head. Fed one read of the
/// table at a time: [`Tracker::begin_read`], [`Tracker::observe`] for each
/// socket listed, [`Tracker::end_read`].
#[derive(Debug)]
pub struct Tracker {
    /// How long a socket may go without a request head after it was first
    /// seen ([`BACKSTOP_DEADLINE`]).
    head_deadline: Duration,
    sockets: HashMap<u64, Tracked>,
    /// Sockets never to report: not among this process's descriptors
    /// (another program's socket on the same port), so that
    /// `/proc/self/fd` is not searched for them every cycle. Only the read
    /// that last saw each.
    exempt: HashMap<u64, u64>,
    /// Heads whose socket was not seen yet (when the last arrived), and the
    /// read that first looked for it.
    unmatched: HashMap<SocketAddr, (Instant, u64)>,
    scan: u64,
    /// A read was begun and not ended yet.
    reading: bool,
}

impl Tracker {
    /// A tracker of no sockets yet, that reports one gone without a head
    /// for more than `head_deadline` since it was first seen.
    pub fn new(head_deadline: Duration) -> Tracker {
        Tracker {
            head_deadline,
            sockets: HashMap::new(),
            exempt: HashMap::new(),
            unmatched: HashMap::new(),
            scan: 0,
            reading: false,
        }
    }

    /// Starts taking in a read of the socket table. A read begun and not
    /// ended (no listing could be had: netlink failed, then no table could
    /// be opened) is the one the next call goes on with.
    pub fn begin_read(&mut self) {
        if !self.reading {
            self.scan += 1;
            self.reading = true;
        }
    }

    /// Takes in one socket of the read begun last, seen at `now`. A socket
    /// whose peer has an open stream (`is_stream`) is passed over.
    pub fn observe(&mut self, now: Instant, seen: Seen, is_stream: impl Fn(SocketAddr) -> bool) {
        let scan = self.scan;
        if let Some(last_scan) = self.exempt.get_mut(&seen.inode) {
            *last_scan = scan;
            return;
        }
        if is_stream(seen.peer) {
            self.sockets.remove(&seen.inode);
            return;
        }
        let fresh = Tracked {
            peer: seen.peer,
            first_seen: now,
            last_scan: scan,
            last_head: None,
        };
        let tracked = self.sockets.entry(seen.inode).or_insert(fresh);
        if tracked.peer != seen.peer {
            *tracked = fresh;
        }
        tracked.last_scan = scan;
    }

    /// Ends the read begun last, with the heads received since the one
    /// before; returns the tricklers: sockets of this read that have gone
    /// without a head for more than its deadline since first seen (or
    /// more than [`NEXT_HEAD_DEADLINE`] since their last head). A socket
    /// whose peer has an open stream by now (`is_stream`) is never one.
    pub fn end_read(
        &mut self,
        now: Instant,
        heads: HashMap<SocketAddr, Instant>,
        is_stream: impl Fn(SocketAddr) -> bool,
    ) -> Vec<Seen> {
        self.reading = false;
        let scan = self.scan;
        // Missing from this read and the one before: closed.
        self.sockets.retain(|_, t| t.last_scan + 1 >= scan);
        self.exempt.retain(|_, last_scan| *last_scan + 1 >= scan);
        for (peer, at) in heads {
            self.unmatched
                .entry(peer)
                .and_modify(|(last, _)| *last = (*last).max(at))
                .or_insert((at, scan));
        }
        if !self.unmatched.is_empty() {
            let by_peer: HashMap<SocketAddr, u64> = self
                .sockets
                .iter()
                .filter(|(_, t)| t.last_scan == scan)
                .map(|(inode, t)| (t.peer, *inode))
                .collect();
            let sockets = &mut self.sockets;
            self.unmatched
                .retain(|peer, (at, since)| match by_peer.get(peer) {
                    Some(inode) => {
                        if let Some(t) = sockets.get_mut(inode) {
                            t.last_head = Some(t.last_head.map_or(*at, |last| last.max(*at)));
                        }
                        false
                    }
                    None => scan - *since + 1 < HEAD_GRACE_READS,
                });
        }
        let overdue: Vec<Seen> = self
            .sockets
            .iter()
            .filter(|(_, t)| {
                let waiting = match t.last_head {
                    Some(at) => now.saturating_duration_since(at) > NEXT_HEAD_DEADLINE,
                    None => now.saturating_duration_since(t.first_seen) > self.head_deadline,
                };
                t.last_scan == scan && waiting
            })
            .map(|(inode, t)| Seen {
                inode: *inode,
                peer: t.peer,
            })
            .collect();
        let (streams, tricklers): (Vec<Seen>, Vec<Seen>) =
            overdue.into_iter().partition(|s| is_stream(s.peer));
        for stream in streams {
            self.forget(stream.inode);
        }
        tricklers
    }

    /// Forgets a socket: it was shut down, or it carries a stream.
    fn forget(&mut self, inode: u64) {
        self.sockets.remove(&inode);
    }

    /// Stops reporting a socket for good: its descriptor is not this
    /// process's. Only its last read is kept.
    fn exempt(&mut self, inode: u64) {
        if let Some(t) = self.sockets.remove(&inode) {
            self.exempt.insert(inode, t.last_scan);
        }
    }

    /// How many sockets it follows.
    pub fn len(&self) -> usize {
        self.sockets.len() + self.exempt.len()
    }

    /// True when it follows no socket.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty() && self.exempt.is_empty()
    }
}

/// The guard's thread. Stops when dropped.
#[derive(Debug)]
pub struct HeadGuard {
    _thread: Periodic,
}

impl HeadGuard {
    /// Starts guarding the connections to local port `port`, learning of
    /// request heads from `log`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(port: u16, log: Arc<HeadLog>) -> io::Result<HeadGuard> {
        let mut cycle = Cycle {
            port,
            log,
            tracker: Tracker::new(BACKSTOP_DEADLINE),
            line: String::new(),
            netlink: true,
            warned: false,
            pause: PERIOD,
        };
        let thread = Periodic::start("head-guard", PERIOD, move || {
            cycle.run();
            cycle.pause
        })?;
        Ok(HeadGuard { _thread: thread })
    }
}

/// What the guard keeps from one read of the socket table to the next.
struct Cycle {
    port: u16,
    log: Arc<HeadLog>,
    tracker: Tracker,
    line: String,
    /// Whether the sockets are listed through netlink (`sock_diag`), until
    /// that fails once; `/proc/net/tcp` then.
    netlink: bool,
    warned: bool,
    /// The pause before the next read: [`PERIOD`], or more when reads get
    /// costly ([`CPU_SHARE`]).
    pause: Duration,
}

impl Cycle {
    /// One read of the socket table, closing the tricklers it finds; sets
    /// the pause before the next.
    fn run(&mut self) {
        let now = Instant::now();
        let read_any = (self.netlink && self.list_through_netlink(now)) || self.list_from_tables(now);
        if !read_any {
            if !self.warned {
                log::warn!(
                    "cannot read /proc/net/tcp: clients that trickle their request head are not closed"
                );
                self.warned = true;
            }
            self.log.take();
            return;
        }
        let log = &self.log;
        let tricklers = self.tracker.end_read(now, log.take(), |peer| log.is_stream(peer));
        self.pause = PERIOD.max(now.elapsed() * CPU_SHARE);
        if tricklers.is_empty() {
            return;
        }
        let closed = shut_down(&tricklers, self.port);
        for trickler in &tricklers {
            if closed.contains(trickler) {
                self.tracker.forget(trickler.inode);
                log::warn!(
                    "closed a connection that sent no complete request head in time ({} s; {} s after a previous request): peer={}",
                    BACKSTOP_DEADLINE.as_secs(),
                    NEXT_HEAD_DEADLINE.as_secs(),
                    trickler.peer
                );
            } else {
                // Not (or no longer) one of ours.
                self.tracker.exempt(trickler.inode);
            }
        }
    }
}

impl Cycle {
    /// Lists the server's sockets into the tracker through netlink; false
    /// when that failed (the tables are read instead), and for good unless
    /// the failure may pass.
    fn list_through_netlink(&mut self, now: Instant) -> bool {
        self.tracker.begin_read();
        let (tracker, log) = (&mut self.tracker, &self.log);
        match crate::sock_diag::connections(self.port, |listed| match listed {
            Listed::Open(seen) => tracker.observe(now, seen, |peer| log.is_stream(peer)),
            Listed::PeerClosed(peer) => log.peer_closed(peer),
        }) {
            Ok(()) => true,
            Err(e) if crate::sock_diag::is_transient(&e) => {
                log::debug!(
                    "socket diagnostics through netlink failed ({e}); reading /proc/net/tcp this time"
                );
                false
            }
            Err(e) => {
                // Slower at scale.
                log::warn!(
                    "socket diagnostics through netlink failed ({e}); reading /proc/net/tcp from now on"
                );
                self.netlink = false;
                false
            }
        }
    }

    /// Reads `/proc/net/tcp` and `/proc/net/tcp6` into the tracker; false
    /// when neither could be opened.
    fn list_from_tables(&mut self, now: Instant) -> bool {
        let mut read_any = false;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            // Opened and closed within the cycle: one descriptor at most.
            let Ok(file) = std::fs::File::open(table) else {
                continue;
            };
            self.tracker.begin_read();
            read_any = true;
            let (tracker, log) = (&mut self.tracker, &self.log);
            // A read cut short keeps what it listed: a socket it missed is
            // forgotten only when the next read misses it too.
            let _ = parse_table(
                io::BufReader::with_capacity(TABLE_READ_BUFFER, file),
                self.port,
                &mut self.line,
                |listed| match listed {
                    Listed::Open(seen) => tracker.observe(now, seen, |peer| log.is_stream(peer)),
                    Listed::PeerClosed(peer) => log.peer_closed(peer),
                },
            );
        }
        read_any
    }
}

/// Bytes asked of the kernel per `read` of the socket table: it hands over
/// a page's worth of whole lines at a time anyway.
const TABLE_READ_BUFFER: usize = 8 * 1024;

/// The numbers of this process's open descriptors, as `/proc/self/fd`
/// lists them; none when it cannot be read.
pub(crate) fn open_descriptors() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The peer (IPv4-mapped addresses as IPv4) and the local port of the TCP
/// socket behind descriptor `fd`; `None` for anything else.
pub(crate) fn socket_endpoints(fd: i32) -> Option<(SocketAddr, u16)> {
    use nix::sys::socket::{getpeername, getsockname, SockaddrStorage};
    let address = |a: SockaddrStorage| -> Option<SocketAddr> {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::new(IpAddr::V4(v4.ip()), v4.port()))
        } else {
            a.as_sockaddr_in6()
                .map(|v6| normalize(SocketAddr::new(IpAddr::V6(v6.ip()), v6.port())))
        }
    };
    let peer = getpeername::<SockaddrStorage>(fd).ok().and_then(address)?;
    let local = getsockname::<SockaddrStorage>(fd).ok().and_then(address)?;
    Some((peer, local.port()))
}

/// Shuts down the descriptors of `tricklers`; returns those it shut down.
/// One pass over `/proc/self/fd` for all of them. Each descriptor is checked
/// with `getpeername` and `getsockname` just before, so that a descriptor
/// closed and reused since the `readlink` is never cut.
fn shut_down(tricklers: &[Seen], port: u16) -> Vec<Seen> {
    use nix::sys::socket::{self, Shutdown};
    let mut wanted: HashMap<u64, SocketAddr> = tricklers.iter().map(|t| (t.inode, t.peer)).collect();
    let mut closed = Vec::new();
    for fd in open_descriptors() {
        if wanted.is_empty() {
            break;
        }
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(&peer) = wanted.get(&inode) else {
            continue;
        };
        if socket_endpoints(fd) != Some((peer, port)) {
            continue;
        }
        // One shutdown acts on the socket, whatever descriptor (tiny_http
        // holds two) it goes through.
        match socket::shutdown(fd, Shutdown::Both) {
            Ok(()) => {
                wanted.remove(&inode);
                closed.push(Seen { inode, peer });
            }
            Err(e) => log::debug!("shutdown of a trickling connection from {peer} failed: {e}"),
        }
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tracker {
        /// One whole read: `seen` at `now`, then the heads.
        fn update(
            &mut self,
            now: Instant,
            seen: &[Seen],
            heads: HashMap<SocketAddr, Instant>,
            is_stream: impl Fn(SocketAddr) -> bool,
        ) -> Vec<Seen> {
            self.begin_read();
            for s in seen {
                self.observe(now, *s, &is_stream);
            }
            self.end_read(now, heads, is_stream)
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn head(at: Instant) -> HashMap<SocketAddr, Instant> {
        HashMap::from([(addr("10.0.0.2:1000"), at)])
    }

    #[test]
    fn bookkeeping_first_seen_heads_and_expiry() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let trickler = Seen {
            inode: 1,
            peer: addr("10.0.0.1:1000"),
        };
        let streamer = Seen {
            inode: 2,
            peer: addr("10.0.0.2:1000"),
        };
        let open = |peer: SocketAddr| peer == streamer.peer;
        let mut tracker = Tracker::new(HEAD_DEADLINE);
        // Both seen; only the streamer delivers a head (recorded before its
        // socket is first seen) and opens a stream.
        assert!(tracker.update(at(0), &[], head(at(0)), open).is_empty());
        assert!(tracker
            .update(at(2), &[trickler, streamer], HashMap::new(), open)
            .is_empty());
        // The streamer is passed over: no entry at all.
        assert_eq!((tracker.sockets.len(), tracker.exempt.len()), (1, 0));
        assert!(
            tracker
                .update(at(12), &[trickler, streamer], HashMap::new(), open)
                .is_empty(),
            "10 s exactly is not over the deadline"
        );
        assert_eq!(
            tracker.update(at(13), &[trickler, streamer], HashMap::new(), open),
            vec![trickler],
            "over 10 s since first seen, no head: a trickler; a stream is never one"
        );
        assert_eq!(
            tracker.update(at(60), &[trickler, streamer], HashMap::new(), open),
            vec![trickler]
        );
        // Forgotten only after missing from two reads in a row.
        assert!(tracker
            .update(at(62), &[streamer], HashMap::new(), open)
            .is_empty());
        assert_eq!(tracker.len(), 1);
        assert!(tracker
            .update(at(64), &[streamer], HashMap::new(), open)
            .is_empty());
        assert!(tracker.is_empty());
        // The same inode back later is a new socket, timed from then.
        assert!(tracker
            .update(at(66), &[trickler, streamer], HashMap::new(), open)
            .is_empty());
        assert!(tracker
            .update(at(76), &[trickler], HashMap::new(), open)
            .is_empty());
        assert_eq!(
            tracker.update(at(77), &[trickler], HashMap::new(), open),
            vec![trickler]
        );
        // Not found among our descriptors: not reported again.
        tracker.exempt(trickler.inode);
        assert!(tracker
            .update(at(79), &[trickler], HashMap::new(), open)
            .is_empty());
        assert_eq!((tracker.sockets.len(), tracker.exempt.len()), (0, 1));
    }

    #[test]
    fn a_stream_is_never_cut_whatever_the_reads_missed() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let streamer = Seen {
            inode: 5,
            peer: addr("10.0.0.2:1000"),
        };
        // Its socket is seen, then left out of two reads in a row (the
        // kernel skips sockets that move while the table is read), then
        // seen again for over 10 s, and no head ever matched to it.
        let reads = |open: &dyn Fn(SocketAddr) -> bool| {
            let mut tracker = Tracker::new(HEAD_DEADLINE);
            let mut reported = Vec::new();
            reported.extend(tracker.update(at(0), &[streamer], HashMap::new(), open));
            reported.extend(tracker.update(at(2), &[], HashMap::new(), open));
            reported.extend(tracker.update(at(4), &[], HashMap::new(), open));
            for s in [6, 8, 10, 12, 14, 16, 18] {
                reported.extend(tracker.update(at(s), &[streamer], HashMap::new(), open));
            }
            (reported, tracker.len())
        };
        let open = |peer: SocketAddr| peer == streamer.peer;
        assert_eq!(
            reads(&open),
            (vec![], 0),
            "an open stream: never reported, not even followed"
        );
        // Without the open stream the same history makes it a trickler,
        // timed from when it was seen again (6 s).
        assert_eq!(reads(&|_| false), (vec![streamer], 1));
    }

    #[test]
    fn a_stream_that_opens_once_overdue_is_not_cut() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let late = Seen {
            inode: 6,
            peer: addr("10.0.0.2:1000"),
        };
        let mut tracker = Tracker::new(HEAD_DEADLINE);
        tracker.update(at(0), &[late], HashMap::new(), |_| false);
        // Overdue in this read, but its stream is open by the end of it.
        tracker.begin_read();
        tracker.observe(at(11), late, |_| false);
        assert!(tracker.end_read(at(11), HashMap::new(), |_| true).is_empty());
        assert!(tracker.is_empty(), "forgotten, not exempted by inode");
    }

    #[test]
    fn a_read_that_listed_nothing_is_not_counted_as_a_read() {
        let t0 = Instant::now();
        let plain = Seen {
            inode: 7,
            peer: addr("10.0.0.5:1000"),
        };
        let mut tracker = Tracker::new(HEAD_DEADLINE);
        tracker.update(t0, &[plain], HashMap::new(), |_| false);
        // A cycle that could list nothing: begun (netlink tried), not ended.
        tracker.begin_read();
        // Missing from the next read only: still followed.
        tracker.update(t0, &[], HashMap::new(), |_| false);
        assert_eq!(tracker.len(), 1);
        tracker.update(t0, &[], HashMap::new(), |_| false);
        assert!(tracker.is_empty(), "missing from two reads: forgotten");
    }

    #[test]
    fn a_stream_is_open_from_opened_to_closed() {
        let log = HeadLog::default();
        let peer = addr("10.0.0.3:1000");
        let mapped: SocketAddr = "[::ffff:10.0.0.3]:1000".parse().unwrap();
        log.stream_opened(mapped);
        assert!(log.is_stream(peer), "IPv4-mapped peers are kept as IPv4");
        log.stream_closed(mapped);
        assert!(!log.is_stream(peer));
    }

    #[test]
    fn heads_are_kept_by_peer_and_taken_once() {
        let log = HeadLog::default();
        log.record("[::ffff:10.0.0.4]:9".parse().unwrap());
        let first = log.take();
        assert_eq!(first.keys().collect::<Vec<_>>(), vec![&addr("10.0.0.4:9")]);
        assert!(log.take().is_empty(), "taken once");
    }

    #[test]
    fn a_kept_alive_connection_gets_thirty_seconds_from_its_last_head() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let plain = Seen {
            inode: 3,
            peer: addr("10.0.0.2:1000"),
        };
        let mut tracker = Tracker::new(HEAD_DEADLINE);
        assert!(tracker
            .update(at(0), &[plain], HashMap::new(), |_| false)
            .is_empty());
        assert!(tracker.update(at(9), &[plain], head(at(8)), |_| false).is_empty());
        assert!(tracker
            .update(at(38), &[plain], HashMap::new(), |_| false)
            .is_empty());
        assert_eq!(
            tracker.update(at(39), &[plain], HashMap::new(), |_| false),
            vec![plain]
        );
        // A stream opened on it later: passed over for as long as it is open.
        let open = |peer: SocketAddr| peer == plain.peer;
        assert!(tracker.update(at(40), &[plain], head(at(40)), open).is_empty());
        assert!(tracker.update(at(99), &[plain], HashMap::new(), open).is_empty());
        assert!(tracker.is_empty());
    }

    #[test]
    fn heads_without_a_socket_expire() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut tracker = Tracker::new(HEAD_DEADLINE);
        tracker.update(at(0), &[], head(at(0)), |_| false);
        tracker.update(at(2), &[], HashMap::new(), |_| false);
        assert_eq!(tracker.unmatched.len(), 1, "looked for in 3 reads");
        tracker.update(at(4), &[], HashMap::new(), |_| false);
        assert!(tracker.unmatched.is_empty(), "dropped after 3 reads");
        // A socket with that peer showing up later did not deliver it.
        let late = Seen {
            inode: 4,
            peer: addr("10.0.0.2:1000"),
        };
        assert!(tracker
            .update(at(8), &[late], HashMap::new(), |_| false)
            .is_empty());
        assert_eq!(
            tracker.update(at(19), &[late], HashMap::new(), |_| false),
            vec![late]
        );
    }
}

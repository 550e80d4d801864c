//! A running server: start it, learn its address, stop it.
//!
//! Stopping follows the spec's order: stop accepting; let requests already
//! being answered finish (so every `200` for a publish is for an event in the
//! broker); then tell every stream to end, each first writing every event it
//! has not written yet; wait for them, at most until the deadline. Streams
//! still writing shortly before it (their clients read nothing) have their
//! connections cut, so that they end and log their closing lines.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::broker::{Broker, BrokerConfig};
use crate::config::Config;
use crate::head_guard::{HeadGuard, HeadLog};
use crate::listener::{self, KeepAwake};
use crate::periodic::Periodic;
use crate::redis_bus::{BusError, RedisBus};
use crate::stats::Stats;
use crate::stream::StreamSettings;
use crate::stream_log::StreamLog;

/// How long a stop may take from signal to return, leaving the process time
/// to exit within the spec's 2 s.
const STOP_DEADLINE: Duration = Duration::from_millis(1700);

/// How long before [`STOP_DEADLINE`] a stop cuts the connections of the
/// streams still writing: time for their threads to end and log.
const STREAM_CUT_MARGIN: Duration = Duration::from_millis(250);

/// How long stopping waits for the ended streams' lines to be written
/// (`stream_log`); within the 2 s a stop may take.
const STREAM_LOG_FLUSH: Duration = Duration::from_millis(200);

/// Descriptors the table is grown for at start beyond one per stream: a
/// stream's connection holds a second one for a moment, plain requests,
/// Redis, the log.
const DESCRIPTOR_HEADROOM: u64 = 1024;

/// Grows the process's descriptor table at start to hold `count`
/// descriptors, by duplicating `any` to descriptor `count - 1` and closing
/// the copy. The kernel grows the table by doubling when a new descriptor
/// does not fit, and in a process with several threads each growth waits
/// for an RCU grace period while every `accept` of the process waits too:
/// 2-15 ms each time the number of connections passed 64, 128, 256 ...
/// (seen as a stream's first byte late by that much, `perf` showing
/// `accept4` in `expand_files` -> `synchronize_rcu`). Grown once at start,
/// it costs 8 bytes of kernel memory per descriptor (128 KiB for the
/// default 10,000 streams) and never grows again. Best effort.
fn grow_descriptor_table(any: &impl std::os::fd::AsFd, count: u64) {
    use nix::fcntl::{fcntl, FcntlArg};
    let Some(last) = count.checked_sub(1).and_then(|n| i32::try_from(n).ok()) else {
        return;
    };
    match fcntl(any.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(last)) {
        Ok(copy) => {
            let _ = nix::unistd::close(copy);
        }
        Err(e) => log::debug!("cannot grow the descriptor table to {count}: {e}"),
    }
}

/// How long start-up waits for Redis (with `--redis`) before serving anyway.
const REDIS_START_WAIT: Duration = Duration::from_secs(2);

/// Memory mappings each stream thread takes: its stack and guard page, and
/// the alternate signal stack and guard page std gives every thread unless
/// told not to (see [`threads_have_no_signal_stack`]).
static MAPS_PER_THREAD: AtomicUsize = AtomicUsize::new(4);

/// Tells the server that new threads get no alternate signal stack (the
/// `tinysse` binary sees to that before `main`), so that each stream thread
/// takes 2 memory mappings instead of 4 and more streams fit under
/// `vm.max_map_count`.
pub fn threads_have_no_signal_stack() {
    MAPS_PER_THREAD.store(2, Ordering::Relaxed);
}

/// Mappings left for everything else: libraries, heaps, and tiny_http's
/// connection threads during a burst of connects.
const MAPS_RESERVED: usize = 6144;

/// Streams that the kernel's limit on memory mappings per process
/// (`vm.max_map_count`) leaves room for. Near that limit, starting a thread
/// can fail half-way inside std (setting up its signal stack), which aborts
/// the whole process instead of returning an error; so streams past it are
/// refused with `503` like any stream over `--max-connections`.
pub fn streams_allowed(max_map_count: usize, maps_per_thread: usize) -> usize {
    max_map_count.saturating_sub(MAPS_RESERVED) / maps_per_thread.max(1)
}

/// Descriptors kept for everything but open streams (a quarter of the
/// limit when that is less): the server's own files, publishers and other
/// plain requests, `503` answers past the stream limit, and above all the
/// second descriptor tiny_http holds for each new connection until its
/// reader leaves (a stream's at once, its connection taken out of tiny_http,
/// see `http::streams::open_stream`; a silent new connection's after the 2 s read
/// timeout).
/// 1,000 covers a burst of 500 connects a second right up to
/// the stream limit; a faster one runs out of descriptors for a moment, and
/// its connections wait in the listen backlog (see `acceptor`).
pub const FDS_RESERVED: usize = 1000;

/// Streams the open files limit leaves room for. A stream holds one
/// descriptor; were the limit reached, `accept` would fail and new
/// connections would wait unanswered instead of getting `503`.
pub fn streams_allowed_by_open_files(open_files: u64) -> usize {
    let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
    open_files - FDS_RESERVED.min(open_files / 4)
}

/// Lowers `--max-connections` to `allowed` if it is above, saying `why`.
fn lower_max_connections(config: &mut Config, allowed: usize, why: std::fmt::Arguments<'_>) {
    if config.max_connections > allowed {
        log::warn!(
            "--max-connections {} lowered to {allowed}: {why}",
            config.max_connections
        );
        config.max_connections = allowed;
    }
}

/// The kernel's default `vm.max_map_count`.
const DEFAULT_MAX_MAP_COUNT: usize = 65_530;

fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What every thread of a server shares.
pub struct App {
    /// The validated options.
    pub config: Config,
    /// Channels and subscribers.
    pub broker: Arc<Broker>,
    /// The link to Redis when channels are shared between nodes (`--redis`).
    pub redis: Option<RedisBus>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// What every stream needs to know.
    pub stream_settings: StreamSettings,
    /// The request heads received, for the head guard.
    pub heads: Arc<HeadLog>,
    /// Where streams send their closing lines.
    pub stream_log: StreamLog,
    /// Ready (disconnected) once streams must end.
    pub shutdown_rx: Receiver<()>,
    shutdown_tx: Mutex<Option<Sender<()>>>,
    stopping: AtomicBool,
    /// Set when the stop shut the connections of streams still open near
    /// its deadline: a write that fails from now on was cut by the stop.
    streams_cut: AtomicBool,
    requests_in_flight: AtomicUsize,
}

impl App {
    /// True once the server is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// True once the stop cut the connections of the streams it still
    /// waited for (see [`Server::stop`]).
    pub fn streams_were_cut(&self) -> bool {
        self.streams_cut.load(Ordering::Acquire)
    }

    /// Counts one request in progress, unless the server is stopping. A
    /// stop waits a while for the requests in progress, so that a publish
    /// among them is in the broker before the streams end (one that takes
    /// longer, its body slow, is refused by the closed broker); one that
    /// comes later is not served. (Counted before the check, which a stop
    /// makes after `stopping` is set: either sees the other.)
    pub fn begin_request(self: &Arc<Self>) -> Option<RequestGuard> {
        self.requests_in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = RequestGuard {
            app: Arc::clone(self),
        };
        (!self.stopping.load(Ordering::SeqCst)).then_some(guard)
    }
}

/// One request in flight; dropping it ends the count.
pub struct RequestGuard {
    app: Arc<App>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.app.requests_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the server could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the address failed.
    Bind {
        /// The address asked for.
        address: String,
        /// The error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    Thread(std::io::Error),
    /// The `--redis` URL cannot be used.
    Redis(BusError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind { address, source } => write!(f, "cannot listen on {address}: {source}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            StartError::Redis(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server.
pub struct Server {
    app: Arc<App>,
    addr: SocketAddr,
    dispatcher: Option<JoinHandle<()>>,
    keep_awake: Option<KeepAwake>,
    head_guard: Option<HeadGuard>,
    _ping_clock: Periodic,
}

/// How often the ping clock looks for streams whose ping is due: a thirtieth
/// of the ping interval (0.5 s for the default 15 s), so that a ping comes at
/// most that late, but not more often than every 10 ms.
fn ping_clock_period(ping_interval: Duration) -> Duration {
    (ping_interval / 30).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

impl Server {
    /// Binds and starts serving in background threads.
    ///
    /// # Errors
    /// [`StartError`] when the address cannot be bound or a thread started.
    pub fn start(mut config: Config) -> Result<Server, StartError> {
        // Hidden (systemd's `ProcSubset=pid`, say): the kernel's default,
        // rather than no cap at all.
        let (maps, known) = match max_map_count() {
            Some(maps) => (maps, "is"),
            None => (
                DEFAULT_MAX_MAP_COUNT,
                "cannot be read here; assumed the kernel's default",
            ),
        };
        let maps_per_thread = MAPS_PER_THREAD.load(Ordering::Relaxed);
        lower_max_connections(
            &mut config,
            streams_allowed(maps, maps_per_thread),
            format_args!(
                "vm.max_map_count {known} {maps} and each stream thread takes {maps_per_thread} memory mappings"
            ),
        );
        let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        if let Some(open_files) = open_files {
            lower_max_connections(
                &mut config,
                streams_allowed_by_open_files(open_files),
                format_args!(
                    "the open files limit is {open_files}, and some are kept for connections that are not streams"
                ),
            );
        }
        let tcp = listener::bind(&config.host, config.port, config.write_timeout).map_err(|source| {
            StartError::Bind {
                address: format!("{}:{}", config.host, config.port),
                source,
            }
        })?;
        let addr = tcp.local_addr().map_err(StartError::Thread)?;
        crate::sock_diag::open_lookup_socket();
        let descriptors =
            (config.max_connections as u64 + DESCRIPTOR_HEADROOM).min(open_files.unwrap_or(u64::MAX));
        grow_descriptor_table(&tcp, descriptors);
        let broker = Broker::new(BrokerConfig {
            history: config.history,
            queue_size: config.queue_size,
            max_channels: config.max_channels,
        });
        let redis = match &config.redis {
            Some(url) => {
                Some(RedisBus::start(url, Arc::clone(&broker), REDIS_START_WAIT).map_err(StartError::Redis)?)
            }
            None => None,
        };
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded(0);
        let app = Arc::new(App {
            stream_settings: StreamSettings {
                ping_interval: config.ping_interval,
                retry: config.retry,
                cors_origin: config.cors_origin.clone(),
                write_timeout: config.write_timeout,
            },
            config,
            broker,
            redis,
            stats: Arc::new(Stats::default()),
            heads: Arc::new(HeadLog::default()),
            stream_log: StreamLog::start().map_err(StartError::Thread)?,
            shutdown_rx,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            stopping: AtomicBool::new(false),
            streams_cut: AtomicBool::new(false),
            requests_in_flight: AtomicUsize::new(0),
        });
        let period = ping_clock_period(app.config.ping_interval);
        let clock_broker = Arc::clone(&app.broker);
        let ping_clock = Periodic::start("ping-clock", period, move || {
            clock_broker.wake_due_pings(Instant::now());
            period
        })
        .map_err(StartError::Thread)?;
        let head_guard = HeadGuard::start(addr.port(), Arc::clone(&app.heads)).map_err(StartError::Thread)?;
        let keep_awake = KeepAwake::start(listener::connect_address(addr)).map_err(StartError::Thread)?;
        let dispatch_app = Arc::clone(&app);
        let dispatcher = std::thread::Builder::new()
            .name("dispatch".into())
            .spawn(move || crate::http::dispatch(&dispatch_app, &tcp))
            .map_err(StartError::Thread)?;
        Ok(Server {
            app,
            addr,
            dispatcher: Some(dispatcher),
            keep_awake: Some(keep_awake),
            head_guard: Some(head_guard),
            _ping_clock: ping_clock,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state, for embedding and tests.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops: no new connections, requests in progress finish, every stream
    /// writes what was accepted and ends. Returns within about 1.7 s.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let started = Instant::now();
        let deadline = started + STOP_DEADLINE;
        self.app.stopping.store(true, Ordering::SeqCst);
        self.keep_awake.take();
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.join();
        }
        // Publishes in progress finish before streams are told to end, so
        // each accepted event is in the broker by then.
        let requests = || self.app.requests_in_flight.load(Ordering::SeqCst);
        wait_while(started + STOP_DEADLINE / 2, || requests() > 0);
        let unfinished = requests();
        if unfinished > 0 {
            log::warn!(
                "{unfinished} requests still in progress (a body still arriving, say): what they publish from now on is refused; their answers are waited for until the stop's deadline"
            );
        }
        let streams = self.app.stats.open_streams();
        drop(
            self.app
                .shutdown_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        self.app.broker.close();
        let open_streams = || self.app.stats.open_streams() > 0;
        wait_while(deadline - STREAM_CUT_MARGIN, open_streams);
        if open_streams() {
            // Left: streams whose writes are blocked (clients that read
            // nothing; a write may wait `--write-timeout`). Their writes
            // fail once their connections are shut, and they end with
            // their closing lines before the exit.
            // (Counted before the cut: they end as soon as it is done.)
            let writing = self.app.stats.open_streams();
            self.app.streams_cut.store(true, Ordering::Release);
            let cut = self.app.heads.shut_down_streams(self.addr.port());
            log::warn!(
                "{writing} streams still writing (clients not reading) at the stop's deadline: {cut} connections cut"
            );
            wait_while(deadline, open_streams);
        }
        // Requests still in progress get their answer (a publish: 503, the
        // broker is closed) before the process may exit, as far as the
        // deadline allows.
        wait_while(deadline, || requests() > 0);
        self.head_guard.take();
        // The ended streams' lines first.
        self.app.stream_log.flush(STREAM_LOG_FLUSH);
        log::info!(
            "stopped in {}: {} streams ended, {} still writing",
            crate::stream::elapsed_text(started),
            streams,
            self.app.stats.open_streams()
        );
    }
}

/// Waits, 5 ms at a time, while `busy` and `deadline` is not reached.
fn wait_while(deadline: Instant, busy: impl Fn() -> bool) {
    while busy() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.dispatcher.is_some() {
            self.stop_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a free loopback port, without the demo ticker.
    fn start_on_a_free_port() -> Server {
        let config = Config {
            port: 0,
            tick_interval: None,
            max_connections: 100,
            ..Config::default()
        };
        Server::start(config).expect("start")
    }

    #[test]
    fn a_stopped_server_is_not_kept_alive_by_its_open_connections() {
        use std::io::{Read, Write};
        let server = start_on_a_free_port();
        // A kept-alive connection, idle: its thread waits 5 s for a next
        // request.
        let mut connection = std::net::TcpStream::connect(server.local_addr()).expect("connect");
        connection
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        connection
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = [0u8; 512];
        let read = connection.read(&mut answer).expect("an answer");
        assert!(answer[..read].starts_with(b"HTTP/1.1 200 OK"));
        let app = Arc::downgrade(server.app());
        server.stop();
        let deadline = Instant::now() + Duration::from_secs(3);
        while app.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the app outlived its server");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(connection);
    }

    /// Reads what `connection` is sent until it closes (or 5 s pass).
    fn read_to_close(connection: &mut std::net::TcpStream) -> String {
        use std::io::Read;
        connection
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = connection.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn a_request_arriving_while_stopping_gets_503_and_closes_while_one_in_progress_is_served() {
        use std::io::{Read, Write};
        let server = start_on_a_free_port();
        let app = Arc::clone(server.app());
        let connect = || {
            let connection = std::net::TcpStream::connect(server.local_addr()).expect("connect");
            connection
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            connection
        };
        // A kept-alive connection, answered once and idle.
        let mut idle = connect();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let mut answer = [0u8; 512];
        let read = idle.read(&mut answer).expect("an answer");
        assert!(answer[..read].starts_with(b"HTTP/1.1 200 OK"));
        // (Its count ends just after its answer.)
        let deadline = Instant::now() + Duration::from_secs(5);
        while app.requests_in_flight.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "the answered request is still counted");
            std::thread::sleep(Duration::from_millis(2));
        }
        // A publish in progress: its body is not all there (over 1 KiB:
        // tiny_http reads a smaller one whole before the handler starts).
        let mut publishing = connect();
        let head = "POST /publish?channel=c HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2000\r\n\r\n";
        publishing.write_all(head.as_bytes()).expect("send");
        publishing.write_all(&[b'a'; 1500]).expect("send");
        let deadline = Instant::now() + Duration::from_secs(5);
        while app.requests_in_flight.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the publish never started");
            std::thread::sleep(Duration::from_millis(2));
        }
        let stopper = std::thread::spawn(move || server.stop());
        while !app.is_stopping() {
            assert!(Instant::now() < deadline, "the stop never started");
            std::thread::sleep(Duration::from_millis(2));
        }
        // A request that comes once the stop began is refused, and its
        // connection closed; the publish that began before is served. (Its
        // body's end is sent at once: the stop waits for it only so long,
        // and on a loaded machine reading the refusal first took longer.)
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        publishing.write_all(&[b'a'; 500]).expect("the rest of the body");
        let refused = read_to_close(&mut idle);
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("Retry-After: 1\r\n"), "{refused}");
        assert!(refused.contains("Connection: close\r\n"), "{refused}");
        assert!(refused.contains("the server is stopping"), "{refused}");
        let mut answer = [0u8; 1024];
        let read = publishing.read(&mut answer).expect("the publish's answer");
        let published = String::from_utf8_lossy(&answer[..read]);
        assert!(published.starts_with("HTTP/1.1 200 OK"), "{published}");
        stopper.join().expect("the stop");
    }

    #[test]
    fn streams_allowed_leaves_room_for_other_mappings() {
        assert_eq!(streams_allowed(65530, 4), 14846);
        assert_eq!(streams_allowed(262_144, 4), 64_000);
        assert_eq!(streams_allowed(100, 4), 0);
        // Without std's signal stacks (the binary's case), 19,000 fit.
        assert_eq!(streams_allowed(65530, 2), 29693);
    }

    #[test]
    fn streams_allowed_by_open_files_keeps_a_reserve() {
        assert_eq!(streams_allowed_by_open_files(20_000), 19_000);
        assert_eq!(streams_allowed_by_open_files(1024), 768);
        assert_eq!(streams_allowed_by_open_files(100), 75);
        assert_eq!(streams_allowed_by_open_files(0), 0);
        assert_eq!(streams_allowed_by_open_files(u64::MAX), usize::MAX - 1000);
    }
}

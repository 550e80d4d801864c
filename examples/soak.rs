//! Soak test: churn thousands of connections against a real tinysse process
//! while publishing, then report leaked threads and descriptors and lost
//! events.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example soak -- --seconds 600 --connections 2000
//! ```
//!
//! Every client slot runs one behaviour in a loop until the time is up:
//! - `reader` (60%): subscribes with its last seen id as `Last-Event-ID`,
//!   reads for 0.5-5 s, closes normally;
//! - `rst` (20%): the same, but ends with a reset (linger 0);
//! - `staller` (10%): subscribes with a tiny receive buffer and stops reading
//!   for 5-30 s (the server may drop it as slow), reads for half a second,
//!   then reconnects with its last id and catches up with a normal buffer;
//! - `churner` (10%): connects, reads the head, closes at once.
//!
//! Readers, rst clients and stallers each keep one chain of sessions on one
//! channel; at the end every chain must be a gap-free, duplicate-free run of
//! the ids that `POST /publish` answered `200` for on that channel: an id
//! missing between two received ones is a lost event, unless the session
//! that resumed after it connected more than `--history` events later (then
//! the event had left the history, as the spec allows: `gap_beyond_history`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::SockRef;

const CHANNELS: usize = 8;

/// `--history` of the server the soak starts.
const HISTORY: usize = 2000;

struct Options {
    seconds: u64,
    connections: usize,
    rate: u64,
    server: String,
    server_log: Option<String>,
}

fn parse_options() -> Options {
    let exe = std::env::current_exe().expect("current exe");
    let default_server = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("tinysse").display().to_string())
        .unwrap_or_else(|| "tinysse".into());
    let mut options = Options {
        seconds: 60,
        connections: 500,
        rate: 50,
        server: default_server,
        server_log: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--seconds" => options.seconds = value.parse().unwrap_or_else(|_| usage("bad --seconds")),
            "--connections" => {
                options.connections = value.parse().unwrap_or_else(|_| usage("bad --connections"))
            }
            "--rate" => options.rate = value.parse().unwrap_or_else(|_| usage("bad --rate")),
            "--server" => options.server = value,
            "--server-log" => options.server_log = Some(value),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    options.seconds = options.seconds.clamp(1, 3600);
    options.connections = options.connections.clamp(10, 8000);
    options.rate = options.rate.clamp(1, 2000);
    options
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "soak: {problem}\nusage: soak [--seconds N] [--connections N] [--rate EVENTS_PER_S] [--server PATH] [--server-log FILE]"
    );
    std::process::exit(2)
}

/// What every client thread reports into.
#[derive(Default)]
struct Tally {
    sessions: AtomicU64,
    churns: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
    dropped_by_server: AtomicU64,
    events_received: AtomicU64,
    connect_errors: AtomicU64,
    refused_503: AtomicU64,
}

/// One chain of sessions on one channel: every id received, in order.
struct Chain {
    channel: usize,
    ids: Vec<u64>,
    /// Per session: where its ids start in `ids`, its local port (to find it
    /// in the server's log), the `Last-Event-ID` it sent, and how many events
    /// had been published on the channel when it connected.
    sessions: Vec<(usize, u16, Option<u64>, usize)>,
}

fn main() {
    let options = parse_options();
    let mut server = start_server(&options.server, options.server_log.as_deref());
    let addr = server.1;
    let pid = server.0.id();
    // The baseline: the server after one request, once its thread count
    // holds still (tiny_http starts its pool lazily).
    let _ = open_streams(addr);
    let mut threads_before = proc_threads(pid);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(500));
        let now = proc_threads(pid);
        if now == threads_before {
            break;
        }
        threads_before = now;
    }
    let fds_before = proc_fds(pid);
    let rss_before = proc_rss_kib(pid);
    eprintln!(
        "soak: server pid {pid} on {addr}; {} connections for {} s, {} events/s",
        options.connections, options.seconds, options.rate
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let published: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); CHANNELS]));
    let publish_errors = Arc::new(AtomicU64::new(0));

    let publisher = {
        let (stop, published, errors) = (
            Arc::clone(&stop),
            Arc::clone(&published),
            Arc::clone(&publish_errors),
        );
        let every = Duration::from_micros(1_000_000 / options.rate);
        std::thread::spawn(move || {
            let mut next = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Acquire) {
                let channel = (n as usize) % CHANNELS;
                let size = if n % 10 == 0 { 4096 } else { 200 };
                let body = format!("{n:>size$}");
                match publish(addr, channel, &body) {
                    Some(id) => published.lock().unwrap()[channel].push(id),
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };

    let mut clients = Vec::with_capacity(options.connections);
    for slot in 0..options.connections {
        let (stop, tally, published) = (Arc::clone(&stop), Arc::clone(&tally), Arc::clone(&published));
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || run_client(slot, addr, &stop, &tally, &published))
            .expect("spawn client thread");
        clients.push(handle);
        if slot % 100 == 99 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "soak: {} s left, server threads {} fds {} rss {} KiB, sessions {}, events {}",
                deadline.saturating_duration_since(Instant::now()).as_secs(),
                proc_threads(pid),
                proc_fds(pid),
                proc_rss_kib(pid),
                tally.sessions.load(Ordering::Relaxed),
                tally.events_received.load(Ordering::Relaxed)
            );
        }
    }
    stop.store(true, Ordering::Release);
    let _ = publisher.join();
    let chains: Vec<Chain> = clients
        .into_iter()
        .filter_map(|h| h.join().ok().flatten())
        .collect();

    // Let the server notice every departure, then let its idle pool threads end.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while open_streams(addr) != Some(0) && Instant::now() < settle_deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    while (proc_threads(pid) > threads_before || proc_fds(pid) > fds_before)
        && Instant::now() < settle_deadline
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let threads_after = proc_threads(pid);
    let fds_after = proc_fds(pid);
    let rss_after = proc_rss_kib(pid);

    let published = published.lock().unwrap().clone();
    let (mut lost, mut beyond_history, mut duplicated, mut checked) = (0u64, 0u64, 0u64, 0u64);
    // Lost events by the half-minute of the run in which the gap began.
    let mut lost_by_half_minute: Vec<u64> = vec![0; (options.seconds as usize) / 30 + 2];
    let run_started_micros = now_micros().saturating_sub(started.elapsed().as_micros() as u64);
    for chain in &chains {
        let list = &published[chain.channel];
        for (at, pair) in chain.ids.windows(2).enumerate() {
            checked += 1;
            let (a, b) = (pair[0], pair[1]);
            if b <= a {
                duplicated += 1;
                continue;
            }
            let session = chain.sessions.iter().rev().find(|(start, ..)| *start <= at + 1);
            let (missing, evicted) = match (list.binary_search(&a), list.binary_search(&b)) {
                (Ok(i), Ok(j)) => {
                    // Events after `a` already published when the session that
                    // resumed from `a` connected: past the history, they are
                    // gone by design (the spec's "while the gap fits").
                    let behind = session.map_or(0, |s| s.3.saturating_sub(i + 1));
                    ((j - i - 1) as u64, behind > HISTORY)
                }
                _ => (1, false),
            };
            if evicted {
                beyond_history += missing;
                continue;
            }
            if missing > 0 && lost < 2000 {
                eprintln!(
                    "soak: lost {missing} between {a} and {b} on channel soak{} (chain of {} ids; \
                     session of {b}: {session:?} as (first index, local port, Last-Event-ID sent, published before))",
                    chain.channel,
                    chain.ids.len()
                );
            }
            lost += missing;
            if missing > 0 {
                let offset = a.saturating_sub(run_started_micros) / 30_000_000;
                let bucket = (offset as usize).min(lost_by_half_minute.len() - 1);
                lost_by_half_minute[bucket] += missing;
            }
        }
    }
    let published_total: usize = published.iter().map(Vec::len).sum();
    let report = format!(
        concat!(
            "{{\"seconds\":{},\"connections\":{},\"rate\":{},\"published\":{},\"publish_errors\":{},",
            "\"sessions\":{},\"churns\":{},\"resets\":{},\"stalls\":{},\"dropped_by_server\":{},",
            "\"refused_503\":{},\"connect_errors\":{},\"events_received\":{},\"pairs_checked\":{},",
            "\"lost_events\":{},\"gap_beyond_history\":{},\"duplicated_or_reordered\":{},\"threads_before\":{},\"threads_after\":{},",
            "\"leaked_threads\":{},\"fds_before\":{},\"fds_after\":{},\"leaked_fds\":{},",
            "\"rss_kib_before\":{},\"rss_kib_after\":{}}}"
        ),
        options.seconds,
        options.connections,
        options.rate,
        published_total,
        publish_errors.load(Ordering::Relaxed),
        tally.sessions.load(Ordering::Relaxed),
        tally.churns.load(Ordering::Relaxed),
        tally.resets.load(Ordering::Relaxed),
        tally.stalls.load(Ordering::Relaxed),
        tally.dropped_by_server.load(Ordering::Relaxed),
        tally.refused_503.load(Ordering::Relaxed),
        tally.connect_errors.load(Ordering::Relaxed),
        tally.events_received.load(Ordering::Relaxed),
        checked,
        lost,
        beyond_history,
        duplicated,
        threads_before,
        threads_after,
        threads_after.saturating_sub(threads_before),
        fds_before,
        fds_after,
        fds_after.saturating_sub(fds_before),
        rss_before,
        rss_after,
    );
    println!("{report}");
    if lost > 0 {
        eprintln!("soak: lost events by half-minute of the run: {lost_by_half_minute:?}");
    }
    let _ = server.0.kill();
    let _ = server.0.wait();
}

fn start_server(path: &str, log_file: Option<&str>) -> (Child, SocketAddr) {
    let (level, stderr) = match log_file {
        Some(file) => (
            "info",
            Stdio::from(std::fs::File::create(file).unwrap_or_else(|e| usage(&format!("{file}: {e}")))),
        ),
        None => ("warn", Stdio::inherit()),
    };
    let mut child = Command::new(path)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tick-interval",
            "0",
            "--log",
            level,
        ])
        .args([
            "--ping-interval",
            "2s",
            "--write-timeout",
            "3s",
            "--queue-size",
            "64",
        ])
        .args(["--max-connections", "9000", "--history", &HISTORY.to_string()])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| {
            usage(&format!(
                "cannot start {path} ({e}); run `cargo build --release` first"
            ))
        });
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server's first line");
    let addr = line
        .trim()
        .strip_prefix("tinysse listening on http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage(&format!("unexpected first line from the server: {line:?}")));
    (child, addr)
}

fn publish(addr: SocketAddr, channel: usize, body: &str) -> Option<u64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!(
        "POST /publish?channel=soak{channel} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    if !answer.starts_with("HTTP/1.1 200") {
        return None;
    }
    json_member(&answer, "id")?.as_str()?.parse().ok()
}

fn open_streams(addr: SocketAddr) -> Option<u64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    json_member(&answer, "open_streams")?.as_u64()
}

/// Member `key` of the JSON body of the whole answer `answer`.
fn json_member(answer: &str, key: &str) -> Option<serde_json::Value> {
    let (_, body) = answer.split_once("\r\n\r\n")?;
    let mut body: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(body.get_mut(key)?.take())
}

/// A small deterministic generator, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reader,
    Rst,
    Staller,
    Churner,
}

fn run_client(
    slot: usize,
    addr: SocketAddr,
    stop: &AtomicBool,
    tally: &Tally,
    published: &Mutex<Vec<Vec<u64>>>,
) -> Option<Chain> {
    let kind = match slot % 10 {
        0..=5 => Kind::Reader,
        6 | 7 => Kind::Rst,
        8 => Kind::Staller,
        _ => Kind::Churner,
    };
    let channel = slot % CHANNELS;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (slot as u64 + 1));
    // A staller alternates: one session stalled, the next one catching up
    // with a normal buffer, so that it keeps within the server's history.
    let mut catching_up = false;
    let mut chain = Chain {
        channel,
        ids: Vec::new(),
        sessions: Vec::new(),
    };
    while !stop.load(Ordering::Acquire) {
        let last = chain.ids.last().copied();
        let stalling = kind == Kind::Staller && !catching_up;
        let Some(mut session) = Session::open(addr, channel, last, stalling) else {
            tally.connect_errors.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(rng.millis(200, 1000));
            continue;
        };
        if session.refused {
            tally.refused_503.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(rng.millis(500, 2000));
            continue;
        }
        tally.sessions.fetch_add(1, Ordering::Relaxed);
        let port = session.stream.local_addr().map_or(0, |a| a.port());
        let published_so_far = published.lock().unwrap()[channel].len();
        chain
            .sessions
            .push((chain.ids.len(), port, last, published_so_far));
        match kind {
            Kind::Churner => {
                tally.churns.fetch_add(1, Ordering::Relaxed);
                drop(session);
                std::thread::sleep(rng.millis(300, 1000));
                continue;
            }
            Kind::Staller if catching_up => {
                catching_up = false;
                // Read until the stream has been quiet for a second: caught up.
                for _ in 0..60 {
                    let before = chain.ids.len();
                    if session.read_for(Duration::from_secs(1), &mut chain.ids, tally) {
                        tally.dropped_by_server.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if chain.ids.len() == before || stop.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
            Kind::Staller => {
                catching_up = true;
                tally.stalls.fetch_add(1, Ordering::Relaxed);
                let stall = rng.millis(5000, 30000);
                let until = Instant::now() + stall;
                while Instant::now() < until && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                // Drain what the kernel holds; the server may have closed us.
                if session.read_for(Duration::from_millis(500), &mut chain.ids, tally) {
                    tally.dropped_by_server.fetch_add(1, Ordering::Relaxed);
                }
            }
            Kind::Reader | Kind::Rst => {
                let lifetime = rng.millis(500, 5000);
                if session.read_for(lifetime, &mut chain.ids, tally) {
                    tally.dropped_by_server.fetch_add(1, Ordering::Relaxed);
                }
                if kind == Kind::Rst {
                    let _ = SockRef::from(&session.stream).set_linger(Some(Duration::ZERO));
                    tally.resets.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    (kind != Kind::Churner).then_some(chain)
}

struct Session {
    stream: TcpStream,
    buffer: Vec<u8>,
    refused: bool,
}

impl Session {
    fn open(addr: SocketAddr, channel: usize, last: Option<u64>, tiny_buffer: bool) -> Option<Session> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        if tiny_buffer {
            let _ = SockRef::from(&stream).set_recv_buffer_size(4096);
        }
        let mut request = format!("GET /events?channel=soak{channel} HTTP/1.1\r\nHost: x\r\n");
        if let Some(id) = last {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        let mut session = Session {
            stream,
            buffer: Vec::new(),
            refused: false,
        };
        session.stream.write_all(request.as_bytes()).ok()?;
        session
            .stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = find(&session.buffer, b"\r\n\r\n") {
                session.refused = !session.buffer.starts_with(b"HTTP/1.1 200");
                session.buffer.drain(..at + 4);
                return Some(session);
            }
            let n = session.stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            session.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads events for `how_long`, appending their ids; true when the
    /// server closed the stream.
    fn read_for(&mut self, how_long: Duration, ids: &mut Vec<u64>, tally: &Tally) -> bool {
        let until = Instant::now() + how_long;
        let mut chunk = [0u8; 16384];
        loop {
            while let Some(at) = find(&self.buffer, b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..at + 2).collect();
                let text = String::from_utf8_lossy(&block);
                if let Some(id) = text.lines().find_map(|l| l.strip_prefix("id: ")) {
                    if let Ok(id) = id.trim().parse() {
                        ids.push(id);
                        tally.events_received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn proc_threads(pid: u32) -> u64 {
    proc_status_field(pid, "Threads:")
}

fn proc_rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS:")
}

fn proc_status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn proc_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

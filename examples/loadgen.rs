//! Load generator for any server speaking tinysse's API: opens N subscriber
//! streams (`GET /events?channel=...`), publishes K events at R per second on
//! a fixed schedule (`POST /publish?channel=...`, the data carries its
//! scheduled send time), and prints one JSON line with what it measured.
//!
//!     cargo build --release --examples
//!     target/release/tinysse --max-connections 20000 --tick-interval 0 &
//!     target/release/examples/loadgen --addr 127.0.0.1:8000 --pid $! \
//!         --streams 10000 --events 100 --rate 10
//!
//! One process can hold fewer than 20,000 descriptors here, so the streams are
//! spread over worker processes (copies of this program started with
//! `--worker`), `--per-worker` streams each. The parent measures the server
//! through `/proc/<pid>` and `/proc/meminfo`, publishes, and adds up what the
//! workers report. Every loop is bounded in count and time; it talks to the
//! given address only, which should be on loopback.
//!
//! Times are taken when the kernel received the bytes (`SO_TIMESTAMPNS`), not
//! when this program got to read them: on a loaded 2-core box a client waits
//! for a core too, and that wait is the client's, not the server's. The times
//! seen by the program are reported as well (`latency_user_ms`,
//! `publish_user_ms`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Options of both the parent and the workers.
#[derive(Debug, Clone)]
struct Options {
    addr: SocketAddr,
    pid: Option<u32>,
    streams: usize,
    events: usize,
    rate: f64,
    size: usize,
    channel: String,
    per_worker: usize,
    /// Connection attempts in flight at once, all workers together.
    concurrency: usize,
    /// New connections per second, all workers together (0: no limit).
    connect_rate: f64,
    /// Seconds to wait after the last stream connected before measuring.
    settle: f64,
    /// Seconds to wait for deliveries after the last scheduled publish.
    grace: f64,
    /// Single streams opened one by one on the idle server to time the first byte.
    probes: usize,
    worker: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: "127.0.0.1:8000".parse().expect("a valid constant address"),
            pid: None,
            streams: 1000,
            events: 100,
            rate: 10.0,
            size: 64,
            channel: "bench".into(),
            per_worker: 9000,
            concurrency: 64,
            connect_rate: 2000.0,
            settle: 7.0,
            grace: 30.0,
            probes: 20,
            worker: false,
        }
    }
}

const HELP: &str = "loadgen [--addr HOST:PORT] [--pid PID] [--streams N] [--events K] [--rate R]
        [--size BYTES] [--channel NAME] [--per-worker N] [--concurrency N]
        [--connect-rate N] [--settle SECONDS] [--grace SECONDS] [--probes N]";

fn parse_args() -> Result<Options, String> {
    use lexopt::prelude::*;
    fn num<T: std::str::FromStr>(parser: &mut lexopt::Parser, name: &str) -> Result<T, String> {
        let raw = parser.value().map_err(|e| e.to_string())?;
        let text = raw.to_string_lossy().into_owned();
        text.parse()
            .map_err(|_| format!("invalid value '{text}' for --{name}"))
    }
    let mut o = Options::default();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("addr") => o.addr = num(&mut parser, "addr")?,
            Long("pid") => o.pid = Some(num(&mut parser, "pid")?),
            Long("streams") => o.streams = num(&mut parser, "streams")?,
            Long("events") => o.events = num(&mut parser, "events")?,
            Long("rate") => o.rate = num(&mut parser, "rate")?,
            Long("size") => o.size = num(&mut parser, "size")?,
            Long("channel") => o.channel = num(&mut parser, "channel")?,
            Long("per-worker") => o.per_worker = num(&mut parser, "per-worker")?,
            Long("concurrency") => o.concurrency = num(&mut parser, "concurrency")?,
            Long("connect-rate") => o.connect_rate = num(&mut parser, "connect-rate")?,
            Long("settle") => o.settle = num(&mut parser, "settle")?,
            Long("grace") => o.grace = num(&mut parser, "grace")?,
            Long("probes") => o.probes = num(&mut parser, "probes")?,
            Long("worker") => o.worker = true,
            Long("help") | Short('h') => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("{}\n{HELP}", other.unexpected())),
        }
    }
    if o.rate <= 0.0 || o.per_worker == 0 || o.concurrency == 0 || o.size < 40 {
        return Err("--rate, --per-worker and --concurrency must be positive, --size at least 40".into());
    }
    Ok(o)
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    // The hard limit is what this process may hold; take all of it.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if options.worker {
        worker::run(&options);
    } else {
        let result = parent(&options);
        println!("{result}");
    }
}

/// Reads with the kernel's receive time (`SO_TIMESTAMPNS`, wall clock).
mod stamp {
    use std::io::IoSliceMut;
    use std::os::fd::{AsFd, AsRawFd};

    use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};

    /// Asks the kernel to stamp what `socket` receives.
    pub fn enable(socket: &impl AsFd) -> std::io::Result<()> {
        socket::setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(std::io::Error::from)
    }

    /// One `recvmsg` into `buf`: the bytes read and, when the kernel gave
    /// one, the receive time of the last segment read, in µs since the epoch.
    pub fn recv(socket: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
        let mut iov = [IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let msg = socket::recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space[..]),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let mut at = None;
        for message in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmTimestampns(t) = message {
                at = Some(t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000);
            }
        }
        Ok((msg.bytes, at))
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Latency in µs, rounded down to a resolution that keeps the histogram small:
/// 10 µs below 10 ms, 100 µs below 1 s, 10 ms above.
fn quantize(us: u64) -> u64 {
    match us {
        0..=9_999 => us / 10 * 10,
        10_000..=999_999 => us / 100 * 100,
        _ => us / 10_000 * 10_000,
    }
}

/// The value at quantile `q` of a histogram (value -> count), in ms.
fn quantile_ms(histogram: &BTreeMap<u64, u64>, q: f64) -> Option<f64> {
    let total: u64 = histogram.values().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (value, count) in histogram {
        seen += count;
        if seen >= rank {
            return Some(*value as f64 / 1000.0);
        }
    }
    None
}

fn summary_ms(histogram: &BTreeMap<u64, u64>) -> Value {
    let round = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
    json!({
        "p50": round(quantile_ms(histogram, 0.50)),
        "p99": round(quantile_ms(histogram, 0.99)),
        "max": round(quantile_ms(histogram, 1.0)),
        "count": histogram.values().sum::<u64>(),
    })
}

fn histogram_of(samples_us: &[u64]) -> BTreeMap<u64, u64> {
    let mut h = BTreeMap::new();
    for &us in samples_us {
        *h.entry(quantize(us)).or_insert(0) += 1;
    }
    h
}

/// What `/proc` says about the server and the machine's kernel memory.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    rss_kib: u64,
    threads: u64,
    fds: u64,
    cpu_ticks: u64,
    kernel_stack_kib: u64,
    sunreclaim_kib: u64,
    slab_kib: u64,
}

fn meminfo_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn snapshot(pid: Option<u32>) -> Snapshot {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut s = Snapshot {
        kernel_stack_kib: meminfo_field(&meminfo, "KernelStack"),
        sunreclaim_kib: meminfo_field(&meminfo, "SUnreclaim"),
        slab_kib: meminfo_field(&meminfo, "Slab"),
        ..Snapshot::default()
    };
    if let Some(pid) = pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.rss_kib = meminfo_field(&status, "VmRSS");
        s.threads = meminfo_field(&status, "Threads");
        s.fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is 3rd,
        // utime the 14th and stime the 15th field of the whole line.
        if let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) {
            let fields: Vec<&str> = after.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            s.cpu_ticks = field(11) + field(12);
        }
    }
    s
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Times the first byte of single streams on `channel`, one at a time.
fn probe_first_byte(o: &Options, channel: &str) -> BTreeMap<u64, u64> {
    let mut samples = Vec::new();
    for _ in 0..o.probes {
        let Ok(mut stream) = TcpStream::connect_timeout(&o.addr, Duration::from_secs(5)) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_nodelay(true);
        let request = format!(
            "GET /events?channel={channel} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            o.addr
        );
        let start = Instant::now();
        if stream.write_all(request.as_bytes()).is_err() {
            continue;
        }
        let mut byte = [0u8; 1];
        if let Ok(1) = stream.read(&mut byte) {
            samples.push(start.elapsed().as_micros() as u64);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    histogram_of(&samples)
}

/// One keep-alive connection that publishes and times the answers.
struct Publisher {
    addr: SocketAddr,
    conn: Option<TcpStream>,
}

/// A publish answered: its status, and how long the answer took in µs, to
/// its arrival in the kernel and to this program reading it.
struct Answer {
    status: u16,
    kernel_us: u64,
    user_us: u64,
}

impl Publisher {
    fn connect(&mut self) -> std::io::Result<&mut TcpStream> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.set_write_timeout(Some(Duration::from_secs(10)))?;
            stamp::enable(&stream)?;
            self.conn = Some(stream);
        }
        Ok(self.conn.as_mut().expect("connected just above"))
    }

    /// Publishes `data`. A kept-alive connection the server closed while it
    /// was idle is replaced and the request sent once more.
    fn publish(&mut self, channel: &str, data: &str) -> std::io::Result<Answer> {
        let reused = self.conn.is_some();
        match self.publish_once(channel, data) {
            Err(_) if reused => self.publish_once(channel, data),
            outcome => outcome,
        }
    }

    fn publish_once(&mut self, channel: &str, data: &str) -> std::io::Result<Answer> {
        let request = format!(
            "POST /publish?channel={channel} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{data}",
            self.addr,
            data.len()
        );
        let result = (|| {
            let conn = self.connect()?;
            let sent_us = now_micros();
            let sent = Instant::now();
            conn.write_all(request.as_bytes())?;
            let mut answer = Vec::new();
            let mut buf = [0u8; 2048];
            let mut arrived_us = None;
            // Bounded: a head over 16 KiB is an error below.
            loop {
                let (n, at) = stamp::recv(conn, &mut buf)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                arrived_us = arrived_us.or(at);
                answer.extend_from_slice(&buf[..n]);
                if let Some((status, close, whole)) = parse_answer(&answer) {
                    if answer.len() >= whole {
                        let user_us = sent.elapsed().as_micros() as u64;
                        let kernel_us = arrived_us.map_or(user_us, |at| at.saturating_sub(sent_us));
                        return Ok((
                            Answer {
                                status,
                                kernel_us,
                                user_us,
                            },
                            close,
                        ));
                    }
                }
                if answer.len() > 16 * 1024 {
                    return Err(std::io::Error::other("answer head too long"));
                }
            }
        })();
        match result {
            Ok((answer, close)) => {
                if close {
                    self.conn = None;
                }
                Ok(answer)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// An answer's status, whether it closes the connection, and its whole
/// length (head and `Content-Length` body), once its head is complete.
fn parse_answer(raw: &[u8]) -> Option<(u16, bool, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut length, mut close) = (0usize, false);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
    }
    Some((status, close, end + length))
}

/// The data of event `seq` scheduled at `at_us`: exactly `size` bytes.
fn event_data(seq: usize, at_us: u64, size: usize) -> String {
    let mut data = format!("s={seq} t={at_us} ");
    while data.len() < size {
        data.push('x');
    }
    data.truncate(size);
    data
}

struct WorkerHandle {
    child: Child,
    stdin: Option<ChildStdin>,
}

fn spawn_workers(o: &Options, lines_tx: &mpsc::Sender<(usize, String)>) -> Vec<WorkerHandle> {
    let count = o.streams.div_ceil(o.per_worker).max(1);
    let exe = std::env::current_exe().expect("the path of this program");
    let mut workers = Vec::new();
    for index in 0..count {
        let streams = o.streams / count + usize::from(index < o.streams % count);
        let mut child = Command::new(&exe)
            .args(["--worker", "--addr", &o.addr.to_string()])
            .args(["--streams", &streams.to_string()])
            .args(["--events", &o.events.to_string()])
            .args(["--channel", &o.channel])
            .args(["--concurrency", &(o.concurrency / count).max(1).to_string()])
            .args(["--connect-rate", &(o.connect_rate / count as f64).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start a worker process");
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((index, line)).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        workers.push(WorkerHandle { child, stdin });
    }
    workers
}

/// Waits for one line starting with `tag` from every worker, until `deadline`.
fn collect(
    lines_rx: &mpsc::Receiver<(usize, String)>,
    workers: usize,
    tag: &str,
    deadline: Instant,
) -> Vec<Value> {
    let mut got: Vec<Option<Value>> = vec![None; workers];
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((index, line)) = lines_rx.recv_timeout(left) else {
            eprintln!("loadgen: timed out waiting for {tag} from the workers");
            break;
        };
        if let Some(rest) = line.strip_prefix(tag) {
            got[index] = serde_json::from_str(rest.trim()).ok();
        }
    }
    got.into_iter().flatten().collect()
}

fn sum(values: &[Value], key: &str) -> u64 {
    values.iter().map(|v| v[key].as_u64().unwrap_or(0)).sum()
}

fn merge_histograms(values: &[Value], key: &str) -> BTreeMap<u64, u64> {
    let mut h = BTreeMap::new();
    for v in values {
        for pair in v[key].as_array().into_iter().flatten() {
            if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
                *h.entry(value).or_insert(0) += count;
            }
        }
    }
    h
}

fn per_stream(after: u64, before: u64, streams: u64) -> Value {
    if streams == 0 {
        return Value::Null;
    }
    json!(((after as f64 - before as f64) / streams as f64 * 100.0).round() / 100.0)
}

fn parent(o: &Options) -> Value {
    let ticks = clock_ticks_per_second();

    // First byte of a stream on the idle server; then make the probe streams'
    // threads notice their clients left (the second write after a close fails).
    let probe_channel = format!("{}-probe", o.channel);
    let first_byte = probe_first_byte(o, &probe_channel);
    let mut publisher = Publisher {
        addr: o.addr,
        conn: None,
    };
    if o.probes > 0 {
        for seq in 0..2 {
            let _ = publisher.publish(&probe_channel, &event_data(seq, now_micros(), o.size));
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    let before = snapshot(o.pid);

    // Connect every stream through the workers.
    let (lines_tx, lines_rx) = mpsc::channel();
    let connect_start = Instant::now();
    let mut workers = spawn_workers(o, &lines_tx);
    let connect_deadline = connect_start + Duration::from_secs(60 + (o.streams / 100) as u64);
    let ready = collect(&lines_rx, workers.len(), "READY", connect_deadline);
    let connect_s = connect_start.elapsed().as_secs_f64();
    let connected = sum(&ready, "connected");
    let connect_first_byte = merge_histograms(&ready, "first_byte_us");

    std::thread::sleep(Duration::from_secs_f64(o.settle));
    let idle = snapshot(o.pid);

    // Publish on schedule; the workers stop once every stream has every event,
    // or at the deadline.
    let period = Duration::from_secs_f64(1.0 / o.rate);
    let run_length = period * o.events as u32 + Duration::from_secs_f64(o.grace);
    let t0 = Instant::now() + Duration::from_millis(300);
    let t0_us = now_micros() + 300_000;
    let deadline_us = t0_us + run_length.as_micros() as u64;
    for w in &mut workers {
        if let Some(stdin) = w.stdin.as_mut() {
            let _ = writeln!(stdin, "GO {deadline_us}");
            let _ = stdin.flush();
        }
    }
    let cpu_start = snapshot(o.pid).cpu_ticks;
    let mut publish_us = Vec::with_capacity(o.events);
    let mut publish_user_us = Vec::with_capacity(o.events);
    let mut publish_errors = 0u64;
    let mut late_max_us = 0u64;
    for seq in 0..o.events {
        let at = t0 + period * seq as u32;
        let at_us = t0_us + (period * seq as u32).as_micros() as u64;
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        } else {
            late_max_us = late_max_us.max((now - at).as_micros() as u64);
        }
        let data = event_data(seq, at_us, o.size);
        match publisher.publish(&o.channel, &data) {
            Ok(answer) if answer.status == 200 => {
                publish_us.push(answer.kernel_us);
                publish_user_us.push(answer.user_us);
            }
            Ok(_) | Err(_) => publish_errors += 1,
        }
    }
    let results = collect(
        &lines_rx,
        workers.len(),
        "RESULT",
        Instant::now() + run_length + Duration::from_secs(30),
    );
    let cpu_end = snapshot(o.pid).cpu_ticks;
    let after = snapshot(o.pid);

    // Let the workers go, and make sure they are gone.
    for w in &mut workers {
        w.stdin.take();
    }
    for w in &mut workers {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = w.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = w.child.try_wait() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }

    let delivered = sum(&results, "received");
    let cpu_s = cpu_end.saturating_sub(cpu_start) as f64 / ticks;
    let pid_known = o.pid.is_some();
    let rss_per_stream = per_stream(idle.rss_kib, before.rss_kib, connected);
    let kstack = per_stream(idle.kernel_stack_kib, before.kernel_stack_kib, connected);
    let sunreclaim = per_stream(idle.sunreclaim_kib, before.sunreclaim_kib, connected);
    let total = match (rss_per_stream.as_f64(), kstack.as_f64(), sunreclaim.as_f64()) {
        (Some(a), Some(b), Some(c)) if pid_known => json!(((a + b + c) * 100.0).round() / 100.0),
        _ => Value::Null,
    };
    json!({
        "server": o.addr.to_string(),
        "streams": o.streams,
        "events": o.events,
        "rate": o.rate,
        "size": o.size,
        "workers": workers.len(),
        "connected": connected,
        "connect_failed": sum(&ready, "failed"),
        "connect_s": (connect_s * 1000.0).round() / 1000.0,
        "connect_first_byte_ms": summary_ms(&connect_first_byte),
        "idle_first_byte_ms": summary_ms(&first_byte),
        "rss_before_kib": pid_known.then_some(before.rss_kib),
        "rss_connected_kib": pid_known.then_some(idle.rss_kib),
        "rss_after_kib": pid_known.then_some(after.rss_kib),
        "rss_per_stream_kib": if pid_known { rss_per_stream } else { Value::Null },
        "kernel_stack_per_stream_kib": kstack,
        "sunreclaim_per_stream_kib": sunreclaim,
        "slab_per_stream_kib": per_stream(idle.slab_kib, before.slab_kib, connected),
        "total_per_stream_kib": total,
        "threads": pid_known.then(|| json!([before.threads, idle.threads, after.threads])),
        "fds": pid_known.then(|| json!([before.fds, idle.fds, after.fds])),
        "latency_ms": summary_ms(&merge_histograms(&results, "latency_us")),
        "latency_user_ms": summary_ms(&merge_histograms(&results, "latency_user_us")),
        "publish_ms": summary_ms(&histogram_of(&publish_us)),
        "publish_user_ms": summary_ms(&histogram_of(&publish_user_us)),
        "publish_errors": publish_errors,
        "publisher_late_max_ms": late_max_us as f64 / 1000.0,
        "delivered": delivered,
        "missed": sum(&results, "missed"),
        "duplicates": sum(&results, "duplicates"),
        "closed_early": sum(&results, "closed_early"),
        "server_cpu_s": pid_known.then_some(cpu_s),
        "cpu_us_per_delivery": (pid_known && delivered > 0)
            .then(|| (cpu_s * 1e6 / delivered as f64 * 10.0).round() / 10.0),
    })
}

/// A worker: holds its slice of the streams and reports on stdout.
mod worker {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;

    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    const ATTEMPTS: usize = 5;

    /// What the stream tasks share with the worker's main task.
    struct Shared {
        events: usize,
        connected: AtomicUsize,
        failed: AtomicUsize,
        closed_early: AtomicUsize,
        duplicates: AtomicUsize,
        /// Streams that got every event or were closed.
        finished: AtomicUsize,
        /// Events received per stream (index: stream number).
        received: Vec<AtomicU32>,
        /// To the kernel's receive time.
        latencies_us: Mutex<Vec<u64>>,
        /// To the time this program read the event.
        user_latencies_us: Mutex<Vec<u64>>,
        first_byte_us: Mutex<Vec<u64>>,
    }

    pub fn run(o: &Options) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        // Stdin: "GO <deadline µs>", then EOF when the parent is done.
        let (eof_tx, mut eof_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("GO ") {
                    let _ = go_tx.send(rest.trim().parse().unwrap_or(0));
                }
            }
            let _ = eof_tx.send(());
        });
        runtime.block_on(async move {
            let shared = Arc::new(Shared {
                events: o.events,
                connected: AtomicUsize::new(0),
                failed: AtomicUsize::new(0),
                closed_early: AtomicUsize::new(0),
                duplicates: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                received: (0..o.streams).map(|_| AtomicU32::new(0)).collect(),
                latencies_us: Mutex::new(Vec::with_capacity(o.streams * o.events)),
                user_latencies_us: Mutex::new(Vec::with_capacity(o.streams * o.events)),
                first_byte_us: Mutex::new(Vec::with_capacity(o.streams)),
            });
            let permits = Arc::new(Semaphore::new(o.concurrency));
            let start = tokio::time::Instant::now();
            let request = format!(
                "GET /events?channel={} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                o.channel, o.addr
            );
            let request: Arc<[u8]> = Arc::from(request.into_bytes());
            for index in 0..o.streams {
                let at = if o.connect_rate > 0.0 {
                    start + Duration::from_secs_f64(index as f64 / o.connect_rate)
                } else {
                    start
                };
                tokio::spawn(stream_task(
                    o.addr,
                    index,
                    at,
                    Arc::clone(&request),
                    Arc::clone(&permits),
                    Arc::clone(&shared),
                ));
            }
            let connect_deadline = start + Duration::from_secs(60 + (o.streams / 100) as u64);
            while shared.connected.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire) < o.streams
                && tokio::time::Instant::now() < connect_deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let first_byte = histogram_of(&shared.first_byte_us.lock().expect("not poisoned"));
            let ready = json!({
                "connected": shared.connected.load(Ordering::Acquire),
                "failed": o.streams - shared.connected.load(Ordering::Acquire),
                "first_byte_us": first_byte.into_iter().collect::<Vec<_>>(),
            });
            println!("READY {ready}");

            // Wait for GO, then for every event on every stream or the deadline.
            let deadline_us = tokio::select! {
                d = go_rx.recv() => d.unwrap_or(0),
                _ = eof_rx.recv() => 0,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => 0,
            };
            loop {
                let settled = shared.finished.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire);
                if settled >= o.streams || now_micros() >= deadline_us {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let connected = shared.connected.load(Ordering::Acquire);
            let received: u64 = shared.received.iter().map(|r| r.load(Ordering::Acquire) as u64).sum();
            let latency = histogram_of(&shared.latencies_us.lock().expect("not poisoned"));
            let user_latency = histogram_of(&shared.user_latencies_us.lock().expect("not poisoned"));
            let result = json!({
                "connected": connected,
                "received": received,
                "missed": (connected as u64 * o.events as u64).saturating_sub(received),
                "duplicates": shared.duplicates.load(Ordering::Acquire),
                "closed_early": shared.closed_early.load(Ordering::Acquire),
                "latency_us": latency.into_iter().collect::<Vec<_>>(),
                "latency_user_us": user_latency.into_iter().collect::<Vec<_>>(),
            });
            println!("RESULT {result}");
            // Hold the streams until the parent has measured and closes stdin.
            tokio::select! {
                _ = eof_rx.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
        });
    }

    async fn connect_once(
        addr: SocketAddr,
        request: &[u8],
    ) -> std::io::Result<(tokio::net::TcpStream, Vec<u8>, u64)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stamp::enable(&stream)?;
        let sent = Instant::now();
        stream.write_all(request).await?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        let mut first_byte = None;
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            first_byte.get_or_insert_with(|| sent.elapsed().as_micros() as u64);
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                    return Err(std::io::Error::other("not 200"));
                }
                let rest = head.split_off(end + 4);
                return Ok((stream, rest, first_byte.unwrap_or(0)));
            }
            if head.len() > 16 * 1024 {
                return Err(std::io::Error::other("head too long"));
            }
        }
    }

    /// Waits for data on `stream` and reads it with its kernel receive time.
    async fn read_stamped(
        stream: &tokio::net::TcpStream,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, Option<u64>)> {
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || stamp::recv(stream, buf)) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                outcome => return outcome,
            }
        }
    }

    async fn stream_task(
        addr: SocketAddr,
        index: usize,
        at: tokio::time::Instant,
        request: Arc<[u8]>,
        permits: Arc<Semaphore>,
        shared: Arc<Shared>,
    ) {
        tokio::time::sleep_until(at).await;
        let mut opened = None;
        for attempt in 0..ATTEMPTS {
            let permit = permits.acquire().await.expect("the semaphore is never closed");
            let outcome = tokio::time::timeout(CONNECT_TIMEOUT, connect_once(addr, &request)).await;
            drop(permit);
            if let Ok(Ok(ok)) = outcome {
                opened = Some(ok);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * (attempt as u64 + 1))).await;
        }
        let Some((stream, mut pending, first_byte)) = opened else {
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return;
        };
        shared
            .first_byte_us
            .lock()
            .expect("not poisoned")
            .push(first_byte);
        shared.connected.fetch_add(1, Ordering::AcqRel);

        let mut next_seq = 0usize;
        let mut buf = vec![0u8; 4096];
        let mut received_at = now_micros();
        let mut read_at = received_at;
        let mut complete = false;
        loop {
            // Whole lines in `pending` are events' fields.
            let mut consumed = 0;
            while let Some(nl) = pending[consumed..].iter().position(|&b| b == b'\n') {
                let line = &pending[consumed..consumed + nl];
                consumed += nl + 1;
                let Some(data) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                let text = String::from_utf8_lossy(data);
                let mut seq = None;
                let mut sent = None;
                for word in text.split(' ') {
                    if let Some(v) = word.strip_prefix("s=") {
                        seq = v.parse::<usize>().ok();
                    } else if let Some(v) = word.strip_prefix("t=") {
                        sent = v.parse::<u64>().ok();
                    }
                }
                if let (Some(seq), Some(sent)) = (seq, sent) {
                    if seq < next_seq {
                        shared.duplicates.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                    next_seq = seq + 1;
                    let got = shared.received[index].fetch_add(1, Ordering::AcqRel) + 1;
                    if got as usize == shared.events && !complete {
                        complete = true;
                        shared.finished.fetch_add(1, Ordering::AcqRel);
                    }
                    shared
                        .latencies_us
                        .lock()
                        .expect("not poisoned")
                        .push(received_at.saturating_sub(sent));
                    shared
                        .user_latencies_us
                        .lock()
                        .expect("not poisoned")
                        .push(read_at.saturating_sub(sent));
                }
            }
            pending.drain(..consumed);
            if pending.len() > 64 * 1024 {
                pending.clear();
            }
            match read_stamped(&stream, &mut buf).await {
                Ok((0, _)) | Err(_) => break,
                Ok((n, at)) => {
                    read_at = now_micros();
                    received_at = at.unwrap_or(read_at);
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        }
        if !complete {
            shared.closed_early.fetch_add(1, Ordering::AcqRel);
            shared.finished.fetch_add(1, Ordering::AcqRel);
        }
    }
}

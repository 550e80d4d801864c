//! Fan-out latency: in-memory broker against two nodes sharing channels
//! through Redis.
//!
//! Measures, for every event and every subscriber, the time from just before
//! `POST /publish` is sent to the moment the subscriber has read the event
//! off its socket. Three cases, each with the same load:
//!
//! - `memory`: one node, in-memory broker, publish and subscribers on it;
//! - `redis, same node`: two nodes on one Redis, publish on B, subscribers on B;
//! - `redis, other node`: the same run, subscribers on A.
//!
//! ```text
//! cargo run --release --example redis_latency -- [--subscribers 50] [--events 1000] [--rate 200] [--redis URL]
//! ```
//!
//! Without `--redis` it starts its own `redis-server` (which must be
//! installed) on a free loopback port, without persistence, and stops it at
//! the end. The servers run in this process; subscribers and the publisher
//! talk to them over loopback TCP like any client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tinysse::{Config, Server};

struct Options {
    subscribers: usize,
    events: usize,
    rate: u32,
    redis: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        subscribers: 50,
        events: 1000,
        rate: 200,
        redis: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--subscribers" => options.subscribers = number()?,
            "--events" => options.events = number()?,
            "--rate" => options.rate = number()?.max(1) as u32,
            "--redis" => options.redis = Some(value.clone()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

/// A `redis-server` of our own, stopped when dropped.
struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Result<(OwnRedis, String), String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server (is it installed?): {e}"))?;
    let redis = OwnRedis(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, format!("redis://127.0.0.1:{port}/0")))
}

fn node(redis: Option<&str>) -> Result<Server, String> {
    let config = Config {
        port: 0,
        tick_interval: None,
        queue_size: 4096,
        redis: redis.map(str::to_string),
        ..Config::default()
    };
    Server::start(config).map_err(|e| e.to_string())
}

/// Latencies in microseconds, one per delivered event.
type Samples = Arc<Mutex<Vec<u64>>>;

/// Opens `count` subscriptions to `channel` on `addr`; each records the
/// latency of every event (its data is the event's index in `sent`).
fn subscribe(
    addr: SocketAddr,
    count: usize,
    events: usize,
    sent: &Arc<Vec<Mutex<Option<Instant>>>>,
) -> Result<(Samples, Vec<std::thread::JoinHandle<()>>), String> {
    let samples: Samples = Arc::new(Mutex::new(Vec::with_capacity(count * events)));
    let mut threads = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /events?channel=bench HTTP/1.1\r\nHost: x\r\n\r\n")
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // The head: the subscription exists once it has come.
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let samples = Arc::clone(&samples);
        let sent = Arc::clone(sent);
        threads.push(std::thread::spawn(move || {
            let mut mine = Vec::with_capacity(events);
            let mut line = String::new();
            while mine.len() < events {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Some(index) = line
                    .strip_prefix("data: ")
                    .and_then(|d| d.trim().parse::<usize>().ok())
                else {
                    continue;
                };
                let at = Instant::now();
                let started = sent
                    .get(index)
                    .and_then(|s| *s.lock().unwrap_or_else(|p| p.into_inner()));
                if let Some(started) = started {
                    mine.push(at.duration_since(started).as_micros() as u64);
                }
            }
            samples.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    Ok((samples, threads))
}

fn publish(addr: SocketAddr, data: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let request = format!(
        "POST /publish?channel=bench HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{data}",
        data.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("publish failed: {response}"))
    }
}

/// Publishes `events` events at `rate` per second to `publish_to`.
fn run_load(
    publish_to: SocketAddr,
    events: usize,
    rate: u32,
    sent: &[Mutex<Option<Instant>>],
) -> Result<(), String> {
    let interval = Duration::from_secs(1) / rate;
    let start = Instant::now();
    for (index, slot) in sent.iter().enumerate().take(events) {
        let due = start + interval * index as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        publish(publish_to, &index.to_string())?;
    }
    Ok(())
}

fn report(name: &str, samples: &Samples, expected: usize) {
    let mut all = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "| {name} | {} / {expected} | {:.2} | {:.2} | {:.2} | {:.2} |",
        all.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0)
    );
}

fn main() -> Result<(), String> {
    let options = options()?;
    let (n, events, rate) = (options.subscribers, options.events, options.rate);
    println!("{n} subscribers per case, {events} events at {rate}/s, latency from publish sent to event read (ms)\n");
    println!("| case | deliveries | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");

    // In-memory: one node.
    {
        let server = node(None)?;
        let sent: Arc<Vec<Mutex<Option<Instant>>>> =
            Arc::new((0..events).map(|_| Mutex::new(None)).collect());
        let (samples, threads) = subscribe(server.local_addr(), n, events, &sent)?;
        run_load(server.local_addr(), events, rate, &sent)?;
        threads.into_iter().for_each(|t| {
            let _ = t.join();
        });
        report("memory, one node", &samples, n * events);
        server.stop();
    }

    // Redis: two nodes, publish on B.
    let (_own, url) = match options.redis {
        Some(url) => (None, url),
        None => {
            let (own, url) = start_redis()?;
            (Some(own), url)
        }
    };
    let a = node(Some(&url))?;
    let b = node(Some(&url))?;
    let sent: Arc<Vec<Mutex<Option<Instant>>>> = Arc::new((0..events).map(|_| Mutex::new(None)).collect());
    let (on_b, threads_b) = subscribe(b.local_addr(), n, events, &sent)?;
    let (on_a, threads_a) = subscribe(a.local_addr(), n, events, &sent)?;
    run_load(b.local_addr(), events, rate, &sent)?;
    threads_b.into_iter().chain(threads_a).for_each(|t| {
        let _ = t.join();
    });
    report("redis, same node (publish on B, read on B)", &on_b, n * events);
    report("redis, other node (publish on B, read on A)", &on_a, n * events);
    a.stop();
    b.stop();
    Ok(())
}

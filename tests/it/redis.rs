//! Several nodes sharing channels through Redis (`--redis`).
//!
//! Each test starts its own `redis-server` on a free loopback port, without
//! persistence. Without `redis-server` installed a test says it skipped and
//! passes, unless `TINYSSE_REQUIRE_REDIS=1` (CI) makes that a failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::support::*;

/// A free loopback port below the kernel's ephemeral range. Tests kill
/// Redis and start it again on its port while nodes keep connecting to it:
/// a port from the ephemeral range (what binding port 0 gives) may meanwhile
/// be taken as the local port of some other connection, or of a node's own
/// connect to it (TCP's simultaneous open connects a socket to itself),
/// and Redis then cannot start there again (CI: "did not restart").
fn free_port_below_ephemeral() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_535);
    let span = 10_000;
    for _ in 0..span {
        let spread = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = u16::try_from(low - span + spread % span).expect("a port under 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in the {span} below {low}");
}

/// A `redis-server` started for one test, killed when dropped.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Its `--requirepass`, if any; the test's own commands authenticate.
    password: Option<String>,
}

impl RedisServer {
    /// Starts one on a free port, or returns `None` (the test then skips)
    /// when `redis-server` is not installed and Redis is not required.
    fn start_or_skip(test: &str) -> Option<RedisServer> {
        RedisServer::start_with_password_or_skip(test, None)
    }

    /// As [`RedisServer::start_or_skip`], requiring `password` if given.
    fn start_with_password_or_skip(test: &str, password: Option<&str>) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            if std::env::var("TINYSSE_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("{test}: redis-server is not installed and TINYSSE_REQUIRE_REDIS=1");
            }
            // Straight to stderr, past the test harness's capture, so that
            // the skip shows in the output of a passing run.
            let _ = writeln!(std::io::stderr(), "skipped {test}: redis-server is not installed");
            return None;
        }
        for _ in 0..5 {
            let port = free_port_below_ephemeral();
            let mut redis = RedisServer {
                child: None,
                port,
                password: password.map(str::to_string),
            };
            if redis.spawn() {
                return Some(redis);
            }
        }
        panic!("{test}: redis-server did not start on any of 5 free ports");
    }

    /// Starts the process on `self.port`; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(self.password.iter().flat_map(|p| ["--requirepass", p.as_str()]))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        // Ours answers PING; if it exited (the port was taken), whatever
        // answers is not ours.
        let mut exited = false;
        let answered = wait_until(Duration::from_secs(10), || {
            exited = self
                .child
                .as_mut()
                .map_or(true, |c| !matches!(c.try_wait(), Ok(None)));
            exited
                || self
                    .try_command(&["PING"])
                    .is_some_and(|r| r.starts_with("+PONG"))
        });
        let up = answered && !exited;
        if !up {
            self.kill();
        }
        up
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it at once (SIGKILL: no chance to save or say goodbye).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to it.
    fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().expect("redis-server running").id(), signal);
    }

    /// Starts it again on the same port, empty.
    fn restart(&mut self) {
        assert!(
            wait_until(Duration::from_secs(10), || self.spawn()),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// Sends one command and returns the first line of the reply.
    fn try_command(&self, args: &[&str]) -> Option<String> {
        self.try_commands(&[args])
    }

    /// Sends commands on one connection (after `AUTH` if the server has a
    /// password) and returns the first line of the last reply; each other
    /// reply must be a single line.
    fn try_commands(&self, commands: &[&[&str]]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let auth;
        let mut all: Vec<&[&str]> = Vec::new();
        if let Some(password) = &self.password {
            auth = ["AUTH", password.as_str()];
            all.push(&auth);
        }
        all.extend_from_slice(commands);
        let mut request = String::new();
        for args in &all {
            request.push_str(&format!("*{}\r\n", args.len()));
            for arg in *args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = Vec::new();
        for _ in &all {
            reply.clear();
            let mut byte = [0u8; 1];
            while !reply.ends_with(b"\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => reply.push(byte[0]),
                    _ => return None,
                }
            }
        }
        Some(String::from_utf8_lossy(&reply).into_owned())
    }

    fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis on port {} did not answer {args:?}", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a node on `redis` and waits until it is connected.
fn node(redis: &RedisServer, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--tick-interval", "0"];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args);
    assert!(
        wait_until(Duration::from_secs(10), || redis_state(server.addr)
            == "connected"),
        "node never connected to redis; logs:\n{}",
        server.logs()
    );
    server
}

/// The `redis` field of `/health`.
fn redis_state(addr: SocketAddr) -> String {
    get(addr, "/health").json()["redis"]
        .as_str()
        .unwrap_or("absent")
        .to_string()
}

/// A raw publish, whatever the answer.
fn try_publish(addr: SocketAddr, channel: &str, data: &str) -> HttpResponse {
    http(
        addr,
        "POST",
        &format!("/publish?channel={channel}"),
        &[],
        data.as_bytes(),
    )
}

fn id_of(response: &HttpResponse) -> u64 {
    response.json()["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {:?}", response.body))
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(SseEvent::id_number).collect()
}

#[test]
fn publish_on_b_reaches_a_with_the_same_id() {
    let Some(redis) = RedisServer::start_or_skip("publish_on_b_reaches_a_with_the_same_id") else {
        return;
    };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut on_a = SseClient::connect(a.addr, "/events?channel=news", &[]);
    let mut on_b = SseClient::connect(b.addr, "/events?channel=news", &[]);
    assert_eq!(on_a.status(), 200, "{}", on_a.head);

    let body = br#"{"channel": "news", "event": "update", "data": "line 1\nline 2"}"#;
    let response = http(
        b.addr,
        "POST",
        "/publish",
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let id = id_of(&response);
    assert_eq!(response.json()["subscribers"], 1, "one stream on B itself");

    let expected = SseEvent {
        id: Some(id.to_string()),
        event: Some("update".into()),
        data: "line 1\nline 2".into(),
    };
    let got_a = on_a.next_event(Duration::from_secs(10));
    assert_eq!(got_a.as_ref(), Some(&expected), "on A; A's logs:\n{}", a.logs());
    assert_eq!(on_b.next_event(Duration::from_secs(10)), Some(expected));

    // Bad input is still refused before Redis is asked.
    assert_eq!(try_publish(b.addr, "bad%20name", "x").status, 400);
    let next = publish(a.addr, "news", "from A");
    assert!(next > id, "ids grow across nodes: {next} after {id}");
    assert_eq!(
        on_b.next_event(Duration::from_secs(10)).map(|e| e.id_number()),
        Some(next)
    );
}

#[test]
fn two_publishers_on_two_nodes_are_seen_in_one_order_everywhere() {
    let Some(redis) =
        RedisServer::start_or_skip("two_publishers_on_two_nodes_are_seen_in_one_order_everywhere")
    else {
        return;
    };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let path = "/events?channel=p&channel=q";
    let mut clients = [
        SseClient::connect(a.addr, path, &[]),
        SseClient::connect(a.addr, path, &[]),
        SseClient::connect(b.addr, path, &[]),
        SseClient::connect(b.addr, path, &[]),
    ];
    let mut published: Vec<u64> = std::thread::scope(|s| {
        let publishers: Vec<_> = [(a.addr, "p"), (b.addr, "q")]
            .into_iter()
            .map(|(addr, channel)| {
                s.spawn(move || {
                    (0..100)
                        .map(|i| publish(addr, channel, &format!("{channel}-{i}")))
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        publishers
            .into_iter()
            .flat_map(|p| p.join().expect("a publisher thread"))
            .collect()
    });
    published.sort_unstable();
    published.dedup();
    assert_eq!(published.len(), 200, "200 distinct ids");

    let seen: Vec<Vec<SseEvent>> = clients
        .iter_mut()
        .map(|c| c.events(200, Duration::from_secs(30)))
        .collect();
    let first = &seen[0];
    assert_eq!(ids(first), published, "every event, in id order");
    for (n, other) in seen.iter().enumerate().skip(1) {
        assert_eq!(
            other, first,
            "subscriber {n} saw another sequence than subscriber 0"
        );
    }
    for channel in ["p", "q"] {
        let data: Vec<&str> = first
            .iter()
            .map(|e| e.data.as_str())
            .filter(|d| d.starts_with(channel))
            .collect();
        let expected: Vec<String> = (0..100).map(|i| format!("{channel}-{i}")).collect();
        assert_eq!(data, expected, "publisher {channel}'s events in its order");
    }
}

#[test]
fn replay_on_b_of_events_published_on_a() {
    let Some(redis) = RedisServer::start_or_skip("replay_on_b_of_events_published_on_a") else {
        return;
    };
    let a = node(&redis, &["--history", "100"]);
    let b = node(&redis, &["--history", "100"]);
    let mut published = Vec::new();
    for i in 0..6 {
        let channel = if i % 3 == 2 { "s" } else { "r" };
        published.push((publish(a.addr, channel, &format!("{channel}{i}")), channel));
    }
    // B was running: it holds them. C starts after: it must fetch them.
    let c = node(&redis, &["--history", "100"]);
    let after = published[1].0;
    let expected: Vec<u64> = published[2..].iter().map(|(id, _)| *id).collect();
    let mut clients = Vec::new();
    for (name, server) in [("B", &b), ("C", &c)] {
        let last = after.to_string();
        let mut client = SseClient::connect(
            server.addr,
            "/events?channel=r&channel=s",
            &[("Last-Event-ID", &last)],
        );
        let got = client.events(expected.len(), Duration::from_secs(10));
        assert_eq!(ids(&got), expected, "replay on {name}; logs:\n{}", server.logs());
        assert_eq!(got[0].data, "s2");
        clients.push(client);
    }
    // Nothing more, and live events follow.
    let live = publish(a.addr, "r", "live");
    for client in &mut clients {
        assert_eq!(
            client.next_event(Duration::from_secs(10)).map(|e| e.id_number()),
            Some(live)
        );
    }
    // A single channel replayed on C, by query parameter.
    let mut client = SseClient::connect(
        c.addr,
        &format!("/events?channel=s&lastEventId={}", published[0].0),
        &[],
    );
    let got = client.events(2, Duration::from_secs(10));
    assert_eq!(ids(&got), vec![published[2].0, published[5].0]);
}

#[test]
fn redis_restart_keeps_streams_open_and_loses_nothing() {
    let Some(mut redis) = RedisServer::start_or_skip("redis_restart_keeps_streams_open_and_loses_nothing")
    else {
        return;
    };
    let a = node(&redis, &["--ping-interval", "300ms"]);
    let b = node(&redis, &["--ping-interval", "300ms"]);
    let nodes = [a.addr, b.addr];
    let mut clients = [
        SseClient::connect(a.addr, "/events?channel=k", &[]),
        SseClient::connect(b.addr, "/events?channel=k", &[]),
    ];
    let mut accepted: Vec<u64> = (0..4)
        .map(|i| publish(nodes[i % 2], "k", &format!("before {i}")))
        .collect();
    for client in &mut clients {
        assert_eq!(ids(&client.events(4, Duration::from_secs(10))), accepted);
    }

    redis.kill();
    for addr in nodes {
        assert!(
            wait_until(Duration::from_secs(10), || redis_state(addr) == "disconnected"),
            "node {addr} did not notice that redis is gone"
        );
        let response = try_publish(addr, "k", "during the outage");
        assert_eq!(response.status, 503, "{response:?}");
        assert!(response.header("Retry-After").is_some(), "{response:?}");
        let error = response.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("redis") && error.contains("not stored"), "{error}");
    }
    for client in &mut clients {
        let block = client.next_block(Duration::from_secs(5));
        assert!(
            block.as_deref().is_some_and(|b| b.starts_with(": ping")),
            "the stream stays open with pings during the outage, got {block:?}"
        );
    }

    // A sleeps through the restart: B stores events that A must still read
    // from where it stopped, not from where Redis is when it wakes.
    a.signal("STOP");
    redis.restart();
    let restarted = Instant::now();
    for (n, addr) in [b.addr, a.addr].into_iter().enumerate() {
        if n == 1 {
            a.signal("CONT");
        }
        let mut statuses = Vec::new();
        let stored = wait_until(Duration::from_secs(15), || {
            let response = try_publish(addr, "k", &format!("after, on {addr}"));
            statuses.push(response.status);
            if response.status == 200 {
                accepted.push(id_of(&response));
            }
            response.status == 200
        });
        assert!(stored, "publishing on {addr} never worked again: {statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 503),
            "only 503 until it works: {statuses:?}"
        );
    }
    for i in 0..4 {
        accepted.push(publish(nodes[i % 2], "k", &format!("later {i}")));
    }
    for (n, client) in clients.iter_mut().enumerate() {
        let after = client.events(accepted.len() - 4, Duration::from_secs(15));
        assert!(restarted.elapsed() < Duration::from_secs(30));
        assert_eq!(
            ids(&after),
            accepted[4..].to_vec(),
            "client {n} after the restart"
        );
    }
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "delivery resumed only {:?} after the restart",
        restarted.elapsed()
    );
    // A client reconnecting to either node replays across the outage: what
    // was stored before it is still held by the nodes.
    for addr in nodes {
        let first = accepted[0].to_string();
        let mut client = SseClient::connect(addr, "/events?channel=k", &[("Last-Event-ID", &first)]);
        let got = client.events(accepted.len() - 1, Duration::from_secs(10));
        assert_eq!(ids(&got), accepted[1..].to_vec(), "replay on {addr}");
    }
}

/// Nodes A and B on `redis`, and a subscriber of channel `t` on A that has
/// received a first event published on B (returned: its id).
fn two_nodes_and_a_subscriber_on_a(redis: &RedisServer) -> (TestServer, TestServer, SseClient, u64) {
    let a = node(redis, &[]);
    let b = node(redis, &[]);
    let mut on_a = SseClient::connect(a.addr, "/events?channel=t", &[]);
    let first = publish(b.addr, "t", "seen live");
    assert_eq!(
        on_a.next_event(Duration::from_secs(10)).map(|e| e.id_number()),
        Some(first)
    );
    (a, b, on_a, first)
}

#[test]
fn a_node_away_while_the_feed_was_trimmed_catches_up_from_the_channel() {
    let Some(redis) =
        RedisServer::start_or_skip("a_node_away_while_the_feed_was_trimmed_catches_up_from_the_channel")
    else {
        return;
    };
    let (a, b, mut on_a, _first) = two_nodes_and_a_subscriber_on_a(&redis);

    // A sleeps while B publishes, and the feed loses all but its newest
    // entry; then A's connection to Redis breaks.
    a.signal("STOP");
    let missed: Vec<u64> = (0..5)
        .map(|i| publish(b.addr, "t", &format!("missed {i}")))
        .collect();
    assert_eq!(redis.command(&["XTRIM", "tinysse:feed", "MAXLEN", "1"]), ":5\r\n");
    redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    a.signal("CONT");

    let got = on_a.events(5, Duration::from_secs(15));
    assert_eq!(ids(&got), missed, "A's logs:\n{}", a.logs());
    // The newest missed event is still in the feed. The first one, Redis
    // most likely sent to A's pending `XREAD BLOCK` before the kill, and A
    // reads it once awake: then 3 remain to catch up, else (A was stopped
    // before it sent that `XREAD`) 4. The line is logged once the events
    // are handed to the streams, so it may come just after they arrive.
    let caught_up = |logs: &str| logs.contains("caught up 3 events") || logs.contains("caught up 4 events");
    assert!(
        wait_until(Duration::from_secs(10), || caught_up(&a.logs())),
        "{}",
        a.logs()
    );
}

#[test]
fn a_node_stopped_while_the_feed_was_trimmed_catches_up_with_its_connection_alive() {
    // Found by an audit: a node paused (SIGSTOP, a VM pause) while the feed
    // was trimmed past its cursor kept its connection, and `XREAD` went on
    // from the oldest entry left: its subscribers silently missed the rest.
    let test = "a_node_stopped_while_the_feed_was_trimmed_catches_up_with_its_connection_alive";
    let Some(redis) = RedisServer::start_or_skip(test) else {
        return;
    };
    let (a, b, mut on_a, first) = two_nodes_and_a_subscriber_on_a(&redis);

    // A sleeps while B publishes 700 events; the feed keeps its newest 600
    // (more than A reads at once), losing the 100 after A's cursor.
    a.signal("STOP");
    let missed: Vec<u64> = (0..700)
        .map(|i| publish(b.addr, "t", &format!("missed {i}")))
        .collect();
    assert_eq!(
        redis.command(&["XTRIM", "tinysse:feed", "MAXLEN", "600"]),
        ":101\r\n"
    );
    a.signal("CONT");

    // So many events at once pass --queue-size: the subscriber is dropped
    // and comes back with its last id, as EventSource does.
    let mut got: Vec<SseEvent> = Vec::new();
    let mut reconnects = 0;
    while got.len() < 700 {
        match on_a.next_event(Duration::from_secs(30)) {
            Some(event) => got.push(event),
            None if reconnects < 10 => {
                reconnects += 1;
                let last = got.last().map_or(first, SseEvent::id_number).to_string();
                on_a = SseClient::connect(a.addr, "/events?channel=t", &[("Last-Event-ID", &last)]);
            }
            None => break,
        }
    }
    assert!(
        ids(&got) == missed,
        "A's subscriber got {} events, {} of them the missed ones in order; A's logs:\n{}",
        got.len(),
        ids(&got).iter().zip(&missed).take_while(|(g, m)| g == m).count(),
        a.logs()
    );
}

#[test]
fn a_node_started_before_redis_serves_and_connects_later() {
    let Some(mut redis) = RedisServer::start_or_skip("a_node_started_before_redis_serves_and_connects_later")
    else {
        return;
    };
    redis.kill();
    let url = redis.url();
    let a = TestServer::start(&["--redis", &url, "--tick-interval", "0"]);
    assert_eq!(redis_state(a.addr), "disconnected");
    assert_eq!(try_publish(a.addr, "late", "too early").status, 503);
    let mut client = SseClient::connect(a.addr, "/events?channel=late", &[]);
    assert_eq!(
        client.status(),
        200,
        "streams open without redis: {}",
        client.head
    );

    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || redis_state(a.addr) == "connected"),
        "never connected; logs:\n{}",
        a.logs()
    );
    let id = publish(a.addr, "late", "now");
    assert_eq!(
        client.next_event(Duration::from_secs(10)).map(|e| e.id_number()),
        Some(id)
    );
}

#[test]
fn a_hung_redis_gets_503_not_a_hung_node() {
    let Some(redis) = RedisServer::start_or_skip("a_hung_redis_gets_503_not_a_hung_node") else {
        return;
    };
    let a = node(&redis, &["--ping-interval", "300ms"]);
    let mut client = SseClient::connect(a.addr, "/events?channel=h", &[]);
    // A first publish leaves a connection in the pool: the next one is sent
    // to Redis and gets no answer.
    let first = publish(a.addr, "h", "first");
    assert_eq!(
        client.next_event(Duration::from_secs(10)).map(|e| e.id_number()),
        Some(first)
    );
    redis.signal("STOP");
    let started = Instant::now();
    let addr = a.addr;
    let publisher = std::thread::spawn(move || try_publish(addr, "h", "into the void"));
    // Other requests are not held up meanwhile.
    assert!(
        wait_until(Duration::from_secs(5), || get(a.addr, "/health").status == 200
            && !publisher.is_finished()),
        "/health waited for the hung publish"
    );
    let response = publisher.join().expect("the publisher thread");
    assert_eq!(response.status, 503, "{response:?}");
    assert!(
        response.body.contains("may or may not be stored"),
        "{}",
        response.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || redis_state(a.addr) == "disconnected"),
        "the reader never noticed"
    );
    assert_eq!(try_publish(a.addr, "h", "still hung").status, 503);
    let block = client.next_block(Duration::from_secs(5));
    assert!(
        block.as_deref().is_some_and(|b| b.starts_with(": ping")),
        "{block:?}"
    );

    redis.signal("CONT");
    assert!(
        wait_until(Duration::from_secs(15), || redis_state(a.addr) == "connected"),
        "never reconnected; logs:\n{}",
        a.logs()
    );
    let id = publish(a.addr, "h", "back");
    // The first publish may have run once Redis woke up: it was never
    // confirmed, and whatever comes, comes in order and ends with ours.
    let mut last = 0;
    while last != id {
        let event = client
            .next_event(Duration::from_secs(10))
            .expect("the event published after");
        assert!(event.id_number() > last, "in order: {event:?} after {last}");
        last = event.id_number();
    }
}

#[test]
fn a_password_and_a_database_in_the_url_are_used() {
    let password = "s3cret@pass";
    let Some(redis) = RedisServer::start_with_password_or_skip(
        "a_password_and_a_database_in_the_url_are_used",
        Some(password),
    ) else {
        return;
    };
    // '@' percent-encoded in the URL.
    let url = format!("redis://:s3cret%40pass@127.0.0.1:{}/3", redis.port);
    let a = TestServer::start(&["--redis", &url, "--tick-interval", "0"]);
    assert!(
        wait_until(Duration::from_secs(10), || redis_state(a.addr) == "connected"),
        "never connected; logs:\n{}",
        a.logs()
    );
    let mut client = SseClient::connect(a.addr, "/events?channel=vault", &[]);
    let id = publish(a.addr, "vault", "in db 3");
    let event = client.next_event(Duration::from_secs(10));
    assert_eq!(
        event.as_ref().map(|e| (e.id_number(), e.data.as_str())),
        Some((id, "in db 3"))
    );
    assert_eq!(
        redis
            .try_commands(&[&["SELECT", "3"], &["XLEN", "tinysse:channel:vault"]])
            .as_deref(),
        Some(":1\r\n"),
        "the event is in db 3"
    );
    assert_eq!(
        redis.command(&["EXISTS", "tinysse:channel:vault"]),
        ":0\r\n",
        "and not in db 0"
    );
    assert!(
        a.logs().contains(&format!("127.0.0.1:{}/3", redis.port)),
        "{}",
        a.logs()
    );
    assert!(
        !a.logs().contains("s3cret"),
        "the password stays out of the logs:\n{}",
        a.logs()
    );

    // A wrong password: the node runs, says Redis is disconnected, refuses
    // publishes, and says why in its log.
    let url = format!("redis://:not-the-password@127.0.0.1:{}/3", redis.port);
    let b = TestServer::start(&["--redis", &url, "--tick-interval", "0"]);
    assert!(
        wait_until(Duration::from_secs(10), || b.logs().contains("WRONGPASS")),
        "no WRONGPASS in the logs:\n{}",
        b.logs()
    );
    assert_eq!(redis_state(b.addr), "disconnected");
    let response = try_publish(b.addr, "vault", "refused");
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(get(b.addr, "/health").status, 200);
    assert!(!b.logs().contains("not-the-password"), "{}", b.logs());
}

#[test]
fn at_most_64_publishes_wait_on_a_hung_redis_and_the_rest_are_refused_at_once() {
    let Some(redis) = RedisServer::start_or_skip(
        "at_most_64_publishes_wait_on_a_hung_redis_and_the_rest_are_refused_at_once",
    ) else {
        return;
    };
    let a = node(&redis, &[]);
    redis.signal("STOP");
    // 80 publishes at once: each waits for Redis (up to its command
    // timeout) unless 64 are waiting already.
    let addr = a.addr;
    let publishers: Vec<_> = (0..80)
        .map(|i| std::thread::spawn(move || try_publish(addr, "cap", &format!("p{i}"))))
        .collect();
    let answers: Vec<HttpResponse> = publishers
        .into_iter()
        .map(|p| p.join().expect("a publisher thread"))
        .collect();
    redis.signal("CONT");
    assert!(
        answers.iter().all(|r| r.status == 503),
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let refused = answers
        .iter()
        .filter(|r| r.body.contains("64 requests are waiting for it already"))
        .count();
    // (Any that came after the first wait ended find the node
    // disconnected: neither count.)
    let waited = answers
        .iter()
        .filter(|r| r.body.contains("did not answer within"))
        .count();
    assert!(
        refused >= 1 && waited <= 64,
        "{refused} of 80 refused for the cap, {waited} waited; bodies: {:?}",
        answers.iter().map(|r| r.body.as_str()).collect::<Vec<_>>()
    );
}

#[test]
fn a_publish_finishing_after_the_stop_closed_the_broker_is_refused_through_redis_too() {
    let Some(redis) = RedisServer::start_or_skip(
        "a_publish_finishing_after_the_stop_closed_the_broker_is_refused_through_redis_too",
    ) else {
        return;
    };
    let mut a = node(&redis, &[]);
    let mut client = SseClient::connect(a.addr, "/events?channel=late", &[]);
    assert_eq!(client.status(), 200, "{}", client.head);
    let mut publishing = publish_in_progress(a.addr, "late");
    a.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(10), || a
            .logs()
            .contains("requests still in progress")),
        "{}",
        a.logs()
    );
    // The streams are ending: what comes now may not be answered 200.
    publishing.write_all(&[b'a'; 500]).unwrap();
    let mut answer = Vec::new();
    let _ = publishing.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}\n{}", a.logs());
    assert!(answer.contains("the event was not stored"), "{answer}");
    assert!(a.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    // The stream got no event it was not sent.
    assert!(client.buffered_events().is_empty());
}

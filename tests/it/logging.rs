//! Log lines: one when a stream opens and one when it closes, with peer,
//! path, channels, duration, events and reason; `--log warn` hides them.

use std::time::Duration;

use super::support::*;

/// The lines of `logs` about the stream of `peer` that contain `what`.
fn lines_about<'a>(logs: &'a str, what: &str, peer: &str) -> Vec<&'a str> {
    let peer_field = format!(" peer={peer} ");
    logs.lines()
        .filter(|l| l.contains(what) && l.contains(&peer_field))
        .collect()
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Waits until the close line of `peer` is logged and returns it, checking
/// that each of open and close was logged exactly once.
fn open_and_close(server: &TestServer, peer: &str) -> (String, String) {
    let closed = wait_until(Duration::from_secs(30), || {
        !lines_about(&server.logs(), "stream closed", peer).is_empty()
    });
    let logs = server.logs();
    assert!(closed, "no close line for {peer}:\n{logs}");
    let opened = lines_about(&logs, "stream opened", peer);
    let closed = lines_about(&logs, "stream closed", peer);
    assert_eq!(opened.len(), 1, "one open line for {peer}:\n{logs}");
    assert_eq!(closed.len(), 1, "one close line for {peer}:\n{logs}");
    (opened[0].to_string(), closed[0].to_string())
}

fn assert_duration(line: &str) {
    let duration = field(line, "duration").unwrap_or_else(|| panic!("no duration in {line:?}"));
    let seconds: f64 = duration
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("duration {duration:?} is not like 1.234s in {line:?}"));
    assert!((0.0..600.0).contains(&seconds), "{line:?}");
}

#[test]
fn one_line_per_stream_opened_and_closed() {
    let mut server = TestServer::start(&[
        "--log",
        "info",
        "--ping-interval",
        "300ms",
        "--tick-interval",
        "1h",
    ]);
    let addr = server.addr;

    // A client that reads two events and leaves.
    let mut leaver = SseClient::connect(addr, "/events?channel=b&channel=a", &[]);
    let peer = leaver.socket().local_addr().unwrap().to_string();
    publish(addr, "a", "one");
    publish(addr, "b", "two");
    leaver.events(2, Duration::from_secs(10));
    drop(leaver);
    let (opened, closed) = open_and_close(&server, &peer);
    assert!(opened.contains(" INFO "), "{opened:?}");
    assert!(
        opened.ends_with(&format!("stream opened peer={peer} path=/events channels=a,b")),
        "{opened:?}"
    );
    assert!(
        closed.contains(&format!("stream closed peer={peer} path=/events channels=a,b ")),
        "{closed:?}"
    );
    assert_eq!(field(&closed, "events"), Some("2"), "{closed:?}");
    assert_eq!(field(&closed, "reason"), Some("client_left"), "{closed:?}");
    assert_duration(&closed);

    // No channel means the default one; the demo stream has none.
    let mut default = SseClient::connect(addr, "/events", &[]);
    let default_peer = default.socket().local_addr().unwrap().to_string();
    let mut demo = SseClient::connect(addr, "/", &[]);
    let demo_peer = demo.socket().local_addr().unwrap().to_string();
    demo.events(1, Duration::from_secs(10));
    let opened_logged = wait_until(Duration::from_secs(10), || {
        let logs = server.logs();
        !lines_about(&logs, "stream opened", &default_peer).is_empty()
            && !lines_about(&logs, "stream opened", &demo_peer).is_empty()
    });
    assert!(opened_logged, "open lines missing:\n{}", server.logs());

    // Shutdown ends both, each with its own close line.
    server.stop();
    assert!(default.closed_within(Duration::from_secs(10)));
    let (_, closed) = open_and_close(&server, &default_peer);
    assert!(closed.contains("path=/events channels=default "), "{closed:?}");
    assert_eq!(field(&closed, "reason"), Some("shutdown"), "{closed:?}");
    let (opened, closed) = open_and_close(&server, &demo_peer);
    assert!(
        opened.ends_with(&format!("stream opened peer={demo_peer} path=/ channels=")),
        "{opened:?}"
    );
    assert_eq!(field(&closed, "events"), Some("1"), "{closed:?}");
    assert_eq!(field(&closed, "reason"), Some("shutdown"), "{closed:?}");
    assert_duration(&closed);
}

#[test]
fn log_warn_hides_stream_lines() {
    let server = TestServer::start(&["--log", "warn", "--ping-interval", "300ms"]);
    let addr = server.addr;
    let mut client = SseClient::connect(addr, "/events?channel=a", &[]);
    publish(addr, "a", "one");
    client.events(1, Duration::from_secs(10));
    drop(client);
    // The server has seen the stream open and close...
    let closed = wait_until(Duration::from_secs(30), || {
        get(addr, "/metrics")
            .body
            .contains("tinysse_disconnects_total{reason=\"client_left\"} 1\n")
    });
    assert!(closed, "the stream was not closed");
    // ...and said nothing about it.
    let logs = server.logs();
    assert!(!logs.contains("stream opened"), "{logs}");
    assert!(!logs.contains("stream closed"), "{logs}");
    assert!(!logs.contains(" INFO "), "{logs}");
    assert!(!logs.contains(" DEBUG "), "{logs}");
}

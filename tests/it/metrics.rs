//! `GET /metrics` read back with a real Prometheus text-format parser
//! (`openmetrics-parser`, which rejects malformed lines, samples outside
//! their family and unknown types) after traffic whose counts are known.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmetrics_parser::{prometheus::parse_prometheus, PrometheusType, PrometheusValue};

use super::support::*;

/// One metric family as the parser saw it.
#[derive(Debug)]
struct Family {
    kind: PrometheusType,
    help: String,
    /// Label pairs (sorted) to value.
    samples: BTreeMap<Vec<(String, String)>, f64>,
}

/// A parsed scrape and its text, for failure messages.
struct Scrape {
    text: String,
    families: BTreeMap<String, Family>,
}

impl Scrape {
    fn fetch(addr: SocketAddr) -> Scrape {
        let response = get(addr, "/metrics");
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(
            response.header("Content-Type").as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{}",
            response.head
        );
        let text = response.body;
        let exposition =
            parse_prometheus(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e:?}\n{text}"));
        let mut families = BTreeMap::new();
        for (name, family) in exposition.families {
            let label_names = family.get_label_names().to_vec();
            let mut samples = BTreeMap::new();
            for sample in family.iter_samples() {
                let set = sample.get_labelset().expect("a sample bound to its family");
                let mut labels: Vec<(String, String)> = label_names
                    .iter()
                    .map(|n| (n.clone(), set.get_label_value(n).unwrap_or_default().to_string()))
                    .collect();
                labels.sort();
                let value = match &sample.value {
                    PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                    PrometheusValue::Counter(c) => c.value.as_f64(),
                    other => panic!("{name}: unexpected value {other:?}\n{text}"),
                };
                assert!(
                    samples.insert(labels, value).is_none(),
                    "{name}: a sample twice\n{text}"
                );
            }
            families.insert(
                name,
                Family {
                    kind: family.family_type.clone(),
                    help: family.help.clone(),
                    samples,
                },
            );
        }
        Scrape { text, families }
    }

    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = self
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name} in\n{}", self.text));
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        *family
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    fn disconnects(&self, reason: &str) -> f64 {
        self.value("tinysse_disconnects_total", &[("reason", reason)])
    }
}

/// The families tinysse exposes, with their types.
const EXPECTED: [(&str, PrometheusType); 8] = [
    ("tinysse_open_streams", PrometheusType::Gauge),
    ("tinysse_events_published_total", PrometheusType::Counter),
    ("tinysse_events_delivered_total", PrometheusType::Counter),
    ("tinysse_disconnects_total", PrometheusType::Counter),
    ("tinysse_slow_subscribers_dropped_total", PrometheusType::Counter),
    ("tinysse_channels", PrometheusType::Gauge),
    ("tinysse_history_events", PrometheusType::Gauge),
    ("tinysse_process_start_time_seconds", PrometheusType::Gauge),
];

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls `/metrics` until `condition` holds; returns the last scrape or
/// fails printing it.
#[track_caller]
fn scrape_until(addr: SocketAddr, what: &str, mut condition: impl FnMut(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    let held = wait_until(Duration::from_secs(30), || {
        let scrape = Scrape::fetch(addr);
        let ok = condition(&scrape);
        last = Some(scrape);
        ok
    });
    let scrape = last.expect("scraped at least once");
    assert!(
        held,
        "timed out waiting for {what}; last /metrics:\n{}",
        scrape.text
    );
    scrape
}

#[test]
fn every_family_is_named_typed_and_documented() {
    let server = TestServer::start(&[]);
    let scrape = Scrape::fetch(server.addr);
    let names: Vec<&str> = scrape.families.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = EXPECTED.iter().map(|(n, _)| *n).collect();
    expected.sort_unstable();
    assert_eq!(names, expected, "{}", scrape.text);
    for (name, kind) in EXPECTED {
        let family = &scrape.families[name];
        assert_eq!(family.kind, kind, "{name}\n{}", scrape.text);
        assert!(
            !family.help.trim().is_empty(),
            "{name} has no HELP\n{}",
            scrape.text
        );
        assert!(name.starts_with("tinysse_"));
        if kind == PrometheusType::Counter {
            assert!(name.ends_with("_total"), "counter {name} must end in _total");
        }
    }
    // Every reason is exposed from the start, so rates work from zero.
    for reason in ["client_left", "slow", "shutdown", "error"] {
        assert_eq!(scrape.disconnects(reason), 0.0, "{}", scrape.text);
    }
    // HELP and TYPE come right before each family's samples.
    for (name, _) in EXPECTED {
        let help = format!("# HELP {name} ");
        let at = scrape
            .text
            .find(&help)
            .unwrap_or_else(|| panic!("no HELP for {name}"));
        let next: Vec<&str> = scrape.text[at..].lines().take(3).collect();
        assert!(next[1].starts_with(&format!("# TYPE {name} ")), "{next:?}");
        assert!(next[2].starts_with(name), "{next:?}");
    }
}

#[test]
fn counts_match_known_traffic() {
    let before = unix_now();
    let server = TestServer::start(&["--ping-interval", "300ms", "--tick-interval", "1h"]);
    let addr = server.addr;

    // M = 4 streams: three on channels, one demo stream (its first event
    // comes at once, the next in an hour).
    let mut on_a = SseClient::connect(addr, "/events?channel=a", &[]);
    let mut on_ab = SseClient::connect(addr, "/events?channel=a&channel=b", &[]);
    let mut on_b = SseClient::connect(addr, "/events?channel=b", &[]);
    let mut demo = SseClient::connect(addr, "/", &[]);

    // N = 6 published: 3 to a, 2 to b, 1 to c (nobody listens).
    let a: Vec<u64> = (1..=3).map(|i| publish(addr, "a", &format!("a{i}"))).collect();
    let b: Vec<u64> = (1..=2).map(|i| publish(addr, "b", &format!("b{i}"))).collect();
    publish(addr, "c", "c1");

    // K = 3 + 5 + 2 + 1 = 11 deliveries, each seen by its client.
    let ids = |events: Vec<SseEvent>| events.iter().map(SseEvent::id_number).collect::<Vec<_>>();
    assert_eq!(ids(on_a.events(3, Duration::from_secs(10))), a);
    let mut both = a.clone();
    both.extend(&b);
    both.sort_unstable();
    assert_eq!(ids(on_ab.events(5, Duration::from_secs(10))), both);
    assert_eq!(ids(on_b.events(2, Duration::from_secs(10))), b);
    assert_eq!(demo.events(1, Duration::from_secs(10))[0].data, "message_content");

    // The counter moves just after the flush the client saw.
    scrape_until(addr, "11 deliveries", |s| {
        s.value("tinysse_events_delivered_total", &[]) == 11.0
    });

    // One client leaves; the next ping finds it gone.
    drop(on_b);
    let scrape = scrape_until(addr, "one client_left disconnect", |s| {
        s.disconnects("client_left") == 1.0
    });

    let after = unix_now();
    let expect = [
        ("tinysse_open_streams", 3.0),
        ("tinysse_events_published_total", 6.0),
        ("tinysse_events_delivered_total", 11.0),
        ("tinysse_slow_subscribers_dropped_total", 0.0),
        ("tinysse_channels", 3.0),
        ("tinysse_history_events", 6.0),
    ];
    for (name, value) in expect {
        assert_eq!(scrape.value(name, &[]), value, "{name}\n{}", scrape.text);
    }
    for (reason, value) in [
        ("client_left", 1.0),
        ("slow", 0.0),
        ("shutdown", 0.0),
        ("error", 0.0),
    ] {
        assert_eq!(scrape.disconnects(reason), value, "{reason}\n{}", scrape.text);
    }
    let started = scrape.value("tinysse_process_start_time_seconds", &[]);
    assert!(
        (before - 1.0..=after).contains(&started),
        "start time {started} not within [{before}, {after}]"
    );
    drop((on_a, on_ab, demo));
}

/// A server with a small queue, a long write timeout (so a stuck write
/// does not end a stream first) and no pings (so only events are written).
fn slow_drop_server() -> TestServer {
    TestServer::start(&[
        "--queue-size",
        "4",
        "--history",
        "4",
        "--write-timeout",
        "120s",
        "--ping-interval",
        "600s",
        "--log",
        "info",
    ])
}

#[test]
fn a_slow_subscriber_drop_is_counted() {
    // A small queue, a long write timeout (so the stuck write does not end
    // the stream first) and no pings (so only events are written).
    let server = slow_drop_server();
    let addr = server.addr;
    let mut slow = SseClient::connect(addr, "/events?channel=slow", &[]);

    // The client reads nothing: publish big events until the stream's
    // thread is stuck in a write because the socket buffers are full, then
    // more than --queue-size events behind it. (On a starved machine the
    // thread may fall behind and be dropped even before it gets stuck.)
    let big = "x".repeat(60_000);
    let mut published = 0u64;
    let mut stuck = false;
    while published < 3000 && !server.stream_tasks().is_empty() {
        publish(addr, "slow", &big);
        published += 1;
        if server.stream_blocked_in_write() {
            stuck = true;
            break;
        }
    }
    assert!(
        stuck || server.stream_tasks().is_empty(),
        "the stream neither blocked nor ended after {published} events of 60 kB"
    );
    for i in 0..20 {
        publish(addr, "slow", &format!("late {i}"));
        published += 1;
    }

    // Dropped, the subscriber's connection was cut (its blocked write
    // failed at once): the client reads what it was sent, then the end.
    assert!(
        slow.closed_within(Duration::from_secs(60)),
        "the slow stream was not closed; logs:\n{}",
        server.logs()
    );
    let mut received = 0u64;
    while let Some(block) = slow.next_block(Duration::from_millis(1)) {
        if parse_event(&block).is_some() {
            received += 1;
        }
    }
    eprintln!("stuck: {stuck}, published: {published}, received: {received}");
    assert!(
        received > 0 && received < published,
        "received {received} of {published}"
    );

    let scrape = scrape_until(addr, "the slow drop", |s| s.disconnects("slow") == 1.0);
    assert_eq!(
        scrape.value("tinysse_slow_subscribers_dropped_total", &[]),
        1.0,
        "{}",
        scrape.text
    );
    assert_eq!(scrape.disconnects("client_left"), 0.0, "{}", scrape.text);
    assert_eq!(scrape.value("tinysse_open_streams", &[]), 0.0, "{}", scrape.text);
    assert_eq!(
        scrape.value("tinysse_events_published_total", &[]),
        published as f64,
        "{}",
        scrape.text
    );
    // Delivered counts what reached the client, no more.
    assert_eq!(
        scrape.value("tinysse_events_delivered_total", &[]),
        received as f64,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.value("tinysse_history_events", &[]),
        4.0,
        "{}",
        scrape.text
    );
    let logs = server.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("stream closed") && l.contains(&format!("events={received} reason=slow"))),
        "no 'reason=slow' close line with events={received}:\n{logs}"
    );
}

#[test]
fn a_dropped_subscriber_that_reads_nothing_is_closed_at_once_not_after_the_write_timeout() {
    // Its stream's thread is blocked in a write to a client that reads
    // nothing. The subscriber is dropped once it is --queue-size events
    // behind; its connection is then cut, so the blocked write fails now
    // rather than after --write-timeout (two minutes here).
    let server = slow_drop_server();
    let addr = server.addr;
    let slow = SseClient::connect_with_receive_buffer(addr, "/events?channel=stuck", &[], 4096);
    let peer = slow.socket().local_addr().unwrap().to_string();
    let big = "x".repeat(60_000);
    let mut published = 0;
    while published < 3000 && !server.stream_blocked_in_write() && open_streams(addr) == 1 {
        publish(addr, "stuck", &big);
        published += 1;
    }
    for i in 0..10 {
        publish(addr, "stuck", &format!("more {i}"));
    }
    assert!(
        wait_until(Duration::from_secs(15), || open_streams(addr) == 0),
        "the dropped stream is still open; logs:\n{}",
        server.logs()
    );
    let logs = server.logs();
    let closed = logs
        .lines()
        .find(|l| l.contains("stream closed") && l.contains(&format!(" peer={peer} ")))
        .unwrap_or_else(|| panic!("no close line for {peer}:\n{logs}"));
    assert!(closed.contains("reason=slow"), "{closed}");
    assert_eq!(metric(addr, "tinysse_slow_subscribers_dropped_total"), 1.0);
    drop(slow);
}

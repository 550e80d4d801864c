//! Channels, publishing and lossless reconnect as a client sees them
//! (issue 3): routing, raw and JSON publish, the wire format of published
//! data, replay by `Last-Event-ID` and `?lastEventId=`, concurrent publishers
//! and subscribers, slow subscribers, ids across restarts, validation and
//! the publish token.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::support::*;

const SECOND: Duration = Duration::from_secs(1);

/// `POST /publish?query` in the raw form.
fn publish_raw(addr: SocketAddr, query: &str, body: &[u8]) -> HttpResponse {
    http(addr, "POST", &format!("/publish?{query}"), &[], body)
}

/// `POST /publish` in the JSON form.
fn publish_json(addr: SocketAddr, body: &str) -> HttpResponse {
    http(
        addr,
        "POST",
        "/publish",
        &[("Content-Type", "application/json; charset=utf-8")],
        body.as_bytes(),
    )
}

/// The id of a `200` publish answer.
fn id_of(response: &HttpResponse) -> u64 {
    assert_eq!(response.status, 200, "publish failed: {response:?}");
    response.json()["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no decimal id string in {response:?}"))
}

/// `GET /events?query`, asserting a `200` stream.
fn subscribe(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> SseClient {
    let client = SseClient::connect(addr, &format!("/events?{query}"), headers);
    assert_eq!(client.status(), 200, "/events?{query}: {}", client.head);
    client
}

fn datas(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(SseEvent::id_number).collect()
}

fn received(client: &SseClient) -> String {
    String::from_utf8_lossy(&client.received).into_owned()
}

#[test]
fn events_reach_only_the_subscribers_of_their_channel() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let mut a = subscribe(addr, "channel=a", &[]);
    let mut b = subscribe(addr, "channel=b", &[]);
    let mut both = subscribe(addr, "channel=a&channel=b", &[]);
    let mut default = subscribe(addr, "", &[]);
    let mut named_default = subscribe(addr, "channel=default", &[]);

    id_of(&publish_raw(addr, "channel=a", b"to a"));
    id_of(&publish_raw(addr, "channel=b", b"to b"));
    id_of(&publish_raw(addr, "", b"to default"));
    id_of(&publish_json(addr, r#"{"data": "json to default"}"#));
    // Last ones on each channel: what came before them is all that came.
    for channel in ["a", "b", "default"] {
        id_of(&publish_raw(
            addr,
            &format!("channel={channel}"),
            format!("end {channel}").as_bytes(),
        ));
    }

    let want: [(&mut SseClient, &[&str]); 5] = [
        (&mut a, &["to a", "end a"]),
        (&mut b, &["to b", "end b"]),
        (&mut both, &["to a", "to b", "end a", "end b"]),
        (&mut default, &["to default", "json to default", "end default"]),
        (
            &mut named_default,
            &["to default", "json to default", "end default"],
        ),
    ];
    for (client, expected) in want {
        let events = client.events(expected.len(), 10 * SECOND);
        assert_eq!(datas(&events), expected, "received {:?}", received(client));
    }
}

#[test]
fn publish_answers_id_channel_and_subscriber_count() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let alone = publish_raw(addr, "channel=count", b"nobody listens");
    assert_eq!(alone.header("Content-Type").as_deref(), Some("application/json"));
    let body = alone.json();
    let keys: BTreeSet<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["id", "channel", "subscribers"]), "{body}");
    assert_eq!(body["channel"], "count", "{body}");
    assert_eq!(body["subscribers"], 0, "{body}");
    let first_id = id_of(&alone);
    // Byte for byte as the spec shows it: its order, its spacing.
    assert_eq!(
        alone.body,
        format!(r#"{{"id": "{first_id}", "channel": "count", "subscribers": 0}}"#)
    );
    let refused = publish_raw(addr, "channel=no%20spaces", b"x");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.starts_with(r#"{"error": ""#), "{refused:?}");

    let one = subscribe(addr, "channel=count", &[]);
    let mut two = subscribe(addr, "channel=count&channel=other", &[]);
    let _elsewhere = subscribe(addr, "channel=other", &[]);
    let three = subscribe(addr, "channel=count", &[]);
    let answer = publish_raw(addr, "channel=count", b"three listen");
    assert_eq!(answer.json()["subscribers"], 3, "{answer:?}");
    assert!(id_of(&answer) > first_id, "{answer:?}");
    assert_eq!(two.events(1, 10 * SECOND)[0].data, "three listen");

    // A stream learns that its client left when a write fails.
    drop((one, three));
    let mut last = None;
    let dropped = wait_until(15 * SECOND, || {
        let answer = publish_raw(addr, "channel=count", b"who is left?");
        let n = answer.json()["subscribers"].as_u64();
        last = Some(answer);
        n == Some(1)
    });
    assert!(dropped, "two of three left; last answer {last:?}");
}

#[test]
fn raw_publish_sends_body_as_data_with_the_event_name() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let mut client = subscribe(addr, "channel=news", &[]);
    let named = id_of(&publish_raw(addr, "channel=news&event=update", b"hello"));
    let empty = id_of(&publish_raw(addr, "channel=news", b""));
    let escaped = id_of(&publish_raw(
        addr,
        "channel=news&event=new%20item",
        "caf\u{e9} \u{2603}".as_bytes(),
    ));
    client.events(3, 10 * SECOND);
    assert_eq!(
        received(&client),
        format!(
            "event: update\ndata: hello\nid: {named}\n\n\
             data: \nid: {empty}\n\n\
             event: new item\ndata: caf\u{e9} \u{2603}\nid: {escaped}\n\n"
        )
    );
}

#[test]
fn json_publish_sends_strings_as_text_and_other_values_as_compact_json() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let mut client = subscribe(addr, "channel=news", &[]);
    let cases = [
        (
            r#"{"channel": "news", "event": "update", "data": "text"}"#,
            Some("update"),
            "text",
        ),
        (
            r#"{"channel": "news", "data": {"a": [1, 2],  "b": null}}"#,
            None,
            r#"{"a":[1,2],"b":null}"#,
        ),
        (r#"{"channel": "news", "data": 42}"#, None, "42"),
        (
            r#"{"channel": "news", "data": [true, "x", 1.5]}"#,
            None,
            r#"[true,"x",1.5]"#,
        ),
        (r#"{"channel": "news", "data": ""}"#, None, ""),
        // The publisher's own key order and digits, not a re-serialization.
        (
            r#"{"channel": "news", "data": {"user": "bob", "action": "login", "n": 12345678901234567890123}}"#,
            None,
            r#"{"user":"bob","action":"login","n":12345678901234567890123}"#,
        ),
    ];
    let mut expected = String::new();
    for (body, event, data) in cases {
        let answer = publish_json(addr, body);
        assert_eq!(answer.json()["channel"], "news", "{answer:?}");
        let id = id_of(&answer);
        if let Some(event) = event {
            expected.push_str(&format!("event: {event}\n"));
        }
        expected.push_str(&format!("data: {data}\nid: {id}\n\n"));
    }
    client.events(cases.len(), 10 * SECOND);
    assert_eq!(received(&client), expected);
}

#[test]
fn multi_line_data_becomes_one_data_line_per_line() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let mut client = subscribe(addr, "channel=lines", &[]);
    let cases: [(&[u8], &str); 4] = [
        (
            b"one\ntwo\r\nthree\rfour",
            "data: one\ndata: two\ndata: three\ndata: four\n",
        ),
        (b"trailing\n", "data: trailing\ndata: \n"),
        (b"\r\n\r\n", "data: \ndata: \ndata: \n"),
        (b"a\n\nb", "data: a\ndata: \ndata: b\n"),
    ];
    let mut expected = String::new();
    for (body, lines) in cases {
        let id = id_of(&publish_raw(addr, "channel=lines", body));
        expected.push_str(&format!("{lines}id: {id}\n\n"));
    }
    let json = id_of(&publish_json(
        addr,
        r#"{"channel": "lines", "data": "x\ny\r\nz"}"#,
    ));
    expected.push_str(&format!("data: x\ndata: y\ndata: z\nid: {json}\n\n"));
    let events = client.events(cases.len() + 1, 10 * SECOND);
    assert_eq!(received(&client), expected);
    assert_eq!(
        events[0].data, "one\ntwo\nthree\nfour",
        "a client joins the lines with LF"
    );
}

/// Publishes 9 events round robin to `x`, `y`, `z`, then subscribes to `x`
/// and `y` after the second event with `connect`, and checks replay and live.
fn check_replay(connect: impl Fn(SocketAddr, u64) -> SseClient) {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let published: Vec<u64> = (0..9)
        .map(|i| {
            let channel = ["x", "y", "z"][i % 3];
            id_of(&publish_raw(
                addr,
                &format!("channel={channel}"),
                format!("{i} on {channel}").as_bytes(),
            ))
        })
        .collect();
    let mut client = connect(addr, published[1]);
    // After event 1: 3 (x), 4 (y), 6 (x), 7 (y); 5 and 8 are on z.
    let replay = client.events(4, 10 * SECOND);
    assert_eq!(
        datas(&replay),
        ["3 on x", "4 on y", "6 on x", "7 on y"],
        "{}",
        received(&client)
    );
    assert_eq!(
        ids(&replay),
        [published[3], published[4], published[6], published[7]]
    );

    let live = id_of(&publish_raw(addr, "channel=y", b"live on y"));
    id_of(&publish_raw(addr, "channel=z", b"live on z"));
    let end = id_of(&publish_raw(addr, "channel=x", b"end on x"));
    let events = client.events(2, 10 * SECOND);
    assert_eq!(
        ids(&events),
        [live, end],
        "live after replay, nothing twice: {}",
        received(&client)
    );
}

#[test]
fn replay_by_last_event_id_header_across_channels_in_id_order() {
    check_replay(|addr, last| {
        subscribe(
            addr,
            "channel=x&channel=y",
            &[("Last-Event-ID", &last.to_string())],
        )
    });
}

#[test]
fn replay_by_last_event_id_query_parameter() {
    check_replay(|addr, last| subscribe(addr, &format!("channel=y&channel=x&lastEventId={last}"), &[]));
}

#[test]
fn an_empty_last_event_id_header_leaves_the_query_parameter() {
    check_replay(|addr, last| {
        subscribe(
            addr,
            &format!("channel=y&channel=x&lastEventId={last}"),
            &[("Last-Event-ID", "")],
        )
    });
}

#[test]
fn replay_keeps_the_last_history_events_of_each_channel() {
    let server = TestServer::start(&["--history", "3", "--ping-interval", "1m"]);
    let addr = server.addr;
    let published: Vec<u64> = (0..6)
        .map(|i| id_of(&publish_raw(addr, "channel=h", format!("{i}").as_bytes())))
        .collect();
    let mut client = subscribe(addr, "channel=h", &[("Last-Event-ID", &published[0].to_string())]);
    let end = id_of(&publish_raw(addr, "channel=h", b"end"));
    let events = client.events(4, 10 * SECOND);
    assert_eq!(
        ids(&events),
        [published[3], published[4], published[5], end],
        "the 3 retained, then live: {}",
        received(&client)
    );
}

#[test]
fn no_event_is_lost_or_doubled_between_replay_and_live() {
    const EVENTS: usize = 200;
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let published = Arc::new(Mutex::new(Vec::new()));
    let publisher = {
        let published = Arc::clone(&published);
        std::thread::spawn(move || {
            for i in 0..EVENTS {
                let id = id_of(&publish_raw(addr, "channel=race", format!("{i}").as_bytes()));
                published.lock().unwrap().push(id);
            }
        })
    };
    // Clients join while events are published, each replaying from an event
    // a few back from the newest.
    let mut clients = Vec::new();
    for join_after in [20, 60, 100, 140] {
        assert!(
            wait_until(30 * SECOND, || published.lock().unwrap().len() > join_after),
            "publishing stalled"
        );
        let from = join_after - 10;
        let last = published.lock().unwrap()[from];
        clients.push((
            from,
            subscribe(addr, "channel=race", &[("Last-Event-ID", &last.to_string())]),
        ));
    }
    publisher.join().expect("publisher");
    let published = published.lock().unwrap().clone();
    let end = id_of(&publish_raw(addr, "channel=race", b"end"));
    for (from, mut client) in clients {
        let events = client.events(EVENTS - from, 30 * SECOND);
        let mut want: Vec<u64> = published[from + 1..].to_vec();
        want.push(end);
        let got = ids(&events);
        assert!(
            got == want,
            "joined after event {from}: got {} ids, want {}; got {got:?}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn four_publishers_and_twenty_subscribers_each_get_all_400_once_in_order() {
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 100;
    const SUBSCRIBERS: usize = 20;
    const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;
    // A queue as large as the run: this test is about fan-out and order, not
    // about dropping a subscriber that a busy machine left unscheduled.
    let server = TestServer::start(&["--queue-size", "1000", "--ping-interval", "1m", "--log", "info"]);
    let addr = server.addr;
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|n| {
            let mut client = subscribe(addr, "channel=load-0&channel=load-1", &[]);
            std::thread::spawn(move || {
                let events = client.events(TOTAL, 120 * SECOND);
                (n, events)
            })
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            std::thread::spawn(move || {
                (0..PER_PUBLISHER)
                    .map(|i| {
                        let answer = publish_raw(
                            addr,
                            &format!("channel=load-{}", p % 2),
                            format!("{p}-{i}").as_bytes(),
                        );
                        (id_of(&answer), format!("{p}-{i}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut published: Vec<(u64, String)> = publishers
        .into_iter()
        .flat_map(|p| p.join().expect("publisher"))
        .collect();
    published.sort();
    let want_ids: Vec<u64> = published.iter().map(|(id, _)| *id).collect();
    let want_data: Vec<&str> = published.iter().map(|(_, data)| data.as_str()).collect();
    assert_eq!(
        want_ids.iter().collect::<BTreeSet<_>>().len(),
        TOTAL,
        "ids are unique"
    );
    for reader in readers {
        let (n, events) = reader.join().expect("reader");
        assert_eq!(
            ids(&events),
            want_ids,
            "subscriber {n}: every event once, in id order"
        );
        assert_eq!(datas(&events), want_data, "subscriber {n}");
    }
}

#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_recovers_by_replay() {
    const BIG_EVENTS: usize = 40;
    // The write timeout well past the time 4 more events take to queue up
    // behind a blocked write: with 1 s, on a loaded machine the timeout
    // could end the stalled stream first (not counted as slow).
    let server = TestServer::start(&[
        "--queue-size",
        "4",
        "--write-timeout",
        "10s",
        "--ping-interval",
        "1m",
        "--history",
        "1000",
        "--max-body",
        "1MiB",
    ]);
    let addr = server.addr;
    let mut reader = subscribe(addr, "channel=big", &[]);
    // (The kernel's default receive buffer: one of 4 KiB would have what the
    // server had queued trickle in for minutes once it reads again.)
    let mut stalled = SseClient::connect(addr, "/events?channel=big", &[]);
    assert_eq!(stalled.status(), 200, "{}", stalled.head);
    // Both see a first small event; then `stalled` stops reading.
    let hello = id_of(&publish_raw(addr, "channel=big", b"hello"));
    for client in [&mut reader, &mut stalled] {
        let first = client.events(1, 10 * SECOND);
        assert_eq!(ids(&first), [hello]);
    }

    // Big events, each published once the reader has the previous one: the
    // reader never falls behind. The server's socket send buffer grows to
    // about 4 MiB on Linux; past that, writes to the stalled client block.
    let mut published = Vec::new();
    for i in 0..BIG_EVENTS {
        let data = format!("{i:03} {}", "x".repeat(192 * 1024));
        let id = id_of(&publish_raw(addr, "channel=big", data.as_bytes()));
        published.push((id, data));
        let got = reader
            .next_event(10 * SECOND)
            .unwrap_or_else(|| panic!("reader missed event {i}; logs:\n{}", server.logs()));
        assert_eq!(got.id_number(), id, "reader, event {i}");
        assert_eq!(got.data, published[i].1, "reader, event {i}");
    }
    assert!(
        wait_until(15 * SECOND, || open_streams(addr) == 1),
        "the stalled stream was not dropped; health {}; logs:\n{}",
        get(addr, "/health").body,
        server.logs()
    );
    assert_eq!(
        metric(addr, "tinysse_slow_subscribers_dropped_total"),
        1.0,
        "counted as slow; logs:\n{}",
        server.logs()
    );

    assert!(
        server.logs().contains("reason=slow"),
        "its stream closed as slow; logs:\n{}",
        server.logs()
    );

    // The stalled client reads on: what the server had written comes, then
    // the end of the stream, cut where the blocked write was, most likely
    // inside an event (192 KiB each).
    assert!(
        stalled.closed_within(60 * SECOND),
        "the dropped stream never ended; {} bytes came",
        stalled.received.len()
    );
    let got_whole = stalled.buffered_events();
    let dispatched = got_whole.last().map_or(hello, SseEvent::id_number);
    // A client that takes an id as soon as it reads an `id:` line (Node's
    // `eventsource` before version 3) reconnects with the last one it read.
    // The id line comes last in an event, so a cut event's never arrives:
    // that client asks for what the standard's would (the id of the last
    // event dispatched), and misses nothing.
    let body = String::from_utf8_lossy(&stalled.received).into_owned();
    let read_id = body
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("id: "))
        .and_then(|id| id.parse::<u64>().ok());
    let tail = &body[body.rfind("\n\n").map_or(0, |at| at + 2)..];
    assert_eq!(
        read_id,
        Some(dispatched),
        "the id of an event cut short reached the client; its last {} bytes: {:?}",
        tail.len(),
        &tail[..tail.len().min(200)]
    );

    // It comes back as EventSource does: on a new connection with that id.
    // Replay brings every event it missed, once, in order, then live ones.
    drop(stalled);
    let mut again = subscribe(addr, "channel=big", &[("Last-Event-ID", &dispatched.to_string())]);
    let end = id_of(&publish_raw(addr, "channel=big", b"end"));
    let missed: Vec<&(u64, String)> = published.iter().filter(|(id, _)| *id > dispatched).collect();
    let replayed = again.events(missed.len() + 1, 60 * SECOND);
    let mut want: Vec<u64> = missed.iter().map(|(id, _)| *id).collect();
    want.push(end);
    assert!(
        ids(&replayed) == want,
        "replay {:?} != published {want:?}",
        ids(&replayed)
    );
    for (n, event) in replayed[..missed.len()].iter().enumerate() {
        assert!(event.data == missed[n].1, "event {n}: wrong data");
    }
    // Every event, whole, once: what came before the cut and the replay.
    let mut all: Vec<u64> = ids(&got_whole);
    all.extend(&want[..missed.len()]);
    assert_eq!(all, published.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    // The reader is still there and gets the live event too.
    assert_eq!(ids(&reader.events(1, 10 * SECOND)), [end]);
}

#[test]
fn ids_keep_growing_across_channels_and_restarts() {
    let mut server = TestServer::start(&[]);
    let mut last = 0;
    for i in 0..50 {
        let id = id_of(&publish_raw(server.addr, &format!("channel=c{}", i % 3), b"x"));
        assert!(id > last, "id {id} after {last}");
        last = id;
    }
    server.signal("TERM");
    assert!(server.wait_exit(10 * SECOND).is_some(), "server did not stop");
    let restarted = TestServer::start(&[]);
    let id = id_of(&publish_raw(restarted.addr, "channel=c0", b"after restart"));
    assert!(id > last, "after a restart: {id}, before: {last}");
}

#[test]
fn bad_publishes_and_subscriptions_get_400_saying_what_is_wrong() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let mut watcher = subscribe(addr, "channel=c", &[]);
    let long = "x".repeat(129);
    let json = |body: &str| publish_json(addr, body);
    let raw = |query: &str, body: &[u8]| publish_raw(addr, query, body);
    let cases: Vec<(&str, HttpResponse, &str)> = vec![
        ("empty channel", raw("channel=", b"x"), "channel"),
        (
            "channel of 129 bytes",
            raw(&format!("channel={long}"), b"x"),
            "channel",
        ),
        ("space in channel", raw("channel=a%20b", b"x"), "channel"),
        ("non-ASCII channel", raw("channel=caf%C3%A9", b"x"), "channel"),
        ("? in channel", raw("channel=a%3Fb", b"x"), "channel"),
        (
            "JSON channel",
            json(r#"{"channel": "a b", "data": "x"}"#),
            "channel",
        ),
        (
            "LF in event name",
            raw("channel=c&event=a%0Ab", b"x"),
            "event name",
        ),
        (
            "CR in event name",
            raw("channel=c&event=a%0Db", b"x"),
            "event name",
        ),
        (
            "CRLF in JSON event name",
            json(r#"{"channel": "c", "event": "a\r\nb", "data": "x"}"#),
            "event name",
        ),
        (
            "raw body not UTF-8",
            raw("channel=c", &[b'o', b'k', 0xff, 0xfe]),
            "UTF-8",
        ),
        (
            "JSON body not UTF-8",
            publish_json_bytes(addr, b"{\"channel\": \"c\", \"data\": \"\xff\"}"),
            "UTF-8",
        ),
        ("broken JSON", json(r#"{"channel": "c", "data": "#), "JSON"),
        (
            "JSON without data",
            json(r#"{"channel": "c", "event": "e"}"#),
            "data",
        ),
        ("event name not UTF-8", raw("channel=c&event=%E9", b"x"), "UTF-8"),
        (
            "two channels in one publish",
            raw("channel=c&channel=d", b"x"),
            "more than once",
        ),
        (
            "two channels in one JSON publish",
            json(r#"{"channel": "c", "data": "x", "channel": "d"}"#),
            "'channel' given more than once",
        ),
        (
            "two data members in one JSON publish",
            json(r#"{"data": "x", "channel": "c", "data": "y"}"#),
            "'data' given more than once",
        ),
        (
            "one channel in the query, another in the JSON",
            http(
                addr,
                "POST",
                "/publish?channel=c",
                &[("Content-Type", "application/json")],
                br#"{"channel": "d", "data": "x"}"#,
            ),
            r#"'channel' is "c" in the query but "d" in the JSON body"#,
        ),
        (
            "two Content-Lengths that disagree",
            http(
                addr,
                "POST",
                "/publish?channel=c",
                &[("Content-Length", "1"), ("Content-Length", "2")],
                b"xy",
            ),
            "Content-Length",
        ),
    ];
    for (what, response, says) in &cases {
        assert_eq!(response.status, 400, "{what}: {response:?}");
        assert_eq!(
            response.header("Content-Type").as_deref(),
            Some("application/json"),
            "{what}"
        );
        let error = response.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains(says),
            "{what}: the error should say {says:?}: {error:?}"
        );
    }
    let limit = "x".repeat(128);
    id_of(&raw(&format!("channel={limit}"), b"128 bytes is fine"));
    id_of(&raw("channel=A-Z_a.z:0/9", b"every allowed character"));

    for (query, says) in [
        ("channel=a%20b", "channel"),
        ("channel=", "channel"),
        // Said as a publish says it (was: the name shown with U+FFFD).
        (
            "channel=a%FFb",
            "query parameter 'channel' is not valid UTF-8 once percent-decoded",
        ),
        (&format!("channel={long}") as &str, "channel"),
        (
            &(0..33)
                .map(|i| format!("channel=c{i}"))
                .collect::<Vec<_>>()
                .join("&") as &str,
            "32",
        ),
    ] {
        let response = get(addr, &format!("/events?{query}"));
        assert_eq!(response.status, 400, "GET /events?{query}: {response:?}");
        let error = response.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "GET /events?{query}: {error:?}");
    }

    // Nothing refused was sent: the next event on `c` is this one.
    let end = id_of(&raw("channel=c", b"end"));
    let first = watcher.events(1, 10 * SECOND);
    assert_eq!(ids(&first), [end], "{}", received(&watcher));
}

/// `POST /publish` with a JSON content type and any bytes.
fn publish_json_bytes(addr: SocketAddr, body: &[u8]) -> HttpResponse {
    http(
        addr,
        "POST",
        "/publish",
        &[("Content-Type", "application/json")],
        body,
    )
}

#[test]
fn bodies_over_max_body_get_413() {
    // Small bodies are read by tiny_http before the handler, larger ones by
    // the handler: both paths.
    for (max, size) in [("100", 100), ("4KiB", 4096)] {
        let server = TestServer::start(&["--max-body", max]);
        let addr = server.addr;
        let exact = publish_raw(addr, "channel=c", &vec![b'x'; size]);
        assert_eq!(exact.status, 200, "--max-body {max}, {size} bytes: {exact:?}");
        for body in [vec![b'x'; size + 1], vec![b'x'; size * 4]] {
            let over = publish_raw(addr, "channel=c", &body);
            assert_eq!(
                over.status,
                413,
                "--max-body {max}, {} bytes: {over:?}",
                body.len()
            );
            let error = over.json()["error"].as_str().unwrap_or_default().to_string();
            assert!(error.contains("large"), "{error:?}");
        }
        let json = format!(r#"{{"channel": "c", "data": "{}"}}"#, "x".repeat(size));
        assert_eq!(publish_json(addr, &json).status, 413, "--max-body {max}, JSON");
    }
}

/// Sends a publish head, then `body`, then ends the sending side, and
/// returns the final answer (after any `100 Continue`).
fn publish_cut_short(addr: SocketAddr, head_lines: &str, body: &[u8]) -> HttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(10 * SECOND)).unwrap();
    let head = format!("POST /publish?channel=cut HTTP/1.1\r\nHost: {addr}\r\n{head_lines}\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    if head_lines.contains("100-continue") {
        // The server asks for the body once it starts reading it.
        while !String::from_utf8_lossy(&raw).contains("\r\n\r\n") {
            let n = stream.read(&mut chunk).expect("100 Continue");
            assert!(n > 0, "closed before 100 Continue: {raw:?}");
            raw.extend_from_slice(&chunk[..n]);
        }
        let interim = String::from_utf8_lossy(&raw).to_string();
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
        // RFC 9110 (8.6): a 1xx answer carries no Content-Length.
        assert!(
            !interim.to_ascii_lowercase().contains("content-length"),
            "{interim:?}"
        );
        raw.clear();
    }
    // The server may answer (and close) before it reads a body it refuses
    // for its head alone: the answer is then what counts.
    let sent = stream.write_all(body);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    assert!(
        read_until_closed(&mut stream, 10 * SECOND, &mut raw),
        "no whole answer within 10 s (sending the body: {sent:?}): {raw:?}"
    );
    parse_response(&raw)
}

#[test]
fn bodies_cut_short_or_with_a_bad_length_publish_nothing() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let cases: [(&str, &[u8], &str); 4] = [
        // The client asked to go on, sent 3 of 10 bytes and stopped.
        (
            "Expect: 100-continue\r\nContent-Length: 10\r\n",
            b"abc",
            "3 of the 10",
        ),
        // A body large enough that the handler reads it from the socket.
        ("Content-Length: 5000\r\n", &[b'x'; 100], "100 of the 5000"),
        // A small one, which tiny_http reads whole before the request is
        // handed on (it used to close the connection without an answer).
        (
            "Content-Length: 10\r\n",
            b"abc",
            "ended before its Content-Length",
        ),
        // tiny_http takes a length it cannot parse for no body at all.
        ("Content-Length: abc\r\n", b"hello", "Content-Length 'abc'"),
    ];
    for (head, body, said) in cases {
        let answer = publish_cut_short(addr, head, body);
        assert_eq!(answer.status, 400, "{head:?}: {answer:?}");
        let error = answer.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(said), "{head:?}: {error:?}");
    }
    // Nothing reached the channel: a full replay finds no event.
    assert_eq!(metric(addr, "tinysse_events_published_total"), 0.0);
    let ok = publish_raw(addr, "channel=cut", b"whole");
    assert_eq!(ok.status, 200, "{ok:?}");
    let mut replay = subscribe(addr, "channel=cut", &[("Last-Event-ID", "0")]);
    let events = replay.events(1, 10 * SECOND);
    assert_eq!(events.len(), 1, "{}", received(&replay));
    // A cut-short body, had it been published, would come first.
    assert_eq!(events[0].data, "whole", "{}", received(&replay));
}

#[test]
fn a_last_event_id_from_the_future_misses_nothing_new() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let old = id_of(&publish_raw(addr, "channel=f", b"old"));
    // An id far past any given out (a day of microseconds ahead).
    let ahead = (old + 86_400_000_000).to_string();
    let mut client = subscribe(addr, "channel=f", &[("Last-Event-ID", &ahead)]);
    let new = id_of(&publish_raw(addr, "channel=f", b"new"));
    assert!(new < old + 86_400_000_000);
    let events = client.events(1, 10 * SECOND);
    assert_eq!(ids(&events), [new], "{}", received(&client));
    assert_eq!(events[0].data, "new");
}

#[test]
fn publish_token_is_required_when_set() {
    let server = TestServer::start(&[
        "--publish-token",
        "s3cret",
        "--ping-interval",
        "1m",
        "--log",
        "info",
    ]);
    let addr = server.addr;
    // Subscribing needs no token.
    let mut client = subscribe(addr, "channel=t", &[]);
    let with = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http(addr, "POST", "/publish?channel=t", &headers, b"secret news")
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
        Some("s3cret"),
        Some("Bearer"),
    ] {
        let response = with(auth);
        assert_eq!(response.status, 401, "Authorization {auth:?}: {response:?}");
        let error = response.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(!error.is_empty(), "{response:?}");
        assert!(!error.contains("s3cret"), "the token must not leak: {error:?}");
    }
    let missing = with(None).json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        missing.contains("Authorization"),
        "says what is missing: {missing:?}"
    );
    for other_scheme in ["Basic s3cret", "s3cret"] {
        let error = with(Some(other_scheme)).json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.contains("must be 'Bearer <token>'"),
            "{other_scheme}: {error:?}"
        );
    }
    // Each refusal is logged at the default level, the token never.
    let logged = |logs: &str| logs.matches("publish refused peer=127.0.0.1:").count();
    assert!(
        wait_until(10 * SECOND, || logged(&server.logs()) == 10),
        "{}",
        server.logs()
    );
    assert!(
        server.logs().contains(": wrong publish token"),
        "{}",
        server.logs()
    );
    assert!(!server.logs().contains("s3cre"), "{}", server.logs());
    let ok = id_of(&with(Some("Bearer s3cret")));
    let json = http(
        addr,
        "POST",
        "/publish",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer s3cret"),
        ],
        br#"{"channel": "t", "data": "json too"}"#,
    );
    let ok_json = id_of(&json);
    let events = client.events(2, 10 * SECOND);
    assert_eq!(
        ids(&events),
        [ok, ok_json],
        "only the authorised ones: {}",
        received(&client)
    );
}

#[test]
fn an_event_published_once_the_head_is_seen_reaches_the_client() {
    let server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    for i in 0..20 {
        // A fresh channel each time: nothing to replay, no history.
        let mut client = subscribe(addr, &format!("channel=fresh-{i}&channel=other"), &[]);
        let id = id_of(&publish_raw(
            addr,
            &format!("channel=fresh-{i}"),
            b"right after the head",
        ));
        let events = client.events(1, 10 * SECOND);
        assert_eq!(ids(&events), [id], "round {i}");
    }
}

#[test]
fn events_streams_have_pings_and_no_ticker() {
    let server = TestServer::start(&["--tick-interval", "200ms", "--ping-interval", "300ms"]);
    let mut client = subscribe(server.addr, "channel=quiet", &[]);
    let started = Instant::now();
    let mut blocks = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        match client.next_block(Duration::from_millis(1500).saturating_sub(started.elapsed())) {
            Some(block) => blocks.push(block),
            None => break,
        }
    }
    assert!(blocks.len() >= 2, "pings expected: {}", received(&client));
    for block in &blocks {
        assert!(
            block.starts_with(": ping - "),
            "only pings: {}",
            received(&client)
        );
    }
}

#[test]
fn shutdown_writes_every_accepted_event_before_ending_streams() {
    let mut server = TestServer::start(&["--ping-interval", "1m"]);
    let addr = server.addr;
    let mut clients: Vec<SseClient> = (0..3).map(|_| subscribe(addr, "channel=last", &[])).collect();
    let published: Vec<u64> = (0..30)
        .map(|i| id_of(&publish_raw(addr, "channel=last", format!("{i}").as_bytes())))
        .collect();
    server.signal("TERM");
    let status = server.wait_exit(5 * SECOND);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "logs:\n{}", server.logs());
    for (n, client) in clients.iter_mut().enumerate() {
        assert!(client.closed_within(5 * SECOND), "client {n}: stream not ended");
        let events = client.buffered_events();
        assert_eq!(ids(&events), published, "client {n}: {}", received(client));
    }
}

#[test]
fn a_stream_refused_after_the_head_was_read_gets_a_json_503() {
    // With every channel slot held by a subscribed channel, a stream to a new
    // channel is refused by its own thread (which has only the raw
    // connection): the answer is still a whole JSON error response.
    let server = TestServer::start(&["--max-channels", "1", "--tick-interval", "0"]);
    let mut held = SseClient::connect(server.addr, "/events?channel=held", &[]);
    assert_eq!(held.status(), 200, "{}", held.head);
    let refused = http(server.addr, "GET", "/events?channel=other", &[], b"");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        refused.header("Content-Type").as_deref(),
        Some("application/json")
    );
    assert!(refused.header("Retry-After").is_some(), "{}", refused.head);
    let message = refused.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("maximum of 1 channels"), "{message}");
    let id = publish(server.addr, "held", "still served");
    assert_eq!(
        held.next_event(Duration::from_secs(10)).map(|e| e.id_number()),
        Some(id)
    );
}

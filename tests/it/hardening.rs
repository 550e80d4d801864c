//! Limits, hostile input and faults: the server keeps working and loses
//! nothing (issue 4).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::support::*;

const LONG: Duration = Duration::from_secs(15);

/// Waits until `n` streams are open according to `/health`.
fn wait_open_streams(server: &TestServer, n: u64) {
    let ok = wait_until(LONG, || get(server.addr, "/health").json()["open_streams"] == n);
    assert!(
        ok,
        "open_streams never reached {n}: {}",
        get(server.addr, "/health").body
    );
}

/// Reads a stream's response head (and whatever came with it). The
/// subscription exists once the head is sent; an open stream is counted a
/// moment before it subscribes, so an event published on that count alone
/// may come too early for it.
fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let deadline = Instant::now() + LONG;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no head: {:?}", String::from_utf8_lossy(&got));
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("no head ({other:?}): {:?}", String::from_utf8_lossy(&got)),
        }
    }
    got
}

#[test]
fn one_stream_over_the_cap_gets_503_and_the_others_go_on() {
    let server = TestServer::start(&["--max-connections", "3", "--tick-interval", "0", "--log", "info"]);
    let mut open: Vec<SseClient> = (0..3)
        .map(|_| SseClient::connect(server.addr, "/events?channel=cap", &[]))
        .collect();
    wait_open_streams(&server, 3);
    let refused = http(server.addr, "GET", "/events?channel=cap", &[], b"");
    assert_eq!(refused.status, 503, "{refused:?}");
    // Logged at the default level, as other refused streams are.
    assert!(
        wait_until(LONG, || server.logs().contains("stream refused peer=127.0.0.1:")
            && server.logs().contains("too many open streams")),
        "{}",
        server.logs()
    );
    // HEAD says what GET would.
    for path in ["/events?channel=cap", "/"] {
        let head = http(server.addr, "HEAD", path, &[], b"");
        assert_eq!(head.status, 503, "HEAD {path}: {head:?}");
        assert!(head.header("Retry-After").is_some(), "{}", head.head);
    }
    assert!(refused.header("Retry-After").is_some(), "{}", refused.head);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("max-connections"));
    let demo = http(server.addr, "GET", "/", &[], b"");
    assert_eq!(demo.status, 503, "the demo stream counts too");
    let id = publish(server.addr, "cap", "still here");
    for client in &mut open {
        let event = client
            .next_event(LONG)
            .expect("the open streams still get events");
        assert_eq!((event.id_number(), event.data.as_str()), (id, "still here"));
    }
    drop(open.pop());
    // one slot frees up once the server notices the client left
    let ok = wait_until(LONG, || {
        publish(server.addr, "cap", "poke");
        get(server.addr, "/health").json()["open_streams"] == 2
    });
    assert!(ok, "slot never freed");
    let mut again = SseClient::connect(server.addr, "/events?channel=cap", &[]);
    assert_eq!(again.status(), 200, "{}", again.head);
    let id = publish(server.addr, "cap", "welcome back");
    assert_eq!(again.next_event(LONG).map(|e| e.id_number()), Some(id));
}

#[test]
fn the_open_files_limit_is_raised_and_logged() {
    let server = TestServer::start(&[]);
    assert!(
        wait_until(LONG, || server.logs().contains("open files limit: ")),
        "{}",
        server.logs()
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        numbers[0], numbers[1],
        "soft limit raised to the hard one: {line}"
    );
}

#[test]
fn unfinished_request_heads_are_closed_while_health_answers() {
    let server = TestServer::start(&[]);
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            let partial = if i % 2 == 0 {
                "GET /events HTTP/1.1\r\nHost: x\r\n"
            } else {
                "POST /publ"
            };
            s.write_all(partial.as_bytes()).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let health = get(server.addr, "/health");
    let took = started.elapsed();
    assert_eq!(health.status, 200);
    // Not held until the stalled heads are cut (10 s). It may wait up to
    // ~2 s, though: tiny_http's pool can queue a connection that arrives
    // with a burst until a worker's task ends (a silent head's read times
    // out after 2 s) or the keep-awake connection frees one (BENCHMARKS.md,
    // "Limits found"); seen once in CI at 2.03 s.
    assert!(
        took < Duration::from_secs(4),
        "/health took {took:?} beside 200 stalled heads"
    );
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(
            read_until_closed(s, Duration::from_secs(12), &mut Vec::new()),
            "stalled connection {i} still open"
        );
    }
    assert_eq!(get(server.addr, "/health").status, 200);
}

/// Asserts that `answer` is a whole error answer with status `status` and
/// a JSON body `{"error": "..."}` of its `Content-Length`; returns the
/// message.
fn assert_json_error(answer: &[u8], status: u16, sent: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let sent = String::from_utf8_lossy(sent);
    assert!(
        text.contains("\r\n\r\n"),
        "{sent:?} got no whole answer: {text:?}"
    );
    let response = parse_response(answer);
    assert_eq!(response.status, status, "{sent:?}: {response:?}");
    assert_eq!(
        response.header("Content-Type").as_deref(),
        Some("application/json"),
        "{sent:?}: {response:?}"
    );
    assert_eq!(
        response.header("Content-Length"),
        Some(response.body.len().to_string()),
        "{sent:?}: the whole body"
    );
    assert_eq!(
        response.header("Connection").as_deref(),
        Some("close"),
        "{sent:?}: the connection ends, and the answer says so"
    );
    let message = response.json()["error"].as_str().map(str::to_string);
    message.unwrap_or_else(|| panic!("{sent:?}: no error message in {response:?}"))
}

#[test]
fn header_values_with_bytes_outside_ascii_are_served() {
    // Browsers send cookies set by other applications on the same host as
    // raw UTF-8 (RFC 9110, 5.5: obs-text, opaque to a recipient); such a
    // request used to get 400, the page's stream with it.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let cookie: &[u8] = b"Cookie: name=Ng\xc6\xb0\xe1\xbb\x9di d\xc3\xb9ng\r\n";
    let mut request = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    request.extend_from_slice(cookie);
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let answer = String::from_utf8_lossy(&answer_to(server.addr, &request)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");

    let mut stream = TcpStream::connect(server.addr).unwrap();
    let mut request =
        b"GET /events?channel=utf8 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n".to_vec();
    request.extend_from_slice(cookie);
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).unwrap();
    let mut got = read_head(&mut stream);
    let id = publish(server.addr, "utf8", "caf\u{e9}");
    stream.set_read_timeout(Some(LONG)).unwrap();
    let mut chunk = [0u8; 4096];
    let wanted = format!("data: caf\u{e9}\nid: {id}\n\n");
    while !String::from_utf8_lossy(&got).contains(&wanted) {
        let n = stream.read(&mut chunk).expect("the stream goes on");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 "));
}

#[test]
fn a_byte_outside_ascii_never_stands_for_a_character_of_a_token() {
    // Such a byte is kept as DEL; kept as '?', it matched a token's '?'.
    let server = TestServer::start(&["--tick-interval", "0", "--publish-token", "sec?ret"]);
    let with = |auth: &[u8]| {
        let mut request = b"POST /publish?channel=t HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ".to_vec();
        request.extend_from_slice(auth);
        request.extend_from_slice(b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
        parse_response(&answer_to(server.addr, &request)).status
    };
    assert_eq!(with(b"sec\xffret"), 401);
    assert_eq!(with(b"sec?ret"), 200);
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 1.0);
}

#[test]
fn an_http_1_1_request_needs_exactly_one_host_header() {
    // RFC 9112, 3.2: a server must answer 400 to an HTTP/1.1 request
    // without Host, and to any request with more than one.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let cases: [(&[u8], u16, &str); 5] = [
        (
            b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
            "needs a Host",
        ),
        (
            b"GET /events HTTP/1.1\r\nHost: a\r\nhost: b\r\nConnection: close\r\n\r\n",
            400,
            "more than one Host",
        ),
        (
            b"POST /publish?channel=h HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
            400,
            "needs a Host",
        ),
        // HTTP/1.0 had no Host.
        (b"GET /health HTTP/1.0\r\n\r\n", 200, "ok"),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            200,
            "ok",
        ),
    ];
    for (request, status, said) in cases {
        let response = parse_response(&answer_to(server.addr, request));
        let sent = String::from_utf8_lossy(request);
        assert_eq!(response.status, status, "{sent:?}: {response:?}");
        assert!(response.body.contains(said), "{sent:?}: {response:?}");
    }
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 0.0);
}

#[test]
fn requests_tiny_http_refuses_get_json_errors_too() {
    let server = TestServer::start(&["--tick-interval", "0"]);
    let cases: [(&[u8], u16, &str); 11] = [
        // Header lines a proxy in front could read otherwise: a space before
        // the colon, an empty name, a NUL, obsolete line folding.
        (
            b"POST /publish?channel=a HTTP/1.1\r\nContent-Length : 1\r\n\r\nx",
            400,
            "header",
        ),
        (b"GET /health HTTP/1.1\r\n: v\r\n\r\n", 400, "header"),
        (b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400, "header"),
        (b"GET /health HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", 400, "header"),
        (b"HELLO\r\n\r\n", 400, "request line"),
        (b"GET /health HTTP/1.1 extra\r\n\r\n", 400, "request line"),
        (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, "header"),
        // Before: the connection closed with no answer at all.
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "ASCII"),
        // In a header's name a byte outside ASCII is refused; in its value
        // it is opaque data (see the test below).
        (b"GET /health HTTP/1.1\r\nX-Caf\xc3\xa9: x\r\n\r\n", 400, "header"),
        (
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n",
            400,
            "ASCII",
        ),
        // Before: 417 with `Content-Length: 0`, then with a length and no body.
        (
            b"POST /publish?channel=a HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx",
            417,
            "100-continue",
        ),
    ];
    for (request, status, said) in cases {
        let message = assert_json_error(&answer_to(server.addr, request), status, request);
        assert!(message.contains(said), "{message:?} should mention {said:?}");
    }
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 0.0);
}

#[test]
fn a_small_body_that_stops_coming_gets_408() {
    // tiny_http reads a body of 1 KiB or less whole before the request is
    // handed on; one that paused past the read timeout there closed the
    // connection without an answer.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let mut connection = TcpStream::connect(server.addr).expect("connect");
    connection
        .write_all(b"POST /publish?channel=slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        .expect("send");
    let mut answer = Vec::new();
    assert!(
        read_until_closed(&mut connection, LONG, &mut answer),
        "still open"
    );
    let text = String::from_utf8_lossy(&answer).to_string();
    let message = assert_json_error(&answer, 408, b"a body that stops");
    assert!(message.contains("in time"), "{text}");
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 0.0);
}

#[test]
fn a_later_http_1_version_and_bare_lf_line_ends_are_served() {
    let server = TestServer::start(&["--tick-interval", "0"]);
    // RFC 9110 (2.5): HTTP/1.2 is served as the highest 1.x spoken (it got
    // 400). RFC 9112 (2.2): a bare LF may be taken for CR LF, as hand-typed
    // and scripted requests (`printf ... | nc`) send (no answer at all).
    let requests: [&[u8]; 2] = [
        b"GET /health HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /health HTTP/1.1\nHost: x\nConnection: close\n\n",
    ];
    for request in requests {
        let response = parse_response(&answer_to(server.addr, request));
        assert!(response.head.starts_with("HTTP/1.1 200 "), "{response:?}");
        assert_eq!(response.json()["status"], "ok");
    }
    let published = answer_to(
        server.addr,
        b"POST /publish?channel=lf HTTP/1.1\nHost: x\nContent-Length: 2\nConnection: close\n\nhi",
    );
    assert_eq!(parse_response(&published).status, 200);
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 1.0);
}

#[test]
fn line_ends_before_a_request_line_are_skipped() {
    // RFC 9112 (2.2): a server should ignore at least one empty line
    // before a request line; some clients send a CRLF after a POST body.
    // It was read as the request line: 400, the connection closed, and the
    // request pipelined behind it lost.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let pipelined = answer_to(
        server.addr,
        b"\r\nPOST /publish?channel=crlf HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\r\n\
          GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&pipelined);
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    assert!(!text.contains(" 400 "), "{text}");
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 1.0);

    // A kept-alive connection given a stray line end goes on waiting for
    // its next request as long as it would have without it (5 s, not the
    // 2 s of a read within a request).
    let mut connection = TcpStream::connect(server.addr).expect("connect");
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let publish = b"POST /publish?channel=crlf HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\r\n";
    let first = parse_response(answer_on(&mut connection, publish).as_bytes());
    assert_eq!(first.status, 200, "{first:?}");
    let mut unexpected = Vec::new();
    assert!(
        !read_until_closed(&mut connection, Duration::from_secs(3), &mut unexpected),
        "closed within 3 s of a stray line end: {}",
        String::from_utf8_lossy(&unexpected)
    );
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let second = parse_response(answer_on(&mut connection, health).as_bytes());
    assert_eq!(second.status, 200, "{second:?}");

    // Only a few: more than 8 bytes of them are a malformed request line.
    let flood = answer_to(
        server.addr,
        b"\r\n\r\n\r\n\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let refused = parse_response(&flood);
    assert_eq!(refused.status, 400, "{refused:?}");
}

#[test]
fn an_http_1_0_client_gets_no_100_continue() {
    // RFC 9110 (15.2): no 1xx to an HTTP/1.0 client, which takes it for
    // the final answer.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let request =
        b"POST /publish?channel=old HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
    let answer = String::from_utf8_lossy(&answer_to(server.addr, request)).to_string();
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 1.0);
}

#[test]
fn a_publish_refused_from_its_head_gets_no_100_continue() {
    // `100 Continue` asks the client for the body; a publish that its head
    // alone refuses is answered at once, and its connection closed (the
    // client sends no body after a final answer).
    let server = TestServer::start(&["--tick-interval", "0", "--publish-token", "t0ken"]);
    let auth = "Authorization: Bearer t0ken\r\n";
    for (what, query, headers, status) in [
        ("no token", "channel=c", "", "401"),
        ("bad event name", "channel=c&event=a%0Ab", auth, "400"),
        ("bad channel", "channel=a%20b", auth, "400"),
        ("an id", "channel=c&id=7", auth, "400"),
        ("a body over --max-body", "channel=c", auth, "413"),
    ] {
        let length = if status == "413" { 1 << 20 } else { 2 };
        let request = format!(
            "POST /publish?{query} HTTP/1.1\r\nHost: x\r\n{headers}Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
        );
        let answer = String::from_utf8_lossy(&answer_to(server.addr, request.as_bytes())).to_string();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {answer}"
        );
        assert!(!answer.contains("100 Continue"), "{what}: {answer}");
        assert!(answer.contains("\r\nConnection: close\r\n"), "{what}: {answer}");
    }
    let good = format!(
        "POST /publish?channel=c HTTP/1.1\r\nHost: x\r\n{auth}Expect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    );
    let answer = String::from_utf8_lossy(&answer_to(server.addr, good.as_bytes())).to_string();
    assert!(answer.starts_with("HTTP/1.1 100 Continue\r\n"), "{answer}");
    assert!(answer.contains("HTTP/1.1 200 "), "{answer}");
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 1.0);
}

#[test]
fn http_2_request_lines_get_505_and_hold_no_thread() {
    let server = TestServer::start(&["--tick-interval", "0"]);
    // Every thread of the server started (it prints its address before).
    assert_eq!(get(server.addr, "/health").status, 200);
    let threads = server.threads();
    let descriptors = server.fds();
    // `curl --http2-prior-knowledge` starts with this preface and a frame.
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
    let requests: [&[u8]; 4] = [
        preface,
        b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        // No such thing: an HTTP/0.9 request has no version.
        b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n",
    ];
    for round in 0..3 {
        for request in requests {
            // Before: tiny_http's thread for the connection waited for
            // itself for ever; no answer, and the connection stayed open
            // until the head guard's 10 s, its thread and descriptors kept.
            let started = Instant::now();
            let answer = answer_to(server.addr, request);
            let message = assert_json_error(&answer, 505, request);
            assert!(message.contains("HTTP/1.1"), "{message:?}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "round {round}: closed after {:?}, not at once",
                started.elapsed()
            );
        }
    }
    assert!(
        wait_until(LONG, || server.threads() <= threads
            && server.fds() <= descriptors),
        "threads {} -> {}, descriptors {} -> {}: {:?}",
        threads,
        server.threads(),
        descriptors,
        server.fds(),
        server.thread_names()
    );
    assert_eq!(get(server.addr, "/health").status, 200);
}

#[test]
fn connections_opened_together_are_all_answered_at_once() {
    // tiny_http's pool gave two connections that came together to one idle
    // thread; the second waited in its queue until some thread's connection
    // ended, here a kept-alive one's after its 2 s read timeout (or the
    // keep-awake thread's rescue, up to 1.25 s). wrk -c50 saw answers up to
    // 2 s late. Each client keeps its connection open once answered, as a
    // load generator does, so that no thread frees up for a queued one.
    let server = TestServer::start(&["--tick-interval", "0"]);
    const CLIENTS: usize = 24;
    for round in 0..5 {
        let start = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (addr, start) = (server.addr, start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let started = Instant::now();
                    let mut connection = TcpStream::connect(addr).expect("connect");
                    connection.set_read_timeout(Some(LONG)).unwrap();
                    let answer = answer_on(&mut connection, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
                    (started.elapsed(), answer, connection)
                })
            })
            .collect();
        let answers: Vec<_> = clients.into_iter().map(|c| c.join().expect("client")).collect();
        let slowest = answers.iter().map(|(took, _, _)| *took).max().unwrap_or_default();
        for (_, answer, _) in &answers {
            assert!(answer.starts_with("HTTP/1.1 200"), "round {round}: {answer:?}");
        }
        // Generous for a loaded machine; the queued ones took a second or two.
        assert!(
            slowest < Duration::from_millis(700),
            "round {round}: the slowest of {CLIENTS} answers took {slowest:?}"
        );
    }
}

#[test]
fn garbage_and_huge_heads_do_not_hurt() {
    let server = TestServer::start(&[]);
    let garbage: [&[u8]; 6] = [
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        // (Up to 8 bytes of line ends are skipped before a request line,
        // and then a request waited for: more are garbage.)
        b"\r\n\r\n\r\n\r\n\r\n",
    ];
    for i in 0..300 {
        let answer = answer_to(server.addr, garbage[i % garbage.len()]);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 505"),
            "garbage {i} got {text:?}"
        );
    }
    let big = "x".repeat(200 * 1024);
    let request = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let answer = answer_to(server.addr, request.as_bytes());
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 431"), "{text:?}");
    // The method counts too: a 200 KiB one is not echoed in a 405.
    let request = format!("{big} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = answer_to(server.addr, request.as_bytes());
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.len() < 1024,
        "{} bytes answered: {:?}",
        answer.len(),
        &text[..200.min(text.len())]
    );
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 431"), "{text:?}");
    let health = get(server.addr, "/health");
    assert_eq!(health.status, 200, "server survived: {health:?}");
    assert!(wait_until(Duration::from_secs(5), || server.pid() > 0
        && get(server.addr, "/health").status == 200));
}

#[test]
fn http_1_0_clients_get_a_plain_stream_that_ends_with_the_connection() {
    let mut server = TestServer::start(&["--tick-interval", "100ms"]);
    let mut client = SseClient::connect_version(server.addr, "/", &[], "HTTP/1.0");
    assert!(client.head.starts_with("HTTP/1.0 200 OK\r\n"), "{}", client.head);
    assert!(
        client.header("Transfer-Encoding").is_none(),
        "no chunking: {}",
        client.head
    );
    assert!(client.header("Content-Length").is_none(), "{}", client.head);
    let events = client.events(3, LONG);
    let ids: Vec<u64> = events.iter().map(SseEvent::id_number).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let mut channel = SseClient::connect_version(server.addr, "/events?channel=old", &[], "HTTP/1.0");
    assert!(
        channel.head.starts_with("HTTP/1.0 200 OK\r\n"),
        "{}",
        channel.head
    );
    wait_open_streams(&server, 2);
    let id = publish(server.addr, "old", "for an old client");
    assert_eq!(channel.next_event(LONG).map(|e| e.id_number()), Some(id));
    server.signal("TERM");
    assert!(
        client.closed_within(LONG),
        "the stream ends when the server closes it"
    );
    assert!(channel.closed_within(LONG));
    assert!(server.wait_exit(LONG).is_some_and(|s| s.success()));
}

#[test]
fn abrupt_disconnects_leave_no_thread_or_descriptor_behind() {
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "200ms"]);
    let settle = |what: &str, read: &dyn Fn() -> usize| {
        let mut last = read();
        // a baseline is a value that holds still for a while (tiny_http's
        // idle pool threads end 5 s after their last connection)
        let steady = wait_until(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(500));
            let now = read();
            let same = now == last;
            last = now;
            same
        });
        assert!(steady, "{what} never settled");
        last
    };
    let _ = get(server.addr, "/health");
    let threads_before = settle("threads", &|| server.threads());
    let fds_before = server.fds();
    let clients: Vec<SseClient> = (0..200)
        .map(|i| SseClient::connect(server.addr, &format!("/events?channel=rst{}", i % 7), &[]))
        .collect();
    wait_open_streams(&server, 200);
    assert!(server.threads() >= threads_before + 200, "a thread per stream");
    for client in clients {
        SockRef::from(client.socket())
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client); // RST
    }
    wait_open_streams(&server, 0);
    let threads_back = wait_until(Duration::from_secs(20), || server.threads() <= threads_before);
    assert!(
        threads_back,
        "threads: before {threads_before}, now {}",
        server.threads()
    );
    let fds_back = wait_until(Duration::from_secs(20), || server.fds() <= fds_before);
    assert!(fds_back, "fds: before {fds_before}, now {}", server.fds());
    let metrics = get(server.addr, "/metrics").body;
    assert!(
        metrics.contains("tinysse_disconnects_total{reason=\"client_left\"} 200"),
        "{metrics}"
    );
}

#[test]
fn a_panic_ends_one_connection_and_the_server_goes_on() {
    if !cfg!(debug_assertions) {
        // The server's injected faults (src/fault.rs) are compiled into
        // debug builds only, and `cargo test --release` builds it without.
        eprintln!("skipped: fault injection exists in debug builds only");
        return;
    }
    let server = TestServer::start_with_env(&["--tick-interval", "0"], &[("TINYSSE_FAULTS", "1")]);
    let mut healthy = SseClient::connect(server.addr, "/events?channel=fine", &[]);
    let mut doomed = SseClient::connect(server.addr, "/events?channel=fault.panic-stream", &[]);
    assert!(doomed.closed_within(LONG), "the panicking stream is closed");
    let answer = http(
        server.addr,
        "POST",
        "/publish?channel=fault.panic-publish",
        &[],
        b"x",
    );
    assert_eq!(
        answer.status, 500,
        "a panicking publish gets an error answer: {answer:?}"
    );
    assert!(
        answer.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("internal error")),
        "the 500 is JSON like every error: {answer:?}"
    );
    // On a kept-alive connection: the 500, then the connection's end, even
    // with a request sent behind.
    let mut kept = TcpStream::connect(server.addr).expect("connect");
    kept.set_read_timeout(Some(LONG)).unwrap();
    let answer = answer_on(
        &mut kept,
        b"POST /publish?channel=fault.panic-publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx\
          GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 500 "), "{answer:?}");
    assert!(answer.contains("Connection: close"), "{answer:?}");
    let mut rest = Vec::new();
    assert!(
        read_until_closed(&mut kept, LONG, &mut rest),
        "the connection ended"
    );
    assert!(
        rest.is_empty(),
        "nothing served after the panic: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let id = publish(server.addr, "fine", "still serving");
    assert_eq!(healthy.next_event(LONG).map(|e| e.id_number()), Some(id));
    assert!(
        wait_until(LONG, || server.logs().contains("panicked")),
        "the panic is logged: {}",
        server.logs()
    );
    let metrics = get(server.addr, "/metrics").body;
    assert!(
        metrics.contains("tinysse_disconnects_total{reason=\"error\"} 1"),
        "{metrics}"
    );
}

#[test]
fn shutdown_delivers_every_accepted_event_to_every_subscriber() {
    let mut server = TestServer::start(&["--tick-interval", "0"]);
    let mut subscribers: Vec<SseClient> = (0..5)
        .map(|_| SseClient::connect(server.addr, "/events?channel=last", &[]))
        .collect();
    wait_open_streams(&server, 5);
    let ids: Vec<u64> = (0..100)
        .map(|i| publish(server.addr, "last", &format!("event {i}")))
        .collect();
    let signalled = Instant::now();
    server.signal("TERM");
    for (n, subscriber) in subscribers.iter_mut().enumerate() {
        assert!(subscriber.closed_within(LONG), "subscriber {n}: stream not ended");
        assert!(
            subscriber.body_ended(),
            "subscriber {n}: no last chunk before the close"
        );
        let text = String::from_utf8_lossy(&subscriber.received).into_owned();
        let got: Vec<u64> = text
            .split("\n\n")
            .filter_map(parse_event)
            .map(|e| e.id_number())
            .collect();
        assert_eq!(got, ids, "subscriber {n} got {} of 100", got.len());
    }
    let status = server.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "took {:?}",
        signalled.elapsed()
    );
}

#[test]
fn a_stream_stuck_in_a_write_at_the_stop_is_cut_and_logs_its_close_before_the_exit() {
    // A client that reads nothing blocks its stream's write for up to
    // --write-timeout (a minute here). The stop used to exit with that
    // stream still open: no closing line, `shutdown` never counted. Now the
    // stop cuts its connection shortly before its deadline.
    let mut server = TestServer::start(&[
        "--tick-interval",
        "0",
        "--write-timeout",
        "60s",
        "--ping-interval",
        "600s",
        "--queue-size",
        "100000",
        "--log",
        "info",
    ]);
    let stuck = SseClient::connect_with_receive_buffer(server.addr, "/events?channel=stuck", &[], 4096);
    let peer = stuck.socket().local_addr().unwrap().to_string();
    let reader = SseClient::connect(server.addr, "/events?channel=stuck", &[]);
    wait_open_streams(&server, 2);
    let big = "x".repeat(60_000);
    let mut published = 0;
    while published < 3000 && !server.stream_blocked_in_write() {
        publish(server.addr, "stuck", &big);
        published += 1;
    }
    assert!(
        server.stream_blocked_in_write(),
        "no stream blocked after {published} events of 60 kB"
    );
    drop(reader);
    server.signal("TERM");
    let status = server.wait_exit(LONG);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.logs()
    );
    let logs = server.logs();
    let closed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("stream closed") && l.contains(&format!(" peer={peer} ")))
        .collect();
    assert_eq!(
        closed.len(),
        1,
        "no close line for the stuck stream {peer}:\n{logs}"
    );
    assert!(closed[0].contains("reason=shutdown"), "{}", closed[0]);
    // Counted before the cut (after it, the stream may already be gone:
    // "0 streams still writing ... 1 connections cut").
    assert!(
        logs.contains(
            "1 streams still writing (clients not reading) at the stop's deadline: 1 connections cut"
        ),
        "{logs}"
    );
    assert!(logs.contains("0 still writing"), "{logs}");
    drop(stuck);
}

/// `VmSize` of process `pid`, in KiB.
fn virtual_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_large_content_length_reserves_no_memory_before_its_bytes_come() {
    // Reserving what Content-Length claimed let one request abort the
    // process (a failed allocation) under a large --max-body.
    let server = TestServer::start(&["--tick-interval", "0", "--max-body", "64MiB"]);
    let mut stream = SseClient::connect(server.addr, "/events?channel=k", &[]);
    wait_open_streams(&server, 1);
    let before = virtual_size_kib(server.pid());
    // Once `100 Continue` comes, the handler is reading the body.
    let publishing = publish_in_progress_of(server.addr, "k", 64 << 20);
    let during = virtual_size_kib(server.pid());
    assert!(
        during < before + 16 * 1024,
        "VmSize {before} -> {during} KiB with 1,500 bytes of a 64 MiB body in"
    );
    drop(publishing);
    assert!(publish(server.addr, "k", "still here") > 0);
    assert_eq!(stream.next_event(LONG).map(|e| e.data), Some("still here".into()));
}

#[test]
fn a_content_length_past_any_memory_is_answered_and_the_server_goes_on() {
    // tiny_http skipped an unread body of known length by allocating a
    // buffer of the size left: a Content-Length of 10^12 on any request
    // whose body was not read aborted the process (default options).
    let server = TestServer::start(&["--tick-interval", "0"]);
    for (request, status) in [
        ("POST /publish?channel=k", "413"),
        ("POST /health", "405"),
        ("GET /nowhere", "404"),
        ("POST /events", "405"),
    ] {
        let head = format!("{request} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n");
        let answer = answer_to(server.addr, head.as_bytes());
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request}: {answer:?}\n{}",
            server.logs()
        );
        assert_eq!(get(server.addr, "/health").status, 200, "after {request}");
    }
    assert!(!server.logs().contains("memory allocation"), "{}", server.logs());
}

#[test]
fn connections_are_accepted_after_idle_periods_longer_than_the_read_timeout() {
    // Accepted sockets inherit the listener's read timeout, and so does
    // accept(): the keep-awake thread must stop tiny_http's acceptor from
    // timing out while nobody connects.
    let server = TestServer::start(&[]);
    for round in 0..2 {
        // Idling is the point of this test: nothing to wait for but time.
        std::thread::sleep(Duration::from_millis(3200));
        let started = Instant::now();
        let health = get(server.addr, "/health");
        assert_eq!(health.status, 200, "round {round}: {health:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: {:?}",
            started.elapsed()
        );
    }
    assert!(!server.logs().contains("acceptor stopped"), "{}", server.logs());
}

/// Reads from `client` into `received` until `done` holds for what came
/// (as text), the connection ends, or `deadline` passes (a failure).
fn read_until(
    client: &mut TcpStream,
    received: &mut Vec<u8>,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) {
    let mut chunk = [0u8; 4096];
    while !done(&String::from_utf8_lossy(received)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{}", String::from_utf8_lossy(received));
        client.set_read_timeout(Some(left)).unwrap();
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_stream_pipelined_behind_a_request_starts_after_its_answer() {
    // The stream's connection is taken out of tiny_http, which writes the
    // answers to the requests before it: the stream's head waits for them.
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "1m"]);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /events?channel=behind HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    // Published once the stream's head came (the subscription exists by
    // then; the stream's count goes up before).
    let mut received = Vec::new();
    let deadline = Instant::now() + LONG;
    read_until(&mut client, &mut received, deadline, |text| {
        text.find("text/event-stream")
            .is_some_and(|at| text[at..].contains("\r\n\r\n"))
    });
    let id = publish(server.addr, "behind", "after the answer");
    let event_bytes = format!("data: after the answer\nid: {id}\n");
    read_until(&mut client, &mut received, deadline, |text| {
        text.contains(&event_bytes)
    });
    let text = String::from_utf8_lossy(&received);
    let health = text.find("\"open_streams\"");
    let stream_head = text.find("text/event-stream");
    let event = text.find(&event_bytes);
    assert!(
        health.is_some() && health < stream_head && stream_head < event,
        "answer, then the stream's head, then its event:\n{text}"
    );
}

#[test]
fn a_connection_that_gets_no_second_descriptor_is_answered_503_without_a_panic() {
    // tiny_http reads a connection through a second descriptor, made as
    // it is accepted; with none left that was an unwrap, a panic that
    // ended tiny_http's accept thread (restarted by `acceptor`) and reset
    // the connection unanswered.
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "1m"]);
    // Up and accepting: tiny_http's acceptor holds its own descriptor of the
    // listening socket (counted as idle too: it comes back after a restart).
    assert!(answers_health(&server), "{}", server.logs());
    let idle = server.fds();
    let idle_targets = server.fd_targets();
    let pid = server.pid() as i32;
    let (mut soft, mut hard) = (0u64, 0u64);
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, None, Some((&mut soft, &mut hard))).unwrap();
    // Room for the accepted connection, not its second descriptor. The
    // server's own keep-awake connects may take or free one meanwhile: a
    // few tries, each once the last one's connection is gone.
    let refused = (0..10).find_map(|attempt| {
        assert!(
            wait_until(LONG, || server.fds() <= idle),
            "descriptors {:?} at first, now {:?}\n{}",
            idle_targets,
            server.fd_targets(),
            server.logs()
        );
        // Connections that come together take two descriptors each as
        // they are accepted: with an odd number to spare, one is accepted
        // into the last (an even number, or the server's own short-lived
        // descriptors, shift that: tries with both).
        let tight = server.fds() as u64 + 3 + attempt % 2;
        rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((tight, hard)), None).unwrap();
        let mut clients: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut client = TcpStream::connect(server.addr).unwrap();
                client
                    .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .unwrap();
                client
            })
            .collect();
        let answers: Vec<String> = clients
            .iter_mut()
            .map(|client| {
                let mut answer = Vec::new();
                read_until_closed(client, Duration::from_secs(1), &mut answer);
                String::from_utf8_lossy(&answer).to_string()
            })
            .collect();
        rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((soft, hard)), None).unwrap();
        // accept() itself ran out too: the acceptor restarts.
        assert!(wait_until(LONG, || answers_health(&server)), "{}", server.logs());
        answers
            .into_iter()
            .find(|answer| answer.starts_with("HTTP/1.1 503"))
    });
    let refused = refused.unwrap_or_else(|| panic!("never refused:\n{}", server.logs()));
    assert!(
        refused.contains("out of file descriptors") && refused.contains("Retry-After: 1"),
        "{refused}"
    );
    assert!(!server.logs().contains("panic"), "{}", server.logs());
    let warned = wait_until(LONG, || {
        server
            .logs()
            .contains("out of file descriptors: a new connection was answered 503")
    });
    assert!(warned, "{}", server.logs());
    assert!(answers_health(&server), "{}", server.logs());
}

#[test]
fn a_stream_that_gets_no_descriptor_of_its_own_is_answered_503() {
    // A stream's connection gets a descriptor of its own when it is taken
    // out of tiny_http (which holds two per connection until then). With
    // none left the stream is refused with 503, nothing is left hanging,
    // and streams open again once descriptors are free.
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "1m"]);
    assert_eq!(get(server.addr, "/health").status, 200);
    let pid = server.pid() as i32;
    let (mut soft, mut hard) = (0u64, 0u64);
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, None, Some((&mut soft, &mut hard))).unwrap();
    // Room for the accepted connection and tiny_http's second descriptor,
    // not a third. The server's own keep-awake connects may take one
    // meanwhile (or free one; on a loaded machine its unanswered probes
    // open more): tries, each when the count held still for 50 ms.
    let mut tries = Vec::new();
    let refused = (0..40).find_map(|_| {
        let mut last = server.fds();
        let mut still_since = Instant::now();
        wait_until(LONG, || {
            let now = server.fds();
            if now != last {
                last = now;
                still_since = Instant::now();
            }
            still_since.elapsed() >= Duration::from_millis(50)
        });
        let tight = last as u64 + 2;
        rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((tight, hard)), None).unwrap();
        let mut client = TcpStream::connect(server.addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let answer = answer_on(
            &mut client,
            b"GET /events?channel=nofd HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((soft, hard)), None).unwrap();
        if answer.is_empty() {
            // The keep-awake connect took the room first, and tiny_http's
            // acceptor ran out (see the test above): wait for its restart.
            assert!(wait_until(LONG, || answers_health(&server)), "{}", server.logs());
        }
        let peer = client.local_addr().unwrap();
        tries.push(answer.lines().next().unwrap_or("(nothing)").to_string());
        answer.starts_with("HTTP/1.1 503").then_some((answer, peer))
    });
    let (refused, peer) = refused.unwrap_or_else(|| panic!("never refused ({tries:?}):\n{}", server.logs()));
    assert!(refused.contains("Retry-After"), "{refused}");
    let warned = wait_until(LONG, || {
        server.logs().contains("cannot take a stream's connection over")
    });
    assert!(warned, "{}", server.logs());
    // The refused stream was not opened, nor counted: every stream counted
    // was logged as opened and not yet as closed (the tries that got
    // theirs, ended once their clients closed).
    let logs = server.logs();
    assert!(!logs.contains(&format!("stream opened peer={peer} ")), "{logs}");
    let counted = wait_until(LONG, || {
        let logs = server.logs();
        let open = logs.matches("stream opened").count() - logs.matches("stream closed").count();
        get(server.addr, "/health").json()["open_streams"] == open as u64
    });
    assert!(counted, "{}", server.logs());
    let mut stream = SseClient::connect(server.addr, "/events?channel=nofd", &[]);
    assert_eq!(stream.status(), 200, "{}", stream.head);
    let id = publish(server.addr, "nofd", "descriptors again");
    let event = stream.next_event(LONG).expect("an event");
    assert_eq!(
        (event.id_number(), event.data.as_str()),
        (id, "descriptors again")
    );
}

#[test]
fn requests_sent_behind_a_stream_or_its_head_are_not_served() {
    // The stream's head says `Connection: close`. A request pipelined
    // behind it used to be served on a request thread that then waited for
    // the stream's end to write its answer: a publish went through
    // unanswered, and 520 such connections held every request thread, so
    // no one else got an answer.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let behind = "POST /publish?channel=behind HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    let mut held = Vec::new();
    for n in 0..40 {
        let first = if n % 2 == 0 {
            "GET /events?channel=held HTTP/1.1\r\nHost: x\r\n\r\n"
        } else {
            "HEAD /events?channel=held HTTP/1.1\r\nHost: x\r\n\r\n"
        };
        let mut connection = TcpStream::connect(server.addr).expect("connect");
        connection
            .write_all(format!("{first}GET /health HTTP/1.1\r\nHost: x\r\n\r\n{behind}").as_bytes())
            .expect("send");
        held.push(connection);
    }
    wait_open_streams(&server, 20);
    // Everyone else is served, at once.
    for _ in 0..5 {
        assert_eq!(get(server.addr, "/health").status, 200);
    }
    publish(server.addr, "other", "served");
    assert_eq!(
        metric(server.addr, "tinysse_events_published_total"),
        1.0,
        "only the publish from its own connection went through"
    );
    // A stream request refused (bad channel) opens no stream and its answer
    // keeps the connection: what comes behind it is served.
    for method in ["GET", "HEAD"] {
        let pipelined = format!(
            "{method} /events?channel=no%20spaces HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let answers = String::from_utf8_lossy(&answer_to(server.addr, pipelined.as_bytes())).to_string();
        assert!(answers.starts_with("HTTP/1.1 400 "), "{method}: {answers}");
        assert!(
            answers.contains("HTTP/1.1 200 OK") && answers.contains("\"status\": \"ok\""),
            "{method}: the request after the 400 is served: {answers}"
        );
    }
    // The connections behind a HEAD got the head and then their end.
    for (n, connection) in held.iter_mut().enumerate().filter(|(n, _)| n % 2 == 1) {
        let mut answer = Vec::new();
        assert!(
            read_until_closed(connection, LONG, &mut answer),
            "HEAD connection {n} still open"
        );
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer only: {text:?}");
    }
}

#[test]
fn pipelined_answers_come_in_order_even_when_tiny_http_refuses_one() {
    // Answers go in the order of the requests (RFC 9112, 9.3.2). tiny_http
    // answers some requests itself (417 for an unknown Expect, 400 for a
    // body cut short) as it reads them, and those went out at once, before
    // the answers still being made to the requests before them.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let refused = [
        (
            "POST /publish?channel=o HTTP/1.1\r\nHost: x\r\nExpect: later\r\nContent-Length: 3\r\n\r\nabc",
            "HTTP/1.1 417",
        ),
        (
            "POST /publish?channel=o HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
            "HTTP/1.1 400",
        ),
    ];
    for round in 0..10 {
        for (request, status) in refused {
            let mut connection = TcpStream::connect(server.addr).expect("connect");
            let first = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
            connection
                .write_all(format!("{first}{request}").as_bytes())
                .unwrap();
            if status == "HTTP/1.1 400" {
                // The body stops coming: its end, so that tiny_http reads
                // the cut at once instead of after the read timeout.
                connection.shutdown(std::net::Shutdown::Write).unwrap();
            }
            connection.set_read_timeout(Some(LONG)).unwrap();
            let mut answers = Vec::new();
            let _ = connection.read_to_end(&mut answers);
            let text = String::from_utf8_lossy(&answers);
            let health = text.find("HTTP/1.1 200 OK");
            let refusal = text.find(status);
            assert!(
                health == Some(0) && refusal > health,
                "round {round}: /health first, then {status}: {text}"
            );
        }
    }
}

#[test]
fn what_tiny_http_would_answer_behind_a_stream_never_reaches_it() {
    // Bytes sent behind a stream's request that tiny_http answers itself
    // (a stray line end, a malformed line, an HTTP/2 request line) once
    // got their 400 or 505 written into the stream, before its head or
    // between two events.
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "1m"]);
    let trailers = [
        "\r\n",
        "garbage\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET /\u{e9} HTTP/1.1\r\n\r\n",
        // A 417, and a 400 for a body cut short: tiny_http's writer chain
        // let an answer to a request that failed while being read go
        // before the answers to the requests before it.
        "POST /publish?channel=trailed HTTP/1.1\r\nExpect: later\r\nContent-Length: 3\r\n\r\nabc",
        "POST /publish?channel=trailed HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",
    ];
    let mut streams: Vec<(TcpStream, &str)> = Vec::new();
    for round in 0..10 {
        for trailer in trailers {
            let mut connection = TcpStream::connect(server.addr).expect("connect");
            let request = format!("GET /events?channel=trailed HTTP/1.1\r\nHost: x\r\n\r\n{trailer}");
            if round % 2 == 0 {
                connection.write_all(request.as_bytes()).expect("send");
            } else {
                // The trailer a moment later, in a packet of its own.
                let (head, rest) = request.split_at(request.len() - trailer.len());
                connection.write_all(head.as_bytes()).expect("send");
                std::thread::sleep(Duration::from_millis(5));
                connection.write_all(rest.as_bytes()).expect("send");
            }
            streams.push((connection, trailer));
        }
    }
    let mut heads: Vec<Vec<u8>> = streams.iter_mut().map(|(c, _)| read_head(c)).collect();
    let id = publish(server.addr, "trailed", "only events");
    let event = format!("data: only events\nid: {id}\n\n");
    // One chunk, the event's.
    let expected = format!("{:x}\r\n{event}\r\n", event.len());
    for ((connection, trailer), head) in streams.iter_mut().zip(&mut heads) {
        let mut received = std::mem::take(head);
        let deadline = Instant::now() + LONG;
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&received).contains(&expected) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{trailer:?}: {}",
                String::from_utf8_lossy(&received)
            );
            connection.set_read_timeout(Some(left)).unwrap();
            match connection.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&received);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{trailer:?}: {text}");
        assert_eq!(body, expected, "{trailer:?}: nothing but the event: {text}");
    }
}

#[test]
fn a_stream_ends_with_a_clean_close_even_if_its_client_sent_more() {
    // A socket closed with bytes unread is reset, and the kernel drops
    // what it had not sent: the stream reads and drops what its client
    // sent behind the request, then closes.
    let mut server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "1m"]);
    let mut socket = TcpStream::connect(server.addr).expect("connect");
    socket
        .write_all(b"GET /events?channel=extra HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // The head: the subscription exists once it is sent (the stream's
    // count goes up before, on the connection's thread).
    let mut received = Vec::new();
    socket.set_read_timeout(Some(LONG)).unwrap();
    let mut chunk = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut chunk) {
            Ok(n) if n > 0 => received.extend_from_slice(&chunk[..n]),
            other => panic!("no stream head: {other:?}"),
        }
    }
    socket.write_all(b"\r\nmore bytes\r\n").unwrap();
    let ids: Vec<u64> = (0..20)
        .map(|n| publish(server.addr, "extra", &n.to_string()))
        .collect();
    server.signal("TERM");
    let end = loop {
        match socket.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e),
        }
    };
    let text = String::from_utf8_lossy(&received).to_string();
    assert!(end.is_ok(), "the stream was reset, not closed: {end:?}\n{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let got: Vec<u64> = body
        .split("\n\n")
        .filter_map(parse_event)
        .map(|e| e.id_number())
        .collect();
    assert_eq!(got, ids, "{text}");
    assert!(server.wait_exit(LONG).is_some_and(|status| status.success()));
}

#[test]
fn a_chunked_body_that_cannot_be_decoded_ends_its_connection() {
    // The bytes after a bad chunk size were read as the next request: a
    // publish smuggled in a body went through.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let smuggled = "POST /publish?channel=smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nSMUGG";
    for size in ["zz", "fffffffffffffffff2"] {
        let request = format!(
            "POST /publish?channel=outer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n{smuggled}"
        );
        let answer = String::from_utf8_lossy(&answer_to(server.addr, request.as_bytes())).to_string();
        assert!(answer.starts_with("HTTP/1.1 400"), "{size}: {answer}");
        assert!(answer.contains("\r\nConnection: close\r\n"), "{size}: {answer}");
        assert!(
            !answer.contains(" 200 OK"),
            "{size}: something was served: {answer}"
        );
    }
    // A body over --max-body ends its connection too: what follows it is
    // not known to be a request.
    let big = format!(
        "POST /publish?channel=outer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n20000\r\n{}\r\n0\r\n\r\n",
        "x".repeat(0x20000)
    );
    let answer = String::from_utf8_lossy(&answer_to(server.addr, big.as_bytes())).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    // What tiny_http reads of the rest before the connection closes is no
    // request (its own 400 at most), and nothing is served.
    assert!(!answer.contains(" 200 OK"), "something was served: {answer}");
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 0.0);
}

#[test]
fn requests_pipelined_behind_a_stream_do_not_stall_the_server() {
    let server = TestServer::start(&["--tick-interval", "0"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    // A stream, then requests on the same connection: tiny_http cannot answer
    // them before the stream ends, and nothing else may wait for that.
    let pipelined = "GET /events?channel=pipe HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
                     POST /publish?channel=pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
    stream.write_all(pipelined.as_bytes()).unwrap();
    wait_open_streams(&server, 1);
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get(server.addr, "/health").status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let mut other = SseClient::connect(server.addr, "/events?channel=pipe", &[]);
    wait_open_streams(&server, 2);
    let id = publish(server.addr, "pipe", "after the pipeline");
    let event = other.next_event(LONG).expect("the server still delivers");
    assert_eq!(event.id_number(), id);
}

/// Sends a request line, then one header byte every 700 ms, never ending
/// the head; returns how long after connecting the server closed the
/// connection and what it answered, or `None` if it was still open after
/// `deadline`.
fn trickle_until_closed(addr: std::net::SocketAddr, deadline: Duration) -> Option<(Duration, String)> {
    trickle_on(TcpStream::connect(addr).expect("connect"), deadline)
}

/// [`trickle_until_closed`] on a connection already open; the time is
/// counted from the request line.
fn trickle_on(mut s: TcpStream, deadline: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").expect("send the request line");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    let closed = |answer: Vec<u8>| Some((started.elapsed(), String::from_utf8_lossy(&answer).into_owned()));
    while started.elapsed() < deadline {
        // Waiting to read is the 700 ms pause between two bytes.
        s.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return closed(answer),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return closed(answer),
        }
        if s.write_all(b"X").is_err() {
            return closed(answer);
        }
    }
    None
}

#[test]
fn a_later_request_head_has_ten_seconds_from_its_first_byte() {
    // On a kept-alive connection the next head's clock starts with its
    // first byte, not at the accept: 3 s idle, then 10 s of trickling.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut first = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&first).ends_with('}') {
        let n = s.read(&mut chunk).expect("the first answer");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&first));
        first.extend_from_slice(&chunk[..n]);
    }
    assert!(
        first.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    std::thread::sleep(Duration::from_secs(3));
    let (after, answer) = trickle_on(s, Duration::from_secs(20)).expect("closed within 20 s");
    assert!(
        after >= Duration::from_millis(9_900) && after <= Duration::from_secs(13),
        "closed {after:?} after the second request line"
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
}

#[test]
fn trickled_request_heads_are_closed_after_ten_seconds_and_streams_are_not() {
    let server = TestServer::start(&["--tick-interval", "0"]);
    let mut early = SseClient::connect(server.addr, "/events?channel=guard", &[]);
    let early_opened = Instant::now();
    let addr = server.addr;
    let tricklers: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || trickle_until_closed(addr, Duration::from_secs(25))))
        .collect();
    // Streams opened while the tricklers trickle, and /health, are served
    // as usual.
    std::thread::sleep(Duration::from_secs(3));
    let mut meanwhile = SseClient::connect(server.addr, "/events?channel=guard", &[]);
    wait_open_streams(&server, 2);
    for _ in 0..8 {
        let started = Instant::now();
        assert_eq!(get(server.addr, "/health").status, 200);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "/health took {took:?} beside 20 tricklers"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    for (i, trickler) in tricklers.into_iter().enumerate() {
        let closed_after = trickler.join().unwrap();
        let Some((after, answer)) = closed_after else {
            panic!("trickler {i} still open after 25 s:\n{}", server.logs());
        };
        assert!(
            answer.starts_with("HTTP/1.1 408 ")
                && answer.contains("Connection: close")
                && answer
                    .ends_with(r#"{"error": "request head not complete in time; the connection is closed"}"#),
            "trickler {i} was answered {answer:?}"
        );
        // Past the 2 s read timeout (bytes keep coming), at the 10 s
        // deadline from the accept, with room for a busy machine.
        assert!(
            after >= Duration::from_millis(9_900) && after <= Duration::from_secs(13),
            "trickler {i} closed after {after:?}"
        );
    }
    // The streams outlived the cuts.
    assert!(
        early_opened.elapsed() > Duration::from_secs(10),
        "{:?}",
        early_opened.elapsed()
    );
    let id = publish(server.addr, "guard", "still streaming");
    for client in [&mut early, &mut meanwhile] {
        let event = client.next_event(LONG).expect("streams are not cut");
        assert_eq!((event.id_number(), event.data.as_str()), (id, "still streaming"));
    }
    assert_eq!(get(server.addr, "/health").json()["open_streams"], 2);
    let logs = server.logs();
    let warned = logs
        .lines()
        .filter(|l| l.contains("sent no complete request head in time (10 s): peer=127.0.0.1:"))
        .count();
    assert_eq!(warned, 20, "one warning per trickler, with its peer:\n{logs}");
}

/// Memory mappings of the server process, from `/proc/<pid>/maps`.
fn memory_mappings(server: &TestServer) -> usize {
    std::fs::read_to_string(format!("/proc/{}/maps", server.pid()))
        .expect("read maps")
        .lines()
        .count()
}

#[test]
fn a_stream_thread_takes_two_memory_mappings_not_four() {
    // The kernel allows 65,530 mappings per process by default; with std's
    // alternate signal stack (and its guard page) a thread takes 4, which
    // capped a server near 14,800 streams. The binary turns those off.
    const STREAMS: usize = 40;
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "1m"]);
    assert_eq!(get(server.addr, "/health").status, 200);
    let maps_before = memory_mappings(&server);
    let _clients: Vec<SseClient> = (0..STREAMS)
        .map(|_| SseClient::connect(server.addr, "/events?channel=maps", &[]))
        .collect();
    wait_open_streams(&server, STREAMS as u64);
    assert_eq!(server.stream_threads(), STREAMS, "{:?}", server.thread_names());
    let new_maps = memory_mappings(&server).saturating_sub(maps_before);
    // 2 per thread (stack and guard page), plus some for the heap; 4 per
    // thread with std's signal stacks. (tiny_http's pool threads, which
    // may come and go meanwhile, are threads like these.)
    assert!(
        new_maps < 3 * STREAMS,
        "{new_maps} new mappings for {STREAMS} new stream threads"
    );
}

/// True if `/health` is answered `200` within a second on a new connection.
fn answers_health(server: &TestServer) -> bool {
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    client
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

#[test]
fn the_server_accepts_again_after_running_out_of_descriptors() {
    // Streams notice their clients left at their next ping.
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "200ms"]);
    assert_eq!(get(server.addr, "/health").status, 200);
    // A kept-alive connection from before: its next request goes to the
    // tiny_http server that the restart replaces, and must still be answered.
    let mut kept = TcpStream::connect(server.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    assert!(health_on(&mut kept).starts_with("HTTP/1.1 200"));
    let pid = server.pid() as i32;
    let (mut soft, mut hard) = (0u64, 0u64);
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, None, Some((&mut soft, &mut hard))).unwrap();
    // Room for a few streams only: accept() fails with EMFILE, which stops
    // tiny_http's acceptor, or a connection accepted into the last
    // descriptor is answered 503 (no second one for tiny_http's reader).
    let tight = server.fds() as u64 + 12;
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((tight, hard)), None).unwrap();
    let clients: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut client = TcpStream::connect(server.addr).unwrap();
            client
                .write_all(b"GET /events?channel=fds HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            client
        })
        .collect();
    let refused = |client: &TcpStream| {
        let mut start = [0u8; 12];
        client.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        client
            .peek(&mut start)
            .is_ok_and(|n| start[..n].starts_with(b"HTTP/1.1 503"))
    };
    assert!(
        wait_until(LONG, || {
            server.logs().contains("restarting the acceptor") || clients.iter().any(refused)
        }),
        "the descriptors never ran out:\n{}",
        server.logs()
    );
    drop(clients);
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((soft, hard)), None).unwrap();
    // Once descriptors are free again, new connections are accepted.
    let health = wait_until(LONG, || answers_health(&server));
    assert!(
        health,
        "no answer after the descriptors came back:\n{}",
        server.logs()
    );
    let answer = health_on(&mut kept);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "kept-alive connection after the restart: {answer:?}\n{}",
        server.logs()
    );
}

/// `GET /health` on a kept-alive connection; the answer read whole (by its
/// `Content-Length`), or what came before the read timed out.
fn health_on(connection: &mut TcpStream) -> String {
    answer_on(connection, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[test]
fn max_connections_leaves_descriptors_for_a_503_past_the_limit() {
    // 200 descriptors: a quarter (50) is kept for what is not a stream, so
    // at most 150 streams, and the 151st gets its 503 instead of waiting for
    // a descriptor that never comes.
    const ALLOWED: usize = 150;
    let server = TestServer::start_with_env(
        &["--tick-interval", "0", "--ping-interval", "1m"],
        &[(OPEN_FILES_LIMIT_ENV, "200")],
    );
    assert!(
        wait_until(LONG, || server
            .logs()
            .contains(&format!("--max-connections 10000 lowered to {ALLOWED}"))),
        "{}",
        server.logs()
    );
    // A new connection holds two descriptors until tiny_http's read half
    // times out (2 s), one once that is gone; so that the burst stays within
    // the limit, connect only while that leaves a few to spare. Waiting
    // here also checks that every open stream settles at one descriptor.
    let mut streams = Vec::new();
    for n in 0..ALLOWED {
        assert!(
            wait_until(LONG, || server.fds() + 8 < 200),
            "{} descriptors with {n} streams open",
            server.fds()
        );
        let client = SseClient::connect(server.addr, "/events?channel=fds", &[]);
        assert_eq!(
            client.status(),
            200,
            "stream {n}: {}\n{}",
            client.head,
            server.logs()
        );
        streams.push(client);
    }
    let past = SseClient::connect(server.addr, "/events?channel=fds", &[]);
    assert_eq!(past.status(), 503, "{}\n{}", past.head, server.logs());
    // Paced, the connects never ran the server out of descriptors: its
    // acceptor never failed or died.
    assert!(
        !server.logs().contains("restarting the acceptor"),
        "{}",
        server.logs()
    );
}

#[test]
fn a_stream_connection_is_down_to_one_descriptor_before_the_read_timeout() {
    // tiny_http reads a connection through a second descriptor and, after
    // a request, waits on it for the next one until the idle timeout (5 s).
    // A stream's connection has no next request: it is taken out of
    // tiny_http, whose reader stops at once.
    let server = TestServer::start(&["--tick-interval", "0", "--ping-interval", "1m"]);
    let opened = Instant::now();
    let client = SseClient::connect(server.addr, "/events?channel=lean", &[]);
    assert_eq!(client.status(), 200, "{}", client.head);
    let peer = client.local_addr();
    let one = wait_until(Duration::from_millis(1500), || {
        server.descriptors_of_connection(peer) == 1
    });
    assert!(
        one,
        "{} descriptors {:?} after the stream opened (the read timeout would take 2 s)",
        server.descriptors_of_connection(peer),
        opened.elapsed()
    );
    // The stream goes on: it gets what is published.
    let id = publish(server.addr, "lean", "still here");
    let mut client = client;
    let events = client.events(1, Duration::from_secs(10));
    assert_eq!(
        events.first().map(|e| e.id_number()),
        Some(id),
        "{}",
        server.logs()
    );
}

#[test]
fn an_endless_request_head_is_cut_long_before_memory_runs_out() {
    // tiny_http keeps an unfinished request head in memory, byte after
    // byte, as fast as it comes (hundreds of MB a second on loopback).
    let server = TestServer::start(&["--log", "debug"]);
    let mut client = TcpStream::connect(server.addr).unwrap();
    // Once the server closed, the client's writes stall or fail.
    client.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk = vec![b'A'; 1 << 20];
    let mut sent = 0usize;
    // Bounded: 1 GiB at most, or until the server closes the connection.
    while sent < 1 << 30 {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    // tiny_http (patched) stops at 16 KiB, answers 431 and closes after
    // reading 64 KiB more; what else got through sat in the socket
    // buffers (a few MiB on loopback).
    assert!(
        sent < 16 << 20,
        "{} MiB sent before the server closed",
        sent >> 20
    );
    assert!(
        wait_until(LONG, || server.logs().contains(
            "answered 431 to a request head over 16384 bytes: peer=127.0.0.1:"
        )),
        "logs: {}",
        server.logs()
    );
    assert_eq!(get(server.addr, "/health").status, 200);
}

#[test]
fn the_head_limit_is_16_kib_to_the_byte() {
    let server = TestServer::start(&[]);
    let answer_to_head_of = |size: usize| -> String {
        let start = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: ";
        let end = "\r\n\r\n";
        let pad = "a".repeat(size - start.len() - end.len());
        let answer = answer_to(server.addr, format!("{start}{pad}{end}").as_bytes());
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(answer_to_head_of(16 * 1024), "HTTP/1.1 200 OK");
    // The 431 is sent at once, before the server drains what may still
    // come of the head (it was held until the drain ended: 2 s later, the
    // read timeout, for a head that had ended).
    let mut s = TcpStream::connect(server.addr).expect("connect");
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first)
        .expect("the 431 within 1.5 s, not at the 2 s read timeout");
    assert_eq!(&first, b"HTTP/1.1 431");
    assert_eq!(
        answer_to_head_of(16 * 1024 + 1),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

#[test]
fn the_descriptor_table_is_grown_once_at_start() {
    // Grown later, each doubling would make the process's accepts wait for
    // an RCU grace period: a stream's first byte 2-15 ms late.
    let server = TestServer::start(&["--max-connections", "3000"]);
    let proc_file = |name: &str| std::fs::read_to_string(format!("/proc/{}/{name}", server.pid())).unwrap();
    let table: u64 = proc_file("status")
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("an FDSize line");
    let open_files: u64 = proc_file("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("a Max open files line");
    let wanted = (3000 + 1024).min(open_files);
    assert!(table >= wanted, "descriptor table of {table}, wanted {wanted}");
}

#[test]
fn clients_that_reset_at_once_leave_a_quiet_log_and_a_working_server() {
    // tiny_http 0.12 as published panics on a connection whose client reset
    // it before it read the peer's address; any client can do that at will.
    // The patched copy (vendor/tiny_http) no longer does.
    let server = TestServer::start(&[]);
    assert_eq!(get(server.addr, "/health").status, 200);
    let fds_before = server.fds();
    let deadline = Instant::now() + Duration::from_secs(2);
    let hammers: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                // Bounded by the deadline.
                while Instant::now() < deadline {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
                }
            })
        })
        .collect();
    for hammer in hammers {
        hammer.join().unwrap();
    }
    assert_eq!(get(server.addr, "/health").status, 200);
    let logs = server.logs();
    assert!(
        !logs.contains("panicked at"),
        "a panic report per reset: {}",
        &logs[..2000.min(logs.len())]
    );
    // Not one panic: no line of the panic hook's either, at any level.
    let warnings = logs
        .lines()
        .filter(|l| l.contains("panic inside tiny_http"))
        .count();
    assert_eq!(warnings, 0, "lines about tiny_http's panics in 2 s");
    println!(
        "warnings about tiny_http's panics: {warnings}; descriptors {}",
        server.fds()
    );
    // Connections that dead pool threads left queued, two descriptors
    // each, are run by the keep-awake thread's rescues within seconds
    // (about one a second without them).
    let released = wait_until(Duration::from_secs(15), || server.fds() <= fds_before + 8);
    assert!(released, "descriptors: {fds_before} before, {} now", server.fds());
}

#[test]
fn a_request_smuggled_behind_ambiguous_framing_is_not_served_and_the_connection_closes() {
    let server = TestServer::start(&[]);
    let inner = b"POST /publish?channel=smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    let lengths = [
        format!("Content-Length: 0\r\nContent-Length: {}\r\n", inner.len()),
        "Content-Length: x\r\n".to_string(),
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            inner.len()
        ),
        // A coding tiny_http does not decode: its chunked body ("hi", ended
        // by the blank line the loop adds) would be published as it came,
        // and the inner request after it served.
        "Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n".to_string(),
        // Chunked twice, in two headers.
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n".to_string(),
    ];
    for framing in &lengths {
        let mut request =
            format!("POST /publish?channel=outer HTTP/1.1\r\nHost: x\r\n{framing}\r\n").into_bytes();
        request.extend_from_slice(inner);
        // The server closes the connection: read_to_end ends well before
        // the read timeout.
        let started = std::time::Instant::now();
        let answer = String::from_utf8_lossy(&answer_to(server.addr, &request)).to_string();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{framing:?}: the connection stayed open"
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{framing:?}: {answer}");
        assert!(
            !answer.contains("200 OK"),
            "{framing:?}: something was served: {answer}"
        );
        assert!(answer.contains("connection is closed"), "{framing:?}: {answer}");
        // And each answer says so, as HTTP wants of a server that closes.
        assert_eq!(
            answer.matches("\r\nConnection: close\r\n").count(),
            answer.matches("HTTP/1.1 400").count(),
            "{framing:?}: {answer}"
        );
        assert!(!answer.contains("Keep-Alive"), "{framing:?}: {answer}");
    }
    assert_eq!(
        metric(server.addr, "tinysse_events_published_total"),
        0.0,
        "neither the outer nor the smuggled publish went through"
    );
    // The connection after it, from another port, is served as usual.
    publish(server.addr, "after", "fine");
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 1.0);
}

/// A connection to `addr` from `port` on 127.0.0.1 (0: any), the port free
/// to be bound again at once (`SO_REUSEADDR`); retried until `LONG` passes
/// while the port is still taken.
fn connect_from_port(addr: std::net::SocketAddr, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let local: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + LONG;
    loop {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let connected = socket
            .bind(&local.into())
            .and_then(|()| socket.connect(&addr.into()));
        match connected {
            Ok(()) => return socket.into(),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect from port {port}: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn a_new_connection_from_the_port_of_one_just_ended_is_served() {
    // The server does not serve what a client sends behind a stream's
    // request, or behind a request with ambiguous framing, on the same
    // connection. It used to know that connection by the client's address
    // (for 5 s and 10 s): a new connection from the same port, which a busy
    // client soon reuses, had its requests dropped unanswered or answered
    // 400. It knows connections by tiny_http's number for them now.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let openers: [(&str, &[u8]); 3] = [
        (
            "a stream",
            b"GET /events?channel=reuse HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "a stream's head",
            b"HEAD /events?channel=reuse HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "ambiguous framing",
            b"POST /publish?channel=reuse HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
        ),
    ];
    for (what, opener) in openers {
        let mut first = connect_from_port(server.addr, 0);
        let port = first.local_addr().expect("local address").port();
        first.write_all(opener).expect("send");
        // Its answer's head, then a reset: neither end keeps the port in
        // TIME_WAIT.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        first.set_read_timeout(Some(LONG)).unwrap();
        while !head.ends_with(b"\r\n\r\n") {
            match first.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!("{what}: no head, {other:?} after {head:?}"),
            }
        }
        SockRef::from(&first)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(first);
        let mut second = connect_from_port(server.addr, port);
        assert_eq!(second.local_addr().expect("local address").port(), port);
        second.set_read_timeout(Some(LONG)).unwrap();
        let answer = answer_on(&mut second, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.contains("\"status\": \"ok\""),
            "after {what}, a new connection from its port (:{port}) got: {answer:?}"
        );
    }
}

#[test]
fn a_client_that_pipelines_without_reading_holds_one_thread() {
    // tiny_http answers a connection's requests in order, so the answer to
    // a pipelined request waits for the ones before it. Each request used
    // to get a thread of its own: a client that pipelined thousands and
    // read no answer held hundreds of request threads until the write
    // timeout, up to all 512, and everyone else got 503. Now a
    // connection's requests are handled one after another on its own
    // thread, and TCP's flow control holds the client back.
    let server = TestServer::start(&["--tick-interval", "0", "--write-timeout", "30"]);
    let before = server.thread_names();
    let hog = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    hog.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    hog.connect(&server.addr.into()).expect("connect");
    let mut hog: TcpStream = hog.into();
    // 20,000 answers of ~250 bytes: more than the socket buffers hold.
    let requests = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    let mut sender = hog.try_clone().expect("clone");
    let sending = std::thread::spawn(move || sender.write_all(&requests));
    let blocked = wait_until(LONG, || server.threads_named("http-connection").1 > 0);
    assert!(
        blocked,
        "the hog's connection thread never blocked writing to it: {:?}",
        server.thread_names()
    );
    // Other clients are answered meanwhile, and the hog holds its own
    // connection's thread only (give or take pool threads not yet gone).
    for _ in 0..20 {
        assert_eq!(get(server.addr, "/health").status, 200);
    }
    assert_eq!(server.threads_named("http-connection").1, 1, "one thread blocked");
    // Not a thread per request: the hog's connection thread, and the few
    // that the 20 short connections left idle (each waits 5 s for another
    // connection before it ends).
    assert!(
        server.threads() < before.len() + 20,
        "{before:?} before the hog, with it: {:?}",
        server.thread_names()
    );
    // The hog reads at last: every answer comes. (Counted over each chunk
    // and the bytes before it too short to hold a status line.)
    hog.set_read_timeout(Some(LONG)).unwrap();
    let status = b"HTTP/1.1 200 OK\r\n";
    let (mut counted, mut tail) = (0, Vec::new());
    let mut chunk = [0u8; 65536];
    while counted < 20_000 {
        match hog.read(&mut chunk) {
            Ok(n) if n > 0 => tail.extend_from_slice(&chunk[..n]),
            other => panic!("the hog's answers stopped ({other:?}) after {counted} of them"),
        }
        counted += tail.windows(status.len()).filter(|w| w == status).count();
        tail.drain(..tail.len().saturating_sub(status.len() - 1));
    }
    sending.join().expect("sender").expect("all requests sent");
}

#[test]
fn a_chunked_body_no_handler_reads_is_skipped_not_read_as_a_request() {
    // A body of known length that a handler does not read is skipped; a
    // chunked one was read as the next request: its chunk lines got an
    // answer of their own (a 400, or a 405 for a line that looked like a
    // method), which a kept-alive client (Python's http.client) took for
    // the answer to its next request.
    let server = TestServer::start(&["--tick-interval", "0", "--publish-token", "sekrit"]);
    let behind = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let cases = [
        ("POST /nope", "5\r\nhello\r\n0\r\n\r\n", "404"),
        (
            "GET /health",
            "9;x /health HTTP/1.1\r\nabcdefghi\r\n0\r\n\r\n",
            "200",
        ),
        ("OPTIONS /health", "3\r\nabc\r\n0\r\n\r\n", "405"),
        ("POST /publish?channel=c", "2\r\nhi\r\n0\r\n\r\n", "401"),
    ];
    for (request_line, body, status) in cases {
        let request =
            format!("{request_line} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{behind}");
        let answers = String::from_utf8_lossy(&answer_to(server.addr, request.as_bytes())).to_string();
        let statuses: Vec<&str> = answers
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| &answers[at + 9..at + 12])
            .collect();
        assert_eq!(statuses, [status, "200"], "{request_line}: {answers}");
        assert!(
            answers.contains("\"status\": \"ok\""),
            "{request_line}: {answers}"
        );
    }
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 0.0);
}

#[test]
fn http_1_0_with_a_transfer_coding_gets_400_and_its_connection_closes() {
    // RFC 9112, 6.1: HTTP/1.0 has no transfer codings, so such a message's
    // framing is faulty (a 1.0 proxy in front reads its body otherwise);
    // it was published, kept alive, and what came behind served.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let behind = "POST /publish?channel=behind HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi";
    let request = format!(
        "POST /publish?channel=s HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{behind}"
    );
    let answer = String::from_utf8_lossy(&answer_to(server.addr, request.as_bytes())).to_string();
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(
        answer.contains("Transfer-Encoding in an HTTP/1.0 request"),
        "{answer}"
    );
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert_eq!(
        answer.matches("\r\nServer: ").count(),
        1,
        "nothing else answered: {answer}"
    );
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 0.0);
    // An answer after which the server closes says so, also when the
    // client asked for the close.
    let closing = answer_to(
        server.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let closing = String::from_utf8_lossy(&closing);
    assert!(closing.starts_with("HTTP/1.1 200"), "{closing}");
    assert!(closing.contains("\r\nConnection: close\r\n"), "{closing}");
}

#[test]
fn chunked_bodies_with_trailers_are_published_and_odd_chunk_sizes_refused() {
    // RFC 9112, 7.1: a chunked body may end with trailer fields, which a
    // recipient may drop; tiny_http's decoder refused them (400). A chunk
    // size is hex digits only: `+5` or ` 5` was read as 5, where a peer in
    // front may read the body otherwise.
    let server = TestServer::start(&["--tick-interval", "0"]);
    let mut client = SseClient::connect(server.addr, "/events?channel=tr", &[]);
    let behind = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let publish = |body: &str| {
        let request = format!(
            "POST /publish?channel=tr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{behind}"
        );
        String::from_utf8_lossy(&answer_to(server.addr, request.as_bytes())).to_string()
    };
    let statuses = |answers: &str| -> Vec<String> {
        answers
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| answers[at + 9..at + 12].to_string())
            .collect()
    };
    // Trailers (and an extension): published, and the connection goes on.
    let answers = publish("5;ext=1\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other:1\r\n\r\n");
    assert_eq!(statuses(&answers), ["200", "200"], "{answers}");
    let event = client.next_event(LONG).expect("the event");
    assert_eq!(event.data, "hello");
    // The same on a path whose handler does not read the body.
    let request = format!(
        "POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n{behind}"
    );
    let answers = String::from_utf8_lossy(&answer_to(server.addr, request.as_bytes())).to_string();
    assert_eq!(statuses(&answers), ["404", "200"], "{answers}");
    // Refused, and the connection closes: nothing behind is served.
    for body in [
        "+5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
    ] {
        let answers = publish(body);
        assert_eq!(statuses(&answers), ["400"], "{body:?}: {answers}");
        assert!(answers.contains("malformed chunked body"), "{body:?}: {answers}");
        assert!(
            answers.contains("\r\nConnection: close\r\n"),
            "{body:?}: {answers}"
        );
    }
    assert_eq!(metric(server.addr, "tinysse_events_published_total"), 1.0);
}

#[test]
fn a_publish_whose_body_outlasts_the_stop_is_answered_503_before_the_exit() {
    // SIGTERM waits a while for requests in progress; one whose body is
    // still coming after that was cut off unanswered when the process
    // exited. Now it is refused (the broker is closed) and answered.
    let mut server = TestServer::start(&["--tick-interval", "0"]);
    let mut publishing = publish_in_progress(server.addr, "late");
    server.signal("TERM");
    let gave_up = wait_until(LONG, || server.logs().contains("1 requests still in progress"));
    assert!(gave_up, "{}", server.logs());
    publishing.write_all(&[b'a'; 500]).unwrap();
    let mut answer = Vec::new();
    let _ = publishing.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}\n{}", server.logs());
    assert!(answer.contains("the event was not stored"), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    let status = server.wait_exit(LONG);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

//! CORS with `--cors-origin`: the allow-origin header on streams and on
//! every JSON answer, the `OPTIONS /publish` preflight, and nothing of it
//! without the option.

use std::net::SocketAddr;
use std::time::Duration;

use super::support::*;

const ORIGIN: &str = "https://app.example";

/// Every `Access-Control-*` header line of a response head.
fn cors_headers(head: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter(|l| l.to_ascii_lowercase().starts_with("access-control-"))
        .map(str::to_string)
        .collect()
}

/// Comma-separated header values, trimmed and lowercased.
fn list(value: &str) -> Vec<String> {
    value.split(',').map(|v| v.trim().to_ascii_lowercase()).collect()
}

fn preflight(addr: SocketAddr, request_headers: &str) -> HttpResponse {
    http(
        addr,
        "OPTIONS",
        "/publish?channel=news",
        &[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", request_headers),
        ],
        b"",
    )
}

/// Asserts that `answer` is a preflight's `204` for [`ORIGIN`] that allows
/// `method` with each of `headers` (lowercase).
fn assert_preflight_allows(answer: &HttpResponse, method: &str, headers: &[&str]) {
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.body, "", "{answer:?}");
    // RFC 9110 (8.6): a 204 carries no Content-Length.
    assert_eq!(answer.header("Content-Length"), None, "{answer:?}");
    assert_eq!(
        answer.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        answer.head
    );
    let methods = list(&answer.header("Access-Control-Allow-Methods").unwrap_or_default());
    assert!(methods.contains(&method.to_string()), "{method}: {}", answer.head);
    let allowed = list(&answer.header("Access-Control-Allow-Headers").unwrap_or_default());
    for needed in headers {
        assert!(
            allowed.contains(&needed.to_string()),
            "{needed} missing:\n{}",
            answer.head
        );
    }
    if let Some(max_age) = answer.header("Access-Control-Max-Age") {
        assert!(max_age.parse::<u64>().is_ok(), "{}", answer.head);
    }
}

#[test]
fn origin_is_allowed_on_streams_and_json_answers() {
    let server = TestServer::start(&["--cors-origin", ORIGIN]);
    let addr = server.addr;
    let origin = [("Origin", ORIGIN)];

    let mut events = SseClient::connect(addr, "/events?channel=news", &origin);
    assert_eq!(events.status(), 200, "{}", events.head);
    assert_eq!(
        events.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        events.head
    );
    assert_eq!(
        events.header("Vary").as_deref(),
        Some("Origin"),
        "{}",
        events.head
    );
    // `new EventSource(url, {withCredentials: true})` needs it.
    assert_eq!(
        events.header("Access-Control-Allow-Credentials").as_deref(),
        Some("true"),
        "{}",
        events.head
    );
    let demo = SseClient::connect(addr, "/", &origin);
    assert_eq!(
        demo.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        demo.head
    );

    let published = http(addr, "POST", "/publish?channel=news", &origin, b"hi");
    assert_eq!(published.status, 200, "{published:?}");
    assert_eq!(
        published.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        published.head
    );
    assert_eq!(
        published.header("Access-Control-Allow-Credentials").as_deref(),
        Some("true"),
        "{}",
        published.head
    );
    // The stream still works as usual.
    assert_eq!(events.events(1, Duration::from_secs(10))[0].data, "hi");

    // Errors too, so that browser code can read what went wrong.
    let refused = http(addr, "POST", "/publish?channel=bad%20name", &origin, b"hi");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(
        refused.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        refused.head
    );
    let health = http(addr, "GET", "/health", &origin, b"");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(
        health.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        health.head
    );
}

/// A request head over the 16 KiB limit (a browser's cookies can do it).
fn oversized_head() -> Vec<u8> {
    let cookie = "a".repeat(17 * 1024);
    format!("GET /health HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nCookie: {cookie}\r\n\r\n").into_bytes()
}

#[test]
fn answers_tiny_http_writes_itself_carry_the_origin_too() {
    // A 431 for a head too large, a 400 for a malformed header line or a
    // body cut short are written before any handler sees the request;
    // without the header the page saw a network error, not the message.
    let server = TestServer::start(&["--cors-origin", ORIGIN]);
    let addr = server.addr;
    let wanted = vec![
        format!("Access-Control-Allow-Origin: {ORIGIN}"),
        "Access-Control-Allow-Credentials: true".to_string(),
    ];
    let too_large = parse_response(&answer_to(addr, &oversized_head()));
    assert_eq!(too_large.status, 431, "{too_large:?}");
    assert_eq!(cors_headers(&too_large.head), wanted, "{}", too_large.head);

    let malformed = parse_response(&answer_to(
        addr,
        format!("GET /health HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nno colon here\r\n\r\n").as_bytes(),
    ));
    assert_eq!(malformed.status, 400, "{malformed:?}");
    assert_eq!(cors_headers(&malformed.head), wanted, "{}", malformed.head);

    let mut cut_short = std::net::TcpStream::connect(addr).expect("connect");
    let publish = format!(
        "POST /publish?channel=news HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nContent-Length: 10\r\n\r\nabc"
    );
    std::io::Write::write_all(&mut cut_short, publish.as_bytes()).expect("send");
    cut_short.shutdown(std::net::Shutdown::Write).expect("half-close");
    cut_short
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut cut_short, &mut answer);
    let cut_short = parse_response(&answer);
    assert_eq!(cut_short.status, 400, "{cut_short:?}");
    assert_eq!(cors_headers(&cut_short.head), wanted, "{}", cut_short.head);
}

#[test]
fn preflight_allows_post_with_authorization_and_content_type() {
    let server = TestServer::start(&["--cors-origin", ORIGIN, "--publish-token", "s3cret"]);
    let addr = server.addr;

    // A preflight never carries credentials: it is answered without the token.
    let answer = preflight(addr, "authorization,content-type");
    assert_preflight_allows(&answer, "post", &["authorization", "content-type"]);
    // With CORS on, a wrong method on /publish names OPTIONS among the allowed.
    let wrong = http(addr, "GET", "/publish", &[], b"");
    assert_eq!(wrong.status, 405, "{wrong:?}");
    assert_eq!(
        wrong.header("Allow").as_deref(),
        Some("POST, OPTIONS"),
        "{}",
        wrong.head
    );

    // The request the preflight was for, then one without the token: both
    // answers carry the origin.
    let json = http(
        addr,
        "POST",
        "/publish",
        &[
            ("Origin", ORIGIN),
            ("Authorization", "Bearer s3cret"),
            ("Content-Type", "application/json"),
        ],
        br#"{"channel": "news", "data": {"n": 1}}"#,
    );
    assert_eq!(json.status, 200, "{json:?}");
    assert_eq!(
        json.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        json.head
    );
    let unauthorized = http(addr, "POST", "/publish?channel=news", &[("Origin", ORIGIN)], b"x");
    assert_eq!(unauthorized.status, 401, "{unauthorized:?}");
    assert_eq!(
        unauthorized.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN),
        "{}",
        unauthorized.head
    );
}

#[test]
fn streams_answer_a_preflight_for_fetch_based_clients() {
    // A fetch-based SSE client (not the browser's EventSource) that sends
    // a header of its own, `Last-Event-ID` on a reconnect say, makes the
    // browser ask first; a 405 there stopped the stream.
    let server = TestServer::start(&["--cors-origin", ORIGIN]);
    let addr = server.addr;
    for path in ["/events?channel=news", "/"] {
        let answer = http(
            addr,
            "OPTIONS",
            path,
            &[
                ("Origin", ORIGIN),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "last-event-id,authorization"),
            ],
            b"",
        );
        assert_preflight_allows(
            &answer,
            "get",
            &["last-event-id", "authorization", "cache-control"],
        );
    }
    // A wrong method there names OPTIONS among the allowed.
    let wrong = http(addr, "DELETE", "/events", &[], b"");
    assert_eq!(wrong.status, 405, "{wrong:?}");
    assert_eq!(
        wrong.header("Allow").as_deref(),
        Some("GET, HEAD, OPTIONS"),
        "{}",
        wrong.head
    );
    // The stream the preflight was for.
    let stream = SseClient::connect(
        addr,
        "/events?channel=news",
        &[("Origin", ORIGIN), ("Last-Event-ID", "0")],
    );
    assert_eq!(stream.status(), 200, "{}", stream.head);
    assert_eq!(
        stream.header("Access-Control-Allow-Origin").as_deref(),
        Some(ORIGIN)
    );
}

#[test]
fn any_origin_with_a_star() {
    let server = TestServer::start(&["--cors-origin", "*"]);
    let addr = server.addr;
    let stream = SseClient::connect(addr, "/events", &[("Origin", ORIGIN)]);
    assert_eq!(
        stream.header("Access-Control-Allow-Origin").as_deref(),
        Some("*"),
        "{}",
        stream.head
    );
    // The same answer for every origin: nothing to vary on; and no
    // credentials, which browsers never allow with `*`.
    assert_eq!(stream.header("Vary"), None, "{}", stream.head);
    assert_eq!(
        stream.header("Access-Control-Allow-Credentials"),
        None,
        "{}",
        stream.head
    );
    let published = http(addr, "POST", "/publish", &[("Origin", ORIGIN)], b"x");
    assert_eq!(
        published.header("Access-Control-Allow-Origin").as_deref(),
        Some("*"),
        "{}",
        published.head
    );
    let answer = preflight(addr, "content-type");
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(
        answer.header("Access-Control-Allow-Origin").as_deref(),
        Some("*"),
        "{}",
        answer.head
    );
}

#[test]
fn no_cors_headers_without_the_option() {
    let server = TestServer::start(&[]);
    let addr = server.addr;
    let origin = [("Origin", ORIGIN)];

    let stream = SseClient::connect(addr, "/events?channel=news", &origin);
    assert_eq!(stream.status(), 200, "{}", stream.head);
    assert_eq!(
        cors_headers(&stream.head),
        Vec::<String>::new(),
        "{}",
        stream.head
    );
    let demo = SseClient::connect(addr, "/", &origin);
    assert_eq!(cors_headers(&demo.head), Vec::<String>::new(), "{}", demo.head);
    for response in [
        http(addr, "POST", "/publish?channel=news", &origin, b"hi"),
        http(addr, "POST", "/publish?channel=bad%20name", &origin, b"hi"),
        http(addr, "GET", "/health", &origin, b""),
        http(addr, "GET", "/metrics", &origin, b""),
    ] {
        assert_eq!(
            cors_headers(&response.head),
            Vec::<String>::new(),
            "{}",
            response.head
        );
    }

    let too_large = parse_response(&answer_to(addr, &oversized_head()));
    assert_eq!(too_large.status, 431, "{too_large:?}");
    assert_eq!(
        cors_headers(&too_large.head),
        Vec::<String>::new(),
        "{}",
        too_large.head
    );

    // No stream preflight: 405, allowing what it always did.
    let options = http(addr, "OPTIONS", "/events", &origin, b"");
    assert_eq!(options.status, 405, "{options:?}");
    assert_eq!(
        options.header("Allow").as_deref(),
        Some("GET, HEAD"),
        "{}",
        options.head
    );
    assert_eq!(
        cors_headers(&options.head),
        Vec::<String>::new(),
        "{}",
        options.head
    );

    // No preflight either: the browser then refuses the cross-origin publish.
    let answer = preflight(addr, "content-type");
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(
        cors_headers(&answer.head),
        Vec::<String>::new(),
        "{}",
        answer.head
    );
    assert!(
        answer.header("Allow").is_some_and(|a| a.contains("POST")),
        "{}",
        answer.head
    );
    assert!(
        answer.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("--cors-origin")),
        "{}",
        answer.body
    );
}

#[test]
fn an_origin_with_a_path_is_refused_at_start() {
    // Browsers send the origin without a path: this one would never match.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tinysse"))
        .args(["--port", "0", "--cors-origin", "https://app.example/"])
        .output()
        .expect("run tinysse");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'https://app.example/'") && stderr.contains("--cors-origin"),
        "{stderr}"
    );
}

#[test]
fn a_page_of_another_origin_cannot_publish_unless_allowed() {
    // A "simple" cross-origin POST (text/plain) needs no preflight: without
    // this check any page a user opened could publish to a server the
    // browser reaches. curl and other programs send no Origin.
    let server = TestServer::start(&[]);
    let addr = server.addr;
    let from = |origin: &str| http(addr, "POST", "/publish?channel=news", &[("Origin", origin)], b"x");
    let foreign = from("https://evil.example");
    assert_eq!(foreign.status, 403, "{foreign:?}");
    assert!(
        foreign.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("start the server with --cors-origin https://evil.example to allow it"),
        "says how to allow it: {foreign:?}"
    );
    // `--cors-origin null` is refused at start: not suggested.
    let opaque = from("null");
    assert_eq!(opaque.status, 403, "{opaque:?}");
    let message = opaque.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("opaque origin") && !message.contains("--cors-origin null"),
        "{message}"
    );
    // This server's own page (/demo): the Host the request was sent to.
    assert_eq!(from(&format!("http://{addr}")).status, 200);
    assert_eq!(http(addr, "POST", "/publish?channel=news", &[], b"x").status, 200);
    assert_eq!(metric(addr, "tinysse_events_published_total"), 2.0);
    // An absolute-form target names the host in place of Host (RFC 9112,
    // 3.2.2), as a client talking through a proxy sends it.
    let absolute = |origin: &str| {
        let request = format!(
            "POST http://{addr}/publish?channel=news HTTP/1.1\r\nHost: proxy.internal\r\nOrigin: {origin}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        );
        parse_response(&answer_to(addr, request.as_bytes())).status
    };
    assert_eq!(absolute(&format!("http://{addr}")), 200);
    assert_eq!(absolute("http://proxy.internal"), 403);
    assert_eq!(metric(addr, "tinysse_events_published_total"), 3.0);

    let allowed = TestServer::start(&["--cors-origin", ORIGIN]);
    let from = |origin: &str| {
        http(
            allowed.addr,
            "POST",
            "/publish?channel=news",
            &[("Origin", origin)],
            b"x",
        )
        .status
    };
    assert_eq!(from(ORIGIN), 200);
    assert_eq!(from("https://evil.example"), 403);
}

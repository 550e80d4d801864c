//! Serving tiny_http's connections: routing requests, answering plain ones
//! with JSON, giving streams a thread each.
//!
//! Each request is handled on the thread tiny_http reads its connection
//! with (`tiny_http::Server::from_listener_handling`), so no other thread
//! need wake up before it is answered, and a connection's requests are
//! handled one after another: a write that blocks (a client that does not
//! read its answers) holds that connection's thread only. A stream takes
//! its connection out of tiny_http and gets a thread that subscribes and
//! then writes the head, so that the subscription exists before the head
//! is sent; the connection's thread goes back to tiny_http's pool. The
//! dispatch thread only watches tiny_http's acceptor and restarts it.
//!
//! Opening and ending streams is in `streams`, `POST /publish` in
//! `publishing`; routing and the plain answers are here.

use std::io::{Cursor, Read, Write};
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response};

use crate::acceptor::{Acceptor, Next};
use crate::broker::{self, BrokerError};
use crate::json_text::JsonObject;
use crate::keep_alive;
use crate::publish::{self, PublishError};
use crate::redis_bus::BusError;
use crate::server::App;

mod publishing;
mod streams;

pub use publishing::constant_time_eq;
use publishing::handle_publish;
use streams::open_stream;

/// Largest request head accepted, all header lines together.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An error answer: a status and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    message: String,
    headers: Vec<(&'static str, String)>,
    /// The connection is done with after this answer: nothing after it is
    /// read as a request (`Request::stop_reading`), and the answer says
    /// `Connection: close`.
    closes_connection: bool,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            headers: Vec::new(),
            closes_connection: false,
        }
    }

    /// The same error, after which its connection is done with: where its
    /// next request starts is not known (ambiguous framing, a body that
    /// could not be read to its end, a chunked one among them), or the
    /// server is stopping.
    fn closing(mut self) -> ApiError {
        self.closes_connection = true;
        self
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::TooManyChannels(_) => {
                ApiError::new(503, e.to_string()).with_header("Retry-After", "5")
            }
            BrokerError::Closed => ApiError::new(503, e.to_string())
                .with_header("Retry-After", "1")
                .closing(),
            e => ApiError::new(400, e.to_string()),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let status = match e {
            PublishError::TooLarge(_) => 413,
            PublishError::TooSlow => 408,
            PublishError::OutOfMemory => 503,
            _ => 400,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        let message = match e {
            BusError::Broker(e) => return e.into(),
            e @ BusError::StoppedAfterStoring => return ApiError::new(503, e.to_string()).closing(),
            e @ (BusError::NoAnswer { .. } | BusError::LostAfterStoring { .. }) => {
                format!("{e}; the event may or may not be stored, retry later (it may then come twice)")
            }
            e => format!("{e}; the event was not stored, retry later"),
        };
        ApiError::new(503, message).with_header("Retry-After", "1")
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A stream: the demo (`GET /`) or channels (`GET /events`).
    Stream { demo: bool },
    /// Anything answered with one response.
    Plain(Plain),
}

/// The requests answered with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plain {
    /// `HEAD` of a stream path: the stream's head, no stream.
    StreamHead,
    Publish,
    PublishPreflight,
    /// `OPTIONS /` or `/events` with `--cors-origin`: the preflight of a
    /// fetch-based SSE client that sends its own headers.
    StreamPreflight,
    /// `OPTIONS *`: what the server as a whole allows (RFC 9110, 9.3.7).
    ServerOptions,
    Health,
    Metrics,
    DemoPage,
    NotFound,
    WrongMethod(&'static str),
}

/// Where a request goes; `cors`: `--cors-origin` is set, so `/publish`
/// also answers `OPTIONS` (and a 405 there says so in `Allow`).
fn route(method: &Method, path: &str, cors: bool) -> Route {
    let get_like = matches!(method, Method::Get | Method::Head);
    let plain = match path {
        "/" if *method == Method::Get => return Route::Stream { demo: true },
        "/events" if *method == Method::Get => return Route::Stream { demo: false },
        "/" | "/events" if *method == Method::Head => Plain::StreamHead,
        "/" | "/events" if *method == Method::Options && cors => Plain::StreamPreflight,
        "/" | "/events" if cors => Plain::WrongMethod("GET, HEAD, OPTIONS"),
        "/" | "/events" => Plain::WrongMethod("GET, HEAD"),
        "/publish" if *method == Method::Post => Plain::Publish,
        "/publish" if *method == Method::Options => Plain::PublishPreflight,
        "*" if *method == Method::Options => Plain::ServerOptions,
        "/publish" if cors => Plain::WrongMethod("POST, OPTIONS"),
        "/publish" => Plain::WrongMethod("POST"),
        "/health" if get_like => Plain::Health,
        "/metrics" if get_like => Plain::Metrics,
        "/demo" if get_like => Plain::DemoPage,
        "/health" | "/metrics" | "/demo" => Plain::WrongMethod("GET, HEAD"),
        _ => Plain::NotFound,
    };
    Route::Plain(plain)
}

/// Serves connections until the app stops: tiny_http hands each request to
/// [`handle_on_connection`] on its connection's thread. tiny_http's
/// acceptor thread can end (an accept timeout, see `listener`; no
/// descriptor left, see `acceptor`); a new one is then started on the same
/// listener.
pub fn dispatch(app: &Arc<App>, listener: &TcpListener) {
    // Weak: the connections' threads may outlive the server (an idle
    // kept-alive connection), and must not keep its broker and the rest.
    let handler_app = Arc::downgrade(app);
    let handler: tiny_http::Handler = Arc::new(move |request| match handler_app.upgrade() {
        Some(app) => handle_on_connection(&app, request),
        None => answer_stopping(request, None),
    });
    let error_headers = cors_headers(app.config.cors_origin.as_deref());
    let mut acceptor = match Acceptor::start(listener, handler, error_headers) {
        Ok(started) => started,
        Err(e) => {
            log::error!("cannot start accepting connections: {e}");
            return;
        }
    };
    while !app.is_stopping() {
        match acceptor.next(listener, Duration::from_millis(100), || app.is_stopping()) {
            Next::Nothing => {}
            Next::Stopping => break,
        }
    }
    acceptor.close();
}

/// Handles `request` on its connection's thread; counted as in progress
/// (a stop waits for it), or answered `503` once the server is stopping
/// (and the connection closed). A panic is logged and goes on to tiny_http,
/// which ends the connection.
fn handle_on_connection(app: &Arc<App>, request: Request) {
    let Some(_in_progress) = app.begin_request() else {
        return answer_stopping(request, app.config.cors_origin.as_deref());
    };
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handle(app, request))) {
        log::error!("a request handler panicked; its connection was closed");
        std::panic::resume_unwind(panic);
    }
}

/// `503`, the server is stopping, and the connection closes after it.
fn answer_stopping(request: Request, cors_origin: Option<&str>) {
    let stopping = ApiError::new(503, "the server is stopping; retry later")
        .with_header("Retry-After", "1")
        .closing();
    respond_error_with(cors_origin, request, stopping);
}

fn handle(app: &Arc<App>, request: Request) {
    // For the head guard: this connection delivered a head.
    if let Some(peer) = request.remote_addr() {
        app.heads.record(*peer);
    }
    // (A head over MAX_HEAD_BYTES never gets here: tiny_http answers 431.)
    if let Some(error) = host_error(&request) {
        return respond_error(app, request, error);
    }
    if let Some(error) = framing_error(&request) {
        return respond_error(app, request, error);
    }
    let url = origin_form(request.url());
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let path = decode_unreserved(path);
    let path = &*path;
    match route(request.method(), path, app.config.cors_origin.is_some()) {
        Route::Stream { demo } => open_stream(app, request, query, demo),
        Route::Plain(Plain::StreamHead) => open_stream_head(app, request, path, query),
        Route::Plain(plain) => serve_plain(app, request, plain, path, query),
    }
}

/// `path` with each percent-encoded unreserved character (`A-Z a-z 0-9 -
/// . _ ~`) decoded, which RFC 3986 (6.2.2.2) makes the same path:
/// `/%68ealth` is `/health`. Other escapes (`%2F` among them) stay as
/// sent.
fn decode_unreserved(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return path.into();
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = (bytes[at] == b'%')
            .then(|| path.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match escaped {
            Some(byte) => {
                decoded.push(char::from(byte));
                at += 3;
            }
            None => {
                // Paths are ASCII (tiny_http refuses other bytes): one
                // byte is one character.
                decoded.push(char::from(bytes[at]));
                at += 1;
            }
        }
    }
    decoded.into()
}

/// A request target as a path and query: the absolute form
/// (`http://host:port/path?query`, which servers must accept, RFC 9112
/// 3.2.2) loses its scheme and authority.
fn origin_form(target: &str) -> String {
    let Some((_, rest)) = split_absolute(target) else {
        return target.to_string();
    };
    match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'/' => rest[at..].to_string(),
        Some(at) => format!("/{}", &rest[at..]),
        None => "/".to_string(),
    }
}

/// The authority of an absolute-form target, which stands for the `Host`
/// header (RFC 9112 3.2.2: the server must use it and ignore `Host`).
fn target_authority(target: &str) -> Option<&str> {
    let (_, rest) = split_absolute(target)?;
    Some(&rest[..rest.find(['/', '?']).unwrap_or(rest.len())])
}

/// An `http://` or `https://` target (any case) as its scheme and the rest.
fn split_absolute(target: &str) -> Option<(&str, &str)> {
    ["http://", "https://"].into_iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| (head, &target[scheme.len()..]))
    })
}

/// The `503` for a stream past `--max-connections`.
fn too_many_streams(app: &App) -> ApiError {
    ApiError::new(
        503,
        format!(
            "too many open streams (--max-connections {}); retry later",
            app.config.max_connections
        ),
    )
    .with_header("Retry-After", "5")
}

/// Answers `HEAD` of a stream path with the head a `GET` gets (or its
/// `400` for bad channels, its `503` past `--max-connections`), without
/// opening a stream; the connection is ended.
fn open_stream_head(app: &Arc<App>, request: Request, path: &str, query: &str) {
    if path == "/events" {
        if let Err(e) = subscription_channels(query) {
            return respond_error(app, request, e);
        }
    }
    if app.stats.open_streams() >= app.config.max_connections as u64 {
        return respond_error(app, request, too_many_streams(app));
    }
    // The head says `Connection: close`: what the client sent behind it is
    // not read as requests, and tiny_http's reader of it leaves at once.
    request.stop_reading();
    serve_plain(app, request, Plain::StreamHead, "", "");
}

/// Writes the head of a stream, which says `Connection: close`.
fn stream_head(app: &App, request: Request) {
    let http10 = keep_alive::is_http10(&request);
    let head = crate::stream::response_head(http10, app.config.cors_origin.as_deref());
    let mut writer = request.into_writer();
    if let Err(e) = writer.write_all(&head).and_then(|()| writer.flush()) {
        log::debug!("could not send a stream head: {e}");
    }
}

/// The `channel` values of a stream request's query, decoded as a
/// publish's are, once checked as a subscription
/// ([`broker::validate_subscription`]).
fn subscription_channels(query: &str) -> Result<Vec<String>, ApiError> {
    let channels = publish::query_pairs(query)
        .filter(|(key, _)| key == b"channel")
        .map(|(_, value)| publish::query_text("channel", value))
        .collect::<Result<Vec<_>, _>>()?;
    broker::validate_subscription(&channels)?;
    Ok(channels)
}

/// The `400` RFC 9112 (3.2) asks for: an HTTP/1.1 request without a
/// `Host` header, or any request with more than one.
fn host_error(request: &Request) -> Option<ApiError> {
    let hosts = request.headers().iter().filter(|h| h.field.equiv("Host")).count();
    match hosts {
        0 if !keep_alive::is_http10(request) => Some(ApiError::new(
            400,
            "an HTTP/1.1 request needs a Host header (RFC 9112, 3.2)",
        )),
        0 | 1 => None,
        _ => Some(ApiError::new(400, "more than one Host header (RFC 9112, 3.2)")),
    }
}

/// The `400` for a request with ambiguous framing (see `framing`), after
/// which its connection is closed.
fn framing_error(request: &Request) -> Option<ApiError> {
    let http10 = keep_alive::is_http10(request);
    let ambiguity = crate::framing::ambiguity(request.headers(), http10)?;
    Some(ApiError::new(400, format!("{ambiguity}; the connection is closed")).closing())
}

fn serve_plain(app: &Arc<App>, request: Request, plain: Plain, path: &str, query: &str) {
    match plain {
        Plain::Publish => handle_publish(app, request, query),
        Plain::PublishPreflight => match &app.config.cors_origin {
            Some(origin) => send(
                request,
                preflight(origin, "POST, OPTIONS", "Authorization, Content-Type"),
            ),
            None => respond_error(
                app,
                request,
                ApiError::new(405, "CORS is off (start with --cors-origin); use POST /publish")
                    .with_header("Allow", "POST"),
            ),
        },
        // Routed only with `--cors-origin`. `Last-Event-ID` is the header a
        // reconnecting client sends; the others are what fetch-based
        // clients add (a token for a proxy in front, say).
        Plain::StreamPreflight => match &app.config.cors_origin {
            Some(origin) => send(
                request,
                preflight(
                    origin,
                    "GET, HEAD, OPTIONS",
                    "Last-Event-ID, Cache-Control, Accept, Authorization",
                ),
            ),
            // (Not routed here without it; answered as `route` would.)
            None => serve_plain(app, request, Plain::WrongMethod("GET, HEAD"), path, query),
        },
        Plain::ServerOptions => {
            let allow = if app.config.cors_origin.is_some() {
                "GET, HEAD, POST, OPTIONS"
            } else {
                "GET, HEAD, POST"
            };
            send(request, Response::empty(204).with_header(header("Allow", allow)));
        }
        Plain::Health => {
            let mut body = JsonObject::new()
                .member("status", if app.is_stopping() { "stopping" } else { "ok" })
                .member("version", env!("CARGO_PKG_VERSION"))
                .member("uptime_seconds", app.stats.uptime_seconds())
                .member("open_streams", app.stats.open_streams());
            if let Some(bus) = &app.redis {
                let state = if bus.is_connected() {
                    "connected"
                } else {
                    "disconnected"
                };
                body = body.member("redis", state);
            }
            respond_json(app, request, 200, body.finish());
        }
        Plain::Metrics => {
            let text = crate::metrics::render(&app.stats, &app.broker);
            send(
                request,
                Response::from_string(text).with_header(header("Content-Type", crate::metrics::CONTENT_TYPE)),
            );
        }
        // Checked and its connection ended by `open_stream_head`.
        Plain::StreamHead => stream_head(app, request),
        Plain::DemoPage => {
            let page = Response::from_string(crate::DEMO_PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8"))
                .with_header(header("Cache-Control", "no-cache"));
            send(request, page);
        }
        Plain::NotFound => {
            let message = format!(
                "no such path '{path}'; the paths are GET /, GET /events, POST /publish, GET /health, GET /metrics, GET /demo"
            );
            respond_error(app, request, ApiError::new(404, message));
        }
        Plain::WrongMethod(allow) => {
            let message = format!(
                "method {} is not allowed on {path}; use {allow}",
                request.method()
            );
            respond_error(
                app,
                request,
                ApiError::new(405, message).with_header("Allow", allow),
            );
        }
    }
}

/// The value of a request's first header called `name` (any case).
fn request_header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// A response header from our own constant name and value (or a configured
/// value); never fails.
pub(crate) fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        // Only our own constant names and configured values get here.
        Header::from_bytes(&b"X-Invalid-Header"[..], &b"1"[..]).expect("a valid constant header")
    })
}

fn respond_json(app: &App, request: Request, status: u16, body: String) {
    send(
        request,
        json_response(status, body, app.config.cors_origin.as_deref()),
    );
}

/// A JSON answer, with the CORS header when an origin is configured.
/// `{"error": "..."}`.
fn error_body(error: &ApiError) -> String {
    JsonObject::new().member("error", error.message.as_str()).finish()
}

fn json_response(status: u16, body: String, cors_origin: Option<&str>) -> Response<Cursor<Vec<u8>>> {
    let mut response = Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    for cors in cors_headers(cors_origin) {
        response.add_header(cors);
    }
    response
}

/// The CORS headers of an answer when `--cors-origin` is set: a page of
/// that origin may read it (with the user's credentials, unless any origin
/// may).
fn cors_headers(cors_origin: Option<&str>) -> Vec<Header> {
    let Some(origin) = cors_origin else {
        return Vec::new();
    };
    let mut headers = vec![header("Access-Control-Allow-Origin", origin)];
    if origin != "*" {
        headers.push(header("Access-Control-Allow-Credentials", "true"));
    }
    headers
}

fn respond_error(app: &App, request: Request, error: ApiError) {
    respond_error_with(app.config.cors_origin.as_deref(), request, error);
}

/// [`respond_error`] with the CORS origin given (none where the app is
/// gone).
fn respond_error_with(cors_origin: Option<&str>, request: Request, error: ApiError) {
    log::debug!(
        "{} {} -> {} {}",
        request.method(),
        request.url(),
        error.status,
        error.message
    );
    if error.closes_connection {
        request.stop_reading();
    }
    send(request, error_response(&error, cors_origin));
}

fn error_response(error: &ApiError, cors_origin: Option<&str>) -> Response<Cursor<Vec<u8>>> {
    let mut response = json_response(error.status, error_body(error), cors_origin);
    for (name, value) in &error.headers {
        response.add_header(header(name, value));
    }
    response
}

/// A CORS preflight's `204`: `origin` may use `methods` with `headers`,
/// and may cache that for a day.
fn preflight(origin: &str, methods: &str, headers: &str) -> Response<std::io::Empty> {
    let response = Response::empty(204)
        .with_header(header("Access-Control-Allow-Origin", origin))
        .with_header(header("Access-Control-Allow-Methods", methods))
        .with_header(header("Access-Control-Allow-Headers", headers))
        .with_header(header("Access-Control-Max-Age", "86400"));
    if origin == "*" {
        response
    } else {
        response.with_header(header("Access-Control-Allow-Credentials", "true"))
    }
}

fn send<R: Read>(request: Request, response: Response<R>) {
    // A connection that closes after the answer says so (RFC 9112, 9.6),
    // also when an HTTP/1.1 client asked for it (for HTTP/1.0 closing is
    // the default, said by saying nothing).
    let http10 = keep_alive::is_http10(&request);
    let sent = if request.is_reading_stopped() {
        keep_alive::respond_closing(request, response)
    } else if keep_alive::stays_open(&request) {
        keep_alive::respond_kept(request, response)
    } else if http10 {
        request.respond(response)
    } else {
        keep_alive::respond_closing(request, response)
    };
    note_unsent(sent);
}

/// An answer that could not be written: its client left; worth a debug line.
fn note_unsent(sent: std::io::Result<()>) {
    if let Err(e) = sent {
        log::debug!("could not send a response: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_redis_lost_before_it_was_read_back_is_not_confirmed() {
        let error = ApiError::from(BusError::LostAfterStoring {
            server: "127.0.0.1:6379".to_string(),
        });
        assert_eq!(error.status, 503);
        assert!(
            error.message.contains("may or may not be stored"),
            "{}",
            error.message
        );
        assert!(error.headers.iter().any(|(name, _)| *name == "Retry-After"));
    }

    #[test]
    fn escaped_unreserved_characters_are_decoded_in_paths() {
        assert_eq!(decode_unreserved("/%68ealth"), "/health");
        assert_eq!(decode_unreserved("/%65%76ents"), "/events");
        assert_eq!(decode_unreserved("/a%2Db%7e"), "/a-b~");
        assert_eq!(decode_unreserved("/%2Fhealth"), "/%2Fhealth");
        assert_eq!(decode_unreserved("/%20x%"), "/%20x%");
        assert_eq!(decode_unreserved("/%6"), "/%6");
        assert_eq!(decode_unreserved("/%zz"), "/%zz");
    }

    #[test]
    fn an_absolute_target_names_the_host() {
        assert_eq!(
            target_authority("http://a.example:8000/publish?x"),
            Some("a.example:8000")
        );
        assert_eq!(target_authority("HTTPS://a.example?x"), Some("a.example"));
        assert_eq!(target_authority("http://a.example"), Some("a.example"));
        assert_eq!(target_authority("/publish"), None);
    }

    #[test]
    fn absolute_targets_become_paths() {
        assert_eq!(origin_form("/events?channel=a"), "/events?channel=a");
        assert_eq!(origin_form("http://127.0.0.1:8000/health"), "/health");
        assert_eq!(origin_form("HTTPS://example.com/events?x=1"), "/events?x=1");
        assert_eq!(origin_form("http://example.com"), "/");
        assert_eq!(origin_form("http://example.com?channel=a"), "/?channel=a");
        assert_eq!(origin_form("httpx://a/b"), "httpx://a/b");
    }

    #[test]
    fn routes() {
        let plain = Route::Plain;
        assert_eq!(route(&Method::Get, "/", true), Route::Stream { demo: true });
        assert_eq!(
            route(&Method::Post, "/", true),
            plain(Plain::WrongMethod("GET, HEAD, OPTIONS"))
        );
        assert_eq!(
            route(&Method::Post, "/", false),
            plain(Plain::WrongMethod("GET, HEAD"))
        );
        assert_eq!(
            route(&Method::Options, "/events", true),
            plain(Plain::StreamPreflight)
        );
        assert_eq!(
            route(&Method::Options, "/events", false),
            plain(Plain::WrongMethod("GET, HEAD"))
        );
        assert_eq!(route(&Method::Head, "/events", true), plain(Plain::StreamHead));
        assert_eq!(
            route(&Method::Get, "/events", true),
            Route::Stream { demo: false }
        );
        assert_eq!(route(&Method::Post, "/publish", true), plain(Plain::Publish));
        assert_eq!(
            route(&Method::Options, "/publish", true),
            plain(Plain::PublishPreflight)
        );
        assert_eq!(
            route(&Method::Get, "/publish", true),
            plain(Plain::WrongMethod("POST, OPTIONS"))
        );
        assert_eq!(
            route(&Method::Get, "/publish", false),
            plain(Plain::WrongMethod("POST"))
        );
        assert_eq!(route(&Method::Head, "/health", true), plain(Plain::Health));
        assert_eq!(
            route(&Method::Delete, "/metrics", true),
            plain(Plain::WrongMethod("GET, HEAD"))
        );
        assert_eq!(route(&Method::Get, "/nope", true), plain(Plain::NotFound));
        assert_eq!(route(&Method::Get, "/events/", true), plain(Plain::NotFound));
    }
}

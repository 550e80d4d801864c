//! The dispatch loop on tiny_http and the routing of requests: streams get a
//! thread each, plain requests are answered with JSON.
//!
//! The dispatch loop never blocks on a client: it answers small requests
//! (whose body tiny_http has already read) at once, hands a publish with a
//! larger body to a thread of its own, and starts a thread per stream after
//! subscribing, so that the subscription exists before the head is sent.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tiny_http::{Header, Method, Request, Response};

use crate::broker::{BrokerError, EventId};
use crate::publish::{self, PublishError};
use crate::server::App;
use crate::stats::CloseReason;
use crate::stream::{self, Source, Stream};

/// Bodies up to this size are read by tiny_http before the request reaches us.
const EAGER_BODY: usize = 1024;

/// Request threads (publishes with large bodies) at most; more get `503`.
const MAX_REQUEST_THREADS: usize = 512;

/// Largest request head accepted, all header lines together.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An error answer: a status and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
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
            e => ApiError::new(400, e.to_string()),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let status = match e {
            PublishError::TooLarge(_) => 413,
            PublishError::TooSlow => 408,
            _ => 400,
        };
        ApiError::new(status, e.to_string())
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    DemoStream,
    Events,
    Publish,
    PublishPreflight,
    Health,
    Metrics,
    DemoPage,
    NotFound,
    WrongMethod(&'static str),
}

fn route(method: &Method, path: &str) -> Route {
    let get_like = matches!(method, Method::Get | Method::Head);
    match path {
        "/" if *method == Method::Get => Route::DemoStream,
        "/events" if *method == Method::Get => Route::Events,
        "/" | "/events" => Route::WrongMethod("GET"),
        "/publish" if *method == Method::Post => Route::Publish,
        "/publish" if *method == Method::Options => Route::PublishPreflight,
        "/publish" => Route::WrongMethod("POST, OPTIONS"),
        "/health" if get_like => Route::Health,
        "/metrics" if get_like => Route::Metrics,
        "/demo" if get_like => Route::DemoPage,
        "/health" | "/metrics" | "/demo" => Route::WrongMethod("GET, HEAD"),
        _ => Route::NotFound,
    }
}

/// Accepts requests until the app stops. tiny_http's acceptor can end on an
/// accept timeout (see `listener`); a new server is then built on the same
/// listener.
pub fn dispatch(app: &Arc<App>, listener: &TcpListener) {
    let mut server = match new_server(listener) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot start accepting connections: {e}");
            return;
        }
    };
    while !app.is_stopping() {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => {
                let app = Arc::clone(app);
                let outcome = catch_unwind(AssertUnwindSafe(move || handle(&app, request)));
                if outcome.is_err() {
                    log::error!("a request handler panicked; the connection was closed");
                }
            }
            Ok(None) => {}
            Err(e) => {
                log::debug!("acceptor stopped ({e}); restarting it");
                match new_server(listener) {
                    Ok(fresh) => server = fresh,
                    Err(e) => {
                        log::error!("cannot restart the acceptor: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    }
}

fn new_server(listener: &TcpListener) -> Result<tiny_http::Server, String> {
    let clone = listener.try_clone().map_err(|e| e.to_string())?;
    tiny_http::Server::from_listener(clone, None).map_err(|e| e.to_string())
}

fn handle(app: &Arc<App>, request: Request) {
    let head_size: usize = request
        .headers()
        .iter()
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
        .sum::<usize>()
        + request.url().len();
    if head_size > MAX_HEAD_BYTES {
        let error = ApiError::new(
            431,
            format!("request head too large: at most {MAX_HEAD_BYTES} bytes"),
        );
        return respond_error(app, request, error);
    }
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    match route(request.method(), path) {
        Route::DemoStream => open_stream(app, request, query, true),
        Route::Events => open_stream(app, request, query, false),
        Route::Publish => {
            let small = matches!(request.body_length(), Some(n) if n <= EAGER_BODY);
            if small {
                handle_publish(app, request, query);
            } else {
                spawn_request_thread(app, request, query.to_string());
            }
        }
        Route::PublishPreflight => match &app.config.cors_origin {
            Some(origin) => {
                let response = Response::empty(204)
                    .with_header(header("Access-Control-Allow-Origin", origin))
                    .with_header(header("Access-Control-Allow-Methods", "POST, OPTIONS"))
                    .with_header(header(
                        "Access-Control-Allow-Headers",
                        "Authorization, Content-Type",
                    ))
                    .with_header(header("Access-Control-Max-Age", "86400"));
                send(request, response);
            }
            None => respond_error(
                app,
                request,
                ApiError::new(405, "CORS is off (start with --cors-origin); use POST /publish")
                    .with_header("Allow", "POST"),
            ),
        },
        Route::Health => {
            let body = json!({
                "status": if app.is_stopping() { "stopping" } else { "ok" },
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_seconds": app.stats.uptime_seconds(),
                "open_streams": app.stats.open_streams(),
            });
            respond_json(app, request, 200, &body);
        }
        Route::Metrics => {
            let text = crate::metrics::render(&app.stats, &app.broker);
            send(
                request,
                Response::from_string(text).with_header(header("Content-Type", crate::metrics::CONTENT_TYPE)),
            );
        }
        Route::DemoPage => {
            let page = Response::from_string(crate::DEMO_PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8"))
                .with_header(header("Cache-Control", "no-cache"));
            send(request, page);
        }
        Route::NotFound => {
            let message = format!(
                "no such path '{path}'; the paths are GET /, GET /events, POST /publish, GET /health, GET /metrics, GET /demo"
            );
            respond_error(app, request, ApiError::new(404, message));
        }
        Route::WrongMethod(allow) => {
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

/// The `Last-Event-ID` of a request: the header, else `?lastEventId=`.
/// Anything but a decimal id is ignored, as if none was sent.
fn last_event_id(request: &Request, query: &str) -> Option<EventId> {
    let from_header = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Last-Event-ID"))
        .map(|h| h.value.as_str().trim().to_string());
    let raw = from_header.or_else(|| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "lastEventId")
            .map(|(_, v)| v.trim().to_string())
    })?;
    match raw.parse() {
        Ok(id) => Some(id),
        Err(_) => {
            log::debug!(
                "ignoring Last-Event-ID '{}': not a decimal id",
                raw.escape_default()
            );
            None
        }
    }
}

fn open_stream(app: &Arc<App>, request: Request, query: &str, demo: bool) {
    let Some(slot) = app.stats.try_open_stream(app.config.max_connections) else {
        let error = ApiError::new(
            503,
            format!(
                "too many open streams (--max-connections {}); retry later",
                app.config.max_connections
            ),
        )
        .with_header("Retry-After", "5");
        return respond_error(app, request, error);
    };
    let last_id = last_event_id(&request, query);
    let (source, channels) = if demo {
        let source = Source::Demo {
            first_id: last_id.map_or(1, |id| id.saturating_add(1)),
            every: app.config.tick_interval,
        };
        (source, String::new())
    } else {
        let names: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "channel")
            .map(|(_, v)| v.into_owned())
            .collect();
        match app.broker.subscribe(&names, last_id) {
            Ok(subscription) => {
                let channels = subscription.channels().join(",");
                (Source::Channels(subscription), channels)
            }
            Err(e) => return respond_error(app, request, e.into()),
        }
    };
    let peer = request
        .remote_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    let http10 = request.http_version() == &tiny_http::HTTPVersion(1, 0);
    let path = if demo { "/" } else { "/events" };
    // The thread gets the raw connection, not the request: dropping a
    // `Request` runs tiny_http's `Drop`, whose frame alone is over 8 KiB of
    // stack (its unused 500-response path), and every stack page a stream
    // thread ever touches stays resident for the stream's whole life.
    let (writer_tx, writer_rx) = crossbeam_channel::bounded::<Box<dyn Write + Send>>(1);
    let thread_app = Arc::clone(app);
    let thread_peer = peer.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("sse-{peer}"))
        .stack_size(crate::SMALL_STACK)
        .spawn(move || {
            let app = thread_app;
            let _slot = slot;
            let writer = writer_rx.recv();
            drop(writer_rx);
            let Ok(writer) = writer else { return };
            let opened = Instant::now();
            log::info!("stream opened peer={thread_peer} path={path} channels={channels}");
            let mut stream = Stream::new(writer, Arc::clone(&app.stats));
            let reason = catch_unwind(AssertUnwindSafe(|| {
                stream.run(http10, source, &app.stream_settings, &app.shutdown_rx)
            }))
            .unwrap_or_else(|_| {
                log::error!("stream of {thread_peer} panicked; closing it");
                CloseReason::Error
            });
            app.stats.count_disconnect(reason);
            log::info!(
                "stream closed peer={thread_peer} path={path} channels={channels} duration={} events={} reason={}",
                stream::elapsed_text(opened),
                stream.events_written,
                reason.as_str()
            );
        });
    match spawned {
        // The thread is waiting for exactly this one connection.
        Ok(_) => {
            let _ = writer_tx.send(request.into_writer());
        }
        Err(e) => {
            log::warn!("cannot start a stream thread for {peer}: {e}");
            let error = ApiError::new(503, "the server cannot take more streams now; retry later")
                .with_header("Retry-After", "5");
            respond_error(app, request, error);
        }
    }
}

fn spawn_request_thread(app: &Arc<App>, request: Request, query: String) {
    let Some(guard) = app.begin_request(MAX_REQUEST_THREADS) else {
        let error =
            ApiError::new(503, "too many requests in progress; retry later").with_header("Retry-After", "1");
        return respond_error(app, request, error);
    };
    let (request_tx, request_rx) = crossbeam_channel::bounded::<Request>(1);
    let thread_app = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("publish".into())
        .stack_size(crate::SMALL_STACK)
        .spawn(move || {
            let _guard = guard;
            if let Ok(request) = request_rx.recv() {
                let app = thread_app;
                if catch_unwind(AssertUnwindSafe(|| handle_publish(&app, request, &query))).is_err() {
                    log::error!("a publish handler panicked; the connection was closed");
                }
            }
        });
    match spawned {
        Ok(_) => {
            let _ = request_tx.send(request);
        }
        Err(e) => {
            log::warn!("cannot start a request thread: {e}");
            respond_error(
                app,
                request,
                ApiError::new(503, "the server is busy; retry later"),
            );
        }
    }
}

fn handle_publish(app: &Arc<App>, mut request: Request, query: &str) {
    match publish_request(app, &mut request, query) {
        Ok(body) => respond_json(app, request, 200, &body),
        Err(error) => respond_error(app, request, error),
    }
}

fn publish_request(app: &App, request: &mut Request, query: &str) -> Result<serde_json::Value, ApiError> {
    if let Some(token) = &app.config.publish_token {
        let given = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().trim());
        let presented = given.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("Bearer").then(|| rest.trim())
        });
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()));
        if !ok {
            let message = if given.is_none() {
                "missing 'Authorization: Bearer <token>' header"
            } else {
                "wrong publish token"
            };
            return Err(ApiError::new(401, message).with_header("WWW-Authenticate", "Bearer"));
        }
    }
    let json = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .is_some_and(|h| publish::is_json(h.value.as_str()));
    let declared = request.body_length();
    let body = publish::read_body(request.as_reader(), declared, app.config.max_body)?;
    let event = publish::parse(query, json, body)?;
    let published = app
        .broker
        .publish(&event.channel, event.event.as_deref(), &event.data)?;
    app.stats.count_published();
    log::debug!(
        "published id={} channel={} subscribers={}",
        published.id,
        event.channel,
        published.subscribers
    );
    Ok(json!({
        "id": published.id.to_string(),
        "channel": event.channel,
        "subscribers": published.subscribers,
    }))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        // Only our own constant names and configured values get here.
        Header::from_bytes(&b"X-Invalid-Header"[..], &b"1"[..]).expect("a valid constant header")
    })
}

fn respond_json(app: &App, request: Request, status: u16, body: &serde_json::Value) {
    let mut response = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    if let Some(origin) = &app.config.cors_origin {
        response.add_header(header("Access-Control-Allow-Origin", origin));
    }
    send(request, response);
}

fn respond_error(app: &App, request: Request, error: ApiError) {
    log::debug!(
        "{} {} -> {} {}",
        request.method(),
        request.url(),
        error.status,
        error.message
    );
    let body = json!({ "error": error.message });
    let mut response = Response::from_string(body.to_string())
        .with_status_code(error.status)
        .with_header(header("Content-Type", "application/json"));
    for (name, value) in &error.headers {
        response.add_header(header(name, value));
    }
    if let Some(origin) = &app.config.cors_origin {
        response.add_header(header("Access-Control-Allow-Origin", origin));
    }
    send(request, response);
}

fn send<R: Read>(request: Request, response: Response<R>) {
    if let Err(e) = request.respond(response) {
        log::debug!("could not send a response: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(&Method::Get, "/"), Route::DemoStream);
        assert_eq!(route(&Method::Post, "/"), Route::WrongMethod("GET"));
        assert_eq!(route(&Method::Get, "/events"), Route::Events);
        assert_eq!(route(&Method::Post, "/publish"), Route::Publish);
        assert_eq!(route(&Method::Options, "/publish"), Route::PublishPreflight);
        assert_eq!(
            route(&Method::Get, "/publish"),
            Route::WrongMethod("POST, OPTIONS")
        );
        assert_eq!(route(&Method::Head, "/health"), Route::Health);
        assert_eq!(
            route(&Method::Delete, "/metrics"),
            Route::WrongMethod("GET, HEAD")
        );
        assert_eq!(route(&Method::Get, "/nope"), Route::NotFound);
        assert_eq!(route(&Method::Get, "/events/"), Route::NotFound);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}

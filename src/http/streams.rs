//! Opening a stream: its request checked, a slot and a thread of its own,
//! its connection taken out of tiny_http, its subscription made before its
//! head is written, and its end logged.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tiny_http::{Request, TakenConnection};

use super::{
    cors_headers, error_body, request_header, respond_error, subscription_channels, too_many_streams,
    ApiError,
};
use crate::broker::{self, HangUp};
use crate::keep_alive;
use crate::last_event_id::DecimalId;
use crate::server::App;
use crate::stats::{CloseReason, StreamSlot};
use crate::stream::{Source, Stream};
use crate::stream_log::{peer_text, ClosedStream, OpenedStream};

/// Starts a thread named `name` with `stack_size` that waits for one value and
/// runs `job` with it. The value is handed over through the returned sender
/// only once the thread exists, so that a caller whose thread could not be
/// started still has its request to answer `503` with. The hand-off channel
/// is freed before `job` runs.
fn spawn_waiting<T: Send + 'static>(
    name: &str,
    stack_size: usize,
    job: impl FnOnce(T) + Send + 'static,
) -> std::io::Result<crossbeam_channel::Sender<T>> {
    let (handoff, waiting) = crossbeam_channel::bounded::<T>(1);
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack_size)
        .spawn(move || {
            let value = waiting.recv();
            drop(waiting);
            if let Ok(value) = value {
                job(value);
            }
        })?;
    Ok(handoff)
}

/// The `Last-Event-ID` of a request: the header, else `?lastEventId=`.
/// Anything but a decimal id is ignored, as if none was sent.
fn last_event_id(request: &Request, query: &str) -> Option<DecimalId> {
    let from_header = request_header(request, "Last-Event-ID").map(|v| v.trim().to_string());
    let from_query = || {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "lastEventId")
            .map(|(_, v)| v.trim().to_string())
    };
    // The header first; one that is empty or not an id leaves the query's.
    [from_header, from_query()].into_iter().flatten().find_map(|raw| {
        let id = DecimalId::parse(&raw);
        if id.is_none() {
            log::debug!(
                "ignoring Last-Event-ID '{}': not a decimal id",
                raw.escape_default()
            );
        }
        id
    })
}

/// What a stream's thread is handed once it exists.
struct StreamStart {
    /// Boxed: every frame the hand-off passes through, under the stream's
    /// long wait, holds a copy of this struct.
    connection: Box<TakenConnection>,
    params: StreamRequest,
    slot: StreamSlot,
}

/// Where a stream starts, from its `Last-Event-ID`: worked out before its
/// thread starts, which then keeps no id text (the parse and the free of
/// one went a stack page deeper than a stream's wait, a page then resident
/// for the stream's whole life, in the static musl build).
enum Resume {
    /// The demo stream's first id.
    Demo(DecimalId),
    /// A channel stream's last id seen, when it fits one of ours (a larger
    /// one is no id of ours: ignored).
    After(Option<broker::EventId>),
}

/// What a stream's thread needs to know of its request.
struct StreamRequest {
    channels: Vec<String>,
    resume: Resume,
    http10: bool,
    peer: Option<SocketAddr>,
}

pub(super) fn open_stream(app: &Arc<App>, request: Request, query: &str, demo: bool) {
    let last_id = last_event_id(&request, query);
    let resume = if demo {
        Resume::Demo(last_id.map_or_else(DecimalId::one, DecimalId::next))
    } else {
        Resume::After(last_id.and_then(|id| id.to_event_id()))
    };
    let channels = if demo {
        Vec::new()
    } else {
        match subscription_channels(query) {
            Ok(channels) => channels,
            Err(e) => return respond_error(app, request, e),
        }
    };
    let Some(slot) = app.stats.try_open_stream(app.config.max_connections) else {
        let error = too_many_streams(app);
        let peer = request.remote_addr().copied();
        log::info!("stream refused peer={}: {}", peer_text(peer), error.message);
        return respond_error(app, request, error);
    };
    let peer = request.remote_addr().copied();
    if let Some(peer) = peer {
        // The head guard leaves the connection alone until the stream ends.
        app.heads.stream_opened(peer);
    }
    let params = StreamRequest {
        channels,
        resume,
        http10: keep_alive::is_http10(&request),
        peer,
    };
    // The thread gets the connection, taken out of tiny_http, not the
    // request: dropping a `Request` runs tiny_http's `Drop`, whose frame
    // alone is over 8 KiB of stack (its unused 500-response path), and
    // every stack page a stream thread ever touches stays resident for the
    // stream's whole life. The request's parts go through the hand-off
    // too, not into the thread's closure: std keeps that closure's box
    // until the thread ends (152 bytes with them, 24 without).
    let thread_app = Arc::clone(app);
    let started = spawn_waiting("sse-stream", crate::SMALL_STACK, move |start: StreamStart| {
        serve_stream(&thread_app, start)
    });
    // Taken, the connection has a descriptor of the stream's own and no
    // reader: tiny_http's reader stops at once (what the client sent
    // behind the stream is not read as requests), and its buffers and the
    // connection's second descriptor go with it.
    let refused = match started {
        Ok(handoff) => match request.take_connection() {
            Ok(connection) => {
                let _ = handoff.send(StreamStart {
                    connection: Box::new(connection),
                    params,
                    slot,
                });
                return;
            }
            Err((request, e)) => {
                log::warn!("cannot take a stream's connection over: {e}");
                request
            }
        },
        Err(e) => {
            log::warn!("cannot start a stream thread: {e}");
            request
        }
    };
    if let Some(peer) = peer {
        app.heads.stream_closed(peer);
    }
    let busy = ApiError::new(503, "the server is busy; retry later").with_header("Retry-After", "1");
    respond_error(app, refused, busy);
}

/// The socket of a stream's connection, once the answers before it on the
/// connection are written. Out of line: what it calls stays out of the
/// frames a stream waits under.
#[inline(never)]
#[allow(clippy::boxed_local)] // boxed for the hand-off, see `StreamStart`
fn stream_socket(connection: Box<TakenConnection>) -> TcpStream {
    connection.into_socket()
}

/// A stream's thread: subscribes (after back-filling from Redis, which may
/// take a while: hence here and not on the connection's thread), then writes the
/// head and runs the stream. The subscription exists before the head is
/// sent, so an event published once the client sees the head reaches it.
fn serve_stream(app: &Arc<App>, start: StreamStart) {
    let StreamStart {
        connection,
        params,
        slot,
    } = start;
    let mut writer = stream_socket(connection);
    let peer = params.peer;
    let http10 = params.http10;
    let Some(mut source) = stream_source(app, &mut writer, params) else {
        crate::stream::close_connection(&writer);
        return;
    };
    let opened = Instant::now();
    log_opened(app, peer, &source);
    if let Source::Channels(subscription) = &source {
        // Cut by the fan-out if the subscriber is dropped for being slow.
        subscription.attach_connection(writer.as_raw_fd());
    }
    let mut stream = Stream::new(writer, Arc::clone(&app.stats));
    let reason = catch_unwind(AssertUnwindSafe(|| {
        stream.run(http10, peer, &mut source, &app.stream_settings, &app.shutdown_rx)
    }))
    .unwrap_or_else(|_| {
        log::error!("stream of {} panicked; closing it", peer_text(peer));
        CloseReason::Error
    });
    if let Source::Channels(subscription) = &source {
        subscription.detach_connection();
    }
    // A write that failed because the stop cut the connection.
    let reason = match reason {
        CloseReason::ClientLeft if app.streams_were_cut() => CloseReason::Shutdown,
        other => other,
    };
    end_stream(app, slot, peer, source, opened, stream.events_written, reason);
}

/// What a stream sends; `None` when the subscription is refused (answered
/// here). Out of line, as
/// [`end_stream`]: only what a stream keeps while it waits should be in
/// the frames under its wait, every stack page it touches staying resident.
#[inline(never)]
fn stream_source(app: &Arc<App>, writer: &mut TcpStream, params: StreamRequest) -> Option<Source> {
    let StreamRequest {
        channels: names,
        resume,
        http10,
        peer,
    } = params;
    let last_id = match resume {
        Resume::After(last_id) => last_id,
        Resume::Demo(first_id) => {
            let hung_up = match peer {
                Some(peer) => {
                    let (signal, hung_up) = crossbeam_channel::bounded(1);
                    app.heads.stream_subscribed(peer, HangUp::signal(signal));
                    hung_up
                }
                None => crossbeam_channel::never(),
            };
            let source = Source::Demo {
                first_id,
                every: app.config.tick_interval,
                hung_up,
            };
            return Some(source);
        }
    };
    if let (Some(bus), Some(after)) = (&app.redis, last_id) {
        bus.backfill(&names, after);
    }
    // An id past every id given out here (a client of a server whose
    // clock was ahead, or a made-up one) would hold back every event
    // until the ids caught up with it: such a client has missed
    // nothing, and gets the events published from now on. (With Redis,
    // this node may be behind the shared log: the id is taken as it is.)
    // The newest id is read once: an event published meanwhile has a
    // larger id and is delivered.
    let newest = app.broker.last_id();
    let last_id = match (&app.redis, last_id) {
        (None, Some(id)) if id > newest => {
            log::debug!("Last-Event-ID {id} is ahead of the newest event; taken as {newest}");
            Some(newest)
        }
        (_, id) => id,
    };
    match app.broker.subscribe(&names, last_id) {
        Ok(subscription) => {
            if let Some(peer) = peer {
                app.heads.stream_subscribed(peer, subscription.hang_up_handle());
            }
            Some(Source::Channels(subscription))
        }
        Err(e) => {
            log::info!("stream refused peer={}: {e}", peer_text(peer));
            let head = raw_error_response(&e.into(), http10, app.config.cors_origin.as_deref());
            let _ = writer.write_all(&head).and_then(|()| writer.flush());
            if let Some(peer) = peer {
                app.heads.stream_closed(peer);
            }
            None
        }
    }
}

/// The path a stream was asked for, as its log lines show it.
fn stream_path(source: &Source) -> &'static str {
    match source {
        Source::Demo { .. } => "/",
        Source::Channels(_) => "/events",
    }
}

/// Hands a stream's opening line to the stream log. Out of line, so that
/// the line's parts are not in the frames under the stream's wait.
#[inline(never)]
fn log_opened(app: &App, peer: Option<SocketAddr>, source: &Source) {
    app.stream_log.opened(OpenedStream {
        peer,
        path: stream_path(source),
        channels: source.channels_label(),
    });
}

/// A stream's last steps: its subscription dropped, its slot freed, its
/// end counted, its connection handed back to the head guard, its line
/// logged. The channels' label for that line is made here, from the
/// source, rather than kept from the opening for the stream's whole life.
#[inline(never)]
#[cold]
fn end_stream(
    app: &App,
    slot: StreamSlot,
    peer: Option<SocketAddr>,
    source: Source,
    opened: Instant,
    events: u64,
    reason: CloseReason,
) {
    let channels = source.channels_label();
    let path = stream_path(&source);
    drop(source);
    // Free the slot first, so that /metrics never shows a stream both open
    // and counted as disconnected.
    drop(slot);
    app.stats.count_disconnect(reason);
    if let Some(peer) = peer {
        app.heads.stream_closed(peer);
    }
    app.stream_log.closed(ClosedStream {
        peer,
        path,
        channels,
        duration: opened.elapsed(),
        events,
        reason,
    });
}

/// A whole error response written by hand, for a stream's thread, which has
/// the raw connection and no `Request` to answer through.
fn raw_error_response(error: &ApiError, http10: bool, cors_origin: Option<&str>) -> Vec<u8> {
    let body = error_body(error);
    let reason = match error.status {
        400 => "Bad Request",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut head = format!(
        "{version} {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        error.status,
        body.len()
    );
    for (name, value) in &error.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    for cors in cors_headers(cors_origin) {
        head.push_str(&format!("{cors}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
}

//! One stream's life: write the head, then wait for the demo ticker (in
//! `select!`, with the ping ticker and shutdown) or for a wake-up of its
//! subscription (published events, shutdown) until the next ping is due, and
//! write each as it comes, flushed at once. A failed write means the client
//! left.
//!
//! Why not tiny_http's `Response`: with a streaming body it chunk-encodes into
//! an 8 KiB buffer that is not flushed per event (events arrive seconds late),
//! and for HTTP/1.0 it reads the whole body before sending anything, which
//! never happens for an endless stream. So a stream takes its connection
//! out of tiny_http (`Request::take_connection`, a patch of ours) and
//! writes its own response head to the socket: no `Content-Length`,
//! `Connection: close`. To an HTTP/1.1 client the body is chunked, one
//! chunk per write (a ping, an event, a batch of events), and ends with
//! the last chunk; to an HTTP/1.0 client it is sent as it is and ends when
//! the connection closes. (A body that only the close ends is valid
//! HTTP/1.1 too, but some clients then wait for a buffer's worth of bytes
//! before they hand anything on: Python's `requests`, iterated as
//! `sseclient-py` does, held an event back until 128 bytes had come, up to
//! 45 s of pings later. Each chunk is handed on as it comes.)

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select, tick, Receiver};

use crate::ack_watch::AckWatch;
use crate::broker::{Event, Lagged, Subscription};
use crate::event;
use crate::last_event_id::DecimalId;
use crate::stats::{CloseReason, Stats};

/// What a stream sends besides pings.
#[derive(Debug)]
pub enum Source {
    /// The demo of `GET /`: `new_message` events counting up from `first_id`,
    /// one at once and then one every `every` (`None`: the ticker is off,
    /// no events, only pings).
    Demo {
        /// Id of the first event.
        first_id: DecimalId,
        /// Interval of the ticker.
        every: Option<Duration>,
        /// Ready once its client closed the connection (a `HangUp` of
        /// the head guard's); `never()` when nothing will send it.
        hung_up: Receiver<()>,
    },
    /// Published events of the subscribed channels.
    Channels(Subscription),
}

impl Source {
    /// Its channels as log lines show them: `a,b` (empty for the demo).
    pub fn channels_label(&self) -> String {
        match self {
            Source::Demo { .. } => String::new(),
            Source::Channels(subscription) => subscription.names().collect::<Vec<_>>().join(","),
        }
    }
}

/// Settings shared by every stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Interval of ping comments.
    pub ping_interval: Duration,
    /// `retry:` to send first, in milliseconds.
    pub retry: Option<u64>,
    /// `Access-Control-Allow-Origin` value.
    pub cors_origin: Option<String>,
    /// How long a write may wait, and its bytes go unacknowledged.
    pub write_timeout: Duration,
}

/// The response head of every stream.
pub fn response_head(http10: bool, cors_origin: Option<&str>) -> Vec<u8> {
    let mut head = String::with_capacity(256);
    head.push_str(if http10 {
        "HTTP/1.0 200 OK\r\n"
    } else {
        "HTTP/1.1 200 OK\r\n"
    });
    head.push_str("Content-Type: text/event-stream; charset=utf-8\r\n");
    head.push_str("Cache-Control: no-cache\r\n");
    head.push_str("X-Accel-Buffering: no\r\n");
    if !http10 {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str("Connection: close\r\n");
    if let Some(origin) = cors_origin {
        head.push_str("Access-Control-Allow-Origin: ");
        head.push_str(origin);
        head.push_str("\r\n");
        if origin != "*" {
            head.push_str("Vary: Origin\r\n");
            // An `EventSource` made `withCredentials` (cookies sent) is
            // refused without it; browsers never allow it with `*`.
            head.push_str("Access-Control-Allow-Credentials: true\r\n");
        }
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Bytes of a ping comment.
const PING_LEN: usize = 37;

/// A ping comment, `: ping - YYYY-MM-DD HH:MM:SS.ffffff` in UTC and a blank
/// line, written digit by digit into an array: on a stream's thread, where
/// every stack page it ever touches stays resident, `format!` and the
/// allocator (its lock contended, in the static musl build) went 24 bytes
/// past the page a stream waits in.
pub fn ping_comment(now: time::OffsetDateTime) -> [u8; PING_LEN] {
    let mut out = *b": ping - 0000-00-00 00:00:00.000000\n\n";
    let fields: [(usize, usize, u32); 7] = [
        (9, 4, now.year().clamp(0, 9999) as u32),
        (14, 2, u32::from(u8::from(now.month()))),
        (17, 2, u32::from(now.day())),
        (20, 2, u32::from(now.hour())),
        (23, 2, u32::from(now.minute())),
        (26, 2, u32::from(now.second())),
        (29, 6, now.microsecond()),
    ];
    for (at, width, mut value) in fields {
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    out
}

/// Events written with one `writev` at most.
const EVENTS_PER_WRITE: usize = 8;

/// The last chunk of a chunked body, with no trailers.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes `size` as a chunk's size line (`1a\r\n`) at the start of `out`;
/// returns its length.
fn chunk_size_line(size: usize, out: &mut [u8; 18]) -> usize {
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// `payload` as one chunk of a chunked body.
pub fn chunk(payload: &[u8]) -> Vec<u8> {
    let mut size_line = [0u8; 18];
    let n = chunk_size_line(payload.len(), &mut size_line);
    let mut out = Vec::with_capacity(n + payload.len() + 2);
    out.extend_from_slice(&size_line[..n]);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads of [`DRAIN_CHUNK`] bytes at most when a connection is closed.
const DRAIN_READS: usize = 128;

/// Bytes read at a time when a connection is closed.
const DRAIN_CHUNK: usize = 512;

/// Ends a stream's connection (or a refused stream's) so that the client
/// gets everything written: the end of the body is sent after the last
/// event (`shutdown` of the writing side), then what the client sent
/// behind its request and nobody read is read and dropped (up to
/// `DRAIN_READS * DRAIN_CHUNK` bytes; the reading side is shut, so the reads
/// return what is queued, then the end). A socket closed with unread bytes
/// is reset, not closed, and the kernel then drops what it had not sent
/// yet. The descriptor itself is closed when `socket` is dropped.
pub fn close_connection(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Write);
    let _ = socket.set_nonblocking(true);
    let mut sink = [0u8; DRAIN_CHUNK];
    for _ in 0..DRAIN_READS {
        match (&*socket).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The acknowledgement check of a stream's connection. Out of line: the
/// local address's look-up stays out of the frames a stream waits under.
#[inline(never)]
fn ack_watch(socket: &TcpStream, peer: Option<SocketAddr>, write_timeout: Duration) -> AckWatch {
    AckWatch::new(socket.local_addr().ok(), peer, write_timeout)
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.chunked {
            // The body's end, if the socket takes it now: a client whose
            // reading stopped gets the close alone.
            let _ = self.socket.set_nonblocking(true);
            let _ = self.socket.write(LAST_CHUNK);
        }
        close_connection(&self.socket);
    }
}

/// Writes `parts` (at most [`EVENTS_PER_WRITE`]) with one `writev`, as
/// one chunk when `chunked`, and what a short write left with plain
/// writes; returns the bytes written. Out of line: its slices stay out of
/// the frames a stream waits under.
#[inline(never)]
fn write_body<'a>(
    socket: &mut TcpStream,
    chunked: bool,
    parts: impl ExactSizeIterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); EVENTS_PER_WRITE + 2];
    let mut size_line = [0u8; 18];
    let first = usize::from(chunked);
    let mut count = first;
    let mut size = 0;
    for (slice, part) in slices[first..=EVENTS_PER_WRITE].iter_mut().zip(parts) {
        *slice = IoSlice::new(part);
        size += part.len();
        count += 1;
    }
    if size == 0 {
        return Ok(0);
    }
    if chunked {
        let n = chunk_size_line(size, &mut size_line);
        slices[0] = IoSlice::new(&size_line[..n]);
        slices[count] = IoSlice::new(b"\r\n");
        count += 1;
    }
    let slices = &slices[..count];
    let mut written = loop {
        match socket.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let total: usize = slices.iter().map(|s| s.len()).sum();
    for slice in slices {
        if written >= slice.len() {
            written -= slice.len();
        } else {
            socket.write_all(&slice[written..])?;
            written = 0;
        }
    }
    Ok(total)
}

/// A stream's connection and what it has sent.
pub struct Stream {
    socket: TcpStream,
    stats: Arc<Stats>,
    /// The body is chunked (an HTTP/1.1 client), once the head is sent.
    chunked: bool,
    /// Bytes written so far, head included.
    bytes_written: u64,
    /// Events written so far.
    pub events_written: u64,
}

impl Stream {
    /// Wraps the socket of a stream's connection, which nothing else
    /// writes to.
    pub fn new(socket: TcpStream, stats: Arc<Stats>) -> Stream {
        Stream {
            socket,
            stats,
            chunked: false,
            bytes_written: 0,
            events_written: 0,
        }
    }

    /// Writes part of the body: a chunk of its own when it is chunked.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let written = write_body(&mut self.socket, self.chunked, std::iter::once(bytes))?;
        self.bytes_written += written as u64;
        Ok(())
    }

    fn send_events(&mut self, events: &[Arc<Event>]) -> io::Result<()> {
        // Several pending events go out in one `writev` (one chunk), up to
        // `EVENTS_PER_WRITE` at a time.
        for batch in events.chunks(EVENTS_PER_WRITE) {
            let parts = batch.iter().map(|e| &e.bytes[..]);
            let written = write_body(&mut self.socket, self.chunked, parts)?;
            self.bytes_written += written as u64;
        }
        self.events_written += events.len() as u64;
        self.stats.count_delivered(events.len() as u64);
        Ok(())
    }

    /// Writes the head and runs the stream until it ends; returns why.
    /// `peer` is the client's address, for the check that it acknowledges
    /// what it is sent ([`AckWatch`]).
    #[inline(never)]
    pub fn run(
        &mut self,
        http10: bool,
        peer: Option<SocketAddr>,
        source: &mut Source,
        settings: &StreamSettings,
        shutdown_rx: &Receiver<()>,
    ) -> CloseReason {
        // Made here, not kept in `Stream`: the frame that holds a `Stream`
        // also holds the subscribing that comes before, the deepest any
        // stream goes, and every stack page it reaches stays resident.
        let mut ack = ack_watch(&self.socket, peer, settings.write_timeout);
        match self.serve(http10, &mut ack, source, settings, shutdown_rx) {
            Ok(reason) => reason,
            // A client that stops reading makes a write block until the
            // write timeout, and falls behind meanwhile: it was dropped for
            // being slow, not because it left.
            Err(e) if matches!(source, Source::Channels(s) if s.is_lagged()) => {
                log::debug!("stream ended after falling behind: {e}");
                CloseReason::Slow
            }
            Err(e) => {
                log::debug!("stream ended, its client gone: {e}");
                CloseReason::ClientLeft
            }
        }
    }

    fn serve(
        &mut self,
        http10: bool,
        ack: &mut AckWatch,
        source: &mut Source,
        settings: &StreamSettings,
        shutdown_rx: &Receiver<()>,
    ) -> io::Result<CloseReason> {
        // Scoped: the head's buffer is freed before the stream's long wait.
        {
            let mut head = response_head(http10, settings.cors_origin.as_deref());
            if let Some(ms) = settings.retry {
                let retry = event::encode_retry(ms);
                head.extend_from_slice(&if http10 { retry } else { chunk(&retry) });
            }
            self.socket.write_all(&head)?;
            self.bytes_written += head.len() as u64;
            self.chunked = !http10;
        }

        let mut pending: Vec<Arc<Event>> = Vec::new();
        match source {
            Source::Demo {
                first_id,
                every,
                hung_up,
            } => {
                let ping = tick(settings.ping_interval);
                let ticker = every.map_or_else(never, tick);
                let next_id = first_id;
                if every.is_some() {
                    self.send_demo_event(next_id)?;
                }
                loop {
                    // A pending check of the client's acknowledgements has
                    // a timer of its own (demo streams are few).
                    let check = ack.due().map_or_else(never, at);
                    select! {
                        recv(check) -> _ => ack.check(Instant::now())?,
                        recv(ticker) -> _ => {
                            next_id.increment();
                            self.send_demo_event(next_id)?;
                        }
                        recv(ping) -> _ => self.send_ping(ack)?,
                        recv(shutdown_rx) -> _ => return Ok(CloseReason::Shutdown),
                        recv(hung_up) -> signal => match signal {
                            Ok(()) => return Ok(CloseReason::ClientLeft),
                            // Its sender went without a word: wait no more.
                            Err(_) => *hung_up = never(),
                        },
                    }
                }
            }
            // Shutdown comes as a wake-up with the subscription closed (see
            // `Broker::close`), not through `shutdown_rx`, which every stream
            // would otherwise register with on each wait.
            Source::Channels(subscription) => {
                // Pings are due on a schedule of their own, events or not;
                // the broker's ping clock wakes the thread for them (a wait
                // with a timeout would arm a kernel timer per event).
                let mut next_ping = Instant::now() + settings.ping_interval;
                // When the thread must wake without an event: the next ping
                // or, before it, a check of the client's acknowledgements.
                let mut wake_at = next_ping;
                subscription.ping_at(wake_at);
                subscription.names().for_each(crate::fault::panic_if_requested);
                loop {
                    // Its client closed the connection (the head guard saw it).
                    if subscription.is_hung_up() {
                        return Ok(CloseReason::ClientLeft);
                    }
                    // Closed before the drain: the drain then has every event
                    // accepted before the stop.
                    let closing = subscription.is_closed();
                    // Replay (or nothing) first, then whatever wakes us.
                    if let Err(Lagged) = subscription.drain(&mut pending) {
                        return Ok(CloseReason::Slow);
                    }
                    self.send_events(&pending)?;
                    pending.clear();
                    if closing {
                        return Ok(CloseReason::Shutdown);
                    }
                    let now = Instant::now();
                    if now >= next_ping {
                        self.send_ping(ack)?;
                        next_ping = now + settings.ping_interval;
                    }
                    ack.check(now)?;
                    let wake = ack.due().map_or(next_ping, |due| due.min(next_ping));
                    if wake != wake_at {
                        wake_at = wake;
                        subscription.ping_at(wake_at);
                    }
                    subscription.wait_for_wake();
                }
            }
        }
    }

    fn send_demo_event(&mut self, id: &DecimalId) -> io::Result<()> {
        let bytes = event::encode_demo_event(id.as_str()).expect("a decimal id is a valid id");
        self.send(&bytes)?;
        self.events_written += 1;
        self.stats.count_delivered(1);
        Ok(())
    }

    fn send_ping(&mut self, ack: &mut AckWatch) -> io::Result<()> {
        // Before the write: a client that closed is still known to the
        // kernel until this ping draws its reset.
        ack.confirm();
        self.send(&ping_comment(time::OffsetDateTime::now_utc()))?;
        ack.pinged(Instant::now(), self.bytes_written);
        Ok(())
    }
}

/// How long ago `since` was, for logs: `12.345s`.
pub fn elapsed_text(since: Instant) -> String {
    duration_text(since.elapsed())
}

/// A duration as log lines show it: seconds with milliseconds, `1.500s`.
pub fn duration_text(duration: Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_the_stream_headers() {
        let head = String::from_utf8(response_head(false, None)).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
             Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n"
        );
        let head = String::from_utf8(response_head(true, Some("https://a.example"))).unwrap();
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(!head.contains("Transfer-Encoding"), "HTTP/1.0 has no chunking");
        assert!(head.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
    }

    /// A connection whose every write fails (its writing side shut down),
    /// as one to a client that stopped reading fails once its write times
    /// out.
    fn stalled() -> TcpStream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        socket.shutdown(std::net::Shutdown::Write).unwrap();
        socket
    }

    #[test]
    fn a_failed_write_is_slow_when_the_subscriber_fell_behind() {
        use crate::broker::{Broker, BrokerConfig};

        let broker = Broker::new(BrokerConfig {
            history: 10,
            queue_size: 2,
            max_channels: 10,
        });
        let settings = StreamSettings {
            ping_interval: Duration::from_secs(60),
            retry: None,
            cors_origin: None,
            write_timeout: Duration::from_secs(1),
        };
        let (_shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let run = |subscription| {
            let mut stream = Stream::new(stalled(), Arc::new(Stats::default()));
            stream.run(
                false,
                None,
                &mut Source::Channels(subscription),
                &settings,
                &shutdown_rx,
            )
        };

        let keeping_up = broker.subscribe(&["c".to_string()], None).unwrap();
        assert_eq!(run(keeping_up), CloseReason::ClientLeft);

        let behind = broker.subscribe(&["c".to_string()], None).unwrap();
        for n in 0..3 {
            broker.publish("c", None, &n.to_string()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !behind.is_lagged() {
            assert!(Instant::now() < deadline, "fan-out never marked it");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(run(behind), CloseReason::Slow);
    }

    #[test]
    fn chunks_are_framed_with_their_size_in_hex() {
        assert_eq!(chunk(b"data: x\n\n"), b"9\r\ndata: x\n\n\r\n");
        assert_eq!(chunk(&[b'a'; 0x1a2]).len(), 5 + 0x1a2 + 2);
        assert!(chunk(&[b'a'; 0x1a2]).starts_with(b"1a2\r\n"));
        let mut line = [0u8; 18];
        let n = chunk_size_line(usize::MAX, &mut line);
        assert_eq!(&line[..n], b"ffffffffffffffff\r\n");
        let n = chunk_size_line(16, &mut line);
        assert_eq!(&line[..n], b"10\r\n");
    }

    #[test]
    fn ping_comment_format() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_796_012_468_123_456_789).unwrap();
        assert_eq!(&ping_comment(t), b": ping - 2026-11-30 04:21:08.123456\n\n");
        assert_eq!(
            ping_comment(t).to_vec(),
            event::encode_comment("ping - 2026-11-30 04:21:08.123456"),
            "as any comment is encoded"
        );
        let t = time::OffsetDateTime::from_unix_timestamp(0).unwrap();
        assert_eq!(&ping_comment(t), b": ping - 1970-01-01 00:00:00.000000\n\n");
    }
}

//! Streams' "opened" and "closed" log lines, written by a thread of their
//! own.
//!
//! Formatting a log line is the deepest a stream thread's stack would ever
//! go, kilobytes below the frames it waits in, and every page a stream
//! thread touches stays resident while it lives: with musl the opening line
//! made a parked stream thread's stack two pages instead of one. At a
//! stream's end the closing line did the same, and glibc hands a finished
//! thread's stack, touched pages and all, to the next thread that asks for
//! that size: 4 KiB more per stream wherever streams come and go
//! (tests/it/footprint.rs). So a stream thread hands the lines' parts over,
//! a shallow send, and this thread formats and writes them. The queue is a
//! bounded channel of boxed lines: its slots are allocated up front (16
//! bytes each; with the ~110-byte lines in them, 4,096 slots took 460 KiB),
//! and a send never allocates a block of slots on the stream's stack (an
//! unbounded channel does, 3.5 KiB deep: two stack pages per stream with
//! musl again). If the log cannot keep up (stderr blocked), a stream writes
//! its line itself, as before, rather than the queue growing without end.

use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::stats::CloseReason;

/// What the line about a closed stream says.
#[derive(Debug, Clone)]
pub struct ClosedStream {
    /// The client, when known.
    pub peer: Option<SocketAddr>,
    /// `/` (the demo) or `/events`.
    pub path: &'static str,
    /// The stream's channels, comma-separated.
    pub channels: String,
    /// How long it was open.
    pub duration: Duration,
    /// Events written to it.
    pub events: u64,
    /// Why it ended.
    pub reason: CloseReason,
}

impl ClosedStream {
    /// The log line, without the level and time.
    pub fn line(&self) -> String {
        format!(
            "stream closed peer={} path={} channels={} duration={} events={} reason={}",
            peer_text(self.peer),
            self.path,
            self.channels,
            crate::stream::duration_text(self.duration),
            self.events,
            self.reason.as_str()
        )
    }
}

/// A peer as log lines show it: `-` when unknown.
pub fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// What the line about an opened stream says.
#[derive(Debug, Clone)]
pub struct OpenedStream {
    /// The client, when known.
    pub peer: Option<SocketAddr>,
    /// `/` (the demo) or `/events`.
    pub path: &'static str,
    /// The stream's channels, comma-separated.
    pub channels: String,
}

impl OpenedStream {
    /// The log line, without the level and time.
    pub fn line(&self) -> String {
        format!(
            "stream opened peer={} path={} channels={}",
            peer_text(self.peer),
            self.path,
            self.channels
        )
    }
}

/// Lines waiting at most; past that a stream writes its own.
const QUEUE: usize = 1024;

enum Message {
    Opened(OpenedStream),
    Closed(ClosedStream),
    /// Answered once every line sent before it is written.
    Flush(Sender<()>),
}

/// The sending end; the thread ends when it is dropped.
#[derive(Debug)]
pub struct StreamLog {
    tx: Sender<Box<Message>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Opened(opened) => f.debug_tuple("Opened").field(opened).finish(),
            Message::Closed(closed) => f.debug_tuple("Closed").field(closed).finish(),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl StreamLog {
    /// Starts the thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start() -> std::io::Result<StreamLog> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        std::thread::Builder::new()
            .name("stream-log".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || write_lines(&rx))?;
        Ok(StreamLog { tx })
    }

    /// Logs (on the log's thread) that a stream opened.
    pub fn opened(&self, opened: OpenedStream) {
        self.send(Message::Opened(opened));
    }

    /// Logs (on the log's thread) that a stream closed.
    pub fn closed(&self, closed: ClosedStream) {
        self.send(Message::Closed(closed));
    }

    fn send(&self, message: Message) {
        if let Err(e) = self.tx.try_send(Box::new(message)) {
            // Full (the log is stuck) or gone: better a deep stack than a
            // lost line or a queue without end.
            write_line(*e.into_inner());
        }
    }

    /// Waits up to `timeout` until every line sent so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        // One deadline for both steps: a stop must end within its 2 s.
        let deadline = std::time::Instant::now() + timeout;
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        self.tx
            .send_deadline(Box::new(Message::Flush(done_tx)), deadline)
            .is_ok()
            && done_rx.recv_deadline(deadline).is_ok()
    }
}

fn write_lines(rx: &Receiver<Box<Message>>) {
    for message in rx {
        write_line(*message);
    }
}

fn write_line(message: Message) {
    match message {
        Message::Opened(opened) => log::info!("{}", opened.line()),
        Message::Closed(closed) => log::info!("{}", closed.line()),
        Message::Flush(done) => {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_peer_channels_duration_events_and_reason() {
        let closed = ClosedStream {
            peer: Some("127.0.0.1:4000".parse().unwrap()),
            path: "/events",
            channels: "a,b".into(),
            duration: Duration::from_millis(1500),
            events: 7,
            reason: CloseReason::ClientLeft,
        };
        assert_eq!(
            closed.line(),
            "stream closed peer=127.0.0.1:4000 path=/events channels=a,b duration=1.500s events=7 reason=client_left"
        );
        let unknown = ClosedStream { peer: None, ..closed };
        assert!(unknown.line().starts_with("stream closed peer=- "));
        let opened = OpenedStream {
            peer: Some("[::1]:4000".parse().unwrap()),
            path: "/",
            channels: String::new(),
        };
        assert_eq!(opened.line(), "stream opened peer=[::1]:4000 path=/ channels=");
    }

    #[test]
    fn flush_waits_for_the_lines_sent_before() {
        let log = StreamLog::start().unwrap();
        log.closed(ClosedStream {
            peer: None,
            path: "/",
            channels: String::new(),
            duration: Duration::ZERO,
            events: 0,
            reason: CloseReason::Shutdown,
        });
        assert!(log.flush(Duration::from_secs(5)));
    }
}

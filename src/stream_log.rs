//! The "stream closed" log lines, written by a thread of their own.
//!
//! Formatting a log line is the deepest a stream thread's stack would ever
//! go, kilobytes below the frames it waits in. At a stream's end that did
//! not matter for the stream itself, but glibc hands a finished thread's
//! stack, touched pages and all, to the next thread that asks for that
//! size: wherever streams come and go, the page the closing line touched
//! stayed resident under the next stream for its whole life, 4 KiB more per
//! stream (tests/it/footprint.rs). So a stream thread only hands the line's
//! parts over, a shallow send, and this thread formats and writes it.

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
            "stream closed peer={} path={} channels={} duration={:.3}s events={} reason={}",
            peer_text(self.peer),
            self.path,
            self.channels,
            self.duration.as_secs_f64(),
            self.events,
            self.reason.as_str()
        )
    }
}

/// A peer as log lines show it: `-` when unknown.
pub fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |a| a.to_string())
}

enum Message {
    Closed(ClosedStream),
    /// Answered once every line sent before it is written.
    Flush(Sender<()>),
}

/// The sending end; the thread ends when it is dropped.
#[derive(Debug)]
pub struct StreamLog {
    tx: Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
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
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("stream-log".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || write_lines(&rx))?;
        Ok(StreamLog { tx })
    }

    /// Logs (on the log's thread) that a stream closed.
    pub fn closed(&self, closed: ClosedStream) {
        if let Err(unsent) = self.tx.send(Message::Closed(closed)) {
            // The thread is gone (it never ends before its sender): better
            // a deep stack than a lost line.
            if let Message::Closed(closed) = unsent.into_inner() {
                log::info!("{}", closed.line());
            }
        }
    }

    /// Waits up to `timeout` until every line sent so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        self.tx.send(Message::Flush(done_tx)).is_ok() && done_rx.recv_timeout(timeout).is_ok()
    }
}

fn write_lines(rx: &Receiver<Message>) {
    for message in rx {
        match message {
            Message::Closed(closed) => log::info!("{}", closed.line()),
            Message::Flush(done) => {
                let _ = done.send(());
            }
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

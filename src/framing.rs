//! Requests whose body framing is ambiguous, and the connections they came
//! on.
//!
//! tiny_http frames a body by the first `Content-Length` header, reads none
//! for a value that is not a number, and prefers `Transfer-Encoding` to a
//! `Content-Length`. A proxy in front may frame the same bytes otherwise,
//! and either way the bytes tiny_http did not take as the body are read as
//! the connection's next request: a request smuggled inside another one's
//! body. So such a request gets `400`, and its connection is done with
//! (RFC 9112, 6.3): every later request read from it gets `400` too, not
//! served, and its reading side is shut down (`Request::stop_reading`, as
//! for a stream's head), which closes the connection once the answers are
//! out.
//!
//! A connection's requests are handled one after another on its thread
//! (see `http`), so a request smuggled after an ambiguous one is always
//! seen after the connection was marked.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tiny_http::{Header, Request};

/// How long a connection stays marked: its reader stops at once
/// (`Request::stop_reading`), and even a reader that did not would leave at
/// its idle timeout (5 s once a request was read,
/// `listener::KEEP_ALIVE_IDLE`); by then the connection is closed.
pub const MARKED_FOR: Duration = Duration::from_secs(10);

/// At most this many connections marked at once; past it the oldest mark
/// goes (a flood of bad requests must not grow memory).
pub const MAX_MARKED: usize = 1024;

/// What is ambiguous about a request's framing, if anything. A transfer
/// coding other than `chunked` alone counts: tiny_http would take the body
/// as chunked and hand on what the other coding left (a gzip body
/// published as its compressed bytes).
pub fn ambiguity(headers: &[Header]) -> Option<String> {
    let unsupported = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"))
        .map(|h| h.value.as_str().trim())
        .find(|coding| !coding.eq_ignore_ascii_case("chunked"));
    if let Some(coding) = unsupported {
        return Some(format!(
            "Transfer-Encoding '{coding}' is not supported; send the body chunked or with a Content-Length"
        ));
    }
    let mut lengths = headers
        .iter()
        .filter(|h| h.field.equiv("Content-Length"))
        .map(|h| h.value.as_str().trim());
    let chunked = headers.iter().any(|h| h.field.equiv("Transfer-Encoding"));
    let first = lengths.next()?;
    if chunked {
        return Some("both Transfer-Encoding and Content-Length; send one".to_string());
    }
    if !first.bytes().all(|b| b.is_ascii_digit()) || first.parse::<u64>().is_err() {
        return Some(format!("Content-Length '{first}' is not a number of bytes"));
    }
    if let Some(other) = lengths.find(|v| *v != first) {
        return Some(format!(
            "Content-Length headers disagree ({first}, {other}); send one"
        ));
    }
    None
}

/// How long a connection whose answer ended it (a stream, the head of one)
/// stays marked: long enough for any request the client sent behind it
/// to have been read (its reader stops at once, once it has handed on what
/// it had already received).
pub const ENDED_FOR: Duration = Duration::from_secs(5);

/// At most this many connections marked as ended at once: 5 s of a burst
/// of 800 streams a second.
pub const MAX_ENDED: usize = 4096;

/// Connections marked for a while: those that sent a request with
/// ambiguous framing, those whose answer ended them. A connection is known
/// by tiny_http's number for it (`Request::connection_id`), not by its
/// client's address: a new connection may come from the port of one that
/// just closed, and must not be taken for it.
#[derive(Debug)]
pub struct MarkedConnections {
    /// Connection numbers and when they were marked, oldest first.
    marks: Mutex<VecDeque<(u64, Instant)>>,
    marked_for: Duration,
    max_marked: usize,
}

impl Default for MarkedConnections {
    /// For ambiguous framing: [`MARKED_FOR`], [`MAX_MARKED`].
    fn default() -> Self {
        MarkedConnections::new(MARKED_FOR, MAX_MARKED)
    }
}

impl MarkedConnections {
    /// Marks that last `marked_for`, at most `max_marked` at once (past it
    /// the oldest goes).
    pub fn new(marked_for: Duration, max_marked: usize) -> MarkedConnections {
        MarkedConnections {
            marks: Mutex::new(VecDeque::new()),
            marked_for,
            max_marked,
        }
    }

    /// Marks the connection that `request` came on.
    pub fn mark(&self, request: &Request) {
        self.mark_connection(request.connection_id());
    }

    /// True if the connection that `request` came on was marked (and the
    /// mark lasts).
    pub fn is_marked(&self, request: &Request) -> bool {
        self.is_connection_marked(request.connection_id())
    }

    /// Marks connection number `connection` (`Request::connection_id`).
    pub fn mark_connection(&self, connection: u64) {
        let mut marks = self.lock();
        let now = Instant::now();
        while marks
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= self.marked_for)
        {
            marks.pop_front();
        }
        if marks.len() >= self.max_marked {
            marks.pop_front();
        }
        marks.push_back((connection, now));
    }

    fn is_connection_marked(&self, connection: u64) -> bool {
        self.lock()
            .iter()
            .any(|(c, at)| *c == connection && at.elapsed() < self.marked_for)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Instant)>> {
        // A plain list, each change complete: valid whatever a panicking
        // holder did.
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(n, v)| Header::from_bytes(n.as_bytes(), v.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn one_clear_length_or_none_is_unambiguous() {
        assert_eq!(ambiguity(&headers(&[])), None);
        assert_eq!(ambiguity(&headers(&[("Content-Length", "12")])), None);
        assert_eq!(
            ambiguity(&headers(&[("Content-Length", "12"), ("content-length", "12")])),
            None
        );
        assert_eq!(ambiguity(&headers(&[("Transfer-Encoding", "chunked")])), None);
        assert_eq!(ambiguity(&headers(&[("Transfer-Encoding", " Chunked ")])), None);
    }

    #[test]
    fn disagreeing_lengths_a_bad_length_or_both_framings_are_ambiguous() {
        let said = |pairs: &[(&str, &str)]| ambiguity(&headers(pairs)).unwrap();
        assert!(said(&[("Content-Length", "0"), ("Content-Length", "73")]).contains("(0, 73)"));
        assert!(said(&[("Content-Length", "x")]).contains("'x'"));
        assert!(said(&[("Content-Length", "-1")]).contains("'-1'"));
        assert!(said(&[("Content-Length", "1,1")]).contains("not a number"));
        assert!(said(&[("Content-Length", "+5")]).contains("not a number"));
        assert!(said(&[("Content-Length", "")]).contains("not a number"));
        assert!(said(&[("Content-Length", "99999999999999999999999")]).contains("not a number"));
        assert!(said(&[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]).contains("both"));
        assert!(said(&[("Transfer-Encoding", "gzip, chunked")]).contains("'gzip, chunked' is not supported"));
        assert!(said(&[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip")]).contains("'gzip'"));
    }

    #[test]
    fn marks_are_per_connection_and_bounded() {
        let marked = MarkedConnections::default();
        assert!(!marked.is_connection_marked(7));
        marked.mark_connection(7);
        assert!(marked.is_connection_marked(7));
        assert!(!marked.is_connection_marked(8));
        for connection in 0..(MAX_MARKED as u64 + 10) {
            marked.mark_connection(1_000 + connection);
        }
        assert_eq!(marked.lock().len(), MAX_MARKED);
        assert!(!marked.is_connection_marked(7), "the oldest mark went");
    }

    #[test]
    fn marks_last_their_time_and_then_go() {
        let marked = MarkedConnections::new(Duration::from_millis(1), 10);
        marked.mark_connection(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while marked.is_connection_marked(1) {
            assert!(Instant::now() < deadline, "the mark never lapsed");
            std::thread::yield_now();
        }
        marked.mark_connection(2);
        assert_eq!(marked.lock().len(), 1, "the lapsed mark was let go");
    }
}

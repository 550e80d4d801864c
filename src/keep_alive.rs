//! What an answer says of its connection: kept alive, and for how long, or
//! closed.
//!
//! A connection that stays open after an answer waits
//! [`listener::KEEP_ALIVE_IDLE`](crate::listener::KEEP_ALIVE_IDLE) for its
//! next request, then closes. A client that sends its next request just as
//! the server closes gets no answer (a reset): pooled publishers (Python
//! `requests`, Node's `http.Agent`) lost one POST in a few hundred when they
//! published about every idle timeout. So every answer on a connection that
//! stays open carries `Keep-Alive: timeout=N`, with which clients such as
//! Node's agent retire the connection before the server does.
//!
//! An HTTP/1.0 client that wants to send its next request on the same
//! connection asks with `Connection: keep-alive`, and reuses the connection
//! only if the answer says `Connection: keep-alive` too; otherwise it waits
//! for the server to close, which ends the answer. tiny_http honours the
//! request (it keeps the connection open for the next one) but never says
//! so: it writes no `Connection` header and drops one a handler sets. Such a
//! client then waited for a close that came only at the idle timeout:
//! ApacheBench's `ab -k` got one answer per connection every 2 s. So these
//! answers are printed by tiny_http into a buffer, get the header, and are
//! written whole. HTTP/1.0 answers always carry a `Content-Length`
//! (tiny_http has no other framing for 1.0), so a kept connection's next
//! answer never runs into this one's body.

use std::io::{self, Read, Write};

use tiny_http::{HTTPVersion, Method, Request, Response};

use crate::listener::KEEP_ALIVE_IDLE;

/// Whether tiny_http keeps `request`'s connection open after the answer
/// (its own rule, `ClientConnection::next`): the first `Connection` header
/// names neither `close` nor `upgrade`, and for HTTP/1.0 names
/// `keep-alive`.
pub fn stays_open(request: &Request) -> bool {
    let connection = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Connection"))
        .map(|h| h.value.as_str().to_ascii_lowercase());
    let value = connection.as_deref().unwrap_or("");
    if value.contains("close") || value.contains("upgrade") {
        return false;
    }
    !is_http10(request) || value.contains("keep-alive")
}

/// True for an HTTP/1.0 request: kept alive only when it asks, and
/// without transfer codings.
pub fn is_http10(request: &Request) -> bool {
    *request.http_version() == HTTPVersion(1, 0)
}

/// Answers `request`, whose connection [`stays_open`], with `response` and
/// the headers that say so.
///
/// # Errors
/// The error of printing the response or of writing it to the client.
pub fn respond_kept<R: Read>(request: Request, response: Response<R>) -> io::Result<()> {
    let timeout = format!("timeout={}", KEEP_ALIVE_IDLE.as_secs());
    if !is_http10(&request) {
        return request.respond(response.with_header(crate::http::header("Keep-Alive", &timeout)));
    }
    let lines = format!("Connection: keep-alive\r\nKeep-Alive: {timeout}\r\n");
    respond_with_lines(request, response, lines.as_bytes())
}

/// Answers `request` with `response` and `Connection: close`, for a
/// connection the server is about to close (one marked by `framing`).
///
/// # Errors
/// The error of printing the response or of writing it to the client.
pub fn respond_closing<R: Read>(request: Request, response: Response<R>) -> io::Result<()> {
    respond_with_lines(request, response, b"Connection: close\r\n")
}

/// Answers `request` with `response` printed by tiny_http and header
/// `lines` added (headers tiny_http does not let a handler set).
fn respond_with_lines<R: Read>(request: Request, response: Response<R>, lines: &[u8]) -> io::Result<()> {
    let head_only = *request.method() == Method::Head;
    let mut answer = Vec::new();
    response.raw_print(
        &mut answer,
        request.http_version().clone(),
        request.headers(),
        head_only,
        None,
    )?;
    insert_after_status_line(&mut answer, lines);
    let mut writer = request.into_writer();
    writer.write_all(&answer)?;
    writer.flush()
}

/// Inserts header `lines` after the status line of a printed answer.
fn insert_after_status_line(answer: &mut Vec<u8>, lines: &[u8]) {
    let after_status_line = answer
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map_or(answer.len(), |at| at + 2);
    answer.splice(after_status_line..after_status_line, lines.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_go_right_after_the_status_line() {
        let mut answer = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        insert_after_status_line(&mut answer, b"Connection: keep-alive\r\n");
        assert_eq!(
            answer,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        );
    }
}

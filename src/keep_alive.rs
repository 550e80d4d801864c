//! HTTP/1.0 keep-alive, said in the answer.
//!
//! An HTTP/1.0 client that wants to send its next request on the same
//! connection asks with `Connection: keep-alive`, and reuses the connection
//! only if the answer says `Connection: keep-alive` too; otherwise it waits
//! for the server to close, which ends the answer. tiny_http honours the
//! request (it keeps the connection open for the next one) but never says
//! so: it writes no `Connection` header and drops one a handler sets. Such a
//! client then waits for a close that comes only at the read timeout
//! (`listener::IDLE_READ_TIMEOUT`): ApacheBench's `ab -k` got one answer per
//! connection every 2 s. So these answers are printed by tiny_http into a
//! buffer, get the header, and are written whole.
//!
//! HTTP/1.0 answers always carry a `Content-Length` (tiny_http has no other
//! framing for 1.0), so a kept connection's next answer never runs into this
//! one's body.

use std::io::{self, Read, Write};

use tiny_http::{HTTPVersion, Method, Request, Response};

/// The header line added to an HTTP/1.0 answer on a kept connection.
const KEEP_ALIVE_LINE: &[u8] = b"Connection: keep-alive\r\n";

/// Whether tiny_http keeps `request`'s connection open although its
/// answer would not say so: HTTP/1.0 with a first `Connection` header that
/// names `keep-alive` and neither `close` nor `upgrade` (tiny_http's own
/// rule, `ClientConnection::next`).
pub fn is_kept_http10(request: &Request) -> bool {
    if *request.http_version() != HTTPVersion(1, 0) {
        return false;
    }
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Connection"))
        .is_some_and(|h| {
            let value = h.value.as_str().to_ascii_lowercase();
            value.contains("keep-alive") && !value.contains("close") && !value.contains("upgrade")
        })
}

/// Answers `request` with `response`, adding `Connection: keep-alive`
/// after the status line. For requests [`is_kept_http10`] accepts.
///
/// # Errors
/// The error of printing the response or of writing it to the client.
pub fn respond_kept_http10<R: Read>(request: Request, response: Response<R>) -> io::Result<()> {
    let head_only = *request.method() == Method::Head;
    let mut answer = Vec::new();
    response.raw_print(
        &mut answer,
        request.http_version().clone(),
        request.headers(),
        head_only,
        None,
    )?;
    with_keep_alive(&mut answer);
    let mut writer = request.into_writer();
    writer.write_all(&answer)?;
    writer.flush()
}

/// Inserts [`KEEP_ALIVE_LINE`] after the status line of a printed answer.
fn with_keep_alive(answer: &mut Vec<u8>) {
    let after_status_line = answer
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map_or(answer.len(), |at| at + 2);
    answer.splice(
        after_status_line..after_status_line,
        KEEP_ALIVE_LINE.iter().copied(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_goes_right_after_the_status_line() {
        let mut answer = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        with_keep_alive(&mut answer);
        assert_eq!(
            answer,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        );
    }
}

use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::str::FromStr;

use crate::common::{HTTPVersion, Method};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // tinysse: how long to wait for a next request once one was read (None:
    // the socket's own read timeout throughout), the socket's own read
    // timeout, and whether a request was read yet
    keep_alive_idle: Option<Duration>,
    read_timeout: Option<Duration>,
    served: bool,

    // tinysse: the connection's TCP descriptor (owned by the write half),
    // given to each request for `stop_reading` and `take_connection`
    #[cfg(unix)]
    socket_fd: Option<std::os::fd::RawFd>,

    // tinysse: set by a request's `stop_reading` or `take_connection`: no
    // request is read from the connection after that one
    reading_stopped: Arc<AtomicBool>,

    // tinysse: the bounds on each request head, and when the connection
    // was accepted (its first head's clock starts then)
    head_limits: Option<HeadLimits>,
    accepted: Instant,

    // tinysse: headers added to the answers written here (the server's
    // `error_headers`)
    error_headers: Arc<[crate::Header]>,
}

/// tinysse: bounds on a request head (its request line, headers and the
/// blank line after them, as sent). Unbounded, a client could hold a
/// connection's thread for ever by sending a byte now and then, each read
/// within the read timeout, or fill the memory with a head without end.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Bytes a head may have; a longer one is answered `431` and its
    /// connection closed.
    pub max_bytes: usize,
    /// Time a head may take, from the connection's accept for its first
    /// request and from its first byte for a later one; past it the
    /// connection is answered `408` and closed.
    pub deadline: Duration,
}

/// tinysse: what is left of a head's [`HeadLimits`] while it is read.
struct HeadBudget {
    limits: HeadLimits,
    deadline: Instant,
    bytes_left: usize,
    /// The socket's read timeout was cut to what is left of the deadline,
    /// and must be set back once the head is read.
    timeout_lowered: bool,
}

/// tinysse: what is read and dropped, at most, of what a client sent
/// behind the last request read from its connection, before the connection
/// is closed (a socket closed with bytes unread is reset, and the kernel
/// then drops the answers it has not sent yet).
const DRAIN_BYTES: usize = 64 * 1024;

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    /// tinysse: a byte outside ASCII in the request line
    NotAscii(HTTPVersion),
    /// tinysse: a head over its `HeadLimits::max_bytes`
    HeadTooLarge(HTTPVersion, usize),
    /// tinysse: a head not complete within its `HeadLimits::deadline`
    HeadTooSlow(Duration),
    /// tinysse: a small body (read whole before the request is handed on)
    /// that paused past the read timeout, or ended before its length
    BodyUnread(HTTPVersion, ErrorKind),
    ReadIoError(IoError),
}

/// tinysse: an error answer whose body is JSON `{"error": message}`, as the
/// server's own error answers are. `message` is a constant: no escaping.
/// Every such answer ends its connection, and says so.
fn json_error(
    status: u16,
    message: &str,
    extra_headers: &[crate::Header],
) -> crate::Response<std::io::Cursor<Vec<u8>>> {
    let mut response = crate::Response::from_string(format!("{{\"error\": \"{message}\"}}"))
        .with_status_code(status)
        .with_header(
            crate::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("a valid constant header"),
        )
        .with_connection_close();
    for header in extra_headers {
        response.add_header(header.clone());
    }
    response
}

/// tinysse: line ends a client may send before a request line (RFC 9112,
/// 2.2: a server should ignore at least one empty line there; some clients
/// send a CRLF after a POST body) that are skipped. More are left to be
/// read as the request line, and refused.
const STRAY_LINE_END_BYTES: usize = 8;

/// tinysse: waits for the first byte of a request (with the socket's
/// timeout as it is set) and skips the line ends before it, up to
/// [`STRAY_LINE_END_BYTES`]: the head's clock and size start after them,
/// and a kept-alive connection goes on waiting for its next request as if
/// they had not come. They used to be read as the request line: `400`,
/// the connection closed and a request pipelined behind them lost.
fn skip_stray_line_ends<R: Read>(reader: &mut BufReader<R>) -> IoResult<()> {
    let mut skipped = 0;
    loop {
        let buffered = reader.fill_buf()?;
        let stray = buffered
            .iter()
            .take(STRAY_LINE_END_BYTES - skipped)
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if stray == 0 {
            return Ok(());
        }
        reader.consume(stray);
        skipped += stray;
        if skipped == STRAY_LINE_END_BYTES {
            return Ok(());
        }
    }
}

/// tinysse: a header line as RFC 9112 (5) has it: a field name that is a
/// token right before the colon (no space: `Host : x` is refused, as a
/// proxy may read it otherwise), and no NUL or CR in the value. A line
/// that starts with a space or tab (obsolete line folding) is refused too.
fn is_well_formed_header(line: &str) -> bool {
    let Some((name, value)) = line.split_once(':') else {
        return false;
    };
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(is_tchar)
        && !value.bytes().any(|b| b == 0 || b == b'\r')
}

/// tinysse: a peer's address for a log line.
fn peer_text(remote_addr: &IoResult<Option<SocketAddr>>) -> String {
    match remote_addr {
        Ok(Some(addr)) => addr.to_string(),
        _ => "unknown".to_string(),
    }
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    ///
    /// tinysse: `keep_alive_idle`, when given, is how long the connection may
    /// be silent between one request and the start of the next; the first
    /// request, and every request once it started, keep the socket's own
    /// read timeout.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        keep_alive_idle: Option<Duration>,
        head_limits: Option<HeadLimits>,
        error_headers: Arc<[crate::Header]>,
    ) -> ClientConnection {
        let accepted = Instant::now();
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let read_timeout = match keep_alive_idle {
            Some(_) => read_socket.read_timeout().unwrap_or(None),
            None => None,
        };

        #[cfg(unix)]
        let socket_fd = write_socket.tcp_fd();
        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            keep_alive_idle,
            read_timeout,
            served: false,
            head_limits,
            accepted,
            error_headers,
            #[cfg(unix)]
            socket_fd,
            reading_stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// tinysse: within `budget`, when given: a read waits no longer than
    /// what is left of its deadline, and each byte counts against its size.
    ///
    /// tinysse: in a header line (`opaque_high_bytes`), a byte outside
    /// ASCII is taken as opaque data (RFC 9110, 5.5: obs-text, such as a
    /// browser's UTF-8 cookie) and kept as DEL (0x7F), which no valid field
    /// value has: such a value can never equal one of printable ASCII, a
    /// token say (a `?` could). In a request line it is an error.
    fn read_next_line(
        &mut self,
        budget: &mut Option<HeadBudget>,
        version: &HTTPVersion,
        opaque_high_bytes: bool,
    ) -> Result<AsciiString, ReadError> {
        let mut buf: Vec<u8> = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            if let Some(budget) = budget.as_mut() {
                self.fit_read_to(budget)?;
            }
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    // tinysse: a read cut short by the head's deadline (the
                    // lowered timeout is the deadline's: the kernel may
                    // wake a tick before it)
                    let timed_out = matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
                    if let Some(budget) = budget.as_ref() {
                        if budget.timeout_lowered && timed_out {
                            return Err(ReadError::HeadTooSlow(budget.limits.deadline));
                        }
                    }
                    return Err(ReadError::ReadIoError(e));
                }
                None => {
                    return Err(ReadError::ReadIoError(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };

            if let Some(budget) = budget.as_mut() {
                if budget.bytes_left == 0 {
                    return Err(ReadError::HeadTooLarge(
                        version.clone(),
                        budget.limits.max_bytes,
                    ));
                }
                budget.bytes_left -= 1;
            }

            // tinysse: a bare LF ends a line too (RFC 9112, 2.2: a
            // recipient may take it so); it used to wait for a CR LF that
            // never came, and the client got no answer.
            if byte == b'\n' {
                if prev_byte_was_cr {
                    buf.pop(); // removing the '\r'
                }
                if opaque_high_bytes {
                    for byte in buf.iter_mut().filter(|b| !b.is_ascii()) {
                        *byte = 0x7F;
                    }
                }
                return AsciiString::from_ascii(buf).map_err(|_| ReadError::NotAscii(version.clone()));
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// tinysse: before a byte of a head is read: when it must come from the
    /// socket (nothing buffered), the read may wait only for what is left
    /// of the head's deadline. The socket's timeout is lowered only in the
    /// deadline's last stretch, shorter than the read timeout: a head that
    /// comes at once costs no system call.
    fn fit_read_to(&mut self, budget: &mut HeadBudget) -> Result<(), ReadError> {
        let reader = self.next_header_source.turn();
        if !reader.buffer().is_empty() {
            return Ok(());
        }
        let left = budget.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::HeadTooSlow(budget.limits.deadline));
        }
        if self.read_timeout.map_or(true, |timeout| left < timeout) {
            reader.get_ref().set_read_timeout(Some(left)).ok();
            budget.timeout_lowered = true;
        }
        Ok(())
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let mut budget: Option<HeadBudget>;
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                // tinysse: a kept-alive connection waits longer for its next
                // request than a new one for its first.
                // Only the wait for its first byte: the rest of the head
                // has the socket's own timeout.
                let idle = self.keep_alive_idle.filter(|_| self.served);
                let reader = self.next_header_source.turn();
                if idle.is_some() {
                    reader.get_ref().set_read_timeout(idle).ok();
                }
                let first_byte = skip_stray_line_ends(reader);
                if idle.is_some() {
                    reader.get_ref().set_read_timeout(self.read_timeout).ok();
                }
                first_byte.map_err(ReadError::ReadIoError)?;
                // tinysse: the head's clock starts at the accept for the
                // first request, at its first byte for a later one.
                let started = if self.served { Instant::now() } else { self.accepted };
                budget = self.head_limits.map(|limits| HeadBudget {
                    limits,
                    deadline: started + limits.deadline,
                    bytes_left: limits.max_bytes,
                    timeout_lowered: false,
                });
                let line = self.read_next_line(&mut budget, &HTTPVersion(1, 1), false)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line(&mut budget, &version, true)?;

                    if line.is_empty() {
                        break;
                    };
                    if !is_well_formed_header(line.as_str()) {
                        return Err(ReadError::WrongHeader(version));
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };
        // tinysse: the head is in; the rest has the socket's own timeout.
        if budget.is_some_and(|budget| budget.timeout_lowered) {
            let reader = self.next_header_source.turn();
            reader.get_ref().set_read_timeout(self.read_timeout).ok();
        }

        // tinysse: a client that reset the connection before its address
        // was read has nothing to be answered (this was an unwrap: a panic
        // any client could cause at will).
        let remote_addr = match self.remote_addr {
            Ok(addr) => addr,
            Err(_) => {
                return Err(ReadError::ReadIoError(IoError::new(
                    ErrorKind::NotConnected,
                    "the client's address could not be read",
                )))
            }
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();
        #[cfg(unix)]
        let shared = writer.shared();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            remote_addr,
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => match e.kind() {
                    kind @ (ErrorKind::WouldBlock
                    | ErrorKind::TimedOut
                    | ErrorKind::ConnectionAborted) => ReadError::BodyUnread(version, kind),
                    _ => ReadError::ReadIoError(e),
                },
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;
        #[cfg(unix)]
        let request = match self.socket_fd {
            Some(fd) => request.with_socket(shared, fd),
            None => request,
        };
        let request = request.with_reading_stopped(Arc::clone(&self.reading_stopped));

        // return the request
        self.served = true;
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        // tinysse: a handler stopped the connection's reading: what came
        // behind is not read as requests, only drained (the reading side is
        // shut down, so this ends with what is queued)
        if self.reading_stopped.load(Ordering::Acquire) {
            crate::util::drain(&mut self.next_header_source, DRAIN_BYTES, None);
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = json_error(
                        400,
                        "malformed request line; expected METHOD TARGET HTTP/1.1",
                        &self.error_headers,
                    );
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response =
                        json_error(400, "malformed header line; expected 'Name: value'", &self.error_headers);
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = json_error(
                        408,
                        "no complete request in time; the connection is closed",
                        &self.error_headers,
                    );
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = json_error(
                        417,
                        "unsupported Expect header; only 'Expect: 100-continue' is understood",
                        &self.error_headers,
                    );
                    response.raw_print(writer, ver, &[], false, None).ok(); // tinysse: with its body
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::BodyUnread(ver, kind)) => {
                    let writer = self.sink.next().unwrap();
                    let response = if kind == ErrorKind::ConnectionAborted {
                        json_error(
                            400,
                            "the body ended before its Content-Length; nothing was published",
                            &self.error_headers,
                        )
                    } else {
                        json_error(
                            408,
                            "body not received in time; nothing was published",
                            &self.error_headers,
                        )
                    };
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // where the next request starts is unknown
                }

                Err(ReadError::NotAscii(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = json_error(
                        400,
                        "the request line must be ASCII; percent-encode the path and query",
                        &self.error_headers,
                    );
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // the rest of the head is unread: close
                }

                Err(ReadError::HeadTooLarge(ver, max_bytes)) => {
                    log::debug!(
                        target: "tinysse::tiny_http",
                        "answered 431 to a request head over {max_bytes} bytes: peer={}",
                        peer_text(&self.remote_addr)
                    );
                    let mut writer = self.sink.next().unwrap();
                    let message =
                        format!("request head too large: at most {max_bytes} bytes");
                    json_error(431, &message, &self.error_headers)
                        .raw_print(&mut writer, ver, &[], false, None)
                        .ok();
                    // Sent now, not when the connection is dropped after the
                    // drain (which may wait a read timeout for bytes that
                    // never come).
                    writer.flush().ok();
                    drop(writer);
                    // What the client is still sending of it, so that the
                    // close does not reset the connection before the answer
                    // is read; a head without end is cut after that.
                    crate::util::drain(&mut self.next_header_source, DRAIN_BYTES, None);
                    return None;
                }

                Err(ReadError::HeadTooSlow(deadline)) => {
                    let peer = peer_text(&self.remote_addr);
                    // (tinysse's target: its logger shows only its own
                    // records)
                    log::warn!(
                        target: "tinysse::tiny_http",
                        "closed a connection that sent no complete request head in time ({} s): peer={peer}",
                        deadline.as_secs()
                    );
                    let writer = self.sink.next().unwrap();
                    let response = json_error(
                        408,
                        "request head not complete in time; the connection is closed",
                        &self.error_headers,
                    );
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) || *rq.http_version() < (1, 0) {
                // tinysse: answered through the request's own writer. A new
                // writer from the sink waited for this request's writer,
                // alive in `rq`, to finish: the thread hung for ever and
                // the connection was never answered nor closed. And closed
                // after: what follows is HTTP/2 frames, not a request.
                let response = json_error(
                    505,
                    "HTTP version not supported; use HTTP/1.1 or HTTP/1.0",
                    &self.error_headers,
                );
                let mut writer = rq.into_writer();
                response
                    .raw_print(&mut writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                writer.flush().ok();
                return None;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
///
/// tinysse: any `HTTP/<digit>.<digit>` (RFC 9112, 2.3); a later 1.x is taken
/// as 1.1, the highest minor version served (RFC 9110, 2.5), and other
/// major versions are left for a `505`.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let digits = version.strip_prefix("HTTP/").map(str::as_bytes);
    let (major, minor) = match digits {
        Some(&[major @ b'0'..=b'9', b'.', minor @ b'0'..=b'9']) => (major - b'0', minor - b'0'),
        _ => return Err(ReadError::WrongRequestLine),
    };
    Ok(match (major, minor) {
        (1, 2..=9) => HTTPVersion(1, 1),
        _ => HTTPVersion(major, minor),
    })
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());
    // tinysse: nothing after the version (RFC 9112, 3)
    if parts.next().is_some() {
        return Err(ReadError::WrongRequestLine);
    }

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}

use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    /// tinysse: a second handle, which for plain TCP is a second
    /// descriptor: an error when the process has none left (this was an
    /// `unwrap()`, a panic of the accept thread).
    fn try_clone(&self) -> IoResult<Self> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    /// tinysse: ends the writing side, for a connection refused unserved.
    pub(crate) fn shutdown_write(&mut self) {
        self.shutdown(Shutdown::Write).ok();
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // tinysse: the socket was handed over (`Request::take_connection`):
    // nothing more is written to it through this half
    handed_over: bool,
}

impl RefinedTcpStream {
    /// tinysse: fails, giving the stream back, when no second descriptor
    /// can be made for the reading half.
    pub(crate) fn new<S>(stream: S) -> Result<(RefinedTcpStream, RefinedTcpStream), (Stream, std::io::Error)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let read = match stream.try_clone() {
            Ok(read) => read,
            Err(e) => return Err((stream, e)),
        };
        let write = stream;

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            handed_over: false,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            handed_over: false,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// tinysse: the socket's read timeout (`SO_RCVTIMEO`).
    pub(crate) fn read_timeout(&self) -> IoResult<Option<Duration>> {
        match &self.stream {
            Stream::Http(connection) => connection.read_timeout(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(None),
        }
    }

    /// tinysse: sets the socket's read timeout (`SO_RCVTIMEO`); the
    /// socket's, so every descriptor of it has it.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> IoResult<()> {
        match &self.stream {
            Stream::Http(connection) => connection.set_read_timeout(timeout),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }
}

impl RefinedTcpStream {
    /// tinysse: the descriptor of a plain TCP connection (None for TLS or
    /// a Unix socket).
    #[cfg(unix)]
    pub(crate) fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.stream {
            Stream::Http(connection) => connection.tcp_fd(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => None,
        }
    }

    /// tinysse: the socket was handed over (`Request::take_connection`):
    /// this half no longer shuts it down when dropped (its new owner's
    /// descriptor keeps it open), and refuses every later write. tiny_http
    /// may still read requests the client sent behind the handed-over one
    /// (already received when the read side was shut) and answer some
    /// itself (a 400 for a malformed one): such answers must not reach the
    /// new owner's byte stream.
    pub(crate) fn hand_over(&mut self) {
        self.close_read = false;
        self.close_write = false;
        self.handed_over = true;
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.stream.read(buf)
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        if self.handed_over {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the connection was handed over",
            ));
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}

//! A small blocking Redis client speaking RESP2: commands as arrays of bulk
//! strings, replies read from a [`BufRead`], one [`Connection`] per TCP
//! stream with read and write timeouts.
//!
//! Only what tinysse needs: no RESP3, no pub/sub, no cluster. The reply
//! parser has limits ([`MAX_BULK_LEN`], [`MAX_ARRAY_LEN`], [`MAX_DEPTH`],
//! [`MAX_LINE_LEN`]) so that a bad peer gives an error, never a panic, a
//! huge allocation up front or a deep recursion.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::redis_url::RedisUrl;

/// Longest bulk string accepted (Redis' own `proto-max-bulk-len` default).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// Most elements accepted in one array.
pub const MAX_ARRAY_LEN: usize = 1 << 24;

/// Deepest nesting of arrays accepted (tinysse's deepest reply, `XREAD`,
/// has 5 levels).
pub const MAX_DEPTH: usize = 16;

/// Longest line accepted for a simple string, an error or a length.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// A RESP2 reply (error replies are [`RespError::Reply`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// A nil bulk string (`$-1`) or nil array (`*-1`).
    Nil,
    /// An integer (`:`).
    Int(i64),
    /// A bulk string (`$`).
    BulkString(Vec<u8>),
    /// A simple string (`+`).
    SimpleString(String),
    /// An array (`*`).
    Array(Vec<Value>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Int(n) => write!(f, "int({n})"),
            Value::BulkString(bytes) => write!(f, "bulk({:?})", String::from_utf8_lossy(bytes)),
            Value::SimpleString(s) => write!(f, "simple({s:?})"),
            Value::Array(items) => f.debug_list().entries(items).finish(),
        }
    }
}

/// Why a command failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RespError {
    /// The connection failed, timed out or was closed.
    Io(io::Error),
    /// Redis answered with an error reply (`-ERR ...`); the connection is
    /// still in step.
    Reply(String),
    /// Redis (or whatever answered) broke the protocol.
    Protocol(String),
}

impl RespError {
    /// True when a read or write timed out: the command may still run.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RespError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    /// True for an error reply from Redis, after which the connection can
    /// be used again.
    pub fn is_reply(&self) -> bool {
        matches!(self, RespError::Reply(_))
    }

    /// The code of an error reply: its first word (`ERR`, `WRONGTYPE`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            RespError::Reply(message) => message.split(' ').next(),
            _ => None,
        }
    }
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::Io(e) => write!(f, "io: {e}"),
            RespError::Reply(message) => f.write_str(message),
            RespError::Protocol(what) => write!(f, "unexpected reply from redis: {what}"),
        }
    }
}

impl std::error::Error for RespError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RespError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for RespError {
    fn from(e: io::Error) -> Self {
        RespError::Io(e)
    }
}

fn protocol(what: impl Into<String>) -> RespError {
    RespError::Protocol(what.into())
}

/// What can be an argument of a [`Command`]: text, bytes and numbers
/// (sent as their decimal text).
pub trait Arg {
    /// The argument's bytes.
    fn into_arg(self) -> Vec<u8>;
}

impl Arg for &str {
    fn into_arg(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl Arg for &String {
    fn into_arg(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl Arg for String {
    fn into_arg(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl Arg for &[u8] {
    fn into_arg(self) -> Vec<u8> {
        self.to_vec()
    }
}

macro_rules! number_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn into_arg(self) -> Vec<u8> {
                self.to_string().into_bytes()
            }
        }
    )*};
}

number_arg!(u32, u64, usize);

/// One command: its name and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    args: Vec<Vec<u8>>,
}

impl Command {
    /// A command named `name`, without arguments yet.
    pub fn new(name: &str) -> Command {
        Command {
            args: vec![name.as_bytes().to_vec()],
        }
    }

    /// Adds an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Arg) -> Command {
        self.args.push(arg.into_arg());
        self
    }

    /// Appends the command to `out` as a RESP array of bulk strings.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", self.args.len()).as_bytes());
        for arg in &self.args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Reads one reply.
///
/// # Errors
/// [`RespError::Reply`] for an error reply (also one inside an array, which
/// is read to its end so that the stream stays in step),
/// [`RespError::Io`] when reading fails or the input ends early,
/// [`RespError::Protocol`] for malformed input or input past the limits.
pub fn read_reply<R: BufRead>(reader: &mut R) -> Result<Value, RespError> {
    read_value(reader, &mut Vec::new(), 0)
}

fn read_value<R: BufRead>(reader: &mut R, line: &mut Vec<u8>, depth: usize) -> Result<Value, RespError> {
    read_line(reader, line)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(protocol("an empty line"));
    };
    match kind {
        b'+' => Ok(Value::SimpleString(String::from_utf8_lossy(rest).into_owned())),
        b'-' => Err(RespError::Reply(String::from_utf8_lossy(rest).into_owned())),
        b':' => parse_int(rest).map(Value::Int),
        b'$' => match length(rest, MAX_BULK_LEN, "bulk string")? {
            None => Ok(Value::Nil),
            Some(len) => read_bulk(reader, len).map(Value::BulkString),
        },
        b'*' => match length(rest, MAX_ARRAY_LEN, "array")? {
            None => Ok(Value::Nil),
            Some(len) => {
                if depth >= MAX_DEPTH {
                    return Err(protocol(format!("arrays nested deeper than {MAX_DEPTH}")));
                }
                let mut items = Vec::with_capacity(len.min(1024));
                let mut first_error = None;
                for _ in 0..len {
                    match read_value(reader, line, depth + 1) {
                        Ok(item) => items.push(item),
                        Err(e) if e.is_reply() => {
                            first_error.get_or_insert(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
                match first_error {
                    Some(e) => Err(e),
                    None => Ok(Value::Array(items)),
                }
            }
        },
        other => Err(protocol(format!(
            "a reply starting with {:?}",
            char::from(other).escape_default().to_string()
        ))),
    }
}

/// Reads a line ending in CRLF into `line`, without the CRLF.
fn read_line<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> Result<(), RespError> {
    line.clear();
    let limit = MAX_LINE_LEN + 2;
    reader.by_ref().take(limit as u64).read_until(b'\n', line)?;
    if !line.ends_with(b"\n") {
        return Err(if line.len() >= limit {
            protocol(format!("a line longer than {MAX_LINE_LEN} bytes"))
        } else {
            closed()
        });
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol("a line ending in LF alone"));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

fn closed() -> RespError {
    RespError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection closed before a whole reply came",
    ))
}

/// A signed decimal integer: an optional `-` and digits only.
fn parse_int(text: &[u8]) -> Result<i64, RespError> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(protocol(format!(
            "'{}' where a number was expected",
            String::from_utf8_lossy(text).escape_default()
        )));
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol(format!("{} is out of range", String::from_utf8_lossy(text))))
}

/// The length of a bulk string or array: `None` for -1 (nil).
fn length(text: &[u8], max: usize, what: &str) -> Result<Option<usize>, RespError> {
    match parse_int(text)? {
        -1 => Ok(None),
        n if n < 0 => Err(protocol(format!("{what} length {n}"))),
        n => match usize::try_from(n) {
            Ok(n) if n <= max => Ok(Some(n)),
            _ => Err(protocol(format!("{what} length {n}, more than {max}"))),
        },
    }
}

/// Reads `len` bytes and the CRLF after them; memory grows with what
/// arrives, not with what the length promises.
fn read_bulk<R: BufRead>(reader: &mut R, len: usize) -> Result<Vec<u8>, RespError> {
    let mut data = Vec::with_capacity(len.min(64 * 1024));
    reader.by_ref().take(len as u64).read_to_end(&mut data)?;
    if data.len() < len {
        return Err(closed());
    }
    let mut end = [0u8; 2];
    reader.read_exact(&mut end).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => closed(),
        _ => RespError::Io(e),
    })?;
    if &end != b"\r\n" {
        return Err(protocol(format!("a bulk string longer than its length {len}")));
    }
    Ok(data)
}

/// A connection to Redis.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to `url` (trying each address its host resolves to, each
    /// within `connect_timeout`), sets the timeouts, then sends `AUTH` if
    /// the URL has a password and `SELECT` if its database is not 0.
    ///
    /// # Errors
    /// [`RespError::Io`] when no address answers, [`RespError::Reply`] when
    /// Redis refuses `AUTH` or `SELECT` (the message is Redis').
    pub fn open(
        url: &RedisUrl,
        connect_timeout: Duration,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> Result<Connection, RespError> {
        let mut failure = None;
        let mut connected = None;
        for addr in (url.host.as_str(), url.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, connect_timeout) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(e) => failure = Some(e),
            }
        }
        let stream = match (connected, failure) {
            (Some(stream), _) => stream,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => {
                return Err(RespError::Io(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolves to no address", url.host),
                )))
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(write_timeout))?;
        let mut con = Connection {
            reader: BufReader::new(stream),
        };
        if let Some(password) = &url.password {
            let mut auth = Command::new("AUTH");
            if let Some(username) = &url.username {
                auth = auth.arg(username.as_slice());
            }
            con.query(&auth.arg(password.as_slice()))?;
        }
        if url.db != 0 {
            con.query(&Command::new("SELECT").arg(url.db))?;
        }
        Ok(con)
    }

    /// How long each read of a reply may wait (`None`: for ever).
    ///
    /// # Errors
    /// [`RespError::Io`] if the socket refuses it.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), RespError> {
        Ok(self.reader.get_ref().set_read_timeout(timeout)?)
    }

    /// Sends `command` and reads its reply.
    ///
    /// # Errors
    /// As [`read_reply`], and [`RespError::Io`] when sending fails.
    pub fn query(&mut self, command: &Command) -> Result<Value, RespError> {
        let mut out = Vec::new();
        command.encode(&mut out);
        self.reader.get_mut().write_all(&out)?;
        read_reply(&mut self.reader)
    }

    /// Sends `commands` in one write and reads their replies, in order.
    ///
    /// # Errors
    /// As [`Connection::query`]; an error reply to any command is returned
    /// once all replies are read, so that the connection stays in step.
    pub fn pipeline(&mut self, commands: &[Command]) -> Result<Vec<Value>, RespError> {
        let mut out = Vec::new();
        for command in commands {
            command.encode(&mut out);
        }
        self.reader.get_mut().write_all(&out)?;
        let mut replies = Vec::with_capacity(commands.len());
        let mut first_error = None;
        for _ in commands {
            match read_reply(&mut self.reader) {
                Ok(reply) => replies.push(reply),
                Err(e) if e.is_reply() => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Value, RespError> {
        let mut reader = input;
        let value = read_reply(&mut reader);
        if value.is_ok() {
            assert!(
                reader.is_empty(),
                "left over: {:?}",
                String::from_utf8_lossy(reader)
            );
        }
        value
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn protocol_error(input: &[u8]) -> String {
        match parse(input) {
            Err(RespError::Protocol(what)) => what,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        Command::new("XREAD")
            .arg("COUNT")
            .arg(512_usize)
            .arg("tinysse:feed".to_string())
            .arg("")
            .arg(&b"a\r\nb"[..])
            .encode(&mut out);
        assert_eq!(
            out,
            b"*6\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$3\r\n512\r\n$12\r\ntinysse:feed\r\n$0\r\n\r\n$4\r\na\r\nb\r\n"
        );
    }

    #[test]
    fn parses_each_reply_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Value::SimpleString("OK".into()));
        assert_eq!(parse(b":42\r\n").unwrap(), Value::Int(42));
        assert_eq!(parse(b":-7\r\n").unwrap(), Value::Int(-7));
        assert_eq!(parse(b"$5\r\nhe\r\nl\r\n").unwrap(), bulk("he\r\nl"));
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), bulk(""));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Value::Nil);
        assert_eq!(parse(b"*-1\r\n").unwrap(), Value::Nil);
        assert_eq!(parse(b"*0\r\n").unwrap(), Value::Array(Vec::new()));
    }

    #[test]
    fn parses_nested_arrays() {
        let input = b"*2\r\n*2\r\n$12\r\ntinysse:feed\r\n*1\r\n*2\r\n$3\r\n7-0\r\n*2\r\n$4\r\ndata\r\n$1\r\nx\r\n:3\r\n";
        assert_eq!(
            parse(input).unwrap(),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("tinysse:feed"),
                    Value::Array(vec![Value::Array(vec![
                        bulk("7-0"),
                        Value::Array(vec![bulk("data"), bulk("x")]),
                    ])]),
                ]),
                Value::Int(3),
            ])
        );
    }

    #[test]
    fn error_replies_are_errors_and_keep_the_stream_in_step() {
        let e = parse(b"-ERR no such key\r\n").unwrap_err();
        assert!(e.is_reply() && !e.is_timeout(), "{e:?}");
        assert_eq!(e.code(), Some("ERR"));
        assert_eq!(e.to_string(), "ERR no such key");

        // An error inside an array: the array is read to its end.
        let mut input: &[u8] = b"*3\r\n:1\r\n-WRONGTYPE no\r\n-ERR two\r\n+NEXT\r\n";
        let e = read_reply(&mut input).unwrap_err();
        assert_eq!(e.code(), Some("WRONGTYPE"));
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Value::SimpleString("NEXT".into())
        );
    }

    #[test]
    fn truncated_input_is_an_io_error() {
        for input in [
            &b""[..],
            b"+OK",
            b"+OK\r",
            b":1",
            b"$5\r\nabc",
            b"$3\r\nabc",
            b"$3\r\nabc\r",
            b"*2\r\n:1\r\n",
        ] {
            match parse(input) {
                Err(RespError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn refuses_bad_lengths_and_malformed_lines() {
        assert!(protocol_error(b"$-2\r\n").contains("length -2"));
        assert!(protocol_error(b"*-5\r\n").contains("length -5"));
        assert!(protocol_error(b"$536870913\r\n").contains("more than"));
        assert!(protocol_error(b"*99999999999\r\n").contains("more than"));
        assert!(protocol_error(b"$99999999999999999999\r\n").contains("out of range"));
        assert!(protocol_error(b"$x\r\n").contains("number"));
        assert!(protocol_error(b"$\r\n").contains("number"));
        assert!(protocol_error(b":+1\r\n").contains("number"));
        assert!(protocol_error(b":1 \r\n").contains("number"));
        assert!(protocol_error(b"$3\r\nabcd\r\n").contains("longer than its length"));
        assert!(protocol_error(b"+OK\n").contains("LF alone"));
        assert!(protocol_error(b"\r\n").contains("empty line"));
        assert!(protocol_error(b"%1\r\n").contains("starting with"));
        assert!(protocol_error(b"HTTP/1.1 400 Bad Request\r\n").contains("starting with"));
        let mut long = vec![b'+'; MAX_LINE_LEN + 10];
        long.extend_from_slice(b"\r\n");
        assert!(protocol_error(&long).contains("longer than"));
    }

    #[test]
    fn refuses_too_deep_nesting() {
        let mut ok = b"*1\r\n".repeat(MAX_DEPTH);
        ok.extend_from_slice(b":1\r\n");
        assert!(parse(&ok).is_ok());
        let deep = b"*1\r\n".repeat(100_000);
        assert!(protocol_error(&deep).contains("nested deeper"));
    }

    #[test]
    fn timeouts_are_told_apart() {
        let e = RespError::from(io::Error::from(io::ErrorKind::WouldBlock));
        assert!(e.is_timeout() && !e.is_reply());
        assert!(RespError::from(io::Error::from(io::ErrorKind::TimedOut)).is_timeout());
        assert!(!RespError::from(io::Error::from(io::ErrorKind::ConnectionReset)).is_timeout());
        assert!(!RespError::Protocol("x".into()).is_timeout());
    }
}

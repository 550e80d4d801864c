//! tinysse: a request body in the chunked transfer coding (RFC 9112, 7.1),
//! decoded strictly, replacing `chunked_transfer::Decoder`, which refused
//! a trailer section (`0\r\nName: value\r\n\r\n`), took `+5` or ` 5 ` for
//! a chunk size and kept reading a size line without end.
//!
//! Lines end with CRLF (a bare LF is refused: peers that read it
//! differently would see a different body). A chunk size is hex digits
//! only, extensions after it are skipped, trailer fields are read and
//! dropped (RFC 9110, 6.5: a recipient may discard them). A size line and
//! each trailer line hold at most [`MAX_LINE`] bytes, the trailer section
//! [`MAX_TRAILER_BYTES`]. Any error is `InvalidData` (the body is
//! malformed), or `UnexpectedEof` (it ended early); errors of the source
//! (a timeout, say) pass through, and reading may go on after them.

use std::convert::TryFrom;
use std::io::{Error, ErrorKind, Read, Result};

/// Longest chunk size line (with its extensions) or trailer line, CRLF not
/// counted.
pub const MAX_LINE: usize = 4096;

/// Longest trailer section, CRLFs not counted.
pub const MAX_TRAILER_BYTES: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
    /// The body ended.
    Done,
    /// The body was malformed or cut short: every read fails.
    Failed,
}

/// Reads the decoded body of a chunked message from `source`.
pub struct ChunkedDecoder<R> {
    source: R,
    state: State,
    /// The line being read (kept across a source error).
    line: Vec<u8>,
    /// A CR ended `line`; the LF is next.
    after_cr: bool,
    trailer_bytes: usize,
}

fn malformed(what: &str) -> Error {
    Error::new(ErrorKind::InvalidData, format!("malformed chunked body: {what}"))
}

fn ended(what: &str) -> Error {
    Error::new(ErrorKind::UnexpectedEof, format!("chunked body ended {what}"))
}

/// The size a chunk size line gives: hex digits, then nothing or
/// extensions (`[BWS] ";" ...`); `None` if it is not such a line or the
/// size overflows.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let rest = &line[digits..];
    let first_after_space = rest.iter().find(|b| !matches!(b, b' ' | b'\t'));
    if !(rest.is_empty() || first_after_space == Some(&b';')) {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |size, &digit| {
        let value = (digit as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(value))
    })
}

/// True for a field line: a name of token characters, a colon, a value.
fn is_field_line(line: &[u8]) -> bool {
    let name = line.iter().take_while(|&&b| b != b':').count();
    name > 0
        && name < line.len()
        && line[..name]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl<R: Read> ChunkedDecoder<R> {
    pub fn new(source: R) -> ChunkedDecoder<R> {
        ChunkedDecoder {
            source,
            state: State::Size,
            line: Vec::new(),
            after_cr: false,
            trailer_bytes: 0,
        }
    }

    /// Reads the rest of a line into `self.line` (at most `max` bytes) and
    /// its CRLF.
    fn read_line(&mut self, max: usize) -> Result<()> {
        loop {
            let mut byte = [0u8; 1];
            if self.source.read(&mut byte)? == 0 {
                return Err(ended("inside a chunk size or trailer line"));
            }
            match (self.after_cr, byte[0]) {
                (true, b'\n') => {
                    self.after_cr = false;
                    return Ok(());
                }
                (true, _) => return Err(malformed("a CR not followed by LF")),
                (false, b'\r') => self.after_cr = true,
                (false, b'\n') => return Err(malformed("a line ending in a bare LF")),
                (false, _) if self.line.len() >= max => {
                    return Err(malformed(if max == 0 {
                        "a chunk longer than its size"
                    } else {
                        "a chunk size or trailer line too long"
                    }))
                }
                (false, other) => self.line.push(other),
            }
        }
    }
}

impl<R: Read> Read for ChunkedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let read = self.read_body(buf);
        if let Err(e) = &read {
            // A source's timeout may be retried; a malformed or cut body not.
            if matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) {
                self.state = State::Failed;
            }
        }
        read
    }
}

impl<R: Read> ChunkedDecoder<R> {
    fn read_body(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Size => {
                    self.read_line(MAX_LINE)?;
                    let size = chunk_size(&self.line).ok_or_else(|| malformed("a bad chunk size"))?;
                    self.line.clear();
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let read = self.source.read(&mut buf[..want])?;
                    if read == 0 {
                        return Err(ended("inside a chunk"));
                    }
                    let left = left - read as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(read);
                }
                State::DataEnd => {
                    self.read_line(0)?;
                    self.state = State::Size;
                }
                State::Trailers => {
                    self.read_line(MAX_LINE)?;
                    if self.line.is_empty() {
                        self.state = State::Done;
                        return Ok(0);
                    }
                    if !is_field_line(&self.line) {
                        return Err(malformed("a trailer line that is not a field"));
                    }
                    self.trailer_bytes += self.line.len();
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(malformed("a trailer section too long"));
                    }
                    self.line.clear();
                }
                State::Done => return Ok(0),
                State::Failed => return Err(malformed("read on after an error")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(encoded: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        ChunkedDecoder::new(encoded).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn chunks_extensions_and_trailers() {
        assert_eq!(
            decode(b"3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n\r\n").unwrap(),
            b"hello world!!!"
        );
        assert_eq!(decode(b"3;x=1\r\nabc\r\n0 ; y\r\n\r\n").unwrap(), b"abc");
        assert_eq!(decode(b"2\r\nhi\r\n0\r\nX-T: 1\r\nY:2\r\n\r\n").unwrap(), b"hi");
        assert_eq!(decode(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap(), b"0123456789");
        assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
    }

    #[test]
    fn what_is_refused() {
        for bad in [
            &b"+3\r\nabc\r\n0\r\n\r\n"[..],
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"zz\r\n",
            b"fffffffffffffffff2\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"2\r\nhi\r\n0\r\nnot a field\r\n\r\n",
            b"2\r\nhi\r\n0\r\n: empty name\r\n\r\n",
        ] {
            let error = decode(bad).unwrap_err();
            assert_eq!(
                error.kind(),
                ErrorKind::InvalidData,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for cut in [
            &b"3\r\nab"[..],
            b"3\r\nabc\r\n",
            b"3\r\nabc\r\n0\r\nX: 1\r\n",
            b"3",
        ] {
            let error = decode(cut).unwrap_err();
            assert_eq!(
                error.kind(),
                ErrorKind::UnexpectedEof,
                "{:?}",
                String::from_utf8_lossy(cut)
            );
        }
    }

    #[test]
    fn an_error_is_final() {
        let mut decoder = ChunkedDecoder::new(&b"3\r\nabc\rX\n3\r\ndef\r\n0\r\n\r\n"[..]);
        let mut buf = [0u8; 16];
        assert_eq!(decoder.read(&mut buf).unwrap(), 3);
        assert_eq!(decoder.read(&mut buf).unwrap_err().kind(), ErrorKind::InvalidData);
        assert_eq!(decoder.read(&mut buf).unwrap_err().kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn lines_are_bounded() {
        // Leading zeros: a valid size, refused for its length alone.
        let mut long = vec![b'0'; MAX_LINE];
        long.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
        let error = decode(&long).unwrap_err();
        assert!(error.to_string().contains("too long"), "{}", error);
        assert_eq!(decode(&long[1..]).unwrap(), b"x");
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILER_BYTES / 100 + 1 {
            trailers.extend_from_slice(format!("X: {}\r\n", "v".repeat(97)).as_bytes());
        }
        trailers.extend_from_slice(b"\r\n");
        assert_eq!(decode(&trailers).unwrap_err().kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn a_source_error_mid_line_can_be_retried() {
        /// Gives `parts` one after another, a timeout between them.
        struct Pausing(Vec<&'static [u8]>, bool);
        impl Read for Pausing {
            fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
                if self.1 {
                    self.1 = false;
                    return Err(Error::new(ErrorKind::WouldBlock, "pause"));
                }
                let Some(part) = self.0.first_mut() else {
                    return Ok(0);
                };
                let n = buf.len().min(part.len());
                buf[..n].copy_from_slice(&part[..n]);
                *part = &part[n..];
                if part.is_empty() {
                    self.0.remove(0);
                    self.1 = true;
                }
                Ok(n)
            }
        }
        let mut decoder = ChunkedDecoder::new(Pausing(
            vec![b"0", b"A\r", b"\n01234", b"56789\r", b"\n0\r\n\r\n"],
            false,
        ));
        let mut out = Vec::new();
        let mut buf = [0u8; 4];
        loop {
            match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{}", e),
            }
        }
        assert_eq!(out, b"0123456789");
    }
}

use std::io::Read;
use std::io::Result as IoResult;
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
        };

        (r, rx)
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        // tinysse: what is left is read into a small buffer, not one of
        // the size left (a `Content-Length` of 10^12 left unread was a
        // failed allocation: the process aborted), and within the bounds of
        // `Request`'s own drain of an unread body, which runs first: this
        // one finds a body already read, or a connection whose reading was
        // stopped.
        if self.size == 0 {
            return;
        }
        let deadline = std::time::Instant::now() + crate::request::BODY_DRAIN_TIME;
        let mut rest = (&mut self.reader).take(self.size as u64);
        let signal = if crate::util::drain(&mut rest, crate::request::BODY_DRAIN_BYTES, Some(deadline)) {
            Ok(())
        } else {
            Err(std::io::Error::other("the rest of the body was not read"))
        };
        self.last_read_signal.send(signal).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    // tinysse
    #[test]
    fn a_huge_size_left_unread_is_skipped_without_a_buffer_of_its_size() {
        let mut source = std::io::Cursor::new(vec![7u8; 100]);
        let (reader, signal) = EqualReader::new(&mut source, 1_000_000_000_000);
        drop(reader);
        assert_eq!(source.position(), 100);
        assert!(signal.recv().unwrap().is_ok(), "the source ended: all was read");
        let mut endless = std::io::repeat(1);
        let (reader, signal) = EqualReader::new(&mut endless, 1_000_000);
        drop(reader);
        assert!(signal.recv().unwrap().is_err(), "64 KiB at most is read");
    }

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}

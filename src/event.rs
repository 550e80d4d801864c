//! The SSE wire format: encoding events and comments to exact bytes.
//!
//! Pure functions, no I/O. The rules are those of the WHATWG HTML standard,
//! section "Server-sent events": fields are `name: value` lines, an event ends
//! with a blank line, data containing line breaks (LF, CRLF or CR) becomes one
//! `data:` line per line, and a line starting with `:` is a comment. A value
//! that would break the framing (a line break in an id or event name, a NUL in
//! an id) cannot be encoded and is refused with [`FieldError`].

use std::fmt;

/// Why an event field cannot be put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldError {
    /// The event id contains CR, LF or NUL.
    InvalidId,
    /// The event name contains CR or LF.
    InvalidEventName,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldError::InvalidId => f.write_str("event id must not contain CR, LF or NUL"),
            FieldError::InvalidEventName => f.write_str("event name must not contain CR or LF"),
        }
    }
}

impl std::error::Error for FieldError {}

/// Checks that `id` can be sent as an `id:` field.
///
/// # Errors
/// [`FieldError::InvalidId`] when it contains CR, LF or NUL.
pub fn validate_id(id: &str) -> Result<(), FieldError> {
    if id.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Err(FieldError::InvalidId)
    } else {
        Ok(())
    }
}

/// Checks that `name` can be sent as an `event:` field.
///
/// # Errors
/// [`FieldError::InvalidEventName`] when it contains CR or LF.
pub fn validate_event_name(name: &str) -> Result<(), FieldError> {
    if name.bytes().any(|b| matches!(b, b'\r' | b'\n')) {
        Err(FieldError::InvalidEventName)
    } else {
        Ok(())
    }
}

/// Encodes one event: `event` and `data` fields, then `id`, then a blank
/// line.
///
/// The id comes last so that a stream cut inside an event (a subscriber
/// dropped for being slow, a write that timed out) never hands a client the
/// id of an event it did not get whole. A client follows the standard and
/// takes an id only when its event is dispatched, at the blank line; but
/// some take it as soon as they read the `id:` line (the `eventsource`
/// package for Node before version 3), reconnect with it, and would miss
/// that event for good. The standard's own examples put `id:` after `data:`.
///
/// `data` is split on LF, CRLF and CR into one `data:` line each, so the
/// client's `MessageEvent.data` is `data` with its line breaks turned into LF.
/// Empty data is sent as one empty `data:` line (an event with empty data).
///
/// # Errors
/// [`FieldError`] when the id or the event name would break the framing.
pub fn encode_event(id: Option<&str>, event: Option<&str>, data: &str) -> Result<Vec<u8>, FieldError> {
    if let Some(id) = id {
        validate_id(id)?;
    }
    let mut out = Vec::with_capacity(data.len() + 48);
    if let Some(event) = event {
        validate_event_name(event)?;
        push_field(&mut out, "event", event);
    }
    for line in split_lines(data) {
        push_field(&mut out, "data", line);
    }
    if let Some(id) = id {
        push_field(&mut out, "id", id);
    }
    out.push(b'\n');
    Ok(out)
}

/// Encodes the demo stream's event as the original post and the spec show
/// it: `id: <id>`, `event: new_message`, `data: message_content`, in that
/// order.
///
/// # Errors
/// [`FieldError::InvalidId`] when the id would break the framing.
pub fn encode_demo_event(id: &str) -> Result<Vec<u8>, FieldError> {
    validate_id(id)?;
    let mut out = Vec::with_capacity(id.len() + 48);
    push_field(&mut out, "id", id);
    push_field(&mut out, "event", "new_message");
    push_field(&mut out, "data", "message_content");
    out.push(b'\n');
    Ok(out)
}

/// Encodes a comment: each line of `text` prefixed with `: `, then a blank
/// line. Clients ignore comments; they keep idle connections alive.
pub fn encode_comment(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    for line in split_lines(text) {
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Encodes a `retry:` field telling the client how many milliseconds to wait
/// before reconnecting.
pub fn encode_retry(millis: u64) -> Vec<u8> {
    format!("retry: {millis}\n\n").into_bytes()
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// Splits on LF, CRLF and CR, the three line endings of the SSE format.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(current)
            }
            Some(at) => {
                let skip = if current[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&current[at + skip..]);
                Some(&current[..at])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, name: Option<&str>, data: &str) -> String {
        String::from_utf8(encode_event(id, name, data).expect("valid fields")).expect("utf-8")
    }

    #[test]
    fn demo_event_has_fields_in_order() {
        assert_eq!(
            encode_demo_event("1").expect("a valid id"),
            b"id: 1\nevent: new_message\ndata: message_content\n\n"
        );
        assert_eq!(encode_demo_event("1\n"), Err(FieldError::InvalidId));
    }

    #[test]
    fn an_event_s_id_comes_last() {
        assert_eq!(
            event(Some("42"), Some("update"), "a\nb"),
            "event: update\ndata: a\ndata: b\nid: 42\n\n"
        );
    }

    #[test]
    fn data_only_event() {
        assert_eq!(event(None, None, "hello"), "data: hello\n\n");
    }

    #[test]
    fn empty_data_is_one_empty_data_line() {
        assert_eq!(event(Some("7"), None, ""), "data: \nid: 7\n\n");
    }

    #[test]
    fn multi_line_data_splits_on_lf_crlf_and_cr() {
        assert_eq!(event(None, None, "a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(event(None, None, "a\r\nb"), "data: a\ndata: b\n\n");
        assert_eq!(event(None, None, "a\rb"), "data: a\ndata: b\n\n");
        assert_eq!(event(None, None, "a\r\rb"), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(event(None, None, "a\n\r\nb"), "data: a\ndata: \ndata: b\n\n");
    }

    #[test]
    fn trailing_line_break_keeps_an_empty_last_line() {
        assert_eq!(event(None, None, "a\n"), "data: a\ndata: \n\n");
        assert_eq!(event(None, None, "\r\n"), "data: \ndata: \n\n");
    }

    #[test]
    fn data_keeps_colons_and_leading_spaces() {
        assert_eq!(event(None, None, ": x"), "data: : x\n\n");
        assert_eq!(event(None, None, " lead"), "data:  lead\n\n");
    }

    #[test]
    fn refuses_line_breaks_and_nul_in_id() {
        for bad in ["1\n", "1\r", "1\r\n2", "1\0x"] {
            assert_eq!(
                encode_event(Some(bad), None, "x"),
                Err(FieldError::InvalidId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_line_breaks_in_event_name() {
        for bad in ["a\nb", "a\rb", "a\r\n"] {
            assert_eq!(
                encode_event(None, Some(bad), "x"),
                Err(FieldError::InvalidEventName),
                "{bad:?}"
            );
        }
        assert!(
            encode_event(None, Some("a\0b"), "x").is_ok(),
            "NUL is legal in names"
        );
    }

    #[test]
    fn comment_bytes() {
        assert_eq!(
            encode_comment("ping - 2026-11-30 04:21:08.123456"),
            b": ping - 2026-11-30 04:21:08.123456\n\n"
        );
        assert_eq!(encode_comment("a\nb"), b": a\n: b\n\n");
    }

    #[test]
    fn retry_bytes() {
        assert_eq!(encode_retry(3000), b"retry: 3000\n\n");
    }
}

//! Reading Redis replies into tinysse events: stream entries (`XRANGE`,
//! `XREVRANGE`, `XREAD`) and `XINFO STREAM` fields. Pure, no I/O.
//!
//! An entry written by tinysse has the stream id `<event id>-0` and the
//! fields `channel`, `data` and, when the event has a name, `event`.

use std::collections::HashMap;
use std::fmt;

use crate::broker::{EventId, LoggedEvent};
use crate::resp::Value;

/// A stream entry that could not be read as a tinysse event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError(String);

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected stream entry: {}", self.0)
    }
}

impl std::error::Error for EntryError {}

/// One entry of the feed or a channel stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its channel.
    pub channel: String,
    /// The event, with the id taken from the entry id `<id>-0`.
    pub event: LoggedEvent,
}

/// Reads an `XRANGE` / `XREVRANGE` reply (or one stream of an `XREAD`
/// reply): `[[id, [field, value, ...]], ...]`.
///
/// # Errors
/// [`EntryError`] for a reply of another shape, an id that is not
/// `<integer>-<integer>` or an entry without `channel` or `data`.
pub fn parse_entries(reply: &Value) -> Result<Vec<Entry>, EntryError> {
    let items = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(EntryError(format!("{other:?}"))),
    };
    items.iter().map(parse_entry).collect()
}

pub fn parse_entry(item: &Value) -> Result<Entry, EntryError> {
    let Value::Array(parts) = item else {
        return Err(EntryError(format!("{item:?}")));
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return Err(EntryError(format!("{item:?}")));
    };
    let id = text(id).ok_or_else(|| EntryError(format!("{id:?}")))?;
    let number = parse_entry_id(&id).ok_or_else(|| EntryError(format!("id '{id}'")))?;
    let mut channel = None;
    let mut event = None;
    let mut data = None;
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(EntryError(format!("odd field list in {id}")));
        };
        let value = text(value).ok_or_else(|| EntryError(format!("field value in {id}")))?;
        match text(name).as_deref() {
            Some("channel") => channel = Some(value),
            Some("event") => event = Some(value),
            Some("data") => data = Some(value),
            _ => {}
        }
    }
    match (channel, data) {
        (Some(channel), Some(data)) => Ok(Entry {
            channel,
            event: LoggedEvent {
                id: number,
                event,
                data,
            },
        }),
        _ => Err(EntryError(format!("{id} lacks channel or data"))),
    }
}

/// The tinysse id of a stream entry id: `<id>-<seq>` gives `id`.
pub fn parse_entry_id(id: &str) -> Option<EventId> {
    let (ms, seq) = id.split_once('-')?;
    seq.parse::<u64>().ok()?;
    ms.parse().ok()
}

/// The text of a bulk or simple string reply.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The entries of an `XREAD` reply on the feed alone (nil after a block
/// without news).
pub fn feed_items(reply: &Value) -> Result<&[Value], EntryError> {
    let streams = match reply {
        Value::Nil => return Ok(&[]),
        Value::Array(streams) => streams.as_slice(),
        _ => return Err(EntryError(format!("an XREAD reply of another shape: {reply:?}"))),
    };
    match streams.first() {
        None => Ok(&[]),
        Some(Value::Array(stream)) => match stream.as_slice() {
            [_, Value::Array(items)] => Ok(items),
            _ => Err(EntryError(format!("an XREAD reply of another shape: {reply:?}"))),
        },
        Some(_) => Err(EntryError(format!("an XREAD reply of another shape: {reply:?}"))),
    }
}

/// The stream id of an entry `[id, fields]`.
pub fn entry_id_text(item: &Value) -> Option<String> {
    match item {
        Value::Array(parts) => parts.first().and_then(text),
        _ => None,
    }
}

/// The name/value pairs of an `XINFO STREAM` reply (a RESP2 flat list).
pub fn info_fields(info: &Value) -> HashMap<String, &Value> {
    let mut fields = HashMap::new();
    if let Value::Array(items) = info {
        for pair in items.chunks(2) {
            if let [name, value] = pair {
                if let Some(name) = text(name) {
                    fields.insert(name, value);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn entry_ids_are_the_integer_before_the_dash() {
        assert_eq!(parse_entry_id("1796012468123456-0"), Some(1_796_012_468_123_456));
        assert_eq!(parse_entry_id("5-3"), Some(5));
        assert_eq!(parse_entry_id("5"), None);
        assert_eq!(parse_entry_id("x-0"), None);
        assert_eq!(parse_entry_id("5-x"), None);
    }

    #[test]
    fn parses_entries_with_and_without_event_name() {
        let reply = Value::Array(vec![
            entry("10-0", &["channel", "news", "data", "a\nb", "event", "up"]),
            entry("12-0", &["channel", "other", "data", ""]),
        ]);
        let entries = parse_entries(&reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].channel, "news");
        assert_eq!(
            entries[0].event,
            LoggedEvent {
                id: 10,
                event: Some("up".into()),
                data: "a\nb".into()
            }
        );
        assert_eq!(entries[1].event.event, None);
        assert_eq!(parse_entries(&Value::Nil).unwrap(), Vec::new());
    }

    #[test]
    fn refuses_foreign_entries() {
        assert!(parse_entries(&Value::Array(vec![entry("10-0", &["data", "x"])])).is_err());
        assert!(parse_entries(&Value::Array(vec![entry("abc", &["channel", "c", "data", "x"])])).is_err());
        assert!(parse_entries(&Value::Array(vec![entry("1-0", &["channel", "c", "data"])])).is_err());
        assert!(parse_entries(&Value::Int(3)).is_err());
    }

    #[test]
    fn reads_xread_replies() {
        assert!(feed_items(&Value::Nil).unwrap().is_empty());
        let entry = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![bulk("channel"), bulk("c"), bulk("data"), bulk("x")]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("tinysse:feed"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let items = feed_items(&reply).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(entry_id_text(&items[0]).as_deref(), Some("7-0"));
        assert!(feed_items(&Value::Int(1)).is_err());
    }

    #[test]
    fn reads_xinfo_fields() {
        let info = Value::Array(vec![
            bulk("length"),
            Value::Int(3),
            bulk("max-deleted-entry-id"),
            bulk("5-0"),
        ]);
        let fields = info_fields(&info);
        assert_eq!(fields.get("length"), Some(&&Value::Int(3)));
        assert_eq!(
            fields
                .get("max-deleted-entry-id")
                .and_then(|v| text(v))
                .as_deref(),
            Some("5-0")
        );
    }
}

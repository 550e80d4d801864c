//! `POST /publish` requests: reading the body within limits and turning the
//! raw or JSON form into a [`PublishRequest`].

use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use serde_json::error::Category;
use serde_json::value::RawValue;

use crate::broker::{self, BrokerError, DEFAULT_CHANNEL};

/// How long a client may take to send a whole publish body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Target channel (not yet validated).
    pub channel: String,
    /// Event name, if any (not yet validated).
    pub event: Option<String>,
    /// The data, as text.
    pub data: String,
}

/// Why a publish request cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The body is larger than the limit (in bytes).
    TooLarge(usize),
    /// The body is not UTF-8.
    NotUtf8,
    /// The JSON body does not parse.
    BadJson(String),
    /// The JSON body is not an object.
    NotAnObject,
    /// The JSON object has no `data`.
    MissingData,
    /// A JSON field has the wrong type.
    NotAString(&'static str),
    /// The client took longer than [`BODY_DEADLINE`] to send the body.
    TooSlow,
    /// The connection ended before the body did: fewer bytes came than the
    /// `Content-Length` said.
    Truncated {
        /// Bytes received.
        received: usize,
        /// Bytes the `Content-Length` header announced.
        declared: usize,
    },
    /// Reading the body failed.
    Io(io::Error),
    /// A query parameter that must come once came more often.
    Repeated(&'static str),
    /// A query parameter that is not UTF-8 once percent-decoded.
    QueryNotUtf8(&'static str),
    /// The server could not get the memory to hold the body.
    OutOfMemory,
    /// The publish gave an `id`: ids are given by the server.
    IdGiven,
    /// `channel` or `event` in both the query and the JSON body, with
    /// different values.
    Conflicting {
        /// The field.
        field: &'static str,
        /// Its value in the query.
        query: String,
        /// Its value in the JSON body (`None`: `null`).
        body: Option<String>,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::TooLarge(max) => {
                write!(f, "body too large: at most {max} bytes are accepted (--max-body)")
            }
            PublishError::NotUtf8 => f.write_str("body is not valid UTF-8"),
            PublishError::BadJson(e) => write!(f, "body is not valid JSON: {e}"),
            PublishError::NotAnObject => f.write_str(
                "JSON body must be an object such as {\"channel\": \"news\", \"data\": \"hello\"}",
            ),
            PublishError::MissingData => f.write_str("JSON body has no 'data' field"),
            PublishError::NotAString(field) => write!(f, "JSON field '{field}' must be a string"),
            PublishError::TooSlow => {
                write!(
                    f,
                    "body not received in time: a pause of over {} seconds, or over {} seconds in all",
                    crate::listener::IDLE_READ_TIMEOUT.as_secs(),
                    BODY_DEADLINE.as_secs()
                )
            }
            PublishError::Truncated { received, declared } => write!(
                f,
                "body ended after {received} of the {declared} bytes its Content-Length announced; nothing was published"
            ),
            PublishError::Io(e) => write!(f, "reading the body failed: {e}"),
            PublishError::Repeated(field) => write!(
                f,
                "'{field}' given more than once: a publish is one event, with one channel, one event name and one data"
            ),
            PublishError::QueryNotUtf8(field) => {
                write!(f, "query parameter '{field}' is not valid UTF-8 once percent-decoded")
            }
            PublishError::IdGiven => f.write_str(
                "'id' cannot be given: the server numbers events (growing decimal ids, so that a client's Last-Event-ID means everything after it)",
            ),
            PublishError::OutOfMemory => {
                f.write_str("the server has no memory for a body this large now; nothing was published")
            }
            PublishError::Conflicting { field, query, body } => {
                let body = body.as_deref().map_or_else(|| "null".to_string(), |b| format!("{b:?}"));
                write!(
                    f,
                    "'{field}' is {query:?} in the query but {body} in the JSON body: give it once"
                )
            }
        }
    }
}

impl std::error::Error for PublishError {}

/// The most a body's buffer reserves before its bytes arrive.
const RESERVE_AT_MOST: usize = 64 * 1024;

/// Reads a body of at most `max` bytes within [`BODY_DEADLINE`]; with a
/// `declared` length, exactly that many.
///
/// # Errors
/// [`PublishError::TooLarge`] past `max` (at once when `declared` says so),
/// [`PublishError::Truncated`] when the body ends before `declared` bytes,
/// [`PublishError::TooSlow`], or the read error.
pub fn read_body(
    reader: &mut dyn Read,
    declared: Option<usize>,
    max: usize,
) -> Result<Vec<u8>, PublishError> {
    if declared.is_some_and(|len| len > max) {
        return Err(PublishError::TooLarge(max));
    }
    let started = Instant::now();
    // Reserved up front only up to [`RESERVE_AT_MOST`]: a `Content-Length`
    // is a claim, and reserving what it claims (under a large
    // `--max-body`) let one request abort the process before a byte came.
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(max).min(RESERVE_AT_MOST));
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => {
                return match declared {
                    Some(declared) if body.len() < declared => Err(PublishError::Truncated {
                        received: body.len(),
                        declared,
                    }),
                    _ => Ok(body),
                }
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(PublishError::TooSlow)
            }
            Err(e) => return Err(PublishError::Io(e)),
        };
        if body.len() + n > max {
            return Err(PublishError::TooLarge(max));
        }
        body.try_reserve(n).map_err(|_| PublishError::OutOfMemory)?;
        body.extend_from_slice(&chunk[..n]);
        if started.elapsed() > BODY_DEADLINE {
            return Err(PublishError::TooSlow);
        }
    }
}

/// True when a `Content-Type` value means JSON.
pub fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// What a publish's query string says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryFields {
    /// `channel=`, percent-decoded.
    pub channel: Option<String>,
    /// `event=`, percent-decoded.
    pub event: Option<String>,
}

impl QueryFields {
    /// Checks the channel (the default one when none is given) and event
    /// name given, before the body is read: a publish refused for them
    /// is refused before its client is asked for the body.
    ///
    /// # Errors
    /// [`BrokerError`] naming the first problem.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let channel = self.channel.as_deref().unwrap_or(DEFAULT_CHANNEL);
        broker::validate_publish(channel, self.event.as_deref().filter(|e| !e.is_empty()))
    }
}

/// Reads `channel=` and `event=` from a publish's query string.
///
/// # Errors
/// [`PublishError`] for a field given twice, one that is not UTF-8, or an
/// `id` (ids are given by the server).
pub fn parse_query(query: &str) -> Result<QueryFields, PublishError> {
    let mut fields = QueryFields::default();
    for (key, value) in query_pairs(query) {
        let (field, slot) = match key.as_slice() {
            b"channel" => ("channel", &mut fields.channel),
            b"event" => ("event", &mut fields.event),
            b"id" => return Err(PublishError::IdGiven),
            _ => continue,
        };
        if slot.is_some() {
            return Err(PublishError::Repeated(field));
        }
        *slot = Some(query_text(field, value)?);
    }
    Ok(fields)
}

/// Builds the request from the query string, the body and whether it is
/// JSON ([`parse_query`], then [`parse_body`]).
///
/// # Errors
/// [`PublishError`] saying what is wrong with the query or the body.
pub fn parse(query: &str, json: bool, body: Vec<u8>) -> Result<PublishRequest, PublishError> {
    parse_body(parse_query(query)?, json, body)
}

/// Builds the request from the query's fields, the body and whether it is
/// JSON. Raw form: `?channel=&event=`, the body is the data. JSON form:
/// `{"channel", "event", "data"}`, where non-string data is sent as compact
/// JSON; a field missing from the JSON falls back to the query, and one
/// given in both must have the same value in each.
///
/// # Errors
/// [`PublishError`] saying what is wrong with the body.
pub fn parse_body(query: QueryFields, json: bool, body: Vec<u8>) -> Result<PublishRequest, PublishError> {
    let QueryFields {
        mut channel,
        mut event,
    } = query;
    let text = String::from_utf8(body).map_err(|_| PublishError::NotUtf8)?;
    let data = if json {
        // One pass over the body: each member kept as its own text.
        let Members(members) = serde_json::from_str(&text).map_err(|e| {
            if e.classify() == Category::Data {
                // Valid JSON, but not an object.
                PublishError::NotAnObject
            } else {
                PublishError::BadJson(e.to_string())
            }
        })?;
        let mut object = HashMap::with_capacity(members.len());
        for (name, value) in members {
            if name == "id" {
                return Err(PublishError::IdGiven);
            }
            if let Some(field) = ["channel", "event", "data"].into_iter().find(|f| *f == name) {
                if object.contains_key(field) {
                    return Err(PublishError::Repeated(field));
                }
            }
            object.insert(name, value);
        }
        if let Some(v) = object.remove("channel") {
            channel = agree("channel", channel, Some(string_member(&v, "channel")?))?;
        }
        if let Some(v) = object.remove("event") {
            let named = match v.get() {
                "null" => None,
                _ => Some(string_member(&v, "event")?),
            };
            event = agree("event", event, named)?;
        }
        match object.remove("data") {
            Some(v) if v.get().starts_with('"') => string_member(&v, "data")?,
            // Not re-serialized: that would sort object keys and round
            // numbers past 64 bits.
            Some(v) => compact_json(v.get()),
            None => return Err(PublishError::MissingData),
        }
    } else {
        text
    };
    Ok(PublishRequest {
        channel: channel.unwrap_or_else(|| DEFAULT_CHANNEL.to_string()),
        event: event.filter(|e| !e.is_empty()),
        data,
    })
}

/// The value of `field` given in the JSON body, checked against the one
/// the query gave, if any: a publisher that names two channels (or event
/// types) meant one of them, and which one is not for the server to guess.
fn agree(
    field: &'static str,
    query: Option<String>,
    body: Option<String>,
) -> Result<Option<String>, PublishError> {
    match query {
        Some(query) if body.as_ref() != Some(&query) => Err(PublishError::Conflicting { field, query, body }),
        _ => Ok(body),
    }
}

/// A JSON object's members in the order written, repeated names kept.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// `json` (valid JSON) without whitespace outside strings: a non-string
/// `data` as the publisher wrote it (key order, number digits).
fn compact_json(json: &str) -> String {
    let mut compact = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            compact.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            compact.push(c);
        }
    }
    compact
}

/// A query key or value decoded as `form_urlencoded` does (`+` is a
/// space, `%XX` a byte), as bytes: `form_urlencoded` itself would turn
/// bytes that are not UTF-8 into U+FFFD, where a publish refuses them.
fn query_decode(raw: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(&raw.replace('+', " ")).collect()
}

/// The `key=value` pairs of a query string, each key decoded
/// ([`query_decode`]), each value as sent.
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (Vec<u8>, &str)> {
    query.split('&').map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (query_decode(key), value)
    })
}

/// The value of query field `field`, decoded: text, or an error saying it
/// is not UTF-8.
pub(crate) fn query_text(field: &'static str, raw: &str) -> Result<String, PublishError> {
    String::from_utf8(query_decode(raw)).map_err(|_| PublishError::QueryNotUtf8(field))
}

/// A member that must be a JSON string, unescaped.
fn string_member(value: &RawValue, field: &'static str) -> Result<String, PublishError> {
    serde_json::from_str(value.get()).map_err(|e| {
        if value.get().starts_with('"') {
            // A string Rust cannot hold: a lone surrogate escape.
            PublishError::BadJson(format!("'{field}': {e}"))
        } else {
            PublishError::NotAString(field)
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn non_string_data_keeps_its_own_text_made_compact() {
        let body =
            r#"{"channel": "c", "data": { "z" : 1, "a" : [ 12345678901234567890123, 1E3, "x y\" }" ] }}"#;
        let parsed = super::parse("", true, body.as_bytes().to_vec()).unwrap();
        assert_eq!(
            parsed.data,
            r#"{"z":1,"a":[12345678901234567890123,1E3,"x y\" }"]}"#
        );
        let number = super::parse("", true, br#"{"data": 2.50}"#.to_vec()).unwrap();
        assert_eq!(number.data, "2.50");
    }

    #[test]
    fn query_values_are_strict_utf8_and_given_once() {
        let parsed = super::parse("chan%6Eel=a%20b+c&event=caf%C3%A9", false, b"x".to_vec()).unwrap();
        assert_eq!(
            (parsed.channel.as_str(), parsed.event.as_deref()),
            ("a b c", Some("café"))
        );
        let error = super::parse("channel=a&event=%E9", false, b"x".to_vec()).unwrap_err();
        assert!(
            matches!(error, super::PublishError::QueryNotUtf8("event")),
            "{error}"
        );
        let error = super::parse("channel=a&channel=b", false, b"x".to_vec()).unwrap_err();
        assert!(
            matches!(error, super::PublishError::Repeated("channel")),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "'channel' given more than once: a publish is one event, with one channel, one event name and one data"
        );
        // In the JSON form too (a map kept the last); other members may
        // repeat, as they are not read.
        let json = |body: &str| super::parse("", true, body.as_bytes().to_vec());
        for (body, field) in [
            (r#"{"channel": "a", "data": "x", "channel": "b"}"#, "channel"),
            (r#"{"event": "a", "data": "x", "event": "b"}"#, "event"),
            (r#"{"data": "x", "data": "y"}"#, "data"),
        ] {
            let error = json(body).unwrap_err();
            assert!(
                matches!(error, super::PublishError::Repeated(f) if f == field),
                "{body}: {error}"
            );
        }
        let fine =
            json(r#"{"x": 1, "data": "d", "x": 2, "channel": "c"}"#).expect("other members may repeat");
        assert_eq!((fine.channel.as_str(), fine.data.as_str()), ("c", "d"));
        assert!(matches!(json("[1]"), Err(super::PublishError::NotAnObject)));
    }

    #[test]
    fn a_silent_body_is_too_slow_and_the_answer_says_both_limits() {
        struct Silent;
        impl std::io::Read for Silent {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }
        let error = super::read_body(&mut Silent, Some(10), 100).unwrap_err();
        assert!(matches!(error, super::PublishError::TooSlow));
        assert_eq!(
            error.to_string(),
            "body not received in time: a pause of over 2 seconds, or over 10 seconds in all"
        );
    }

    use super::*;

    #[test]
    fn raw_form_takes_query_and_body() {
        let r = parse("channel=news&event=update", false, b"hello".to_vec()).unwrap();
        assert_eq!(
            r,
            PublishRequest {
                channel: "news".into(),
                event: Some("update".into()),
                data: "hello".into()
            }
        );
        let r = parse("", false, Vec::new()).unwrap();
        assert_eq!(
            r,
            PublishRequest {
                channel: "default".into(),
                event: None,
                data: String::new()
            }
        );
    }

    #[test]
    fn raw_form_decodes_percent_escapes() {
        let r = parse("channel=a%2Fb&event=new%20item", false, b"x".to_vec()).unwrap();
        assert_eq!(r.channel, "a/b");
        assert_eq!(r.event.as_deref(), Some("new item"));
    }

    #[test]
    fn an_id_is_refused_in_the_query_and_in_the_json() {
        for (query, body) in [
            ("channel=a&id=5", "{}"),
            ("", r#"{"channel":"a","id":"5","data":"x"}"#),
        ] {
            let error = parse(query, true, body.as_bytes().to_vec()).unwrap_err();
            assert!(
                matches!(error, PublishError::IdGiven),
                "{query} {body}: {error:?}"
            );
            assert!(error.to_string().contains("'id' cannot be given"), "{error}");
        }
    }

    #[test]
    fn a_field_in_both_the_query_and_the_json_must_agree() {
        let same = parse(
            "channel=a&event=e",
            true,
            br#"{"channel":"a","event":"e","data":"x"}"#.to_vec(),
        )
        .expect("the same values twice are fine");
        assert_eq!((same.channel.as_str(), same.event.as_deref()), ("a", Some("e")));
        let error = parse("channel=a", true, br#"{"channel":"b","data":"x"}"#.to_vec()).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"'channel' is "a" in the query but "b" in the JSON body: give it once"#
        );
        let error = parse("event=e", true, br#"{"event":null,"data":"x"}"#.to_vec()).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"'event' is "e" in the query but null in the JSON body: give it once"#
        );
        let only_json = parse("", true, br#"{"event":null,"channel":"c","data":"x"}"#.to_vec()).unwrap();
        assert_eq!((only_json.channel.as_str(), only_json.event), ("c", None));
    }

    #[test]
    fn json_form_with_string_and_structured_data() {
        let r = parse(
            "",
            true,
            br#"{"channel":"news","event":"update","data":"text"}"#.to_vec(),
        )
        .unwrap();
        assert_eq!(r.data, "text");
        assert_eq!(r.event.as_deref(), Some("update"));
        let r = parse(
            "",
            true,
            br#"{"channel":"n","data":{"a": [1, 2], "b": null}}"#.to_vec(),
        )
        .unwrap();
        assert_eq!(r.data, r#"{"a":[1,2],"b":null}"#);
        let r = parse("channel=q", true, br#"{"data":5}"#.to_vec()).unwrap();
        assert_eq!((r.channel.as_str(), r.data.as_str()), ("q", "5"));
    }

    #[test]
    fn json_errors_say_what_is_wrong() {
        assert!(matches!(
            parse("", true, b"{".to_vec()),
            Err(PublishError::BadJson(_))
        ));
        assert!(matches!(
            parse("", true, b"[1]".to_vec()),
            Err(PublishError::NotAnObject)
        ));
        assert!(matches!(
            parse("", true, br#"{"channel":"a"}"#.to_vec()),
            Err(PublishError::MissingData)
        ));
        assert!(matches!(
            parse("", true, br#"{"channel":1,"data":"x"}"#.to_vec()),
            Err(PublishError::NotAString("channel"))
        ));
        assert!(matches!(
            parse("", false, vec![0xff, 0xfe]),
            Err(PublishError::NotUtf8)
        ));
        assert!(matches!(
            parse("", true, br#" "just a string" "#.to_vec()),
            Err(PublishError::NotAnObject)
        ));
        assert!(matches!(
            parse("", true, br#"{"data":"x","event":3}"#.to_vec()),
            Err(PublishError::NotAString("event"))
        ));
        assert!(matches!(
            parse("", true, br#"{"data":"x"} trailing"#.to_vec()),
            Err(PublishError::BadJson(_))
        ));
        assert!(matches!(
            parse("", true, br#"{"data":"\ud800"}"#.to_vec()),
            Err(PublishError::BadJson(e)) if e.starts_with("'data'")
        ));
        let r = parse("", true, br#"{ "data" : "a\nb\u00e9", "event" : null }"#.to_vec()).unwrap();
        assert_eq!(
            (r.data.as_str(), r.event),
            ("a\nb\u{e9}", None),
            "unescaped; null: no name"
        );
    }

    #[test]
    fn content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn body_limits() {
        let mut small: &[u8] = b"12345";
        assert_eq!(read_body(&mut small, Some(5), 5).unwrap(), b"12345");
        let mut short: &[u8] = b"abc";
        assert!(matches!(
            read_body(&mut short, Some(10), 64),
            Err(PublishError::Truncated {
                received: 3,
                declared: 10
            })
        ));
        let mut big: &[u8] = b"123456";
        assert!(matches!(
            read_body(&mut big, None, 5),
            Err(PublishError::TooLarge(5))
        ));
        let mut declared: &[u8] = b"";
        assert!(matches!(
            read_body(&mut declared, Some(6), 5),
            Err(PublishError::TooLarge(5))
        ));
    }
}

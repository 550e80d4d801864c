//! The JSON bodies of the server's answers, written as the spec shows them:
//! members in the order given, `": "` after a key and `", "` between
//! members (`{"id": "7", "channel": "news", "subscribers": 2}`).
//!
//! `serde_json`'s map sorts its keys and writes no spaces; its values are
//! still what writes each member's value, strings escaped as JSON needs.

use serde_json::Value;

/// A JSON object being written, member by member.
#[derive(Debug)]
pub struct JsonObject {
    text: String,
}

impl JsonObject {
    /// An object without members yet.
    pub fn new() -> JsonObject {
        JsonObject {
            text: String::from("{"),
        }
    }

    /// Adds the member `key`: `value` after those added before.
    pub fn member(mut self, key: &str, value: impl Into<Value>) -> JsonObject {
        if self.text.len() > 1 {
            self.text.push_str(", ");
        }
        self.text.push_str(&Value::from(key).to_string());
        self.text.push_str(": ");
        self.text.push_str(&value.into().to_string());
        self
    }

    /// The object's text.
    pub fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

impl Default for JsonObject {
    fn default() -> JsonObject {
        JsonObject::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order_and_the_spec_spacing() {
        let text = JsonObject::new()
            .member("id", "7")
            .member("channel", "news")
            .member("subscribers", 2)
            .finish();
        assert_eq!(text, r#"{"id": "7", "channel": "news", "subscribers": 2}"#);
        assert_eq!(JsonObject::new().finish(), "{}");
    }

    #[test]
    fn strings_are_escaped() {
        let text = JsonObject::new().member("error", "a \"b\"\n\u{1}").finish();
        assert_eq!(text, r#"{"error": "a \"b\"\n\u0001"}"#);
        let back: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back["error"], "a \"b\"\n\u{1}");
    }
}

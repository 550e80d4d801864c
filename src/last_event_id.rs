//! A client's `Last-Event-ID` as it sent it: a decimal number of any size.
//!
//! Channel streams need it as a [`broker::EventId`]; the demo stream goes
//! on counting from it, n + 1 for every n, with no largest id after which
//! the count would have to wrap.

use crate::broker;

/// Digits past this many are no id of ours (a `u64` has 20): such a value
/// is ignored rather than kept for the stream's life.
const MAX_DIGITS: usize = 64;

/// A decimal number without sign or leading zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecimalId(String);

impl DecimalId {
    /// The first id of a count: `1`.
    pub fn one() -> DecimalId {
        DecimalId("1".to_string())
    }

    /// `raw`, surrounding spaces trimmed, when it is 1 to [`MAX_DIGITS`]
    /// ASCII digits (leading zeros are dropped: `007` is 7); otherwise
    /// `None`.
    pub fn parse(raw: &str) -> Option<DecimalId> {
        let digits = raw.trim();
        if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let significant = digits.trim_start_matches('0');
        Some(DecimalId(if significant.is_empty() {
            "0".to_string()
        } else {
            significant.to_string()
        }))
    }

    /// As an id of the broker's, when it fits one.
    pub fn to_event_id(&self) -> Option<broker::EventId> {
        self.0.parse().ok()
    }

    /// Adds one, in place: `99` becomes `100`.
    pub fn increment(&mut self) {
        let mut digits = std::mem::take(&mut self.0).into_bytes();
        let mut carry = true;
        for digit in digits.iter_mut().rev() {
            if *digit == b'9' {
                *digit = b'0';
            } else {
                *digit += 1;
                carry = false;
                break;
            }
        }
        if carry {
            digits.insert(0, b'1');
        }
        // Only ASCII digits were ever stored.
        self.0 = String::from_utf8(digits).unwrap_or_else(|_| "1".to_string());
    }

    /// The next id: `self` + 1.
    pub fn next(mut self) -> DecimalId {
        self.increment();
        self
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_digits_only() {
        assert_eq!(DecimalId::parse(" 42 ").map(|id| id.0), Some("42".into()));
        assert_eq!(DecimalId::parse("007").map(|id| id.0), Some("7".into()));
        assert_eq!(DecimalId::parse("000").map(|id| id.0), Some("0".into()));
        for bad in ["", " ", "+5", "-1", "1e3", "4 2", "0x10", "١٢"] {
            assert_eq!(DecimalId::parse(bad), None, "{bad:?}");
        }
        assert!(DecimalId::parse(&"9".repeat(MAX_DIGITS)).is_some());
        assert_eq!(DecimalId::parse(&"9".repeat(MAX_DIGITS + 1)), None);
    }

    #[test]
    fn counts_past_the_largest_u64() {
        let max = u64::MAX.to_string();
        let id = DecimalId::parse(&max).expect("digits");
        assert_eq!(id.to_event_id(), Some(u64::MAX));
        let next = id.next();
        assert_eq!(next.as_str(), "18446744073709551616");
        assert_eq!(next.to_event_id(), None);
        assert_eq!(DecimalId::parse("0").expect("digits").next().as_str(), "1");
        assert_eq!(DecimalId::parse("1299").expect("digits").next().as_str(), "1300");
        assert_eq!(DecimalId::one().next().as_str(), "2");
    }
}

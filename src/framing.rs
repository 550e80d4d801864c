//! Requests whose body framing is ambiguous, and the connections they came
//! on.
//!
//! tiny_http frames a body by the first `Content-Length` header, reads none
//! for a value that is not a number, and prefers `Transfer-Encoding` to a
//! `Content-Length`. A proxy in front may frame the same bytes otherwise,
//! and either way the bytes tiny_http did not take as the body are read as
//! the connection's next request: a request smuggled inside another one's
//! body. So such a request gets `400`, and its connection is done with
//! (RFC 9112, 6.3): `Request::stop_reading`, as for a stream's head, so
//! that nothing after it is read as a request, and the connection closes
//! once the answer is out.

use tiny_http::Header;

/// What is ambiguous about a request's framing, if anything. A transfer
/// coding other than `chunked` alone counts: tiny_http would take the body
/// as chunked and hand on what the other coding left (a gzip body
/// published as its compressed bytes). So does any transfer coding in an
/// `http10` request: HTTP/1.0 has none, so a 1.0 proxy in front frames the
/// body otherwise (RFC 9112, 6.1: such a message's framing is faulty).
pub fn ambiguity(headers: &[Header], http10: bool) -> Option<String> {
    let codings: Vec<&str> = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"))
        .map(|h| h.value.as_str().trim())
        .collect();
    if let Some(coding) = codings.iter().find(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Some(format!(
            "Transfer-Encoding '{coding}' is not supported; send the body chunked or with a Content-Length"
        ));
    }
    // Two headers are one list (`chunked, chunked`): chunked twice, which
    // tiny_http would decode once.
    if codings.len() > 1 {
        return Some(
            "Transfer-Encoding 'chunked' given more than once; send the body chunked once".to_string(),
        );
    }
    let mut lengths = headers
        .iter()
        .filter(|h| h.field.equiv("Content-Length"))
        .map(|h| h.value.as_str().trim());
    if let Some(first) = lengths.next() {
        if !codings.is_empty() {
            return Some("both Transfer-Encoding and Content-Length; send one".to_string());
        }
        if !first.bytes().all(|b| b.is_ascii_digit()) || first.parse::<u64>().is_err() {
            return Some(format!("Content-Length '{first}' is not a number of bytes"));
        }
        if let Some(other) = lengths.find(|v| *v != first) {
            return Some(format!(
                "Content-Length headers disagree ({first}, {other}); send one"
            ));
        }
    }
    (http10 && !codings.is_empty())
        .then(|| "Transfer-Encoding in an HTTP/1.0 request; send the body with a Content-Length".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(n, v)| Header::from_bytes(n.as_bytes(), v.as_bytes()).unwrap())
            .collect()
    }

    /// [`ambiguity`] of an HTTP/1.1 request.
    fn http11_ambiguity(headers: &[Header]) -> Option<String> {
        ambiguity(headers, false)
    }

    #[test]
    fn http_1_0_has_no_transfer_coding() {
        let http10 = |pairs: &[(&str, &str)]| ambiguity(&headers(pairs), true);
        assert_eq!(http10(&[("Content-Length", "3")]), None);
        assert!(http10(&[("transfer-encoding", "chunked")])
            .unwrap()
            .contains("HTTP/1.0"));
        assert!(
            http10(&[("Transfer-Encoding", "chunked"), ("Content-Length", "3")])
                .unwrap()
                .contains("both")
        );
    }

    #[test]
    fn one_clear_length_or_none_is_unambiguous() {
        assert_eq!(http11_ambiguity(&headers(&[])), None);
        assert_eq!(http11_ambiguity(&headers(&[("Content-Length", "12")])), None);
        assert_eq!(
            http11_ambiguity(&headers(&[("Content-Length", "12"), ("content-length", "12")])),
            None
        );
        assert_eq!(
            http11_ambiguity(&headers(&[("Transfer-Encoding", "chunked")])),
            None
        );
        assert_eq!(
            http11_ambiguity(&headers(&[("Transfer-Encoding", " Chunked ")])),
            None
        );
    }

    #[test]
    fn disagreeing_lengths_a_bad_length_or_both_framings_are_ambiguous() {
        let said = |pairs: &[(&str, &str)]| http11_ambiguity(&headers(pairs)).unwrap();
        assert!(said(&[("Content-Length", "0"), ("Content-Length", "73")]).contains("(0, 73)"));
        assert!(said(&[("Content-Length", "x")]).contains("'x'"));
        assert!(said(&[("Content-Length", "-1")]).contains("'-1'"));
        assert!(said(&[("Content-Length", "1,1")]).contains("not a number"));
        assert!(said(&[("Content-Length", "+5")]).contains("not a number"));
        assert!(said(&[("Content-Length", "")]).contains("not a number"));
        assert!(said(&[("Content-Length", "99999999999999999999999")]).contains("not a number"));
        assert!(said(&[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]).contains("both"));
        assert!(said(&[("Transfer-Encoding", "gzip, chunked")]).contains("'gzip, chunked' is not supported"));
        assert!(said(&[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip")]).contains("'gzip'"));
        assert!(
            said(&[("Transfer-Encoding", "chunked"), ("transfer-encoding", "chunked")])
                .contains("more than once")
        );
    }
}

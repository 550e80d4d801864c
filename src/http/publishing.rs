//! `POST /publish`: who may publish (the page's origin, the token), the
//! checks made on the head before the body is read, and the answer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tiny_http::Request;

use super::{request_header, respond_error, respond_json, target_authority, ApiError};
use crate::broker::PendingFanOut;
use crate::json_text::JsonObject;
use crate::publish::{self, PublishError};
use crate::server::App;
use crate::stream_log::peer_text;

pub(super) fn handle_publish(app: &Arc<App>, mut request: Request, query: &str) {
    // A panic in here still gets a JSON answer (tiny_http would send an
    // empty 500 for the dropped request); `handle_on_connection` logs it.
    let outcome = catch_unwind(AssertUnwindSafe(|| publish_request(app, &mut request, query)));
    match outcome {
        // The subscribers are woken once the answer is out (see
        // `broker::PendingFanOut`): `_fan_out` is dropped last.
        Ok(Ok((body, _fan_out))) => respond_json(app, request, 200, body),
        Ok(Err(error)) => respond_error(app, request, error),
        Err(panic) => {
            respond_error(
                app,
                request,
                ApiError::new(500, "internal error while publishing (logged by the server)").closing(),
            );
            std::panic::resume_unwind(panic);
        }
    }
}

fn publish_request(
    app: &App,
    request: &mut Request,
    query: &str,
) -> Result<(String, Option<PendingFanOut>), ApiError> {
    // A client that sent `Expect: 100-continue` sends no body after a
    // refusal from the head: its connection is closed rather than left
    // waiting for the body until the read timeout.
    let awaits_continue =
        request_header(request, "Expect").is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    let fields =
        check_publish_head(app, request, query).map_err(|e| if awaits_continue { e.closing() } else { e })?;
    let json = request_header(request, "Content-Type").is_some_and(publish::is_json);
    let declared = request.body_length();
    let body = publish::read_body(request.as_reader(), declared, app.config.max_body)
        .map_err(|e| ApiError::from(e).closing())?;
    let event = publish::parse_body(fields, json, body)?;
    crate::fault::panic_if_requested(&event.channel);
    let (published, fan_out) = match &app.redis {
        Some(bus) => (
            bus.publish(&event.channel, event.event.as_deref(), &event.data)?,
            None,
        ),
        None => {
            let (published, fan_out) =
                app.broker
                    .publish_later(&event.channel, event.event.as_deref(), &event.data)?;
            (published, Some(fan_out))
        }
    };
    app.stats.count_published();
    log::debug!(
        "published id={} channel={} subscribers={}",
        published.id,
        event.channel,
        published.subscribers
    );
    let body = JsonObject::new()
        .member("id", published.id.to_string())
        .member("channel", event.channel.as_str())
        .member("subscribers", published.subscribers)
        .finish();
    Ok((body, fan_out))
}

/// What a publish's head alone refuses, checked before `as_reader`, which
/// sends `100 Continue` to a client waiting for it to send the body: the
/// token, a `Content-Length` over `--max-body`, the query's channel and
/// event name. Returns the query's fields.
fn check_publish_head(app: &App, request: &Request, query: &str) -> Result<publish::QueryFields, ApiError> {
    if let Some(origin) = request_header(request, "Origin") {
        let host = target_authority(request.url()).or_else(|| request_header(request, "Host"));
        if !origin_may_publish(origin, host, app.config.cors_origin.as_deref()) {
            let message = match app.config.cors_origin.as_deref() {
                // Sandboxed frames and file:// pages: no origin to name.
                _ if origin == "null" => "a page with an opaque origin (Origin: null: a sandboxed frame, a file:// page) may not publish here: only this server's own pages and the origin of --cors-origin may (--cors-origin '*' allows every origin)".to_string(),
                Some(allowed) => format!(
                    "a page from {origin} may not publish here: only this server's own pages and {allowed} (--cors-origin) may"
                ),
                None => format!(
                    "a page from {origin} may not publish here: only this server's own pages may; start the server with --cors-origin {origin} to allow it"
                ),
            };
            let peer = request.remote_addr().copied();
            log::info!("publish refused peer={}: {message}", peer_text(peer));
            return Err(ApiError::new(403, message));
        }
    }
    if let Some(token) = &app.config.publish_token {
        let given = request_header(request, "Authorization").map(str::trim);
        let presented = given.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("Bearer").then(|| rest.trim())
        });
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()));
        if !ok {
            let message = match (given, presented) {
                (None, _) => "missing 'Authorization: Bearer <token>' header",
                (Some(_), None) => "the Authorization header must be 'Bearer <token>'",
                (Some(_), Some(_)) => "wrong publish token",
            };
            let peer = request.remote_addr().copied();
            log::info!("publish refused peer={}: {message}", peer_text(peer));
            return Err(ApiError::new(401, message).with_header("WWW-Authenticate", "Bearer"));
        }
    }
    // Framing was checked by `handle` (`framing_error`).
    if request
        .body_length()
        .is_some_and(|length| length > app.config.max_body)
    {
        return Err(ApiError::from(PublishError::TooLarge(app.config.max_body)).closing());
    }
    let fields = publish::parse_query(query)?;
    fields.validate()?;
    Ok(fields)
}

/// True when a browser page of `origin` (its `Origin` header) may publish:
/// `--cors-origin` allows it (`*`, or that origin), or it is one of this
/// server's own pages (`/demo`): its host, and its port where the `Host`
/// header has one (a proxy may pass the host alone), are the `Host` the
/// request was sent to. Without this any web page a user opens could
/// publish, without a token, to a server the browser reaches (a "simple"
/// cross-origin POST needs no preflight; CORS only hides the answer).
fn origin_may_publish(origin: &str, host: Option<&str>, allowed: Option<&str>) -> bool {
    if allowed.is_some_and(|a| a == "*" || a == origin) {
        return true;
    }
    let (Some(authority), Some(host)) = (origin.split_once("://").map(|(_, a)| a), host) else {
        return false;
    };
    let host = host.trim();
    if authority.eq_ignore_ascii_case(host) {
        return true;
    }
    // `Host: example.com` from a proxy, for a page of example.com:8443.
    without_port(host) == host && without_port(authority).eq_ignore_ascii_case(host)
}

/// `host[:port]` without its port (`[::1]:80` -> `[::1]`).
fn without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_may_publish_from_this_server_or_the_cors_origin() {
        let may = |origin, host, allowed| origin_may_publish(origin, host, allowed);
        // This server's own page (/demo), directly or behind a proxy that
        // passes the host alone.
        assert!(may("http://127.0.0.1:8000", Some("127.0.0.1:8000"), None));
        assert!(may("http://LOCALHOST:8000", Some("localhost:8000"), None));
        assert!(may("https://example.com", Some("example.com"), None));
        assert!(may("https://example.com:8443", Some("example.com"), None));
        assert!(may("http://[::1]:8000", Some("[::1]:8000"), None));
        // Another port of the same host, another host, no host.
        assert!(!may("http://localhost:3000", Some("localhost:8000"), None));
        assert!(!may("https://evil.example", Some("example.com"), None));
        assert!(!may(
            "https://example.com.evil.example",
            Some("example.com"),
            None
        ));
        assert!(!may("null", Some("example.com"), None));
        assert!(!may("http://127.0.0.1:8000", None, None));
        // --cors-origin.
        assert!(may(
            "https://app.example",
            Some("example.com"),
            Some("https://app.example")
        ));
        assert!(!may(
            "https://other.example",
            Some("example.com"),
            Some("https://app.example")
        ));
        assert!(may("null", Some("example.com"), Some("*")));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}

//! The `--redis` URL: `redis://[[username]:password@]host[:port][/db]`,
//! parsed by hand (pure, no I/O).
//!
//! - `host` is a name, an IPv4 address or an IPv6 address in brackets
//!   (`[::1]`); names are ASCII (letters, digits, `-`, `.`, `_`).
//! - `port` defaults to 6379, `db` to 0.
//! - `username` and `password` are percent-decoded (`%40` for `@`); a
//!   password makes the connection send `AUTH`, with the username if one is
//!   given (a username without a password is not sent).
//! - A query (`?...`) or fragment (`#...`) is refused rather than ignored,
//!   so that an option written there is not silently dropped.

use std::fmt;
use std::net::Ipv6Addr;

/// Port Redis listens on unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 6379;

/// A parsed `redis://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address, IPv6 without its brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database number, for `SELECT`.
    pub db: u32,
    /// ACL user name (percent-decoded), if any.
    pub username: Option<Vec<u8>>,
    /// Password (percent-decoded), if any.
    pub password: Option<Vec<u8>>,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("server", &self.server())
            .field(
                "username",
                &self.username.as_ref().map(|u| String::from_utf8_lossy(u)),
            )
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why a URL could not be parsed: a short lowercase reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

fn error(reason: impl Into<String>) -> UrlError {
    UrlError(reason.into())
}

impl RedisUrl {
    /// Parses `url`.
    ///
    /// # Errors
    /// [`UrlError`] saying what is wrong: another scheme than `redis://`, a
    /// missing or malformed host, a port or database that is not a number in
    /// range, a bad percent escape, or a query or fragment.
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| error("the scheme must be redis://"))?;
        if rest.contains(['?', '#']) {
            return Err(error("query parameters and fragments (?, #) are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (info, None),
                };
                let user = percent_decode(user, "username")?;
                let password = password.map(|p| percent_decode(p, "password")).transpose()?;
                (
                    (!user.is_empty()).then_some(user),
                    password.filter(|p| !p.is_empty()),
                )
            }
        };
        let (host, port) = parse_host_port(hostport)?;
        let db = match path {
            "" => 0,
            db if db.bytes().all(|b| b.is_ascii_digit()) => db
                .parse()
                .map_err(|_| error(format!("database '{db}' is out of range")))?,
            db => {
                return Err(error(format!(
                    "database '{}' is not a number",
                    db.escape_default()
                )))
            }
        };
        Ok(RedisUrl {
            host,
            port,
            db,
            username,
            password,
        })
    }

    /// Where Redis is, without credentials, for messages: `host:port/db`
    /// (`[v6]:port/db`).
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            format!("{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

/// `host[:port]` or `[v6][:port]`.
fn parse_host_port(text: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (v6, after) = bracketed
            .split_once(']')
            .ok_or_else(|| error("an IPv6 address lacks its closing ']'"))?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| error(format!("'{}' is not an IPv6 address", v6.escape_default())))?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or_else(|| {
                error(format!(
                    "unexpected '{}' after the IPv6 address",
                    after.escape_default()
                ))
            })?),
        };
        (v6, port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(error("the host is missing"));
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(error(format!(
            "'{}' is not a host name (ASCII letters, digits, '-', '.', '_')",
            host.escape_default()
        )));
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => {
                return Err(error(format!(
                    "port '{}' is not a number from 1 to 65535",
                    text.escape_default()
                )))
            }
        },
    };
    Ok((host.to_string(), port))
}

/// Decodes `%XX` escapes in `text` (the `what` of the URL, for messages).
fn percent_decode(text: &str, what: &str) -> Result<Vec<u8>, UrlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escape = bytes.get(i + 1..i + 3).and_then(|hex| {
                let hex = std::str::from_utf8(hex).ok()?;
                u8::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            });
            let Some(byte) = escape else {
                return Err(error(format!(
                    "the {what} has a '%' not followed by two hex digits (write '%25' for '%')"
                )));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> RedisUrl {
        RedisUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn reason(url: &str) -> String {
        match RedisUrl::parse(url) {
            Ok(parsed) => panic!("{url} was accepted: {parsed:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let url = parse("redis://localhost");
        assert_eq!(
            url,
            RedisUrl {
                host: "localhost".into(),
                port: 6379,
                db: 0,
                username: None,
                password: None,
            }
        );
        assert_eq!(url.server(), "localhost:6379/0");
        assert_eq!(parse("redis://h/").server(), "h:6379/0");
        assert_eq!(parse("redis://h:/").server(), "h:6379/0");
        assert_eq!(parse("redis://10.0.0.1:7000/15").server(), "10.0.0.1:7000/15");
    }

    #[test]
    fn password_only() {
        let url = parse("redis://:p%40ss@h:1/2");
        assert_eq!(url.username, None);
        assert_eq!(url.password.as_deref(), Some(&b"p@ss"[..]));
        assert_eq!(url.server(), "h:1/2");
        assert!(!format!("{url:?}").contains("p@ss"), "{url:?}");
    }

    #[test]
    fn user_and_password() {
        let url = parse("redis://app%2Dnode:s3cr%3At@redis.example:6380/1");
        assert_eq!(url.username.as_deref(), Some(&b"app-node"[..]));
        assert_eq!(url.password.as_deref(), Some(&b"s3cr:t"[..]));
        assert_eq!(url.server(), "redis.example:6380/1");
        // The last '@' ends the credentials; the first ':' splits them.
        let url = parse("redis://u:a:b@c@h");
        assert_eq!(url.username.as_deref(), Some(&b"u"[..]));
        assert_eq!(url.password.as_deref(), Some(&b"a:b@c"[..]));
        // A user alone sends no AUTH.
        let url = parse("redis://u@h");
        assert_eq!(url.username.as_deref(), Some(&b"u"[..]));
        assert_eq!(url.password, None);
    }

    #[test]
    fn ipv6() {
        let url = parse("redis://[::1]:6380");
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 6380);
        assert_eq!(url.server(), "[::1]:6380/0");
        assert_eq!(parse("redis://[fe80::1]/3").server(), "[fe80::1]:6379/3");
        assert!(reason("redis://[::1").contains("']'"));
        assert!(reason("redis://[nope]:1").contains("not an IPv6 address"));
        assert!(reason("redis://[::1]x").contains("unexpected 'x'"));
        assert!(reason("redis://::1:6379").contains("host is missing"));
    }

    #[test]
    fn bad_port_or_db() {
        assert!(reason("redis://h:abc/0").contains("port 'abc'"));
        assert!(reason("redis://h:65536").contains("port '65536'"));
        assert!(reason("redis://h:0").contains("port '0'"));
        assert!(reason("redis://h:+1").contains("port '+1'"));
        assert!(reason("redis://h/x").contains("database 'x' is not a number"));
        assert!(reason("redis://h/-1").contains("not a number"));
        assert!(reason("redis://h/0/1").contains("not a number"));
        assert!(reason("redis://h/99999999999").contains("out of range"));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(reason("http://h").contains("scheme"));
        assert!(reason("rediss://h").contains("scheme"));
        assert!(reason("redis://").contains("host is missing"));
        assert!(reason("redis://:p@/0").contains("host is missing"));
        assert!(reason("redis://h/0?protocol=resp3").contains("not supported"));
        assert!(reason("redis://h#x").contains("not supported"));
        assert!(reason("redis://h st").contains("not a host name"));
        assert!(reason("redis://hôte").contains("not a host name"));
        assert!(reason("redis://:p%zz@h").contains("password"));
        assert!(reason("redis://:p%4@h").contains("password"));
        assert!(reason("redis://u%+1:p@h").contains("username"));
    }
}

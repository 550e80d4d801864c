//! Options and environment variables turned into a validated [`Config`].
//!
//! Every option is a flag (`--port 8000` or `--port=8000`) and an environment
//! variable (`TINYSSE_PORT`); a flag wins over the variable, the variable over
//! the default. Parsing the raw words is `lexopt`'s job; turning them into
//! checked values is this module's.

use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

/// Everything the server needs to know to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to bind.
    pub host: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Interval of the demo ticker on `GET /`; `None` turns it off.
    pub tick_interval: Option<Duration>,
    /// Interval of `: ping` comments on every stream.
    pub ping_interval: Duration,
    /// Events kept per channel for replay.
    pub history: usize,
    /// Events a subscriber may fall behind before it is dropped.
    pub queue_size: usize,
    /// Open streams at most.
    pub max_connections: usize,
    /// Channels kept at most.
    pub max_channels: usize,
    /// A write that takes longer ends the stream.
    pub write_timeout: Duration,
    /// Largest publish body in bytes.
    pub max_body: usize,
    /// Bearer token required by `POST /publish`, if set.
    pub publish_token: Option<String>,
    /// Value of `Access-Control-Allow-Origin`, if set.
    pub cors_origin: Option<String>,
    /// `retry:` in milliseconds sent when a stream opens, if set.
    pub retry: Option<u64>,
    /// Log level.
    pub log: log::LevelFilter,
    /// Redis URL; when set, channels are shared through Redis.
    pub redis: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8000,
            tick_interval: Some(Duration::from_secs(5)),
            ping_interval: Duration::from_secs(15),
            history: 1000,
            queue_size: 256,
            max_connections: 10_000,
            max_channels: 10_000,
            write_timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
            publish_token: None,
            cors_origin: None,
            retry: None,
            log: log::LevelFilter::Info,
            redis: None,
        }
    }
}

impl Config {
    /// The warning to print when the server can be reached from other
    /// machines and anyone reaching it could publish: a non-loopback
    /// `--host` without `--publish-token`.
    pub fn exposure_warning(&self) -> Option<String> {
        let loopback = self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback && self.publish_token.is_none()).then(|| {
            format!(
                "listening on {} without --publish-token: anyone who can reach this address can publish",
                self.host
            )
        })
    }
}

/// A bad option or value, with the words that were wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Run(Box<Config>),
    /// Print the help text.
    Help,
    /// Print the version.
    Version,
}

/// One option: its flag, what it takes, its default as shown by `--help`.
struct OptionSpec {
    flag: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        flag: "host",
        value: "ADDR",
        default: "127.0.0.1",
        help: "address to listen on",
    },
    OptionSpec {
        flag: "port",
        value: "PORT",
        default: "8000",
        help: "port to listen on (0: any free port)",
    },
    OptionSpec {
        flag: "tick-interval",
        value: "DURATION",
        default: "5s",
        help: "demo event interval on GET / (0 turns it off)",
    },
    OptionSpec {
        flag: "ping-interval",
        value: "DURATION",
        default: "15s",
        help: "interval of ': ping' comments on every stream",
    },
    OptionSpec {
        flag: "history",
        value: "N",
        default: "1000",
        help: "events kept per channel for Last-Event-ID replay",
    },
    OptionSpec {
        flag: "queue-size",
        value: "N",
        default: "256",
        help: "events a subscriber may fall behind before it is dropped",
    },
    OptionSpec {
        flag: "max-connections",
        value: "N",
        default: "10000",
        help: "open streams at most; more get 503",
    },
    OptionSpec {
        flag: "max-channels",
        value: "N",
        default: "10000",
        help: "channels kept at most (idle ones are evicted)",
    },
    OptionSpec {
        flag: "write-timeout",
        value: "DURATION",
        default: "10s",
        help: "a write taking longer, or sent data unacknowledged that long, ends the stream",
    },
    OptionSpec {
        flag: "max-body",
        value: "SIZE",
        default: "64KiB",
        help: "largest publish body (bytes, or with KiB/MiB; 64MiB at most)",
    },
    OptionSpec {
        flag: "publish-token",
        value: "TOKEN",
        default: "none",
        help: "require 'Authorization: Bearer TOKEN' on POST /publish",
    },
    OptionSpec {
        flag: "cors-origin",
        value: "ORIGIN",
        default: "none",
        help: "allow this browser origin (or *) to subscribe and publish",
    },
    OptionSpec {
        flag: "retry",
        value: "MILLIS",
        default: "none",
        help: "reconnect delay sent as 'retry:' when a stream opens",
    },
    OptionSpec {
        flag: "log",
        value: "LEVEL",
        default: "info",
        help: "off, error, warn, info, debug or trace",
    },
    OptionSpec {
        flag: "redis",
        value: "URL",
        default: "none",
        help: "share channels between nodes through Redis (redis://host:port/db)",
    },
];

/// The environment variable of an option: `TINYSSE_` and the flag in capitals.
pub fn env_name(flag: &str) -> String {
    format!("TINYSSE_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// The `--help` text, listing every option with its variable and default.
pub fn help_text() -> String {
    let mut text = String::from(
        "tinysse - a small Server-Sent Events push server\n\n\
         Usage: tinysse [OPTIONS]\n\n\
         Every option can also be set by its environment variable; a flag wins.\n\
         Durations: 500ms, 15s, 2m, 1h (a bare number is seconds).\n\n\
         Options:\n",
    );
    for opt in OPTIONS {
        let left = format!("--{} <{}>", opt.flag, opt.value);
        text.push_str(&format!(
            "  {left:<28} {} [default: {}] [env: {}]\n",
            opt.help,
            opt.default,
            env_name(opt.flag)
        ));
    }
    text.push_str("  -h, --help                   print this help\n");
    text.push_str("  -V, --version                print the version\n");
    text
}

/// Parses command-line words (without the program name) and environment
/// variables, read through `env`, into a [`Command`].
///
/// # Errors
/// [`ConfigError`] naming the option and the bad value.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = OsString>,
    E: Fn(&str) -> Option<String>,
{
    use lexopt::Arg;

    let mut given: Vec<(&'static str, String)> = Vec::new();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| ConfigError::new(e.to_string()))? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(Command::Help),
            Arg::Short('V') | Arg::Long("version") => return Ok(Command::Version),
            Arg::Long(name) => {
                let name = name.to_string();
                let Some(spec) = OPTIONS.iter().find(|o| o.flag == name) else {
                    return Err(ConfigError::new(format!(
                        "unknown option '--{name}' (see --help)"
                    )));
                };
                let value = parser
                    .value()
                    .map_err(|_| ConfigError::new(format!("option '--{name}' needs a value")))?
                    .into_string()
                    .map_err(|_| ConfigError::new(format!("value of '--{name}' is not UTF-8")))?;
                given.push((spec.flag, value));
            }
            other => return Err(ConfigError::new(format!("{} (see --help)", other.unexpected()))),
        }
    }

    let mut config = Config::default();
    for spec in OPTIONS {
        let from_flag = given.iter().rev().find(|(f, _)| *f == spec.flag);
        let (source, value) = match from_flag {
            Some((_, v)) => (format!("--{}", spec.flag), v.clone()),
            None => match env(&env_name(spec.flag)) {
                Some(v) => (env_name(spec.flag), v),
                None => continue,
            },
        };
        apply(&mut config, spec.flag, &value)
            .map_err(|why| ConfigError::new(format!("invalid value '{value}' for {source}: {why}")))?;
    }
    Ok(Command::Run(Box::new(config)))
}

fn apply(config: &mut Config, flag: &str, value: &str) -> Result<(), String> {
    match flag {
        "host" => {
            if value.is_empty() {
                return Err("expected an address such as 127.0.0.1 or 0.0.0.0".into());
            }
            // An IPv6 address as URLs write it, `[::1]`, is taken bare.
            let bare = value.strip_prefix('[').and_then(|v| v.strip_suffix(']'));
            config.host = match bare {
                Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner.to_string(),
                Some(_) => return Err("expected an IPv6 address between the brackets, such as [::1]".into()),
                None => value.to_string(),
            };
        }
        "port" => config.port = value.parse().map_err(|_| "expected a port from 0 to 65535")?,
        "tick-interval" => {
            let d = parse_duration(value)?;
            config.tick_interval = (!d.is_zero()).then_some(d);
        }
        "ping-interval" => config.ping_interval = positive_duration(value)?,
        "history" => config.history = parse_count(value, 0)?,
        "queue-size" => config.queue_size = parse_count(value, 1)?,
        "max-connections" => config.max_connections = parse_count(value, 1)?,
        "max-channels" => config.max_channels = parse_count(value, 1)?,
        "write-timeout" => config.write_timeout = positive_duration(value)?,
        "max-body" => {
            let size = parse_size(value)?;
            if size > MAX_BODY_LIMIT {
                return Err(format!(
                    "at most {}MiB: a body is held in memory, and in each channel's history",
                    MAX_BODY_LIMIT >> 20
                ));
            }
            config.max_body = size;
        }
        // Empty is refused, not taken for "no token": an unset variable in
        // an environment file would otherwise turn the check off unseen.
        "publish-token" if value.is_empty() => {
            return Err("an empty token: give one, or leave the option out to publish without".into())
        }
        // The token a publisher presents is trimmed: this one could never match.
        "publish-token" if value.trim() != value => {
            return Err(
                "a token that starts or ends with white space, which no publisher could present".into(),
            )
        }
        // A header keeps a byte outside ASCII only as DEL: such a token
        // could never match either.
        "publish-token" if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => return Err(
            "a token with a character outside printable ASCII, which no publisher could present in a header"
                .into(),
        ),
        "publish-token" => config.publish_token = Some(value.to_string()),
        "cors-origin" => config.cors_origin = parse_origin(value)?,
        "retry" => config.retry = Some(value.parse().map_err(|_| "expected milliseconds, such as 3000")?),
        "log" => {
            config.log = value
                .parse()
                .map_err(|_| "expected off, error, warn, info, debug or trace")?
        }
        "redis" => {
            if !value.starts_with("redis://") {
                return Err("expected a URL such as redis://127.0.0.1:6379/0".into());
            }
            config.redis = Some(value.to_string());
        }
        _ => unreachable!("every option in OPTIONS is applied"),
    }
    Ok(())
}

/// `*` or one browser origin, `scheme://host[:port]`, as browsers send it in
/// `Origin`: the browser compares the answer's `Access-Control-Allow-Origin`
/// with it byte for byte, so a path, a trailing slash or capitals would turn
/// CORS off without a word, and a control character would break the stream
/// head it is written into. Empty means none.
fn parse_origin(value: &str) -> Result<Option<String>, String> {
    const HINT: &str = "expected * or an origin such as https://app.example or \
                        http://localhost:3000 (lowercase, no path, no trailing slash)";
    if value.is_empty() {
        return Ok(None);
    }
    if value == "*" {
        return Ok(Some(value.to_string()));
    }
    if value == "null" {
        return Err(
            "'null' is the Origin of sandboxed and file:// pages, which any page can \
                    make for itself: it cannot be allowed alone (* allows every origin)"
                .into(),
        );
    }
    let (scheme, host) = value.split_once("://").ok_or(HINT)?;
    if !host.is_ascii() {
        return Err(
            "write the host in its ASCII form (xn--... for an international name), as browsers send it"
                .into(),
        );
    }
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._:[]".contains(c));
    if !(scheme_ok && host_ok) {
        return Err(HINT.into());
    }
    if matches!(scheme, "file" | "ws" | "wss") {
        return Err(format!(
            "no page sends an Origin with {scheme}:// (a file:// page sends 'null'); {HINT}"
        ));
    }
    // What a browser would send as this origin's port, if it is one.
    let (name, port) = split_port(host).ok_or_else(|| match host.ends_with(':') {
        true => format!("a ':' without a port; {HINT}"),
        false => HINT.to_string(),
    })?;
    let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
    if let Some(canonical) = canonical_address(name)? {
        if canonical != name {
            return Err(format!(
                "write the address as browsers send it: {scheme}://{canonical}{port_part}"
            ));
        }
    } else if name.is_empty() || name.contains([':', '[', ']']) {
        return Err(HINT.into());
    }
    if let Some(port) = port {
        let number = port
            .parse::<u16>()
            .ok()
            .filter(|&n| n > 0 && !port.starts_with('0'))
            .ok_or_else(|| {
                format!("port {port:?}: expected a number from 1 to 65535, without leading zeros")
            })?;
        let default = match scheme {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        if default == Some(number) {
            return Err(format!(
                "a browser leaves the default port out of the Origin it sends: write {scheme}://{name}"
            ));
        }
    }
    Ok(Some(value.to_string()))
}

/// An origin's host `name` that is an IP address, as browsers write it
/// (`[::1]`, `127.0.0.1`), or `None` for a domain name. An IPv4 address
/// in another form (leading zeros, hex, fewer parts: browsers read any
/// name whose last part is a number so) is an error, its canonical form
/// left to the user.
fn canonical_address(name: &str) -> Result<Option<String>, String> {
    if let Some(inner) = name.strip_prefix('[') {
        let address = inner
            .strip_suffix(']')
            .and_then(|inner| inner.parse::<std::net::Ipv6Addr>().ok())
            .ok_or_else(|| format!("{name:?} is not an IPv6 address"))?;
        return Ok(Some(format!("[{address}]")));
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = !last.is_empty() && (last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x"));
    if !numeric {
        return Ok(None);
    }
    match name.parse::<std::net::Ipv4Addr>() {
        Ok(address) => Ok(Some(address.to_string())),
        Err(_) => Err(format!(
            "{name:?}: write an IPv4 address in plain dotted decimal (127.0.0.1), as browsers send it"
        )),
    }
}

/// `host` (`name`, `name:port`, `[v6]` or `[v6]:port`) as its name and its
/// port, if it has one; `None` if it is neither (a colon and no port).
fn split_port(host: &str) -> Option<(&str, Option<&str>)> {
    let name_end = if host.starts_with('[') {
        host.find(']')? + 1
    } else {
        host.find(':').unwrap_or(host.len())
    };
    let (name, rest) = host.split_at(name_end);
    match rest.strip_prefix(':') {
        None if rest.is_empty() => Some((name, None)),
        None => None,
        Some("") => None,
        Some(port) => Some((name, Some(port))),
    }
}

/// The largest `--max-body`: an event is a notification, and each one is
/// kept whole in memory while it is read, parsed and kept for replay.
const MAX_BODY_LIMIT: usize = 64 << 20;

fn parse_count(value: &str, min: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("expected a whole number of at least {min}")),
    }
}

fn positive_duration(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// The longest duration any option takes: a year (longer ones overflowed
/// the clock arithmetic of streams).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `500ms`, `15s`, `2m`, `1h`, or a bare number of seconds, at most
/// [`MAX_DURATION`].
///
/// # Errors
/// A message saying what a duration looks like.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration such as 500ms, 15s or 2m";
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().map_err(|_| HINT)?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or(HINT)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or(HINT)?),
        _ => return Err(HINT.into()),
    };
    if d > MAX_DURATION {
        return Err("at most a year (8760h)".into());
    }
    Ok(d)
}

/// Parses a byte size: `65536`, `64KiB`, `64k`, `1MiB`, `1M`.
fn parse_size(value: &str) -> Result<usize, String> {
    const HINT: &str = "expected a size such as 65536, 64KiB or 1MiB";
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: usize = digits.parse().map_err(|_| HINT)?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(HINT.into()),
    };
    match n.checked_mul(factor) {
        Some(size) if size > 0 => Ok(size),
        _ => Err(HINT.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match parse(args.iter().map(OsString::from), lookup)? {
            Command::Run(config) => Ok(*config),
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.port, 8000);
        assert_eq!(c.tick_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.ping_interval, Duration::from_secs(15));
        assert_eq!(c.max_body, 65536);
    }

    #[test]
    fn flags_and_env_with_flag_winning() {
        let c = run(
            &["--port", "9000", "--tick-interval=500ms", "--retry", "3000"],
            &[
                ("TINYSSE_PORT", "7000"),
                ("TINYSSE_PING_INTERVAL", "2m"),
                ("TINYSSE_MAX_BODY", "1KiB"),
            ],
        )
        .unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.tick_interval, Some(Duration::from_millis(500)));
        assert_eq!(c.ping_interval, Duration::from_secs(120));
        assert_eq!(c.max_body, 1024);
        assert_eq!(c.retry, Some(3000));
    }

    #[test]
    fn zero_tick_interval_turns_the_ticker_off() {
        assert_eq!(run(&["--tick-interval", "0"], &[]).unwrap().tick_interval, None);
    }

    #[test]
    fn bad_values_name_the_option_and_value() {
        let err = run(&["--port", "http"], &[]).unwrap_err().to_string();
        assert!(err.contains("'http'") && err.contains("--port"), "{err}");
        let err = run(&[], &[("TINYSSE_PING_INTERVAL", "5 parsecs")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TINYSSE_PING_INTERVAL"), "{err}");
        assert!(run(&["--ping-interval", "0"], &[]).is_err());
        assert!(run(&["--queue-size", "0"], &[]).is_err());
        assert!(run(&["--bogus", "1"], &[]).is_err());
        assert!(run(&["--port"], &[]).is_err());
        assert!(run(&["stray"], &[]).is_err());
    }

    #[test]
    fn an_ipv6_host_may_come_in_brackets() {
        let host = |v: &str| run(&["--host", v], &[]).map(|c| c.host);
        assert_eq!(host("[::1]"), Ok("::1".into()));
        assert_eq!(host("::1"), Ok("::1".into()));
        assert!(host("[localhost]")
            .unwrap_err()
            .to_string()
            .contains("between the brackets"));
        assert!(run(&["--host", "[::1]"], &[])
            .unwrap()
            .exposure_warning()
            .is_none());
    }

    #[test]
    fn max_body_stops_at_64_mib() {
        assert_eq!(
            run(&["--max-body", "64MiB"], &[]).map(|c| c.max_body),
            Ok(64 << 20)
        );
        for too_big in ["65MiB", "65536MiB", "18446744073709551615"] {
            let err = run(&["--max-body", too_big], &[]).unwrap_err().to_string();
            assert!(err.contains("at most 64MiB"), "{too_big}: {err}");
        }
    }

    #[test]
    fn non_loopback_without_token_warns() {
        let warn = |host: &str, token: Option<&str>| {
            let config = Config {
                host: host.into(),
                publish_token: token.map(String::from),
                ..Config::default()
            };
            config.exposure_warning()
        };
        assert!(warn("0.0.0.0", None).is_some_and(|w| w.contains("--publish-token")));
        assert!(warn("192.0.2.7", None).is_some());
        assert!(warn("::", None).is_some());
        assert!(warn("0.0.0.0", Some("secret")).is_none());
        assert!(warn("127.0.0.1", None).is_none());
        assert!(warn("::1", None).is_none());
        assert!(warn("localhost", None).is_none());
    }

    #[test]
    fn cors_origin_is_star_or_an_origin_as_browsers_send_it() {
        let origin = |v: &str| run(&["--cors-origin", v], &[]).map(|c| c.cors_origin);
        assert_eq!(origin("*"), Ok(Some("*".into())));
        assert_eq!(
            origin("https://app.example"),
            Ok(Some("https://app.example".into()))
        );
        assert_eq!(
            origin("http://localhost:3000"),
            Ok(Some("http://localhost:3000".into()))
        );
        assert_eq!(origin("http://[::1]:8080"), Ok(Some("http://[::1]:8080".into())));
        assert_eq!(origin(""), Ok(None));
        for bad in [
            "https://app.example/",
            "https://app.example/path",
            "https://App.example",
            "app.example",
            "https://",
            "https://a.example\r",
            "https://a.example, https://b.example",
            "https://a.example:",
            "http://[::1",
            "http://::1",
        ] {
            let err = origin(bad).unwrap_err().to_string();
            assert!(
                err.contains("--cors-origin") && err.contains("no trailing slash"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn cors_origin_hosts_are_as_a_browser_would_send_them() {
        let origin = |v: &str| run(&["--cors-origin", v], &[]).map(|c| c.cors_origin);
        // Docker Compose service names: Chromium sends them as they are.
        assert_eq!(
            origin("http://web_app:3000"),
            Ok(Some("http://web_app:3000".into()))
        );
        assert_eq!(
            origin("http://127.0.0.1:3000"),
            Ok(Some("http://127.0.0.1:3000".into()))
        );
        assert_eq!(
            origin("chrome-extension://abcdef"),
            Ok(Some("chrome-extension://abcdef".into()))
        );
        for (bad, says) in [
            ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
            ("http://[::1:8080", "expected * or an origin"),
            ("http://[::g]", "not an IPv6 address"),
            ("http://127.000.0.1:3000", "plain dotted decimal"),
            ("http://0x7f.0.0.1", "plain dotted decimal"),
            ("http://127.1", "plain dotted decimal"),
            ("http://b\u{fc}cher.example", "xn--"),
            ("null", "sandboxed"),
            ("file://x", "file://"),
            ("ws://x", "ws://"),
            ("http://x:", "without a port"),
        ] {
            let err = origin(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn cors_origin_ports_are_as_a_browser_would_send_them() {
        let origin = |v: &str| run(&["--cors-origin", v], &[]).map(|c| c.cors_origin);
        assert_eq!(
            origin("https://a.example:8443"),
            Ok(Some("https://a.example:8443".into()))
        );
        assert_eq!(
            origin("http://a.example:443"),
            Ok(Some("http://a.example:443".into()))
        );
        for (default, fix) in [
            ("https://a.example:443", "write https://a.example"),
            ("http://a.example:80", "write http://a.example"),
            ("http://[::1]:80", "write http://[::1]"),
        ] {
            let err = origin(default).unwrap_err().to_string();
            assert!(
                err.contains("default port") && err.contains(fix),
                "{default}: {err}"
            );
        }
        for bad in [
            "https://a.example:99999",
            "https://a.example:0",
            "https://a.example:0080",
            "https://a.example:8:8",
            "https://a.example:8x",
        ] {
            let err = origin(bad).unwrap_err().to_string();
            assert!(err.contains("from 1 to 65535"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert!(parse_duration("8761h").unwrap_err().contains("at most a year"));
        assert!(parse_duration("9223372036854775807").is_err());
    }

    #[test]
    fn help_lists_every_option_with_default_and_env() {
        let help = help_text();
        for opt in OPTIONS {
            assert!(help.contains(&format!("--{}", opt.flag)), "{}", opt.flag);
            assert!(help.contains(&env_name(opt.flag)), "{}", opt.flag);
        }
        assert!(help.contains("[default: 8000]"));
    }
}

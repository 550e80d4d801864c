//! Several nodes sharing channels through Redis (`--redis URL`).
//!
//! Redis holds the truth; each node's [`Broker`] is a replica that its
//! streams read from, so streaming, replay and slow-subscriber handling stay
//! exactly those of the in-memory broker.
//!
//! - **Publish** runs one Lua script (atomic in Redis) that assigns the next
//!   id, `max(last + 1, microseconds of Redis TIME, node's newest id + 1)`,
//!   kept in `tinysse:last-id`, and appends the event with stream id `<id>-0`
//!   both to its channel's stream `tinysse:channel:<name>` (`MAXLEN ~
//!   --history`, for replay) and to the feed `tinysse:feed` (`MAXLEN ~`
//!   [`FEED_LEN`], every channel in id order). The node answers `200` only
//!   once the script has returned, so never for an event that is not stored.
//! - **Live**: one reader thread per node (module `redis_reader`) reads
//!   the feed with `XREAD BLOCK` and appends each entry, in order, to the
//!   local broker with its id ([`Broker::append`]), which keeps the broker's
//!   invariant that events enter the rings in increasing id order.
//! - **Replay**: a client that connects with `Last-Event-ID` to a node that
//!   did not see those events (it started later, or evicted the channel) gets
//!   them because the channel's ring is back-filled from its Redis stream
//!   first ([`RedisBus::backfill`]).
//! - **Faults**: while Redis is unreachable publishes get `503` at once,
//!   streams stay open with their pings, and the reader reconnects with
//!   backoff and resumes the feed after the last entry it applied.
//!
//! Redis is spoken to through the small RESP2 client of module `resp`,
//! over one TCP connection per reader and a few pooled ones for publishes
//! and back-fills; the URL is parsed by module `redis_url`.
//!
//! Limits: one Redis server (not Redis Cluster: the script touches several
//! keys); each event is stored twice (feed and channel stream); a publish
//! that Redis received but did not confirm is answered `503` and may come
//! twice if the client retries; a back-fill waits for Redis on the stream's
//! thread (0.5 s per step at most, if Redis hangs); after a Redis
//! restart without persistence ids keep growing thanks to the clock and to
//! the nodes raising `tinysse:last-id` again, unless Redis' clock went back.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::broker::{self, Broker, BrokerError, EventId, Published};
use crate::redis_reply::{self, parse_entries};
use crate::redis_url::RedisUrl;
use crate::resp::{Command, Connection, RespError};

/// Key of the newest id assigned.
pub const LAST_ID_KEY: &str = "tinysse:last-id";

/// Key of the feed: every event of every channel, in id order.
pub const FEED_KEY: &str = "tinysse:feed";

/// Entries the feed keeps (approximately): how far a node may fall behind
/// the feed and still catch up from it alone.
pub const FEED_LEN: usize = 10_000;

/// How long opening a connection to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a publish waits for Redis to answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a publish waits for its event to reach this node's broker, so
/// that its streams have it when the `200` goes out.
const APPLY_WAIT: Duration = Duration::from_millis(500);

/// How long a back-fill waits for Redis: the stream's client waits for its
/// head meanwhile.
const BACKFILL_TIMEOUT: Duration = Duration::from_millis(500);

/// Idle publish connections kept.
const POOL_SIZE: usize = 8;

/// Publishes (and back-fills) talking to Redis at once, at most, each on a
/// connection of its own: past it a publish gets `503` rather than one more
/// connection (and descriptor). Requests are answered on their connections'
/// threads, so nothing else bounds how many come at once.
const MAX_IN_USE: usize = 64;

/// The key of a channel's stream.
pub fn channel_key(channel: &str) -> String {
    format!("tinysse:channel:{channel}")
}

/// Assigns the id and appends the event to its channel's stream and to the
/// feed. KEYS: last-id, feed, channel stream. ARGV: floor (the node's newest
/// id), channel history, feed length, channel, data, event name (empty:
/// none). Returns the id as text.
const PUBLISH_SCRIPT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local id = math.max(last + 1, now, tonumber(ARGV[1]) + 1)
local text = string.format('%.0f', id)
local entry = text .. '-0'
local fields = {'channel', ARGV[4], 'data', ARGV[5]}
if ARGV[6] ~= '' then
  table.insert(fields, 'event')
  table.insert(fields, ARGV[6])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], entry, unpack(fields))
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], entry, unpack(fields))
end
redis.call('SET', KEYS[1], text)
return text
";

/// Raises the newest id to at least `ARGV[1]` and returns it, so that after a
/// Redis restart without persistence new ids still come after what nodes
/// have applied. KEYS: last-id.
pub(crate) const FLOOR_SCRIPT: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if floor > last then
  last = floor
  redis.call('SET', KEYS[1], string.format('%.0f', floor))
end
return string.format('%.0f', last)
";

/// Why the Redis bus refused or failed a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum BusError {
    /// The `--redis` URL cannot be used.
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Redis cannot be reached or failed the command; the event was not
    /// stored (or, if Redis failed after storing it, not confirmed).
    Unavailable {
        /// Where Redis is, without credentials.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// Redis did not answer in time: the command may still run, so the
    /// event may be stored although it was not confirmed.
    NoAnswer {
        /// Where Redis is, without credentials.
        server: String,
        /// How long the answer was waited for.
        waited: Duration,
    },
    /// Redis stored the event, then the connection to it was lost before
    /// this server read the event back: whether it survives depends on
    /// Redis (without persistence, a Redis that died has lost it), so it is
    /// not confirmed.
    LostAfterStoring {
        /// Where Redis is, without credentials.
        server: String,
    },
    /// The server stopped while the event was being published: Redis
    /// stored it (other servers deliver it), but this server's broker had
    /// closed before the event reached it, so its streams did not get it.
    StoppedAfterStoring,
    /// The request itself is bad (channel or event name), or the server is
    /// stopping ([`BrokerError::Closed`]: the event was not stored).
    Broker(BrokerError),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Url { url, reason } => write!(
                f,
                "invalid --redis URL '{}': {reason}; expected redis://host:port/db",
                url.escape_default()
            ),
            BusError::Unavailable { server, reason } => {
                write!(f, "redis at {server} is unavailable ({reason})")
            }
            BusError::NoAnswer { server, waited } => write!(
                f,
                "redis at {server} did not answer within {} ms",
                waited.as_millis()
            ),
            BusError::LostAfterStoring { server } => write!(
                f,
                "the connection to redis at {server} was lost after it stored the event and before this server read it back"
            ),
            BusError::StoppedAfterStoring => f.write_str(
                "the server is stopping: the event was stored in Redis for other servers, but not sent to this server's streams",
            ),
            BusError::Broker(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BusError {}

impl From<BrokerError> for BusError {
    fn from(e: BrokerError) -> Self {
        BusError::Broker(e)
    }
}

/// Where the reader is, shared with publishers waiting for their event.
#[derive(Debug, Default)]
pub(crate) struct Position {
    /// Connected to Redis and reading the feed.
    pub(crate) connected: bool,
    /// The id of the last feed entry applied to the broker (0: none yet).
    pub(crate) applied: EventId,
}

/// What the bus and its reader thread share.
pub(crate) struct Shared {
    url: RedisUrl,
    /// `host:port/db`, without credentials, for messages.
    pub(crate) server: String,
    pub(crate) broker: Arc<Broker>,
    pub(crate) position: Mutex<Position>,
    pub(crate) position_changed: Condvar,
    pool: Mutex<Vec<Connection>>,
    /// Connections taken from the pool or opened, not yet given back.
    in_use: AtomicUsize,
}

impl Shared {
    pub(crate) fn position(&self) -> MutexGuard<'_, Position> {
        // Position is two plain values, valid whatever a panicking holder did.
        self.position.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a connection (within `timeout`, at most [`CONNECT_TIMEOUT`])
    /// whose replies may take up to `read_timeout`.
    pub(crate) fn connect(&self, timeout: Duration, read_timeout: Duration) -> Result<Connection, RespError> {
        Connection::open(
            &self.url,
            timeout.min(CONNECT_TIMEOUT),
            read_timeout,
            COMMAND_TIMEOUT,
        )
    }

    /// Drops the idle publish connections: the reader lost Redis, so they
    /// are most likely broken too (a restarted Redis does not know them).
    pub(crate) fn drop_idle_connections(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn unavailable(&self, reason: impl fmt::Display) -> BusError {
        BusError::Unavailable {
            server: self.server.clone(),
            reason: reason.to_string(),
        }
    }

    /// Runs `job` on a pooled connection (opening one if none is idle),
    /// waiting at most `timeout` for each reply. A
    /// connection that failed (not an error reply from Redis, after which it
    /// is still in step) is dropped, and the idle ones with it: they most
    /// likely broke the same way.
    fn with_connection<T>(
        &self,
        timeout: Duration,
        job: impl FnOnce(&mut Connection) -> Result<T, RespError>,
    ) -> Result<T, BusError> {
        if !self.position().connected {
            return Err(self.unavailable("not connected; reconnecting"));
        }
        let Some(_in_use) = InUse::take(&self.in_use, MAX_IN_USE) else {
            return Err(self.unavailable(format!("{MAX_IN_USE} requests are waiting for it already")));
        };
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect(timeout, timeout).map_err(|e| self.unavailable(e))?,
        };
        let outcome = con.set_read_timeout(Some(timeout)).and_then(|()| job(&mut con));
        let in_step = match &outcome {
            Ok(_) => true,
            Err(e) => e.is_reply(),
        };
        if in_step {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_SIZE {
                pool.push(con);
            }
        } else {
            self.drop_idle_connections();
        }
        outcome.map_err(|e| {
            if e.is_timeout() {
                BusError::NoAnswer {
                    server: self.server.clone(),
                    waited: timeout,
                }
            } else {
                self.unavailable(e)
            }
        })
    }
}

/// One of at most `max` counted in `count`, given back when dropped.
struct InUse<'a>(&'a AtomicUsize);

impl<'a> InUse<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<InUse<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InUse(count))
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A node's link to Redis: publishes, back-fills, and the reader thread
/// that feeds the local broker. Dropping it stops the reader.
pub struct RedisBus {
    shared: Arc<Shared>,
    history: usize,
    _stop_tx: Sender<()>,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("server", &self.shared.server)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Starts the reader thread for `url` feeding `broker`, and waits up to
    /// `wait` for it to connect. An unreachable Redis is not an error: the
    /// node runs, refusing publishes, until Redis answers.
    ///
    /// # Errors
    /// [`BusError::Url`] for a URL that cannot be parsed,
    /// [`BusError::Unavailable`] when the reader thread cannot be started.
    pub fn start(url: &str, broker: Arc<Broker>, wait: Duration) -> Result<RedisBus, BusError> {
        let url = RedisUrl::parse(url).map_err(|e| BusError::Url {
            url: without_password(url),
            reason: e.to_string(),
        })?;
        let server = url.server();
        let history = broker.config().history;
        let shared = Arc::new(Shared {
            url,
            server,
            broker,
            position: Mutex::new(Position::default()),
            position_changed: Condvar::new(),
            pool: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(0),
        });
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("redis-reader".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || crate::redis_reader::run(&reader, &stop_rx))
            .map_err(|e| BusError::Unavailable {
                server: shared.server.clone(),
                reason: format!("cannot start the reader thread: {e}"),
            })?;
        let bus = RedisBus {
            shared,
            history,
            _stop_tx: stop_tx,
        };
        if !bus.wait_connected(wait) {
            log::warn!(
                "redis at {} is not reachable yet; publishes get 503 until it is",
                bus.shared.server
            );
        }
        Ok(bus)
    }

    /// Where Redis is, without credentials: `host:port/db`.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// True while the reader is connected to Redis.
    pub fn is_connected(&self) -> bool {
        self.shared.position().connected
    }

    /// Waits up to `timeout` for the reader to be connected.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let guard = self.shared.position();
        let (guard, _) = self
            .shared
            .position_changed
            .wait_timeout_while(guard, timeout, |p| !p.connected)
            .unwrap_or_else(|p| p.into_inner());
        guard.connected
    }

    /// Stores one event in Redis and returns its id, once it is stored (and,
    /// within a short wait, applied to this node's broker).
    ///
    /// # Errors
    /// [`BusError::Broker`] for a bad channel or event name (nothing sent to
    /// Redis), [`BusError::Unavailable`] when Redis is unreachable or fails.
    pub fn publish(
        &self,
        channel: &str,
        event_name: Option<&str>,
        data: &str,
    ) -> Result<Published, BusError> {
        broker::validate_publish(channel, event_name)?;
        // As the broker refuses a publish once closed (the stop closes it
        // and the streams end): not sent to Redis at all.
        if self.shared.broker.is_closed() {
            return Err(BrokerError::Closed.into());
        }
        let floor = self.shared.broker.last_id();
        // EVAL, not EVALSHA: Redis caches the script by its text anyway.
        let script = Command::new("EVAL")
            .arg(PUBLISH_SCRIPT)
            .arg(3_usize)
            .arg(LAST_ID_KEY)
            .arg(FEED_KEY)
            .arg(channel_key(channel))
            .arg(floor)
            .arg(self.history)
            .arg(FEED_LEN)
            .arg(channel)
            .arg(data)
            .arg(event_name.unwrap_or(""));
        let reply = self
            .shared
            .with_connection(COMMAND_TIMEOUT, |con| con.query(&script))?;
        let id: EventId = redis_reply::text(&reply)
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                self.shared
                    .unavailable(format!("unexpected id {reply:?} from the publish script"))
            })?;
        // Not read back because the reader lost Redis: Redis may have died
        // with the event (its feed read by no node yet), so no `200`.
        if !self.wait_applied(id, APPLY_WAIT) && !self.shared.position().connected {
            return Err(BusError::LostAfterStoring {
                server: self.shared.server.clone(),
            });
        }
        if self.shared.broker.is_closed() && self.shared.broker.last_id() < id {
            return Err(BusError::StoppedAfterStoring);
        }
        Ok(Published {
            id,
            subscribers: self.shared.broker.subscriber_count(channel),
        })
    }

    /// Waits up to `timeout` until the reader has applied `id`.
    fn wait_applied(&self, id: EventId, timeout: Duration) -> bool {
        let started = Instant::now();
        let guard = self.shared.position();
        let (guard, _) = self
            .shared
            .position_changed
            .wait_timeout_while(guard, timeout, |p| p.applied < id && p.connected)
            .unwrap_or_else(|p| p.into_inner());
        let done = guard.applied >= id;
        if !done {
            log::debug!(
                "event {id} not yet read back from redis after {:?}",
                started.elapsed()
            );
        }
        done
    }

    /// Back-fills the rings of `channels` (none: the default channel) with
    /// their newest `--history` events after `after` from Redis, so that a
    /// `Last-Event-ID` replay on this node finds events it never saw. Best
    /// effort: when Redis is unreachable the replay comes from what the node
    /// holds, and the failure is logged.
    pub fn backfill(&self, channels: &[String], after: EventId) {
        if self.history == 0 {
            return;
        }
        let mut names: Vec<&str> = channels.iter().map(String::as_str).collect();
        if names.is_empty() {
            names.push(broker::DEFAULT_CHANNEL);
        }
        names.sort_unstable();
        names.dedup();
        // Subscribing refuses these with a proper message; nothing to fetch.
        if names.len() > broker::MAX_CHANNELS_PER_STREAM
            || names.iter().any(|n| broker::validate_channel(n).is_err())
        {
            return;
        }
        let commands: Vec<Command> = names
            .iter()
            .map(|name| {
                Command::new("XREVRANGE")
                    .arg(channel_key(name))
                    .arg("+")
                    .arg(format!("{after}-1"))
                    .arg("COUNT")
                    .arg(self.history)
            })
            .collect();
        let replies = match self
            .shared
            .with_connection(BACKFILL_TIMEOUT, |con| con.pipeline(&commands))
        {
            Ok(replies) => replies,
            Err(e) => {
                log::warn!("replay from this node's memory only: {e}");
                return;
            }
        };
        for (name, reply) in names.iter().zip(&replies) {
            let mut events = match parse_entries(reply) {
                Ok(entries) => entries.into_iter().map(|e| e.event).collect::<Vec<_>>(),
                Err(e) => {
                    log::warn!("cannot read the history of channel {name} from redis: {e}");
                    continue;
                }
            };
            events.reverse();
            match self.shared.broker.backfill(name, &events) {
                Ok(added) => log::debug!("back-filled channel={name} after={after} added={added}"),
                Err(e) => log::warn!("cannot back-fill channel {name}: {e}"),
            }
        }
    }
}

/// `url` with everything between `://` and its last `@` (user and
/// password) replaced by `***`, for messages. The last `@`, wherever it
/// is: a password that was not percent-encoded may hold `@`, `/` or `?`,
/// and a message hiding a little too much beats one showing a password.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_in_use_are_bounded_and_given_back() {
        let count = AtomicUsize::new(0);
        let first = InUse::take(&count, 2).expect("room for two");
        let second = InUse::take(&count, 2).expect("room for two");
        assert!(InUse::take(&count, 2).is_none(), "two in use");
        drop(first);
        let third = InUse::take(&count, 2).expect("one given back");
        drop((second, third));
        assert_eq!(count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = BusError::Unavailable {
            server: "127.0.0.1:6379/0".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "redis at 127.0.0.1:6379/0 is unavailable (connection refused)"
        );
        let e = RedisBus::start(
            "http://x",
            Broker::new(crate::broker::BrokerConfig {
                history: 1,
                queue_size: 1,
                max_channels: 1,
            }),
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid --redis URL 'http://x'"), "{e}");
    }

    #[test]
    fn messages_leave_passwords_out() {
        assert_eq!(without_password("redis://:secret@h:1/0"), "redis://***@h:1/0");
        // Never a password, even one with `@` and `/` not percent-encoded.
        assert_eq!(without_password("redis://u:p@h/0?x=a@b"), "redis://***@b");
        assert_eq!(
            without_password("redis://:p@ss:w/rd%x@127.0.0.1:6379/3"),
            "redis://***@127.0.0.1:6379/3"
        );
        assert_eq!(without_password("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(without_password("nonsense"), "nonsense");
    }
}

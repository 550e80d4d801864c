//! Channels, subscribers, history, replay and event ids.
//!
//! Each channel keeps a ring of its latest events. The ring is also every
//! subscriber's queue: a subscriber holds a cursor (the id of the last event it
//! took) and, when woken, copies out every event after its cursor from its
//! channels. Replay after `Last-Event-ID` and live delivery are then one
//! mechanism, so nothing can slip between them or come twice.
//!
//! Ordering: ids are assigned and events appended under one lock, and
//! `committed` (the newest id whose event is in its ring) is raised under the
//! same lock. A subscriber only takes events up to `committed`, so an event
//! with a smaller id can never turn up in another channel after the cursor has
//! passed it: the stream a client sees is in strictly increasing id order, and
//! its `Last-Event-ID` always means "everything after this".
//!
//! Waking: publishing never touches subscribers. It hands the channel to the
//! fan-out thread, which bumps each subscriber's backlog and wakes it: a flag
//! and an unpark of its thread (a subscriber whose flag is up already is not
//! unparked again). That is the least a wake-up can cost: no lock, no waiter
//! list, one futex call when the thread sleeps and none when it is awake.
//! A subscriber whose backlog passes `queue_size` is marked dropped: its stream
//! ends and the client reconnects with its last id, replaying from the ring.
//!
//! A stream's side, its [`Subscription`], is in `subscription`; events fed
//! from a log shared between nodes ([`Broker::append`]) in `shared_log`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::Thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::event::{self, FieldError};

mod shared_log;
mod subscription;

pub use shared_log::LoggedEvent;
pub use subscription::{HangUp, Lagged, Subscription};

/// An event id: a decimal integer that only grows, across channels and
/// restarts.
pub type EventId = u64;

/// Channels one stream may subscribe to at most.
pub const MAX_CHANNELS_PER_STREAM: usize = 32;

/// Longest channel name in bytes.
pub const MAX_CHANNEL_NAME: usize = 128;

/// The channel used when a request names none.
pub const DEFAULT_CHANNEL: &str = "default";

/// A published event, encoded once; every subscriber shares the bytes.
#[derive(Debug)]
pub struct Event {
    /// Its id.
    pub id: EventId,
    /// Its wire bytes, `id:` line to blank line.
    pub bytes: Box<[u8]>,
}

/// Limits of a [`Broker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Events replayable per channel.
    pub history: usize,
    /// Events a subscriber may fall behind before it is dropped.
    pub queue_size: usize,
    /// Channels kept at most.
    pub max_channels: usize,
}

/// Why the broker refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerError {
    /// A channel name is empty, too long or has a character outside
    /// `[A-Za-z0-9._:/-]`.
    InvalidChannel(String),
    /// An event field cannot be encoded.
    InvalidField(FieldError),
    /// A stream asked for more than [`MAX_CHANNELS_PER_STREAM`] channels.
    TooManyChannelsPerStream(usize),
    /// `max_channels` channels exist and all have subscribers.
    TooManyChannels(usize),
    /// The broker was closed (the server is stopping): its streams have
    /// taken their last events.
    Closed,
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::InvalidChannel(name) => write!(
                f,
                "invalid channel name '{}': use 1 to {MAX_CHANNEL_NAME} bytes of A-Z a-z 0-9 . _ : / -",
                name.escape_debug()
            ),
            BrokerError::InvalidField(e) => e.fmt(f),
            BrokerError::TooManyChannelsPerStream(n) => write!(
                f,
                "{n} channels requested, a stream may subscribe to at most {MAX_CHANNELS_PER_STREAM}"
            ),
            BrokerError::TooManyChannels(max) => write!(
                f,
                "the server holds its maximum of {max} channels, all with subscribers; try again later"
            ),
            BrokerError::Closed => write!(f, "the server is stopping; the event was not stored"),
        }
    }
}

impl std::error::Error for BrokerError {}

impl From<FieldError> for BrokerError {
    fn from(e: FieldError) -> Self {
        BrokerError::InvalidField(e)
    }
}

/// Checks a channel name: 1-128 bytes of `[A-Za-z0-9._:/-]`.
///
/// # Errors
/// [`BrokerError::InvalidChannel`] quoting the name.
pub fn validate_channel(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidChannel(name.to_string()))
    }
}

/// Checks what a publish names: its channel and, if any, its event name.
///
/// # Errors
/// [`BrokerError`] naming the first problem.
pub fn validate_publish(channel: &str, event_name: Option<&str>) -> Result<(), BrokerError> {
    validate_channel(channel)?;
    if let Some(name) = event_name {
        event::validate_event_name(name)?;
    }
    Ok(())
}

/// Checks the channel list of a subscription: each name valid, at most
/// [`MAX_CHANNELS_PER_STREAM`] once duplicates are removed.
///
/// # Errors
/// [`BrokerError`] naming the first problem.
pub fn validate_subscription(channels: &[String]) -> Result<(), BrokerError> {
    subscription_channels(channels).map(|_| ())
}

/// The channels of a subscription, sorted, without duplicates; none means
/// the default channel.
fn subscription_channels(channels: &[String]) -> Result<Vec<&str>, BrokerError> {
    let mut names: Vec<&str> = channels.iter().map(String::as_str).collect();
    if names.is_empty() {
        names.push(DEFAULT_CHANNEL);
    }
    names.sort_unstable();
    names.dedup();
    if names.len() > MAX_CHANNELS_PER_STREAM {
        return Err(BrokerError::TooManyChannelsPerStream(names.len()));
    }
    for name in &names {
        validate_channel(name)?;
    }
    Ok(names)
}

/// What `publish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The id given to the event.
    pub id: EventId,
    /// Streams subscribed to its channel when it was published.
    pub subscribers: usize,
}

/// A committed event's wake-ups, not started yet: dropping this hands its
/// channel to the fan-out thread.
///
/// Why a publisher may hold it: waking the fan-out thread lets the scheduler
/// run it at once on the publisher's core, and the publisher, preempted,
/// waited behind thousands of wake-ups before it could answer (`send` took
/// p50 187 us, p99 2.3 ms at 5,000 subscribers). Dropped after the answer is
/// written, it costs the subscribers those few microseconds instead. Until
/// then the event is in its ring and committed: any other wake-up of a
/// subscriber (another event, its ping) delivers it too.
#[must_use = "dropping it starts the fan-out at once"]
pub struct PendingFanOut {
    channel: Option<Arc<Channel>>,
    fanout_tx: Sender<Arc<Channel>>,
}

impl fmt::Debug for PendingFanOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingFanOut").finish_non_exhaustive()
    }
}

impl Drop for PendingFanOut {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            // The receiver lives as long as the broker: this cannot fail.
            let _ = self.fanout_tx.send(channel);
        }
    }
}

/// The registry of channels.
pub struct Broker {
    config: BrokerConfig,
    registry: Mutex<Registry>,
    committed: AtomicU64,
    fanout_tx: Sender<Arc<Channel>>,
    closed: AtomicBool,
    /// The origin of subscribers' ping times ([`Subscription::ping_at`]).
    epoch: Instant,
}

struct Registry {
    channels: HashMap<Arc<str>, Arc<Channel>>,
    last_id: EventId,
    use_clock: u64,
}

/// A channel: its history and its subscribers, under separate locks. Every
/// draining subscriber reads the ring, so the ring is behind a read-write
/// lock (drains never wait for one another, only briefly for an append),
/// and the list of subscribers, which the fan-out thread copies for every
/// event (thousands of `Arc`s), has a lock of its own that neither
/// publishers nor drains take. With one lock for both, `broker.publish`
/// waited behind those copies and drains: p50 152 us, p99 1.8 ms at 5,000
/// subscribers.
struct Channel {
    /// The registry's key, shared: a subscription names its channels
    /// through them instead of copies of the names.
    name: Arc<str>,
    ring: RwLock<Ring>,
    members: Mutex<Vec<Arc<Subscriber>>>,
    /// `members.len()`, readable without the lock.
    member_count: AtomicUsize,
    /// The registry's use clock when last published to or subscribed to,
    /// for eviction.
    last_used: AtomicU64,
}

impl Channel {
    /// Wakes every subscriber of the channel now. The list is copied out
    /// of its lock first: a woken subscriber that ends takes that lock to
    /// leave, and waking 19,000 under it queued them all behind it.
    fn wake_members(&self) {
        let members = lock(&self.members).clone();
        for subscriber in &members {
            subscriber.wake();
        }
    }
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Id of the newest event pushed out of the ring (0: none).
    evicted_through: EventId,
}

/// The part of a subscriber the fan-out thread sees.
struct Subscriber {
    /// The thread that subscribed, which waits in [`Subscription::wait`].
    thread: Thread,
    /// Raised by a wake-up, lowered by the wait that takes it.
    woken: AtomicBool,
    backlog: AtomicUsize,
    dropped: AtomicBool,
    /// Raised by [`HangUp::hang_up`]: its client closed the connection.
    hung_up: AtomicBool,
    /// The descriptor of its stream's connection while the stream may
    /// write to it ([`Subscription::attach_connection`]): shut down when the
    /// subscriber is dropped for being slow, so that a write blocked on a
    /// client that reads nothing fails at once, not after the write
    /// timeout. Under a lock that the stream's detach also takes, so that a
    /// descriptor closed (and its number reused) is never shut down.
    connection: Mutex<Option<RawFd>>,
    /// When its next ping is due, in milliseconds since the broker's epoch
    /// (`u64::MAX`: none): [`Broker::wake_due_pings`] wakes it then.
    ping_at_ms: AtomicU64,
}

impl Subscriber {
    /// Shuts its stream's connection down both ways, if one is attached.
    #[cold]
    fn cut_connection(&self) {
        if let Some(fd) = *lock(&self.connection) {
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        }
    }

    fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.thread.unpark();
        }
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .field("committed", &self.committed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a broker lock cannot leave its data half-updated
    // (every update is a single push/remove), so a poisoned lock is still valid.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Broker {
    /// Creates a broker and starts its fan-out thread, which ends when the
    /// broker is dropped.
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        let (fanout_tx, fanout_rx) = crossbeam_channel::unbounded();
        let queue_size = config.queue_size;
        std::thread::Builder::new()
            .name("fanout".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || fan_out(fanout_rx, queue_size))
            .expect("cannot start the fan-out thread at start-up");
        Arc::new(Broker {
            config,
            registry: Mutex::new(Registry {
                channels: HashMap::new(),
                last_id: 0,
                use_clock: 0,
            }),
            committed: AtomicU64::new(0),
            fanout_tx,
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    /// Its limits.
    pub fn config(&self) -> BrokerConfig {
        self.config
    }

    /// Publishes one event to `channel` and returns its id; subscribers are
    /// woken by the fan-out thread, never by the caller.
    ///
    /// # Errors
    /// [`BrokerError`] for a bad channel or event name, or when no channel
    /// can be made.
    pub fn publish(
        &self,
        channel: &str,
        event_name: Option<&str>,
        data: &str,
    ) -> Result<Published, BrokerError> {
        self.publish_later(channel, event_name, data)
            .map(|(published, _fan_out_now)| published)
    }

    /// [`Broker::publish`], but the subscribers are woken only when the
    /// returned [`PendingFanOut`] is dropped: a publisher answers its client
    /// first (see [`PendingFanOut`]).
    ///
    /// # Errors
    /// As [`Broker::publish`].
    pub fn publish_later(
        &self,
        channel: &str,
        event_name: Option<&str>,
        data: &str,
    ) -> Result<(Published, PendingFanOut), BrokerError> {
        validate_publish(channel, event_name)?;
        let mut registry = lock(&self.registry);
        // Under the lock that `close` sets it with: an event committed
        // before is drained by the streams, none is committed after.
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        let target = registry.channel(channel, self.config.max_channels)?;
        let id = (registry.last_id + 1).max(now_micros());
        let bytes = event::encode_event(Some(&id.to_string()), event_name, data)?;
        Ok(self.commit(registry, target, id, bytes))
    }

    /// Appends event `id` to `target`'s ring and raises the last and committed
    /// ids; the fan-out starts when the returned [`PendingFanOut`] is dropped
    /// (after the registry lock is released). Called with the registry
    /// locked, so that ids enter the rings in increasing order.
    fn commit(
        &self,
        mut registry: MutexGuard<'_, Registry>,
        target: Arc<Channel>,
        id: EventId,
        bytes: Vec<u8>,
    ) -> (Published, PendingFanOut) {
        let ring_len = self.ring_capacity();
        registry.last_id = id;
        {
            let mut ring = write(&target.ring);
            ring.events.push_back(Arc::new(Event {
                id,
                bytes: bytes.into_boxed_slice(),
            }));
            while ring.events.len() > ring_len {
                if let Some(old) = ring.events.pop_front() {
                    ring.evicted_through = old.id;
                }
            }
        }
        let subscribers = target.member_count.load(Ordering::Acquire);
        self.committed.store(id, Ordering::Release);
        drop(registry);
        let fan_out = PendingFanOut {
            channel: (subscribers > 0).then_some(target),
            fanout_tx: self.fanout_tx.clone(),
        };
        (Published { id, subscribers }, fan_out)
    }

    /// Subscribes to `channels` (none: the default channel). With
    /// `last_event_id`, the first [`Subscription::drain`] replays every
    /// retained event after it; without, only events published from now on
    /// are delivered.
    ///
    /// # Errors
    /// [`BrokerError`] for a bad or repeated-too-often channel list.
    pub fn subscribe(
        self: &Arc<Self>,
        channels: &[String],
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, BrokerError> {
        let names = subscription_channels(channels)?;
        let me = Arc::new(Subscriber {
            thread: std::thread::current(),
            woken: AtomicBool::new(false),
            backlog: AtomicUsize::new(0),
            dropped: AtomicBool::new(false),
            hung_up: AtomicBool::new(false),
            connection: Mutex::new(None),
            ping_at_ms: AtomicU64::new(u64::MAX),
        });
        let mut registry = lock(&self.registry);
        let mut joined = Vec::with_capacity(names.len());
        for name in &names {
            match registry.channel(name, self.config.max_channels) {
                Ok(channel) => {
                    let mut members = lock(&channel.members);
                    members.push(Arc::clone(&me));
                    channel.member_count.store(members.len(), Ordering::Release);
                    drop(members);
                    joined.push(channel);
                }
                Err(e) => {
                    registry.leave(&me, &joined, self.config.history);
                    return Err(e);
                }
            }
        }
        let now = self.committed.load(Ordering::Acquire);
        drop(registry);
        Ok(Subscription::new(
            Arc::clone(self),
            me,
            joined,
            last_event_id,
            now,
        ))
    }

    /// Tells every subscription to end: from now on [`Subscription::is_closed`]
    /// is true, and every subscriber is woken to drain what is left.
    ///
    /// Shutdown goes through each subscriber's own wake-up, the one events
    /// use, so that a waiting stream watches nothing else.
    pub fn close(&self) {
        // Under the registry's lock: see `publish_later`.
        let registry = lock(&self.registry);
        self.closed.store(true, Ordering::Release);
        drop(registry);
        let mut everyone: Vec<Arc<Subscriber>> = Vec::new();
        for channel in self.channels_now() {
            everyone.extend(lock(&channel.members).iter().cloned());
        }
        wake_all(&everyone);
    }

    /// True once [`Broker::close`] was called: publishes are refused.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The channels held now, taken out of the registry's lock, so that
    /// what is done with each does not hold up publishers.
    fn channels_now(&self) -> Vec<Arc<Channel>> {
        lock(&self.registry).channels.values().cloned().collect()
    }

    /// Wakes every subscriber whose ping is due at `now`
    /// ([`Subscription::ping_at`]). Run every few milliseconds to a second
    /// by one thread, so that waiting subscribers need no timer of their
    /// own: a wait with a timeout arms and cancels a kernel timer every
    /// time, and a subscriber waits once per event (1,000 streams: 1.4 µs
    /// of CPU per delivery, BENCHMARKS.md fifth round).
    pub fn wake_due_pings(&self, now: Instant) {
        let now_ms = self.millis_since_epoch(now, false);
        let channels = self.channels_now();
        for channel in channels {
            for subscriber in lock(&channel.members).iter() {
                if subscriber.ping_at_ms.load(Ordering::Acquire) <= now_ms {
                    subscriber.wake();
                }
            }
        }
    }

    /// Whole milliseconds from the epoch to `at`, rounded down, or up: a
    /// ping time rounded up and a now rounded down make "due" mean that the
    /// subscriber, looking at the clock, finds its ping due too.
    fn millis_since_epoch(&self, at: Instant, round_up: bool) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let millis = if round_up {
            nanos.div_ceil(1_000_000)
        } else {
            nanos / 1_000_000
        };
        u64::try_from(millis).unwrap_or(u64::MAX - 1)
    }

    /// Streams subscribed to `channel` now.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        let registry = lock(&self.registry);
        registry
            .channels
            .get(channel)
            .map_or(0, |c| c.member_count.load(Ordering::Acquire))
    }

    /// Channels held now.
    pub fn channel_count(&self) -> usize {
        lock(&self.registry).channels.len()
    }

    /// Events a replay can give now, all channels: each channel's newest
    /// `history` at most (a ring may hold more, to cover `queue_size`).
    pub fn history_size(&self) -> usize {
        let history = self.config.history;
        let channels = self.channels_now();
        channels
            .iter()
            .map(|c| read(&c.ring).events.len().min(history))
            .sum()
    }

    /// The newest id published so far (0: none yet).
    pub fn last_id(&self) -> EventId {
        self.committed.load(Ordering::Acquire)
    }

    /// A ring holds the replayable history, and at least a full queue so that
    /// a subscriber within its queue size never misses an event.
    fn ring_capacity(&self) -> usize {
        self.config.history.max(self.config.queue_size)
    }
}

impl Registry {
    /// Finds or makes the channel `name`, evicting the least recently used
    /// channel without subscribers when `max` channels exist.
    fn channel(&mut self, name: &str, max: usize) -> Result<Arc<Channel>, BrokerError> {
        self.use_clock += 1;
        let now = self.use_clock;
        if let Some(channel) = self.channels.get(name) {
            channel.last_used.store(now, Ordering::Relaxed);
            return Ok(Arc::clone(channel));
        }
        if self.channels.len() >= max {
            let idle = self
                .channels
                .iter()
                .filter_map(|(name, c)| {
                    let idle = lock(&c.members).is_empty();
                    idle.then(|| (c.last_used.load(Ordering::Relaxed), Arc::clone(name)))
                })
                .min();
            match idle {
                Some((_, victim)) => {
                    self.channels.remove(&victim);
                }
                None => return Err(BrokerError::TooManyChannels(max)),
            }
        }
        let name: Arc<str> = Arc::from(name);
        let channel = Arc::new(Channel {
            name: Arc::clone(&name),
            ring: RwLock::new(Ring {
                events: VecDeque::new(),
                evicted_through: 0,
            }),
            members: Mutex::new(Vec::new()),
            member_count: AtomicUsize::new(0),
            last_used: AtomicU64::new(now),
        });
        self.channels.insert(name, Arc::clone(&channel));
        Ok(channel)
    }

    /// Removes `me` from `channels`; a channel left with neither subscribers
    /// nor replayable history is forgotten.
    fn leave(&mut self, me: &Arc<Subscriber>, channels: &[Arc<Channel>], history: usize) {
        for channel in channels {
            let empty = {
                let mut members = lock(&channel.members);
                if let Some(at) = members.iter().position(|s| Arc::ptr_eq(s, me)) {
                    members.swap_remove(at);
                }
                channel.member_count.store(members.len(), Ordering::Release);
                // The ring only matters once the last member left: until
                // then its lock is left to the members draining it.
                if members.is_empty() {
                    let mut ring = write(&channel.ring);
                    if history == 0 {
                        ring.events.clear();
                    }
                    ring.events.is_empty()
                } else {
                    false
                }
            };
            if empty {
                self.channels.retain(|_, c| !Arc::ptr_eq(c, channel));
            }
        }
    }
}

/// Threads that wake every subscriber together at shutdown.
const CLOSE_WAKERS: usize = 8;

/// Subscribers from which [`Broker::close`] wakes them from
/// [`CLOSE_WAKERS`] threads.
const MANY_TO_WAKE: usize = 1000;

/// Wakes every one of `subscribers`, from [`CLOSE_WAKERS`] threads at
/// once when there are many. A woken stream that ends runs at once and
/// takes the waker's core: one thread waking 19,000 ending streams got too
/// small a share of the cores to wake them all within the stop's 2 s
/// (BENCHMARKS.md, "Limits found").
fn wake_all(subscribers: &[Arc<Subscriber>]) {
    if subscribers.len() < MANY_TO_WAKE {
        subscribers.iter().for_each(|s| s.wake());
        return;
    }
    // The `first`-th waker's share: every CLOSE_WAKERS-th subscriber.
    let wake_share = |first: usize| {
        subscribers
            .iter()
            .skip(first)
            .step_by(CLOSE_WAKERS)
            .for_each(|s| s.wake())
    };
    std::thread::scope(|scope| {
        for first in 0..CLOSE_WAKERS {
            let spawned = std::thread::Builder::new()
                .name("close-waker".into())
                .stack_size(crate::SMALL_STACK)
                .spawn_scoped(scope, move || wake_share(first));
            if spawned.is_err() {
                wake_share(first);
            }
        }
    });
}

/// The fan-out thread: for every published-to channel, bump each
/// subscriber's backlog and wake it, or mark it dropped when the backlog
/// passes `queue_size`.
fn fan_out(channels_rx: Receiver<Arc<Channel>>, queue_size: usize) {
    let mut batch: Vec<(Arc<Channel>, usize)> = Vec::new();
    let mut subscribers: Vec<Arc<Subscriber>> = Vec::new();
    while let Ok(first) = channels_rx.recv() {
        batch.clear();
        for channel in std::iter::once(first).chain(channels_rx.try_iter().take(4096)) {
            match batch.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &channel)) {
                Some((_, count)) => *count += 1,
                None => batch.push((channel, 1)),
            }
        }
        for (channel, count) in &batch {
            subscribers.clear();
            subscribers.extend(lock(&channel.members).iter().cloned());
            for subscriber in &subscribers {
                let backlog = subscriber.backlog.fetch_add(*count, Ordering::AcqRel) + count;
                if backlog > queue_size && !subscriber.dropped.swap(true, Ordering::AcqRel) {
                    subscriber.cut_connection();
                }
                subscriber.wake();
            }
        }
        subscribers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn broker(history: usize, queue_size: usize, max_channels: usize) -> Arc<Broker> {
        Broker::new(BrokerConfig {
            history,
            queue_size,
            max_channels,
        })
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_replay_keeps_its_window_when_an_event_comes_before_the_first_drain() {
        let b = broker(3, 10, 10);
        let ids: Vec<EventId> = (0..6)
            .map(|i| b.publish("h", None, &i.to_string()).unwrap().id)
            .collect();
        let mut sub = b.subscribe(&names(&["h"]), Some(ids[0])).unwrap();
        let late = b.publish("h", None, "late").unwrap().id;
        assert_eq!(
            drain_ids(&mut sub),
            vec![ids[3], ids[4], ids[5], late],
            "the 3 newest when it subscribed, then what came after"
        );
    }

    #[test]
    fn the_ping_clock_wakes_a_subscriber_once_its_ping_is_due() {
        let b = broker(10, 10, 10);
        let sub = b.subscribe(&names(&["c"]), None).unwrap();
        let due = Instant::now() + Duration::from_secs(60);
        sub.ping_at(due);
        b.wake_due_pings(due - Duration::from_millis(1));
        assert!(
            !sub.wait(Instant::now() + Duration::from_millis(100)),
            "not woken before its ping is due"
        );
        b.wake_due_pings(due + Duration::from_millis(1));
        assert!(
            sub.wait(Instant::now() + Duration::from_secs(5)),
            "woken once it is"
        );
        // Woken, it finds the ping due by its own clock too: the time is
        // rounded up when set and down when compared.
        let whole_ms = (Instant::now() - b.epoch).as_millis() as u64 + 20;
        let odd = b.epoch + Duration::from_micros(whole_ms * 1000 + 500);
        sub.ping_at(odd);
        b.wake_due_pings(odd);
        assert!(!sub.wait(Instant::now() + Duration::from_millis(100)));
        // No ping asked: never woken by the clock.
        let quiet = b.subscribe(&names(&["c"]), None).unwrap();
        b.wake_due_pings(Instant::now() + Duration::from_secs(3600));
        assert!(!quiet.wait(Instant::now() + Duration::from_millis(100)));
    }

    #[test]
    fn wait_for_wake_returns_on_a_published_event() {
        let b = broker(10, 10, 10);
        let mut sub = b.subscribe(&names(&["c"]), None).unwrap();
        b.publish("c", None, "x").unwrap();
        // The fan-out thread wakes it; without a wake-up this would block.
        sub.wait_for_wake();
        assert_eq!(drain_ids(&mut sub).len(), 1);
    }

    fn drain_ids(sub: &mut Subscription) -> Vec<EventId> {
        let mut out = Vec::new();
        sub.drain(&mut out).expect("not lagged");
        out.iter().map(|e| e.id).collect()
    }

    fn data_of(event: &Event) -> String {
        let text = std::str::from_utf8(&event.bytes).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn ids_grow_and_are_at_least_the_clock() {
        let b = broker(10, 10, 10);
        let before = now_micros();
        let a = b.publish("a", None, "1").unwrap().id;
        let c = b.publish("b", None, "2").unwrap().id;
        assert!(a >= before, "{a} < {before}");
        assert!(c > a);
    }

    #[test]
    fn publish_encodes_once_with_id_and_name() {
        let b = broker(10, 10, 10);
        let mut sub = b.subscribe(&names(&["news"]), None).unwrap();
        let id = b.publish("news", Some("update"), "x\ny").unwrap().id;
        let mut out = Vec::new();
        sub.drain(&mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out[0].bytes).unwrap(),
            format!("event: update\ndata: x\ndata: y\nid: {id}\n\n")
        );
    }

    #[test]
    fn routes_only_to_subscribed_channels() {
        let b = broker(10, 10, 10);
        let mut a = b.subscribe(&names(&["a"]), None).unwrap();
        let mut both = b.subscribe(&names(&["a", "b"]), None).unwrap();
        let ia = b.publish("a", None, "to a").unwrap();
        let ib = b.publish("b", None, "to b").unwrap();
        assert_eq!(ia.subscribers, 2);
        assert_eq!(ib.subscribers, 1);
        assert_eq!(drain_ids(&mut a), vec![ia.id]);
        assert_eq!(drain_ids(&mut both), vec![ia.id, ib.id]);
    }

    #[test]
    fn no_channel_means_default() {
        let b = broker(10, 10, 10);
        let mut sub = b.subscribe(&[], None).unwrap();
        let p = b.publish(DEFAULT_CHANNEL, None, "x").unwrap();
        assert_eq!(drain_ids(&mut sub), vec![p.id]);
    }

    #[test]
    fn replay_across_channels_in_id_order_then_live() {
        let b = broker(100, 10, 10);
        let ids: Vec<EventId> = (0..6)
            .map(|i| {
                b.publish(["x", "y", "z"][i % 3], None, &i.to_string())
                    .unwrap()
                    .id
            })
            .collect();
        let mut sub = b.subscribe(&names(&["x", "y"]), Some(ids[0])).unwrap();
        // after ids[0]: events 1 (y), 3 (x), 4 (y); 2 and 5 are on z
        assert_eq!(drain_ids(&mut sub), vec![ids[1], ids[3], ids[4]]);
        let live = b.publish("x", None, "live").unwrap().id;
        assert_eq!(drain_ids(&mut sub), vec![live]);
        assert_eq!(drain_ids(&mut sub), Vec::<EventId>::new(), "nothing twice");
    }

    #[test]
    fn replay_is_limited_to_history() {
        let b = broker(3, 2, 10);
        let ids: Vec<EventId> = (0..5)
            .map(|i| b.publish("c", None, &i.to_string()).unwrap().id)
            .collect();
        let mut sub = b.subscribe(&names(&["c"]), Some(0)).unwrap();
        assert_eq!(drain_ids(&mut sub), ids[2..].to_vec());
        assert_eq!(b.history_size(), 3);
        // A ring longer than the history (to cover a larger queue) still
        // counts only what a replay gives.
        let b = broker(2, 5, 10);
        let ids: Vec<EventId> = (0..10)
            .map(|i| b.publish("c", None, &i.to_string()).unwrap().id)
            .collect();
        assert_eq!(b.history_size(), 2);
        let mut sub = b.subscribe(&names(&["c"]), Some(0)).unwrap();
        assert_eq!(drain_ids(&mut sub), ids[8..].to_vec());
    }

    #[test]
    fn subscriber_without_last_id_gets_only_new_events() {
        let b = broker(10, 10, 10);
        b.publish("c", None, "old").unwrap();
        let mut sub = b.subscribe(&names(&["c"]), None).unwrap();
        assert!(drain_ids(&mut sub).is_empty());
        let new = b.publish("c", None, "new").unwrap().id;
        assert_eq!(drain_ids(&mut sub), vec![new]);
    }

    #[test]
    fn fan_out_wakes_subscribers() {
        let b = broker(10, 10, 10);
        let sub = b.subscribe(&names(&["c"]), None).unwrap();
        b.publish("c", None, "x").unwrap();
        assert!(
            sub.wait(Instant::now() + Duration::from_secs(5)),
            "woken by the fan-out thread"
        );
    }

    #[test]
    fn publish_later_wakes_subscribers_only_once_its_fan_out_is_dropped() {
        let b = broker(10, 10, 10);
        let mut sub = b.subscribe(&names(&["c"]), None).unwrap();
        let (published, fan_out) = b.publish_later("c", None, "x").unwrap();
        assert_eq!(published.subscribers, 1);
        assert!(
            !sub.wait(Instant::now() + Duration::from_millis(200)),
            "woken while the publisher still held the fan-out"
        );
        assert_eq!(drain_ids(&mut sub), vec![published.id], "committed already");
        drop(fan_out);
        assert!(sub.wait(Instant::now() + Duration::from_secs(5)));
    }

    #[test]
    fn a_subscriber_past_its_queue_size_is_dropped_and_others_are_not() {
        let b = broker(100, 4, 10);
        let mut slow = b.subscribe(&names(&["c"]), None).unwrap();
        let mut fast = b.subscribe(&names(&["c"]), None).unwrap();
        let mut got = Vec::new();
        for i in 0..10 {
            b.publish("c", None, &i.to_string()).unwrap();
            // the fast one keeps up: wait for its wake-up, then drain
            assert!(fast.wait(Instant::now() + Duration::from_secs(5)));
            got.extend(drain_ids(&mut fast));
        }
        assert_eq!(got.len(), 10);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !slow.is_lagged() {
            assert!(
                std::time::Instant::now() < deadline,
                "slow subscriber never dropped"
            );
            std::thread::yield_now();
        }
        assert!(slow.is_lagged());
        assert_eq!(slow.drain(&mut Vec::new()), Err(Lagged));
        assert!(!fast.is_lagged());
    }

    #[test]
    fn unsubscribing_forgets_empty_channels() {
        let b = broker(0, 4, 10);
        let sub = b.subscribe(&names(&["gone"]), None).unwrap();
        b.publish("gone", None, "x").unwrap();
        assert_eq!(b.channel_count(), 1);
        drop(sub);
        assert_eq!(b.channel_count(), 0);
        assert_eq!(b.subscriber_count("gone"), 0);
    }

    #[test]
    fn least_recently_used_idle_channel_is_evicted() {
        let b = broker(10, 4, 2);
        b.publish("one", None, "1").unwrap();
        b.publish("two", None, "2").unwrap();
        b.publish("one", None, "1 again").unwrap();
        b.publish("three", None, "3").unwrap();
        assert_eq!(b.channel_count(), 2);
        let mut sub = b.subscribe(&names(&["two"]), Some(0)).unwrap();
        assert!(drain_ids(&mut sub).is_empty(), "'two' was evicted");
    }

    #[test]
    fn channels_with_subscribers_are_never_evicted() {
        let b = broker(10, 4, 1);
        let _sub = b.subscribe(&names(&["busy"]), None).unwrap();
        assert_eq!(
            b.publish("other", None, "x"),
            Err(BrokerError::TooManyChannels(1))
        );
    }

    #[test]
    fn validates_channel_names() {
        for good in ["a", "news.eu", "user:42", "a/b-c_d", &"x".repeat(128)] {
            assert!(validate_channel(good).is_ok(), "{good}");
        }
        for bad in ["", "sp ace", "é", "a\nb", "a?b", &"x".repeat(129)] {
            assert!(validate_channel(bad).is_err(), "{bad:?}");
        }
        // The name as given, control characters escaped (not every
        // character outside ASCII, as `\u{e9}`).
        let said = |name: &str| validate_channel(name).unwrap_err().to_string();
        assert!(
            said("café").starts_with("invalid channel name 'café':"),
            "{}",
            said("café")
        );
        assert!(
            said("a\nb").starts_with("invalid channel name 'a\\nb':"),
            "{}",
            said("a\nb")
        );
        let b = broker(10, 4, 10);
        assert!(matches!(
            b.publish("bad name", None, "x"),
            Err(BrokerError::InvalidChannel(_))
        ));
        assert!(matches!(
            b.publish("c", Some("a\nb"), "x"),
            Err(BrokerError::InvalidField(FieldError::InvalidEventName))
        ));
        let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
        assert!(matches!(
            b.subscribe(&many, None),
            Err(BrokerError::TooManyChannelsPerStream(33))
        ));
    }

    #[test]
    fn close_wakes_every_subscriber_and_leaves_events_to_drain() {
        let b = broker(10, 10, 10);
        let mut a = b.subscribe(&names(&["a"]), None).unwrap();
        let mut ab = b.subscribe(&names(&["a", "b"]), None).unwrap();
        let id = b.publish("b", None, "last").unwrap().id;
        assert!(!a.is_closed());
        // Take the publish's wake-up, so that the next one is close's.
        assert!(ab.wait(Instant::now() + Duration::from_secs(5)));
        b.close();
        for sub in [&a, &ab] {
            assert!(sub.is_closed());
            assert!(sub.wait(Instant::now() + Duration::from_secs(5)));
        }
        assert_eq!(drain_ids(&mut ab), vec![id]);
        assert!(drain_ids(&mut a).is_empty());
        // A publish that comes later (its body was slow) is refused: no
        // stream would take it.
        assert!(matches!(
            b.publish("a", None, "too late"),
            Err(BrokerError::Closed)
        ));
    }

    #[test]
    fn a_subscription_ending_after_close_does_not_wait_for_the_registry() {
        let b = broker(10, 10, 100);
        let sub = b.subscribe(&names(&["a"]), None).unwrap();
        b.close();
        // Held as thousands of ending streams would hold it, one by one.
        let registry = lock(&b.registry);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let ender = std::thread::spawn(move || {
            drop(sub);
            let _ = done_tx.send(());
        });
        let ended = done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
        drop(registry);
        ender.join().unwrap();
        assert!(ended, "the subscription waited for the registry's lock to end");
    }

    #[test]
    fn close_wakes_every_one_of_many_subscribers() {
        let count = MANY_TO_WAKE + 37;
        let b = broker(10, 10, 100);
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        let (woken_tx, woken_rx) = crossbeam_channel::unbounded();
        let threads: Vec<_> = (0..count)
            .map(|_| {
                let (b, ready_tx, woken_tx) = (Arc::clone(&b), ready_tx.clone(), woken_tx.clone());
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let sub = b.subscribe(&names(&["many"]), None).unwrap();
                        ready_tx.send(()).unwrap();
                        let woken = sub.wait(Instant::now() + Duration::from_secs(10));
                        woken_tx.send(woken && sub.is_closed()).unwrap();
                    })
                    .unwrap()
            })
            .collect();
        for _ in 0..count {
            ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        b.close();
        let woken = (0..count)
            .filter(|_| woken_rx.recv_timeout(Duration::from_secs(15)).unwrap())
            .count();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(woken, count, "every subscriber woken by close");
    }

    #[test]
    fn concurrent_publishers_keep_every_subscriber_in_id_order() {
        let b = broker(1000, 1000, 10);
        let mut subs: Vec<Subscription> = (0..3)
            .map(|_| b.subscribe(&names(&["p", "q"]), None).unwrap())
            .collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let b = &b;
                s.spawn(move || {
                    for i in 0..100 {
                        b.publish(if t % 2 == 0 { "p" } else { "q" }, None, &format!("{t}-{i}"))
                            .unwrap();
                    }
                });
            }
        });
        for sub in &mut subs {
            let mut out = Vec::new();
            sub.drain(&mut out).unwrap();
            assert_eq!(out.len(), 400);
            assert!(out.windows(2).all(|w| w[0].id < w[1].id));
            let mut data: Vec<String> = out.iter().map(|e| data_of(e)).collect();
            data.sort();
            data.dedup();
            assert_eq!(data.len(), 400);
        }
    }
}

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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::Thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::event::{self, FieldError};

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
    /// Wakes every subscriber of the channel now.
    fn wake_members(&self) {
        for subscriber in lock(&self.members).iter() {
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
        Ok(Subscription {
            broker: Arc::clone(self),
            me,
            channels: joined,
            cursor: last_event_id.unwrap_or(now),
            replay_until: if last_event_id.is_some() { now } else { NO_REPLAY },
        })
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
        let channels = self.channels_now();
        for channel in channels {
            channel.wake_members();
        }
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
                let mut ring = write(&channel.ring);
                if members.is_empty() && history == 0 {
                    ring.events.clear();
                }
                members.is_empty() && ring.events.is_empty()
            };
            if empty {
                self.channels.retain(|_, c| !Arc::ptr_eq(c, channel));
            }
        }
    }
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

/// A subscription, owned by one stream's thread; dropping it unsubscribes.
pub struct Subscription {
    broker: Arc<Broker>,
    me: Arc<Subscriber>,
    channels: Vec<Arc<Channel>>,
    cursor: EventId,
    /// Until the first drain of a subscription with a `Last-Event-ID`: the
    /// newest id committed when it subscribed. The replay keeps the newest
    /// `history` events of each channel up to that id, whatever is published
    /// before the drain; [`NO_REPLAY`] otherwise.
    replay_until: EventId,
}

/// [`Subscription`]'s `replay_until` when there is no replay (left).
const NO_REPLAY: EventId = EventId::MAX;

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channels", &self.names().collect::<Vec<_>>())
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// Ends a subscription's stream from outside, when its client closed the
/// connection: [`Subscription::is_hung_up`] turns true and the subscriber
/// is woken.
#[derive(Clone)]
pub struct HangUp(HangUpTarget);

#[derive(Clone)]
enum HangUpTarget {
    /// A channel stream's subscriber.
    Subscriber(Arc<Subscriber>),
    /// A demo stream's signal, which its `select!` waits on.
    Signal(Sender<()>),
}

impl HangUp {
    /// A hang-up sent on `signal` (a demo stream's, which has no
    /// subscription).
    pub fn signal(signal: Sender<()>) -> HangUp {
        HangUp(HangUpTarget::Signal(signal))
    }

    /// Tells the stream its client is gone, and wakes it.
    pub fn hang_up(&self) {
        match &self.0 {
            HangUpTarget::Subscriber(subscriber) => {
                subscriber.hung_up.store(true, Ordering::Release);
                subscriber.wake();
            }
            HangUpTarget::Signal(signal) => {
                let _ = signal.try_send(());
            }
        }
    }
}

impl fmt::Debug for HangUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HangUp").finish_non_exhaustive()
    }
}

/// The subscriber fell more than `queue_size` events behind and was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

impl Subscription {
    /// Waits until this subscriber is woken (new events may be waiting, or
    /// the broker was closed) or until `deadline`; true when woken. Call it
    /// from the thread that subscribed: the wake-up unparks that thread.
    /// Spurious unparks (std and crossbeam park threads too) are told apart
    /// by the subscriber's flag, and a wake-up that came before the wait is
    /// not lost.
    pub fn wait(&self, deadline: Instant) -> bool {
        debug_assert_eq!(std::thread::current().id(), self.me.thread.id());
        loop {
            if self.me.woken.swap(false, Ordering::AcqRel) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Waits, without a timer, until woken: by a published event, by
    /// [`Broker::close`], or by [`Broker::wake_due_pings`] once the time set
    /// with [`Subscription::ping_at`] has come. Check the time after it
    /// returns: a wake-up does not say which it was.
    pub fn wait_for_wake(&self) {
        debug_assert_eq!(std::thread::current().id(), self.me.thread.id());
        while !self.me.woken.swap(false, Ordering::AcqRel) {
            std::thread::park();
        }
    }

    /// Asks [`Broker::wake_due_pings`] to wake this subscriber at `at`
    /// (rounded up to the millisecond), for its next ping.
    pub fn ping_at(&self, at: Instant) {
        let ms = self.broker.millis_since_epoch(at, true);
        self.me.ping_at_ms.store(ms, Ordering::Release);
    }

    /// True once the broker was closed: drain what is left, then end.
    pub fn is_closed(&self) -> bool {
        self.broker.closed.load(Ordering::Acquire)
    }

    /// The channel names, sorted, without duplicates.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.channels.iter().map(|c| &*c.name)
    }

    /// The id of the last event taken.
    pub fn cursor(&self) -> EventId {
        self.cursor
    }

    /// What ends this subscription's stream when its client closes the
    /// connection.
    pub fn hang_up_handle(&self) -> HangUp {
        HangUp(HangUpTarget::Subscriber(Arc::clone(&self.me)))
    }

    /// Gives the descriptor of the stream's connection, to be shut down if
    /// this subscriber is dropped for being slow; [`Subscription::detach_connection`]
    /// must come before the descriptor is closed.
    pub fn attach_connection(&self, fd: RawFd) {
        *lock(&self.me.connection) = Some(fd);
        // Dropped before it was attached: cut now.
        if self.me.dropped.load(Ordering::Acquire) {
            self.me.cut_connection();
        }
    }

    /// Takes back the descriptor given to [`Subscription::attach_connection`].
    pub fn detach_connection(&self) {
        *lock(&self.me.connection) = None;
    }

    /// True once [`HangUp::hang_up`] was called: the client is gone.
    pub fn is_hung_up(&self) -> bool {
        self.me.hung_up.load(Ordering::Acquire)
    }

    /// True once this subscriber fell more than `queue_size` events behind:
    /// the next [`Subscription::drain`] fails with [`Lagged`].
    pub fn is_lagged(&self) -> bool {
        self.me.dropped.load(Ordering::Acquire)
    }

    /// Appends to `out` every event after the cursor, in id order, and moves
    /// the cursor past them. The first call after subscribing with a
    /// `Last-Event-ID` is the replay.
    ///
    /// # Errors
    /// [`Lagged`] when this subscriber was dropped for being too slow.
    pub fn drain(&mut self, out: &mut Vec<Arc<Event>>) -> Result<(), Lagged> {
        self.me.backlog.store(0, Ordering::Release);
        if self.me.dropped.load(Ordering::Acquire) {
            return Err(Lagged);
        }
        let upto = self.broker.committed.load(Ordering::Acquire);
        if upto <= self.cursor {
            return Ok(());
        }
        let history = self.broker.config.history;
        let start = out.len();
        for channel in &self.channels {
            let ring = read(&channel.ring);
            let replaying = self.replay_until != NO_REPLAY;
            if !replaying && ring.evicted_through > self.cursor {
                self.me.dropped.store(true, Ordering::Release);
                return Err(Lagged);
            }
            let mut from = ring.events.partition_point(|e| e.id <= self.cursor);
            if replaying {
                // The window is the newest `history` events when it
                // subscribed: an event published since does not push the
                // oldest of them out.
                let at_subscribe = ring.events.partition_point(|e| e.id <= self.replay_until);
                from = from.max(at_subscribe.saturating_sub(history));
            }
            out.extend(ring.events.range(from..).take_while(|e| e.id <= upto).cloned());
        }
        if self.channels.len() > 1 {
            out[start..].sort_unstable_by_key(|e| e.id);
        }
        self.cursor = upto;
        self.replay_until = NO_REPLAY;
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The fan-out thread may still hold the subscriber a while.
        self.detach_connection();
        let history = self.broker.config.history;
        lock(&self.broker.registry).leave(&self.me, &self.channels, history);
    }
}

/// One event of a log shared by several nodes (see [`Broker::append`] and
/// [`Broker::backfill`]): its id was given by the log, not by this broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Its id in the shared log.
    pub id: EventId,
    /// Its event name, if any.
    pub event: Option<String>,
    /// Its data.
    pub data: String,
}

// Feeding the broker from a log shared between nodes (`redis_bus`). The ids
// come from the log; the ordering invariant still holds because `append`
// takes them in log order under the registry lock, and `backfill` only adds
// events that are already committed.
impl Broker {
    /// Appends an event whose id was assigned by a shared log, and wakes its
    /// subscribers. Events must be appended in increasing id order, across
    /// all channels; an id not above [`Broker::last_id`] was appended already
    /// and is ignored (`Ok(None)`).
    ///
    /// # Errors
    /// [`BrokerError`] for a bad channel or event name, or when no channel
    /// can be made; the id counts as seen all the same, so that later events
    /// still go through in order.
    pub fn append(
        &self,
        channel: &str,
        id: EventId,
        event: Option<&str>,
        data: &str,
    ) -> Result<Option<Published>, BrokerError> {
        validate_channel(channel)?;
        let bytes = event::encode_event(Some(&id.to_string()), event, data)?;
        let mut registry = lock(&self.registry);
        if id <= registry.last_id {
            return Ok(None);
        }
        let target = match registry.channel(channel, self.config.max_channels) {
            Ok(target) => target,
            Err(e) => {
                registry.last_id = id;
                self.committed.store(id, Ordering::Release);
                return Err(e);
            }
        };
        let (published, _fan_out_now) = self.commit(registry, target, id, bytes);
        Ok(Some(published))
    }

    /// Raises the newest id to `id` without an event: the shared log is
    /// known to be at `id`, and older events this broker lacks are back-filled
    /// on demand. Never lowers it. Subscribers are woken, so that their
    /// cursors move up to `id` at once and a later back-fill of older events
    /// cannot reach them as new ones.
    pub fn advance(&self, id: EventId) {
        let mut registry = lock(&self.registry);
        if id <= registry.last_id {
            return;
        }
        registry.last_id = id;
        self.committed.store(id, Ordering::Release);
        for channel in registry.channels.values() {
            channel.wake_members();
        }
    }

    /// Adds to `channel`'s ring the given older events it lacks (a channel
    /// that this broker did not hold when they were logged), so that a
    /// `Last-Event-ID` replay finds them. Events above [`Broker::last_id`]
    /// are left out: they come through [`Broker::append`] in order. The ring
    /// stays sorted and within its capacity, keeping the newest events.
    /// Returns how many events were added.
    ///
    /// # Errors
    /// [`BrokerError`] for a bad channel or event name, or when no channel
    /// can be made.
    pub fn backfill(&self, channel: &str, events: &[LoggedEvent]) -> Result<usize, BrokerError> {
        validate_channel(channel)?;
        let mut encoded = Vec::with_capacity(events.len());
        for e in events {
            let bytes = event::encode_event(Some(&e.id.to_string()), e.event.as_deref(), &e.data)?;
            encoded.push(Arc::new(Event {
                id: e.id,
                bytes: bytes.into_boxed_slice(),
            }));
        }
        let ring_len = self.ring_capacity();
        let mut registry = lock(&self.registry);
        let last_id = registry.last_id;
        let target = registry.channel(channel, self.config.max_channels)?;
        let mut ring = write(&target.ring);
        let held: Vec<EventId> = ring.events.iter().map(|e| e.id).collect();
        let mut merged: Vec<Arc<Event>> = ring.events.drain(..).collect();
        merged.extend(encoded.into_iter().filter(|e| e.id <= last_id));
        // Stable: an event held already comes before its copy from the log.
        merged.sort_by_key(|e| e.id);
        merged.dedup_by_key(|e| e.id);
        let excess = merged.len().saturating_sub(ring_len);
        if excess > 0 {
            let newest_dropped = merged[excess - 1].id;
            ring.evicted_through = ring.evicted_through.max(newest_dropped);
        }
        ring.events.extend(merged.into_iter().skip(excess));
        let added = ring
            .events
            .iter()
            .filter(|e| held.binary_search(&e.id).is_err())
            .count();
        Ok(added)
    }

    /// The names of the channels held now.
    pub fn channel_names(&self) -> Vec<String> {
        lock(&self.registry)
            .channels
            .keys()
            .map(|name| name.to_string())
            .collect()
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
            format!("id: {id}\nevent: update\ndata: x\ndata: y\n\n")
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
        while !slow.me.dropped.load(Ordering::Acquire) {
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

#[cfg(test)]
mod shared_log_tests {
    use super::*;
    use std::time::Duration;

    fn broker(history: usize, queue_size: usize) -> Arc<Broker> {
        Broker::new(BrokerConfig {
            history,
            queue_size,
            max_channels: 10,
        })
    }

    fn logged(id: EventId, data: &str) -> LoggedEvent {
        LoggedEvent {
            id,
            event: None,
            data: data.to_string(),
        }
    }

    fn drain_ids(sub: &mut Subscription) -> Vec<EventId> {
        let mut out = Vec::new();
        sub.drain(&mut out).expect("not lagged");
        out.iter().map(|e| e.id).collect()
    }

    #[test]
    fn append_keeps_the_given_ids_and_ignores_repeats() {
        let b = broker(10, 10);
        let mut sub = b.subscribe(&["a".to_string(), "b".to_string()], None).unwrap();
        assert_eq!(
            b.append("a", 100, Some("up"), "x").unwrap().map(|p| p.id),
            Some(100)
        );
        assert_eq!(
            b.append("b", 105, None, "y").unwrap().map(|p| p.subscribers),
            Some(1)
        );
        assert_eq!(
            b.append("a", 105, None, "again").unwrap(),
            None,
            "a repeat is ignored"
        );
        assert_eq!(
            b.append("a", 90, None, "older").unwrap(),
            None,
            "an older id is ignored"
        );
        assert_eq!(b.last_id(), 105);
        assert!(
            sub.wait(Instant::now() + Duration::from_secs(5)),
            "woken by the fan-out thread"
        );
        let mut out = Vec::new();
        sub.drain(&mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out[0].bytes).unwrap(),
            "id: 100\nevent: up\ndata: x\n\n"
        );
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), vec![100, 105]);
    }

    #[test]
    fn a_refused_append_still_moves_the_id_on() {
        let b = Broker::new(BrokerConfig {
            history: 10,
            queue_size: 10,
            max_channels: 1,
        });
        let _busy = b.subscribe(&["busy".to_string()], None).unwrap();
        assert_eq!(
            b.append("other", 7, None, "x"),
            Err(BrokerError::TooManyChannels(1))
        );
        assert_eq!(b.last_id(), 7);
        assert_eq!(b.append("busy", 8, None, "y").unwrap().map(|p| p.id), Some(8));
    }

    #[test]
    fn advance_moves_the_start_of_new_subscribers() {
        let b = broker(10, 10);
        b.advance(500);
        b.advance(400);
        assert_eq!(b.last_id(), 500, "never lowered");
        let mut sub = b.subscribe(&["c".to_string()], None).unwrap();
        assert_eq!(sub.cursor(), 500);
        b.append("c", 501, None, "new").unwrap();
        assert_eq!(drain_ids(&mut sub), vec![501]);
    }

    #[test]
    fn advance_wakes_earlier_subscribers_past_older_events() {
        let b = broker(10, 10);
        let mut early = b.subscribe(&["c".to_string()], None).unwrap();
        assert_eq!(early.cursor(), 0);
        b.advance(500);
        assert!(
            early.wait(Instant::now() + Duration::from_secs(5)),
            "woken by advance"
        );
        assert!(drain_ids(&mut early).is_empty());
        assert_eq!(early.cursor(), 500);
        b.backfill("c", &[logged(400, "old")]).unwrap();
        assert!(drain_ids(&mut early).is_empty(), "an old event is not news");
    }

    #[test]
    fn backfill_adds_committed_events_for_replay_in_order() {
        let b = broker(10, 10);
        b.append("c", 30, None, "30").unwrap();
        b.append("other", 40, None, "40").unwrap();
        // The log had 10 and 20 on "c" before this broker saw it; 30 is held
        // already and 50 is not committed here yet.
        let older = [
            logged(20, "20"),
            logged(10, "10"),
            logged(30, "30"),
            logged(50, "50"),
        ];
        assert_eq!(b.backfill("c", &older).unwrap(), 2);
        let mut sub = b
            .subscribe(&["c".to_string(), "other".to_string()], Some(5))
            .unwrap();
        assert_eq!(drain_ids(&mut sub), vec![10, 20, 30, 40]);
        b.append("c", 50, None, "50").unwrap();
        assert_eq!(drain_ids(&mut sub), vec![50], "50 comes once, live");
    }

    #[test]
    fn backfill_keeps_the_newest_within_capacity() {
        let b = broker(3, 3);
        b.advance(100);
        let older: Vec<LoggedEvent> = (1..=5).map(|i| logged(i * 10, "x")).collect();
        assert_eq!(b.backfill("c", &older).unwrap(), 3);
        let mut sub = b.subscribe(&["c".to_string()], Some(0)).unwrap();
        assert_eq!(drain_ids(&mut sub), vec![30, 40, 50]);
        assert_eq!(b.channel_names(), vec!["c".to_string()]);
    }

    #[test]
    fn backfill_refuses_what_it_cannot_encode() {
        let b = broker(3, 3);
        let bad = [LoggedEvent {
            id: 1,
            event: Some("a\nb".into()),
            data: String::new(),
        }];
        assert!(matches!(b.backfill("c", &bad), Err(BrokerError::InvalidField(_))));
        assert!(matches!(
            b.backfill("bad name", &[]),
            Err(BrokerError::InvalidChannel(_))
        ));
    }
}

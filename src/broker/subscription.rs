//! A stream's side of the broker: its subscription (waiting, draining its
//! channels' rings past its cursor, unsubscribing on drop) and the hang-up
//! handle that ends it from outside.

use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::{lock, read, Broker, Channel, Event, EventId, Subscriber};

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

impl Subscription {
    /// The subscription of `me` to `channels`, joined already; `committed`
    /// is the newest id committed when it joined. See [`Broker::subscribe`].
    pub(super) fn new(
        broker: Arc<Broker>,
        me: Arc<Subscriber>,
        channels: Vec<Arc<Channel>>,
        last_event_id: Option<EventId>,
        committed: EventId,
    ) -> Subscription {
        Subscription {
            broker,
            me,
            channels,
            cursor: last_event_id.unwrap_or(committed),
            replay_until: if last_event_id.is_some() {
                committed
            } else {
                NO_REPLAY
            },
        }
    }
}

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
        if self.is_closed() {
            // The broker is being shut down and goes away whole: every
            // stream ends at once, and leaving one by one queued them
            // all on the registry's lock (19,000 streams: thousands still
            // waiting for it at the stop's deadline).
            return;
        }
        let history = self.broker.config.history;
        lock(&self.broker.registry).leave(&self.me, &self.channels, history);
    }
}

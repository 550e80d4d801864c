//! Feeding the broker from a log shared between nodes (`redis_bus`): events
//! whose ids the log gave, the log's position, and older events back-filled
//! into a channel's ring for replay.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{event, lock, validate_channel, write, Broker, BrokerError, Event, EventId, Published};

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
    use crate::broker::{BrokerConfig, Subscription};
    use std::time::Duration;
    use std::time::Instant;

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
            "event: up\ndata: x\nid: 100\n\n"
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

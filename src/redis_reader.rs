//! The reader thread of a node in Redis mode: connect, read the feed with
//! `XREAD BLOCK`, append each entry in order to the local broker; on any
//! failure mark the bus disconnected, back off, reconnect and resume after
//! the last entry applied.
//!
//! Where it starts: on the first connection, at the newest id in Redis (the
//! broker is raised to it with [`Broker::advance`]; older events reach this
//! node by back-fill, on demand). After a reconnection, right after the last
//! entry it applied, so nothing stored before or after an outage is skipped.
//! If the feed was trimmed past that entry meanwhile (the node was away for
//! more than [`FEED_LEN`] events while others published), the events in
//! between are caught up from the streams of the channels this node holds;
//! so too when a read comes back full (a node stopped a while with its
//! connection alive, or behind).
//!
//! [`Broker::advance`]: crate::broker::Broker::advance

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::broker::EventId;
use crate::redis_bus::{channel_key, Shared, FEED_KEY, FEED_LEN, FLOOR_SCRIPT, LAST_ID_KEY};
use crate::redis_reply::{self, entry_id_text, feed_items, info_fields, parse_entry_id, Entry};
use crate::resp::{Command, Connection, RespError};

/// How long one `XREAD` blocks waiting for entries; also how long stopping
/// may wait for the reader.
const BLOCK: Duration = Duration::from_millis(1000);

/// A reply must come this long after the block ends, or Redis is hung.
const READ_TIMEOUT: Duration = Duration::from_millis(3000);

/// Feed entries read at most per `XREAD`.
const BATCH: usize = 512;

/// First and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Doubling waits between reconnection attempts, from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`].
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

/// Where the reader is in the feed.
#[derive(Debug, Clone)]
struct Cursor {
    /// The stream id of the last entry read (`<id>-<seq>`).
    entry: String,
    /// The tinysse id of the last entry applied.
    applied: EventId,
}

/// Runs until `stop_rx` is disconnected (the bus was dropped).
pub(crate) fn run(shared: &Shared, stop_rx: &Receiver<()>) {
    let mut backoff = Backoff::new();
    let mut cursor: Option<Cursor> = None;
    let mut attempts: u64 = 0;
    loop {
        let outcome = shared
            .connect(READ_TIMEOUT, READ_TIMEOUT)
            .and_then(|mut con| session(shared, &mut con, &mut cursor, &mut backoff, stop_rx));
        let error = match outcome {
            Ok(()) => break,
            Err(e) => e,
        };
        let was_connected = set_connected(shared, false, None);
        shared.drop_idle_connections();
        if was_connected {
            log::warn!(
                "lost redis at {}: {error}; publishes get 503 until it is back; reconnecting",
                shared.server
            );
            attempts = 0;
        } else if attempts == 0 {
            log::warn!("cannot reach redis at {}: {error}; retrying", shared.server);
        } else {
            log::debug!(
                "cannot reach redis at {} (attempt {attempts}): {error}",
                shared.server
            );
        }
        attempts += 1;
        match stop_rx.recv_timeout(backoff.next()) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    set_connected(shared, false, None);
    log::debug!("redis reader stopped");
}

fn stopped(stop_rx: &Receiver<()>) -> bool {
    matches!(stop_rx.try_recv(), Ok(()) | Err(TryRecvError::Disconnected))
}

/// Records the reader's state and wakes whoever waits on it; returns whether
/// it was connected before.
fn set_connected(shared: &Shared, connected: bool, applied: Option<EventId>) -> bool {
    let mut position = shared.position();
    let was = position.connected;
    position.connected = connected;
    if let Some(applied) = applied {
        position.applied = position.applied.max(applied);
    }
    drop(position);
    shared.position_changed.notify_all();
    was
}

/// One connection's life: position, then read and apply until an error or
/// the stop.
fn session(
    shared: &Shared,
    con: &mut Connection,
    cursor: &mut Option<Cursor>,
    backoff: &mut Backoff,
    stop_rx: &Receiver<()>,
) -> Result<(), RespError> {
    // New ids must come after everything this node has applied, even if
    // Redis lost its data.
    let floor = cursor
        .as_ref()
        .map_or_else(|| shared.broker.last_id(), |c| c.applied);
    let floor_script = Command::new("EVAL")
        .arg(FLOOR_SCRIPT)
        .arg(1_usize)
        .arg(LAST_ID_KEY)
        .arg(floor);
    let newest = con.query(&floor_script)?;
    let newest: EventId = redis_reply::text(&newest)
        .ok_or_else(|| RespError::Protocol(format!("{newest:?} from the floor script")))?
        .parse()
        .unwrap_or(floor);
    let mut at = match cursor.take() {
        Some(resumed) => {
            catch_up(shared, con, resumed.applied)?;
            resumed
        }
        None => {
            shared.broker.advance(newest);
            Cursor {
                entry: format!("{newest}-0"),
                applied: newest,
            }
        }
    };
    *cursor = Some(at.clone());
    set_connected(shared, true, Some(at.applied));
    *backoff = Backoff::new();
    log::info!(
        "connected to redis at {}; reading the feed after id {}",
        shared.server,
        at.entry
    );
    while !stopped(stop_rx) {
        let reply = con.query(
            &Command::new("XREAD")
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(FEED_KEY)
                .arg(&at.entry),
        )?;
        let items = feed_items(&reply).map_err(|e| RespError::Protocol(e.to_string()))?;
        if items.is_empty() {
            continue;
        }
        // A full batch: this node is behind (it was stopped, say, with its
        // connection alive), and the feed may have been trimmed past its
        // cursor, which `XREAD` skips without a word. What the feed lost
        // is caught up first; the batch's events older than that are then
        // ignored by the broker as already applied.
        if items.len() >= BATCH {
            catch_up(shared, con, at.applied)?;
        }
        for item in items {
            let Some(entry_id) = entry_id_text(item) else {
                return Err(RespError::Protocol("a feed entry without an id".into()));
            };
            match redis_reply::parse_entry(item) {
                Ok(entry) => {
                    at.applied = entry.event.id;
                    apply(shared, &entry);
                }
                Err(e) => log::warn!("skipping feed entry {entry_id}: {e}"),
            }
            at.entry = entry_id;
        }
        *cursor = Some(at.clone());
        set_connected(shared, true, Some(at.applied));
    }
    Ok(())
}

fn apply(shared: &Shared, entry: &Entry) {
    let event = &entry.event;
    if let Err(e) = shared
        .broker
        .append(&entry.channel, event.id, event.event.as_deref(), &event.data)
    {
        log::warn!(
            "event {} of channel {} not kept on this node: {e}",
            event.id,
            entry.channel
        );
    }
}

/// After a reconnection, or a full batch read: if the feed dropped entries
/// after `applied` (it keeps about [`FEED_LEN`]), apply the missed events
/// of the channels this node holds from their own streams, in id order,
/// before reading on.
fn catch_up(shared: &Shared, con: &mut Connection, applied: EventId) -> Result<(), RespError> {
    let info = match con.query(&Command::new("XINFO").arg("STREAM").arg(FEED_KEY)) {
        Ok(info) => info,
        // No feed yet (an empty Redis answers `ERR no such key`): nothing
        // was dropped.
        Err(e) if e.code() == Some("ERR") => return Ok(()),
        Err(e) => return Err(e),
    };
    let fields = info_fields(&info);
    let number = |name: &str| {
        fields
            .get(name)
            .and_then(|v| redis_reply::text(v))
            .and_then(|t| t.parse::<u64>().ok())
    };
    let first = fields
        .get("first-entry")
        .and_then(|v| entry_id_text(v))
        .and_then(|id| parse_entry_id(&id));
    // Trimming keeps no record of what it dropped (`max-deleted-entry-id`
    // covers XDEL only), so: the feed has lost entries if it was ever longer
    // than it is (Redis 7 counts `entries-added`; older ones cannot tell, so
    // assume so), and may have lost ours if it now starts after our cursor.
    let trimmed = match (number("entries-added"), number("length")) {
        (Some(added), Some(length)) => added > length,
        _ => true,
    };
    if !trimmed || first.map_or(true, |f| f <= applied.saturating_add(1)) {
        return Ok(());
    }
    let channels = shared.broker.channel_names();
    log::warn!(
        "the feed may have dropped entries this node had not read (away for more than {FEED_LEN} events); \
         catching up {} channels from their streams",
        channels.len()
    );
    let commands: Vec<Command> = channels
        .iter()
        .map(|name| {
            Command::new("XRANGE")
                .arg(channel_key(name))
                .arg(format!("{applied}-1"))
                .arg(first.map_or_else(|| "+".to_string(), |f| format!("{f}-0")))
        })
        .collect();
    let replies = con.pipeline(&commands)?;
    let mut missed: Vec<Entry> = Vec::new();
    for (name, reply) in channels.iter().zip(&replies) {
        match redis_reply::parse_entries(reply) {
            Ok(entries) => missed.extend(entries),
            Err(e) => log::warn!("cannot catch up channel {name}: {e}"),
        }
    }
    missed.retain(|e| first.map_or(true, |f| e.event.id < f));
    missed.sort_by_key(|e| e.event.id);
    for entry in &missed {
        apply(shared, entry);
    }
    log::info!("caught up {} events missed from the feed", missed.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..7).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1600, 2000, 2000]);
    }
}

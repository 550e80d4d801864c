//! Counters shared by every thread, read by `/health` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A write failed or timed out, or what was written stayed
    /// unacknowledged a write timeout long: the client went away or
    /// stopped reading.
    ClientLeft,
    /// The subscriber fell more than `--queue-size` events behind.
    Slow,
    /// The server is shutting down.
    Shutdown,
    /// Anything else: a panic, an unexpected I/O error.
    Error,
}

impl CloseReason {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [CloseReason; 4] = [
        CloseReason::ClientLeft,
        CloseReason::Slow,
        CloseReason::Shutdown,
        CloseReason::Error,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientLeft => "client_left",
            CloseReason::Slow => "slow",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Process-wide counters. All updates are relaxed atomics: they are reports,
/// not synchronisation.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    started_unix: f64,
    open_streams: AtomicU64,
    events_published: AtomicU64,
    events_delivered: AtomicU64,
    disconnects: [AtomicU64; 4],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            open_streams: AtomicU64::new(0),
            events_published: AtomicU64::new(0),
            events_delivered: AtomicU64::new(0),
            disconnects: Default::default(),
        }
    }
}

impl Stats {
    /// Seconds since the server started.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The start time in seconds since the Unix epoch.
    pub fn start_time_unix(&self) -> f64 {
        self.started_unix
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u64 {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// Reserves a stream slot if fewer than `max` are open; the slot is freed
    /// when the returned guard drops.
    pub fn try_open_stream(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        let max = max as u64;
        self.open_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot {
                stats: Arc::clone(self),
            })
    }

    /// Counts one event accepted by `POST /publish`.
    pub fn count_published(&self) {
        self.events_published.fetch_add(1, Ordering::Relaxed);
    }

    /// Events accepted so far.
    pub fn events_published(&self) -> u64 {
        self.events_published.load(Ordering::Relaxed)
    }

    /// Counts `n` events written to one stream.
    pub fn count_delivered(&self, n: u64) {
        self.events_delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Events written to streams so far (one per event per stream).
    pub fn events_delivered(&self) -> u64 {
        self.events_delivered.load(Ordering::Relaxed)
    }

    /// Counts one stream that ended for `reason`.
    pub fn count_disconnect(&self, reason: CloseReason) {
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Streams that ended for `reason` so far.
    pub fn disconnects(&self, reason: CloseReason) -> u64 {
        self.disconnects[reason.index()].load(Ordering::Relaxed)
    }
}

/// One open stream counted in [`Stats`]; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    stats: Arc<Stats>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.stats.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_are_capped_and_released() {
        let stats = Arc::new(Stats::default());
        let a = stats.try_open_stream(2).expect("first slot");
        let _b = stats.try_open_stream(2).expect("second slot");
        assert!(stats.try_open_stream(2).is_none(), "third is over the cap");
        drop(a);
        assert_eq!(stats.open_streams(), 1);
        assert!(stats.try_open_stream(2).is_some());
    }
}

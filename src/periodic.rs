//! A background thread that does one job in rounds, pausing between them,
//! and stops when dropped (the keep-awake poke, the head guard).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The running thread; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Periodic {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Starts thread `name`, which waits `first_pause`, then runs `round`
    /// again and again, each time pausing as long as the round returned.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(
        name: &str,
        first_pause: Duration,
        mut round: impl FnMut() -> Duration + Send + 'static,
    ) -> io::Result<Periodic> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || {
                let mut pause = first_pause;
                loop {
                    std::thread::park_timeout(pause);
                    if stop_flag.load(Ordering::Acquire) {
                        break;
                    }
                    pause = round();
                }
            })?;
        Ok(Periodic {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[test]
    fn runs_rounds_until_dropped() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&rounds);
        let periodic = Periodic::start("test-periodic", Duration::ZERO, move || {
            counter.fetch_add(1, Ordering::AcqRel);
            Duration::from_millis(1)
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while rounds.load(Ordering::Acquire) < 3 {
            assert!(Instant::now() < deadline, "fewer than 3 rounds");
            std::thread::yield_now();
        }
        drop(periodic);
        let after = rounds.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rounds.load(Ordering::Acquire), after, "no round after the drop");
    }
}

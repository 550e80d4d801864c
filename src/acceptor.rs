//! tiny_http's acceptor thread, watched and restarted.
//!
//! tiny_http accepts connections on a thread of its own. It reports a failed
//! `accept` once, as an error from `recv`, and the thread then ends. (When
//! an accepted socket could not be duplicated, no descriptor left, tiny_http
//! 0.12 panicked and reported nothing; the patched copy answers that
//! connection `503` and accepts on.) The server would accept nothing more,
//! for good. [`Acceptor`] notices an ended thread (either way, in case a
//! panic still happens) and starts a new tiny_http server on the same listener once
//! [`FREE_TO_RESTART`] descriptors are free again (a connection takes two
//! until tiny_http's read half times out, see `listener`); connections made
//! meanwhile wait in the listen backlog, as they do in servers that pause
//! accepting on `EMFILE`.
//!
//! Requests are handled on their connections' threads (`http::dispatch`
//! gives tiny_http the handler), so the connections an old server accepted
//! go on being served once it is let go.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tiny_http::{Handler, Header};

/// How long to wait before starting a new acceptor, and between failed
/// tries: what stopped the last one (no descriptor left) rarely clears at
/// once.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Descriptors that must be free before a new acceptor starts: one for its
/// listener's clone and two for each connection it then accepts. Starting
/// it at the first free descriptor would have it accept a connection and
/// fail to duplicate it, dropping that client unanswered.
pub const FREE_TO_RESTART: usize = 16;

/// Restarts logged as warnings at most this often; the others at debug
/// level, so that a long burst does not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How often the acceptor thread is checked for life.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What [`Acceptor::next`] found.
pub enum Next {
    /// The acceptor runs (or was restarted).
    Nothing,
    /// The server is stopping (found while restarting the acceptor).
    Stopping,
}

/// tiny_http's server on a listener, restarted whenever its acceptor thread
/// stops.
pub struct Acceptor {
    running: Running,
    /// What each request is handed to.
    handler: Handler,
    /// Added to the answers tiny_http writes itself.
    error_headers: Vec<Header>,
    checked: Instant,
    /// When a restart was last logged as a warning.
    warned: Option<Instant>,
}

/// A tiny_http server, and a way to tell that its acceptor thread is gone:
/// the thread owns the listener's clone it was given, so its end closes
/// that descriptor, and the clone's `/proc/self/fd` entry still naming the
/// listening socket tells that it lives.
struct Running {
    server: tiny_http::Server,
    /// The clone's `/proc/self/fd/N` and its link while the acceptor lives
    /// (`None`: no `/proc`, cannot tell).
    probe: Option<(PathBuf, PathBuf)>,
}

impl Running {
    fn start(listener: &TcpListener, handler: &Handler, error_headers: &[Header]) -> Result<Running, String> {
        let clone = listener.try_clone().map_err(|e| e.to_string())?;
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", clone.as_raw_fd()));
        let probe = std::fs::read_link(&fd_path).ok().map(|link| (fd_path, link));
        let keep_alive = Some(crate::listener::KEEP_ALIVE_IDLE);
        let handler = Some(std::sync::Arc::clone(handler));
        // The spec's bounds on a request head: 16 KiB, complete within
        // 10 s (the head guard stays as a backstop).
        let head_limits = Some(tiny_http::HeadLimits {
            max_bytes: crate::http::MAX_HEAD_BYTES,
            deadline: crate::head_guard::HEAD_DEADLINE,
        });
        let server = tiny_http::Server::from_listener_handling(
            clone,
            None,
            keep_alive,
            handler,
            head_limits,
            error_headers.to_vec(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Running { server, probe })
    }

    fn is_alive(&self) -> bool {
        match &self.probe {
            Some((path, link)) => std::fs::read_link(path).is_ok_and(|now| &now == link),
            None => true,
        }
    }
}

impl Acceptor {
    /// Starts a tiny_http server on a clone of `listener`, which hands each
    /// request to `handler` on its connection's thread and adds
    /// `error_headers` to the answers it writes itself (a `431` for a head
    /// too large, say).
    ///
    /// # Errors
    /// The clone's or tiny_http's error, as text.
    pub fn start(
        listener: &TcpListener,
        handler: Handler,
        error_headers: Vec<Header>,
    ) -> Result<Acceptor, String> {
        Ok(Acceptor {
            running: Running::start(listener, &handler, &error_headers)?,
            handler,
            error_headers,
            checked: Instant::now(),
            warned: None,
        })
    }

    /// Lets go of the server without waiting for it (see [`drop_aside`]).
    pub fn close(self) {
        drop_aside(self.running.server);
    }

    /// Waits up to `timeout` for the acceptor to fail. When it has stopped,
    /// a new one is started on `listener`, trying until it can or
    /// `stopping()`.
    pub fn next(&mut self, listener: &TcpListener, timeout: Duration, stopping: impl Fn() -> bool) -> Next {
        let stopped = match self.running.server.recv_timeout(timeout) {
            // Never queued: every request goes to the handler.
            Ok(Some(request)) => {
                log::error!(
                    "a request was queued, not handled: {} {}",
                    request.method(),
                    request.url()
                );
                None
            }
            Ok(None) => None,
            Err(e) => Some(format!("accept failed ({e})")),
        };
        let stopped = stopped.or_else(|| {
            if self.checked.elapsed() < CHECK_EVERY {
                return None;
            }
            self.checked = Instant::now();
            let ended = "tiny_http's acceptor thread ended (out of descriptors?)";
            (!self.running.is_alive()).then(|| ended.to_string())
        });
        match stopped {
            None => Next::Nothing,
            Some(why) => {
                let level = if self.warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
                    log::Level::Debug
                } else {
                    self.warned = Some(Instant::now());
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "{why}; restarting the acceptor once {FREE_TO_RESTART} descriptors are free"
                );
                if self.restart(listener, stopping, level) {
                    Next::Nothing
                } else {
                    Next::Stopping
                }
            }
        }
    }

    /// Replaces the running server, trying every [`RETRY_EVERY`] until
    /// enough descriptors are free and a new one starts (true) or
    /// `stopping()` (false).
    /// A wait past two tries is logged at `level`.
    fn restart(&mut self, listener: &TcpListener, stopping: impl Fn() -> bool, level: log::Level) -> bool {
        let began = Instant::now();
        let mut reported = false;
        loop {
            std::thread::sleep(RETRY_EVERY);
            if stopping() {
                return false;
            }
            if free_descriptors().is_some_and(|free| free < FREE_TO_RESTART) {
                continue;
            }
            match Running::start(listener, &self.handler, &self.error_headers) {
                Ok(fresh) => {
                    if began.elapsed() > RETRY_EVERY * 2 {
                        log::log!(
                            level,
                            "acceptor restarted after {} ms without a descriptor to spare",
                            began.elapsed().as_millis()
                        );
                    }
                    let old = std::mem::replace(&mut self.running, fresh);
                    drop_aside(old.server);
                    return true;
                }
                Err(e) => {
                    if !reported {
                        log::error!(
                            "cannot restart the acceptor: {e}; retrying every {} ms",
                            RETRY_EVERY.as_millis()
                        );
                        reported = true;
                    }
                }
            }
        }
    }
}

/// Descriptors this process can still open (`None`: cannot tell).
fn free_descriptors() -> Option<usize> {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    match std::fs::read_dir("/proc/self/fd") {
        // Less than the one descriptor reading the directory takes.
        Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => Some(0),
        Err(_) => None,
        // The count includes the directory's own descriptor.
        Ok(entries) => Some(soft.saturating_sub(entries.count().saturating_sub(1))),
    }
}

/// Drops `value` (tiny_http servers) on a thread of its own. Dropping a
/// tiny_http server connects to its own listening address to wake its
/// acceptor thread, with no timeout: where that address does not answer
/// (its interface went down) the connect waits for minutes, and neither a
/// stop nor the dispatch loop may.
fn drop_aside<T: Send + 'static>(value: T) {
    // Where no thread can be started, std drops the closure, and `value`
    // with it, here.
    let spawned = std::thread::Builder::new()
        .name("acceptor-drop".into())
        .stack_size(crate::SMALL_STACK)
        .spawn(move || drop(value));
    if let Err(e) = spawned {
        log::debug!("cannot drop a tiny_http server aside ({e}); dropped it here");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_descriptors_follow_opened_files() {
        let before = free_descriptors().expect("/proc/self/fd");
        let held: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let during = free_descriptors().expect("/proc/self/fd");
        drop(held);
        // Other test threads open and close files too; 64 held must show,
        // give or take.
        assert!(
            during + 32 <= before,
            "before {before}, with 64 more open {during}"
        );
    }
}

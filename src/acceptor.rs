//! tiny_http's acceptor thread, watched and restarted.
//!
//! tiny_http accepts connections on a thread of its own. It reports a failed
//! `accept` once, as an error from `recv`, and the thread then ends; and when
//! an accepted socket cannot be duplicated (no descriptor left) it panics
//! (an `unwrap` in tiny_http 0.12) and nothing is reported at all. Either
//! way the server would accept nothing more, for good. [`Acceptor`] tells
//! whether the thread lives, and [`restart`] builds a new one on the same
//! listener, trying until it can; connections made meanwhile wait in the
//! listen backlog.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

/// How often a failed restart is tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);

/// How often the dispatcher should check that the acceptor lives.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// A tiny_http server, and a way to tell that its acceptor thread is gone:
/// the thread owns the listener's clone it was given, so its end closes
/// that descriptor, and the clone's `/proc/self/fd` entry still naming the
/// listening socket tells that it lives.
pub struct Acceptor {
    server: tiny_http::Server,
    /// The clone's `/proc/self/fd/N` and its link while the acceptor lives
    /// (`None`: no `/proc`, cannot tell).
    probe: Option<(PathBuf, PathBuf)>,
}

impl Acceptor {
    /// Starts a tiny_http server on a clone of `listener`.
    ///
    /// # Errors
    /// The clone's or tiny_http's error, as text.
    pub fn start(listener: &TcpListener) -> Result<Acceptor, String> {
        let clone = listener.try_clone().map_err(|e| e.to_string())?;
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", clone.as_raw_fd()));
        let probe = std::fs::read_link(&fd_path).ok().map(|link| (fd_path, link));
        let server = tiny_http::Server::from_listener(clone, None).map_err(|e| e.to_string())?;
        Ok(Acceptor { server, probe })
    }

    /// The server, to receive requests from.
    pub fn server(&self) -> &tiny_http::Server {
        &self.server
    }

    /// False once the acceptor thread is known to have ended.
    pub fn is_alive(&self) -> bool {
        match &self.probe {
            Some((path, link)) => std::fs::read_link(path).is_ok_and(|now| &now == link),
            None => true,
        }
    }
}

/// Starts a new acceptor on `listener` after the last one stopped, trying
/// again every [`RETRY_EVERY`] until it can (the usual cause, no descriptor
/// left, also keeps the listener from being cloned) or `stopping()` says
/// the server is stopping (then `None`). tiny_http reports a stopped
/// acceptor only once: giving up after one failed try left the server
/// accepting nothing, for good.
pub fn restart(listener: &TcpListener, stopping: impl Fn() -> bool) -> Option<Acceptor> {
    let mut failures = 0u32;
    loop {
        match Acceptor::start(listener) {
            Ok(acceptor) => {
                if failures > 0 {
                    log::warn!("acceptor restarted after {failures} failed tries");
                }
                return Some(acceptor);
            }
            Err(e) => {
                if failures == 0 {
                    log::error!(
                        "cannot restart the acceptor: {e}; retrying every {} ms",
                        RETRY_EVERY.as_millis()
                    );
                }
                failures += 1;
                if stopping() {
                    return None;
                }
                std::thread::sleep(RETRY_EVERY);
            }
        }
    }
}

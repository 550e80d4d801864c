//! Fault injection for the test suite, so that it can check that a panic
//! while serving one connection ends that connection only.
//!
//! Only in debug builds, and only with the environment variable
//! `TINYSSE_FAULTS=1`: a stream subscribed to, or a publish to, a channel
//! whose name starts with `fault.panic` panics. Release builds compile this
//! to nothing.

use std::sync::OnceLock;

/// Panics when fault injection is on and `channel` asks for it.
pub fn panic_if_requested(channel: &str) {
    if cfg!(debug_assertions) && channel.starts_with("fault.panic") && enabled() {
        panic!("fault injected for channel {channel}");
    }
}

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("TINYSSE_FAULTS").is_some_and(|v| v == "1"))
}

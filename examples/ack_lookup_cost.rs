//! What one acknowledgement check costs (`src/ack_watch.rs`): a loopback
//! connection, then 10,000 checks, each one netlink lookup of that
//! connection on the shared socket. Prints the time per check.
//!
//!     cargo run --release --example ack_lookup_cost

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tinysse::ack_watch::AckWatch;

const CHECKS: u32 = 10_000;

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let bound = listener.local_addr()?;
    let _client = TcpStream::connect(bound)?;
    let (_server_side, peer) = listener.accept()?;
    let write_timeout = Duration::from_millis(1);
    let mut watch = AckWatch::new(Some(bound), Some(peer), write_timeout);
    // The first ping confirms the connection's addresses (one lookup more).
    watch.pinged(Instant::now(), 0);
    if watch.due().is_none() {
        eprintln!("no check here: netlink socket diagnostics are not allowed");
        std::process::exit(1);
    }
    let started = Instant::now();
    for _ in 0..CHECKS {
        let now = Instant::now();
        watch.pinged(now, 0);
        watch.check(now + write_timeout)?;
    }
    let each = started.elapsed() / CHECKS;
    println!(
        "{{\"checks\":{CHECKS},\"per_check_us\":{:.2}}}",
        each.as_secs_f64() * 1e6
    );
    Ok(())
}

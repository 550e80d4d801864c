//! What a stream costs the server in memory it keeps: its thread's stack.

use std::time::Duration;

use super::support::*;

/// The stack pointer of a thread blocked in a system call
/// (`/proc/PID/task/TID/syscall`: number, six arguments, stack pointer,
/// program counter), or `None` while it runs.
fn blocked_stack_pointer(task: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(task.join("syscall")).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != 9 {
        return None;
    }
    u64::from_str_radix(fields[7].trim_start_matches("0x"), 16).ok()
}

/// The start of the mapping of `/proc/PID/maps` that holds `address`.
fn mapping_start(pid: u32, address: u64) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let (start, end) = line.split_whitespace().next()?.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        (start..end).contains(&address).then_some(start)
    })
}

/// How many pages of `[from, to)` are resident (`/proc/PID/pagemap`: eight
/// bytes per page, bit 63 "present"; readable without privileges, which only
/// hide the frame numbers); bit 63 is the top bit of the last byte).
fn resident_pages(pid: u32, from: u64, to: u64) -> Option<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let pages = usize::try_from((to - from) / PAGE).ok()?;
    let mut entries = vec![0u8; pages * 8];
    pagemap.seek(SeekFrom::Start(from / PAGE * 8)).ok()?;
    pagemap.read_exact(&mut entries).ok()?;
    Some(entries.chunks_exact(8).filter(|e| e[7] & 0x80 != 0).count())
}

const PAGE: u64 = 4096;

#[test]
fn a_waiting_stream_thread_keeps_its_stack_within_its_pages() {
    // Frames of an unoptimized build are several times larger: only the
    // release binary's paths are worth checking (`.ci/run` runs this test
    // with `cargo test --release`).
    if cfg!(debug_assertions) {
        println!("skipped: stack pages are measured on a release build (cargo test --release)");
        return;
    }
    // Every path a stream takes in its life runs first: the head, events
    // (one of them replayed), pings and the check, a write timeout after
    // each, that the client acknowledged them; then the threads wait.
    let server = TestServer::start(&["--ping-interval", "1s", "--write-timeout", "200ms"]);
    // The process's first streams take once-only paths too (lazy set-up in
    // the libraries, tens of KiB deep); what every stream costs shows after.
    let warm_up: Vec<SseClient> = (0..4)
        .map(|_| SseClient::connect(server.addr, "/events?channel=footprint", &[]))
        .collect();
    assert!(wait_until(Duration::from_secs(10), || open_streams(server.addr) == 4));
    let first = publish(server.addr, "footprint", "before");
    drop(warm_up);
    assert!(wait_until(Duration::from_secs(10), || server
        .stream_tasks()
        .is_empty()));
    let mut clients: Vec<SseClient> = (0..8)
        .map(|i| {
            let last = (i % 2 == 0).then(|| (first - 1).to_string());
            let headers: Vec<(&str, &str)> = last.iter().map(|id| ("Last-Event-ID", id.as_str())).collect();
            SseClient::connect(server.addr, "/events?channel=footprint", &headers)
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || open_streams(server.addr) == 8));
    publish(server.addr, "footprint", "after");
    for client in &mut clients {
        let mut saw_after = false;
        // Two: the first one's check came before the second.
        let mut pings = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(saw_after && pings >= 2) && std::time::Instant::now() < deadline {
            let Some(block) = client.next_block(Duration::from_secs(5)) else {
                break;
            };
            saw_after |= block.contains("data: after");
            pings += usize::from(block.starts_with(": ping"));
        }
        assert!(
            saw_after && pings >= 2,
            "an event and two pings reach every stream"
        );
    }
    // Each waiting stream thread: no page of its stack below the one it
    // waits in may be resident. A deeper excursion of any path it took
    // (a log line, a request thread's reused stack) would stay resident for
    // the stream's whole life. The mapping's low end is the guard page's
    // edge, so no other mapping merged into it there.
    let tasks = server.stream_tasks();
    assert_eq!(tasks.len(), 8);
    for task in &tasks {
        let mut below = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                below = blocked_stack_pointer(task).and_then(|sp| {
                    let low = mapping_start(server.pid(), sp)?;
                    resident_pages(server.pid(), low, sp / PAGE * PAGE)
                });
                below.is_some()
            }),
            "{} never found waiting",
            task.display()
        );
        assert_eq!(
            below,
            Some(0),
            "stream thread {}: resident stack pages below the one it waits in",
            task.display()
        );
    }
}

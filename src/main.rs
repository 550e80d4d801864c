//! The `tinysse` binary: arguments to a config, logging, run until SIGINT or
//! SIGTERM, exit code.

use std::io::Write;
use std::process::ExitCode;

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGINT, SIGTERM};
use tinysse::config::{self, Command};
use tinysse::{Config, Server};

/// One heap for every thread, without glibc's per-thread caches: each of
/// thousands of stream threads would otherwise keep its own tcache of freed
/// blocks for its whole life.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// Keeps std from giving every thread an alternate signal stack.
///
/// Before `main`, std installs a SIGSEGV/SIGBUS handler that prints "has
/// overflowed its stack", and from then on maps an 8 KiB signal stack and a
/// guard page for each new thread: two more memory mappings per stream
/// thread, where the kernel allows 65,530 per process (`vm.max_map_count`),
/// which capped a server at ~14,800 streams. std leaves both alone when the
/// signals already have a handler, so this ELF constructor, which runs
/// before std's set-up, sets them to "ignore". A real fault is still fatal:
/// the kernel resets an ignored SIGSEGV or SIGBUS that it raises for a
/// faulting access to the default action and the process dies with it, as
/// before, only without std's message.
#[used]
#[link_section = ".init_array"]
static NO_SIGNAL_STACKS: extern "C" fn() = ignore_fault_signals_before_std;

extern "C" fn ignore_fault_signals_before_std() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGSEGV, Signal::SIGBUS] {
        // SAFETY: runs before `main`, single-threaded, and installs no
        // handler function, only the kernel's "ignore" disposition.
        let _ = unsafe { sigaction(signal, &ignore) };
    }
}

/// True when SIGSEGV and SIGBUS are ignored, as
/// [`ignore_fault_signals_before_std`] left them, so that std gave threads
/// no signal stacks (read from `/proc/self/status`; false if unreadable).
fn fault_signals_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let ignored = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
    let bit = |signal: i32| 1u64 << (signal - 1);
    ignored.is_some_and(|mask| {
        let wanted = bit(Signal::SIGSEGV as i32) | bit(Signal::SIGBUS as i32);
        mask & wanted == wanted
    })
}

/// Stack size for tiny_http's connection threads, which follow only
/// `RUST_MIN_STACK`. They parse request heads and touch 12 KiB; the size is
/// about glibc, which keeps up to 40 MiB of exited threads' stacks for reuse,
/// touched pages and all. After a burst of connects, 128 KiB pool stacks
/// left ~310 cached (3.7 MiB resident); at 1 MiB at most 40 stay (0.5 MiB),
/// and a cached pool stack, 8 times a stream's 128 KiB, is not reused for a
/// stream thread either (glibc takes at most 4 times the size asked).
/// 1,000 streams: 20.9 -> 17.7 KiB of RSS per stream.
const POOL_STACK: &str = "1048576";

fn main() -> ExitCode {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // Still single-threaded here: nothing else reads the environment.
        std::env::set_var("RUST_MIN_STACK", POOL_STACK);
    }
    let command = config::parse(std::env::args_os().skip(1), |name| std::env::var(name).ok());
    let config = match command {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("tinysse {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tinysse: {e}");
            return ExitCode::from(2);
        }
    };
    tinysse::logger::init(config.log);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("tinysse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::info!("open files limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
    if let Some(warning) = config.exposure_warning() {
        log::warn!("{warning}");
    }
    if fault_signals_ignored() {
        tinysse::server::threads_have_no_signal_stack();
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let server = Server::start(config)?;
    println!("tinysse listening on http://{}", server.local_addr());
    let _ = std::io::stdout().flush();
    log::info!("listening on http://{}", server.local_addr());
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal} received, stopping");
    }
    server.stop();
    Ok(())
}

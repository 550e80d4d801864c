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

/// Thread-local destructors kept off glibc's malloc.
///
/// std registers every thread's TLS destructors with glibc's
/// `__cxa_thread_atexit_impl`, which `calloc`s a 32-byte list node, and a
/// thread's first `calloc` makes glibc give that thread its own cache of
/// freed blocks (tcache, 656 bytes) from one of its arenas. Stream threads
/// never call glibc's malloc otherwise (Rust's allocations go to dlmalloc),
/// so that is about 0.7 KiB per stream for nothing. This definition in the
/// executable is the one std's weak reference binds to: a thread other than
/// the main one keeps its destructors in a list of its own (nodes from
/// dlmalloc) and a pthread key, whose destructor glibc calls at thread exit
/// without allocating, runs them, newest first. The main thread's go to
/// glibc's implementation as before, so they still run at `exit`. (A static
/// musl build has no such implementation to forward to: there the main
/// thread's destructors are not run at exit, which ends the process anyway;
/// other threads' are, as with glibc.)
mod thread_exit {
    use std::cell::Cell;
    use std::ffi::{c_int, c_void};
    use std::ptr;
    #[cfg(test)]
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use nix::libc;

    type Destructor = unsafe extern "C" fn(*mut c_void);
    type Register = unsafe extern "C" fn(Destructor, *mut c_void, *mut c_void) -> c_int;

    struct Pending {
        destructor: Destructor,
        object: *mut c_void,
        next: *mut Pending,
    }

    thread_local! {
        /// This thread's destructors, newest first. No destructor of its
        /// own, so it stays readable while they run.
        static PENDING: Cell<*mut Pending> = const { Cell::new(ptr::null_mut()) };
    }

    /// Destructors registered through this module, for the test that
    /// checks std's registrations come here.
    #[cfg(test)]
    pub static REGISTERED: AtomicUsize = AtomicUsize::new(0);

    /// The pthread key whose destructor runs a thread's list.
    fn key() -> Option<libc::pthread_key_t> {
        static KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();
        *KEY.get_or_init(|| {
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: `key` is a valid place for the new key, and
            // `run_pending` has the signature pthread key destructors have.
            let created = unsafe { libc::pthread_key_create(&mut key, Some(run_pending)) };
            (created == 0).then_some(key)
        })
    }

    /// glibc's own implementation, for the main thread.
    fn glibc_register() -> Option<Register> {
        static GLIBC: OnceLock<usize> = OnceLock::new();
        let address = *GLIBC.get_or_init(|| {
            // SAFETY: a NUL-terminated symbol name; RTLD_NEXT looks past
            // this executable, to libc.
            unsafe { libc::dlsym(libc::RTLD_NEXT, c"__cxa_thread_atexit_impl".as_ptr()) as usize }
        });
        // SAFETY: a non-null address from dlsym for this symbol is glibc's
        // function of exactly this signature.
        (address != 0).then(|| unsafe { std::mem::transmute::<usize, Register>(address) })
    }

    /// Runs the calling thread's destructors, including any they register.
    unsafe extern "C" fn run_pending(_: *mut c_void) {
        loop {
            let mut next = PENDING.with(|pending| pending.replace(ptr::null_mut()));
            if next.is_null() {
                return;
            }
            while !next.is_null() {
                // SAFETY: every node was made by `Box::into_raw` below and
                // is taken off the list exactly once, here.
                let pending = unsafe { Box::from_raw(next) };
                next = pending.next;
                // SAFETY: called once, on the registering thread, at its
                // exit, as the registration asked.
                unsafe { (pending.destructor)(pending.object) };
            }
        }
    }

    /// # Safety
    /// As glibc's: `destructor` must be safe to call once with `object` on
    /// this thread when it exits.
    #[no_mangle]
    pub unsafe extern "C" fn __cxa_thread_atexit_impl(
        destructor: Destructor,
        object: *mut c_void,
        dso_symbol: *mut c_void,
    ) -> c_int {
        // SAFETY: plain system calls without arguments.
        let main_thread = unsafe { libc::gettid() == libc::getpid() };
        let own = if main_thread { None } else { key() };
        let Some(key) = own else {
            return match glibc_register() {
                // SAFETY: forwarded unchanged to the implementation std
                // would have called.
                Some(register) => unsafe { register(destructor, object, dso_symbol) },
                None => -1,
            };
        };
        let node = Box::into_raw(Box::new(Pending {
            destructor,
            object,
            next: PENDING.with(Cell::get),
        }));
        PENDING.with(|pending| pending.set(node));
        #[cfg(test)]
        REGISTERED.fetch_add(1, Ordering::Relaxed);
        // Any non-null value makes glibc call the key's destructor.
        // SAFETY: `key` was created by `pthread_key_create`.
        unsafe { libc::pthread_setspecific(key, ptr::NonNull::<c_void>::dangling().as_ptr()) }
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
/// `RUST_MIN_STACK`. They parse request heads and answer the requests
/// (streams aside), touching up to ~24 KiB; the size is
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
    report_tiny_http_panics_as_warnings();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("tinysse: {e}");
            ExitCode::FAILURE
        }
    }
}

/// tiny_http 0.12 has unwraps that a client can reach: the published crate
/// unwrapped the peer address of a connection whose client reset it before
/// tiny_http asked for the address (`client.rs`; 55,696 panics in 8 s from
/// 8 threads that connect, send a request and reset), fixed in the patched
/// copy this project builds (`vendor/tiny_http`), and others remain (its
/// internal channels). Such a panic ends the pool thread serving that
/// connection: the connection ends and the server goes on, but the default
/// hook would print a panic report and a backtrace note on stderr for what
/// is a client leaving. A panic inside tiny_http is logged as one warning
/// line instead, at most every [`TINY_HTTP_PANIC_REPORT_EVERY`] with the
/// count since the last (debug level in between); every other panic keeps
/// the default report.
fn report_tiny_http_panics_as_warnings() {
    use std::sync::Mutex;
    use std::time::Instant;
    /// When the last warning was written, and the count of such panics then.
    static LAST_REPORT: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match info.location() {
        Some(at) if is_in_tiny_http(at.file()) => {
            let lost = tinysse::listener::note_pool_thread_lost();
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let mut last = LAST_REPORT.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|(at, _)| at.elapsed() < TINY_HTTP_PANIC_REPORT_EVERY) {
                log::debug!("a connection ended by a panic inside tiny_http: {message}");
                return;
            }
            let count = lost - last.map_or(0, |(_, then)| then);
            *last = Some((Instant::now(), lost));
            log::warn!(
                "{count} connection(s) ended by a panic inside tiny_http since the last such line (a client that reset its connection at once?), the last at {}:{}: {message}",
                at.file(),
                at.line()
            );
        }
        _ => default_hook(info),
    }));
}

/// See [`report_tiny_http_panics_as_warnings`].
const TINY_HTTP_PANIC_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// True for a source file of the tiny_http crate, as panic locations name
/// them: `vendor/tiny_http/src/client.rs` (the patched copy this project
/// builds) or `.../tiny_http-0.12.0/src/client.rs` (the crate as published).
fn is_in_tiny_http(file: &str) -> bool {
    file.split(['/', '\\'])
        .any(|part| part == "tiny_http" || part.starts_with("tiny_http-"))
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::info!("open files limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
    // Warned once listening: a host that cannot be bound fails instead.
    let exposure_warning = config.exposure_warning();
    if fault_signals_ignored() {
        tinysse::server::threads_have_no_signal_stack();
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let server = Server::start(config)?;
    println!("tinysse listening on http://{}", server.local_addr());
    let _ = std::io::stdout().flush();
    log::info!("listening on http://{}", server.local_addr());
    if let Some(warning) = exposure_warning {
        log::warn!("{warning}");
    }
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal} received, stopping");
    }
    server.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    struct Notify(mpsc::Sender<&'static str>);

    impl Drop for Notify {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }

    thread_local! {
        static NOTIFY: std::cell::RefCell<Option<Notify>> = const { std::cell::RefCell::new(None) };
    }

    #[test]
    fn panics_are_told_inside_tiny_http_by_their_file() {
        assert!(super::is_in_tiny_http(
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tiny_http-0.12.0/src/client.rs"
        ));
        assert!(super::is_in_tiny_http(r"C:\cargo\tiny_http-0.12.0\src\client.rs"));
        assert!(super::is_in_tiny_http("vendor/tiny_http/src/client.rs"));
        assert!(!super::is_in_tiny_http("src/http.rs"));
        assert!(!super::is_in_tiny_http("/work/tinysse/src/tiny_http_glue.rs"));
    }

    #[test]
    fn a_thread_s_tls_destructors_run_when_it_exits() {
        let before = super::thread_exit::REGISTERED.load(Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || NOTIFY.with(|n| *n.borrow_mut() = Some(Notify(tx))))
            .join()
            .unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok("dropped"));
        // Registered through this binary's list, not glibc's.
        assert!(super::thread_exit::REGISTERED.load(Ordering::Relaxed) > before);
    }
}

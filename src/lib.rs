//! tinysse: a small Server-Sent Events push server.
//!
//! A synchronous `tiny_http` server accepts requests; every stream gets its
//! own thread, which waits (the demo stream in `crossbeam_channel::select!`
//! on its tickers and the shutdown signal, a channel stream parked until its
//! subscription is woken or its next ping is due) and writes each event to
//! the client as it comes. A failed write is how it learns the client left.
//!
//! ```no_run
//! let config = tinysse::Config { port: 0, ..tinysse::Config::default() };
//! let server = tinysse::Server::start(config).expect("bind");
//! println!("listening on http://{}", server.local_addr());
//! server.stop();
//! ```
//!
//! Modules, each with one job:
//! - [`config`]: options and environment to a validated [`Config`];
//! - [`event`]: the SSE wire format;
//! - [`last_event_id`]: ids as clients send them back;
//! - [`broker`]: channels, history, subscribers, ids;
//! - [`stream`]: one stream's life;
//! - [`http`]: dispatching and answering requests;
//! - [`json_text`]: the JSON bodies of answers;
//! - [`publish`]: publish bodies;
//! - [`metrics`] and [`stats`]: counters and their exposition;
//! - [`listener`]: the listening socket's options;
//! - [`periodic`]: background threads that work in rounds (keep-awake, head guard, ping clock);
//! - [`head_guard`]: the backstop for trickled request heads, and streams told of their client closing;
//! - [`redis_bus`]: several nodes sharing channels through Redis;
//! - [`server`]: start and stop;
//! - [`logger`]: log lines on stderr;
//! - [`stream_log`]: streams' closing lines, written off their threads;
//! - [`fault`]: fault injection for the tests (debug builds only).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acceptor;
pub mod ack_watch;
pub mod broker;
pub mod config;
pub mod event;
pub mod fault;
pub mod framing;
pub mod head_guard;
pub mod http;
pub mod json_text;
pub mod keep_alive;
pub mod last_event_id;
pub mod listener;
pub mod logger;
pub mod metrics;
pub mod periodic;
pub mod publish;
pub mod redis_bus;
mod redis_reader;
mod redis_reply;
mod redis_url;
mod resp;
pub mod server;
mod sock_diag;
pub mod socket_table;
pub mod stats;
pub mod stream;
pub mod stream_log;

pub use config::Config;
pub use server::{Server, StartError};

/// Stack size of the threads tinysse starts (streams, fan-out, periodic
/// work; tiny_http's connection threads follow `RUST_MIN_STACK`, see
/// `main.rs`): they need little, and a stream's whole cost matters at
/// 10,000 streams.
pub const SMALL_STACK: usize = 128 * 1024;

/// The page served at `GET /demo`.
pub const DEMO_PAGE: &str = include_str!("demo.html");

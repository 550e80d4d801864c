//! A reference SSE server on axum/tokio, for BENCHMARKS.md only: it speaks
//! the part of tinysse's API that `examples/loadgen.rs` uses (`GET
//! /events?channel=`, `POST /publish?channel=` with the body as the data), so
//! that the comparison with an async server can be rerun on the same
//! host with the same client:
//!
//!     cargo build --release --manifest-path benches/reference-axum/Cargo.toml \
//!         --target-dir target/reference-axum
//!     BENCH_BIN=target/reference-axum/release/reference-axum \
//!         examples/bench.sh 1000 --connect-rate 400
//!
//! Each channel is a `tokio::sync::broadcast` of 256 events; a subscriber
//! that falls behind skips what it missed. No history, replay, limits or
//! CORS: it is the least an async server does for this load, not a product.
//! Options other than `--port` are ignored (bench.sh passes tinysse's).
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<(u64, String)>>>,
    next_id: AtomicU64,
}

impl Hub {
    fn sender(&self, channel: &str) -> broadcast::Sender<(u64, String)> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .clone()
    }
}

#[derive(Deserialize)]
struct ChannelQuery {
    channel: Option<String>,
}

async fn events(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<ChannelQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = hub.sender(q.channel.as_deref().unwrap_or("default")).subscribe();
    let stream = BroadcastStream::new(rx)
        .filter_map(|item| item.ok())
        .map(|(id, data)| Ok(Event::default().id(id.to_string()).data(data)));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn publish(State(hub): State<Arc<Hub>>, Query(q): Query<ChannelQuery>, body: String) -> String {
    let channel = q.channel.unwrap_or_else(|| "default".into());
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let subscribers = hub.sender(&channel).send((id, body)).unwrap_or(0);
    format!("{{\"id\":\"{id}\",\"channel\":\"{channel}\",\"subscribers\":{subscribers}}}")
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8000);
    let app = Router::new()
        .route("/events", get(events))
        .route("/publish", post(publish))
        .with_state(Arc::new(Hub::default()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("cannot bind 127.0.0.1:PORT")
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app).await.expect("serving failed");
}

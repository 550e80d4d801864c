//! `GET /metrics`: the counters in Prometheus' text exposition format.

use std::fmt::Write;

use crate::broker::Broker;
use crate::stats::{CloseReason, Stats};

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric, each with `# HELP` and `# TYPE`.
pub fn render(stats: &Stats, broker: &Broker) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP tinysse_{name} {help}");
        let _ = writeln!(out, "# TYPE tinysse_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "tinysse_{name}{labels} {value}");
        }
    };
    metric(
        "open_streams",
        "gauge",
        "Streams open now.",
        &[("", stats.open_streams().to_string())],
    );
    metric(
        "events_published_total",
        "counter",
        "Events accepted by POST /publish.",
        &[("", stats.events_published().to_string())],
    );
    metric(
        "events_delivered_total",
        "counter",
        "Events written to streams, one per event per stream.",
        &[("", stats.events_delivered().to_string())],
    );
    let by_reason: Vec<(String, String)> = CloseReason::ALL
        .iter()
        .map(|r| {
            (
                format!("{{reason=\"{}\"}}", r.as_str()),
                stats.disconnects(*r).to_string(),
            )
        })
        .collect();
    let by_reason: Vec<(&str, String)> = by_reason.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
    metric(
        "disconnects_total",
        "counter",
        "Streams ended, by reason.",
        &by_reason,
    );
    metric(
        "slow_subscribers_dropped_total",
        "counter",
        "Subscribers dropped for falling more than --queue-size events behind.",
        &[("", stats.disconnects(CloseReason::Slow).to_string())],
    );
    metric(
        "channels",
        "gauge",
        "Channels held now.",
        &[("", broker.channel_count().to_string())],
    );
    metric(
        "history_events",
        "gauge",
        "Events held for replay, all channels.",
        &[("", broker.history_size().to_string())],
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
        &[("", format!("{:.3}", stats.start_time_unix()))],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerConfig;

    #[test]
    fn every_sample_has_help_and_type() {
        let broker = Broker::new(BrokerConfig {
            history: 10,
            queue_size: 10,
            max_channels: 10,
        });
        broker.publish("a", None, "x").unwrap();
        let text = render(&Stats::default(), &broker);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(text.contains("tinysse_channels 1\n"));
        assert!(text.contains("tinysse_history_events 1\n"));
        assert!(text.contains("tinysse_disconnects_total{reason=\"slow\"} 0\n"));
    }
}

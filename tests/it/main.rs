//! Integration tests: the real binary on an ephemeral port, real TCP.

mod support;

mod browser;
mod channels;
mod core;
mod cors;
mod footprint;
mod hardening;
mod logging;
mod metrics;
mod nginx;
mod redis;
mod vanish;

//! Integration tests: the real binary on an ephemeral port, real TCP.

mod hardening;
mod support;

mod channels;
mod core;
mod redis;

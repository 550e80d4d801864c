//! Integration tests: the real binary on an ephemeral port, real TCP.

mod support;

mod channels;
mod core;

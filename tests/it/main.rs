//! The integration suite: one test binary (each area a module), so the crate is linked once.
//! Everything runs against real sockets on port 0, a recording upstream, the real gate and
//! the real binary.

mod common;

mod architecture;
mod binary;
mod browser;
mod config_reference;
mod deploy;
mod h2_abuse;
mod hostile_clients;
mod idp;
mod import;
mod json_parse;
mod login;
mod metrics;
mod passthrough;
mod rack_model;
mod redis;
mod redis_cluster;
mod replay;
mod replay_window;
mod smuggling;
mod tls;
mod upstream_pool;

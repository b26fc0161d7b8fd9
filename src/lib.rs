//! jwt-gate: a reverse-proxy sidecar that terminates GitLab's JWT login.
//!
//! Only a verified, first-use login reaches GitLab, with the identity it carries in
//! headers; every other request streams through untouched. See README.md and DESIGN.md.
//!
//! Imports flow one way (held by `tests/it/architecture.rs`):
//! `config`, `telemetry`, `clock`, `reload` (leaves) ← `tls`, `replay` ← `login`, `proxy` ←
//! `idp` (the IdP's key set: fetched, cached) ← `app` (startup) ← `server`, `admin` ← `tools`. The proxy knows no JWT; login never
//! forwards; nothing in the product depends on the tools.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod idp;
pub mod login;
pub mod proxy;
pub mod reload;
pub mod replay;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod tools;

pub use config::Config;

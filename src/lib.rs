//! jwt-gate: a reverse-proxy sidecar that terminates GitLab's JWT login.
//!
//! Only a verified, first-use login reaches GitLab, with the identity it carries in
//! headers; every other request streams through untouched. See README.md and DESIGN.md.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod explain;
pub mod import;
pub mod login;
pub mod metrics;
pub mod proxy;
pub mod redirect;
pub mod replay;
pub mod server;
pub mod tls;

pub use config::Config;
pub use server::{serve, App};

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Current unix time in whole seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

static START: OnceLock<i64> = OnceLock::new();

/// Unix time (seconds) at which this process first asked: call early in `main`.
pub fn process_start() -> i64 {
    *START.get_or_init(unix_now)
}

/// Run `f` every `every` (after a first full interval) for as long as `target` lives.
pub(crate) fn spawn_periodic<T, F, Fut>(
    target: std::sync::Weak<T>,
    every: std::time::Duration,
    f: F,
) where
    T: Send + Sync + 'static,
    F: Fn(std::sync::Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(t) = target.upgrade() else { return };
            f(t).await;
        }
    });
}

//! Single-use tokens: a store that checks and records a replay key in one atomic step.
//!
//! Nothing is recorded before the token's signature verified (a forged token carrying a
//! victim's jti must not burn it), and an entry lives until the token could no longer pass
//! the time checks.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// Who used a token first, and when: what the audit line of a refused replay reports, so
/// an impatient double-click (same client, a second later) is told apart from a stolen
/// token used elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstUse {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// The client's address, as the trusted proxies tell it.
    pub client: IpAddr,
}

/// A token's times, as the store needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// Its iat (unix seconds).
    pub iat: i64,
    /// The first whole second at which it can no longer pass: the record lives until then.
    pub expires_at: i64,
}

/// Result of a check-and-record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First use: recorded now.
    Fresh,
    /// Seen before and still live; the first use, where the store could tell.
    Replayed(Option<FirstUse>),
    /// Issued before the store lost its records (found while recording it): it may have
    /// been used already.
    BeforeEpoch,
}

/// Why the store could not prove a login unused. Both fail closed (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("replay store is full")]
    Full,
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Full => "replay_store_full",
            StoreError::Unavailable(_) => "replay_store_unavailable",
        }
    }
}

pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<Recorded, StoreError>> + Send + 'a>>;
pub type HealthFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

pub trait ReplayStore: Send + Sync + 'static {
    /// Atomically: if `key` is recorded and live at `now`, `Replayed` (with its first use);
    /// else record it with `use_` until `expires_at` (unix seconds) and answer `Fresh`.
    /// `iat` is the token's: a store that finds it lost its records while recording answers
    /// `BeforeEpoch` for a token issued before the loss.
    fn check_and_record<'a>(
        &'a self,
        key: &'a [u8; 32],
        token: TokenTimes,
        now: i64,
        use_: FirstUse,
    ) -> StoreFuture<'a>;
    /// Live entries, where the store can tell cheaply (metrics and readiness).
    fn entries(&self) -> Option<usize>;
    fn kind(&self) -> &'static str;
    /// Start background upkeep (the memory store's sweeper), every `every`. Needs a runtime.
    fn start_maintenance(self: std::sync::Arc<Self>, _every: std::time::Duration) {}
    /// Tokens issued before this unix second are refused: the store lost its records then
    /// (a Redis restarted without persistence, flushed, or failed over to an empty replica),
    /// so any of them may have been used already.
    fn issued_floor(&self) -> Option<i64> {
        None
    }
    /// A standing reason the store cannot be trusted (a Redis that may evict replay keys),
    /// and whether it must keep the gate out of service (`/readyz`).
    fn readiness_problem(&self) -> Option<(String, bool)> {
        None
    }
    /// Can the store answer right now? (`/readyz`)
    fn health(&self) -> HealthFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

//! Connection budgets: how many client connections may be open at once, how long one may
//! sit with no request in flight — before its first request (protocol detection included),
//! between keep-alive requests, or as an HTTP/2 connection with no open stream — and which
//! connections give way at the cap: idle ones, longest idle first (as nginx reuses idle
//! keep-alive connections when it runs out), so a flood of idle sockets cannot lock real
//! clients out.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Notify;

/// How many idle connections one accept at the cap may close: enough to absorb a burst,
/// few enough that one new socket cannot empty the house.
const EVICT_PER_ACCEPT: usize = 8;

/// Milliseconds since the first time anyone asked: a cheap, monotonic clock for atomics.
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One client connection, as the budget sees it.
pub struct ConnState {
    in_flight: AtomicUsize,
    /// When the connection last became idle (or opened), in [`now_ms`] terms.
    idle_since: AtomicU64,
    /// Whether any request has arrived: before that, the first-request timer applies.
    served: AtomicBool,
    close: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            served: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    /// A request began; it is in flight until the guard (kept with its response body) drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn idle_for_ms(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| now_ms().saturating_sub(self.idle_since.load(Ordering::Relaxed)))
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves when the connection should close: idle longer than allowed, or asked to give
/// way at the cap. A connection with a request in flight (a long download, a slow upload)
/// is never idle.
pub async fn close_when_idle(state: &ConnState, first_request: Duration, idle: Duration) {
    loop {
        let limit = if state.served.load(Ordering::Relaxed) {
            idle
        } else {
            first_request
        };
        let wait = match state.idle_for_ms() {
            Some(ms) if ms >= limit.as_millis() as u64 => return,
            Some(ms) => limit - Duration::from_millis(ms),
            // busy: look again after a full period (one timer per period per connection)
            None => limit,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.close.notified() => return,
        }
    }
}

/// The open connections and the cap.
pub struct Budget {
    max: usize,
    open: DashMap<u64, Arc<ConnState>>,
    next_id: AtomicU64,
}

/// A connection counted against the budget; it leaves the count when dropped.
pub struct Admitted {
    budget: Arc<Budget>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.budget.open.remove(&self.id);
    }
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            open: DashMap::new(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Admit a new connection. At the cap, the longest-idle connections are asked to close
    /// and the new one is admitted in their place; with none idle, it is refused (`None`).
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        if self.open.len() >= self.max && self.evict_idle(EVICT_PER_ACCEPT) == 0 {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new());
        self.open.insert(id, state.clone());
        Some(Admitted {
            budget: self.clone(),
            id,
            state,
        })
    }

    /// Ask up to `n` idle connections, longest idle first, to close; returns how many.
    pub fn evict_idle(&self, n: usize) -> usize {
        let mut idle: Vec<(u64, Arc<ConnState>)> = self
            .open
            .iter()
            .filter_map(|e| e.value().idle_for_ms().map(|ms| (ms, e.value().clone())))
            .collect();
        idle.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let chosen = idle.len().min(n);
        for (_, c) in idle.into_iter().take(chosen) {
            c.close.notify_one();
        }
        chosen
    }
}

/// The default cap: what the descriptor limit allows (each client connection may hold an
/// upstream connection too, and some descriptors are the process's own), and at most 1,000,
/// so that as many slow 1 MiB downloads (about 80 KiB each: BENCHMARKS.md) stay well under
/// the 128 MiB memory limit the shipped manifests set.
pub fn default_max_connections() -> usize {
    const MEMORY_BOUND: usize = 1000;
    match descriptor_limit() {
        Some(n) => (n.saturating_sub(64) / 2).clamp(16, MEMORY_BOUND),
        None => MEMORY_BOUND,
    }
}

/// The soft `RLIMIT_NOFILE`, from /proc (Linux).
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_idle_connections_give_way_and_busy_ones_do_not() {
        let b = Budget::new(2);
        let a = b.admit().unwrap();
        let c = b.admit().unwrap();
        let _busy_a = a.state.begin();
        let _busy_c = c.state.begin();
        assert!(
            b.admit().is_none(),
            "all busy: the new connection is refused"
        );
        drop(_busy_c);
        let d = b.admit();
        assert!(d.is_some(), "an idle connection gives way");
        assert_eq!(b.open.len(), 3, "the evicted one leaves when its task ends");
        drop(c);
        assert_eq!(b.open.len(), 2);
    }

    #[test]
    fn the_default_cap_is_bounded_by_descriptors_and_memory() {
        let n = default_max_connections();
        assert!((16..=1000).contains(&n), "{n}");
    }
}

//! The embedded default: a sharded concurrent map (dashmap), bounded by `max_entries`.
//!
//! When full it fails closed (503) and never evicts a live entry: evicting would reopen a
//! replay window. Expired entries are swept in the background.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::{Recorded, ReplayStore, StoreError, StoreFuture};

pub struct MemoryStore {
    map: DashMap<[u8; 32], i64>,
    count: AtomicUsize,
    max_entries: usize,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> Arc<MemoryStore> {
        Arc::new(MemoryStore {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            max_entries,
        })
    }

    /// Sweep expired entries every `every` until the store is dropped. The sweep walks
    /// every entry (up to `max_entries`): it runs on the blocking pool, never on a thread
    /// that serves requests.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        crate::clock::spawn_periodic(
            Arc::downgrade(self),
            every,
            |store: Arc<MemoryStore>| async move {
                let _ = tokio::task::spawn_blocking(move || store.sweep(crate::clock::unix_now()))
                    .await;
            },
        );
    }

    /// Drop every entry that expired at or before `now`; returns how many.
    pub fn sweep(&self, now: i64) -> usize {
        let mut removed = 0;
        self.map.retain(|_, exp| {
            let keep = *exp > now;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.count.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// The synchronous core of [`ReplayStore::check_and_record`].
    pub fn record(
        &self,
        key: &[u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<Recorded, StoreError> {
        match self.map.entry(*key) {
            Entry::Occupied(mut e) => {
                if *e.get() > now {
                    Ok(Recorded::Replayed)
                } else {
                    // expired but not swept yet: reuse the slot
                    e.insert(expires_at);
                    Ok(Recorded::Fresh)
                }
            }
            Entry::Vacant(v) => {
                if self.count.fetch_add(1, Ordering::AcqRel) >= self.max_entries {
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    return Err(StoreError::Full);
                }
                v.insert(expires_at);
                Ok(Recorded::Fresh)
            }
        }
    }
}

impl ReplayStore for MemoryStore {
    fn check_and_record<'a>(
        &'a self,
        key: &'a [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> StoreFuture<'a> {
        Box::pin(std::future::ready(self.record(key, expires_at, now)))
    }
    fn entries(&self) -> Option<usize> {
        Some(self.count.load(Ordering::Acquire))
    }
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn start_maintenance(self: Arc<Self>, every: Duration) {
        self.spawn_sweeper(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_a_replay_until_expiry() {
        let s = MemoryStore::new(10);
        let k = [7u8; 32];
        assert_eq!(s.record(&k, 100, 50), Ok(Recorded::Fresh));
        assert_eq!(s.record(&k, 100, 99), Ok(Recorded::Replayed));
        // at expiry the entry is dead and the slot is reused
        assert_eq!(s.record(&k, 200, 100), Ok(Recorded::Fresh));
        assert_eq!(s.entries(), Some(1));
    }

    #[test]
    fn full_store_fails_closed_and_never_evicts_live_entries() {
        let s = MemoryStore::new(2);
        assert_eq!(s.record(&[1; 32], 100, 0), Ok(Recorded::Fresh));
        assert_eq!(s.record(&[2; 32], 100, 0), Ok(Recorded::Fresh));
        assert_eq!(s.record(&[3; 32], 100, 0), Err(StoreError::Full));
        assert_eq!(s.record(&[1; 32], 100, 1), Ok(Recorded::Replayed));
        assert_eq!(s.sweep(99), 0);
        assert_eq!(s.sweep(100), 2);
        assert_eq!(s.entries(), Some(0));
        assert_eq!(s.record(&[3; 32], 300, 150), Ok(Recorded::Fresh));
    }

    #[test]
    fn concurrent_uses_of_one_key_record_exactly_one() {
        let s = MemoryStore::new(100);
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..16)
                .map(|_| sc.spawn(|| s.record(&[9; 32], 100, 0)))
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let fresh = results
            .iter()
            .filter(|r| **r == Ok(Recorded::Fresh))
            .count();
        let replayed = results
            .iter()
            .filter(|r| **r == Ok(Recorded::Replayed))
            .count();
        assert_eq!((fresh, replayed), (1, 15));
        assert_eq!(s.entries(), Some(1));
    }
}

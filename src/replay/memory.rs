//! The embedded default: a sharded concurrent map (dashmap), bounded by `max_entries`.
//!
//! When full it fails closed (503) and never evicts a live entry: evicting would reopen a
//! replay window. Expired entries are swept in the background.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::{FirstUse, Recorded, ReplayStore, StoreError, StoreFuture, TokenTimes};

/// One recorded token: until when it is live, and its first use.
#[derive(Debug, Clone, Copy)]
struct Record {
    expires_at: i64,
    first: FirstUse,
}

pub struct MemoryStore {
    map: DashMap<[u8; 32], Record>,
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
        self.map.retain(|_, e| {
            let keep = e.expires_at > now;
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
        first: FirstUse,
    ) -> Result<Recorded, StoreError> {
        let entry = Record { expires_at, first };
        match self.map.entry(*key) {
            Entry::Occupied(mut e) => {
                if e.get().expires_at > now {
                    Ok(Recorded::Replayed(Some(e.get().first)))
                } else {
                    // expired but not swept yet: reuse the slot
                    e.insert(entry);
                    Ok(Recorded::Fresh)
                }
            }
            Entry::Vacant(v) => {
                if self.count.fetch_add(1, Ordering::AcqRel) >= self.max_entries {
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    return Err(StoreError::Full);
                }
                v.insert(entry);
                Ok(Recorded::Fresh)
            }
        }
    }
}

impl ReplayStore for MemoryStore {
    fn check_and_record<'a>(
        &'a self,
        key: &'a [u8; 32],
        token: TokenTimes,
        now: i64,
        use_: FirstUse,
    ) -> StoreFuture<'a> {
        Box::pin(std::future::ready(self.record(
            key,
            token.expires_at,
            now,
            use_,
        )))
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

    fn by(client: &str) -> FirstUse {
        FirstUse {
            at_ms: 1,
            client: client.parse().unwrap(),
        }
    }

    fn replayed(r: &Result<Recorded, StoreError>) -> bool {
        matches!(r, Ok(Recorded::Replayed(_)))
    }

    #[test]
    fn second_use_is_a_replay_until_expiry() {
        let s = MemoryStore::new(10);
        let k = [7u8; 32];
        assert_eq!(s.record(&k, 100, 50, by("10.0.0.1")), Ok(Recorded::Fresh));
        // the first use is what the replay reports
        assert_eq!(
            s.record(&k, 100, 99, by("192.0.2.9")),
            Ok(Recorded::Replayed(Some(by("10.0.0.1"))))
        );
        // at expiry the entry is dead and the slot is reused
        assert_eq!(s.record(&k, 200, 100, by("10.0.0.1")), Ok(Recorded::Fresh));
        assert_eq!(s.entries(), Some(1));
    }

    #[test]
    fn full_store_fails_closed_and_never_evicts_live_entries() {
        let s = MemoryStore::new(2);
        assert_eq!(
            s.record(&[1; 32], 100, 0, by("10.0.0.1")),
            Ok(Recorded::Fresh)
        );
        assert_eq!(
            s.record(&[2; 32], 100, 0, by("10.0.0.1")),
            Ok(Recorded::Fresh)
        );
        assert_eq!(
            s.record(&[3; 32], 100, 0, by("10.0.0.1")),
            Err(StoreError::Full)
        );
        assert!(replayed(&s.record(&[1; 32], 100, 1, by("10.0.0.1"))));
        assert_eq!(s.sweep(99), 0);
        assert_eq!(s.sweep(100), 2);
        assert_eq!(s.entries(), Some(0));
        assert_eq!(
            s.record(&[3; 32], 300, 150, by("10.0.0.1")),
            Ok(Recorded::Fresh)
        );
    }

    #[test]
    fn concurrent_uses_of_one_key_record_exactly_one() {
        let s = MemoryStore::new(100);
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..16)
                .map(|_| sc.spawn(|| s.record(&[9; 32], 100, 0, by("10.0.0.1"))))
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let fresh = results
            .iter()
            .filter(|r| **r == Ok(Recorded::Fresh))
            .count();
        let replayed = results.iter().filter(|r| replayed(r)).count();
        assert_eq!((fresh, replayed), (1, 15));
        assert_eq!(s.entries(), Some(1));
    }
}

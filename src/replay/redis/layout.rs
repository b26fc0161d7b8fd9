//! Where the store's keys live.
//!
//! On one Redis: a record at `<prefix><64 hex digits>` and one epoch at `<prefix>epoch`,
//! the names every earlier version wrote (a running Redis keeps working after an upgrade).
//!
//! In a Redis Cluster, every key carries a hash tag naming one of 256 buckets, the record's
//! first byte: `<prefix>{3f}<64 hex>` and `<prefix>{3f}epoch`. A record and its bucket's
//! epoch thus share one slot, so the record's `GET epoch` + `SET NX` still go to one node in
//! one round trip; a node restarted empty loses exactly the epochs of the buckets it held,
//! which the next record in each of them notices; and with 256 buckets the records still
//! spread over every primary (a bucket is 1/256 of the logins, wherever its slot is).

/// The buckets of a cluster: enough that they spread over any sensible number of primaries.
pub(super) const CLUSTER_BUCKETS: usize = 256;

pub(super) struct Layout {
    prefix: String,
    cluster: bool,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

impl Layout {
    pub(super) fn new(prefix: &str, cluster: bool) -> Layout {
        Layout {
            prefix: prefix.to_string(),
            cluster,
        }
    }

    /// How many epochs there are (one per bucket; one on a single Redis).
    pub(super) fn buckets(&self) -> usize {
        if self.cluster {
            CLUSTER_BUCKETS
        } else {
            1
        }
    }

    /// The bucket a record belongs to.
    pub(super) fn bucket(&self, key: &[u8; 32]) -> usize {
        if self.cluster {
            usize::from(key[0])
        } else {
            0
        }
    }

    fn tagged(&self, bucket: usize, capacity: usize) -> String {
        let mut name = String::with_capacity(self.prefix.len() + 4 + capacity);
        name.push_str(&self.prefix);
        if self.cluster {
            name.push('{');
            push_hex(&mut name, &[bucket as u8]);
            name.push('}');
        }
        name
    }

    /// A record's key.
    pub(super) fn record(&self, key: &[u8; 32]) -> String {
        let mut name = self.tagged(self.bucket(key), 64);
        push_hex(&mut name, key);
        name
    }

    /// A bucket's epoch key.
    pub(super) fn epoch(&self, bucket: usize) -> String {
        let mut name = self.tagged(bucket, 5);
        name.push_str("epoch");
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_redis_keeps_the_names_earlier_versions_wrote() {
        let l = Layout::new("jwt-gate:replay:", false);
        let mut key = [0u8; 32];
        key[0] = 0xab;
        key[31] = 0x01;
        let name = l.record(&key);
        assert_eq!(name.len(), "jwt-gate:replay:".len() + 64);
        assert!(name.starts_with("jwt-gate:replay:ab00"), "{name}");
        assert!(name.ends_with("01"));
        assert_eq!(l.epoch(l.bucket(&key)), "jwt-gate:replay:epoch");
        assert_eq!(l.buckets(), 1);
    }

    #[test]
    fn in_a_cluster_a_record_and_its_epoch_share_a_hash_tag() {
        let l = Layout::new("p:", true);
        let mut key = [7u8; 32];
        key[0] = 0x3f;
        assert_eq!(l.bucket(&key), 0x3f);
        assert!(l.record(&key).starts_with("p:{3f}3f0707"));
        assert_eq!(l.epoch(0x3f), "p:{3f}epoch");
        assert_eq!(l.epoch(0), "p:{00}epoch");
        assert_eq!(l.buckets(), 256);
    }
}

//! A budget of refused callbacks per client, so that forgeries cannot buy verification CPU
//! for free: each refusal costs points (a signature failure costs what verifying it cost),
//! points come back at a steady rate, and a client without points is answered 429 before
//! anything is read or verified. A client is its address (trusted-proxy aware, resolved by
//! the caller); IPv6 clients are grouped by /64, the block one subscriber usually holds.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::{Algorithm, Family};

/// Clients tracked at most: past this, the fullest buckets (the clients that have been
/// quiet longest) are forgotten first.
const MAX_CLIENTS: usize = 100_000;

/// Points a refusal costs. Signature failures are weighted by what verifying them costs
/// (criterion, `cargo bench`: HS256 about 4 µs, RS256 about 22 µs, ES256 about 66 µs,
/// ES384/ES512 about 420 µs): a forged ES512 token costs what a hundred malformed ones do.
pub fn cost(bad_signature: bool, alg: Algorithm) -> f64 {
    if !bad_signature {
        return 1.0;
    }
    match (alg.family(), alg) {
        (Family::Hmac, _) => 1.0,
        (Family::Rsa, _) => 5.0,
        (_, Algorithm::ES256) => 15.0,
        _ => 100.0,
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    points: f64,
    at: Instant,
}

pub struct Throttle {
    burst: f64,
    per_second: f64,
    clients: DashMap<IpAddr, Bucket>,
}

/// The key a client's budget is kept under.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl Throttle {
    /// `burst` points at most, refilled at `per_second`.
    pub fn new(burst: f64, per_second: f64) -> Throttle {
        Throttle {
            burst,
            per_second,
            clients: DashMap::new(),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let earned = now.duration_since(b.at).as_secs_f64() * self.per_second;
        Bucket {
            points: (b.points + earned).min(self.burst),
            at: now,
        }
    }

    /// `Err(wait)` when `client` has no points left: how long until it has one again.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(b) = self.clients.get(&client_key(client)).map(|b| *b) else {
            return Ok(());
        };
        let b = self.refilled(b, Instant::now());
        if b.points >= 1.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - b.points) / self.per_second))
    }

    /// Charge `client` for a refusal. A bucket may go into debt (an expensive forgery sent
    /// with one point left): the debt is paid back before the next callback is looked at.
    pub fn charge(&self, client: IpAddr, points: f64) {
        if self.clients.len() >= MAX_CLIENTS {
            self.forget_quiet_clients();
        }
        let now = Instant::now();
        let mut e = self.clients.entry(client_key(client)).or_insert(Bucket {
            points: self.burst,
            at: now,
        });
        let b = self.refilled(*e, now);
        *e = Bucket {
            points: b.points - points,
            at: now,
        };
    }

    /// Drop the buckets that have refilled completely: they hold nothing worth keeping.
    fn forget_quiet_clients(&self) {
        let now = Instant::now();
        self.clients
            .retain(|_, b| self.refilled(*b, now).points < self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_out_of_points_waits_and_others_do_not() {
        let t = Throttle::new(3.0, 1.0);
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(a).is_ok());
            t.charge(a, 1.0);
        }
        let wait = t.check(a).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(t.check(b).is_ok());
    }

    #[test]
    fn an_expensive_forgery_leaves_a_debt() {
        let t = Throttle::new(20.0, 2.0);
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        t.charge(a, cost(true, Algorithm::ES512));
        let wait = t.check(a).unwrap_err();
        // 100 points against a burst of 20: 81 points short at 2 a second
        assert!(wait > Duration::from_secs(40), "{wait:?}");
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let t = Throttle::new(1.0, 0.001);
        t.charge("2001:db8:1:2::1".parse().unwrap(), 1.0);
        assert!(t.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(t.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }
}

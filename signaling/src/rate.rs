//! Token buckets for the per-connection limits (messages per second, relay
//! bytes per second) and the per-IP limits of the HTTP API and the
//! connectivity check. Time is a parameter so the limits are tested without
//! sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket holding `burst` tokens, refilled at `per_second`.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(burst),
            per_second: f64::from(per_second),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// A full bucket refilled at `per_minute` (rates below one per second).
    pub fn per_minute(per_minute: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Whether the bucket would be full by `now` (so forgetting it changes
    /// nothing).
    fn full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.per_second >= self.capacity
    }

    /// Whether one token is available at `now` (taking nothing).
    pub fn has_token(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.per_second).min(self.capacity) >= 1.0
    }

    /// Take `amount` tokens if available; otherwise take nothing.
    pub fn try_take(&mut self, amount: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        let amount = amount as f64;
        if amount <= self.tokens {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

/// The bucket an address counts against: itself for IPv4, its /64 for
/// IPv6 (one subscriber line gets a whole /64: counting single addresses
/// would give anyone with one an unlimited supply of fresh buckets).
fn bucket_key(ip: Option<IpAddr>) -> Option<IpAddr> {
    match ip {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            Some(IpAddr::V6(std::net::Ipv6Addr::from(prefix)))
        }
        other => other,
    }
}

/// Most client addresses tracked at once; beyond it full buckets are
/// forgotten, and if none is full the request is refused (a flood of
/// distinct addresses must not grow memory without bound).
const MAX_TRACKED_IPS: usize = 10_000;

/// One token bucket per client IP (requests without a known IP share one).
pub struct IpLimiter {
    per_minute: u32,
    burst: u32,
    buckets: Mutex<HashMap<Option<IpAddr>, TokenBucket>>,
}

impl IpLimiter {
    pub fn new(per_minute: u32, burst: u32) -> IpLimiter {
        IpLimiter {
            per_minute,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has used up its burst at `now` (taking nothing): for
    /// limits that only count failures, checked before the attempt and
    /// charged with [`allow`](IpLimiter::allow) after it failed.
    pub fn exhausted(&self, ip: Option<IpAddr>, now: Instant) -> bool {
        let ip = bucket_key(ip);
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.get(&ip).is_some_and(|b| !b.has_token(now))
    }

    /// Whether `ip` may make one more request at `now`.
    pub fn allow(&self, ip: Option<IpAddr>, now: Instant) -> bool {
        let ip = bucket_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= MAX_TRACKED_IPS {
            buckets.retain(|_, b| !b.full_at(now));
            if buckets.len() >= MAX_TRACKED_IPS {
                return false;
            }
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::per_minute(self.per_minute, self.burst, now))
            .try_take(1, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_ipv6_64_is_one_client_and_ipv4_addresses_are_each_their_own() {
        let t0 = Instant::now();
        let l = IpLimiter::new(60, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.allow(Some(a), t0));
        assert!(l.allow(Some(b), t0));
        assert!(
            !l.allow(Some(a), t0),
            "a fresh address in the same /64 is the same client"
        );
        assert!(l.exhausted(Some(b), t0));
        assert!(l.allow(Some(other), t0), "the next /64 is another client");
        let v4a: IpAddr = "192.0.2.1".parse().unwrap();
        let v4b: IpAddr = "192.0.2.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.3".parse().unwrap();
        for ip in [v4a, v4b, mapped] {
            assert!(l.allow(Some(ip), t0));
            assert!(l.allow(Some(ip), t0));
        }
        assert!(!l.allow(Some(v4a), t0));
    }

    #[test]
    fn burst_is_allowed_then_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, t0);
        for i in 0..100 {
            assert!(b.try_take(1, t0), "message {i} within burst");
        }
        assert!(!b.try_take(1, t0), "101st message in the same instant");
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, t0);
        for _ in 0..100 {
            b.try_take(1, t0);
        }
        let t1 = t0 + Duration::from_millis(100);
        for i in 0..5 {
            assert!(b.try_take(1, t1), "refilled token {i}");
        }
        assert!(!b.try_take(1, t1));
        let t2 = t1 + Duration::from_secs(3600);
        assert!(b.try_take(100, t2));
        assert!(!b.try_take(1, t2), "never more than the burst");
    }

    #[test]
    fn refused_take_consumes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1024, 2048, t0);
        assert!(!b.try_take(4096, t0));
        assert!(b.try_take(2048, t0));
    }

    #[test]
    fn exhausted_looks_without_taking() {
        let t0 = Instant::now();
        let l = IpLimiter::new(60, 2);
        let a: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        assert!(!l.exhausted(a, t0), "unknown address");
        assert!(l.allow(a, t0));
        assert!(!l.exhausted(a, t0));
        assert!(!l.exhausted(a, t0), "looking twice takes nothing");
        assert!(l.allow(a, t0));
        assert!(l.exhausted(a, t0));
        assert!(!l.exhausted(a, t0 + Duration::from_secs(1)), "refilled");
    }

    #[test]
    fn ip_limiter_counts_each_address_separately() {
        let t0 = Instant::now();
        let l = IpLimiter::new(60, 2);
        let a: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let b: Option<IpAddr> = Some("192.0.2.2".parse().unwrap());
        assert!(l.allow(a, t0));
        assert!(l.allow(a, t0));
        assert!(!l.allow(a, t0), "third request of a within the burst");
        assert!(l.allow(b, t0), "b has its own bucket");
        assert!(
            l.allow(a, t0 + Duration::from_secs(1)),
            "one per second refills"
        );
    }
}

//! Token buckets for the per-connection limits (messages per second, relay
//! bytes per second). Time is a parameter so the limits are tested without
//! sleeping.

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}

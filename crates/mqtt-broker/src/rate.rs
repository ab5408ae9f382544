//! The per-connection publish rate limit: a token bucket.
//!
//! A client over its rate is not refused anything: the connection stops reading its socket until the
//! bucket has a token again (TCP then slows the client down), so no acknowledged message is lost and a
//! well-behaved client that bursts briefly is not disconnected.

use tokio::time::{Duration, Instant};

/// A publish rate: `per_second` on average, with bursts of up to `burst` messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRate {
    /// Messages per second, on average. Positive and finite.
    pub per_second: f64,
    /// Messages a client may send at once after a quiet period; at least 1.
    pub burst: u32,
}

/// A token bucket for one connection.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: PublishRate,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: PublishRate, now: Instant) -> Self {
        Self { rate, tokens: f64::from(rate.burst.max(1)), refilled: now }
    }

    /// Takes a token if there is one; otherwise says when there will be.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.rate.per_second).min(f64::from(self.rate.burst.max(1)));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.rate.per_second;
        Err(now + Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(PublishRate { per_second: 10.0, burst: 3 }, start);
        for _ in 0..3 {
            assert!(bucket.take(start).is_ok());
        }
        let until = bucket.take(start).unwrap_err();
        assert_eq!(until.duration_since(start), Duration::from_millis(100));
        assert!(bucket.take(until).is_ok());
        assert!(bucket.take(until).is_err());
        // A long pause refills to the burst, not beyond.
        let later = until + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }
}

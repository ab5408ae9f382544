//! Jittered exponential back-off between reconnection attempts.
//!
//! A fleet that loses its server all at once must not come back all at once: each device waits
//! `min(initial × 2^attempt, max)`, shortened by a random fraction of up to `jitter` of itself.

use std::time::Duration;

use rand::Rng;

/// How long a device waits before its next connection attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure (attempt 0).
    pub initial: Duration,
    /// The longest wait, however many attempts have failed.
    pub max: Duration,
    /// The largest fraction (0.0 to 1.0) taken off a wait at random; values outside are clamped.
    /// 0.0 makes the waits exact; 1.0 spreads them over `[0, wait]`.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 500 ms, doubling up to 60 s, with up to half of each wait taken off at random.
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(60), jitter: 0.5 }
    }
}

/// The wait before reconnection attempt `attempt` (0 after the first failure).
///
/// The result lies in `[base × (1 − jitter), base]` where `base = min(initial × 2^attempt, max)`.
#[must_use]
pub fn backoff_delay(attempt: u32, backoff: &Backoff, rng: &mut impl Rng) -> Duration {
    let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
    let base = backoff.initial.checked_mul(factor).unwrap_or(backoff.max).min(backoff.max);
    let jitter = backoff.jitter.clamp(0.0, 1.0);
    if jitter == 0.0 {
        return base;
    }
    let cut: f64 = rng.random_range(0.0..=jitter);
    base.mul_f64(1.0 - cut)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    fn backoff(initial_ms: u64, max_ms: u64, jitter: f64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    #[track_caller]
    fn check(attempts: &[u32], b: &Backoff, expected_ms: &[u64]) {
        let mut rng = StdRng::seed_from_u64(7);
        let got: Vec<u64> = attempts
            .iter()
            .map(|a| u64::try_from(backoff_delay(*a, b, &mut rng).as_millis()).unwrap())
            .collect();
        assert_eq!(got, expected_ms);
    }

    #[test]
    fn without_jitter_doubles_up_to_the_max() {
        check(
            &[0, 1, 2, 3, 4, 5, 10],
            &backoff(100, 1_000, 0.0),
            &[100, 200, 400, 800, 1_000, 1_000, 1_000],
        );
    }

    #[test]
    fn huge_attempt_numbers_saturate_at_the_max() {
        check(&[31, 32, 1_000, u32::MAX], &backoff(100, 5_000, 0.0), &[5_000; 4]);
    }

    #[test]
    fn jitter_stays_within_its_fraction_of_the_wait() {
        let b = backoff(1_000, 60_000, 0.25);
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 0..10 {
            let base = Duration::from_millis(1_000 * 2u64.pow(attempt)).min(b.max);
            for _ in 0..200 {
                let d = backoff_delay(attempt, &b, &mut rng);
                assert!(
                    d <= base && d >= base.mul_f64(0.75),
                    "attempt {attempt}: {d:?} vs {base:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let b = backoff(1_000, 1_000, 1.0);
        let mut rng = StdRng::seed_from_u64(3);
        let waits: std::collections::BTreeSet<_> =
            (0..50).map(|_| backoff_delay(0, &b, &mut rng)).collect();
        assert!(waits.len() > 40, "{waits:?}");
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        check(&[0, 1], &backoff(100, 1_000, -3.0), &[100, 200]);
        let mut rng = StdRng::seed_from_u64(9);
        assert!(
            backoff_delay(0, &backoff(100, 1_000, 7.0), &mut rng) <= Duration::from_millis(100)
        );
    }
}

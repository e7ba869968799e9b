//! Back-off with jitter for the loops that call AWS or another API while they wait for
//! something (a state to show, throttling to pass).
//!
//! A whole fleet runs the same loops at the same moments (an instance refresh starts many
//! terminations within seconds), so fixed pauses line their calls up; every pause here is
//! randomised ("equal jitter": half of it fixed, half drawn at random), as the AWS SDKs' own retry
//! strategy and the AWS Architecture Blog's "Exponential Backoff And Jitter" recommend.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A random number in `0..n` (0 when `n` is 0). Not for secrets: the standard library's
/// randomly keyed hasher, which is random enough to spread a fleet's calls.
pub fn random_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n
}

/// `d` with equal jitter: somewhere in `[d/2, d]`.
pub fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().min(u128::from(u64::MAX)) as u64;
    let half = ms / 2;
    Duration::from_millis(half + random_below(ms - half + 1))
}

/// Pauses that start at `first` and double up to `max`, each with [`jitter`].
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A back-off from `first` doubling to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            attempt: 0,
        }
    }

    /// The next pause (with jitter); each call doubles the next one, up to the maximum.
    pub fn next_pause(&mut self) -> Duration {
        let d = self.peek();
        self.attempt = self.attempt.saturating_add(1);
        jitter(d)
    }

    /// The next pause without jitter, without counting it.
    pub fn peek(&self) -> Duration {
        self.first
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max)
    }

    /// Back to the first pause (the thing waited for changed).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many pauses were taken since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_maximum_within_their_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
        let want = [2, 4, 8, 16, 30, 30];
        for w in want {
            let p = b.next_pause();
            let w = Duration::from_secs(w);
            assert!(
                p >= w / 2 && p <= w,
                "{p:?} not within [{:?}, {w:?}]",
                w / 2
            );
        }
        b.reset();
        assert_eq!(b.peek(), Duration::from_secs(2));
    }

    #[test]
    fn jitter_spreads() {
        let d = Duration::from_secs(10);
        let all: std::collections::BTreeSet<_> = (0..50).map(|_| jitter(d)).collect();
        assert!(all.len() > 10, "50 draws gave {} values", all.len());
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        assert!(random_below(1) == 0 && random_below(0) == 0);
    }
}

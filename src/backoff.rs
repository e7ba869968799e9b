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

/// `d` spread evenly over `[3d/4, 5d/4]`: a fixed polling interval whose mean stays `d`.
pub fn around(d: Duration) -> Duration {
    let ms = d.as_millis().min(u128::from(u64::MAX / 2)) as u64;
    Duration::from_millis(ms - ms / 4 + random_below(ms / 2 + 1))
}

/// The `n`th pause (0-based) of a back-off that starts at `first` and doubles up to `max`,
/// without jitter.
pub fn doubling(first: Duration, n: u32, max: Duration) -> Duration {
    first.saturating_mul(1u32 << n.min(20)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_maximum() {
        let (first, max) = (Duration::from_secs(2), Duration::from_secs(30));
        let got: Vec<u64> = (0..7).map(|n| doubling(first, n, max).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(doubling(first, u32::MAX, max), max);
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

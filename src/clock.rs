//! AWS's clock, as its answers tell it: the offset of this machine's clock from the `Date`
//! header of the SQS answers (every AWS answer carries one, RFC 7231 §7.1.1.2; the SDKs
//! measure clock skew the same way), so that a message's age is judged by the clock that
//! stamped it (G14).
//!
//! A machine whose clock runs days ahead (a broken chrony, a restored snapshot; Amazon Time
//! Sync is the default on EC2, so this is rare) would otherwise take every fresh notification
//! in the shared queue for stale and delete the whole group's terminations. The SDK signs its
//! requests with a corrected time after a `RequestTimeTooSkewed` answer, so its calls keep
//! working on such a machine; only lastcall's own arithmetic was left to fix.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::BoxError;
use aws_smithy_types::date_time::{DateTime, Format};
use tracing::warn;

/// This machine's clock minus AWS's, in seconds, from the latest answer.
static AHEAD_S: AtomicI64 = AtomicI64::new(0);
/// A skew worth a warning was reported (it is reported again when it goes and comes back).
static WARNED: AtomicBool = AtomicBool::new(false);
/// Below this, the offset is the `Date` header's one-second resolution and the network's
/// latency, not a wrong clock: the local clock is used as it is.
const TOLERANCE_S: i64 = 5;
/// From this offset on, a warning says that this machine's clock is wrong.
const WARN_S: i64 = 60;

/// Now by AWS's clock: the local clock corrected by the offset the latest SQS answer showed,
/// when it is more than a few seconds.
pub fn aws_now() -> SystemTime {
    corrected(SystemTime::now(), AHEAD_S.load(Ordering::Relaxed))
}

fn corrected(local: SystemTime, ahead_s: i64) -> SystemTime {
    if ahead_s.abs() < TOLERANCE_S {
        local
    } else if ahead_s > 0 {
        local - Duration::from_secs(ahead_s.unsigned_abs())
    } else {
        local + Duration::from_secs(ahead_s.unsigned_abs())
    }
}

/// This machine's clock minus the `Date` header's time (an HTTP date), in whole seconds.
fn ahead_of(date: &str, local: SystemTime) -> Option<i64> {
    let at = DateTime::from_str(date.trim(), Format::HttpDate).ok()?;
    let local = match local.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(_) => return None,
    };
    Some(local - at.secs())
}

fn observe(date: &str, local: SystemTime) {
    let Some(ahead) = ahead_of(date, local) else {
        return;
    };
    AHEAD_S.store(ahead, Ordering::Relaxed);
    let bad = ahead.abs() >= WARN_S;
    if bad && !WARNED.swap(true, Ordering::Relaxed) {
        let (by, side) = if ahead > 0 {
            (ahead, "ahead of")
        } else {
            (-ahead, "behind")
        };
        warn!(
            offset_s = by,
            "this machine's clock is {by} s {side} AWS's (the Date of SQS's answers); messages' ages are judged by AWS's clock. Fix the time service (chronyc tracking)"
        );
    } else if !bad {
        WARNED.store(false, Ordering::Relaxed);
    }
}

/// The interceptor that reads each answer's `Date` header.
#[derive(Debug)]
pub struct DateWatch;

impl Intercept for DateWatch {
    fn name(&self) -> &'static str {
        "lastcall::clock::DateWatch"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            observe(date, SystemTime::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_read_from_an_http_date() {
        let local = UNIX_EPOCH + Duration::from_secs(1_796_648_400);
        // Three days earlier by AWS's clock.
        let aws = DateTime::from_secs(1_796_648_400 - 3 * 86400)
            .fmt(Format::HttpDate)
            .expect("fmt");
        assert_eq!(ahead_of(&aws, local), Some(3 * 86400));
        let behind = DateTime::from_secs(1_796_648_400 + 90)
            .fmt(Format::HttpDate)
            .expect("fmt");
        assert_eq!(ahead_of(&behind, local), Some(-90));
        assert_eq!(ahead_of("yesterday", local), None);
        assert_eq!(ahead_of("", local), None);
    }

    #[test]
    fn small_offsets_are_the_date_headers_resolution_and_left_alone() {
        let local = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(corrected(local, 2), local);
        assert_eq!(corrected(local, -4), local);
        assert_eq!(corrected(local, 3600), local - Duration::from_secs(3600));
        assert_eq!(corrected(local, -60), local + Duration::from_secs(60));
    }
}

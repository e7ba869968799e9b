//! The heartbeat keeper: `RecordLifecycleActionHeartbeat` at once (the hook's timer has run since
//! the wait began: the notification may be late, or a pipeline resumed after a restart), then at
//! an interval while the action's steps run and its completion retries, so that a hook whose
//! `HeartbeatTimeout` is shorter than the steps does not expire. It stops when dropped, at the
//! hook's global timeout, or when Auto Scaling says the action is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, error, warn};

use super::action::Action;
use crate::autoscaling::{AutoScaling, CallOutcome, HookTimeouts, LifecycleError};
use crate::config::Heartbeat;

/// Heartbeat interval when the hook cannot be described: safe for the shortest allowed
/// `HeartbeatTimeout` (30 s).
const FALLBACK_INTERVAL: Duration = Duration::from_secs(10);

/// A running heartbeat task; aborted when dropped.
#[derive(Debug)]
pub struct Heartbeats {
    task: tokio::task::JoinHandle<()>,
    /// Set when this process starts completing the action: a heartbeat refused after that is
    /// the completion's doing, not an expiry.
    completing: Arc<AtomicBool>,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Heartbeats {
    /// Says that the action is being completed: heartbeats go on (completion may be retried
    /// through throttling for minutes), and one refused from now on is expected.
    pub fn completing(&self) {
        self.completing.store(true, Ordering::Relaxed);
    }

    /// Starts heartbeats for `action` as `policy` says; `None` when they are off. With
    /// `auto`, the interval is half the hook's `HeartbeatTimeout`: from the action when its
    /// source read it already (no second `DescribeLifecycleHooks`), else from Auto Scaling.
    ///
    /// `at_once`: the first heartbeat goes out at once (else after an interval: the caller has
    /// just sent one).
    pub async fn start(
        asg: &AutoScaling,
        action: &Action,
        policy: Heartbeat,
        at_once: bool,
    ) -> Option<Self> {
        let a = action.aref.clone();
        if policy == Heartbeat::Off {
            return None;
        }
        let half = |t: HookTimeouts| (t.heartbeat / 2).max(Duration::from_secs(1));
        let (interval, global) = match (policy, hook_timeouts(asg, action).await) {
            // A fixed interval not shorter than the hook's HeartbeatTimeout would let the
            // action expire between two heartbeats (F21).
            (Heartbeat::Every(d), Ok(Some(t))) if d >= t.heartbeat => {
                warn!(group = %a.group, hook = %a.hook, heartbeat_s = d.as_secs(), heartbeat_timeout_s = t.heartbeat.as_secs(),
                    interval_s = half(t).as_secs(), "[lifecycle] heartbeat is not shorter than the hook's HeartbeatTimeout; heartbeating at half the timeout instead");
                (half(t), Some(t.global))
            }
            (Heartbeat::Every(d), Ok(t)) => (d, t.map(|t| t.global)),
            (Heartbeat::Every(d), Err(_)) => (d, None),
            (_, Ok(Some(t))) => (half(t), Some(t.global)),
            (_, Ok(None)) => {
                warn!(group = %a.group, hook = %a.hook, interval_s = FALLBACK_INTERVAL.as_secs(), "hook not found by DescribeLifecycleHooks; heartbeating at a fallback interval");
                (FALLBACK_INTERVAL, None)
            }
            (_, Err(e)) => {
                warn!(error = %e, interval_s = FALLBACK_INTERVAL.as_secs(), "cannot describe the hook (missing autoscaling:DescribeLifecycleHooks?); heartbeating at a fallback interval");
                (FALLBACK_INTERVAL, None)
            }
        };
        // Heartbeats past the global timeout are refused anyway; stop there.
        let stop_at = global.map(|g| {
            let age = action
                .started
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            tokio::time::Instant::now() + g.saturating_sub(age)
        });
        let asg = asg.clone();
        let completing = Arc::new(AtomicBool::new(false));
        let ours = completing.clone();
        debug!(
            interval_ms = interval.as_millis() as u64,
            "heartbeats started"
        );
        let task = tokio::spawn(async move {
            // After a failed heartbeat the next one comes sooner: waiting a whole interval (half
            // the hook's timeout) again could let the action expire. Jittered (a scale-in's
            // heartbeats fail together when Auto Scaling throttles the account), and doubled
            // while failures go on, up to half the interval. A refusal that retrying cannot
            // mend (AccessDenied, a validation error) is logged once as an error and tried again
            // only at the interval (F26: before, every interval/4 for as long as the action ran).
            let retry = (interval / 4).max(Duration::from_millis(500));
            let mut failures = 0u32;
            // The first at once: the hook's timer has run since the wait began.
            let mut next = if at_once { Duration::ZERO } else { interval };
            loop {
                tokio::time::sleep(next).await;
                if stop_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    warn!(instance_id = %a.instance_id, hook = %a.hook, "the hook's global timeout has passed; no more heartbeats");
                    return;
                }
                match asg.heartbeat(&a).await {
                    Ok(CallOutcome::Done) => {
                        next = interval;
                        failures = 0;
                        debug!(instance_id = %a.instance_id, hook = %a.hook, "heartbeat sent")
                    }
                    // A heartbeat that crossed this process's own completion on the wire.
                    Ok(CallOutcome::NoActiveAction) if ours.load(Ordering::Relaxed) => {
                        debug!(instance_id = %a.instance_id, hook = %a.hook, "heartbeat: no active lifecycle action, as it is being completed; no more heartbeats");
                        return;
                    }
                    Ok(CallOutcome::NoActiveAction) => {
                        warn!(instance_id = %a.instance_id, hook = %a.hook, "heartbeat: no active lifecycle action (it expired or was completed elsewhere); no more heartbeats");
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        let permanent = matches!(
                            e,
                            LifecycleError::Heartbeat {
                                permanent: true,
                                ..
                            }
                        );
                        next = match permanent {
                            true => interval,
                            false => crate::backoff::jitter(crate::backoff::doubling(
                                retry,
                                failures - 1,
                                (interval / 2).max(retry),
                            )),
                        };
                        match (permanent, failures) {
                            (true, 1) => error!(error = %e, retry_in_ms = next.as_millis() as u64,
                                "heartbeat refused, and retrying will not change that (a missing autoscaling:RecordLifecycleActionHeartbeat?): the action expires at its HeartbeatTimeout unless completed first; trying again at the interval"),
                            (true, _) => debug!(error = %e, "heartbeat refused again"),
                            (false, _) => {
                                warn!(error = %e, retry_in_ms = next.as_millis() as u64, "heartbeat failed; trying again soon")
                            }
                        }
                    }
                }
            }
        });
        Some(Self { task, completing })
    }
}

/// The hook's timeouts: from the action when its source read them, else from Auto Scaling.
async fn hook_timeouts(
    asg: &AutoScaling,
    action: &Action,
) -> Result<Option<HookTimeouts>, LifecycleError> {
    match action.timeouts {
        Some(t) => Ok(Some(t)),
        None => asg.hook(&action.aref.group, &action.aref.hook).await,
    }
}

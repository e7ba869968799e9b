//! Stepping aside: a staying instance stays out of the queue's way while others' messages are
//! in it (see the parent module's documentation).

use std::time::Instant;

use aws_sdk_sqs::error::DisplayErrorContext;
use tracing::{debug, info};

use super::{SqsSource, LEAVING_FRESH, STAYING, STEP_ASIDE_WATCH};
use crate::handler::Handler;
use crate::imds::TARGET_STATE;
use crate::shutdown::Shutdown;

/// How stepping aside went.
pub(super) enum Aside {
    /// Shutdown was requested meanwhile.
    Shutdown,
    /// It stepped aside and is back.
    Back,
    /// It did not step aside (it is leaving, or cannot tell).
    Stayed,
}

impl SqsSource {
    /// Stays out of the queue's way while instance metadata says this instance is staying
    /// (see the module's documentation). Logs at info when messages this instance had not
    /// seen before sent it aside (`news`), at debug for the same ones again (a dead instance's
    /// message circulating for hours must not fill the log).
    pub(super) async fn step_aside(
        &mut self,
        handler: &Handler,
        started: u64,
        news: bool,
        shutdown: &mut Shutdown,
    ) -> Aside {
        let Some(state) = self.staying(handler, started).await else {
            return Aside::Stayed;
        };
        const WHY: &str = "others' lifecycle messages are in the queue and this instance is staying; stepping out of the queue's way so that the leaving instances get theirs";
        if news {
            info!(target_state = %state, for_s = self.cfg.step_aside.as_secs(), "{WHY}");
        } else {
            debug!(target_state = %state, for_s = self.cfg.step_aside.as_secs(), "{WHY}");
        }
        let until = Instant::now() + self.cfg.step_aside;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                debug!("back to the queue after stepping aside");
                return Aside::Back;
            }
            tokio::select! {
                _ = tokio::time::sleep(STEP_ASIDE_WATCH.min(left)) => {}
                _ = shutdown.requested() => return Aside::Shutdown,
            }
            if self.staying(handler, started).await.is_none() {
                info!("instance metadata no longer says this instance is staying; back to the queue at once");
                return Aside::Back;
            }
        }
    }

    /// True when instance metadata says this instance is leaving its group (a target state that
    /// is not a staying one), from a reading at most [`LEAVING_FRESH`] old; false when it cannot
    /// be read or there is none yet.
    pub(super) async fn leaving(&mut self, handler: &Handler) -> bool {
        match self.leaving {
            Some((at, leaving)) if at.elapsed() < LEAVING_FRESH => leaving,
            _ => self
                .target_state(handler)
                .await
                .is_some_and(|s| !STAYING.contains(&s.as_str())),
        }
    }

    /// This instance's target lifecycle state, read now (None when there is none yet or it
    /// cannot be read); every reading also answers [`Self::leaving`] for a while.
    async fn target_state(&mut self, handler: &Handler) -> Option<String> {
        let state = match handler.imds().poll(TARGET_STATE).await {
            Ok(s) => s.map(|s| s.trim().to_string()),
            Err(e) => {
                debug!(error = %DisplayErrorContext(&e), "cannot read the target lifecycle state");
                None
            }
        };
        let leaving = state.as_deref().is_some_and(|s| !STAYING.contains(&s));
        self.leaving = Some((Instant::now(), leaving));
        state
    }

    /// `Some(target state)` when this instance can step aside: its launch (if launch steps are
    /// configured) was handled since `started` (the boot), and instance metadata says it is
    /// staying.
    async fn staying(&mut self, handler: &Handler, started: u64) -> Option<String> {
        if !self.launch_settled {
            if !handler.launched_since(started) {
                debug!("this instance's launch is not handled yet; not stepping aside");
                return None;
            }
            self.launch_settled = true;
        }
        self.target_state(handler)
            .await
            .filter(|s| STAYING.contains(&s.as_str()))
    }
}

/// The machine's boot time (Unix seconds), from `btime` in `/proc/stat` (proc(5)); None when it
/// cannot be read.
pub(super) fn boot_time() -> Option<u64> {
    parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_time_is_read_from_proc_stat() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1796640000\nprocesses 9\n"),
            Some(1796640000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
        assert_eq!(parse_btime("btime soon\n"), None);
        // On this machine (Linux) it is there, and in the past.
        let boot = boot_time().expect("btime in /proc/stat");
        assert!(boot <= crate::journal::unix_now());
    }
}

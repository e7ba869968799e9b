//! `sleep`: wait a fixed time (connection draining, letting a load balancer notice).

use std::time::Duration;

use crate::config::fields::Fields;

use super::StepError;

/// `kind = "sleep"`.
#[derive(Debug, Clone)]
pub struct SleepStep {
    /// How long to wait.
    pub duration: Duration,
}

impl SleepStep {
    /// Reads `duration`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let duration = f.req_duration("duration")?;
        if duration > crate::autoscaling::MAX_ACTION_LIFE {
            f.problem(
                "duration",
                "must be at most 48h: no lifecycle action lives longer",
            );
            return None;
        }
        Some(Self { duration })
    }

    /// Waits.
    pub async fn run(&self) -> Result<String, StepError> {
        tokio::time::sleep(self.duration).await;
        Ok(format!(
            "slept {}",
            humantime::format_duration(self.duration)
        ))
    }
}

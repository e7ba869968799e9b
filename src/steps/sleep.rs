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
        f.req_duration("duration").map(|duration| Self { duration })
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

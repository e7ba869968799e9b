//! `lastcall once`: one check of every configured source, handle what is this instance's, exit
//! with a status that says what happened. For cron and systemd timers.

use std::time::Duration;

use tracing::{error, info};

use super::wiring::{setup, IDENTITY_ATTEMPTS_ONCE};
use crate::cli::{Cli, Exit};
use crate::shutdown;

/// One check, then exit.
pub async fn once(cli: &Cli, wait: Option<Duration>) -> Exit {
    let (trigger, mut shutdown) = shutdown::channel();
    if let Err(e) = shutdown::on_signals(trigger) {
        error!(error = %e, "cannot install signal handlers");
        return Exit::Failure;
    }
    let parts = match setup(cli, Some(IDENTITY_ATTEMPTS_ONCE), &mut shutdown).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut handled = parts.handler.resume_incomplete().await;
    if let Some(mut src) = parts.metadata {
        handled.extend(src.check(&parts.handler).await.handled);
    }
    if let Some(mut src) = parts.sqs {
        let wait = wait
            .or(parts.config.sqs.as_ref().map(|s| s.wait_time))
            .unwrap_or_default()
            .min(Duration::from_secs(20));
        match src.poll_all(&parts.handler, wait).await {
            Ok(report) => {
                info!(
                    received = report.received,
                    deleted = report.deleted,
                    released = report.released,
                    left = report.left,
                    handled = report.handled.len(),
                    "queue checked"
                );
                handled.extend(report.handled);
            }
            Err(e) => {
                error!(error = %e, "checking the queue failed");
                return Exit::Failure;
            }
        }
    }
    super::exit_for(&handled)
}

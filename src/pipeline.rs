//! The pipeline: the configured steps in order, each under its timeout and failure policy, with
//! every start and outcome written to the journal before going on. A step already finished in the
//! journal is not run again; a step that was started but never finished is run again (with
//! `LASTCALL_RESUMED=1` for commands).

use std::time::Duration;

use tokio::time::Instant;

use tracing::{error, info, warn};

use crate::config::{OnFailure, Step};
use crate::journal::{Journal, Record, StepState};
use crate::shutdown::Shutdown;
use crate::steps::StepEnv;
use crate::template::Context;

/// Less time than this left before an interruption deadline: the step is not started.
const MIN_STEP_TIME: Duration = Duration::from_millis(100);

/// What the pipeline did: how many steps ended which way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Steps that succeeded (now or before a restart).
    pub ok: usize,
    /// Steps that failed or timed out.
    pub failed: usize,
    /// Steps not run because an earlier step aborted.
    pub skipped: usize,
    /// True when shutdown stopped the pipeline before its end.
    pub interrupted: bool,
    /// True when a step with `on_failure = "abort"` failed.
    pub skipped_by_abort: bool,
}

/// Which steps apply to an event.
pub type Filter<'a> = &'a dyn Fn(&Step) -> bool;

/// Runs `steps` for the action in `rec`, saving progress to `journal`. With a `deadline` (a spot
/// interruption), each step's timeout is cut so that it ends before it.
pub async fn run(
    steps: &[Step],
    applies: Filter<'_>,
    deadline: Option<Instant>,
    ctx: &Context,
    journal: &Journal,
    rec: &mut Record,
    shutdown: &Shutdown,
) -> Tally {
    let mut out = Tally::default();
    let mut aborted_by: Option<String> = None;
    for step in steps {
        // By name: a config changed between a crash and the resume must not mark another step
        // done (names are unique).
        let previous = rec.step_named(&step.name).map(|s| s.state);
        if let Some(state) = previous.filter(|s| s.is_final()) {
            let why = rec
                .step_named(&step.name)
                .and_then(|s| s.detail.clone())
                .unwrap_or_default();
            info!(step = %step.name, state = ?state, detail = %why, "step already done (before a restart, or for another trigger of this departure); not running it again");
            match state {
                StepState::Ok => out.ok += 1,
                StepState::Failed | StepState::TimedOut => {
                    out.failed += 1;
                    if step.on_failure == OnFailure::Abort {
                        aborted_by = Some(step.name.clone());
                        out.skipped_by_abort = true;
                    }
                }
                StepState::Skipped => out.skipped += 1,
                StepState::Started => {}
            }
            continue;
        }
        if let Some(by) = &aborted_by {
            warn!(step = %step.name, aborted_by = %by, "step skipped: an earlier step failed with on_failure = \"abort\"");
            let r = rec.step_mut(step.index, &step.name);
            r.state = StepState::Skipped;
            r.detail = Some(format!("skipped after {by} failed"));
            journal.save(rec).await;
            out.skipped += 1;
            continue;
        }
        if !applies(step) {
            info!(step = %step.name, "step does not apply to this event; skipped");
            let r = rec.step_mut(step.index, &step.name);
            r.state = StepState::Skipped;
            r.detail = Some("does not apply to this event".into());
            journal.save(rec).await;
            out.skipped += 1;
            continue;
        }
        if shutdown.is_requested() {
            warn!(step = %step.name, "shutting down before this step; it will run when lastcall starts again");
            out.interrupted = true;
            return out;
        }
        let resumed = previous == Some(StepState::Started);
        {
            let r = rec.step_mut(step.index, &step.name);
            r.state = StepState::Started;
            r.attempts += 1;
            r.elapsed_ms = None;
            r.detail = None;
        }
        journal.save(rec).await;
        info!(step = %step.name, kind = step.kind.kind_name(), timeout_ms = step.timeout.as_millis() as u64, resumed, "step started");
        let started = Instant::now();
        let timeout = match deadline {
            Some(d) => step.timeout.min(d.saturating_duration_since(started)),
            None => step.timeout,
        };
        let env = StepEnv {
            name: &step.name,
            ctx,
            resumed,
            deadline: started + timeout,
        };
        if timeout < step.timeout {
            warn!(step = %step.name, timeout_ms = timeout.as_millis() as u64, "step timeout cut short by the interruption deadline");
        }
        // Past (or all but at) the deadline, starting the step would only kill it at once.
        let result = if timeout < MIN_STEP_TIME {
            Err(())
        } else {
            tokio::time::timeout(timeout, step.kind.run(&env))
                .await
                .map_err(|_| ())
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (state, detail) = match result {
            Ok(Ok(detail)) => {
                info!(step = %step.name, kind = step.kind.kind_name(), elapsed_ms, outcome = "ok", "{detail}");
                (StepState::Ok, detail)
            }
            Ok(Err(e)) => {
                error!(step = %step.name, kind = step.kind.kind_name(), elapsed_ms, outcome = "failed", "step failed: {e}");
                (StepState::Failed, e.to_string())
            }
            Err(_) => {
                let d = format!(
                    "did not finish within its timeout of {}",
                    humantime::format_duration(step.timeout)
                );
                error!(step = %step.name, kind = step.kind.kind_name(), elapsed_ms, outcome = "timed_out", "step {d}");
                (StepState::TimedOut, d)
            }
        };
        {
            let r = rec.step_mut(step.index, &step.name);
            r.state = state;
            r.elapsed_ms = Some(elapsed_ms);
            r.detail = Some(detail);
        }
        journal.save(rec).await;
        if state == StepState::Ok {
            out.ok += 1;
        } else {
            out.failed += 1;
            if step.on_failure == OnFailure::Abort {
                aborted_by = Some(step.name.clone());
                out.skipped_by_abort = true;
            }
        }
    }
    out
}

/// The total of the steps' timeouts (for deciding how long a pipeline may take).
pub fn total_timeout(steps: &[Step]) -> Duration {
    steps.iter().map(|s| s.timeout).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Step;
    use crate::steps::{sleep::SleepStep, StepKind};

    fn step(index: usize, name: &str) -> Step {
        Step {
            index,
            name: name.into(),
            timeout: Duration::from_secs(5),
            on_failure: OnFailure::Continue,
            warm_pool: true,
            on_spot: true,
            on_rebalance: false,
            kind: StepKind::Sleep(SleepStep {
                duration: Duration::ZERO,
            }),
        }
    }

    #[tokio::test]
    async fn a_resume_matches_steps_by_name_not_position() {
        // Before: by index, so a config changed between the crash and the resume (a step added
        // in front) made "flush" count as done and skipped it.
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("journal");
        let mut rec = Record::new("i-0abc", "g", "h", "t", None, None, "sqs");
        rec.step_mut(1, "stop-agent").state = StepState::Ok;
        let steps = [step(1, "flush"), step(2, "stop-agent")];
        let out = run(
            &steps,
            &|_: &Step| true,
            None,
            &Context::default(),
            &journal,
            &mut rec,
            &Shutdown::never(),
        )
        .await;
        assert_eq!(out.ok, 2);
        let flush = rec.step_named("flush").expect("flush ran");
        assert_eq!((flush.state, flush.attempts), (StepState::Ok, 1));
        let stop = rec.step_named("stop-agent").expect("kept");
        assert_eq!(
            (stop.state, stop.attempts),
            (StepState::Ok, 0),
            "not run again"
        );
    }
}

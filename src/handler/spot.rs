//! Spot interruption notices and rebalance recommendations, and what they share with the
//! termination hook: one departure, each step run once, one pipeline at a time.

use std::time::{Instant, SystemTime};

use tracing::{info, warn};

use super::{Action, Handler, HandlerError, Outcome};
use crate::autoscaling::ActionResult;
use crate::config::Step;
use crate::event::Transition;
use crate::journal::{self, Completion, Record};
use crate::pipeline;

impl Handler {
    /// Runs the `on_spot` steps before a spot interruption (`what` is the notice's action,
    /// `terminate` or `stop`; `notice` its time, which tells one notice from the next), or the
    /// `on_rebalance` steps on a rebalance recommendation (`what` = `rebalance`: advisory, not a
    /// departure). There is no lifecycle action to complete. A step that succeeded for the
    /// instance's termination hook is not run again for a terminating notice, and the other way
    /// round; one departure pipeline runs at a time.
    pub async fn handle_spot(
        &self,
        what: &str,
        notice: Option<String>,
        deadline: Option<SystemTime>,
        group: Option<String>,
    ) -> Result<Outcome, HandlerError> {
        let me = &self.identity.instance_id;
        let rebalance = what == "rebalance";
        let (hook, transition) = match rebalance {
            true => ("rebalance", journal::REBALANCE_TRANSITION),
            false => ("spot", journal::SPOT_TRANSITION),
        };
        let key = journal::key(me, hook, transition);
        let Some(_lock) = self.journal.try_lock(&key) else {
            return Ok(Outcome::Busy);
        };
        let _departure = match what == "terminate" {
            true => match self.journal.try_lock(&departure_key(me)) {
                Some(l) => Some(l),
                None => return Ok(Outcome::Busy),
            },
            false => None,
        };
        let mut rec = match self.journal.load(&key).unwrap_or_default() {
            Some(r) if r.token == notice && r.completion.is_some() => {
                return Ok(Outcome::AlreadyCompleted)
            }
            Some(r) if r.token == notice => r,
            old => {
                if let Some(old) = old {
                    self.journal.archive(&old).await; // an earlier notice's
                }
                Record::new(
                    me,
                    group.as_deref().unwrap_or(""),
                    hook,
                    transition,
                    notice.as_deref(),
                    Some(what),
                    "imds",
                )
            }
        };
        if what == "terminate" {
            self.mark_done_for_departure(&mut rec);
        }
        self.journal.save(&rec).await;
        let started = Instant::now();
        let remaining = deadline.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
        if rebalance {
            info!(instance_id = %me, "rebalance recommendation: running the on_rebalance steps");
        } else {
            warn!(instance_id = %me, notice = what, seconds_left = remaining.map(|r| r.as_secs()), "spot interruption: running the on_spot steps");
        }
        let action = Action::new(
            me,
            group.as_deref().unwrap_or_default(),
            "",
            Transition::Terminating,
            false,
        );
        let mut ctx = self.context(&action).await;
        ctx.values.insert("transition", format!("spot:{what}"));
        if action.aref.group.is_empty() {
            ctx.values.remove("asg_name");
        }
        ctx.values.remove("hook_name");
        ctx.values.remove("metadata");
        let applies = move |s: &Step| if rebalance { s.on_rebalance } else { s.on_spot };
        let outcome = pipeline::run(
            &self.config.steps,
            &applies,
            remaining.map(|r| tokio::time::Instant::now() + r),
            &ctx,
            &self.journal,
            &mut rec,
            &self.shutdown,
        )
        .await;
        if outcome.interrupted {
            return Ok(Outcome::Interrupted);
        }
        rec.completion = Some(Completion {
            result: ActionResult::Continue,
            at: journal::unix_now(),
            accepted: false,
        });
        self.journal.save(&rec).await;
        info!(instance_id = %me, trigger = "imds", notice = what, steps_ok = outcome.ok, steps_failed = outcome.failed,
            steps_skipped = outcome.skipped, elapsed_ms = started.elapsed().as_millis() as u64,
            "{} handled (nothing to complete)", if rebalance { "rebalance recommendation" } else { "spot interruption" });
        Ok(Outcome::Completed {
            result: ActionResult::Continue,
            steps: outcome,
            accepted: false,
        })
    }

    /// Marks in `rec` the steps that already succeeded for another trigger of this instance's
    /// departure, so that they are not run again.
    pub(super) fn mark_done_for_departure(&self, rec: &mut Record) {
        let done = self.journal.done_for_departure(&self.identity.instance_id);
        for step in &self.config.steps {
            if done.contains(&step.name) && rec.step_named(&step.name).is_none() {
                let r = rec.step_mut(step.index, &step.name);
                r.state = journal::StepState::Ok;
                r.detail = Some("done already for another trigger of this departure".into());
            }
        }
    }
}

/// The lock that keeps two pipelines of one instance's departure (its termination hook and a spot
/// interruption notice) from running at the same time.
pub(super) fn departure_key(instance_id: &str) -> String {
    journal::key(instance_id, "", "departure")
}

//! Handling one lifecycle action of this instance, whichever source saw it: claim it (lock),
//! look it up in the journal, verify it with Auto Scaling, keep it alive with heartbeats
//! ([`heartbeat`]) while the pipeline runs, complete it, and record that. The action itself and
//! its placeholder values are in [`action`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

pub mod action;
pub mod heartbeat;
mod hooks;
mod spot;
mod verify;

pub use action::{context, Action};

use crate::autoscaling::{ActionResult, AutoScaling, CallOutcome, LifecycleError};
use crate::config::{Config, Step};
use crate::event::Transition;
use crate::imds::{Identity, Imds};
use crate::journal::{self, Completion, Journal, Record};
use crate::pipeline::{self, Tally};
use crate::shutdown::Shutdown;
use crate::template::Context;
use heartbeat::Heartbeats;
use verify::{Beat, Verified};

/// How long one verification asks Auto Scaling whether the instance waits (Auto Scaling is
/// eventually consistent: the notification can arrive before the state is visible). Short: the
/// queue source brings the message back within seconds to ask again (with back-off), for as
/// long as the action can live, and meanwhile it polls as usual.
const VERIFY_WINDOW: Duration = Duration::from_secs(8);
/// First pause between those questions; doubled up to [`VERIFY_MAX_PAUSE`].
const VERIFY_FIRST_PAUSE: Duration = Duration::from_millis(500);
/// Longest pause between those questions.
const VERIFY_MAX_PAUSE: Duration = Duration::from_secs(4);
/// How long completion is retried through throttling and outages.
const COMPLETE_DEADLINE: Duration = Duration::from_secs(300);
/// How long a completion by instance id (no token) retries "No active Lifecycle Action found"
/// while the group still shows the instance waiting: IMDS can report the target state before the
/// action exists.
const NOT_YET_ACTIVE_DEADLINE: Duration = Duration::from_secs(60);
/// How long Auto Scaling may refuse a message's token while the group shows the instance
/// waiting before lastcall concludes that no live action has that token (it expired, or the
/// message is not Auto Scaling's). Until then the message comes back with back-off: a second
/// hook can hold the instance in the wait state after lastcall's own action ended, and the API
/// has been seen refusing an action that Describe shows (PrairieLearn PR #15586, where retrying
/// every 5 s fixed it; aws-behaviour.md §1.4).
const REFUSAL_WINDOW: Duration = Duration::from_secs(120);
/// A record older than this cannot be of a live action (the longest GlobalTimeout, 48 h).
const LONGEST_ACTION: Duration = Duration::from_secs(48 * 3600);

/// How handling an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The steps ran and the action was completed (or Auto Scaling said it was already over).
    Completed {
        /// The result sent.
        result: ActionResult,
        /// What the steps did.
        steps: Tally,
        /// False when Auto Scaling answered "No active Lifecycle Action found".
        accepted: bool,
    },
    /// The journal says this action was completed before.
    AlreadyCompleted,
    /// Another lastcall process holds this action.
    Busy,
    /// Auto Scaling does not show this instance waiting in this group (yet), or could not be
    /// asked: nothing was run.
    NotWaiting {
        /// What it shows instead.
        seen: String,
        /// True when Auto Scaling did not answer (throttling, an outage), rather than showing
        /// another state.
        api_error: bool,
    },
    /// Shutdown stopped the pipeline; the journal holds the progress.
    Interrupted,
    /// The steps ran, and no hook was completed: several hooks for the transition and none named
    /// (a config error the operator must fix; the hooks' owners complete them, or they time out).
    Unowned {
        /// What the steps did.
        steps: Tally,
    },
    /// Auto Scaling has refused the message's token for [`REFUSAL_WINDOW`] while the group
    /// showed the instance waiting, and the token was never accepted: no live action has it (it
    /// expired before lastcall saw it, or the message is not Auto Scaling's). Nothing ran and
    /// nothing is recorded; the message can go.
    Refused,
    /// Handling failed (logged); the action is tried again when it is seen again.
    Failed {
        /// Why.
        error: String,
    },
}

/// Handling failed in a way that needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The configured hook is not one of the group's, and Auto Scaling refuses to complete it
    /// while the instance waits (for the group's real hook).
    #[error("Auto Scaling has no active action of hook {hook} for {instance_id} while the group shows it waiting, and the group's hooks do not list {hook}: check [lifecycle] hook_name; the action is not recorded as done")]
    UnknownHook {
        /// The instance.
        instance_id: String,
        /// The hook.
        hook: String,
    },
    /// Completion failed for good.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

/// Everything needed to handle this instance's actions.
#[derive(Debug, Clone)]
pub struct Handler {
    config: Arc<Config>,
    identity: Identity,
    imds: Imds,
    asg: AutoScaling,
    journal: Journal,
    shutdown: Shutdown,
    /// The groups' hooks as last described (see [`hooks`]).
    described: hooks::Described,
    /// Tokens Auto Scaling refused while the instance waited, and when first.
    refused: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>,
}

impl Handler {
    /// Builds a handler; opens the journal (in memory when the state directory cannot be
    /// used: actions still run and complete).
    pub fn new(
        config: Arc<Config>,
        identity: Identity,
        imds: Imds,
        asg: AutoScaling,
        shutdown: Shutdown,
    ) -> Self {
        let journal = Journal::open_or_memory(&config.lifecycle.state_dir);
        Self {
            config,
            identity,
            imds,
            asg,
            journal,
            shutdown,
            described: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// This instance.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The instance metadata client.
    pub fn imds(&self) -> &Imds {
        &self.imds
    }

    /// True when a launch of this instance was completed at or after `since` (Unix seconds),
    /// by any source (from the journal's archive; no AWS call).
    pub fn launched_since(&self, since: u64) -> bool {
        self.journal.archived_since(
            &self.identity.instance_id,
            Transition::Launching.as_str(),
            since,
        )
    }

    /// Notes (across restarts) that this instance was in service.
    pub fn note_in_service(&self) {
        self.journal.note_in_service(&self.identity.instance_id);
    }

    /// True when this instance was in service before (by any process).
    pub fn was_in_service(&self) -> bool {
        self.journal.was_in_service(&self.identity.instance_id)
    }

    /// Resumes every action of this instance that the journal shows unfinished (the process
    /// died or was stopped mid-pipeline). One that fails does not keep the others from being
    /// resumed: it is reported as [`Outcome::Failed`].
    pub async fn resume_incomplete(&self) -> Vec<Outcome> {
        let records = match self.journal.incomplete(&self.identity.instance_id) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot list the journal; nothing is resumed");
                return vec![Outcome::Failed {
                    error: e.to_string(),
                }];
            }
        };
        let mut out = Vec::new();
        for rec in records {
            // A spot interruption is resumed only if instance metadata still reports it.
            let Some(action) = Action::from_record(&rec) else {
                continue;
            };
            info!(instance_id = %rec.instance_id, hook = %rec.hook, trigger = %rec.trigger, "resuming an unfinished lifecycle action from the journal");
            let trigger = format!("{}+journal", rec.trigger);
            out.push(match self.handle(&action, &trigger).await {
                Ok(o) => o,
                Err(e) => {
                    error!(instance_id = %rec.instance_id, hook = %rec.hook, error = %e, "resuming an unfinished action failed; it is tried again when its notification comes back");
                    Outcome::Failed {
                        error: e.to_string(),
                    }
                }
            });
        }
        out
    }

    /// Handles one action of this instance.
    pub async fn handle(&self, action: &Action, trigger: &str) -> Result<Outcome, HandlerError> {
        let a = &action.aref;
        let key = journal::key(&a.instance_id, &a.hook, action.transition.as_str());
        let Some(_lock) = self.journal.try_lock(&key) else {
            info!(instance_id = %a.instance_id, hook = %a.hook, "another lastcall process is handling this action");
            return Ok(Outcome::Busy);
        };
        let departure = action.transition == Transition::Terminating && !action.warm_pool;
        let _departure = match departure {
            true => match self.journal.try_lock(&spot::departure_key(&a.instance_id)) {
                Some(l) => Some(l),
                None => {
                    info!(instance_id = %a.instance_id, "another pipeline of this instance's departure runs (a spot interruption notice); this one waits its turn");
                    return Ok(Outcome::Busy);
                }
            },
            false => None,
        };
        let loaded = self.journal.load(&key).unwrap_or_else(|e| {
            warn!(error = %e, "the journal record cannot be read; starting the action afresh");
            None
        });
        let mut earlier = None;
        let mut rec = match loaded {
            Some(r) if r.completion.is_some() && same_action(&r, action) => {
                if !action.owned {
                    // Its steps ran; the notification is still its hook's owner's.
                    return Ok(Outcome::Unowned {
                        steps: Tally::default(),
                    });
                }
                info!(instance_id = %a.instance_id, hook = %a.hook, "action was already completed (journal)");
                return Ok(Outcome::AlreadyCompleted);
            }
            Some(r) if r.completion.is_none() && same_action(&r, action) => r,
            // A duplicate of an action completed and archived (a launch, a warm-pool move):
            // verifying it again would find the instance no longer waiting and keep the
            // message for days (G18).
            _ if action.repeatable()
                && a.token
                    .as_deref()
                    .is_some_and(|t| self.journal.archived_with_token(&key, t)) =>
            {
                if !action.owned {
                    return Ok(Outcome::Unowned {
                        steps: Tally::default(),
                    });
                }
                info!(instance_id = %a.instance_id, hook = %a.hook, "action was already completed (archived journal record with this token)");
                return Ok(Outcome::AlreadyCompleted);
            }
            // A record belongs to one action: an unfinished one of an earlier action (a
            // warm-pool return whose action expired while lastcall was down) must not make the
            // real termination skip the steps it did then. It is archived; this one starts
            // afresh, as after a completed earlier action.
            // It is archived only once this action is verified: a message with another token
            // (forged, or an old duplicate) must not push the real action's record aside.
            stale => {
                earlier = stale.filter(|r| r.completion.is_none());
                let mut r = Record::new(
                    &a.instance_id,
                    &a.group,
                    &a.hook,
                    action.transition.as_str(),
                    a.token.as_deref(),
                    action.metadata.as_deref(),
                    trigger,
                );
                r.warm_pool = action.warm_pool;
                r.from_pool = action.from_pool;
                r
            }
        };
        if rec.token.is_none() {
            rec.token = a.token.clone();
        }
        let mut beaten = false;
        let mut token_refused = false;
        if self.config.lifecycle.verify && !action.seen_waiting {
            match self.verify(action).await {
                Verified::Beaten => beaten = true,
                Verified::Waiting { refused } => token_refused = refused,
                Verified::Elsewhere(seen) => {
                    warn!(instance_id = %a.instance_id, group = %a.group, hook = %a.hook, expected = action.wait_state(), seen = %seen,
                        "suspicious notification: Auto Scaling does not show this instance waiting in this group; running nothing for now");
                    return Ok(Outcome::NotWaiting {
                        seen,
                        api_error: false,
                    });
                }
                Verified::Unknown(error) => {
                    warn!(instance_id = %a.instance_id, group = %a.group, hook = %a.hook, error = %error,
                        "cannot verify the notification: Auto Scaling did not answer; running nothing for now");
                    return Ok(Outcome::NotWaiting {
                        seen: format!("unknown ({error})"),
                        api_error: true,
                    });
                }
            }
        }
        let action = &self.with_described_hook(action).await;
        // The hook's timer has run since the wait began (a late notification, a resume after a
        // restart): one heartbeat at once, then at the interval, until completion has returned.
        // With a token, that first heartbeat also proves the message is the action's: Auto
        // Scaling refuses a token that is not while the group still shows the instance waiting
        // (see `first_heartbeat`).
        let beat = match &a.token {
            _ if beaten => Beat::Sent,
            // Verification has just seen the token refused and the instance waiting: judged
            // without another heartbeat and describe.
            Some(_) if action.owned && token_refused => self.refusal(action, &rec),
            Some(_) if action.owned => self.first_heartbeat(action, &rec).await,
            _ => Beat::NotSent,
        };
        let beaten = match beat {
            Beat::Sent => true,
            Beat::NotSent => false,
            Beat::Later(seen) => {
                return Ok(Outcome::NotWaiting {
                    seen,
                    api_error: false,
                })
            }
            Beat::Refused => return Ok(Outcome::Refused),
        };
        if beaten && !rec.confirmed {
            rec.confirmed = true;
        }
        if let Some(old) = earlier {
            warn!(instance_id = %a.instance_id, hook = %a.hook, "the journal's unfinished record is of an earlier action; archiving it and starting afresh");
            self.journal.archive(&old).await;
        }
        if departure {
            self.mark_done_for_departure(&mut rec);
        }
        let heartbeat = match action.owned {
            true => {
                Heartbeats::start(&self.asg, action, self.config.lifecycle.heartbeat, !beaten).await
            }
            false => None,
        };
        self.journal.save(&rec).await;

        let started = Instant::now();
        let ctx = self.context(action).await;
        let warm_pool = action.warm_pool;
        let applies = move |s: &Step| !warm_pool || s.warm_pool;
        let steps = match action.transition {
            Transition::Terminating => &self.config.steps,
            Transition::Launching => &self.config.launch_steps,
        };
        let outcome = pipeline::run(
            steps,
            &applies,
            None,
            &ctx,
            &self.journal,
            &mut rec,
            &self.shutdown,
        )
        .await;
        if outcome.interrupted {
            return Ok(Outcome::Interrupted);
        }
        let result = match action.transition {
            _ if outcome.failed == 0 => ActionResult::Continue,
            Transition::Terminating => self.config.lifecycle.on_failure_result,
            // A launch whose step failed with on_failure = "abort" is abandoned: Auto Scaling
            // replaces the instance.
            Transition::Launching if outcome.skipped_by_abort => ActionResult::Abandon,
            Transition::Launching => ActionResult::Continue,
        };
        if !action.owned {
            rec.completion = Some(Completion {
                result,
                at: journal::unix_now(),
                accepted: false,
            });
            self.journal.save(&rec).await;
            error!(instance_id = %a.instance_id, group = %a.group, steps_ok = outcome.ok, steps_failed = outcome.failed,
                "{} handled, and no hook completed: the group has several {} hooks and none is named; set [lifecycle] {}",
                action.what(), action.transition, crate::autoscaling::config_key(&action.transition));
            return Ok(Outcome::Unowned { steps: outcome });
        }
        if let Some(h) = &heartbeat {
            h.completing();
        }
        let accepted = self.complete(action, result).await;
        drop(heartbeat);
        let accepted = accepted?;
        rec.completion = Some(Completion {
            result,
            at: journal::unix_now(),
            accepted,
        });
        self.journal.save(&rec).await;
        if action.repeatable() {
            self.journal.archive(&rec).await;
        }
        info!(
            instance_id = %a.instance_id,
            trigger,
            group = %a.group,
            hook = %a.hook,
            steps_ok = outcome.ok,
            steps_failed = outcome.failed,
            steps_skipped = outcome.skipped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            result = %result,
            accepted,
            "{} handled",
            action.what()
        );
        Ok(Outcome::Completed {
            result,
            steps: outcome,
            accepted,
        })
    }

    /// Completes the action; true when Auto Scaling accepted it, false when it said the action
    /// was already gone.
    async fn complete(&self, action: &Action, result: ActionResult) -> Result<bool, HandlerError> {
        let a = &action.aref;
        let start = Instant::now();
        let mut hook_checked = false;
        let mut not_yet = 0u32;
        loop {
            match self.asg.complete(a, result, COMPLETE_DEADLINE).await {
                Ok(CallOutcome::Done) => return Ok(true),
                // With a token the answer is final. By instance id it may only mean "not yet":
                // retry while the group still shows the instance waiting.
                Ok(CallOutcome::NoActiveAction)
                    if a.token.is_none() && start.elapsed() < NOT_YET_ACTIVE_DEADLINE =>
                {
                    if !self.shows_waiting(action).await {
                        return Ok(false);
                    }
                    // Auto Scaling answers the same "No active…" for a hook it does not have
                    // (aws-behaviour.md §3): a configured name the group lacks would otherwise
                    // be recorded done while the real hook's action waits out its timeout.
                    if !hook_checked {
                        hook_checked = true;
                        if self.hook_listed(&a.group, &a.hook).await == Some(false) {
                            let e = HandlerError::UnknownHook {
                                instance_id: a.instance_id.clone(),
                                hook: a.hook.clone(),
                            };
                            error!(instance_id = %a.instance_id, hook = %a.hook, "{e}");
                            return Err(e);
                        }
                    }
                    // 1, 2, 4, then 8 s, jittered: each round is a completion and a describe,
                    // from every instance of a scale-in at once (before: every second).
                    let pause = crate::backoff::jitter(crate::backoff::doubling(
                        Duration::from_secs(1),
                        not_yet,
                        Duration::from_secs(8),
                    ));
                    not_yet += 1;
                    debug!(instance_id = %a.instance_id, retry_in_ms = pause.as_millis() as u64, "no active lifecycle action yet; retrying");
                    tokio::time::sleep(pause).await;
                }
                // With a token, "No active Lifecycle Action" means the action is done or
                // expired (design §4), also while the group shows the instance waiting: another
                // hook can hold it there after lastcall's own action expired, or the answer to
                // an accepted completion was lost and the SDK's retry was refused.
                Ok(CallOutcome::NoActiveAction) if a.token.is_some() => {
                    info!(instance_id = %a.instance_id, hook = %a.hook, "CompleteLifecycleAction: no active lifecycle action for the message's token: it was completed already or it expired; recorded as done");
                    return Ok(false);
                }
                Ok(CallOutcome::NoActiveAction) => return Ok(false),
                Err(e) => {
                    error!(instance_id = %a.instance_id, hook = %a.hook, error = %e, "could not complete the lifecycle action");
                    return Err(e.into());
                }
            }
        }
    }

    /// True when some pipeline (of this process or another) holds this action now (no AWS
    /// call).
    pub fn is_busy(&self, instance_id: &str, hook: &str, transition: &Transition) -> bool {
        let key = journal::key(instance_id, hook, transition.as_str());
        self.journal.try_lock(&key).is_none()
    }

    /// True when the journal shows this action completed (no AWS call).
    /// Only a record of a real termination counts (not a warm-pool return whose archiving
    /// failed), and only one young enough to be of a live action.
    pub fn completed(&self, instance_id: &str, hook: &str, transition: &Transition) -> bool {
        let key = journal::key(instance_id, hook, transition.as_str());
        matches!(self.journal.load(&key), Ok(Some(r)) if r.completion.is_some()
            && !r.warm_pool && !too_old(&r, None))
    }

    /// Placeholder values for this action.
    async fn context(&self, action: &Action) -> Context {
        context(
            &self.config,
            &self.identity,
            &self.imds,
            Some(&self.asg),
            action,
        )
        .await
    }
}

/// True when `rec` is the record of `action`: the same token when both have one (queue mode),
/// and the same destination (a warm-pool return and the real termination share a key).
///
/// Without a token on both sides (instance metadata gives none), a record older than the hook's
/// GlobalTimeout (48 h when unknown) is of an earlier action: a warm-pool return weeks ago whose
/// action was interrupted must not make this one skip its steps.
fn same_action(rec: &Record, action: &Action) -> bool {
    let token = match (&rec.token, &action.aref.token) {
        (Some(x), Some(y)) => x == y,
        _ => !too_old(rec, action.timeouts.map(|t| t.global)),
    };
    token && rec.warm_pool == action.warm_pool
}

/// True when `rec` was created longer ago than any action can live (`global`, or 48 h).
fn too_old(rec: &Record, global: Option<Duration>) -> bool {
    let limit = global
        .unwrap_or(LONGEST_ACTION)
        .min(LONGEST_ACTION)
        .as_secs();
    journal::unix_now().saturating_sub(rec.created_at) > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: Option<&str>, age_s: u64, warm_pool: bool) -> Record {
        let mut r = Record::new(
            "i-0abc",
            "g",
            "h",
            Transition::Terminating.as_str(),
            token,
            None,
            "imds",
        );
        r.created_at = journal::unix_now() - age_s;
        r.warm_pool = warm_pool;
        r
    }

    #[test]
    fn a_record_is_one_actions() {
        let mut imds = Action::new("i-0abc", "g", "h", Transition::Terminating, true);
        // Token-less (instance metadata): a fresh record is this action's; one older than any
        // action can live is an earlier one's (before: any record of the key and destination,
        // so a warm-pool return weeks later skipped the steps the earlier one did).
        assert!(same_action(&record(None, 60, true), &imds));
        assert!(!same_action(&record(None, 3 * 24 * 3600, true), &imds));
        imds.timeouts = Some(crate::autoscaling::HookTimeouts {
            heartbeat: Duration::from_secs(30),
            global: Duration::from_secs(3000),
        });
        assert!(!same_action(&record(None, 3600, true), &imds));
        assert!(same_action(&record(None, 600, true), &imds));
        // Another destination is another action.
        assert!(!same_action(&record(None, 60, false), &imds));
        // Tokens decide when both have one.
        let mut q = Action::new("i-0abc", "g", "h", Transition::Terminating, false);
        q.aref.token = Some("a".into());
        assert!(same_action(&record(Some("a"), 3600, false), &q));
        assert!(!same_action(&record(Some("b"), 60, false), &q));
    }
}

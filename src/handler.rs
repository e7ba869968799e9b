//! Handling one lifecycle action of this instance, whichever source saw it: claim it (lock),
//! look it up in the journal, verify it with Auto Scaling, keep it alive with heartbeats while the
//! pipeline runs, complete it, and record that.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use crate::config::{ActionResult, Config, Heartbeat};
use crate::event::{LifecycleEvent, Transition};
use crate::identity::{Identity, Imds};
use crate::journal::{self, Completion, Journal, JournalError, Record};
use crate::lifecycle::{
    ActionRef, AutoScaling, CallOutcome, HookTimeouts, LifecycleError, PENDING_WAIT,
    TERMINATING_WAIT, WARMED_PENDING_WAIT,
};
use crate::pipeline;
use crate::shutdown::Shutdown;
use crate::template::Context;

/// Pauses between checks that the group shows the instance in `Terminating:Wait` (Auto Scaling
/// is eventually consistent: the notification can arrive before the state is visible).
const VERIFY_PAUSES: &[Duration] = &[
    Duration::from_millis(0),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(2),
];
/// Heartbeat interval when the hook cannot be described: safe for the shortest allowed
/// `HeartbeatTimeout` (30 s).
const FALLBACK_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long completion is retried through throttling and outages.
const COMPLETE_DEADLINE: Duration = Duration::from_secs(300);
/// How long a completion by instance id (no token) retries "No active Lifecycle Action found"
/// while the group still shows the instance waiting: IMDS can report the target state before the
/// action exists.
const NOT_YET_ACTIVE_DEADLINE: Duration = Duration::from_secs(60);
/// The pseudo-transition under which spot interruptions are journaled.
pub const SPOT_TRANSITION: &str = "ec2:SPOT_INSTANCE_INTERRUPTION";

/// A lifecycle action to handle, from a notification or from the journal.
#[derive(Debug, Clone)]
pub struct Action {
    /// Which action.
    pub aref: ActionRef,
    /// Launching or terminating.
    pub transition: Transition,
    /// The hook's NotificationMetadata.
    pub metadata: Option<String>,
    /// The destination is the warm pool: a termination that only stops the instance (it comes
    /// back), or a launch into the pool.
    pub warm_pool: bool,
    /// When Auto Scaling started it, if known.
    pub started: Option<SystemTime>,
    /// The source has just seen the group hold the instance in [`Action::wait_state`], so the
    /// handler need not ask again.
    pub seen_waiting: bool,
    /// The hook's timeouts, when the source already read them (else the handler asks).
    pub timeouts: Option<HookTimeouts>,
}

impl Action {
    /// The group state Auto Scaling holds the instance in while this action waits.
    pub fn wait_state(&self) -> &'static str {
        match (&self.transition, self.warm_pool) {
            (_, true) => WARMED_PENDING_WAIT,
            (Transition::Terminating, false) => TERMINATING_WAIT,
            (Transition::Launching, false) => PENDING_WAIT,
        }
    }

    /// Launches and warm-pool returns can happen to the same instance again.
    fn repeatable(&self) -> bool {
        self.warm_pool || self.transition == Transition::Launching
    }
}

impl From<&LifecycleEvent> for Action {
    fn from(ev: &LifecycleEvent) -> Self {
        Self {
            aref: ActionRef {
                group: ev.group.clone(),
                hook: ev.hook_name.clone(),
                instance_id: ev.instance_id.clone(),
                token: ev.token.clone(),
            },
            transition: ev.transition.clone(),
            metadata: ev.metadata.clone(),
            warm_pool: ev.to_warm_pool(),
            started: ev.time,
            seen_waiting: false,
            timeouts: None,
        }
    }
}

/// How handling an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The steps ran and the action was completed (or Auto Scaling said it was already over).
    Completed {
        /// The result sent.
        result: ActionResult,
        /// What the steps did.
        outcome: pipeline::Outcome,
        /// False when Auto Scaling answered "No active Lifecycle Action found".
        accepted: bool,
    },
    /// The journal says this action was completed before.
    AlreadyCompleted,
    /// Another lastcall process holds this action.
    Busy,
    /// Auto Scaling does not show this instance waiting in this group: nothing was run.
    NotWaiting {
        /// What it shows instead.
        seen: String,
    },
    /// Shutdown stopped the pipeline; the journal holds the progress.
    Interrupted,
}

/// Handling failed in a way that needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The journal could not be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
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
}

impl Handler {
    /// Builds a handler; opens the journal.
    pub fn new(
        config: Arc<Config>,
        identity: Identity,
        imds: Imds,
        asg: AutoScaling,
        shutdown: Shutdown,
    ) -> Result<Self, JournalError> {
        let journal = Journal::open(&config.lifecycle.state_dir)?;
        Ok(Self {
            config,
            identity,
            imds,
            asg,
            journal,
            shutdown,
        })
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

    /// Resumes every action of this instance that the journal shows unfinished (the process
    /// died or was stopped mid-pipeline).
    pub async fn resume_incomplete(&self) -> Result<Vec<Handled>, HandlerError> {
        let mut out = Vec::new();
        for rec in self.journal.incomplete(&self.identity.instance_id)? {
            let transition = match rec.transition.as_str() {
                "autoscaling:EC2_INSTANCE_LAUNCHING" => Transition::Launching,
                "autoscaling:EC2_INSTANCE_TERMINATING" => Transition::Terminating,
                // A spot interruption is resumed only if instance metadata still reports it.
                _ => continue,
            };
            info!(instance_id = %rec.instance_id, hook = %rec.hook, trigger = %rec.trigger, "resuming an unfinished lifecycle action from the journal");
            let action = Action {
                aref: ActionRef {
                    group: rec.group.clone(),
                    hook: rec.hook.clone(),
                    instance_id: rec.instance_id.clone(),
                    token: rec.token.clone(),
                },
                transition,
                metadata: rec.metadata.clone(),
                warm_pool: rec.warm_pool,
                started: None,
                seen_waiting: false,
                timeouts: None,
            };
            let trigger = format!("{}+journal", rec.trigger);
            out.push(self.handle(&action, &trigger).await?);
        }
        Ok(out)
    }

    /// Handles one action of this instance.
    pub async fn handle(&self, action: &Action, trigger: &str) -> Result<Handled, HandlerError> {
        let a = &action.aref;
        let key = journal::key(&a.instance_id, &a.hook, action.transition.as_str());
        let Some(_lock) = self.journal.try_lock(&key)? else {
            info!(instance_id = %a.instance_id, hook = %a.hook, "another lastcall process is handling this action");
            return Ok(Handled::Busy);
        };
        let mut rec = match self.journal.load(&key)? {
            Some(r) if r.completion.is_some() && same_action(&r, a) => {
                info!(instance_id = %a.instance_id, hook = %a.hook, "action was already completed (journal)");
                return Ok(Handled::AlreadyCompleted);
            }
            // A completed record with another token is an earlier action (the instance went
            // to the warm pool and came back): start afresh.
            Some(r) if r.completion.is_none() => r,
            _ => {
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
                r
            }
        };
        if rec.token.is_none() {
            rec.token = a.token.clone();
        }
        if self.config.lifecycle.verify && !action.seen_waiting {
            if let Err(seen) = self.verify(a, action.wait_state()).await {
                warn!(instance_id = %a.instance_id, group = %a.group, hook = %a.hook, expected = action.wait_state(), seen = %seen,
                    "suspicious notification: Auto Scaling does not show this instance waiting in this group; running nothing");
                return Ok(Handled::NotWaiting { seen });
            }
        }
        self.journal.save(&rec)?;

        let started = Instant::now();
        let ctx = self.context(action).await;
        let heartbeat = self.start_heartbeats(action).await;
        let warm_pool = action.warm_pool;
        let applies = move |s: &crate::config::Step| !warm_pool || s.warm_pool;
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
        drop(heartbeat);
        let outcome = outcome?;
        if outcome.interrupted {
            return Ok(Handled::Interrupted);
        }
        let result = match action.transition {
            _ if outcome.failed == 0 => ActionResult::Continue,
            Transition::Terminating => self.config.lifecycle.on_failure_result,
            // A launch whose step failed with on_failure = "abort" is abandoned: Auto Scaling
            // replaces the instance.
            Transition::Launching if outcome.skipped_by_abort => ActionResult::Abandon,
            Transition::Launching => ActionResult::Continue,
        };
        let accepted = self.complete(action, result).await?;
        rec.completion = Some(Completion {
            result,
            at: journal::unix_now(),
            accepted,
        });
        self.journal.save(&rec)?;
        if action.repeatable() {
            self.journal.archive(&rec)?;
        }
        let what = match (&action.transition, action.warm_pool) {
            (Transition::Terminating, false) => "termination handled",
            (Transition::Terminating, true) => "warm-pool return handled",
            (Transition::Launching, _) => "launch handled",
        };
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
            "{what}"
        );
        Ok(Handled::Completed {
            result,
            outcome,
            accepted,
        })
    }

    /// Completes the action; true when Auto Scaling accepted it, false when it said the action
    /// was already gone.
    async fn complete(&self, action: &Action, result: ActionResult) -> Result<bool, HandlerError> {
        let a = &action.aref;
        let start = Instant::now();
        loop {
            match self.asg.complete(a, result, COMPLETE_DEADLINE).await {
                Ok(CallOutcome::Done) => return Ok(true),
                // With a token the answer is final. By instance id it may only mean "not yet":
                // retry while the group still shows the instance waiting.
                Ok(CallOutcome::NoActiveAction)
                    if a.token.is_none() && start.elapsed() < NOT_YET_ACTIVE_DEADLINE =>
                {
                    match self.asg.instance(&a.instance_id).await {
                        Ok(Some(s)) if s.state == action.wait_state() => {
                            debug!(instance_id = %a.instance_id, "no active lifecycle action yet; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        _ => return Ok(false),
                    }
                }
                Ok(CallOutcome::NoActiveAction) => return Ok(false),
                Err(e) => {
                    error!(instance_id = %a.instance_id, hook = %a.hook, error = %e, "could not complete the lifecycle action");
                    return Err(e.into());
                }
            }
        }
    }

    /// True when the journal shows this action completed (no AWS call).
    pub fn completed(&self, instance_id: &str, hook: &str, transition: &Transition) -> bool {
        let key = journal::key(instance_id, hook, transition.as_str());
        matches!(self.journal.load(&key), Ok(Some(r)) if r.completion.is_some())
    }

    /// Runs the `on_spot` steps before a spot interruption (or a rebalance recommendation).
    /// There is no lifecycle action to complete; the journal still keeps finished steps from
    /// running twice.
    pub async fn handle_spot(
        &self,
        what: &str,
        deadline: Option<SystemTime>,
        group: Option<String>,
    ) -> Result<Handled, HandlerError> {
        let me = &self.identity.instance_id;
        let key = journal::key(me, "spot", SPOT_TRANSITION);
        let Some(_lock) = self.journal.try_lock(&key)? else {
            return Ok(Handled::Busy);
        };
        let mut rec = match self.journal.load(&key)? {
            Some(r) if r.completion.is_some() => return Ok(Handled::AlreadyCompleted),
            Some(r) => r,
            None => Record::new(
                me,
                group.as_deref().unwrap_or(""),
                "spot",
                SPOT_TRANSITION,
                None,
                None,
                "imds",
            ),
        };
        self.journal.save(&rec)?;
        let started = Instant::now();
        let remaining = deadline.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
        warn!(instance_id = %me, notice = what, seconds_left = remaining.map(|r| r.as_secs()), "spot interruption: running the on_spot steps");
        let action = Action {
            aref: ActionRef {
                group: group.unwrap_or_default(),
                hook: String::new(),
                instance_id: me.clone(),
                token: None,
            },
            transition: Transition::Terminating,
            metadata: None,
            warm_pool: false,
            started: None,
            seen_waiting: false,
            timeouts: None,
        };
        let mut ctx = self.context(&action).await;
        ctx.values.insert("transition", format!("spot:{what}"));
        if action.aref.group.is_empty() {
            ctx.values.remove("asg_name");
        }
        ctx.values.remove("hook_name");
        let applies = |s: &crate::config::Step| s.on_spot;
        let outcome = pipeline::run(
            &self.config.steps,
            &applies,
            remaining.map(|r| tokio::time::Instant::now() + r),
            &ctx,
            &self.journal,
            &mut rec,
            &self.shutdown,
        )
        .await?;
        if outcome.interrupted {
            return Ok(Handled::Interrupted);
        }
        rec.completion = Some(Completion {
            result: ActionResult::Continue,
            at: journal::unix_now(),
            accepted: false,
        });
        self.journal.save(&rec)?;
        info!(instance_id = %me, trigger = "spot", notice = what, steps_ok = outcome.ok, steps_failed = outcome.failed,
            steps_skipped = outcome.skipped, elapsed_ms = started.elapsed().as_millis() as u64, "spot interruption handled (nothing to complete)");
        Ok(Handled::Completed {
            result: ActionResult::Continue,
            outcome,
            accepted: false,
        })
    }

    /// Ok when the group shows the instance in `want` in the action's group; else what it shows.
    async fn verify(&self, a: &ActionRef, want: &str) -> Result<(), String> {
        let mut seen = String::from("nothing");
        for pause in VERIFY_PAUSES {
            tokio::time::sleep(*pause).await;
            match self.asg.instance(&a.instance_id).await {
                Ok(Some(s)) if s.state == want && s.group == a.group => return Ok(()),
                Ok(Some(s)) => seen = format!("{} in group {}", s.state, s.group),
                Ok(None) => seen = "not in any Auto Scaling group".into(),
                Err(e) => seen = format!("unknown ({e})"),
            }
            debug!(instance_id = %a.instance_id, seen = %seen, want, "not yet waiting");
        }
        Err(seen)
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

    /// The hook's timeouts: from the action when its source read them already (no second
    /// `DescribeLifecycleHooks`), else from Auto Scaling.
    async fn hook_timeouts(&self, action: &Action) -> Result<Option<HookTimeouts>, LifecycleError> {
        match action.timeouts {
            Some(t) => Ok(Some(t)),
            None => self.asg.hook(&action.aref.group, &action.aref.hook).await,
        }
    }

    /// Starts the heartbeat task (stopped when the returned guard is dropped).
    async fn start_heartbeats(&self, action: &Action) -> Option<AbortOnDrop> {
        let a = action.aref.clone();
        let (interval, global) = match self.config.lifecycle.heartbeat {
            Heartbeat::Off => return None,
            Heartbeat::Every(d) => (d, None),
            Heartbeat::Auto => match self.hook_timeouts(action).await {
                Ok(Some(t)) => (
                    (t.heartbeat / 2).max(Duration::from_secs(1)),
                    Some(t.global),
                ),
                Ok(None) => {
                    warn!(group = %a.group, hook = %a.hook, interval_s = FALLBACK_HEARTBEAT.as_secs(), "hook not found by DescribeLifecycleHooks; heartbeating at a fallback interval");
                    (FALLBACK_HEARTBEAT, None)
                }
                Err(e) => {
                    warn!(error = %e, interval_s = FALLBACK_HEARTBEAT.as_secs(), "cannot describe the hook (missing autoscaling:DescribeLifecycleHooks?); heartbeating at a fallback interval");
                    (FALLBACK_HEARTBEAT, None)
                }
            },
        };
        // Heartbeats past the global timeout are refused anyway; stop there.
        let stop_at = global.map(|g| {
            let age = action
                .started
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            tokio::time::Instant::now() + g.saturating_sub(age)
        });
        let asg = self.asg.clone();
        debug!(
            interval_ms = interval.as_millis() as u64,
            "heartbeats started"
        );
        Some(AbortOnDrop(tokio::spawn(async move {
            // After a failed heartbeat the next one comes sooner: waiting a whole interval (half
            // the hook's timeout) again could let the action expire.
            let retry = (interval / 4).max(Duration::from_millis(500));
            let mut next = interval;
            loop {
                tokio::time::sleep(next).await;
                if stop_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    warn!(instance_id = %a.instance_id, hook = %a.hook, "the hook's global timeout has passed; no more heartbeats");
                    return;
                }
                match asg.heartbeat(&a).await {
                    Ok(CallOutcome::Done) => {
                        next = interval;
                        debug!(instance_id = %a.instance_id, hook = %a.hook, "heartbeat sent")
                    }
                    Ok(CallOutcome::NoActiveAction) => {
                        warn!(instance_id = %a.instance_id, hook = %a.hook, "heartbeat: no active lifecycle action (it expired or was completed elsewhere); no more heartbeats");
                        return;
                    }
                    Err(e) => {
                        next = retry;
                        warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "heartbeat failed; trying again soon")
                    }
                }
            }
        })))
    }
}

fn same_action(rec: &Record, a: &ActionRef) -> bool {
    match (&rec.token, &a.token) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Placeholder values for an action of this instance: its identity, the action's group, hook,
/// transition and metadata, and the tags the config refers to (from instance metadata tags, else
/// the group's propagated tags).
pub async fn context(
    config: &Config,
    identity: &Identity,
    imds: &Imds,
    asg: Option<&AutoScaling>,
    action: &Action,
) -> Context {
    let id = identity;
    let mut ctx = Context::default();
    for (k, v) in [
        ("instance_id", &id.instance_id),
        ("hostname", &id.hostname),
        ("local_ipv4", &id.local_ipv4),
        ("local_hostname", &id.local_hostname),
        ("region", &id.region),
        ("availability_zone", &id.availability_zone),
        ("asg_name", &action.aref.group),
        ("hook_name", &action.aref.hook),
    ] {
        if !v.is_empty() {
            ctx.values.insert(k, v.clone());
        }
    }
    ctx.values
        .insert("transition", action.transition.as_str().to_string());
    if let Some(m) = &action.metadata {
        ctx.values.insert("metadata", m.clone());
    }
    let mut group_tags = None;
    for key in config.tag_keys() {
        match imds.tag(&key).await {
            Ok(Some(v)) => {
                ctx.tags.insert(key, v);
            }
            Ok(None) => {}
            Err(_) => {
                if let (None, Some(asg)) = (&group_tags, asg) {
                    group_tags = Some(match asg.propagated_tags(&action.aref.group).await {
                        Ok(t) => t,
                        Err(e) => {
                            warn!(error = %e, "instance metadata tags are off and the group's tags could not be read; {{tag:…}} placeholders will fail");
                            Default::default()
                        }
                    });
                }
                if let Some(v) = group_tags.as_ref().and_then(|t| t.get(&key)) {
                    ctx.tags.insert(key, v.clone());
                }
            }
        }
    }
    ctx
}

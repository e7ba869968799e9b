//! The instance-metadata source (`[imds]`): no queue at all. This instance reads its own
//! `autoscaling/target-lifecycle-state` (and, when enabled, `spot/instance-action` and the
//! rebalance recommendation) from IMDSv2, which costs nothing while idle, and handles its
//! lifecycle actions by instance id.
//!
//! - `Terminated`: the instance is (about to be) in `Terminating:Wait`. Find the group and the
//!   hook, wait until the group shows `Terminating:Wait`, run the steps, complete by instance id.
//! - `Warmed:*` after `InService`: the instance goes back to the warm pool (it waits in
//!   `Warmed:Pending:Wait`); only `warm_pool` steps run.
//! - `InService` while the group shows `Pending:Wait`, with launch steps: a launch to handle.
//! - 404: no transition recorded yet; nothing to do.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use crate::autoscaling::{
    AutoScaling, HookChoiceError, HookNames, PENDING_WAIT, TERMINATING_WAIT, WARMED_PENDING_WAIT,
    WARMED_TERMINATING_WAIT,
};
use crate::config::ImdsConfig;
use crate::event::Transition;
use crate::handler::{Action, Handler, Outcome};
use crate::imds::{Imds, REBALANCE, SPOT_ACTION, TARGET_STATE};
use crate::shutdown::Shutdown;

/// What the source has finished, so that it is not done again while the item that led to it
/// stays the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Episode {
    /// The lifecycle action the current target state points at.
    Lifecycle(Case),
    /// The spot interruption notice; kept across target states.
    Spot,
    /// The rebalance recommendation; kept across target states.
    Rebalance,
}

/// Which lifecycle action a target lifecycle state points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Case {
    /// `Terminated`: a termination (`Terminating:Wait`).
    Terminate,
    /// `Warmed:Terminated`: a termination from the warm pool (`Warmed:Terminating:Wait`).
    TerminateFromPool,
    /// `Warmed:*` after being in service: a return to the pool (`Warmed:Pending:Wait`).
    WarmReturn,
    /// `InService`, with launch steps: a launch (`Pending:Wait`).
    Launch,
    /// `Warmed:*` before ever being in service, with launch steps: a launch into the pool
    /// (`Warmed:Pending:Wait`).
    LaunchIntoPool,
}

impl Case {
    fn episode(self) -> Episode {
        Episode::Lifecycle(self)
    }

    fn transition(self) -> Transition {
        match self {
            Self::Terminate | Self::TerminateFromPool | Self::WarmReturn => Transition::Terminating,
            Self::Launch | Self::LaunchIntoPool => Transition::Launching,
        }
    }

    /// The destination is the warm pool.
    fn to_pool(self) -> bool {
        matches!(self, Self::WarmReturn | Self::LaunchIntoPool)
    }

    fn wait_state(self) -> &'static str {
        match self {
            Self::Terminate => TERMINATING_WAIT,
            Self::TerminateFromPool => WARMED_TERMINATING_WAIT,
            Self::WarmReturn | Self::LaunchIntoPool => WARMED_PENDING_WAIT,
            Self::Launch => PENDING_WAIT,
        }
    }

    /// True while Auto Scaling shows a state the action's wait state can still follow (the
    /// metadata flips before the group does; a launch ABANDON leaves `Pending:*` before the
    /// termination): keep looking. Anything else means no action of this case will wait.
    fn on_the_way(self, state: &str) -> bool {
        match self {
            Self::Terminate => {
                !matches!(
                    state,
                    "Terminating:Proceed" | "Terminated" | "Terminating:Retained"
                ) && !state.starts_with("Warmed:")
            }
            Self::TerminateFromPool => {
                state.starts_with("Warmed:")
                    && !matches!(
                        state,
                        "Warmed:Terminating:Proceed"
                            | "Warmed:Terminated"
                            | "Warmed:Terminating:Retained"
                    )
            }
            Self::WarmReturn => matches!(state, "InService" | "Terminating" | "Warmed:Pending"),
            Self::Launch => state == "Pending",
            Self::LaunchIntoPool => matches!(state, "Pending" | "Warmed:Pending"),
        }
    }
}

/// How long an action another process holds is left alone before this source looks again.
const BUSY_PAUSE: Duration = Duration::from_secs(30);
/// While the target state says an action is coming but the group does not show it waiting yet
/// (or cannot be asked), DescribeAutoScalingInstances is asked again after this, doubling (with
/// jitter) up to [`DESCRIBE_MAX_PAUSE`]. Auto Scaling deregisters a terminating instance from its
/// load balancers before the hooks run, and connection draining lasts 300 s by default (EC2 Auto
/// Scaling User Guide, "Amazon EC2 Auto Scaling instance lifecycle"): a fixed 2 s poll would be
/// 150 describes per leaving instance out of the account's shared Auto Scaling budget.
const DESCRIBE_FIRST_PAUSE: Duration = Duration::from_secs(2);
/// The longest such pause: also the longest this source is late to see the action waiting,
/// well within the shortest HeartbeatTimeout (30 s), since the first heartbeat goes at once.
const DESCRIBE_MAX_PAUSE: Duration = Duration::from_secs(20);

/// The metadata source of one instance.
#[derive(Debug)]
pub struct MetadataSource {
    imds: Imds,
    asg: AutoScaling,
    cfg: ImdsConfig,
    me: String,
    hooks: HookNames,
    launch: bool,
    /// What it learned so far (kept across config reloads).
    p: Progress,
    /// Errors already logged (to log each once, not every poll).
    logged: HashSet<String>,
}

/// What the metadata source learned: kept across config reloads (SIGHUP), so that a reload
/// neither repeats finished work nor costs AWS calls.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The last target state read.
    last: Option<String>,
    /// The instance was seen InService (so `Warmed:*` means a return to the warm pool).
    seen_in_service: bool,
    /// The state directory was asked whether it was in service before this process.
    asked_journal: bool,
    /// What was finished for the current target state (reset when it changes, but for spot).
    done: HashSet<Episode>,
    /// Another process holds the current action: not before this.
    busy_until: Option<Instant>,
    /// When the current target state was first read (Unix seconds).
    target_since: u64,
    /// The group is not asked again before this (see [`DESCRIBE_FIRST_PAUSE`]), and how many
    /// times in a row it was asked in vain.
    describe_after: Option<(Instant, u32)>,
    /// The spot and rebalance items as last read (a change is a new notice).
    notices: std::collections::HashMap<Episode, String>,
}

/// One check of every enabled item.
#[derive(Debug, Default)]
pub struct MetadataReport {
    /// How this instance's actions ended.
    pub handled: Vec<Outcome>,
}

impl MetadataSource {
    /// A source for this instance.
    pub fn new(
        imds: Imds,
        asg: AutoScaling,
        cfg: ImdsConfig,
        me: String,
        hooks: HookNames,
        launch: bool,
    ) -> Self {
        Self {
            imds,
            asg,
            cfg,
            me,
            hooks,
            launch,
            p: Progress::default(),
            logged: HashSet::new(),
        }
    }

    /// Carries on from what an earlier source (before a reload) learned.
    pub fn with_progress(mut self, p: Progress) -> Self {
        self.p = p;
        self
    }

    /// Polls until shutdown; returns what it learned, for the next source after a reload.
    pub async fn run(mut self, handler: &Handler, mut shutdown: Shutdown) -> Progress {
        info!(
            lifecycle = self.cfg.lifecycle,
            spot = self.cfg.spot,
            rebalance = self.cfg.rebalance,
            interval_ms = self.cfg.poll_interval.as_millis() as u64,
            "polling instance metadata"
        );
        while !shutdown.is_requested() {
            let report = self.check(handler).await;
            if report.handled.contains(&Outcome::Interrupted) {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = shutdown.requested() => break,
            }
        }
        info!("stopped polling instance metadata");
        self.p
    }

    /// Reads every enabled item once and handles what it finds.
    pub async fn check(&mut self, handler: &Handler) -> MetadataReport {
        let mut report = MetadataReport::default();
        if self.cfg.lifecycle {
            if let Some(h) = self.check_lifecycle(handler).await {
                report.handled.push(h);
            }
        }
        if self.cfg.spot {
            if let Some(h) = self.check_spot(handler).await {
                report.handled.push(h);
            }
        }
        if self.cfg.rebalance {
            if let Some(h) = self.check_rebalance(handler).await {
                report.handled.push(h);
            }
        }
        report
    }

    async fn read(&mut self, path: &str) -> Option<String> {
        match self.imds.poll(path).await {
            Ok(v) => {
                self.logged.remove(path);
                v.map(|s| s.trim().to_string())
            }
            Err(e) => {
                if self.logged.insert(path.to_string()) {
                    warn!(item = path, error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "cannot read instance metadata; will keep trying");
                }
                None
            }
        }
    }

    async fn check_lifecycle(&mut self, handler: &Handler) -> Option<Outcome> {
        let target = self.read(TARGET_STATE).await?;
        if self.p.last.as_deref() != Some(target.as_str()) {
            info!(target_state = %target, previous = self.p.last.as_deref().unwrap_or("-"), "target lifecycle state");
            self.p
                .done
                .retain(|d| matches!(d, Episode::Spot | Episode::Rebalance));
            self.p.busy_until = None;
            self.p.describe_after = None;
            self.p.target_since = crate::journal::unix_now();
            self.p.last = Some(target.clone());
        }
        let case = match target.as_str() {
            "Terminated" => Case::Terminate,
            // A termination from the warm pool: a real one (design §2.1, warm pools).
            "Warmed:Terminated" => Case::TerminateFromPool,
            s if s.starts_with("Warmed:") => {
                // In service before (noted in the state directory, across restarts): back to
                // the pool; never: a launch into the pool. The note is read once per process,
                // not every poll of a pool instance's long stay there.
                if !self.p.asked_journal {
                    self.p.asked_journal = true;
                    self.p.seen_in_service |= handler.was_in_service();
                }
                if self.p.seen_in_service {
                    Case::WarmReturn
                } else if self.launch {
                    Case::LaunchIntoPool
                } else {
                    return None;
                }
            }
            "InService" => {
                if !self.p.seen_in_service {
                    self.p.seen_in_service = true;
                    handler.note_in_service();
                }
                if !self.launch {
                    return None;
                }
                Case::Launch
            }
            _ => return None,
        };
        self.lifecycle(handler, case).await
    }

    /// Handles the lifecycle action the target state points at, once per target state. Costs
    /// no AWS call once it is done: idle, this source asks only instance metadata.
    async fn lifecycle(&mut self, handler: &Handler, case: Case) -> Option<Outcome> {
        let episode = case.episode();
        if self.p.done.contains(&episode) || self.p.busy_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let transition = case.transition();
        if let Some(hook) = self.hooks.get(&transition) {
            if case == Case::Terminate && handler.completed(&self.me, hook, &transition) {
                self.p.done.insert(episode);
                return None;
            }
        }
        // A launch another process handled since this target state began: no describe needed.
        if matches!(case, Case::Launch | Case::LaunchIntoPool)
            && handler.launched_since(self.p.target_since)
        {
            self.p.done.insert(episode);
            return None;
        }
        if self
            .p
            .describe_after
            .is_some_and(|(t, _)| Instant::now() < t)
        {
            return None;
        }
        let state = match self.asg.instance(&self.me).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                // Gone from the group (terminated) or not in one at all.
                debug!(instance_id = %self.me, "not in any Auto Scaling group");
                self.p.done.insert(episode);
                return None;
            }
            Err(e) => {
                let pause = self.describe_later();
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot read this instance's lifecycle state; will try again");
                return Some(Outcome::Failed {
                    error: e.to_string(),
                });
            }
        };
        if state.state != case.wait_state() {
            if case.on_the_way(&state.state) {
                let pause = self.describe_later();
                debug!(instance_id = %self.me, state = %state.state, retry_in_ms = pause.as_millis() as u64, "the lifecycle action is not waiting yet");
            } else {
                debug!(instance_id = %self.me, state = %state.state, "no lifecycle action waiting");
                self.p.done.insert(episode);
            }
            return None;
        }
        let (warm_pool, from_pool) = (case.to_pool(), case == Case::TerminateFromPool);
        let action = match handler.owned_hook(&state.group, &transition, None).await {
            Ok(Ok(hook)) => Action::seen_waiting(
                &self.me,
                &state.group,
                &hook,
                transition.clone(),
                warm_pool,
                from_pool,
            ),
            // Several hooks and none named: the steps run once, no hook is completed.
            Ok(Err(HookChoiceError::Several { .. })) => {
                let mut a = Action::unowned(&self.me, &state.group, transition.clone(), warm_pool);
                a.from_pool = from_pool;
                a.seen_waiting = true;
                a
            }
            // No hook (yet: one may be added while the instance waits) or no answer: asked
            // again with back-off, not every poll.
            Ok(Err(e)) => {
                let msg = e.to_string();
                if self.logged.insert(msg.clone()) {
                    error!(group = %state.group, "{msg}");
                }
                self.describe_later();
                return None;
            }
            Err(e) => {
                let msg = e.to_string();
                if self.logged.insert(msg.clone()) {
                    error!(group = %state.group, "{msg}");
                }
                self.describe_later();
                return Some(Outcome::Failed { error: msg });
            }
        };
        info!(instance_id = %self.me, group = %state.group, hook = %action.aref.hook, transition = %transition, warm_pool, "lifecycle action for this instance (instance metadata)");
        match handler.handle(&action, "imds").await {
            Ok(h) => {
                match h {
                    Outcome::Completed { .. }
                    | Outcome::AlreadyCompleted
                    | Outcome::Unowned { .. } => {
                        self.p.done.insert(episode);
                    }
                    // Another process handles it: look again later, not every poll.
                    Outcome::Busy => self.p.busy_until = Some(Instant::now() + BUSY_PAUSE),
                    _ => {}
                }
                Some(h)
            }
            Err(e) => {
                error!(error = %e, "handling this instance's lifecycle action failed; will try again");
                Some(Outcome::Failed {
                    error: e.to_string(),
                })
            }
        }
    }

    /// Puts the next DescribeAutoScalingInstances off, with back-off and jitter; the pause.
    fn describe_later(&mut self) -> Duration {
        let tries = self.p.describe_after.map_or(0, |(_, n)| n);
        let pause = crate::backoff::jitter(crate::backoff::doubling(
            DESCRIBE_FIRST_PAUSE,
            tries,
            DESCRIBE_MAX_PAUSE,
        ));
        self.p.describe_after = Some((Instant::now() + pause, tries + 1));
        pause
    }

    /// True (and the episode's "done" forgotten) when an item's content changed: a new notice.
    fn new_notice(&mut self, episode: Episode, body: &str) -> bool {
        let last = self.p.notices.insert(episode, body.to_string());
        if last.as_deref() != Some(body) {
            self.p.done.remove(&episode);
        }
        !self.p.done.contains(&episode)
    }

    async fn check_spot(&mut self, handler: &Handler) -> Option<Outcome> {
        let body = self.read(SPOT_ACTION).await?;
        if !self.new_notice(Episode::Spot, &body) {
            return None;
        }
        let notice: serde_json::Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(e) => {
                if self.logged.insert(format!("spot:{body}")) {
                    warn!(error = %e, "spot instance-action is not JSON; ignoring it");
                }
                return None;
            }
        };
        let action = notice
            .get("action")
            .and_then(|a| a.as_str())
            .unwrap_or_default()
            .to_string();
        if !matches!(action.as_str(), "terminate" | "stop") {
            if self.logged.insert(format!("spot-action:{action}")) {
                info!(action = %action, "spot instance-action is not terminate or stop; nothing to do");
            }
            return None;
        }
        let time = notice
            .get("time")
            .and_then(|t| t.as_str())
            .map(str::to_string);
        let deadline = time
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        self.spot(handler, &action, time, deadline).await
    }

    async fn check_rebalance(&mut self, handler: &Handler) -> Option<Outcome> {
        let body = self.read(REBALANCE).await?;
        if !self.new_notice(Episode::Rebalance, &body) {
            return None;
        }
        // {"noticeTime": "…"}: one recommendation from the next.
        let time = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("noticeTime")?.as_str().map(str::to_string));
        self.spot(handler, "rebalance", time, None).await
    }

    async fn spot(
        &mut self,
        handler: &Handler,
        what: &str,
        notice: Option<String>,
        deadline: Option<SystemTime>,
    ) -> Option<Outcome> {
        let episode = match what {
            "rebalance" => Episode::Rebalance,
            _ => Episode::Spot,
        };
        let group = self
            .asg
            .instance(&self.me)
            .await
            .ok()
            .flatten()
            .map(|s| s.group);
        match handler.handle_spot(what, notice, deadline, group).await {
            Ok(h) => {
                if matches!(h, Outcome::Completed { .. } | Outcome::AlreadyCompleted) {
                    self.p.done.insert(episode);
                }
                Some(h)
            }
            Err(e) => {
                error!(error = %e, "handling the spot interruption failed");
                None
            }
        }
    }
}

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
use std::time::SystemTime;

use tracing::{debug, error, info, warn};

use crate::autoscaling::{AutoScaling, HookChoiceError, HookNames};
use crate::config::ImdsConfig;
use crate::event::Transition;
use crate::handler::{Action, Handler, Outcome};
use crate::imds::{Imds, REBALANCE, SPOT_ACTION, TARGET_STATE};
use crate::shutdown::Shutdown;

/// What the source has finished, so that it is not done again while the item that led to it
/// stays the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Episode {
    /// The termination `Terminated` points at.
    Terminate,
    /// The return to the warm pool a `Warmed:*` state points at.
    Warm,
    /// The launch `InService` points at.
    Launch,
    /// The spot interruption (or rebalance recommendation); kept across target states.
    Spot,
}

/// The metadata source of one instance.
#[derive(Debug)]
pub struct MetadataSource {
    imds: Imds,
    asg: AutoScaling,
    cfg: ImdsConfig,
    me: String,
    hooks: HookNames,
    launch: bool,
    /// The last target state read.
    last: Option<String>,
    /// The instance was seen InService (so `Warmed:*` means a return to the warm pool).
    seen_in_service: bool,
    /// What was finished for the current target state (reset when it changes, but for spot).
    done: HashSet<Episode>,
    /// Errors already logged (to log each once, not every poll).
    logged: HashSet<String>,
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
            last: None,
            seen_in_service: false,
            done: HashSet::new(),
            logged: HashSet::new(),
        }
    }

    /// Polls until shutdown.
    pub async fn run(mut self, handler: &Handler, mut shutdown: Shutdown) {
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
    }

    /// Reads every enabled item once and handles what it finds.
    pub async fn check(&mut self, handler: &Handler) -> MetadataReport {
        let mut report = MetadataReport::default();
        if self.cfg.lifecycle {
            if let Some(h) = self.check_lifecycle(handler).await {
                report.handled.push(h);
            }
        }
        if self.cfg.spot && !self.done.contains(&Episode::Spot) {
            if let Some(h) = self.check_spot(handler).await {
                report.handled.push(h);
            }
        }
        if self.cfg.rebalance && !self.done.contains(&Episode::Spot) {
            if let Some(h) = self.check_rebalance(handler).await {
                report.handled.push(h);
            }
        }
        report
    }

    async fn read(&mut self, path: &str) -> Option<String> {
        match self.imds.get_opt(path).await {
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
        if self.last.as_deref() != Some(target.as_str()) {
            info!(target_state = %target, previous = self.last.as_deref().unwrap_or("-"), "target lifecycle state");
            self.done.retain(|d| *d == Episode::Spot);
            self.last = Some(target.clone());
        }
        match target.as_str() {
            "Terminated" => {
                self.lifecycle(handler, Transition::Terminating, false, Episode::Terminate)
                    .await
            }
            "Warmed:Terminated" => None,
            s if s.starts_with("Warmed:") && self.seen_in_service => {
                self.lifecycle(handler, Transition::Terminating, true, Episode::Warm)
                    .await
            }
            "InService" => {
                self.seen_in_service = true;
                if self.launch {
                    self.lifecycle(handler, Transition::Launching, false, Episode::Launch)
                        .await
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Handles the lifecycle action the target state points at, once per target state.
    async fn lifecycle(
        &mut self,
        handler: &Handler,
        transition: Transition,
        warm_pool: bool,
        episode: Episode,
    ) -> Option<Outcome> {
        if self.done.contains(&episode) {
            return None;
        }
        if let Some(hook) = self.hooks.get(&transition) {
            if handler.completed(&self.me, hook, &transition)
                && !warm_pool
                && transition == Transition::Terminating
            {
                self.done.insert(episode);
                return None;
            }
        }
        let state = match self.asg.instance(&self.me).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                // Gone from the group (terminated) or not in one at all.
                debug!(instance_id = %self.me, "not in any Auto Scaling group");
                if transition != Transition::Launching {
                    self.done.insert(episode);
                }
                return None;
            }
            Err(e) => {
                warn!(error = %e, "cannot read this instance's lifecycle state; will try again");
                return Some(Outcome::Failed {
                    error: e.to_string(),
                });
            }
        };
        let want = Action::wait_state_for(&transition, warm_pool);
        if state.state != want {
            let on_the_way = match &transition {
                Transition::Terminating if warm_pool => {
                    state.state.starts_with("Warmed:Pending") || state.state == "InService"
                }
                Transition::Terminating => {
                    state.state == "Terminating" || state.state == "InService"
                }
                Transition::Launching => false,
            };
            if !on_the_way {
                debug!(instance_id = %self.me, state = %state.state, "no lifecycle action waiting");
                if transition != Transition::Launching {
                    self.done.insert(episode);
                }
            }
            return None;
        }
        let action = match handler.owned_hook(&state.group, &transition).await {
            Ok(Ok(hook)) => {
                Action::seen_waiting(&self.me, &state.group, &hook, transition.clone(), warm_pool)
            }
            // Several hooks and none named: the steps run once, no hook is completed.
            Ok(Err(HookChoiceError::Several { .. })) => {
                let mut a = Action::unowned(&self.me, &state.group, transition.clone(), warm_pool);
                a.seen_waiting = true;
                a
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                if self.logged.insert(msg.clone()) {
                    error!(group = %state.group, "{msg}");
                }
                return None;
            }
            Err(e) => {
                let msg = e.to_string();
                if self.logged.insert(msg.clone()) {
                    error!(group = %state.group, "{msg}");
                }
                return Some(Outcome::Failed { error: msg });
            }
        };
        info!(instance_id = %self.me, group = %state.group, hook = %action.aref.hook, transition = %transition, warm_pool, "lifecycle action for this instance (instance metadata)");
        match handler.handle(&action, "imds").await {
            Ok(h) => {
                if matches!(
                    h,
                    Outcome::Completed { .. } | Outcome::AlreadyCompleted | Outcome::Unowned { .. }
                ) {
                    self.done.insert(episode);
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

    async fn check_spot(&mut self, handler: &Handler) -> Option<Outcome> {
        let body = self.read(SPOT_ACTION).await?;
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
        let deadline = notice
            .get("time")
            .and_then(|t| t.as_str())
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        self.spot(handler, &action, deadline).await
    }

    async fn check_rebalance(&mut self, handler: &Handler) -> Option<Outcome> {
        self.read(REBALANCE).await?;
        self.spot(handler, "rebalance", None).await
    }

    async fn spot(
        &mut self,
        handler: &Handler,
        what: &str,
        deadline: Option<SystemTime>,
    ) -> Option<Outcome> {
        let group = self
            .asg
            .instance(&self.me)
            .await
            .ok()
            .flatten()
            .map(|s| s.group);
        match handler.handle_spot(what, deadline, group).await {
            Ok(h) => {
                if matches!(h, Outcome::Completed { .. } | Outcome::AlreadyCompleted) {
                    self.done.insert(Episode::Spot);
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

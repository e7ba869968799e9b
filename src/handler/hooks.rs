//! Which of a group's hooks is lastcall's, and what Auto Scaling says about it (its
//! NotificationMetadata and timeouts), described once per group.

use tracing::{error, warn};

use super::{Action, Handler};
use crate::autoscaling::{choose_hook, Hook, HookChoiceError, LifecycleError};
use crate::event::Transition;

impl Handler {
    /// Which of `group`'s hooks is lastcall's for `transition` (see
    /// [`crate::autoscaling::choose_hook`]); the group's hooks are described once per group.
    /// `Err` when they cannot be described.
    pub async fn owned_hook(
        &self,
        group: &str,
        transition: &Transition,
    ) -> Result<Result<Hook, HookChoiceError>, LifecycleError> {
        let hooks = self.group_hooks(group).await?;
        let names = self.config.lifecycle.hooks();
        Ok(choose_hook(
            group,
            &hooks,
            names.get(transition),
            transition,
        ))
    }

    /// The group's hooks, described once per group (they change rarely; a describe per action
    /// would spend the account's Auto Scaling budget in a large scale-in).
    async fn group_hooks(&self, group: &str) -> Result<Vec<Hook>, LifecycleError> {
        if let Some(h) = self
            .described
            .lock()
            .ok()
            .and_then(|d| d.get(group).cloned())
        {
            return Ok(h);
        }
        let h = self.asg.hooks(group).await?;
        if let Ok(mut d) = self.described.lock() {
            d.insert(group.to_string(), h.clone());
        }
        Ok(h)
    }

    /// The action with its hook's NotificationMetadata and timeouts as Auto Scaling describes
    /// them: `{metadata}` reaches command arguments and HTTP bodies, so it is not taken from a
    /// message anyone who may send to the queue could have written.
    pub(super) async fn with_described_hook(&self, action: &Action) -> Action {
        let mut action = action.clone();
        if action.seen_waiting || !action.owned {
            return action; // the metadata source read the hook itself
        }
        let a = &action.aref;
        match self.group_hooks(&a.group).await {
            Ok(hooks) => match hooks.iter().find(|h| h.name == a.hook) {
                Some(h) => {
                    if action.metadata != h.metadata {
                        warn!(instance_id = %a.instance_id, hook = %a.hook, "the notification's NotificationMetadata differs from the hook's; using the hook's");
                    }
                    action.metadata = h.metadata.clone();
                    action.timeouts = h.timeouts;
                }
                None => {
                    warn!(group = %a.group, hook = %a.hook, "the group's hooks do not list the notification's hook (yet); {{metadata}} is taken from the notification");
                }
            },
            Err(e) => {
                warn!(error = %e, "cannot describe the hook; {{metadata}} is taken from the notification");
            }
        }
        action
    }

    /// At the daemon's start: says (as an error) when this instance's group has several hooks
    /// for a transition lastcall handles and none is named, naming them and the fix.
    pub async fn report_hook_choice(&self) {
        let Ok(Some(me)) = self.asg.instance(&self.identity.instance_id).await else {
            return;
        };
        let mut transitions = vec![Transition::Terminating];
        if !self.config.launch_steps.is_empty() {
            transitions.push(Transition::Launching);
        }
        for t in transitions {
            if let Ok(Err(e @ HookChoiceError::Several { .. })) =
                self.owned_hook(&me.group, &t).await
            {
                error!(group = %me.group, "{e}; until then a termination runs the steps and completes no hook");
            }
        }
    }
}

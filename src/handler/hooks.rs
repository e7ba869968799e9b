//! Which of a group's hooks is lastcall's, and what Auto Scaling says about it (its
//! NotificationMetadata and timeouts).
//!
//! The group's hooks are described once and kept for [`HOOKS_TTL`]: a describe per action would
//! spend the account's Auto Scaling budget in a large scale-in. Hooks change while instances run
//! (PutLifecycleHook adds, replaces and updates them at any time: a stack that adds the hook to a
//! group whose instances already run lastcall, a renamed hook, a lowered HeartbeatTimeout), so the
//! list is described again sooner when it does not explain what is seen: no hook for a transition
//! that is happening, or a notification's hook that the list lacks; at most once every
//! [`HOOKS_MIN_AGE`] each. A describe that fails keeps the last list; with none, a configured
//! hook name is still used (a missing `autoscaling:DescribeLifecycleHooks` only lowers the
//! heartbeat interval, design §4).

use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::{Action, Handler};
use crate::autoscaling::{choose_hook, Hook, HookChoiceError, LifecycleError};
use crate::event::Transition;

/// How long a described hook list is used before it is described again.
pub(super) const HOOKS_TTL: Duration = Duration::from_secs(300);
/// A list younger than this is not described again for not explaining something (a queue of
/// other hooks' notifications would otherwise cost a describe per message).
const HOOKS_MIN_AGE: Duration = Duration::from_secs(10);

/// The groups' hooks as last described, and when.
pub(super) type Described =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (Instant, Vec<Hook>)>>>;

impl Handler {
    /// Which of `group`'s hooks is lastcall's for `transition` (see
    /// [`crate::autoscaling::choose_hook`]). `seen`: the hook a notification names, when there is
    /// one: a list that does not choose it is described again (once, if old enough), as is one
    /// with no hook for the transition. `Err` when the hooks cannot be described and no hook is
    /// configured or known.
    pub async fn owned_hook(
        &self,
        group: &str,
        transition: &Transition,
        seen: Option<&str>,
    ) -> Result<Result<Hook, HookChoiceError>, LifecycleError> {
        let names = self.config.lifecycle.hooks();
        let named = names.get(transition);
        let choose = |hooks: &[Hook]| choose_hook(group, hooks, named, transition);
        let explains = |c: &Result<Hook, HookChoiceError>| match (c, seen) {
            (Err(HookChoiceError::None { .. }), _) => false,
            (Ok(h), Some(s)) => h.name == s || named.is_some(),
            (Err(HookChoiceError::Several { names, .. }), Some(s)) => names.iter().any(|n| n == s),
            _ => true,
        };
        let hooks = match self.group_hooks(group, false).await {
            Ok(h) => h,
            Err(e) => return self.by_name_without_describe(named, transition, e),
        };
        let first = choose(&hooks);
        if explains(&first) {
            return Ok(first);
        }
        match self.group_hooks(group, true).await {
            Ok(h) => Ok(choose(&h)),
            Err(_) => Ok(first),
        }
    }

    /// When the hooks cannot be described at all: the configured hook, by name, else the error.
    fn by_name_without_describe(
        &self,
        named: Option<&str>,
        transition: &Transition,
        e: LifecycleError,
    ) -> Result<Result<Hook, HookChoiceError>, LifecycleError> {
        match named {
            Some(name) => {
                warn!(error = %e, hook = name, "cannot describe the group's hooks; using the configured hook by name");
                Ok(Ok(Hook {
                    name: name.to_string(),
                    transition: Some(transition.clone()),
                    metadata: None,
                    timeouts: None,
                }))
            }
            None => Err(e),
        }
    }

    /// The group's hooks: as last described while that is younger than [`HOOKS_TTL`] (and, with
    /// `again`, younger than [`HOOKS_MIN_AGE`]), else described now. A describe that fails
    /// answers the last list, however old, when there is one.
    pub(super) async fn group_hooks(
        &self,
        group: &str,
        again: bool,
    ) -> Result<Vec<Hook>, LifecycleError> {
        let cached = self
            .described
            .lock()
            .ok()
            .and_then(|d| d.get(group).cloned());
        if let Some((at, h)) = &cached {
            let max_age = if again { HOOKS_MIN_AGE } else { HOOKS_TTL };
            if at.elapsed() < max_age {
                return Ok(h.clone());
            }
        }
        match self.asg.hooks(group).await {
            Ok(h) => {
                if let Ok(mut d) = self.described.lock() {
                    d.insert(group.to_string(), (Instant::now(), h.clone()));
                }
                Ok(h)
            }
            Err(e) => match cached {
                Some((_, h)) => {
                    warn!(error = %e, "cannot describe the group's hooks again; using the last list");
                    Ok(h)
                }
                None => Err(e),
            },
        }
    }

    /// True when the group's hooks, described again now (if the list is older than
    /// [`HOOKS_MIN_AGE`]), list `hook`; `None` when they cannot be described.
    pub(super) async fn hook_listed(&self, group: &str, hook: &str) -> Option<bool> {
        self.group_hooks(group, true)
            .await
            .ok()
            .map(|h| h.iter().any(|x| x.name == hook))
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
        let listed = |hooks: &[Hook]| hooks.iter().any(|h| h.name == a.hook);
        let hooks = match self.group_hooks(&a.group, false).await {
            Ok(h) if !listed(&h) => self.group_hooks(&a.group, true).await,
            other => other,
        };
        match hooks {
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
    /// for a transition lastcall handles and none is named, naming them and the fix, or when
    /// the configured hook is not one of the group's.
    pub async fn report_hook_choice(&self) {
        let Ok(Some(me)) = self.asg.instance(&self.identity.instance_id).await else {
            return;
        };
        let mut transitions = vec![Transition::Terminating];
        if !self.config.launch_steps.is_empty() {
            transitions.push(Transition::Launching);
        }
        let hooks = self.group_hooks(&me.group, false).await.ok();
        for t in transitions {
            match self.owned_hook(&me.group, &t, None).await {
                Ok(Err(e @ HookChoiceError::Several { .. })) => {
                    error!(group = %me.group, "{e}; until then a termination runs the steps and completes no hook");
                }
                Ok(Ok(h))
                    if hooks
                        .as_ref()
                        .is_some_and(|l| !l.iter().any(|x| x.name == h.name)) =>
                {
                    error!(group = %me.group, hook = %h.name, "the configured hook ([lifecycle] {}) is not one of the group's hooks: a typo, or a hook not created yet? Auto Scaling refuses to complete a hook it does not have", crate::autoscaling::config_key(&t));
                }
                _ => {}
            }
        }
    }
}

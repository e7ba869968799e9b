//! The Auto Scaling client: where this instance stands, the group's hooks (and which one is
//! lastcall's), heartbeats and completion. Completion retries throttling and transient errors; "No active Lifecycle Action
//! found" means the action is already over and is reported as such, not as a failure.

use std::fmt;
use std::time::Duration;

use aws_sdk_autoscaling::config::http::HttpResponse;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tracing::{info, warn};

use crate::event::Transition;

/// The state Auto Scaling holds a terminating instance in while hooks run.
pub const TERMINATING_WAIT: &str = "Terminating:Wait";
/// The state a launching instance waits in.
pub const PENDING_WAIT: &str = "Pending:Wait";
/// The state an instance waits in on its way into the warm pool (launched into it, or returned
/// to it on scale-in).
pub const WARMED_PENDING_WAIT: &str = "Warmed:Pending:Wait";
/// The state an instance of the warm pool waits in while it is terminated.
pub const WARMED_TERMINATING_WAIT: &str = "Warmed:Terminating:Wait";
/// The longest a lifecycle action can live: its `GlobalTimeout` is 100 × `HeartbeatTimeout` or
/// 48 hours, whichever is smaller (Auto Scaling API reference, `LifecycleHook.GlobalTimeout`).
pub const MAX_ACTION_LIFE: Duration = Duration::from_secs(48 * 3600);
/// The shortest a lifecycle action can live: 100 × the shortest `HeartbeatTimeout` (30 s).
pub const MIN_ACTION_LIFE: Duration = Duration::from_secs(100 * 30);
/// The longest `HeartbeatTimeout` a hook can have (7,200 s, `PutLifecycleHook`).
pub const MAX_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(7200);
/// First pause between completion attempts.
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest pause between completion attempts.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The result sent with `CompleteLifecycleAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ActionResult {
    /// Let the termination (and the other hooks) proceed.
    #[serde(rename = "CONTINUE")]
    Continue,
    /// End the remaining hooks; for a termination the instance goes away, unless the group's
    /// instance lifecycle policy retains it (`TerminateHookAbandon = retain`).
    #[serde(rename = "ABANDON")]
    Abandon,
}

impl ActionResult {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "CONTINUE",
            Self::Abandon => "ABANDON",
        }
    }
}

impl fmt::Display for ActionResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lifecycle action: the group, the hook, the instance and (when known) the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRef {
    /// Auto Scaling group.
    pub group: String,
    /// Lifecycle hook.
    pub hook: String,
    /// Instance.
    pub instance_id: String,
    /// Action token, when the notification carried one.
    pub token: Option<String>,
}

/// Where Auto Scaling says an instance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    /// Its group.
    pub group: String,
    /// Its `LifecycleState`, e.g. `Terminating:Wait`.
    pub state: String,
}

/// A hook's timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookTimeouts {
    /// `HeartbeatTimeout`.
    pub heartbeat: Duration,
    /// `GlobalTimeout`: the longest the action can live, heartbeats or not.
    pub global: Duration,
}

/// How a completion or heartbeat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Accepted.
    Done,
    /// "No active Lifecycle Action found": completed already, or expired.
    NoActiveAction,
}

/// An Auto Scaling call failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// `DescribeAutoScalingInstances` failed.
    #[error("DescribeAutoScalingInstances for {instance_id} failed: {message}")]
    DescribeInstance {
        /// The instance.
        instance_id: String,
        /// The error with its causes.
        message: String,
    },
    /// `DescribeAutoScalingGroups` failed.
    #[error("DescribeAutoScalingGroups for {group} failed: {message}")]
    DescribeGroup {
        /// The group.
        group: String,
        /// The error with its causes.
        message: String,
    },
    /// `DescribeLifecycleHooks` failed.
    #[error("DescribeLifecycleHooks for hook {hook} of group {group} failed: {message}")]
    DescribeHook {
        /// The group.
        group: String,
        /// The hook.
        hook: String,
        /// The error with its causes.
        message: String,
    },
    /// `RecordLifecycleActionHeartbeat` failed.
    #[error("RecordLifecycleActionHeartbeat for {instance_id} (hook {hook}) failed: {message}")]
    Heartbeat {
        /// The instance.
        instance_id: String,
        /// The hook.
        hook: String,
        /// The error with its causes.
        message: String,
        /// It will not get better by retrying (a permission, a validation error).
        permanent: bool,
    },
    /// `CompleteLifecycleAction` failed for good.
    #[error("CompleteLifecycleAction {result} for {instance_id} (hook {hook}, group {group}) failed: {message}")]
    Complete {
        /// The instance.
        instance_id: String,
        /// The hook.
        hook: String,
        /// The group.
        group: String,
        /// The result we tried to send.
        result: ActionResult,
        /// The error with its causes.
        message: String,
    },
}

/// How an AWS error should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The action does not exist (any more).
    NoActiveAction,
    /// Worth another try: throttling, contention, 5xx, network, timeout.
    Transient,
    /// Will not get better by retrying (validation, permission).
    Permanent,
}

/// Sorts an SDK error into [`ErrorClass`].
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorClass {
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or_default();
            let msg = e.message().unwrap_or_default();
            if msg.contains("No active Lifecycle Action found") {
                ErrorClass::NoActiveAction
            } else if matches!(
                code,
                "Throttling"
                    | "ThrottlingException"
                    | "RequestThrottled"
                    | "RequestLimitExceeded"
                    | "ResourceContention"
                    | "ServiceUnavailable"
                    | "InternalFailure"
                    | "InternalError"
            ) {
                ErrorClass::Transient
            } else {
                let status = se.raw().status().as_u16();
                if status >= 500 || status == 429 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
        }
        // Timeouts, dispatch (connection) failures and unparseable responses.
        _ => ErrorClass::Transient,
    }
}

/// The Auto Scaling API as lastcall uses it.
#[derive(Debug, Clone)]
pub struct AutoScaling {
    client: aws_sdk_autoscaling::Client,
}

impl AutoScaling {
    /// Wraps a client.
    pub fn new(client: aws_sdk_autoscaling::Client) -> Self {
        Self { client }
    }

    /// The instance's group and lifecycle state; `None` when it is in no group.
    pub async fn instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<InstanceState>, LifecycleError> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| LifecycleError::DescribeInstance {
                instance_id: instance_id.to_string(),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        Ok(out
            .auto_scaling_instances()
            .iter()
            .find(|i| i.instance_id() == Some(instance_id))
            .map(|i| InstanceState {
                group: i.auto_scaling_group_name().unwrap_or_default().to_string(),
                state: i.lifecycle_state().unwrap_or_default().to_string(),
            }))
    }

    /// The hook's timeouts; `None` when the group has no such hook.
    pub async fn hook(
        &self,
        group: &str,
        hook: &str,
    ) -> Result<Option<HookTimeouts>, LifecycleError> {
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .lifecycle_hook_names(hook)
            .send()
            .await
            .map_err(|e| LifecycleError::DescribeHook {
                group: group.to_string(),
                hook: hook.to_string(),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .find(|h| h.lifecycle_hook_name() == Some(hook))
            .map(timeouts))
    }

    /// One heartbeat.
    pub async fn heartbeat(&self, a: &ActionRef) -> Result<CallOutcome, LifecycleError> {
        let r = self
            .client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&a.group)
            .lifecycle_hook_name(&a.hook)
            .instance_id(&a.instance_id)
            .set_lifecycle_action_token(a.token.clone())
            // One attempt: the heartbeat loop retries on its own schedule, which must stay
            // well inside the hook's timeout.
            .customize()
            .config_override(
                aws_sdk_autoscaling::config::Config::builder()
                    .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1)),
            )
            .send()
            .await;
        match r {
            Ok(_) => Ok(CallOutcome::Done),
            Err(e) if classify(&e) == ErrorClass::NoActiveAction => Ok(CallOutcome::NoActiveAction),
            Err(e) => Err(LifecycleError::Heartbeat {
                instance_id: a.instance_id.clone(),
                hook: a.hook.clone(),
                permanent: classify(&e) == ErrorClass::Permanent,
                message: DisplayErrorContext(&e).to_string(),
            }),
        }
    }

    /// Completes the action, retrying transient errors with backoff until `deadline` has passed.
    pub async fn complete(
        &self,
        a: &ActionRef,
        result: ActionResult,
        deadline: Duration,
    ) -> Result<CallOutcome, LifecycleError> {
        let start = tokio::time::Instant::now();
        let mut pause = RETRY_FIRST;
        let mut attempt = 1u32;
        loop {
            let r = self
                .client
                .complete_lifecycle_action()
                .auto_scaling_group_name(&a.group)
                .lifecycle_hook_name(&a.hook)
                .instance_id(&a.instance_id)
                .set_lifecycle_action_token(a.token.clone())
                .lifecycle_action_result(result.as_str())
                .send()
                .await;
            let err = match r {
                Ok(_) => return Ok(CallOutcome::Done),
                Err(e) => e,
            };
            let class = classify(&err);
            let message = DisplayErrorContext(&err).to_string();
            match class {
                ErrorClass::NoActiveAction => {
                    info!(instance_id = %a.instance_id, hook = %a.hook, "no active lifecycle action: already completed or expired");
                    return Ok(CallOutcome::NoActiveAction);
                }
                ErrorClass::Transient if start.elapsed() + pause < deadline => {
                    warn!(instance_id = %a.instance_id, hook = %a.hook, attempt, retry_in_ms = pause.as_millis() as u64, error = %message, "CompleteLifecycleAction failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                    attempt += 1;
                }
                _ => {
                    return Err(LifecycleError::Complete {
                        instance_id: a.instance_id.clone(),
                        hook: a.hook.clone(),
                        group: a.group.clone(),
                        result,
                        message,
                    })
                }
            }
        }
    }
}

impl AutoScaling {
    /// The group's tags that propagate to its instances (the fallback for `{tag:KEY}` when
    /// instance metadata tags are off).
    pub async fn propagated_tags(
        &self,
        group: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        use aws_sdk_autoscaling::types::Filter;
        let out = self
            .client
            .describe_tags()
            .filters(
                Filter::builder()
                    .name("auto-scaling-group")
                    .values(group)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        Ok(out
            .tags()
            .iter()
            .filter(|t| t.propagate_at_launch().unwrap_or(false))
            .filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })
            .collect())
    }
}

/// One lifecycle hook of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Its name.
    pub name: String,
    /// Launching or terminating (`None`: a transition lastcall does not know).
    pub transition: Option<Transition>,
    /// Its NotificationMetadata.
    pub metadata: Option<String>,
    /// Its timeouts, when read from Auto Scaling.
    pub timeouts: Option<HookTimeouts>,
}

/// A described hook's timeouts, with Auto Scaling's defaults for what it leaves out.
fn timeouts(h: &aws_sdk_autoscaling::types::LifecycleHook) -> HookTimeouts {
    let heartbeat = Duration::from_secs(h.heartbeat_timeout().unwrap_or(3600).max(1) as u64);
    let global = h
        .global_timeout()
        .map(|g| Duration::from_secs(g.max(1) as u64))
        .unwrap_or_else(|| (heartbeat * 100).min(Duration::from_secs(172_800)));
    HookTimeouts { heartbeat, global }
}

/// What an ABANDON (lastcall's `on_failure_result`, or a hook's DefaultResult at its timeout)
/// does to a terminating instance, by the group's instance lifecycle policy (Auto Scaling,
/// November 2025: `InstanceLifecyclePolicy.RetentionTriggers.TerminateHookAbandon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbandonDoes {
    /// It is terminated (no policy, or `terminate`).
    Terminate,
    /// It stays in `Terminating:Retained` until someone acts (`retain`).
    Retain,
}

/// What `lastcall check` reads from DescribeAutoScalingGroups.
#[derive(Debug, Clone, Copy)]
pub struct GroupFacts {
    /// What ABANDON does to a terminating instance.
    pub abandon: AbandonDoes,
    /// The group's MaxSize, when it was in the answer.
    pub max_size: Option<u64>,
}

impl AutoScaling {
    /// What `lastcall check` wants to know of `group` (DescribeAutoScalingGroups): what ABANDON
    /// does to its terminating instances, and its maximum size.
    pub async fn group_facts(&self, group: &str) -> Result<GroupFacts, LifecycleError> {
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .map_err(|e| LifecycleError::DescribeGroup {
                group: group.to_string(),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        let g = out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(group));
        let retain = g
            .and_then(|g| g.instance_lifecycle_policy())
            .and_then(|p| p.retention_triggers())
            .and_then(|t| t.terminate_hook_abandon())
            .is_some_and(|a| a.as_str() == "retain");
        Ok(GroupFacts {
            abandon: if retain {
                AbandonDoes::Retain
            } else {
                AbandonDoes::Terminate
            },
            max_size: g
                .and_then(|g| g.max_size())
                .and_then(|m| u64::try_from(m).ok()),
        })
    }

    /// Every lifecycle hook of a group.
    pub async fn hooks(&self, group: &str) -> Result<Vec<Hook>, LifecycleError> {
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .send()
            .await
            .map_err(|e| LifecycleError::DescribeHook {
                group: group.to_string(),
                hook: "*".to_string(),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .filter_map(|h| {
                Some(Hook {
                    name: h.lifecycle_hook_name()?.to_string(),
                    transition: h.lifecycle_transition().and_then(Transition::parse),
                    metadata: h.notification_metadata().map(str::to_string),
                    timeouts: Some(timeouts(h)),
                })
            })
            .collect())
    }
}

/// The hooks lastcall owns, by name, per transition, as configured (`[lifecycle] hook_name` and
/// `launch_hook_name`); an unnamed one is the group's only hook for that transition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookNames {
    /// The terminating hook.
    pub terminating: Option<String>,
    /// The launching hook.
    pub launching: Option<String>,
}

impl HookNames {
    /// The configured name for `transition`.
    pub fn get(&self, transition: &Transition) -> Option<&str> {
        match transition {
            Transition::Terminating => self.terminating.as_deref(),
            Transition::Launching => self.launching.as_deref(),
        }
    }
}

/// Why no hook of a group can be lastcall's for a transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookChoiceError {
    /// The configured hook is there, but for the other transition.
    #[error("hook {name} of group {group} is not a {transition} hook")]
    WrongTransition {
        /// The group.
        group: String,
        /// The configured hook.
        name: String,
        /// The transition it should have.
        transition: Transition,
    },
    /// No hook for the transition, and none configured.
    #[error("group {group} has no {transition} lifecycle hook; there is nothing to complete (add one, or set [lifecycle] {})", config_key(transition))]
    None {
        /// The group.
        group: String,
        /// The transition.
        transition: Transition,
    },
    /// Several hooks for the transition, and none configured.
    #[error("group {group} has several {transition} hooks ({}); set [lifecycle] {} to the one lastcall completes", names.join(", "), config_key(transition))]
    Several {
        /// The group.
        group: String,
        /// The transition.
        transition: Transition,
        /// The hooks' names.
        names: Vec<String>,
    },
}

/// The config key that names lastcall's hook for `transition`.
pub fn config_key(transition: &Transition) -> &'static str {
    match transition {
        Transition::Terminating => "hook_name",
        Transition::Launching => "launch_hook_name",
    }
}

/// The hook lastcall completes for `transition` in `group`, out of the group's `hooks`: the
/// configured one (`named`), else the group's only hook for the transition. The one place this
/// is decided (the metadata source, `check` and `plan` ask here).
///
/// A configured hook that `DescribeLifecycleHooks` does not list is still used, by name: the
/// describe may lack the permission or lag behind a hook just created.
pub fn choose_hook(
    group: &str,
    hooks: &[Hook],
    named: Option<&str>,
    transition: &Transition,
) -> Result<Hook, HookChoiceError> {
    if let Some(name) = named {
        return match hooks.iter().find(|h| h.name == name) {
            Some(h) if h.transition.as_ref() == Some(transition) => Ok(h.clone()),
            Some(_) => Err(HookChoiceError::WrongTransition {
                group: group.to_string(),
                name: name.to_string(),
                transition: transition.clone(),
            }),
            None => Ok(Hook {
                name: name.to_string(),
                transition: Some(transition.clone()),
                metadata: None,
                timeouts: None,
            }),
        };
    }
    let mine: Vec<&Hook> = hooks
        .iter()
        .filter(|h| h.transition.as_ref() == Some(transition))
        .collect();
    match mine.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(HookChoiceError::None {
            group: group.to_string(),
            transition: transition.clone(),
        }),
        many => Err(HookChoiceError::Several {
            group: group.to_string(),
            transition: transition.clone(),
            names: many.iter().map(|h| h.name.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, t: Transition) -> Hook {
        Hook {
            name: name.into(),
            transition: Some(t),
            metadata: None,
            timeouts: None,
        }
    }

    #[test]
    fn the_configured_hook_or_the_only_one_is_chosen() {
        let hooks = [
            hook("drain", Transition::Terminating),
            hook("boot", Transition::Launching),
        ];
        let t = Transition::Terminating;
        assert_eq!(
            choose_hook("g", &hooks, None, &t).map(|h| h.name),
            Ok("drain".into())
        );
        assert_eq!(
            choose_hook("g", &hooks, Some("drain"), &t).map(|h| h.name),
            Ok("drain".into())
        );
        assert!(matches!(
            choose_hook("g", &hooks, Some("boot"), &t),
            Err(HookChoiceError::WrongTransition { .. })
        ));
        // Not listed (no permission, or lag): used by name.
        assert_eq!(
            choose_hook("g", &hooks, Some("new"), &t).map(|h| h.name),
            Ok("new".into())
        );
        assert!(matches!(
            choose_hook("g", &hooks[1..], None, &t),
            Err(HookChoiceError::None { .. })
        ));
        let two = [hooks[0].clone(), hook("other", Transition::Terminating)];
        let e = choose_hook("g", &two, None, &t).unwrap_err();
        assert!(e.to_string().contains("drain, other"), "{e}");
    }
}

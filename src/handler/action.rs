//! The lifecycle action to handle, and the placeholder values it gives the steps.
//!
//! Every [`Action`] is built here, by [`Action::new`]: from a notification, from a journal
//! record being resumed, from what instance metadata and Auto Scaling show (the metadata
//! source), or as a synthetic one (`plan`, `simulate`, `check`).

use std::time::SystemTime;

use tracing::warn;

use crate::autoscaling::{
    ActionRef, AutoScaling, Hook, HookTimeouts, PENDING_WAIT, TERMINATING_WAIT,
    WARMED_PENDING_WAIT, WARMED_TERMINATING_WAIT,
};
use crate::config::Config;
use crate::event::{LifecycleEvent, Transition};
use crate::imds::{Identity, Imds};
use crate::journal::Record;
use crate::template::Context;

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
    /// A termination of an instance in the warm pool (it waits in `Warmed:Terminating:Wait`): a
    /// real termination, monitoring included.
    pub from_pool: bool,
    /// When Auto Scaling started it, if known.
    pub started: Option<SystemTime>,
    /// The source has just seen the group hold the instance in [`Action::wait_state`], so the
    /// handler need not ask again.
    pub seen_waiting: bool,
    /// The hook's timeouts, when the source already read them (else the handler asks).
    pub timeouts: Option<HookTimeouts>,
    /// The hook is lastcall's to heartbeat and complete. False when the group has several hooks
    /// for the transition and none is named (design §2.1): the steps run once and no hook is
    /// completed.
    pub owned: bool,
}

impl Action {
    /// The one constructor: an action of `instance_id` in `group` held by `hook`, nothing
    /// known yet about when it started, whether it is waiting, or the hook's timeouts.
    pub fn new(
        instance_id: &str,
        group: &str,
        hook: &str,
        transition: Transition,
        warm_pool: bool,
    ) -> Self {
        Self {
            aref: ActionRef {
                group: group.to_string(),
                hook: hook.to_string(),
                instance_id: instance_id.to_string(),
                token: None,
            },
            transition,
            metadata: None,
            warm_pool,
            from_pool: false,
            started: None,
            seen_waiting: false,
            timeouts: None,
            owned: true,
        }
    }

    /// The action a notification announces (token, metadata, time and destination included).
    pub fn from_event(ev: &LifecycleEvent) -> Self {
        let mut a = Self::new(
            &ev.instance_id,
            &ev.group,
            &ev.hook_name,
            ev.transition.clone(),
            ev.to_warm_pool(),
        );
        a.aref.token = ev.token.clone();
        a.metadata = ev.metadata.clone();
        a.started = ev.time;
        a.from_pool = ev.transition == Transition::Terminating
            && !a.warm_pool
            && ev.origin.as_deref() == Some("WarmPool");
        a
    }

    /// The action an unfinished journal record belongs to; `None` for a record that is not a
    /// lifecycle action (a spot interruption, resumed only if instance metadata still shows it).
    pub fn from_record(rec: &Record) -> Option<Self> {
        let transition = Transition::parse(&rec.transition)?;
        let mut a = Self::new(
            &rec.instance_id,
            &rec.group,
            &rec.hook,
            transition,
            rec.warm_pool,
        );
        a.aref.token = rec.token.clone();
        a.metadata = rec.metadata.clone();
        a.from_pool = rec.from_pool;
        Some(a)
    }

    /// The action the metadata source found: Auto Scaling has just shown the instance waiting
    /// in `group`, and `hook` (with its metadata and timeouts, when described) is ours.
    pub fn seen_waiting(
        instance_id: &str,
        group: &str,
        hook: &Hook,
        transition: Transition,
        warm_pool: bool,
        from_pool: bool,
    ) -> Self {
        let mut a = Self::new(instance_id, group, &hook.name, transition, warm_pool);
        a.from_pool = from_pool;
        a.metadata = hook.metadata.clone();
        a.timeouts = hook.timeouts;
        a.seen_waiting = true;
        a
    }

    /// This instance's action in `group` when it is not known which of the group's hooks is
    /// lastcall's (several, none named): the steps run, nothing is completed.
    pub fn unowned(
        instance_id: &str,
        group: &str,
        transition: Transition,
        warm_pool: bool,
    ) -> Self {
        let mut a = Self::new(instance_id, group, "", transition, warm_pool);
        a.owned = false;
        a
    }

    /// The group state Auto Scaling holds the instance in while this action waits.
    pub fn wait_state(&self) -> &'static str {
        match (&self.transition, self.warm_pool, self.from_pool) {
            (_, true, _) => WARMED_PENDING_WAIT,
            (Transition::Terminating, false, true) => WARMED_TERMINATING_WAIT,
            (Transition::Terminating, false, false) => TERMINATING_WAIT,
            (Transition::Launching, false, _) => PENDING_WAIT,
        }
    }

    /// Launches and warm-pool returns can happen to the same instance again.
    pub fn repeatable(&self) -> bool {
        self.warm_pool || self.transition == Transition::Launching
    }

    /// What handling it is called in logs and summaries.
    pub fn what(&self) -> &'static str {
        match (&self.transition, self.warm_pool) {
            (Transition::Terminating, false) => "termination",
            (Transition::Terminating, true) => "warm-pool return",
            (Transition::Launching, _) => "launch",
        }
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
    let hostname = match crate::imds::os_hostname() {
        Some(now) if now != id.hostname => {
            warn!(at_start = %id.hostname, now = %now, "the hostname changed since lastcall started; {{hostname}} is the new one");
            now
        }
        _ => id.hostname.clone(),
    };
    for (k, v) in [
        ("instance_id", &id.instance_id),
        ("hostname", &hostname),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hostname_is_read_when_the_action_is_handled() {
        // Before: the hostname read at start was used, so a hostname set later by user-data
        // made the Zabbix step look up the old name, find nothing and report success.
        let config = Config::from_str("[imds]\nlifecycle = true", std::path::Path::new("t.toml"))
            .expect("config")
            .config;
        let identity = Identity {
            instance_id: "i-0123456789abcdef0".into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            local_ipv4: "10.0.0.1".into(),
            local_hostname: "ip-10-0-0-1.ec2.internal".into(),
            hostname: "name-at-start-that-is-not-this-hosts".into(),
        };
        let action = Action::new(
            &identity.instance_id,
            "g",
            "h",
            Transition::Terminating,
            false,
        );
        let ctx = context(&config, &identity, &Imds::new(), None, &action).await;
        let now = crate::imds::os_hostname().expect("this machine has a hostname");
        assert_eq!(ctx.values.get("hostname"), Some(&now));
    }
}

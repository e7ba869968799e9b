//! `lastcall check`: validate the config (`--offline`: only that), then a list of preflight
//! checks, each a small function that reaches one thing without changing anything and returns
//! its report line.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::autoscaling::{
    choose_hook, config_key, AbandonDoes, ActionRef, ActionResult, AutoScaling, CallOutcome, Hook,
    HookNames,
};
use crate::cli::{Cli, Exit};
use crate::config::{Config, Heartbeat, SqsConfig, Step};
use crate::event::Transition;
use crate::handler::{context, Action};
use crate::imds::{Identity, Imds, TARGET_STATE};
use crate::steps::{StepEnv, StepKind};
use crate::template::Context;

/// How long `check` gives each service.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// `TimeoutStopSec` of the shipped daemon unit (`deploy/systemd/lastcall.service`).
pub const DAEMON_TIMEOUT_STOP: Duration = Duration::from_secs(15 * 60);
/// A dead-letter `maxReceiveCount` below this is warned about for a shared queue.
const LOW_MAX_RECEIVE_COUNT: u64 = 100;
/// A dead-letter `maxReceiveCount` below this many times the group's MaxSize is warned about:
/// with all of N = 100 instances leaving at once, a message was received up to 110 times
/// (bench/RESULTS.md, section 5).
const MASS_DEPARTURE_RECEIVES: u64 = 2;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Warn,
}

/// One line of the report: `[ ok ] what: detail`.
#[derive(Debug)]
struct Line {
    status: Status,
    what: String,
    detail: String,
}

impl Line {
    fn new(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: if ok { Status::Ok } else { Status::Fail },
            what: what.into(),
            detail: detail.into(),
        }
    }

    fn print(&self) {
        match self.status {
            Status::Ok => println!("  [ ok ] {}: {}", self.what, self.detail),
            Status::Fail => println!("  [FAIL] {}: {}", self.what, self.detail),
            Status::Warn => println!("  [warn] {}", self.detail),
        }
    }
}

/// `check --offline`: the config only.
pub fn offline(cli: &Cli) -> Exit {
    let loaded = match super::load(cli) {
        Ok(l) => l,
        Err(code) => return code,
    };
    for w in &loaded.warnings {
        println!("{w}");
    }
    print_summary(&loaded.config);
    Exit::Ok
}

/// `check`: the config, then everything it needs that can be reached read-only.
pub async fn online(cli: &Cli) -> Exit {
    let config = match super::load(cli) {
        Ok(l) => l.config,
        Err(code) => return code,
    };
    print_summary(&config);
    let mut lines = Vec::new();
    let imds = Imds::new();
    let identity = match imds.identity().await {
        Ok(id) => {
            lines.push(Line::new(
                true,
                "instance metadata (IMDSv2)",
                format!(
                    "{} in {} ({})",
                    id.instance_id, id.availability_zone, id.hostname
                ),
            ));
            id
        }
        Err(e) => {
            Line::new(false, "instance metadata (IMDSv2)", e.to_string()).print();
            return Exit::Failure;
        }
    };
    let sdk = crate::aws::load(&identity.region).await;
    let asg = AutoScaling::new(crate::aws::autoscaling(&sdk));
    let (line, group) = group(&asg, &identity).await;
    lines.push(line);
    if let Some(ic) = config.imds.as_ref().filter(|i| i.lifecycle) {
        lines.push(target_state(&imds, ic.poll_interval).await);
    }
    if let Some(group) = &group {
        let hooks = config.lifecycle.hooks();
        let beat = config.lifecycle.heartbeat;
        let owned = |t| owned_hook(&asg, &hooks, &identity, group, t, beat);
        lines.extend(owned(Transition::Terminating).await);
        if !config.launch_steps.is_empty() {
            lines.extend(owned(Transition::Launching).await);
        }
    }
    let mut max_size = None;
    if let Some(group) = &group {
        let (facts, max) = group_facts(&asg, &config, group).await;
        lines.extend(facts);
        max_size = max;
    }
    if let (Some(group), Some(hook)) = (&group, &config.lifecycle.hook_name) {
        lines.push(configured_hook(&asg, group, hook).await);
    }
    if let Some(s) = &config.sqs {
        lines.extend(queue(&sdk, s, max_size).await);
    }
    let action = Action::new(
        &identity.instance_id,
        group.as_deref().unwrap_or_default(),
        config.lifecycle.hook_name.as_deref().unwrap_or_default(),
        Transition::Terminating,
        false,
    );
    let ctx = context(&config, &identity, &imds, Some(&asg), &action).await;
    for step in config.steps.iter().chain(&config.launch_steps) {
        lines.extend(step_service(step, &ctx).await);
    }
    let mut failed = false;
    for l in &lines {
        l.print();
        failed |= l.status == Status::Fail;
    }
    if failed {
        Exit::Failure
    } else {
        Exit::Ok
    }
}

fn print_summary(c: &Config) {
    println!("{}: valid", c.path.display());
    if let Some(s) = &c.sqs {
        println!(
            "  source sqs: {} (wait {}, visibility {}, stale after {})",
            s.queue_url,
            humantime::format_duration(s.wait_time),
            humantime::format_duration(s.visibility_timeout),
            humantime::format_duration(s.stale_after)
        );
    }
    println!(
        "  lifecycle: hook {}, launch hook {}, heartbeat {:?}, on failure {}, verify {}, state in {}",
        c.lifecycle
            .hook_name
            .as_deref()
            .unwrap_or("(the group's only terminating hook)"),
        c.lifecycle
            .launch_hook_name
            .as_deref()
            .unwrap_or("(the group's only launching hook)"),
        c.lifecycle.heartbeat,
        c.lifecycle.on_failure_result,
        c.lifecycle.verify,
        c.lifecycle.state_dir.display()
    );
    for s in &c.steps {
        println!(
            "  step {} {:?}: {} (timeout {}, on failure {:?})",
            s.index,
            s.name,
            s.kind.kind_name(),
            humantime::format_duration(s.timeout),
            s.on_failure
        );
    }
    if let Some(w) = &c.sweep {
        let mut parts = Vec::new();
        if let Some(svc) = &w.mackerel_service {
            parts.push(match &w.mackerel_role {
                Some(r) => format!("Mackerel service {svc} role {r}"),
                None => format!("Mackerel service {svc}"),
            });
        }
        if let Some(g) = &w.zabbix_group {
            parts.push(format!(
                "Zabbix group {g:?} (instance id from {:?})",
                w.zabbix_instance_id
            ));
        }
        println!(
            "  sweep: {}; min_age {}, max_delete {}",
            parts.join(", "),
            humantime::format_duration(w.min_age),
            w.max_delete
        );
    }
    for (what, steps) in [("steps", &c.steps), ("launch steps", &c.launch_steps)] {
        let total = crate::pipeline::total_timeout(steps);
        if total > DAEMON_TIMEOUT_STOP {
            println!(
                "  [warn] the {what}' timeouts add up to {}, more than the daemon unit's TimeoutStopSec ({}): a stop or restart of lastcall during an action (a package upgrade, a reboot) can kill it before its steps end; raise TimeoutStopSec with a drop-in (systemctl edit lastcall)",
                humantime::format_duration(total),
                humantime::format_duration(DAEMON_TIMEOUT_STOP)
            );
        }
    }
}

/// This instance's group and state (`DescribeAutoScalingInstances`).
async fn group(asg: &AutoScaling, identity: &Identity) -> (Line, Option<String>) {
    const WHAT: &str = "Auto Scaling (DescribeAutoScalingInstances)";
    match asg.instance(&identity.instance_id).await {
        Ok(Some(s)) => (
            Line::new(true, WHAT, format!("group {}, state {}", s.group, s.state)),
            Some(s.group),
        ),
        Ok(None) => (
            Line::new(false, WHAT, "this instance is in no Auto Scaling group"),
            None,
        ),
        Err(e) => (Line::new(false, WHAT, e.to_string()), None),
    }
}

/// The target lifecycle state item the metadata source polls.
async fn target_state(imds: &Imds, every: Duration) -> Line {
    const WHAT: &str = "source imds: target-lifecycle-state";
    match imds.poll(TARGET_STATE).await {
        Ok(Some(v)) => Line::new(
            true,
            WHAT,
            format!("{v} (polled every {})", humantime::format_duration(every)),
        ),
        Ok(None) => Line::new(
            true,
            WHAT,
            "not recorded yet (404): it appears after the instance's first lifecycle transition",
        ),
        Err(e) => Line::new(false, WHAT, DisplayErrorContext(&e).to_string()),
    }
}

/// Which hook of `transition` lastcall would complete, and whether the heartbeat it needs is
/// allowed. Several and none named, none, or a named one the group does not have: a failure
/// that says what to set.
async fn owned_hook(
    asg: &AutoScaling,
    names: &HookNames,
    identity: &Identity,
    group: &str,
    transition: Transition,
    beat: Heartbeat,
) -> Vec<Line> {
    let what = match transition {
        Transition::Terminating => "terminating hook (DescribeLifecycleHooks)",
        Transition::Launching => "launching hook for [[launch_step]] (DescribeLifecycleHooks)",
    };
    let hooks = match asg.hooks(group).await {
        Ok(h) => h,
        Err(e) => return vec![Line::new(false, what, e.to_string())],
    };
    let named = names.get(&transition);
    let listed = |h: &Hook| hooks.iter().any(|x| x.name == h.name);
    let hook = match choose_hook(group, &hooks, named, &transition) {
        // A configured hook the group does not list is used by name at run time (the describe
        // may lag); here, where nothing is waiting, it is a mistake to report.
        Ok(h) if !listed(&h) => {
            let names: Vec<&str> = hooks
                .iter()
                .filter(|h| h.transition.as_ref() == Some(&transition))
                .map(|h| h.name.as_str())
                .collect();
            return vec![Line::new(
                false,
                what,
                format!(
                    "group {group} has no {transition} hook named {} (it has: {}); fix [lifecycle] {}",
                    h.name,
                    names.join(", "),
                    config_key(&transition)
                ),
            )];
        }
        Ok(h) => h,
        Err(e) => return vec![Line::new(false, what, e.to_string())],
    };
    let mut lines = vec![
        Line::new(true, what, format!("{} will be completed", hook.name)),
        heartbeat_permission(asg, identity, group, &hook.name).await,
    ];
    lines.extend(heartbeat_interval(beat, &hook));
    lines
}

/// A fixed `heartbeat` interval that is not shorter than the hook's HeartbeatTimeout lets the
/// action expire between two heartbeats (F21).
fn heartbeat_interval(beat: Heartbeat, hook: &Hook) -> Option<Line> {
    let (Heartbeat::Every(every), Some(t)) = (beat, hook.timeouts) else {
        return None;
    };
    (every >= t.heartbeat).then(|| {
        Line::new(
            false,
            "[lifecycle] heartbeat",
            format!(
                "every {}s, but hook {}'s HeartbeatTimeout is {}s: the action would expire between heartbeats; set heartbeat = \"auto\" (half the timeout) or shorter than {}s",
                every.as_secs(),
                hook.name,
                t.heartbeat.as_secs(),
                t.heartbeat.as_secs()
            ),
        )
    })
}

/// Whether `RecordLifecycleActionHeartbeat` is allowed. A heartbeat for an action that does not
/// exist is refused with "No active Lifecycle Action found" when the call is allowed, and
/// AccessDenied when not; for an action that does exist it only extends it. Either way nothing
/// changes.
async fn heartbeat_permission(
    asg: &AutoScaling,
    identity: &Identity,
    group: &str,
    hook: &str,
) -> Line {
    const WHAT: &str = "permission autoscaling:RecordLifecycleActionHeartbeat";
    let a = ActionRef {
        group: group.to_string(),
        hook: hook.to_string(),
        instance_id: identity.instance_id.clone(),
        token: None,
    };
    match asg.heartbeat(&a).await {
        Ok(CallOutcome::Done | CallOutcome::NoActiveAction) => Line::new(true, WHAT, "allowed"),
        Err(e) => Line::new(false, WHAT, e.to_string()),
    }
}

/// What ABANDON does in this group (its instance lifecycle policy), and a warning when lastcall
/// would send it on a failed step and the instance would then be retained.
async fn group_facts(asg: &AutoScaling, config: &Config, group: &str) -> (Vec<Line>, Option<u64>) {
    const WHAT: &str = "instance lifecycle policy (DescribeAutoScalingGroups)";
    let facts = match asg.group_facts(group).await {
        Ok(f) => f,
        Err(e) => return (vec![Line::new(false, WHAT, e.to_string())], None),
    };
    let lines = match facts.abandon {
        AbandonDoes::Terminate => vec![Line::new(
            true,
            WHAT,
            "ABANDON (on_failure_result, or a hook's DefaultResult at its timeout) terminates the instance",
        )],
        AbandonDoes::Retain => {
            let mut v = vec![Line::new(
                true,
                WHAT,
                "TerminateHookAbandon = retain: ABANDON (on_failure_result, or a hook's DefaultResult at its timeout) keeps the instance in Terminating:Retained until someone acts",
            )];
            if config.lifecycle.on_failure_result == ActionResult::Abandon {
                v.push(Line {
                    status: Status::Warn,
                    what: String::new(),
                    detail: "on_failure_result = \"ABANDON\": an instance whose step failed stays in Terminating:Retained (and keeps costing) until someone terminates it".into(),
                });
            }
            v
        }
    };
    (lines, facts.max_size)
}

/// The configured hook and its timeouts.
async fn configured_hook(asg: &AutoScaling, group: &str, hook: &str) -> Line {
    const WHAT: &str = "lifecycle hook (DescribeLifecycleHooks)";
    match asg.hook(group, hook).await {
        Ok(Some(t)) => Line::new(
            true,
            WHAT,
            format!(
                "{hook}: heartbeat timeout {}s, global timeout {}s",
                t.heartbeat.as_secs(),
                t.global.as_secs()
            ),
        ),
        Ok(None) => Line::new(
            false,
            WHAT,
            format!("group {group} has no hook named {hook}"),
        ),
        Err(e) => Line::new(false, WHAT, e.to_string()),
    }
}

/// The queue, and whether its dead-letter redrive suits a shared queue for a group of at most
/// `max_size` instances.
async fn queue(sdk: &aws_config::SdkConfig, s: &SqsConfig, max_size: Option<u64>) -> Vec<Line> {
    const WHAT: &str = "queue (GetQueueAttributes)";
    let client = crate::aws::sqs(sdk, &s.queue_url, s.wait_time);
    let out = match client
        .get_queue_attributes()
        .queue_url(&s.queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => return vec![Line::new(false, WHAT, DisplayErrorContext(&e).to_string())],
    };
    let attrs = out.attributes.unwrap_or_default();
    let n = attrs
        .get(&QueueAttributeName::ApproximateNumberOfMessages)
        .cloned()
        .unwrap_or_default();
    let mut lines = vec![Line::new(
        true,
        WHAT,
        format!("{} reachable, about {n} message(s)", s.queue_url),
    )];
    let max = attrs
        .get(&QueueAttributeName::RedrivePolicy)
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .and_then(|v| {
            v.get("maxReceiveCount")
                .and_then(|m| m.as_u64().or_else(|| m.as_str()?.parse().ok()))
        });
    if let Some(detail) = max.and_then(|m| low_max_receive_count(m, max_size)) {
        lines.push(Line {
            status: Status::Warn,
            what: String::new(),
            detail,
        });
    }
    lines
}

/// Why a dead-letter `maxReceiveCount` of `max` is too low for a shared queue of a group of at
/// most `max_size` instances, if it is.
fn low_max_receive_count(max: u64, max_size: Option<u64>) -> Option<String> {
    let for_group = max_size.map(|n| (n, n.saturating_mul(MASS_DEPARTURE_RECEIVES)));
    let enough = for_group.map_or(0, |(_, f)| f).max(LOW_MAX_RECEIVE_COUNT);
    if max >= enough {
        return None;
    }
    Some(match for_group {
        Some((n, f)) if f > LOW_MAX_RECEIVE_COUNT => format!(
            "the queue's dead-letter maxReceiveCount is {max} and the group can have {n} instances: when many leave at once (an instance refresh), each message passes through about as many wrong instances as are leaving, so a count below {enough} ({MASS_DEPARTURE_RECEIVES} x MaxSize) can move a live termination's message to the dead-letter queue before its owner sees it (the maximum is 1000; for groups of over {} instances, use no redrive policy)",
            1000 / MASS_DEPARTURE_RECEIVES
        ),
        _ => format!("the queue's dead-letter maxReceiveCount is {max}: with a shared queue every instance receives every message, so a low count moves messages to the dead-letter queue before their owner sees them (use 1000 or more)"),
    })
}

/// What a step's service says, for the kinds that talk to one.
async fn step_service(step: &Step, ctx: &Context) -> Option<Line> {
    let env = StepEnv {
        name: "check",
        ctx,
        resumed: false,
        deadline: tokio::time::Instant::now() + CHECK_TIMEOUT,
    };
    let r = match &step.kind {
        StepKind::Zabbix(z) => z.check(&env).await,
        StepKind::Mackerel(m) => m.check(&env).await,
        StepKind::Fluentd(f) => f.check(ctx).await,
        StepKind::Ecs(e) => e.check(&env).await,
        StepKind::Nomad(n) => n.check(&env).await,
        StepKind::Command(c) => c.check().await?,
        _ => return None,
    };
    let what = format!(
        "step {} {:?} ({})",
        step.index,
        step.name,
        step.kind.kind_name()
    );
    Some(match r {
        Ok(detail) => Line::new(true, what, detail),
        Err(e) => Line::new(false, what, e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::low_max_receive_count;

    #[test]
    fn a_dead_letter_count_is_weighed_against_the_groups_max_size() {
        // Enough: at least 100, and at least twice the group's MaxSize.
        assert_eq!(low_max_receive_count(1000, Some(100)), None);
        assert_eq!(low_max_receive_count(200, Some(100)), None);
        assert_eq!(low_max_receive_count(100, Some(20)), None);
        assert_eq!(low_max_receive_count(100, None), None);
        // Too low for the group.
        let w = low_max_receive_count(150, Some(100)).expect("a warning");
        assert!(
            w.contains("can have 100 instances") && w.contains("below 200"),
            "{w}"
        );
        // Beyond what a redrive policy allows: say so.
        let w = low_max_receive_count(1000, Some(800)).expect("a warning");
        assert!(
            w.contains("below 1600") && w.contains("over 500 instances, use no redrive policy"),
            "{w}"
        );
        // Too low for any shared queue, whatever the size.
        for size in [None, Some(3), Some(50)] {
            let w = low_max_receive_count(10, size).expect("a warning");
            assert!(
                w.contains("maxReceiveCount is 10: with a shared queue"),
                "{w}"
            );
        }
    }
}

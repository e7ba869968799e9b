//! The sections `[sqs]`, `[imds]` and `[lifecycle]`: their types, defaults and parsers.

use std::path::PathBuf;
use std::time::Duration;

use super::fields::Fields;
use crate::autoscaling::{ActionResult, MAX_ACTION_LIFE, MAX_HEARTBEAT_TIMEOUT, MIN_ACTION_LIFE};

/// Where the journal and locks live unless `[lifecycle] state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lastcall";
/// SQS long-poll wait (the API's maximum).
pub const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(20);
/// How long a received message stays invisible to the other instances.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The longest a lifecycle action can stay alive (the Auto Scaling global timeout cap, 48 h).
pub const DEFAULT_STALE_AFTER: Duration = MAX_ACTION_LIFE;
/// Default `[sqs] step_aside`.
pub const DEFAULT_STEP_ASIDE: Duration = Duration::from_secs(30);
/// How often instance metadata is polled.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// `[imds]`: sources that read this instance's own metadata, at no AWS cost while idle.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Poll `autoscaling/target-lifecycle-state` and handle lifecycle actions by instance id.
    pub lifecycle: bool,
    /// Poll `spot/instance-action` and run the `on_spot` steps before the interruption.
    pub spot: bool,
    /// Treat a rebalance recommendation like a spot interruption notice.
    pub rebalance: bool,
    /// How often the items are read.
    pub poll_interval: Duration,
}

/// `[sqs]`.
#[derive(Debug, Clone)]
pub struct SqsConfig {
    /// The queue every instance of the group long-polls.
    pub queue_url: String,
    /// Long-poll wait per receive (0–20 s).
    pub wait_time: Duration,
    /// Visibility timeout asked for on receive, and renewed while a pipeline runs.
    pub visibility_timeout: Duration,
    /// Messages older than this are deleted unseen.
    pub stale_after: Duration,
    /// How long an instance that is staying (instance metadata says so) stays out of the
    /// queue's way after receiving others' messages; zero never.
    pub step_aside: Duration,
}

/// `[lifecycle]`.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// The terminating hook lastcall completes (unset: the group's only terminating hook).
    pub hook_name: Option<String>,
    /// The launching hook lastcall completes for `[[launch_step]]` (unset: the group's only
    /// launching hook).
    pub launch_hook_name: Option<String>,
    /// Heartbeat policy while steps run.
    pub heartbeat: Heartbeat,
    /// Result sent when a step failed.
    pub on_failure_result: ActionResult,
    /// Check with `DescribeAutoScalingInstances` that this instance really is in `Terminating:Wait`.
    pub verify: bool,
    /// Journal and locks.
    pub state_dir: PathBuf,
}

impl LifecycleConfig {
    /// The hooks lastcall owns, by name.
    pub fn hooks(&self) -> crate::autoscaling::HookNames {
        crate::autoscaling::HookNames {
            terminating: self.hook_name.clone(),
            launching: self.launch_hook_name.clone(),
        }
    }
}

/// `[lifecycle] heartbeat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Half the hook's `HeartbeatTimeout`, read with `DescribeLifecycleHooks`.
    Auto,
    /// A fixed interval.
    Every(Duration),
    /// No heartbeats.
    Off,
}

pub(super) fn parse_sqs(f: &mut Fields) -> Option<SqsConfig> {
    let queue_url: Option<String> = f.req("queue_url");
    if let Some(url) = &queue_url {
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.matches('/').count() < 4
        {
            f.problem(
                "queue_url",
                "must be a queue URL like https://sqs.REGION.amazonaws.com/ACCOUNT/NAME",
            );
        }
    }
    let wait_time = f.duration("wait_time").unwrap_or(DEFAULT_WAIT_TIME);
    if wait_time > Duration::from_secs(20) || wait_time.subsec_nanos() != 0 {
        f.problem(
            "wait_time",
            "must be whole seconds from 0s to 20s (the SQS long-poll limit)",
        );
    }
    let visibility_timeout = f
        .duration("visibility_timeout")
        .unwrap_or(DEFAULT_VISIBILITY_TIMEOUT);
    if visibility_timeout < Duration::from_secs(1)
        || visibility_timeout > Duration::from_secs(12 * 3600)
        || visibility_timeout.subsec_nanos() != 0
    {
        f.problem(
            "visibility_timeout",
            "must be whole seconds from 1s to 12h (the SQS limits)",
        );
    }
    let stale_after = f.duration("stale_after").unwrap_or(DEFAULT_STALE_AFTER);
    if stale_after < MIN_ACTION_LIFE {
        // A notification's age counts from the start of its action: a shorter stale_after
        // deletes this instance's own message while its action is still alive.
        f.problem(
            "stale_after",
            "must be at least 50m: a lifecycle action lives at least 100 × the shortest HeartbeatTimeout (30 s), and a message younger than its action's life may still be this instance's to handle; the default, 48h, is right for every hook",
        );
    } else if stale_after > DEFAULT_STALE_AFTER {
        f.warn(
            "stale_after",
            "is longer than 48h, the longest a lifecycle action can live; older messages are dead anyway",
        );
    }
    let step_aside = f.duration("step_aside").unwrap_or(DEFAULT_STEP_ASIDE);
    if step_aside > Duration::from_secs(3600) {
        f.problem(
            "step_aside",
            "must be from 0s (never step aside) to 1h; the default is 30s",
        );
    }
    Some(SqsConfig {
        queue_url: queue_url?,
        wait_time,
        visibility_timeout,
        stale_after,
        step_aside,
    })
}

pub(super) fn parse_imds(f: &mut Fields) -> ImdsConfig {
    let lifecycle = f.opt("lifecycle").unwrap_or(true);
    let spot = f.opt("spot").unwrap_or(false);
    let rebalance = f.opt("rebalance").unwrap_or(false);
    let poll_interval = f.duration("poll_interval").unwrap_or(DEFAULT_POLL_INTERVAL);
    if poll_interval < Duration::from_millis(100) || poll_interval > Duration::from_secs(60) {
        f.problem("poll_interval", "must be from 100ms to 60s");
    }
    if !(lifecycle || spot || rebalance) {
        f.warn(
            "lifecycle",
            "[imds] enables nothing: set lifecycle, spot or rebalance to true, or remove the section",
        );
    }
    ImdsConfig {
        lifecycle,
        spot,
        rebalance,
        poll_interval,
    }
}

pub(super) fn parse_lifecycle(f: &mut Fields) -> LifecycleConfig {
    let mut hook = |key: &str| -> Option<String> {
        let h: Option<String> = f.opt(key);
        if h.as_deref()
            .is_some_and(|h| !crate::event::valid_hook_name(h))
        {
            f.problem(
                key,
                "must be 1–255 characters of A–Z, a–z, 0–9, '-', '_' and '/'",
            );
        }
        h
    };
    let hook_name = hook("hook_name");
    let launch_hook_name = hook("launch_hook_name");
    if hook_name.is_some() && hook_name == launch_hook_name {
        f.problem(
            "launch_hook_name",
            "names the terminating hook: a group's hook names are unique, and a hook is for one transition",
        );
    }
    let heartbeat = match f.opt::<String>("heartbeat").as_deref() {
        None | Some("auto") => Heartbeat::Auto,
        Some("off") => Heartbeat::Off,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_secs(1) && d <= MAX_HEARTBEAT_TIMEOUT => {
                Heartbeat::Every(d)
            }
            _ => {
                f.problem(
                    "heartbeat",
                    format!("{s:?} is not \"auto\", \"off\" or a duration from 1s to 2h (the longest HeartbeatTimeout) like \"60s\""),
                );
                Heartbeat::Auto
            }
        },
    };
    let on_failure_result = match f.opt::<String>("on_failure_result") {
        None => ActionResult::Continue,
        Some(s) if s.eq_ignore_ascii_case("CONTINUE") => ActionResult::Continue,
        Some(s) if s.eq_ignore_ascii_case("ABANDON") => ActionResult::Abandon,
        Some(s) => {
            f.problem(
                "on_failure_result",
                format!("{s:?} is not \"CONTINUE\" or \"ABANDON\""),
            );
            ActionResult::Continue
        }
    };
    let verify = f.opt("verify").unwrap_or(true);
    let state_dir = f
        .opt::<String>("state_dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        f.problem("state_dir", "must be an absolute path");
    }
    LifecycleConfig {
        hook_name,
        launch_hook_name,
        heartbeat,
        on_failure_result,
        verify,
        state_dir,
    }
}

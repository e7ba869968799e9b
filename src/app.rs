//! Carrying out a command: load the config, learn who we are, build the clients, and run the
//! sources (`run`, `once`) or the checks (`check`).

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::cli::{Cli, Command, Exit};
use crate::config::{Config, ConfigError, Loaded, Severity, Step};
use crate::event::Transition;
use crate::handler::Action;
use crate::handler::{Handled, Handler};
use crate::identity::{Identity, Imds};
use crate::lifecycle::ActionRef;
use crate::lifecycle::AutoScaling;
use crate::shutdown::{self, Shutdown};
use crate::source::imds::{ImdsSource, TARGET_STATE};
use crate::source::sqs::SqsSource;
use crate::steps::{StepEnv, StepKind};

/// First pause when instance metadata cannot be read at start; doubled up to a minute.
const IDENTITY_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Attempts to read instance metadata for one-shot commands.
const IDENTITY_ATTEMPTS_ONCE: u32 = 3;

/// Runs the command and returns the exit code.
pub async fn main(cli: Cli) -> Exit {
    match &cli.command {
        Command::Check { offline: true } => check_offline(&cli),
        Command::Check { offline: false } => check_online(&cli).await,
        Command::Run => run(&cli).await,
        Command::Once { wait } => once(&cli, *wait).await,
        Command::Plan => plan(&cli).await,
        Command::Simulate {
            message,
            group,
            hook,
            dry_run,
        } => {
            simulate(
                &cli,
                message.as_deref(),
                group.clone(),
                hook.clone(),
                *dry_run,
            )
            .await
        }
    }
}

fn load(cli: &Cli) -> Result<Loaded, Exit> {
    match Config::from_file(&cli.config) {
        Ok(l) => {
            for w in &l.warnings {
                warn!("{w}");
            }
            Ok(l)
        }
        Err(e @ ConfigError::Read { .. }) => {
            error!("{e}");
            eprintln!("lastcall: {e}");
            Err(Exit::Config)
        }
        Err(ConfigError::Invalid { path, problems }) => {
            let n = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            error!(file = %path.display(), errors = n, "the config file is invalid");
            for p in &problems {
                eprintln!("{p}");
            }
            Err(Exit::Config)
        }
    }
}

fn check_offline(cli: &Cli) -> Exit {
    let loaded = match load(cli) {
        Ok(l) => l,
        Err(code) => return code,
    };
    for w in &loaded.warnings {
        println!("{w}");
    }
    print_summary(&loaded.config);
    Exit::Ok
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
        "  lifecycle: hook {}, heartbeat {:?}, on failure {}, verify {}, state in {}",
        c.lifecycle
            .hook_name
            .as_deref()
            .unwrap_or("(from the event)"),
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
}

/// Reads the identity, retrying; `attempts = None` retries until shutdown.
async fn identity(imds: &Imds, attempts: Option<u32>, shutdown: &mut Shutdown) -> Option<Identity> {
    let mut pause = IDENTITY_RETRY_FIRST;
    let mut n = 0;
    loop {
        n += 1;
        match imds.identity().await {
            Ok(id) => return Some(id),
            Err(e) if attempts.is_some_and(|max| n >= max) => {
                error!(error = %e, "cannot learn this instance's identity");
                return None;
            }
            Err(e) => {
                warn!(error = %e, retry_in_s = pause.as_secs(), "cannot read instance metadata yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.requested() => return None,
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}

struct Parts {
    config: Arc<Config>,
    handler: Handler,
    sqs: Option<SqsSource>,
    imds: Option<ImdsSource>,
}

/// What does not change when the config is reloaded: who we are and the AWS configuration.
struct Base {
    identity: Identity,
    imds: Imds,
    sdk: aws_config::SdkConfig,
}

async fn base(attempts: Option<u32>, shutdown: &mut Shutdown) -> Result<Base, Exit> {
    let imds = Imds::new();
    let Some(identity) = identity(&imds, attempts, shutdown).await else {
        return Err(Exit::Failure);
    };
    let sdk = crate::aws::load(&identity.region).await;
    Ok(Base {
        identity,
        imds,
        sdk,
    })
}

/// The handler and the sources for a config. `shutdown` (the process's) reaches the pipeline,
/// so that only SIGTERM, not a reload, cuts a pipeline short.
fn build(base: &Base, config: Arc<Config>, shutdown: &Shutdown) -> Result<Parts, Exit> {
    let Base {
        identity,
        imds,
        sdk,
    } = base;
    let asg = AutoScaling::new(crate::aws::autoscaling(sdk));
    let launch = !config.launch_steps.is_empty();
    let imds_source = config.imds.as_ref().map(|c| {
        ImdsSource::new(
            imds.clone(),
            asg.clone(),
            c.clone(),
            identity.instance_id.clone(),
            config.lifecycle.hook_name.clone(),
            launch,
        )
    });
    let handler = Handler::new(
        config.clone(),
        identity.clone(),
        imds.clone(),
        asg,
        shutdown.clone(),
    )
    .map_err(|e| {
        error!(error = %e, "cannot use the state directory");
        Exit::Failure
    })?;
    let sqs = config.sqs.as_ref().map(|s| {
        SqsSource::new(
            crate::aws::sqs(sdk, &s.queue_url, s.wait_time),
            s.clone(),
            identity.instance_id.clone(),
            config.lifecycle.hook_name.clone(),
            launch,
        )
    });
    info!(
        version = env!("CARGO_PKG_VERSION"),
        instance_id = %identity.instance_id,
        region = %identity.region,
        steps = config.steps.len(),
        "lastcall ready"
    );
    Ok(Parts {
        config,
        handler,
        sqs,
        imds: imds_source,
    })
}

async fn setup(cli: &Cli, attempts: Option<u32>, shutdown: &mut Shutdown) -> Result<Parts, Exit> {
    let config = Arc::new(load(cli)?.config);
    let base = base(attempts, shutdown).await?;
    build(&base, config, shutdown)
}

/// Folds how actions ended into an exit code (worst wins).
fn exit_for(handled: &[Handled]) -> Exit {
    let mut code = Exit::Ok;
    for h in handled {
        let c = match h {
            Handled::Completed { outcome, .. } if outcome.failed > 0 => Exit::StepsFailed,
            Handled::NotWaiting { .. } => Exit::NotActed,
            _ => Exit::Ok,
        };
        if c as u8 > code as u8 {
            code = c;
        }
    }
    code
}

async fn run(cli: &Cli) -> Exit {
    let (trigger, mut shutdown) = shutdown::channel();
    let mut hup = match shutdown::on_signals(trigger) {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return Exit::Failure;
        }
    };
    let mut config = match load(cli) {
        Ok(l) => Arc::new(l.config),
        Err(code) => return code,
    };
    let base = match base(None, &mut shutdown).await {
        Ok(b) => b,
        Err(_) if shutdown.is_requested() => return Exit::Ok,
        Err(code) => return code,
    };
    let mut first = true;
    loop {
        let parts = match build(&base, config.clone(), &shutdown) {
            Ok(p) => p,
            Err(code) => return code,
        };
        if first {
            if let Err(e) = parts.handler.resume_incomplete().await {
                error!(error = %e, "resuming an unfinished action failed; it is retried when its notification comes back");
            }
            first = false;
        }
        if shutdown.is_requested() {
            break;
        }
        // The sources stop on SIGTERM or SIGHUP; a pipeline that is running finishes first.
        let (stop_sources, sources_shutdown) = shutdown::channel();
        let sqs = async {
            if let Some(src) = parts.sqs {
                src.run(&parts.handler, sources_shutdown.clone()).await;
            }
        };
        let imds = async {
            if let Some(src) = parts.imds {
                src.run(&parts.handler, sources_shutdown.clone()).await;
            }
        };
        let mut watch = shutdown.clone();
        let reload = async {
            let reload = tokio::select! {
                _ = watch.requested() => false,
                _ = hup.changed() => true,
            };
            stop_sources.fire();
            reload
        };
        let (_, _, reload) = tokio::join!(sqs, imds, reload);
        if !reload || shutdown.is_requested() {
            break;
        }
        match Config::from_file(&cli.config) {
            Ok(l) => {
                for w in &l.warnings {
                    warn!("{w}");
                }
                info!(file = %cli.config.display(), steps = l.config.steps.len(), "SIGHUP: config reloaded");
                config = Arc::new(l.config);
            }
            Err(e) => {
                error!(file = %cli.config.display(), "SIGHUP: the new config is not usable; keeping the old one: {e}");
            }
        }
    }
    info!("lastcall stopped");
    Exit::Ok
}

async fn once(cli: &Cli, wait: Option<Duration>) -> Exit {
    let (trigger, mut shutdown) = shutdown::channel();
    if let Err(e) = shutdown::on_signals(trigger) {
        error!(error = %e, "cannot install signal handlers");
        return Exit::Failure;
    }
    let parts = match setup(cli, Some(IDENTITY_ATTEMPTS_ONCE), &mut shutdown).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut handled = match parts.handler.resume_incomplete().await {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "resuming an unfinished action failed");
            return Exit::Failure;
        }
    };
    if let Some(mut src) = parts.imds {
        handled.extend(src.check(&parts.handler).await.handled);
    }
    if let Some(mut src) = parts.sqs {
        let wait = wait
            .or(parts.config.sqs.as_ref().map(|s| s.wait_time))
            .unwrap_or_default()
            .min(Duration::from_secs(20));
        match src.poll(&parts.handler, wait).await {
            Ok(report) => {
                info!(
                    received = report.received,
                    deleted = report.deleted,
                    released = report.released,
                    left = report.left,
                    handled = report.handled.len(),
                    "queue checked"
                );
                handled.extend(report.handled);
            }
            Err(e) => {
                error!(error = %e, "checking the queue failed");
                return Exit::Failure;
            }
        }
    }
    exit_for(&handled)
}

async fn check_online(cli: &Cli) -> Exit {
    let loaded = match load(cli) {
        Ok(l) => l,
        Err(code) => return code,
    };
    print_summary(&loaded.config);
    let config = loaded.config;
    let mut failed = false;
    let mut report = |ok: bool, what: &str, detail: String| {
        println!("  [{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
        failed |= !ok;
    };
    let imds = Imds::new();
    let identity = match imds.identity().await {
        Ok(id) => {
            report(
                true,
                "instance metadata (IMDSv2)",
                format!(
                    "{} in {} ({})",
                    id.instance_id, id.availability_zone, id.hostname
                ),
            );
            id
        }
        Err(e) => {
            report(false, "instance metadata (IMDSv2)", e.to_string());
            return Exit::Failure;
        }
    };
    let sdk = crate::aws::load(&identity.region).await;
    let asg = AutoScaling::new(crate::aws::autoscaling(&sdk));
    let group = match asg.instance(&identity.instance_id).await {
        Ok(Some(s)) => {
            report(
                true,
                "Auto Scaling (DescribeAutoScalingInstances)",
                format!("group {}, state {}", s.group, s.state),
            );
            Some(s.group)
        }
        Ok(None) => {
            report(
                false,
                "Auto Scaling (DescribeAutoScalingInstances)",
                "this instance is in no Auto Scaling group".into(),
            );
            None
        }
        Err(e) => {
            report(
                false,
                "Auto Scaling (DescribeAutoScalingInstances)",
                e.to_string(),
            );
            None
        }
    };
    if let Some(ic) = config.imds.as_ref().filter(|i| i.lifecycle) {
        match imds.get_opt(TARGET_STATE).await {
            Ok(Some(v)) => report(true, "source imds: target-lifecycle-state", format!("{v} (polled every {})", humantime::format_duration(ic.poll_interval))),
            Ok(None) => report(true, "source imds: target-lifecycle-state", "not recorded yet (404): it appears after the instance's first lifecycle transition".into()),
            Err(e) => report(false, "source imds: target-lifecycle-state", aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()),
        }
        if let Some(group) = &group {
            match asg.hooks(group).await {
                Ok(hooks) => {
                    let term: Vec<_> = hooks
                        .iter()
                        .filter(|h| h.transition == crate::event::Transition::Terminating.as_str())
                        .map(|h| h.name.as_str())
                        .collect();
                    let ok = match &config.lifecycle.hook_name {
                        Some(name) => term.contains(&name.as_str()),
                        None => term.len() == 1,
                    };
                    let detail = match (&config.lifecycle.hook_name, term.len()) {
                        (Some(n), _) if ok => format!("{n} will be completed"),
                        (Some(n), _) => format!("group {group} has no terminating hook named {n} (it has: {})", term.join(", ")),
                        (None, 1) => format!("{} will be completed", term[0]),
                        (None, 0) => format!("group {group} has no terminating hook: nothing would hold the instance"),
                        (None, _) => format!("group {group} has several terminating hooks ({}): set [lifecycle] hook_name", term.join(", ")),
                    };
                    report(ok, "terminating hook (DescribeLifecycleHooks)", detail);
                    if let Some(hook) = config.lifecycle.hook_name.clone().or(if term.len() == 1 {
                        Some(term[0].to_string())
                    } else {
                        None
                    }) {
                        // A heartbeat for an action that does not exist is refused with "No active
                        // Lifecycle Action found" when the call is allowed, and AccessDenied when not;
                        // for an action that does exist it only extends it. Either way nothing changes.
                        let a = crate::lifecycle::ActionRef {
                            group: group.clone(),
                            hook,
                            instance_id: identity.instance_id.clone(),
                            token: None,
                        };
                        match asg.heartbeat(&a).await {
                            Ok(_) => report(
                                true,
                                "permission autoscaling:RecordLifecycleActionHeartbeat",
                                "allowed".into(),
                            ),
                            Err(e) => report(
                                false,
                                "permission autoscaling:RecordLifecycleActionHeartbeat",
                                e.to_string(),
                            ),
                        }
                    }
                }
                Err(e) => report(
                    false,
                    "terminating hook (DescribeLifecycleHooks)",
                    e.to_string(),
                ),
            }
        }
    }
    if let (Some(group), Some(hook)) = (&group, &config.lifecycle.hook_name) {
        match asg.hook(group, hook).await {
            Ok(Some(t)) => report(
                true,
                "lifecycle hook (DescribeLifecycleHooks)",
                format!(
                    "{hook}: heartbeat timeout {}s, global timeout {}s",
                    t.heartbeat.as_secs(),
                    t.global.as_secs()
                ),
            ),
            Ok(None) => report(
                false,
                "lifecycle hook (DescribeLifecycleHooks)",
                format!("group {group} has no hook named {hook}"),
            ),
            Err(e) => report(
                false,
                "lifecycle hook (DescribeLifecycleHooks)",
                e.to_string(),
            ),
        }
    }
    if let Some(s) = &config.sqs {
        let client = crate::aws::sqs(&sdk, &s.queue_url, s.wait_time);
        match client
            .get_queue_attributes()
            .queue_url(&s.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
        {
            Ok(out) => {
                let attrs = out.attributes.unwrap_or_default();
                let n = attrs
                    .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    .cloned()
                    .unwrap_or_default();
                report(
                    true,
                    "queue (GetQueueAttributes)",
                    format!("{} reachable, about {n} message(s)", s.queue_url),
                );
                if let Some(r) = attrs.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy) {
                    let max = serde_json::from_str::<serde_json::Value>(r)
                        .ok()
                        .and_then(|v| {
                            v.get("maxReceiveCount")
                                .and_then(|m| m.as_u64().or_else(|| m.as_str()?.parse().ok()))
                        });
                    if let Some(max) = max.filter(|m| *m < 100) {
                        println!("  [warn] the queue's dead-letter maxReceiveCount is {max}: with a shared queue every instance receives every message, so a low count moves messages to the dead-letter queue before their owner sees them (use 1000 or more)");
                    }
                }
            }
            Err(e) => report(
                false,
                "queue (GetQueueAttributes)",
                aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
            ),
        }
    }
    let action = synthetic_action(
        &identity,
        group.clone().unwrap_or_default(),
        config.lifecycle.hook_name.clone().unwrap_or_default(),
    );
    let ctx = crate::handler::context(&config, &identity, &imds, Some(&asg), &action).await;
    let env = StepEnv {
        name: "check",
        ctx: &ctx,
        resumed: false,
        deadline: tokio::time::Instant::now() + CHECK_TIMEOUT,
    };
    for step in config.steps.iter().chain(&config.launch_steps) {
        let what = format!(
            "step {} {:?} ({})",
            step.index,
            step.name,
            step.kind.kind_name()
        );
        let r = match &step.kind {
            StepKind::Zabbix(z) => Some(z.check(&env).await),
            StepKind::Mackerel(m) => Some(m.check(&env).await),
            StepKind::Fluentd(f) => Some(
                f.supervisor(&ctx)
                    .map(|(pid, path)| format!("supervisor {pid} (from {path})")),
            ),
            _ => None,
        };
        match r {
            Some(Ok(detail)) => report(true, &what, detail),
            Some(Err(e)) => report(false, &what, e.to_string()),
            None => {}
        }
    }
    if failed {
        Exit::Failure
    } else {
        Exit::Ok
    }
}

/// How long `check` gives each service.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

fn synthetic_action(identity: &Identity, group: String, hook: String) -> Action {
    Action {
        aref: ActionRef {
            group,
            hook,
            instance_id: identity.instance_id.clone(),
            token: None,
        },
        transition: Transition::Terminating,
        metadata: None,
        warm_pool: false,
        started: None,
        seen_waiting: false,
        timeouts: None,
    }
}

/// The config and this instance's identity, for the one-shot commands that need both.
async fn config_and_identity(cli: &Cli) -> Result<(Config, Imds, Identity), Exit> {
    let config = load(cli)?.config;
    let imds = Imds::new();
    match imds.identity().await {
        Ok(identity) => Ok((config, imds, identity)),
        Err(e) => {
            eprintln!("lastcall: {e}");
            Err(Exit::Failure)
        }
    }
}

async fn plan(cli: &Cli) -> Exit {
    let (config, imds, identity) = match config_and_identity(cli).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let sdk = crate::aws::load(&identity.region).await;
    let asg = AutoScaling::new(crate::aws::autoscaling(&sdk));
    let (group, state) = match asg.instance(&identity.instance_id).await {
        Ok(Some(s)) => (s.group, s.state),
        Ok(None) => (String::new(), "not in an Auto Scaling group".into()),
        Err(e) => (String::new(), format!("unknown ({e})")),
    };
    let hook = match &config.lifecycle.hook_name {
        Some(h) => h.clone(),
        None if !group.is_empty() => asg
            .hooks(&group)
            .await
            .ok()
            .and_then(|hs| {
                let t: Vec<_> = hs
                    .into_iter()
                    .filter(|h| h.transition == Transition::Terminating.as_str())
                    .collect();
                (t.len() == 1).then(|| t[0].name.clone())
            })
            .unwrap_or_default(),
        None => String::new(),
    };
    println!(
        "lastcall plan for {} ({}, {}) in {}: {}",
        identity.instance_id,
        identity.hostname,
        identity.local_ipv4,
        if group.is_empty() { "no group" } else { &group },
        state
    );
    if let Some(s) = &config.sqs {
        println!(
            "source sqs: {} (long poll {})",
            s.queue_url,
            humantime::format_duration(s.wait_time)
        );
    }
    if let Some(i) = &config.imds {
        println!(
            "source imds: lifecycle {}, spot {}, rebalance {} (every {})",
            i.lifecycle,
            i.spot,
            i.rebalance,
            humantime::format_duration(i.poll_interval)
        );
    }
    println!(
        "completes hook: {}",
        if hook.is_empty() {
            "the one named in each notification"
        } else {
            &hook
        }
    );
    let action = synthetic_action(&identity, group, hook);
    let ctx = crate::handler::context(&config, &identity, &imds, Some(&asg), &action).await;
    print_steps("On termination", &config.steps, &ctx, |_| true);
    print_steps("On a return to the warm pool", &config.steps, &ctx, |s| {
        s.warm_pool
    });
    if config.imds.as_ref().is_some_and(|i| i.spot || i.rebalance) {
        print_steps("On a spot interruption notice", &config.steps, &ctx, |s| {
            s.on_spot
        });
    }
    if !config.launch_steps.is_empty() {
        let launch = Action {
            transition: Transition::Launching,
            ..action
        };
        let ctx = crate::handler::context(&config, &identity, &imds, Some(&asg), &launch).await;
        print_steps("On launch", &config.launch_steps, &ctx, |_| true);
    }
    Exit::Ok
}

fn print_steps(
    title: &str,
    steps: &[Step],
    ctx: &crate::template::Context,
    applies: impl Fn(&Step) -> bool,
) {
    println!("{title}:");
    let mut any = false;
    for s in steps.iter().filter(|s| applies(s)) {
        any = true;
        let what = match s.kind.describe(ctx) {
            Ok(d) => d,
            Err(e) => format!("!! {e}"),
        };
        println!(
            "  {}. {} [{}, timeout {}, on failure {}]: {what}",
            s.index,
            s.name,
            s.kind.kind_name(),
            humantime::format_duration(s.timeout),
            match s.on_failure {
                crate::config::OnFailure::Continue => "continue",
                crate::config::OnFailure::Abort => "abort",
            }
        );
    }
    if !any {
        println!("  (no steps)");
    }
}

async fn simulate(
    cli: &Cli,
    message: Option<&std::path::Path>,
    group: Option<String>,
    hook: Option<String>,
    dry_run: bool,
) -> Exit {
    let (config, imds, identity) = match config_and_identity(cli).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let action = match message {
        Some(path) => {
            let body = match std::fs::read_to_string(path) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("lastcall: cannot read message file {}: {e}", path.display());
                    return Exit::Failure;
                }
            };
            match crate::event::parse(&body) {
                Ok(crate::event::Notification::Lifecycle(ev))
                    if ev.instance_id == identity.instance_id =>
                {
                    Action::from(&ev)
                }
                Ok(crate::event::Notification::Lifecycle(ev)) => {
                    eprintln!(
                        "lastcall: {} is a notification for {}, and this instance is {}: lastcall would leave it to its owner",
                        path.display(),
                        ev.instance_id,
                        identity.instance_id
                    );
                    return Exit::Failure;
                }
                Ok(crate::event::Notification::Test { .. }) => {
                    println!(
                        "{} is a test notification: lastcall would delete it and run nothing",
                        path.display()
                    );
                    return Exit::Ok;
                }
                Err(e) => {
                    eprintln!(
                        "lastcall: {}: {e}; lastcall would leave it for the queue's redrive policy",
                        path.display()
                    );
                    return Exit::Failure;
                }
            }
        }
        None => {
            let group = match group {
                Some(g) => g,
                None => imds
                    .tag("aws:autoscaling:groupName")
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "simulated-group".into()),
            };
            let hook = hook
                .or(config.lifecycle.hook_name.clone())
                .unwrap_or_else(|| "simulated-hook".into());
            synthetic_action(&identity, group, hook)
        }
    };
    let ctx = crate::handler::context(&config, &identity, &imds, None, &action).await;
    let steps = match action.transition {
        Transition::Terminating => &config.steps,
        Transition::Launching => &config.launch_steps,
    };
    let warm = action.warm_pool;
    let applies = move |s: &Step| !warm || s.warm_pool;
    let what = match (&action.transition, warm) {
        (Transition::Launching, _) => "launch",
        (Transition::Terminating, true) => "return to the warm pool",
        (Transition::Terminating, false) => "termination",
    };
    println!(
        "simulating a {what} of {} (group {}, hook {}); no lifecycle call is made",
        identity.instance_id, action.aref.group, action.aref.hook
    );
    if dry_run {
        print_steps("Steps (dry run: nothing is run)", steps, &ctx, applies);
        return Exit::Ok;
    }
    // A journal of its own, so that the real one never sees a simulated action.
    let dir = std::env::temp_dir().join(format!("lastcall-simulate-{}", std::process::id()));
    let journal = match crate::journal::Journal::open(&dir) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("lastcall: {e}");
            return Exit::Failure;
        }
    };
    let mut rec = crate::journal::Record::new(
        &identity.instance_id,
        &action.aref.group,
        &action.aref.hook,
        action.transition.as_str(),
        None,
        action.metadata.as_deref(),
        "simulate",
    );
    let started = std::time::Instant::now();
    let outcome = crate::pipeline::run(
        steps,
        &applies,
        None,
        &ctx,
        &journal,
        &mut rec,
        &Shutdown::never(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lastcall: {e}");
            return Exit::Failure;
        }
    };
    let result = if outcome.failed == 0 {
        crate::config::ActionResult::Continue
    } else {
        config.lifecycle.on_failure_result
    };
    println!(
        "simulated {what}: {} step(s) ok, {} failed, {} skipped in {:.1}s; lastcall would complete the action with {result}",
        outcome.ok,
        outcome.failed,
        outcome.skipped,
        started.elapsed().as_secs_f64()
    );
    if outcome.failed > 0 {
        Exit::StepsFailed
    } else {
        Exit::Ok
    }
}

//! `lastcall plan`: what would run on this instance, per case, placeholders filled. Read-only.

use crate::autoscaling::{choose_hook, AutoScaling};
use crate::cli::{Cli, Exit};
use crate::config::{OnFailure, Step};
use crate::event::Transition;
use crate::handler::{context, Action};
use crate::template::Context;

/// Prints the plan.
pub async fn plan(cli: &Cli) -> Exit {
    let (config, imds, identity) = match super::config_and_identity(cli).await {
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
    let hooks = match group.as_str() {
        "" => Vec::new(),
        g => asg.hooks(g).await.unwrap_or_default(),
    };
    let names = config.lifecycle.hooks();
    let owned = |t: Transition| {
        choose_hook(&group, &hooks, names.get(&t), &t)
            .map(|h| h.name)
            .map_err(|e| e.to_string())
    };
    let (hook, launch_hook) = (owned(Transition::Terminating), owned(Transition::Launching));
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
        match &hook {
            Ok(h) => h.clone(),
            Err(e) if group.is_empty() => format!("none known ({e})"),
            Err(e) => format!("none: {e}"),
        }
    );
    if !config.launch_steps.is_empty() {
        println!(
            "completes launch hook: {}",
            match &launch_hook {
                Ok(h) => h.clone(),
                Err(e) => format!("none: {e}"),
            }
        );
    }
    let hook = hook.unwrap_or_default();
    let launch_hook = launch_hook.unwrap_or_default();
    let action = Action::new(
        &identity.instance_id,
        &group,
        &hook,
        Transition::Terminating,
        false,
    );
    let ctx = context(&config, &identity, &imds, Some(&asg), &action).await;
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
        let launch = Action::new(
            &identity.instance_id,
            &group,
            &launch_hook,
            Transition::Launching,
            false,
        );
        let ctx = context(&config, &identity, &imds, Some(&asg), &launch).await;
        print_steps("On launch", &config.launch_steps, &ctx, |_| true);
    }
    Exit::Ok
}

/// Prints the steps that `applies` selects, each with its placeholders filled.
pub fn print_steps(title: &str, steps: &[Step], ctx: &Context, applies: impl Fn(&Step) -> bool) {
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
                OnFailure::Continue => "continue",
                OnFailure::Abort => "abort",
            }
        );
    }
    if !any {
        println!("  (no steps)");
    }
}

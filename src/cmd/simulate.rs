//! `lastcall simulate`: the real steps for a synthetic termination of this instance (or a saved
//! notification), with no lifecycle call and a journal of its own.

use crate::autoscaling::ActionResult;
use crate::cli::{Cli, Exit};
use crate::config::Step;
use crate::event::{Notification, Transition};
use crate::handler::{context, Action};
use crate::journal::{Journal, Record};
use crate::shutdown::Shutdown;

/// Runs (or with `dry_run` prints) the steps.
pub async fn simulate(
    cli: &Cli,
    message: Option<&std::path::Path>,
    group: Option<String>,
    hook: Option<String>,
    dry_run: bool,
) -> Exit {
    let (config, imds, identity) = match super::config_and_identity(cli).await {
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
                Ok(Notification::Lifecycle(ev)) if ev.instance_id == identity.instance_id => {
                    Action::from_event(&ev)
                }
                Ok(Notification::Lifecycle(ev)) => {
                    eprintln!(
                        "lastcall: {} is a notification for {}, and this instance is {}: lastcall would leave it to its owner",
                        path.display(),
                        ev.instance_id,
                        identity.instance_id
                    );
                    return Exit::Failure;
                }
                Ok(Notification::Other { kind }) => {
                    println!(
                        "{} is an AWS notification ({kind}) that no lifecycle action follows: lastcall would delete it and run nothing",
                        path.display()
                    );
                    return Exit::Ok;
                }
                Ok(Notification::Test { .. }) => {
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
            Action::new(
                &identity.instance_id,
                &group,
                &hook,
                Transition::Terminating,
                false,
            )
        }
    };
    let ctx = context(&config, &identity, &imds, None, &action).await;
    let steps = match action.transition {
        Transition::Terminating => &config.steps,
        Transition::Launching => &config.launch_steps,
    };
    let warm = action.warm_pool;
    let applies = move |s: &Step| !warm || s.warm_pool;
    let what = action.what();
    println!(
        "simulating a {what} of {} (group {}, hook {}); no lifecycle call is made",
        identity.instance_id, action.aref.group, action.aref.hook
    );
    if dry_run {
        super::plan::print_steps("Steps (dry run: nothing is run)", steps, &ctx, applies);
        return Exit::Ok;
    }
    // A journal of its own, so that the real one never sees a simulated action: in a new
    // directory of a random name, created 0700 and exclusively (a predictable name under /tmp
    // could be a directory another local user made, with links in it for root to write through).
    let tmp = match tempfile::Builder::new()
        .prefix("lastcall-simulate-")
        .tempdir()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "lastcall: cannot create a temporary directory for the simulation's journal under {}: {e}",
                std::env::temp_dir().display()
            );
            return Exit::Failure;
        }
    };
    let journal = match Journal::open(tmp.path()) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("lastcall: {e}");
            return Exit::Failure;
        }
    };
    let mut rec = Record::new(
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
    drop(tmp);
    let result = if outcome.failed == 0 {
        ActionResult::Continue
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

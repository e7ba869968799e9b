//! `lastcall sweep`: prints what the sweep found and did, one line per host.

use tracing::{error, info};

use crate::cli::{Cli, Exit};
use crate::event::Transition;
use crate::handler::{context, Action};
use crate::imds::Imds;
use crate::sweep::hosts::Service;
use crate::sweep::turn::Turn;
use crate::sweep::{Place, Report, Verdict};
use crate::template::Context;

/// Sweeps (or with `dry_run` only says what it would do).
pub async fn sweep(cli: &Cli, dry_run: bool, region: Option<&str>) -> Exit {
    let config = match super::load(cli) {
        Ok(l) => l.config,
        Err(code) => return code,
    };
    let Some(sw) = config.sweep.clone() else {
        eprintln!(
            "lastcall: {} has no [sweep] table: add one with mackerel_service and/or zabbix_group to say which hosts are this group's",
            config.path.display()
        );
        return Exit::Config;
    };
    let imds = Imds::new();
    let (region, instance, ctx) = match (imds.identity().await, region) {
        (Ok(id), Some(r)) if r != id.region => {
            eprintln!(
                "lastcall: --region {r}, but this instance {} is in {}: sweep from an instance of the region, or from elsewhere",
                id.instance_id, id.region
            );
            return Exit::Failure;
        }
        (Ok(id), _) => {
            let action = Action::new(&id.instance_id, "", "", Transition::Terminating, false);
            let ctx = context(&config, &id, &imds, None, &action).await;
            (id.region.clone(), Some(id.instance_id.clone()), ctx)
        }
        (Err(_), Some(r)) => {
            let mut ctx = Context::default();
            ctx.values.insert("region", r.to_string());
            (r.to_string(), None, ctx)
        }
        (Err(e), None) => {
            eprintln!("lastcall: {e}\nlastcall: not on an EC2 instance? give --region to sweep from elsewhere");
            return Exit::Failure;
        }
    };
    let sdk = crate::aws::load(&region).await;
    // One instance of the group sweeps per run (design §6); a dry run says whose turn it is
    // and shows what a sweep would do all the same.
    if let Some(me) = &instance {
        match crate::sweep::turn::turn(&sdk, me).await {
            Ok(Turn::Theirs { group, instance_id }) => {
                let line = format!("not this instance's turn: {instance_id}, the InService instance of group {group} with the lowest id, sweeps");
                info!(group = %group, sweeper = %instance_id, "{line}");
                println!("{line}");
                if !dry_run {
                    return Exit::Ok;
                }
            }
            Ok(Turn::Mine { group }) => {
                info!(group = %group, "this instance sweeps for its group (the InService instance with the lowest id)")
            }
            Ok(Turn::NoGroup) => {}
            Err(e) => {
                let line =
                    format!("cannot tell whose turn it is to sweep ({e}): not sweeping this run, nothing removed");
                error!("{line}");
                println!("error: {line}");
                if !dry_run {
                    return Exit::Failure;
                }
            }
        }
    }
    let place = Place {
        region: &region,
        instance_id: instance.as_deref(),
        ctx: &ctx,
        sdk: &sdk,
    };
    println!(
        "lastcall sweep of {region}{}{}",
        match &instance {
            Some(i) => format!(" from {i}"),
            None => " (not from an instance)".into(),
        },
        if dry_run {
            ", dry run: nothing is changed"
        } else {
            ""
        }
    );
    let report = crate::sweep::sweep(&config, &sw, &place, dry_run).await;
    print(&report, dry_run);
    let removed = report
        .rows
        .iter()
        .filter(|r| matches!(r.done, Some(Ok(_))))
        .count();
    info!(
        hosts = report.rows.len(),
        removed,
        skipped = report.skipped.len(),
        errors = report.errors.len(),
        refused = report.refused.is_some(),
        dry_run,
        "sweep done"
    );
    if report.errors.is_empty() && report.refused.is_none() {
        Exit::Ok
    } else {
        Exit::Failure
    }
}

fn print(report: &Report, dry_run: bool) {
    for r in &report.rows {
        let h = &r.host;
        let verb = match h.service {
            Service::Mackerel => "retire",
            Service::Zabbix => "delete",
        };
        let what = match (&r.verdict, &r.done) {
            (Verdict::Keep(why), _) => format!("keep: {why}"),
            (Verdict::Wait(why), _) => format!("keep for now: {why}"),
            (Verdict::Remove(why), Some(Ok(done))) => format!("{done}: {why}"),
            (Verdict::Remove(why), Some(Err(e))) => format!("FAILED to {verb}: {e} ({why})"),
            (Verdict::Remove(why), None) if dry_run => format!("would {verb}: {why}"),
            (Verdict::Remove(why), None) => format!("not removed: {why}"),
        };
        println!(
            "{:<8} {} (host {}) {}: {} -> {what}",
            h.service.to_string(),
            h.name,
            h.id,
            h.key,
            r.state
        );
    }
    for s in &report.skipped {
        println!(
            "{:<8} {}: not this sweep's: {}",
            s.service.to_string(),
            s.name,
            s.why
        );
    }
    if let Some(why) = &report.refused {
        println!("refused: {why}");
        error!("{why}");
    }
    for e in &report.errors {
        println!("error: {e}");
        error!("{e}");
    }
    if report.rows.is_empty() && report.errors.is_empty() {
        println!("no monitoring host of this group found");
    }
}

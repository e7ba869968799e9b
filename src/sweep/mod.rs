//! `lastcall sweep`: the survivors clean up after instances that died without their steps.
//!
//! The group's monitoring hosts (`[sweep]`: a Mackerel service and role, a Zabbix host group)
//! are matched to their instances, EC2 is asked what became of those instances, and the hosts of
//! terminated instances, or of instances EC2 has not known for longer than `min_age`, are retired
//! (Mackerel) or deleted (Zabbix). It fails closed: whatever a failed API answer would have
//! decided is left alone, and the exit status says so.

pub mod ec2;
pub mod hosts;
mod missing;
pub mod turn;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::config::{Config, SweepConfig};
use crate::steps::{StepEnv, StepKind};
use crate::template::Context;
use ec2::{Ec2, Seen};
use hosts::{Host, Key, Service, Skipped};

/// The whole sweep's Mackerel and Zabbix calls, retries included, end within this (an API that is
/// down is not retried for longer).
const SWEEP_TIMEOUT: Duration = Duration::from_secs(300);

/// What to do with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its instance lives (or it is not this sweep's to judge).
    Keep(String),
    /// Its instance is gone: retire or delete it.
    Remove(String),
    /// Its instance is not known to EC2, but not for long enough yet.
    Wait(String),
}

/// Decides one host from what EC2 said (`seen`: `None` = unknown to EC2), the host's age,
/// when the sweep first saw its instance missing, and whether EC2 in this region and account
/// ever showed it alive (`known_alive`): an instance EC2 does not know and never knew may be
/// another region's or account's, alive.
pub fn decide(
    host: &Host,
    seen: Option<&Seen>,
    now: SystemTime,
    first_missing: Option<SystemTime>,
    known_alive: bool,
    min_age: Duration,
) -> Verdict {
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    let fmt =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    let host_age = host.created.map(age);
    if let Some(a) = host_age.filter(|a| *a < min_age) {
        // A just-launched instance can be "not found" for a while (EC2 eventual consistency).
        return Verdict::Wait(format!(
            "host created {} ago, younger than min_age {}",
            fmt(a),
            fmt(min_age)
        ));
    }
    match seen {
        Some(Seen::Alive(state)) => Verdict::Keep(format!("instance is {state}")),
        Some(Seen::Gone(state)) => Verdict::Remove(format!("instance is {state}")),
        None if !known_alive => Verdict::Keep(
            "unknown to EC2 and never seen alive here: perhaps another region's or account's instance; kept".into(),
        ),
        None => {
            // By the host's own age where the API gives it, else by our first sighting.
            let (missing_for, by) = match (host_age, first_missing) {
                (Some(a), _) => (a, "the host's age"),
                (None, Some(t)) => (age(t), "since the sweep first saw it missing"),
                (None, None) => (Duration::ZERO, "not seen missing before"),
            };
            if missing_for >= min_age && (host_age.is_some() || first_missing.is_some()) {
                Verdict::Remove(format!("unknown to EC2 ({by}: {})", fmt(missing_for)))
            } else {
                Verdict::Wait(format!(
                    "unknown to EC2 ({by}: {}); removed once that is min_age {}",
                    fmt(missing_for),
                    fmt(min_age)
                ))
            }
        }
    }
}

/// One host's line in the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// The host.
    pub host: Host,
    /// What EC2 says, as words.
    pub state: String,
    /// The decision.
    pub verdict: Verdict,
    /// What removing it did (`None`: not removed).
    pub done: Option<Result<String, String>>,
}

/// What a sweep found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// Every host of the group, decided.
    pub rows: Vec<Row>,
    /// Hosts that are not this sweep's.
    pub skipped: Vec<Skipped>,
    /// API failures (non-empty: exit non-zero).
    pub errors: Vec<String>,
    /// Why nothing was removed although some hosts should be.
    pub refused: Option<String>,
}

/// Where the sweep runs.
pub struct Place<'a> {
    /// The region swept.
    pub region: &'a str,
    /// This instance, when the sweep runs on one: EC2 must show it, or nothing is done.
    pub instance_id: Option<&'a str>,
    /// Placeholder values for the steps' settings.
    pub ctx: &'a Context,
    /// AWS configuration for the region.
    pub sdk: &'a aws_config::SdkConfig,
}

/// Sweeps; with `dry_run` only decides.
pub async fn sweep(
    config: &Config,
    sweep: &SweepConfig,
    place: &Place<'_>,
    dry_run: bool,
) -> Report {
    let mut report = Report::default();
    let env = StepEnv {
        name: "sweep",
        ctx: place.ctx,
        resumed: false,
        deadline: tokio::time::Instant::now() + SWEEP_TIMEOUT,
    };
    let ec2 = Ec2::new(place.sdk);
    // A wrong region or another account's credentials would make every host look gone.
    if let Some(me) = place.instance_id {
        match ec2.by_id(&[me.to_string()]).await {
            Ok(m) if matches!(m.get(me), Some(Seen::Alive(_))) => {}
            Ok(m) => {
                report.errors.push(format!(
                    "EC2 in region {} does not show this instance {me} alive ({}): the region or the credentials are not this instance's; nothing removed",
                    place.region,
                    match m.get(me) { Some(Seen::Gone(s)) => s.as_str(), _ => "unknown to EC2" }
                ));
                return report;
            }
            Err(e) => {
                report.errors.push(format!("{e}; nothing removed"));
                return report;
            }
        }
    }
    let mackerel = config.steps.iter().find_map(|s| match &s.kind {
        StepKind::Mackerel(m) => Some(m),
        _ => None,
    });
    let zabbix = config.steps.iter().find_map(|s| match &s.kind {
        StepKind::Zabbix(z) => Some(z),
        _ => None,
    });
    let mut found: Vec<Host> = Vec::new();
    if let (Some(service), Some(m)) = (&sweep.mackerel_service, mackerel) {
        match m
            .list_hosts(&env, service, sweep.mackerel_role.as_deref())
            .await
        {
            Ok(list) => {
                for v in &list {
                    match hosts::mackerel_host(v, place.region) {
                        Ok(h) => found.push(h),
                        Err(s) => report.skipped.push(s),
                    }
                }
            }
            Err(e) => report.errors.push(format!(
                "Mackerel hosts of service {service}: {e}; no Mackerel host removed"
            )),
        }
    }
    let mut zabbix_session = None;
    if let (Some(group), Some(z)) = (&sweep.zabbix_group, zabbix) {
        match z.session(&env).await {
            Ok(mut s) => {
                match hosts::zabbix_hosts(&mut s, group, &sweep.zabbix_instance_id).await {
                    Ok(list) => {
                        for h in list {
                            match h {
                                Ok(h) => found.push(h),
                                Err(s) => report.skipped.push(s),
                            }
                        }
                        zabbix_session = Some(s);
                    }
                    Err(e) => {
                        report.errors.push(format!(
                            "Zabbix hosts of group {group}: {e}; no Zabbix host removed"
                        ));
                        s.close().await;
                    }
                }
            }
            Err(e) => report
                .errors
                .push(format!("Zabbix: {e}; no Zabbix host removed")),
        }
    }

    // What EC2 says; without a complete answer nothing is decided.
    let ids: Vec<String> = unique(found.iter().filter_map(|h| match &h.key {
        Key::Instance(i) => Some(i.clone()),
        Key::Ip(_) => None,
    }));
    let ips: Vec<String> = unique(found.iter().filter_map(|h| match &h.key {
        Key::Ip(ip) => Some(ip.clone()),
        Key::Instance(_) => None,
    }));
    let by_id = ec2.by_id(&ids).await;
    let by_ip = ec2.by_private_ip(&ips).await;
    let (by_id, by_ip) = match (by_id, by_ip) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                report.errors.push(format!("{e}; nothing removed"));
            }
            if let Some(s) = zabbix_session {
                s.close().await;
            }
            return report;
        }
    };

    let now = SystemTime::now();
    let mut record = missing::Missing::load(&config.lifecycle.state_dir);
    let mut alive = missing::Missing::load_alive(&config.lifecycle.state_dir);
    let mut seen_keys = Vec::new();
    let mut alive_keys = Vec::new();
    // A service none of whose hosts' instances EC2 knows is seen through the wrong region or
    // credentials (an off-instance sweep has no instance of its own to check that with).
    let mut blind = Vec::new();
    for service in [Service::Mackerel, Service::Zabbix] {
        let mine: Vec<&Host> = found.iter().filter(|h| h.service == service).collect();
        let known = mine.iter().any(|h| match &h.key {
            Key::Instance(i) => by_id.contains_key(i),
            Key::Ip(ip) => by_ip.contains_key(ip),
        });
        if !mine.is_empty() && !known {
            report.errors.push(format!(
                "EC2 in region {} knows none of the {} {service} hosts' instances: a wrong region or credentials? none of them removed",
                place.region,
                mine.len()
            ));
            blind.push(service);
        }
    }
    for host in found {
        let record_key = format!("{}:{}", host.service, host.id);
        let (seen, state) = match &host.key {
            Key::Instance(i) => match by_id.get(i) {
                Some(s @ (Seen::Alive(st) | Seen::Gone(st))) => (Some(s.clone()), st.clone()),
                None => (None, "unknown to EC2".to_string()),
            },
            Key::Ip(ip) => match by_ip.get(ip) {
                Some((id, st)) => (Some(Seen::Alive(st.clone())), format!("{id} {st}")),
                None => (None, "no live instance has it".to_string()),
            },
        };
        if seen.is_none() {
            record.first_seen_missing(&record_key, now);
        } else {
            record.forget(&record_key);
        }
        let alive_key = match &host.key {
            Key::Instance(i) => i.clone(),
            Key::Ip(ip) => format!("ip:{ip}"),
        };
        if matches!(seen, Some(Seen::Alive(_))) {
            alive.first_seen_missing(&alive_key, now);
        }
        seen_keys.push(record_key.clone());
        alive_keys.push(alive_key.clone());
        let mut verdict = decide(
            &host,
            seen.as_ref(),
            now,
            record.get(&record_key),
            alive.get(&alive_key).is_some(),
            sweep.min_age,
        );
        if blind.contains(&host.service) && matches!(verdict, Verdict::Remove(_)) {
            verdict = Verdict::Keep(format!(
                "EC2 knows none of this service's hosts' instances; kept ({})",
                state
            ));
        }
        report.rows.push(Row {
            host,
            state,
            verdict,
            done: None,
        });
    }
    record.keep_only(&seen_keys);
    alive.keep_only(&alive_keys);

    let doomed = report
        .rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Remove(_)))
        .count();
    if doomed > sweep.max_delete {
        report.refused = Some(format!(
            "{doomed} hosts would be removed, more than max_delete = {}: removing none (a wrong view of the world looks like this; raise [sweep] max_delete if it is right)",
            sweep.max_delete
        ));
    } else if !dry_run {
        remove(&mut report, mackerel, zabbix_session.as_mut(), &env).await;
        for r in &report.rows {
            if matches!(r.done, Some(Ok(_))) {
                record.forget(&format!("{}:{}", r.host.service, r.host.id));
            }
        }
    }
    if let Some(s) = zabbix_session {
        s.close().await;
    }
    if !dry_run {
        if let Err(e) = record.save() {
            tracing::warn!(error = %e, "cannot save when hosts were first seen missing; hosts without a creation time wait longer");
        }
        if let Err(e) = alive.save() {
            tracing::warn!(error = %e, "cannot save which instances were seen alive; hosts of instances EC2 forgot are kept");
        }
    }
    report
}

async fn remove(
    report: &mut Report,
    mackerel: Option<&crate::steps::mackerel::MackerelStep>,
    mut zabbix: Option<&mut crate::steps::zabbix::Session<'_>>,
    env: &StepEnv<'_>,
) {
    let doomed = |report: &Report, s: Service| -> Vec<usize> {
        report
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.host.service == s && matches!(r.verdict, Verdict::Remove(_)))
            .map(|(i, _)| i)
            .collect()
    };
    let m = doomed(report, Service::Mackerel);
    if let (Some(step), false) = (mackerel, m.is_empty()) {
        let ids: Vec<String> = m.iter().map(|&i| report.rows[i].host.id.clone()).collect();
        let results: BTreeMap<String, Result<String, String>> = step
            .retire_hosts(env, &ids)
            .await
            .into_iter()
            .map(|(id, r)| (id, r.map_err(|e| e.to_string())))
            .collect();
        for i in m {
            let r = results
                .get(&report.rows[i].host.id)
                .cloned()
                .unwrap_or_else(|| Err("not retired".into()));
            if let Err(e) = &r {
                report.errors.push(format!(
                    "retiring Mackerel host {}: {e}",
                    report.rows[i].host.name
                ));
            }
            report.rows[i].done = Some(r);
        }
    }
    for i in doomed(report, Service::Zabbix) {
        let Some(s) = zabbix.as_deref_mut() else {
            break;
        };
        let (id, name) = (
            report.rows[i].host.id.clone(),
            report.rows[i].host.name.clone(),
        );
        let r = s.remove(&id, &name).await.map_err(|e| e.to_string());
        if let Err(e) = &r {
            report
                .errors
                .push(format!("removing Zabbix host {name}: {e}"));
        }
        report.rows[i].done = Some(r);
    }
}

fn unique(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = it.collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(created_ago: Option<u64>) -> Host {
        Host {
            service: Service::Mackerel,
            id: "h".into(),
            name: "web".into(),
            key: Key::Instance("i-0123abcd".into()),
            created: created_ago.map(|s| SystemTime::now() - Duration::from_secs(s)),
        }
    }

    #[test]
    fn verdicts() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let alive = Seen::Alive("stopped".into());
        let gone = Seen::Gone("terminated".into());
        let remove = |v: Verdict| matches!(v, Verdict::Remove(_));
        let wait = |v: Verdict| matches!(v, Verdict::Wait(_));
        // A stopped instance is alive (warm pools).
        assert!(matches!(
            decide(&host(Some(7200)), Some(&alive), now, None, true, hour),
            Verdict::Keep(_)
        ));
        assert!(remove(decide(
            &host(Some(7200)),
            Some(&gone),
            now,
            None,
            true,
            hour
        )));
        assert!(remove(decide(
            &host(None),
            Some(&gone),
            now,
            None,
            true,
            hour
        )));
        // Never a host younger than min_age, whatever EC2 says.
        assert!(wait(decide(
            &host(Some(60)),
            Some(&gone),
            now,
            None,
            true,
            hour
        )));
        assert!(wait(decide(&host(Some(60)), None, now, None, true, hour)));
        // Unknown: by the host's age, else by the first sighting.
        assert!(remove(decide(
            &host(Some(7200)),
            None,
            now,
            None,
            true,
            hour
        )));
        // Unknown and never seen alive here: another region's or account's, perhaps alive.
        assert!(matches!(
            decide(&host(Some(7200)), None, now, None, false, hour),
            Verdict::Keep(_)
        ));
        assert!(matches!(
            decide(
                &host(None),
                None,
                now,
                Some(now - Duration::from_secs(9000)),
                false,
                hour
            ),
            Verdict::Keep(_)
        ));
        assert!(wait(decide(&host(None), None, now, None, true, hour)));
        assert!(wait(decide(
            &host(None),
            None,
            now,
            Some(now - Duration::from_secs(60)),
            true,
            hour
        )));
        assert!(remove(decide(
            &host(None),
            None,
            now,
            Some(now - Duration::from_secs(3700)),
            true,
            hour
        )));
    }
}

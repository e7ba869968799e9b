//! `ecs`: drain this ECS container instance and wait until no task runs on it any more.
//!
//! The cluster and the container instance come from the ECS agent's introspection API on the box
//! (`GET /v1/metadata`; `ContainerInstanceArn` is null until the agent has registered). The
//! container instance is set `DRAINING` (`UpdateContainerInstancesState`; only from `ACTIVE`),
//! unless it drains already (ECS managed draining of a capacity provider, or an operator), and
//! the step waits until ECS lists no task on it that should run (`ListTasks` with
//! `desiredStatus = RUNNING`) **and** every task told to stop has stopped (`lastStatus`
//! `STOPPED`): a task that is stopping has `desiredStatus = STOPPED` and would otherwise be
//! missed, and `runningTasksCount + pendingTasksCount` misses DEACTIVATING, STOPPING and
//! DEPROVISIONING tasks altogether (aws/aws-cdk PR #13559). ECS stops only service tasks on
//! DRAINING (API_UpdateContainerInstancesState; container-instance-draining.html): the log names
//! the standalone tasks it keeps waiting for.
//!
//! The wait lists `desiredStatus = STOPPED` only on its first poll (tasks already stopping when
//! the step began) and on the poll that finds nothing left. In between it describes the tasks it
//! has seen, which are the only ones that can be stopping: a DRAINING container instance gets no
//! new tasks, and stopped tasks stay listed under STOPPED for about an hour, so listing them on
//! every poll cost a third of the calls for nothing. ECS throttles per account and Region
//! (request-throttling.html), and a scale-in polls from every leaving instance at once: each pause
//! is jittered, and a failed poll (throttling above all) doubles the pause up to a minute.
//!
//! An agent that refuses connections is restarting (ecs-init restarts it; a Docker restart takes
//! it down too) or is not there at all. Where an agent is expected (`agent_url` is given, or
//! `/etc/ecs/ecs.config` exists, as on the ECS-optimised AMIs), refusals are retried for
//! `agent_wait` (30 s by default) and then fail the step: the tasks may still run. Elsewhere three
//! refusals mean "no ECS agent here, nothing to drain".

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerInstanceStatus, DesiredStatus, Task};
use serde_json::Value;

use crate::config::fields::Fields;
use crate::template::{Context, RenderError, Template};

use super::api;
use super::{StepEnv, StepError};

/// The ECS agent's introspection API.
pub const DEFAULT_AGENT_URL: &str = "http://localhost:51678";
/// How often the tasks are listed while waiting.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Attempts to reach an agent that refuses connections before concluding there is none, where no
/// agent is expected.
const AGENT_ATTEMPTS: u32 = 3;
/// How long refusals are retried where an agent is expected: ecs-init restarts a stopped agent
/// within seconds, and a Docker restart takes about as long.
const DEFAULT_AGENT_WAIT: Duration = Duration::from_secs(30);
/// The ECS agent's configuration file on the ECS-optimised AMIs (ecs-init reads it).
const ECS_CONFIG: &str = "/etc/ecs/ecs.config";
/// The longest pause between polls after failed ones.
const MAX_POLL_PAUSE: Duration = Duration::from_secs(60);
/// `DescribeTasks` takes at most this many tasks (API_DescribeTasks).
const DESCRIBE_TASKS_MAX: usize = 100;

/// `kind = "ecs"`.
#[derive(Debug, Clone)]
pub struct EcsStep {
    /// The introspection API's base URL.
    pub agent_url: Template,
    /// How often to list the tasks while waiting.
    pub interval: Duration,
    /// How long to retry an agent that refuses connections; `None`: 30 s where an agent is
    /// expected (`agent_url` given, or `/etc/ecs/ecs.config` exists), else none.
    pub agent_wait: Option<Duration>,
    /// Whether `agent_url` was given (then an agent is expected).
    pub agent_url_given: bool,
}

/// What the agent says about this container instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The cluster's name (or ARN).
    pub cluster: String,
    /// The container instance ARN.
    pub arn: String,
}

/// A task ECS still counts on this container instance.
#[derive(Debug, Clone)]
struct Remaining {
    arn: String,
    /// `service:NAME` for a service's task, `family:NAME` for a standalone one.
    group: String,
    last_status: String,
    desired_status: String,
}

impl Remaining {
    fn standalone(&self) -> bool {
        !self.group.starts_with("service:")
    }

    fn short(&self) -> String {
        let id = self.arn.rsplit('/').next().unwrap_or(&self.arn);
        format!(
            "{id} ({}, {} → {})",
            self.group, self.last_status, self.desired_status
        )
    }
}

impl EcsStep {
    /// Reads `agent_url` and `interval`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let given = f.template("agent_url");
        let agent_url_given = given.is_some();
        let agent_url = given.or_else(|| Template::parse(DEFAULT_AGENT_URL).ok());
        if let Some(u) = &agent_url {
            if !(u.source().starts_with("http://") || u.source().starts_with("https://")) {
                f.problem("agent_url", "must start with http:// or https://");
            }
        }
        let interval = f.duration("interval").unwrap_or(DEFAULT_INTERVAL);
        if interval.is_zero() {
            f.problem("interval", "must be longer than 0s");
        }
        let agent_wait = f.duration("agent_wait");
        Some(Self {
            agent_url: agent_url?,
            interval,
            agent_wait,
            agent_url_given,
        })
    }

    /// How long refusals are retried, and why an agent is expected (for the error).
    fn agent_wait(&self) -> (Duration, &'static str) {
        match self.agent_wait {
            Some(w) => (w, "agent_wait"),
            None if self.agent_url_given => (DEFAULT_AGENT_WAIT, "agent_url is set"),
            None if std::path::Path::new(ECS_CONFIG).exists() => {
                (DEFAULT_AGENT_WAIT, "/etc/ecs/ecs.config exists")
            }
            None => (Duration::ZERO, ""),
        }
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        vec![&self.agent_url]
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        Ok(format!(
            "set the ECS container instance the agent at {} names to DRAINING and wait until no task runs on it",
            self.agent_url.render(ctx)?
        ))
    }

    /// Drains and waits.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let url = self.agent_url.render(env.ctx)?;
        let Some(reg) = registration(env, &url, self.agent_wait()).await? else {
            return Ok(format!(
                "the ECS agent at {url} has not registered a container instance (ContainerInstanceArn is null): nothing to drain"
            ));
        };
        let ecs = client(env.ctx, &reg).await;
        let status = status(&ecs, &reg).await?;
        let started = match status.as_str() {
            "ACTIVE" => {
                set_draining(&ecs, &reg).await?;
                tracing::info!(step = env.name, cluster = %reg.cluster, container_instance = %reg.arn, "container instance set to DRAINING; waiting for its tasks to stop");
                "set to DRAINING"
            }
            "DRAINING" => {
                tracing::info!(step = env.name, cluster = %reg.cluster, container_instance = %reg.arn, "container instance is DRAINING already (ECS managed draining, or an operator); only waiting for its tasks to stop");
                "was DRAINING already"
            }
            "INACTIVE" | "DEREGISTERING" => {
                return Ok(format!(
                    "container instance {} is {status}: deregistered, nothing to drain",
                    reg.arn
                ))
            }
            other => {
                return Err(StepError::Failed(format!(
                    "container instance {} in cluster {} is {other}; it can be set to DRAINING only from ACTIVE",
                    reg.arn, reg.cluster
                )))
            }
        };
        let mut last: Option<Vec<String>> = None;
        let mut watch = Watch::default();
        let mut failed = 0u32;
        loop {
            let left = match watch.remaining(&ecs, &reg).await {
                Ok(t) => t,
                Err(e) => {
                    let pause = poll_pause(self.interval, failed + 1);
                    if env.remaining() <= pause {
                        return Err(StepError::Failed(e));
                    }
                    failed += 1;
                    tracing::warn!(step = env.name, error = %e, pause_ms = pause.as_millis() as u64, "cannot list the container instance's tasks; trying again");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            failed = 0;
            if left.is_empty() {
                return Ok(format!(
                    "container instance {} in cluster {} {started}; no task left on it",
                    reg.arn, reg.cluster
                ));
            }
            let names: Vec<String> = left.iter().map(Remaining::short).collect();
            if last.as_ref() != Some(&names) {
                let standalone: Vec<String> = left
                    .iter()
                    .filter(|t| t.standalone())
                    .map(Remaining::short)
                    .collect();
                if standalone.is_empty() {
                    tracing::info!(
                        step = env.name,
                        tasks = left.len(),
                        "waiting for tasks to stop: {}",
                        names.join(", ")
                    );
                } else {
                    tracing::warn!(step = env.name, tasks = left.len(), standalone = standalone.len(),
                        "waiting for tasks to stop: {}; standalone tasks are not stopped by draining (only their own end, or StopTask, stops them): {}",
                        names.join(", "), standalone.join(", "));
                }
                last = Some(names.clone());
            }
            if env.remaining() <= self.interval {
                return Err(StepError::Failed(format!(
                    "container instance {} {started}, but {} task(s) still on it at the timeout: {}",
                    reg.arn,
                    names.len(),
                    names.join(", ")
                )));
            }
            tokio::time::sleep(poll_pause(self.interval, 0)).await;
        }
    }

    /// What `check` can see without changing anything.
    pub async fn check(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let url = self.agent_url.render(env.ctx)?;
        // `check` does not wait for a restarting agent; it says what it sees now.
        let Some(reg) = registration(env, &url, (Duration::ZERO, "")).await? else {
            return Ok(format!(
                "the ECS agent at {url} answers but has not registered a container instance: nothing would be drained"
            ));
        };
        let ecs = client(env.ctx, &reg).await;
        let status = status(&ecs, &reg).await?;
        let left = Watch::default()
            .remaining(&ecs, &reg)
            .await
            .map_err(StepError::Failed)?;
        Ok(format!(
            "container instance {} in cluster {} is {status}, {} task(s) on it",
            reg.arn,
            reg.cluster,
            left.len()
        ))
    }
}

/// The pause before the next poll after `failed` failed polls in a row: the interval, jittered
/// around itself (so that a fleet's polls spread), doubled per failure up to a minute.
fn poll_pause(interval: Duration, failed: u32) -> Duration {
    crate::backoff::around(crate::backoff::doubling(
        interval,
        failed,
        MAX_POLL_PAUSE.max(interval),
    ))
}

/// Reads the agent's metadata: `None` when the agent has not registered (a null ARN), or when no
/// agent answers at all where none is expected (`wait` zero: connection refused a few times).
/// Where one is expected, refusals are retried for `wait.0` and then fail the step.
async fn registration(
    env: &StepEnv<'_>,
    url: &str,
    wait: (Duration, &str),
) -> Result<Option<Registration>, StepError> {
    let (wait, why_expected) = wait;
    let mut refused_since: Option<tokio::time::Instant> = None;
    let endpoint = format!("{}/v1/metadata", url.trim_end_matches('/'));
    let shown = crate::http_client::redact(&endpoint);
    let client = crate::http_client::client().map_err(StepError::Failed)?;
    let mut attempt = 0;
    let body: Value = loop {
        attempt += 1;
        let sent = client
            .get(&endpoint)
            .timeout(env.remaining().min(crate::http_client::REQUEST_TIMEOUT))
            .send()
            .await;
        let why = match sent {
            Err(e) if e.is_connect() && wait.is_zero() && attempt >= AGENT_ATTEMPTS => {
                tracing::warn!(step = env.name, url = %shown, attempts = attempt, "no ECS agent answers here (connection refused); nothing to drain");
                return Ok(None);
            }
            Err(e) if e.is_connect() => {
                let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                if !wait.is_zero() && since.elapsed() >= wait {
                    return Err(StepError::Failed(format!(
                        "the ECS agent at {shown} refused connections for {}s ({why_expected}, so an agent is expected here): its tasks may still run; set agent_wait = \"0s\" if this host runs no ECS agent",
                        wait.as_secs()
                    )));
                }
                format!("GET {shown}: {}", crate::http_client::describe(e))
            }
            // ecs-init restarts a crashed agent within seconds: a refusal is tried again.
            Err(e) => format!("GET {shown}: {}", crate::http_client::describe(e)),
            Ok(resp) if api::transient(resp.status()) => {
                format!("GET {shown}: HTTP {}", resp.status())
            }
            Ok(resp) if !resp.status().is_success() => {
                return Err(StepError::Failed(format!(
                    "GET {shown}: HTTP {}: is agent_url the ECS agent's introspection API?",
                    resp.status()
                )))
            }
            Ok(resp) => match resp.json::<Value>().await {
                Ok(v) => break v,
                Err(e) => {
                    return Err(StepError::Failed(format!(
                        "GET {shown}: the answer is not JSON: {e}"
                    )))
                }
            },
        };
        let pause = crate::backoff::jitter(crate::http_client::backoff(attempt))
            .max(Duration::from_millis(100));
        if env.remaining() <= pause {
            return Err(StepError::Failed(format!(
                "{why} (gave up after {attempt} attempt(s))"
            )));
        }
        tracing::warn!(step = env.name, attempt, "{why}; retrying");
        tokio::time::sleep(pause).await;
    };
    parse_metadata(&body).map_err(|e| StepError::Failed(format!("GET {shown}: {e}")))
}

/// Reads `{"Cluster":…, "ContainerInstanceArn":… or null, "Version":…}` (the agent's
/// `agent/handlers/v1` metadata response).
pub fn parse_metadata(v: &Value) -> Result<Option<Registration>, String> {
    let arn = match &v["ContainerInstanceArn"] {
        Value::Null => return Ok(None),
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => s.clone(),
        _ => return Err("ContainerInstanceArn is not a string".into()),
    };
    let cluster = match &v["Cluster"] {
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return Err("a container instance ARN without a Cluster".into()),
    };
    Ok(Some(Registration { cluster, arn }))
}

/// An ECS client in the container instance's region (from its ARN), else the instance's.
async fn client(ctx: &Context, reg: &Registration) -> aws_sdk_ecs::Client {
    let region = reg
        .arn
        .split(':')
        .nth(3)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .or_else(|| ctx.values.get("region").cloned())
        .unwrap_or_default();
    aws_sdk_ecs::Client::new(&crate::aws::load(&region).await)
}

async fn status(ecs: &aws_sdk_ecs::Client, reg: &Registration) -> Result<String, StepError> {
    let out = ecs
        .describe_container_instances()
        .cluster(&reg.cluster)
        .container_instances(&reg.arn)
        .send()
        .await
        .map_err(|e| {
            StepError::Failed(format!(
                "DescribeContainerInstances {} in cluster {}: {}",
                reg.arn,
                reg.cluster,
                crate::aws::error_text(&e)
            ))
        })?;
    match out.container_instances().first() {
        Some(ci) => Ok(ci.status().unwrap_or("UNKNOWN").to_string()),
        None => Err(StepError::Failed(format!(
            "ECS does not know container instance {} in cluster {}{}",
            reg.arn,
            reg.cluster,
            failures(out.failures())
        ))),
    }
}

async fn set_draining(ecs: &aws_sdk_ecs::Client, reg: &Registration) -> Result<(), StepError> {
    let out = ecs
        .update_container_instances_state()
        .cluster(&reg.cluster)
        .container_instances(&reg.arn)
        .status(ContainerInstanceStatus::Draining)
        .send()
        .await
        .map_err(|e| {
            StepError::Failed(format!(
                "UpdateContainerInstancesState DRAINING for {}: {}",
                reg.arn,
                crate::aws::error_text(&e)
            ))
        })?;
    // The call answers 200 with per-instance `failures` (reason MISSING, …).
    if !out.failures().is_empty() {
        return Err(StepError::Failed(format!(
            "UpdateContainerInstancesState DRAINING for {} failed{}",
            reg.arn,
            failures(out.failures())
        )));
    }
    Ok(())
}

fn failures(f: &[aws_sdk_ecs::types::Failure]) -> String {
    if f.is_empty() {
        return String::new();
    }
    let all: Vec<String> = f
        .iter()
        .map(|x| {
            format!(
                "{}: {}",
                x.reason().unwrap_or("?"),
                x.detail().unwrap_or_default()
            )
        })
        .collect();
    format!(" ({})", all.join("; "))
}

/// The tasks the wait has seen and not yet seen stop.
#[derive(Debug, Default)]
struct Watch {
    /// Polls done.
    polls: u32,
    /// Tasks that were still on the container instance at the last poll.
    seen: BTreeSet<String>,
}

impl Watch {
    /// The tasks still on the container instance: those ECS wants running, and those told to
    /// stop that have not stopped yet. The first poll, and a poll that would find none left,
    /// also list the stopping ones (`desiredStatus = STOPPED`); the others describe the tasks
    /// seen before, which is where a stopping task comes from.
    async fn remaining(
        &mut self,
        ecs: &aws_sdk_ecs::Client,
        reg: &Registration,
    ) -> Result<Vec<Remaining>, String> {
        let first = self.polls == 0;
        self.polls += 1;
        let mut arns = list(ecs, reg, DesiredStatus::Running).await?;
        arns.extend(self.seen.iter().cloned());
        if first {
            arns.extend(list(ecs, reg, DesiredStatus::Stopped).await?);
        }
        let mut left = describe(ecs, reg, arns).await?;
        if left.is_empty() && !first {
            // Nothing left: confirm with the stopping ones listed, as the first poll did.
            left = describe(ecs, reg, list(ecs, reg, DesiredStatus::Stopped).await?).await?;
        }
        self.seen = left.iter().map(|r| r.arn.clone()).collect();
        Ok(left)
    }
}

/// `ListTasks` on the container instance, every page.
async fn list(
    ecs: &aws_sdk_ecs::Client,
    reg: &Registration,
    desired: DesiredStatus,
) -> Result<Vec<String>, String> {
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_tasks()
        .cluster(&reg.cluster)
        .container_instance(&reg.arn)
        .desired_status(desired.clone())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| format!("ListTasks {desired}: {}", crate::aws::error_text(&e)))?;
        arns.extend(page.task_arns().iter().cloned());
    }
    Ok(arns)
}

/// Those of `arns` that have not stopped (`DescribeTasks`, 100 at a time). A task ECS no longer
/// knows (a `failures` entry) has gone.
async fn describe(
    ecs: &aws_sdk_ecs::Client,
    reg: &Registration,
    mut arns: Vec<String>,
) -> Result<Vec<Remaining>, String> {
    arns.sort();
    arns.dedup();
    let mut by_arn: BTreeMap<String, Remaining> = BTreeMap::new();
    for chunk in arns.chunks(DESCRIBE_TASKS_MAX) {
        let out = ecs
            .describe_tasks()
            .cluster(&reg.cluster)
            .set_tasks(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| format!("DescribeTasks: {}", crate::aws::error_text(&e)))?;
        for t in out.tasks() {
            if let Some(r) = still_there(t) {
                by_arn.insert(r.arn.clone(), r);
            }
        }
    }
    Ok(by_arn.into_values().collect())
}

/// A task counts until it has stopped.
fn still_there(t: &Task) -> Option<Remaining> {
    let last = t.last_status().unwrap_or("PENDING");
    if last == "STOPPED" || last == "DELETED" {
        return None;
    }
    Some(Remaining {
        arn: t.task_arn().unwrap_or("?").to_string(),
        group: t.group().unwrap_or("?").to_string(),
        last_status: last.to_string(),
        desired_status: t.desired_status().unwrap_or("?").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_before_and_after_registration() {
        assert_eq!(
            parse_metadata(
                &json!({"Cluster":"default","ContainerInstanceArn":null,"Version":"Amazon ECS Agent - v1.80.0 (c04ef80a)"})
            ),
            Ok(None)
        );
        assert_eq!(
            parse_metadata(
                &json!({"Cluster":"web","ContainerInstanceArn":"arn:aws:ecs:us-east-1:123456789012:container-instance/web/abc","Version":"x"})
            ),
            Ok(Some(Registration {
                cluster: "web".into(),
                arn: "arn:aws:ecs:us-east-1:123456789012:container-instance/web/abc".into()
            }))
        );
        assert!(parse_metadata(&json!({"ContainerInstanceArn":"arn:x"})).is_err());
        assert!(parse_metadata(&json!({"Cluster":"c","ContainerInstanceArn":7})).is_err());
    }

    #[test]
    fn polls_spread_around_the_interval_and_back_off_after_failures() {
        let i = Duration::from_secs(4);
        let first: Vec<Duration> = (0..200).map(|_| poll_pause(i, 0)).collect();
        assert!(first
            .iter()
            .all(|d| *d >= Duration::from_secs(3) && *d <= Duration::from_secs(5)));
        let mean = first.iter().sum::<Duration>() / 200;
        assert!(
            mean > Duration::from_millis(3700) && mean < Duration::from_millis(4300),
            "{mean:?}"
        );
        assert!(first.iter().collect::<BTreeSet<_>>().len() > 20, "jittered");
        // Failures double the pause (4, 8, 16 s…) up to a minute, still jittered.
        assert!(poll_pause(i, 2) >= Duration::from_secs(12));
        assert!(poll_pause(i, 30) <= Duration::from_secs(75));
        assert!(poll_pause(i, 30) >= Duration::from_secs(45));
    }

    #[test]
    fn a_stopping_task_still_counts_and_a_stopped_one_does_not() {
        let t = |last: &str, desired: &str, group: &str| {
            Task::builder()
                .task_arn("arn:aws:ecs:r:1:task/c/0123")
                .last_status(last)
                .desired_status(desired)
                .group(group)
                .build()
        };
        let stopping = still_there(&t("RUNNING", "STOPPED", "service:web")).expect("counts");
        assert!(!stopping.standalone());
        assert_eq!(stopping.short(), "0123 (service:web, RUNNING → STOPPED)");
        assert!(still_there(&t("DEACTIVATING", "STOPPED", "service:web")).is_some());
        assert!(still_there(&t("STOPPED", "STOPPED", "service:web")).is_none());
        assert!(still_there(&t("RUNNING", "RUNNING", "family:batch"))
            .expect("counts")
            .standalone());
    }
}

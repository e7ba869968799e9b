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

use std::collections::BTreeMap;
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
/// Attempts to reach an agent that refuses connections before concluding there is none.
const AGENT_ATTEMPTS: u32 = 3;
/// `DescribeTasks` takes at most this many tasks (API_DescribeTasks).
const DESCRIBE_TASKS_MAX: usize = 100;

/// `kind = "ecs"`.
#[derive(Debug, Clone)]
pub struct EcsStep {
    /// The introspection API's base URL.
    pub agent_url: Template,
    /// How often to list the tasks while waiting.
    pub interval: Duration,
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
        let agent_url = f
            .template("agent_url")
            .or_else(|| Template::parse(DEFAULT_AGENT_URL).ok());
        if let Some(u) = &agent_url {
            if !(u.source().starts_with("http://") || u.source().starts_with("https://")) {
                f.problem("agent_url", "must start with http:// or https://");
            }
        }
        let interval = f.duration("interval").unwrap_or(DEFAULT_INTERVAL);
        if interval.is_zero() {
            f.problem("interval", "must be longer than 0s");
        }
        Some(Self {
            agent_url: agent_url?,
            interval,
        })
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
        let Some(reg) = registration(env, &url).await? else {
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
        loop {
            let left = match remaining(&ecs, &reg).await {
                Ok(t) => t,
                Err(e) if env.remaining() > self.interval => {
                    tracing::warn!(step = env.name, error = %e, "cannot list the container instance's tasks; trying again");
                    tokio::time::sleep(self.interval).await;
                    continue;
                }
                Err(e) => return Err(StepError::Failed(e)),
            };
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
            tokio::time::sleep(self.interval).await;
        }
    }

    /// What `check` can see without changing anything.
    pub async fn check(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let url = self.agent_url.render(env.ctx)?;
        let Some(reg) = registration(env, &url).await? else {
            return Ok(format!(
                "the ECS agent at {url} answers but has not registered a container instance: nothing would be drained"
            ));
        };
        let ecs = client(env.ctx, &reg).await;
        let status = status(&ecs, &reg).await?;
        let left = remaining(&ecs, &reg).await.map_err(StepError::Failed)?;
        Ok(format!(
            "container instance {} in cluster {} is {status}, {} task(s) on it",
            reg.arn,
            reg.cluster,
            left.len()
        ))
    }
}

/// Reads the agent's metadata: `None` when the agent has not registered (a null ARN), or when no
/// agent answers at all (connection refused a few times: nothing runs ECS tasks here).
async fn registration(env: &StepEnv<'_>, url: &str) -> Result<Option<Registration>, StepError> {
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
            Err(e) if e.is_connect() && attempt >= AGENT_ATTEMPTS => {
                tracing::warn!(step = env.name, url = %shown, attempts = attempt, "no ECS agent answers here (connection refused); nothing to drain");
                return Ok(None);
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
        let pause = crate::http_client::backoff(attempt);
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

/// The tasks still on the container instance: those ECS wants running, and those told to stop
/// that have not stopped yet.
async fn remaining(
    ecs: &aws_sdk_ecs::Client,
    reg: &Registration,
) -> Result<Vec<Remaining>, String> {
    let mut arns = Vec::new();
    for desired in [DesiredStatus::Running, DesiredStatus::Stopped] {
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
    }
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

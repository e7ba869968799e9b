//! `nomad`: drain this Nomad client node and wait until its work has moved away.
//!
//! As `nomad node drain -self` does (hashicorp/nomad `command/node_drain.go`): the node id comes
//! from the local agent (`GET /v1/agent/self`, `stats.client.node_id`), the drain is requested
//! with `POST /v1/node/:id/drain` (`DrainSpec { Deadline (ns), IgnoreSystemJobs }`), and the step
//! waits until the node's `DrainStrategy` is null **and** no allocation of a drained job is
//! pending or running on `GET /v1/node/:id/allocations` (the CLI's `monitorDrainAllocs`). A drain
//! canceled by someone else is a failure. System jobs are left running by default
//! (`ignore_system_jobs = true`): per-node agents such as a monitoring system job are stopped by
//! the later steps. The ACL token travels as `X-Nomad-Token` and is never logged.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::config::fields::Fields;
use crate::secret::SecretSource;
use crate::template::{Context, RenderError, Template};

use super::api::{self, Verdict};
use super::{StepEnv, StepError};

/// Where a local Nomad agent listens when `address` and `NOMAD_ADDR` say nothing.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:4646";
/// The drain's deadline, after which Nomad stops what is left on the node.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
/// The longest a blocking query waits for a change before the step looks again.
const BLOCKING_WAIT: Duration = Duration::from_secs(2);
/// An error body is quoted up to this many bytes.
const BODY_QUOTE: usize = 200;

/// `kind = "nomad"`.
#[derive(Debug, Clone)]
pub struct NomadStep {
    /// The agent's HTTP API; `None`: `NOMAD_ADDR`, else [`DEFAULT_ADDRESS`].
    pub address: Option<Template>,
    /// The ACL token, when the cluster has ACLs.
    pub token: Option<SecretSource>,
    /// The drain's deadline.
    pub deadline: Duration,
    /// Leave system jobs running.
    pub ignore_system_jobs: bool,
}

/// The local agent's HTTP API, with the token.
struct Agent<'a> {
    env: &'a StepEnv<'a>,
    base: String,
    /// The token as a sensitive header value, checked once.
    token: Option<reqwest::header::HeaderValue>,
    token_from: Option<String>,
}

/// An allocation still on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alloc {
    name: String,
    job_type: String,
    client_status: String,
}

impl NomadStep {
    /// Reads `address`, `token_file`/`token_env`, `deadline` and `ignore_system_jobs`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let address = f.template("address");
        if let Some(a) = &address {
            if !(a.source().starts_with("http://") || a.source().starts_with("https://")) {
                f.problem("address", "must start with http:// or https://");
            }
        }
        let token = SecretSource::parse(f, "token", false);
        let deadline = f.duration("deadline").unwrap_or(DEFAULT_DEADLINE);
        let ignore_system_jobs = f.opt::<bool>("ignore_system_jobs").unwrap_or(true);
        Some(Self {
            address,
            token,
            deadline,
            ignore_system_jobs,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        self.address.iter().collect()
    }

    /// The step's timeout when it sets none: the drain's deadline and a minute for Nomad to stop
    /// what the deadline leaves.
    pub fn default_timeout(&self) -> Duration {
        self.deadline + Duration::from_secs(60)
    }

    fn address(&self, ctx: &Context) -> Result<String, RenderError> {
        Ok(match &self.address {
            Some(t) => t.render(ctx)?,
            None => std::env::var("NOMAD_ADDR")
                .ok()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| DEFAULT_ADDRESS.to_string()),
        })
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        Ok(format!(
            "drain this Nomad client node through {} (deadline {}, {}) and wait until its allocations have stopped",
            crate::http_client::redact(&self.address(ctx)?),
            humantime::format_duration(self.deadline),
            if self.ignore_system_jobs {
                "system jobs keep running"
            } else {
                "system jobs too"
            }
        ))
    }

    async fn agent<'a>(&self, env: &'a StepEnv<'a>) -> Result<Agent<'a>, StepError> {
        let token = match &self.token {
            Some(s) => {
                let t = s.load().map_err(|e| StepError::Failed(e.to_string()))?;
                let mut v = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
                    StepError::Failed(format!(
                        "the token from {s} cannot be sent in a header (a control character?)"
                    ))
                })?;
                // Marked sensitive: never shown by the HTTP stack's debug output.
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Agent {
            env,
            base: self.address(env.ctx)?.trim_end_matches('/').to_string(),
            token,
            token_from: self.token.as_ref().map(ToString::to_string),
        })
    }

    /// Drains and waits.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let agent = self.agent(env).await?;
        let node = agent.node_id().await?;
        let (n, _) = agent.get(&format!("/v1/node/{node}"), None).await?;
        let ineligible = n["SchedulingEligibility"].as_str() == Some("ineligible");
        let how = if !n["DrainStrategy"].is_null() {
            tracing::info!(step = env.name, node = %node, "the node is draining already (an operator, drain_on_shutdown, or a run before a restart); waiting for it");
            "was draining already"
        } else if ineligible && n["LastDrain"]["Status"].as_str() == Some("complete") {
            tracing::info!(step = env.name, node = %node, "the node was drained before; checking that nothing runs on it");
            "was drained already"
        } else {
            let body = json!({
                "DrainSpec": {
                    "Deadline": u64::try_from(self.deadline.as_nanos()).unwrap_or(u64::MAX),
                    "IgnoreSystemJobs": self.ignore_system_jobs,
                },
                "MarkEligible": false,
                "Meta": { "message": drain_message(env.ctx) },
            });
            agent.post(&format!("/v1/node/{node}/drain"), body).await?;
            tracing::info!(step = env.name, node = %node, deadline = %humantime::format_duration(self.deadline), "drain requested; waiting for the node's allocations to stop");
            "drained"
        };
        self.wait(&agent, &node, how).await
    }

    /// Waits until the drain has ended and no drained allocation is pending or running.
    async fn wait(&self, agent: &Agent<'_>, node: &str, how: &str) -> Result<String, StepError> {
        let env = agent.env;
        let mut index = 0u64;
        let mut last: Option<Vec<Alloc>> = None;
        loop {
            let (n, _) = agent.get(&format!("/v1/node/{node}"), None).await?;
            let draining = !n["DrainStrategy"].is_null();
            if !draining && n["LastDrain"]["Status"].as_str() == Some("canceled") {
                return Err(StepError::Failed(format!(
                    "the drain of node {node} was canceled before it completed (by an operator, or `nomad node drain -disable`)"
                )));
            }
            // A blocking query must come back before the step's deadline, with room to report.
            let budget = env.remaining().saturating_sub(Duration::from_millis(500));
            let wait = BLOCKING_WAIT.min(budget);
            let (allocs, i) = agent
                .get(&format!("/v1/node/{node}/allocations"), Some((index, wait)))
                .await?;
            let changed = i != index;
            index = i;
            let left = self.active(&allocs);
            if !draining && left.is_empty() {
                return Ok(format!(
                    "node {node} {how}; no allocation of a drained job runs on it{}",
                    if self.ignore_system_jobs {
                        " (system jobs left running)"
                    } else {
                        ""
                    }
                ));
            }
            if last.as_ref() != Some(&left) {
                let names: Vec<String> = left.iter().map(Alloc::show).collect();
                tracing::info!(step = env.name, node = %node, draining, allocations = left.len(), "waiting for the drain: {}", if names.is_empty() { "(Nomad has not marked it complete yet)".to_string() } else { names.join(", ") });
                last = Some(left.clone());
            }
            if budget < Duration::from_millis(200) {
                let names: Vec<String> = left.iter().map(Alloc::show).collect();
                return Err(StepError::Failed(format!(
                    "node {node}: the drain had not completed at the step's timeout; {} allocation(s) still running: {}",
                    left.len(),
                    if names.is_empty() { "none, but the node still drains".to_string() } else { names.join(", ") }
                )));
            }
            // A blocking query that came back at once (an index change) needs no pause; a
            // server that ignores `index` must not be polled in a tight loop.
            if !changed || wait < BLOCKING_WAIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The allocations of drained jobs that are pending or running.
    fn active(&self, allocs: &Value) -> Vec<Alloc> {
        let mut out: Vec<Alloc> = allocs
            .as_array()
            .map(|a| a.iter().filter_map(alloc).collect())
            .unwrap_or_default();
        out.retain(|a| {
            matches!(a.client_status.as_str(), "pending" | "running")
                && !(self.ignore_system_jobs
                    && matches!(a.job_type.as_str(), "system" | "sysbatch"))
        });
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// What `check` can see without changing anything.
    pub async fn check(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let agent = self.agent(env).await?;
        let node = agent.node_id().await?;
        let (n, _) = agent.get(&format!("/v1/node/{node}"), None).await?;
        let (allocs, _) = agent
            .get(&format!("/v1/node/{node}/allocations"), None)
            .await?;
        Ok(format!(
            "node {node} ({}) is {}, {}, {} allocation(s) of drainable jobs running; the token's node:write permission cannot be checked without draining",
            n["Name"].as_str().unwrap_or("?"),
            n["Status"].as_str().unwrap_or("?"),
            n["SchedulingEligibility"].as_str().unwrap_or("?"),
            self.active(&allocs).len()
        ))
    }
}

impl Alloc {
    fn show(&self) -> String {
        format!("{} ({}, {})", self.name, self.job_type, self.client_status)
    }
}

/// Reads an allocation: its job's type is in the embedded `Job` (full allocations, as
/// `/v1/node/:id/allocations` returns them) or in `JobType` (allocation stubs).
fn alloc(v: &Value) -> Option<Alloc> {
    let name = v["Name"].as_str().or_else(|| v["ID"].as_str())?;
    let job_type = v["Job"]["Type"]
        .as_str()
        .or_else(|| v["JobType"].as_str())
        .unwrap_or("service");
    Some(Alloc {
        name: name.to_string(),
        job_type: job_type.to_string(),
        client_status: v["ClientStatus"].as_str().unwrap_or("pending").to_string(),
    })
}

/// What `LastDrain.Meta.message` says, for whoever looks at the node later.
fn drain_message(ctx: &Context) -> String {
    let v = |k: &str| ctx.values.get(k).map(String::as_str).unwrap_or("?");
    format!(
        "lastcall: instance {} is leaving Auto Scaling group {} (hook {})",
        v("instance_id"),
        v("asg_name"),
        v("hook_name")
    )
}

impl Agent<'_> {
    /// `stats.client.node_id` of the local agent.
    async fn node_id(&self) -> Result<String, StepError> {
        let (v, _) = self.get("/v1/agent/self", None).await?;
        match v["stats"]["client"]["node_id"].as_str() {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(StepError::Failed(format!(
                "the Nomad agent at {} runs no client (no stats.client.node_id): is address this instance's own agent?",
                crate::http_client::redact(&self.base)
            ))),
        }
    }

    /// A GET, optionally a blocking query (`index`, `wait`); returns the body and `X-Nomad-Index`.
    async fn get(
        &self,
        path: &str,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(Value, u64), StepError> {
        let mut query = Vec::new();
        if let Some((index, wait)) = blocking.filter(|(i, _)| *i > 0) {
            query.push(("index", index.to_string()));
            query.push(("wait", format!("{}ms", wait.as_millis())));
        }
        self.call(Method::GET, path, &query, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, StepError> {
        Ok(self.call(Method::POST, path, &[], Some(body)).await?.0)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<(Value, u64), StepError> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {}", crate::http_client::redact(&url));
        api::send(
            self.env,
            &what,
            |c| {
                let mut r = c.request(method.clone(), &url).query(query);
                if let Some(t) = &self.token {
                    r = r.header("X-Nomad-Token", t.clone());
                }
                if let Some(b) = &body {
                    r = r.json(b);
                }
                r
            },
            |resp| {
                let what = what.clone();
                async move { self.judge(&what, resp).await }
            },
        )
        .await
    }

    async fn judge(&self, what: &str, resp: reqwest::Response) -> Verdict<(Value, u64), StepError> {
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if api::transient(status) {
            return Verdict::Retry {
                why: format!("{what}: HTTP {status}"),
                after: api::retry_after_header(&resp),
            };
        }
        if status == StatusCode::FORBIDDEN {
            let why = match &self.token_from {
                Some(from) => format!("the token from {from} was refused"),
                None => "no token is configured (token_file or token_env) and the cluster has ACLs"
                    .to_string(),
            };
            return Verdict::Fail(StepError::Failed(format!(
                "{what}: HTTP 403 Permission denied: {why}; the step needs agent:read, node:read and node:write"
            )));
        }
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let mut quoted = text.trim().to_string();
            if quoted.len() > BODY_QUOTE {
                let mut cut = BODY_QUOTE;
                while !quoted.is_char_boundary(cut) {
                    cut -= 1;
                }
                quoted.truncate(cut);
                quoted.push('…');
            }
            return Verdict::Fail(StepError::Failed(format!(
                "{what}: HTTP {status}: {quoted}"
            )));
        }
        match serde_json::from_str(&text) {
            Ok(v) => Verdict::Done((v, index)),
            Err(e) => Verdict::Fail(StepError::Failed(format!(
                "{what}: the answer is not JSON ({e}): is address a Nomad agent?"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(ignore: bool) -> NomadStep {
        NomadStep {
            address: None,
            token: None,
            deadline: DEFAULT_DEADLINE,
            ignore_system_jobs: ignore,
        }
    }

    #[test]
    fn only_pending_or_running_allocations_of_drained_jobs_count() {
        let allocs = serde_json::json!([
            {"ID":"1","Name":"web.web[0]","ClientStatus":"running","Job":{"Type":"service"}},
            {"ID":"2","Name":"agent.agent[0]","ClientStatus":"running","Job":{"Type":"system"}},
            {"ID":"3","Name":"old.old[0]","ClientStatus":"complete","Job":{"Type":"service"}},
            {"ID":"4","Name":"etl.etl[0]","ClientStatus":"pending","JobType":"batch"},
            {"ID":"5","Name":"gone.gone[0]","ClientStatus":"lost","Job":{"Type":"batch"}}
        ]);
        let names = |s: &NomadStep| -> Vec<String> {
            s.active(&allocs).into_iter().map(|a| a.name).collect()
        };
        assert_eq!(names(&step(true)), ["etl.etl[0]", "web.web[0]"]);
        assert_eq!(
            names(&step(false)),
            ["agent.agent[0]", "etl.etl[0]", "web.web[0]"]
        );
    }
}

//! `mackerel`: retire this host in Mackerel, so that it disappears from monitoring before the
//! instance does. The host id comes from mackerel-agent's id file, else from the custom
//! identifier EC2 hosts are registered with (`<instance-id>.ec2.amazonaws.com`). Already retired
//! or absent is success; 5xx and 429 are retried within the timeout; 401/403 are reported.

use reqwest::StatusCode;
use serde_json::Value;

use crate::config::fields::Fields;
use crate::secret::{Secret, SecretSource};
use crate::template::{Context, RenderError, Template};

use super::api::{self, Verdict};
use super::{StepEnv, StepError};

/// The public API.
pub const DEFAULT_API_BASE: &str = "https://api.mackerelio.com";
/// mackerel-agent's id file.
pub const DEFAULT_HOST_ID_FILE: &str = "/var/lib/mackerel-agent/id";
/// How mackerel-agent identifies an EC2 host.
pub const DEFAULT_CUSTOM_IDENTIFIER: &str = "{instance_id}.ec2.amazonaws.com";
/// `POST /api/v0/hosts/bulk-retire` takes at most this many ids.
const BULK_RETIRE_MAX: usize = 30;

/// `kind = "mackerel"`.
#[derive(Debug, Clone)]
pub struct MackerelStep {
    /// The API key (read+write).
    pub api_key: SecretSource,
    /// The API's base URL.
    pub api_base: Template,
    /// mackerel-agent's id file.
    pub host_id_file: Template,
    /// The custom identifier to look the host up by.
    pub custom_identifier: Template,
}

/// The API as one step run uses it: the key and the base URL, loaded once.
struct Conn<'a> {
    env: &'a StepEnv<'a>,
    key: Secret,
    base: String,
}

/// An API answer that ends the step.
enum Answer {
    Ok(Value),
    NotFound,
}

impl MackerelStep {
    /// Reads `api_key_file`/`api_key_env`, `api_base`, `host_id_file`, `custom_identifier`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let api_key = SecretSource::parse(f, "api_key", true);
        let api_base = f
            .template("api_base")
            .or_else(|| Template::parse(DEFAULT_API_BASE).ok());
        if let Some(b) = &api_base {
            if !(b.source().starts_with("https://") || b.source().starts_with("http://")) {
                f.problem("api_base", "must start with https:// or http://");
            }
        }
        let host_id_file = f
            .template("host_id_file")
            .or_else(|| Template::parse(DEFAULT_HOST_ID_FILE).ok());
        let custom_identifier = f
            .template("custom_identifier")
            .or_else(|| Template::parse(DEFAULT_CUSTOM_IDENTIFIER).ok());
        Some(Self {
            api_key: api_key?,
            api_base: api_base?,
            host_id_file: host_id_file?,
            custom_identifier: custom_identifier?,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        vec![&self.api_base, &self.host_id_file, &self.custom_identifier]
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        Ok(format!(
            "retire the Mackerel host in {} (else the one with custom identifier {}) at {}",
            self.host_id_file.render(ctx)?,
            self.custom_identifier.render(ctx)?,
            self.api_base.render(ctx)?
        ))
    }

    /// Retires the host.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let conn = self.conn(env)?;
        let ci = self.custom_identifier.render(env.ctx)?;
        let id_file = self.host_id_file.render(env.ctx)?;
        let from_file = match std::fs::read_to_string(&id_file) {
            Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => None,
        };
        // The id file is mackerel-agent's own record, but a baked image can carry another
        // machine's, and an agent that registered again leaves a stale one: whenever it does not
        // name this instance's live host, the host is found by its custom identifier instead.
        let mut host_id = None;
        if let Some(id) = from_file {
            if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                tracing::warn!(step = env.name, file = %id_file, "the id file does not hold a Mackerel host id; looking the host up by its custom identifier");
            } else {
                match self
                    .call(
                        &conn,
                        reqwest::Method::GET,
                        &["api", "v0", "hosts", &id],
                        &[],
                        None,
                    )
                    .await?
                {
                    Answer::NotFound => {
                        tracing::warn!(step = env.name, file = %id_file, host = %id, "the id file names a host Mackerel does not know; looking the host up by its custom identifier");
                    }
                    Answer::Ok(v) => {
                        let theirs = v["host"]["customIdentifier"].as_str().unwrap_or_default();
                        if !theirs.is_empty() && theirs != ci {
                            tracing::warn!(step = env.name, file = %id_file, host = %id, theirs, ours = %ci,
                                "the id file names another instance's host (a baked image?); not retiring it, looking this instance's host up by its custom identifier");
                        } else if v["host"]["isRetired"].as_bool() == Some(true) {
                            return Ok(format!("host {id} is retired already"));
                        } else {
                            host_id = Some(id);
                        }
                    }
                }
            }
        }
        let host_id = match host_id {
            Some(id) => id,
            None => match self
                .call(&conn, reqwest::Method::GET, &["api", "v0", "hosts-by-custom-identifier", &ci], &[], None)
                .await?
            {
                Answer::NotFound => {
                    return Ok(format!("no Mackerel host with custom identifier {ci} (retired already, or never registered)"))
                }
                Answer::Ok(v) => match v["host"]["id"].as_str() {
                    Some(id) => id.to_string(),
                    None => return Err(StepError::Failed("hosts-by-custom-identifier answered without a host id".into())),
                },
            },
        };
        match self
            .call(
                &conn,
                reqwest::Method::POST,
                &["api", "v0", "hosts", &host_id, "retire"],
                &[],
                Some(serde_json::json!({})),
            )
            .await?
        {
            Answer::Ok(_) => Ok(format!("retired Mackerel host {host_id}")),
            Answer::NotFound => Ok(format!("Mackerel host {host_id} is retired already")),
        }
    }

    /// For `lastcall check`: the key is accepted (a read-only call).
    pub async fn check(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let conn = self.conn(env)?;
        match self
            .call(
                &conn,
                reqwest::Method::GET,
                &["api", "v0", "org"],
                &[],
                None,
            )
            .await?
        {
            Answer::Ok(v) => Ok(format!(
                "key from {} accepted by {} (organization {})",
                self.api_key,
                crate::http_client::redact(&conn.base),
                v["name"].as_str().unwrap_or("?")
            )),
            Answer::NotFound => Err(StepError::Failed(format!(
                "{} has no /api/v0/org: is api_base right?",
                crate::http_client::redact(&conn.base)
            ))),
        }
    }

    /// The hosts of a service (and role), whatever their status (for `lastcall sweep`).
    pub async fn list_hosts(
        &self,
        env: &StepEnv<'_>,
        service: &str,
        role: Option<&str>,
    ) -> Result<Vec<Value>, StepError> {
        let conn = self.conn(env)?;
        // Without `status` the API lists only working and standby hosts; a dead instance's host
        // may have been put in maintenance or poweroff.
        let mut query = vec![("service", service)];
        if let Some(r) = role {
            query.push(("role", r));
        }
        for s in ["working", "standby", "maintenance", "poweroff"] {
            query.push(("status", s));
        }
        match self
            .call(
                &conn,
                reqwest::Method::GET,
                &["api", "v0", "hosts"],
                &query,
                None,
            )
            .await?
        {
            Answer::Ok(v) => match v["hosts"].as_array() {
                Some(hosts) => Ok(hosts.clone()),
                None => Err(StepError::Failed(
                    "GET /api/v0/hosts answered without hosts".into(),
                )),
            },
            Answer::NotFound => Err(StepError::Failed(format!(
                "{} has no /api/v0/hosts: is api_base right?",
                crate::http_client::redact(&conn.base)
            ))),
        }
    }

    /// Retires hosts by id (for `lastcall sweep`): in bulk, 30 at a time (the API's limit), and
    /// one by one when a bulk call refuses (it is all-or-nothing, and a host retired meanwhile by
    /// another sweeper makes it 404). Returns each id with what happened.
    pub async fn retire_hosts(
        &self,
        env: &StepEnv<'_>,
        ids: &[String],
    ) -> Vec<(String, Result<String, StepError>)> {
        let conn = match self.conn(env) {
            Ok(c) => c,
            Err(e) => {
                let e = e.to_string();
                return ids
                    .iter()
                    .map(|i| (i.clone(), Err(StepError::Failed(e.clone()))))
                    .collect();
            }
        };
        let mut out = Vec::new();
        for chunk in ids.chunks(BULK_RETIRE_MAX) {
            let bulk = self
                .call(
                    &conn,
                    reqwest::Method::POST,
                    &["api", "v0", "hosts", "bulk-retire"],
                    &[],
                    Some(serde_json::json!({ "ids": chunk })),
                )
                .await;
            if let Ok(Answer::Ok(_)) = bulk {
                out.extend(
                    chunk
                        .iter()
                        .map(|i| (i.clone(), Ok(format!("retired Mackerel host {i}")))),
                );
                continue;
            }
            for id in chunk {
                let one = self
                    .call(
                        &conn,
                        reqwest::Method::POST,
                        &["api", "v0", "hosts", id, "retire"],
                        &[],
                        Some(serde_json::json!({})),
                    )
                    .await
                    .map(|a| match a {
                        Answer::Ok(_) => format!("retired Mackerel host {id}"),
                        Answer::NotFound => format!("Mackerel host {id} is retired already"),
                    });
                out.push((id.clone(), one));
            }
        }
        out
    }

    /// The key (read now) and the base URL for one run.
    fn conn<'a>(&self, env: &'a StepEnv<'a>) -> Result<Conn<'a>, StepError> {
        let key = self
            .api_key
            .load()
            .map_err(|e| StepError::Failed(e.to_string()))?;
        let base = self.api_base.render(env.ctx)?;
        Ok(Conn { env, key, base })
    }

    /// One API call, with retries for 5xx, 429 and network errors until the deadline.
    async fn call(
        &self,
        conn: &Conn<'_>,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Answer, StepError> {
        let (env, key, base) = (conn.env, &conn.key, conn.base.as_str());
        let mut url = reqwest::Url::parse(base).map_err(|e| {
            StepError::Failed(format!(
                "api_base {}: {e}",
                crate::http_client::redact(base)
            ))
        })?;
        url.path_segments_mut()
            .map_err(|_| {
                StepError::Failed(format!(
                    "api_base {} cannot take a path",
                    crate::http_client::redact(base)
                ))
            })?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let what = format!("{method} {}", url.path());
        let mut key = reqwest::header::HeaderValue::from_str(key.expose()).map_err(|_| {
            StepError::Failed(format!(
                "the API key from {} cannot be sent in a header",
                self.api_key
            ))
        })?;
        key.set_sensitive(true);
        let build = |c: &reqwest::Client| {
            let req = c
                .request(method.clone(), url.clone())
                .header("X-Api-Key", key.clone());
            match &body {
                Some(b) => req.json(b),
                None => req,
            }
        };
        let what = what.as_str();
        api::send(env, what, build, |resp| async move {
            let status = resp.status();
            let after = api::retry_after_header(&resp);
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let fail = |m: String| Verdict::Fail(StepError::Failed(m));
            match status {
                s if s.is_success() => {
                    Verdict::Done(Answer::Ok(serde_json::from_str(&text).unwrap_or(Value::Null)))
                }
                StatusCode::NOT_FOUND => Verdict::Done(Answer::NotFound),
                StatusCode::UNAUTHORIZED => fail(format!(
                    "{what}: Mackerel refused the API key from {} (401: {message})",
                    self.api_key
                )),
                StatusCode::FORBIDDEN => fail(format!(
                    "{what}: forbidden (403: {message}); retiring needs an API key with write permission, and the organisation may restrict IP addresses"
                )),
                s if api::transient(s) => Verdict::Retry {
                    why: format!("{what}: {} {message}", s.as_u16()),
                    after,
                },
                s => fail(format!("{what}: {} {message}", s.as_u16())),
            }
        })
        .await
    }
}

//! `http`: one HTTP request (a webhook, a chat notification, a load balancer's or a monitoring
//! system's API). Placeholders in the URL, headers and body; secret header values and a secret
//! URL come from files or the environment; 5xx, 429 and connection errors are retried with
//! backoff within the step's timeout.

use std::collections::BTreeMap;

use reqwest::Method;

use crate::config::fields::Fields;
use crate::secret::SecretSource;
use crate::template::{Context, RenderError, Template};

use super::api::{self, Verdict};
use super::{StepEnv, StepError};

/// The URL: text with placeholders, or a secret (a webhook URL often is one).
#[derive(Debug, Clone)]
pub enum Url {
    /// Shown in logs.
    Text(Template),
    /// Never shown.
    Secret(SecretSource),
}

/// A header value.
#[derive(Debug, Clone)]
pub enum HeaderValue {
    /// Text with placeholders.
    Text(Template),
    /// A secret, with an optional prefix such as `"Bearer "`.
    Secret {
        /// Where it comes from.
        source: SecretSource,
        /// Put before it.
        prefix: String,
    },
}

/// `kind = "http"`.
#[derive(Debug, Clone)]
pub struct HttpStep {
    /// GET, POST, PUT, PATCH, DELETE.
    pub method: Method,
    /// Where to.
    pub url: Url,
    /// Request headers.
    pub headers: BTreeMap<String, HeaderValue>,
    /// Request body.
    pub body: Option<Template>,
    /// Accepted statuses (default: any 2xx).
    pub expect_status: Option<Vec<u16>>,
}

impl HttpStep {
    /// Reads `method`, `url`/`url_file`/`url_env`, `headers`, `body`, `expect_status`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let method = match f
            .opt::<String>("method")
            .as_deref()
            .map(str::to_ascii_uppercase)
        {
            None => Some(Method::POST),
            Some(m) if ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&m.as_str()) => {
                Method::from_bytes(m.as_bytes()).ok()
            }
            Some(m) => {
                f.problem(
                    "method",
                    format!("{m:?} is not one of GET, POST, PUT, PATCH, DELETE, HEAD"),
                );
                None
            }
        };
        let url = if f.has("url") {
            let t = f.template("url");
            if let Some(t) = &t {
                let s = t.source();
                if !(s.starts_with("https://") || s.starts_with("http://")) {
                    f.problem("url", "must start with https:// or http://");
                }
            }
            for k in ["url_file", "url_env"] {
                if f.has(k) {
                    let _: Option<toml::Value> = f.opt(k);
                    f.problem(
                        k,
                        "give either url or a secret url (url_file / url_env), not both",
                    );
                }
            }
            t.map(Url::Text)
        } else {
            let s = SecretSource::parse_prefixed(f, "url");
            if s.is_none() && !f.has("url_file") && !f.has("url_env") {
                f.problem(
                    "url",
                    "is required (or url_file / url_env when the URL is a secret)",
                );
            }
            s.map(Url::Secret)
        };
        let mut headers = BTreeMap::new();
        if let Some(raw) = f.opt::<BTreeMap<String, toml::Value>>("headers") {
            for (name, v) in raw {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    f.problem(&format!("headers.{name}"), "is not a valid header name");
                    continue;
                }
                let key = format!("headers.{name}");
                match v {
                    toml::Value::String(s) => match Template::parse(&s) {
                        Ok(t) => {
                            headers.insert(name, HeaderValue::Text(t));
                        }
                        Err(e) => f.problem(&key, e.to_string()),
                    },
                    toml::Value::Table(t) => {
                        let prefix = t
                            .get("prefix")
                            .and_then(|p| p.as_str())
                            .unwrap_or("")
                            .to_string();
                        let source = match (
                            t.get("file").and_then(|x| x.as_str()),
                            t.get("env").and_then(|x| x.as_str()),
                        ) {
                            (Some(p), None) => {
                                Some(SecretSource::checked_file(f, &format!("{key}.file"), p))
                            }
                            (None, Some(e)) => Some(SecretSource::Env(e.into())),
                            _ => None,
                        };
                        let unknown: Vec<_> = t
                            .keys()
                            .filter(|k| !["file", "env", "prefix"].contains(&k.as_str()))
                            .cloned()
                            .collect();
                        match source {
                            Some(source) if unknown.is_empty() => {
                                headers.insert(name, HeaderValue::Secret { source, prefix });
                            }
                            _ => f.problem(&key, "a secret header is { file = \"/path\" } or { env = \"VAR\" }, with an optional prefix = \"Bearer \""),
                        }
                    }
                    _ => f.problem(
                        &key,
                        "must be a string or { file = …, prefix = … } / { env = …, prefix = … }",
                    ),
                }
            }
        }
        let body = f.template("body");
        let expect_status = match f.opt::<toml::Value>("expect_status") {
            None => None,
            Some(toml::Value::Integer(i)) => Some(vec![i]),
            Some(toml::Value::Array(a)) => Some(a.iter().filter_map(|v| v.as_integer()).collect()),
            Some(_) => {
                f.problem(
                    "expect_status",
                    "must be a status like 204 or a list like [200, 204]",
                );
                None
            }
        }
        .map(|v: Vec<i64>| {
            v.into_iter()
                .filter_map(|i| u16::try_from(i).ok().filter(|s| (100..600).contains(s)))
                .collect::<Vec<u16>>()
        });
        if expect_status.as_ref().is_some_and(|v| v.is_empty()) {
            f.problem("expect_status", "must hold HTTP statuses from 100 to 599");
        }
        Some(Self {
            method: method?,
            url: url?,
            headers,
            body,
            expect_status,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        let mut v: Vec<&Template> = self
            .headers
            .values()
            .filter_map(|h| match h {
                HeaderValue::Text(t) => Some(t),
                HeaderValue::Secret { .. } => None,
            })
            .collect();
        if let Url::Text(t) = &self.url {
            v.push(t);
        }
        v.extend(self.body.iter());
        v
    }

    fn shown_url(&self, ctx: &Context) -> Result<String, RenderError> {
        Ok(match &self.url {
            Url::Text(t) => crate::http_client::redact(&t.render(ctx)?),
            Url::Secret(s) => format!("<URL from {s}>"),
        })
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        Ok(format!("{} {}", self.method, self.shown_url(ctx)?))
    }

    fn accepted(&self, status: u16) -> bool {
        match &self.expect_status {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        }
    }

    /// Sends the request, retrying what is worth retrying until shortly before the deadline.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let shown = self.shown_url(env.ctx)?;
        let url = match &self.url {
            Url::Text(t) => t.render(env.ctx)?,
            Url::Secret(s) => s
                .load()
                .map_err(|e| StepError::Failed(e.to_string()))?
                .expose()
                .to_string(),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, v) in &self.headers {
            let value = match v {
                HeaderValue::Text(t) => t.render(env.ctx)?,
                HeaderValue::Secret { source, prefix } => {
                    format!(
                        "{prefix}{}",
                        source
                            .load()
                            .map_err(|e| StepError::Failed(e.to_string()))?
                            .expose()
                    )
                }
            };
            let mut hv = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                StepError::Failed(format!("header {name} has a value that cannot be sent"))
            })?;
            hv.set_sensitive(matches!(v, HeaderValue::Secret { .. }));
            let hn = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| StepError::Failed(format!("{name} is not a header name")))?;
            headers.insert(hn, hv);
        }
        let body = self.body.as_ref().map(|b| b.render(env.ctx)).transpose()?;
        let what = format!("{} {shown}", self.method);
        let build = |c: &reqwest::Client| {
            let req = c
                .request(self.method.clone(), &url)
                .headers(headers.clone());
            match &body {
                Some(b) => req.body(b.clone()),
                None => req,
            }
        };
        let what = what.as_str();
        api::send(env, what, build, |resp| async move {
            let status = resp.status();
            if self.accepted(status.as_u16()) {
                return Verdict::Done(format!("{what}: {}", status.as_u16()));
            }
            let after = api::retry_after_header(&resp);
            let text = resp.text().await.unwrap_or_default();
            let snippet: String = text.chars().take(200).collect();
            let why = format!("{what} answered {}: {}", status.as_u16(), snippet.trim());
            if api::transient(status) {
                Verdict::Retry { why, after }
            } else {
                Verdict::Fail(StepError::Failed(why))
            }
        })
        .await
    }
}

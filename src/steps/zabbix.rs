//! `zabbix`: delete (or disable) this host in Zabbix through its JSON-RPC API, so that it
//! disappears from monitoring before the instance does.
//!
//! The API's version is read first (`apiinfo.version`, without auth) and decides the rest: API
//! tokens need 5.4; `user.login` takes `username` from 5.4 (`user` before); the session or token
//! travels in the body's `auth` before 6.4 and in `Authorization: Bearer` from 6.4 (7.2 refuses
//! the body field). A host that is already gone is success. An authentication failure is not
//! retried: Zabbix blocks an account after five failed logins.

use serde_json::{json, Value};

use crate::config::fields::Fields;
use crate::secret::{Secret, SecretSource};
use crate::template::{Context, RenderError, Template};

use super::api::{self, Verdict};
use super::{StepEnv, StepError};

/// What identifies the host.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The technical name (`host`), as the agent's `Hostname`.
    Host(Template),
    /// The visible name.
    Name(Template),
    /// An interface address.
    Ip(Template),
}

/// How to authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    /// An API token (Zabbix 5.4+).
    Token(SecretSource),
    /// A user and password, through `user.login` (the session is logged out afterwards).
    Password {
        /// The user.
        username: Template,
        /// The password.
        password: SecretSource,
    },
}

/// `kind = "zabbix"`.
#[derive(Debug, Clone)]
pub struct ZabbixStep {
    /// `…/api_jsonrpc.php`.
    pub url: Template,
    /// Credentials.
    pub auth: Auth,
    /// Which host.
    pub lookup: Lookup,
    /// Delete it (default) or only disable it.
    pub disable: bool,
}

/// A failed API call.
#[derive(Debug)]
enum RpcError {
    /// The API answered with a JSON-RPC error.
    Api {
        code: i64,
        message: String,
        data: String,
    },
    /// No usable answer (network, HTTP status, not JSON); worth retrying.
    Transport(String),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api {
                code,
                message,
                data,
            } => write!(f, "{message} {data} (code {code})"),
            Self::Transport(s) => f.write_str(s),
        }
    }
}

impl From<String> for RpcError {
    fn from(s: String) -> Self {
        Self::Transport(s)
    }
}

impl RpcError {
    fn is_auth(&self) -> bool {
        matches!(self, Self::Api { data, .. } if ["Not authorized", "Not authorised", "Session terminated", "API token expired", "Incorrect user name or password", "account is temporarily blocked"].iter().any(|n| data.contains(n)))
    }
    fn is_absent(&self) -> bool {
        matches!(self, Self::Api { code: -32500, data, .. } if data.contains("No permissions to referred object or it does not exist"))
    }
}

/// A JSON-RPC session with one Zabbix API.
struct Rpc<'a> {
    env: &'a StepEnv<'a>,
    url: String,
    version: (u32, u32),
    auth: Option<String>,
    id: u64,
}

impl<'a> Rpc<'a> {
    async fn call(&mut self, method: &str, params: Value, authed: bool) -> Result<Value, RpcError> {
        self.id += 1;
        let mut body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": self.id});
        let mut bearer = None;
        if let (true, Some(token)) = (authed, &self.auth) {
            if self.version >= (6, 4) {
                let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| {
                        RpcError::from("the token cannot be sent in a header".to_string())
                    })?;
                v.set_sensitive(true);
                bearer = Some(v);
            } else {
                body["auth"] = json!(token);
            }
        }
        let build = |c: &reqwest::Client| {
            let mut req = c
                .post(&self.url)
                .header("Content-Type", "application/json-rpc");
            if let Some(v) = &bearer {
                req = req.header(reqwest::header::AUTHORIZATION, v.clone());
            }
            req.json(&body)
        };
        api::send(self.env, method, build, |resp| async move {
            if resp.status().is_redirection() {
                return Verdict::Fail(RpcError::Transport(format!(
                    "{method}: HTTP {}: the API redirects to another host, which lastcall does not follow with the credentials; set url to where it points",
                    resp.status()
                )));
            }
            if !resp.status().is_success() {
                return Verdict::Retry {
                    why: format!("{method}: HTTP {}", resp.status()),
                    after: api::retry_after_header(&resp),
                };
            }
            match resp.json::<Value>().await {
                Ok(v) => match v.get("error") {
                    Some(e) => Verdict::Fail(RpcError::Api {
                        code: e["code"].as_i64().unwrap_or(0),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                        data: e["data"].as_str().unwrap_or_default().to_string(),
                    }),
                    None => Verdict::Done(v.get("result").cloned().unwrap_or(Value::Null)),
                },
                Err(e) => Verdict::Retry {
                    why: format!(
                        "{method}: the answer is not JSON-RPC: {}",
                        crate::http_client::describe(e)
                    ),
                    after: None,
                },
            }
        })
        .await
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl ZabbixStep {
    /// Reads `url`, `token_file`/`token_env` or `username` + `password_file`/`password_env`,
    /// `host`/`visible_name`/`ip`, `action`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let url = f.req_template("url");
        if let Some(u) = &url {
            if !(u.source().starts_with("https://") || u.source().starts_with("http://")) {
                f.problem(
                    "url",
                    "must be the API's URL, like https://zabbix.example.com/api_jsonrpc.php",
                );
            }
        }
        let has_token = f.has("token_file") || f.has("token_env") || f.has("token");
        let auth = if has_token {
            if f.has("username") {
                let _: Option<toml::Value> = f.opt("username");
                f.problem(
                    "username",
                    "give either an API token or username + password, not both",
                );
            }
            SecretSource::parse(f, "token", true).map(Auth::Token)
        } else if f.has("username") {
            let username = f.req_template("username");
            let password = SecretSource::parse(f, "password", true);
            match (username, password) {
                (Some(username), Some(password)) => Some(Auth::Password { username, password }),
                _ => None,
            }
        } else {
            f.problem("token_file", "credentials are required: token_file / token_env (Zabbix 5.4+), or username with password_file / password_env");
            let _ = SecretSource::parse(f, "password", false);
            None
        };
        // The visible name is `visible_name`: `name` is every step's own name.
        let given: Vec<&str> = ["host", "visible_name", "ip"]
            .into_iter()
            .filter(|k| f.has(k))
            .collect();
        let lookup = match given.as_slice() {
            [] => Template::parse("{hostname}").ok().map(Lookup::Host),
            ["host"] => f.template("host").map(Lookup::Host),
            ["visible_name"] => f.template("visible_name").map(Lookup::Name),
            ["ip"] => f.template("ip").map(Lookup::Ip),
            _ => {
                for k in &given {
                    let _: Option<toml::Value> = f.opt(k);
                }
                f.problem(given[1], "give one of host, visible_name or ip");
                None
            }
        };
        let disable = match f.opt::<String>("action").as_deref() {
            None | Some("delete") => false,
            Some("disable") => true,
            Some(other) => {
                f.problem(
                    "action",
                    format!("{other:?} is not \"delete\" or \"disable\""),
                );
                false
            }
        };
        Some(Self {
            url: url?,
            auth: auth?,
            lookup: lookup?,
            disable,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        let mut v = vec![&self.url];
        match &self.lookup {
            Lookup::Host(t) | Lookup::Name(t) | Lookup::Ip(t) => v.push(t),
        }
        if let Auth::Password { username, .. } = &self.auth {
            v.push(username);
        }
        v
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        let (by, value) = match &self.lookup {
            Lookup::Host(t) => ("host", t.render(ctx)?),
            Lookup::Name(t) => ("visible name", t.render(ctx)?),
            Lookup::Ip(t) => ("ip", t.render(ctx)?),
        };
        Ok(format!(
            "{} the Zabbix host with {by} {value} at {}",
            if self.disable { "disable" } else { "delete" },
            self.url.render(ctx)?
        ))
    }

    /// Logs in as configured; returns the session (or token) and whether it is a session to log
    /// out. Also used by `lastcall check`.
    async fn login(&self, rpc: &mut Rpc<'_>) -> Result<(String, bool), StepError> {
        match &self.auth {
            Auth::Token(src) => {
                if rpc.version < (5, 4) {
                    return Err(StepError::Failed(format!(
                        "Zabbix {}.{} does not accept API tokens (5.4 or later does); use username and password_file",
                        rpc.version.0, rpc.version.1
                    )));
                }
                let t: Secret = src.load().map_err(|e| StepError::Failed(e.to_string()))?;
                Ok((t.expose().to_string(), false))
            }
            Auth::Password { username, password } => {
                let user = username.render(rpc.env.ctx)?;
                let pw = password
                    .load()
                    .map_err(|e| StepError::Failed(e.to_string()))?;
                let key = if rpc.version >= (5, 4) {
                    "username"
                } else {
                    "user"
                };
                match rpc.call("user.login", json!({ key: user, "password": pw.expose() }), false).await {
                    Ok(Value::String(session)) => Ok((session, true)),
                    Ok(other) => Err(StepError::Failed(format!("user.login answered {other} instead of a session"))),
                    Err(e @ RpcError::Api { .. }) => Err(StepError::Failed(format!(
                        "Zabbix login as {user} failed, not retrying (Zabbix blocks an account after repeated failures): {e}"
                    ))),
                    Err(e) => Err(StepError::Failed(format!("user.login: {e}"))),
                }
            }
        }
    }

    async fn connect<'a>(&self, env: &'a StepEnv<'a>) -> Result<(Rpc<'a>, bool), StepError> {
        // A missing secret is found before any network wait.
        match &self.auth {
            Auth::Token(src) | Auth::Password { password: src, .. } => {
                src.load().map_err(|e| StepError::Failed(e.to_string()))?;
            }
        }
        let url = self.url.render(env.ctx)?;
        let mut rpc = Rpc {
            env,
            url,
            version: (0, 0),
            auth: None,
            id: 0,
        };
        let version = match rpc.call("apiinfo.version", json!({}), false).await {
            Ok(Value::String(v)) => v,
            Ok(other) => {
                return Err(StepError::Failed(format!(
                    "apiinfo.version answered {other}"
                )))
            }
            Err(e) => {
                return Err(StepError::Failed(format!(
                    "cannot reach the Zabbix API at {}: {e}",
                    crate::http_client::redact(&rpc.url)
                )))
            }
        };
        rpc.version = parse_version(&version)
            .ok_or_else(|| StepError::Failed(format!("unexpected Zabbix version {version:?}")))?;
        let (auth, session) = self.login(&mut rpc).await?;
        rpc.auth = Some(auth);
        Ok((rpc, session))
    }

    /// Finds and deletes (or disables) the host.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let (mut rpc, session) = self.connect(env).await?;
        let result = self.act(&mut rpc).await;
        if session {
            // A session left open counts against the user's sessions until it expires.
            if let Err(e) = rpc.call("user.logout", json!([]), true).await {
                tracing::warn!(step = env.name, error = %e, "Zabbix logout failed");
            }
        }
        result
    }

    async fn act(&self, rpc: &mut Rpc<'_>) -> Result<String, StepError> {
        let ctx = rpc.env.ctx;
        let output = json!(["hostid", "host", "name", "status"]);
        let (by, value, hosts) = match &self.lookup {
            Lookup::Host(t) | Lookup::Name(t) => {
                let field = if matches!(self.lookup, Lookup::Host(_)) {
                    "host"
                } else {
                    "name"
                };
                let value = t.render(ctx)?;
                let hosts = self
                    .get(
                        rpc,
                        "host.get",
                        json!({"output": output, "filter": {field: [value]}}),
                    )
                    .await?;
                (field, value, hosts)
            }
            Lookup::Ip(t) => {
                let value = t.render(ctx)?;
                let ifaces = self
                    .get(
                        rpc,
                        "hostinterface.get",
                        json!({"output": ["hostid"], "filter": {"ip": [value]}}),
                    )
                    .await?;
                let mut ids: Vec<String> = ifaces
                    .iter()
                    .filter_map(|i| i["hostid"].as_str().map(str::to_string))
                    .collect();
                ids.sort();
                ids.dedup();
                let hosts = if ids.is_empty() {
                    Vec::new()
                } else {
                    self.get(rpc, "host.get", json!({"output": output, "hostids": ids}))
                        .await?
                };
                ("ip", value, hosts)
            }
        };
        let host = match hosts.as_slice() {
            [] => {
                return Ok(format!(
                    "no Zabbix host with {by} {value} (deleted already, or never added)"
                ))
            }
            [one] => one,
            many => {
                let names: Vec<&str> = many.iter().filter_map(|h| h["host"].as_str()).collect();
                return Err(StepError::Failed(format!(
                    "{} Zabbix hosts match {by} {value} ({}); refusing to guess: identify the host by host = \"…\"",
                    many.len(),
                    names.join(", ")
                )));
            }
        };
        let id = host["hostid"].as_str().unwrap_or_default().to_string();
        let name = host["host"].as_str().unwrap_or_default().to_string();
        self.remove(rpc, &id, &name).await
    }

    /// Deletes (or disables) one host; a host that is gone already is success.
    async fn remove(&self, rpc: &mut Rpc<'_>, id: &str, name: &str) -> Result<String, StepError> {
        let (method, params, done) = if self.disable {
            (
                "host.update",
                json!({"hostid": id, "status": 1}),
                "disabled",
            )
        } else {
            ("host.delete", json!([id]), "deleted")
        };
        match rpc.call(method, params, true).await {
            Ok(_) => Ok(format!(
                "{done} Zabbix host {name} (id {id}, Zabbix {}.{})",
                rpc.version.0, rpc.version.1
            )),
            // Zabbix answers this one error both for a host that is gone and for one the API
            // user may read but not change (CHost::validateDelete re-reads the hosts with
            // `editable`: zabbix/zabbix ui/include/classes/api/services/CHost.php): asked again
            // without `editable`, a host still there is a permission problem, not a success.
            Err(e) if e.is_absent() => {
                let still = self
                    .get(
                        rpc,
                        "host.get",
                        json!({"output": ["hostid"], "hostids": [id]}),
                    )
                    .await?;
                if still.is_empty() {
                    Ok(format!("Zabbix host {name} (id {id}) is gone already"))
                } else {
                    Err(StepError::Failed(format!(
                        "Zabbix refused to {} host {name} (id {id}): the API user can read it but not change it (\"No permissions to referred object or it does not exist!\"); give the user's role Read-write on the host's groups",
                        if self.disable { "disable" } else { "delete" }
                    )))
                }
            }
            Err(e) => Err(self.fail(method, e)),
        }
    }

    /// A logged-in session with this step's API and credentials (for `lastcall sweep`).
    pub async fn session<'a>(&'a self, env: &'a StepEnv<'a>) -> Result<Session<'a>, StepError> {
        let (rpc, logout) = self.connect(env).await?;
        Ok(Session {
            step: self,
            rpc,
            logout,
        })
    }

    async fn get(
        &self,
        rpc: &mut Rpc<'_>,
        method: &str,
        params: Value,
    ) -> Result<Vec<Value>, StepError> {
        match rpc.call(method, params, true).await {
            Ok(Value::Array(a)) => Ok(a),
            Ok(other) => Err(StepError::Failed(format!("{method} answered {other}"))),
            Err(e) => Err(self.fail(method, e)),
        }
    }

    fn fail(&self, method: &str, e: RpcError) -> StepError {
        if e.is_auth() {
            StepError::Failed(format!(
                "{method}: Zabbix refused the credentials ({e}); not retrying"
            ))
        } else {
            StepError::Failed(format!("{method}: {e}"))
        }
    }

    /// For `lastcall check`: the version, and that the credentials work (a read-only call).
    pub async fn check(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let (mut rpc, session) = self.connect(env).await?;
        let r = self
            .get(
                &mut rpc,
                "host.get",
                json!({"output": ["hostid"], "limit": 1}),
            )
            .await;
        if session {
            let _ = rpc.call("user.logout", json!([]), true).await;
        }
        r.map(|_| {
            format!(
                "Zabbix {}.{} at {}: credentials accepted",
                rpc.version.0,
                rpc.version.1,
                crate::http_client::redact(&rpc.url)
            )
        })
    }
}

/// A logged-in Zabbix API session of a step's API and credentials, for `lastcall sweep`.
pub struct Session<'a> {
    step: &'a ZabbixStep,
    rpc: Rpc<'a>,
    logout: bool,
}

impl Session<'_> {
    /// A read call that answers a list (`host.get`, `hostgroup.get`).
    pub async fn get(&mut self, method: &str, params: Value) -> Result<Vec<Value>, StepError> {
        self.step.get(&mut self.rpc, method, params).await
    }

    /// Deletes (or, with the step's `action = "disable"`, disables) a host; gone already is
    /// success.
    pub async fn remove(&mut self, id: &str, name: &str) -> Result<String, StepError> {
        self.step.remove(&mut self.rpc, id, name).await
    }

    /// What removing does: "delete" or "disable".
    pub fn verb(&self) -> &'static str {
        if self.step.disable {
            "disable"
        } else {
            "delete"
        }
    }

    /// Logs out a password session.
    pub async fn close(mut self) {
        if self.logout {
            if let Err(e) = self.rpc.call("user.logout", json!([]), true).await {
                tracing::warn!(error = %e, "Zabbix logout failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.0.14"), Some((6, 0)));
        assert_eq!(parse_version("7.4.0rc1"), Some((7, 4)));
        assert_eq!(parse_version("x"), None);
        assert!((6, 4) > (6, 0) && (7, 0) >= (6, 4) && (5, 4) < (6, 0));
    }
}

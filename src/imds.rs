//! The instance metadata service (IMDSv2) client, through aws-config's IMDS client (which
//! honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`): who this instance is (plus the OS hostname),
//! its tags, and the items the metadata source and the queue source read.

use std::time::Duration;

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::Client;

/// The target lifecycle state item.
pub const TARGET_STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
/// The spot interruption notice item.
pub const SPOT_ACTION: &str = "/latest/meta-data/spot/instance-action";
/// The rebalance recommendation item.
pub const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// The values of this instance that placeholders and routing need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `instance-id`.
    pub instance_id: String,
    /// `placement/region`.
    pub region: String,
    /// `placement/availability-zone`.
    pub availability_zone: String,
    /// `local-ipv4` (empty on IPv6-only instances).
    pub local_ipv4: String,
    /// `local-hostname`: the EC2 private DNS name.
    pub local_hostname: String,
    /// The OS hostname: what agents such as zabbix-agent register with by default.
    pub hostname: String,
}

/// IMDS could not tell us who we are.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A metadata item could not be read.
    #[error("cannot read instance metadata item {path}: {message} (is this an EC2 instance with IMDSv2 reachable? set AWS_EC2_METADATA_SERVICE_ENDPOINT to point elsewhere)")]
    Read {
        /// The item.
        path: &'static str,
        /// The IMDS client's error, with its causes.
        message: String,
    },
    /// IMDS answered with something that is not an instance id.
    #[error("instance metadata returned an invalid instance id {0:?}")]
    BadInstanceId(String),
}

/// The instance metadata service.
#[derive(Debug, Clone)]
pub struct Imds {
    client: Client,
    poll: std::sync::Arc<Poller>,
}

/// How long a session token is asked for (the IMDSv2 maximum, 6 h).
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// One request to instance metadata (it answers in well under a millisecond on an instance).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Where instance metadata is unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise.
const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The same over IPv6 (`AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`).
const DEFAULT_ENDPOINT_IPV6: &str = "http://[fd00:ec2::254]";

/// The items the sources poll (every 2 s for a whole instance life) are read with one plain
/// HTTP client and a cached IMDSv2 session token: aws-config's IMDS client runs the SDK's whole
/// request pipeline per read, which was most of the no-queue daemon's idle CPU. The rarely read
/// items (identity, tags) still go through aws-config's client.
#[derive(Debug)]
struct Poller {
    http: Option<reqwest::Client>,
    endpoint: String,
    token: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// Instance metadata could not be read.
#[derive(Debug, thiserror::Error)]
#[error("instance metadata {path}: {message}")]
pub struct ReadError {
    /// The item.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

impl Poller {
    fn new() -> Self {
        let endpoint = match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
            Ok(e) if !e.is_empty() => e.trim_end_matches('/').to_string(),
            _ => match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
                Ok(m) if m.eq_ignore_ascii_case("ipv6") => DEFAULT_ENDPOINT_IPV6.into(),
                _ => DEFAULT_ENDPOINT.into(),
            },
        };
        // reqwest takes the crypto provider the AWS SDK links (as http_client does), although
        // instance metadata is plain HTTP.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(READ_TIMEOUT)
            .timeout(READ_TIMEOUT)
            // Instance metadata is never behind a proxy, and never redirects.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok();
        Self {
            http,
            endpoint,
            token: tokio::sync::Mutex::new(None),
        }
    }

    fn error(path: &str, message: impl Into<String>) -> ReadError {
        ReadError {
            path: path.to_string(),
            message: message.into(),
        }
    }

    async fn token(&self, http: &reqwest::Client) -> Result<String, ReadError> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if std::time::Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        const WHAT: &str = "/latest/api/token";
        let resp = http
            .put(format!("{}{WHAT}", self.endpoint))
            .header("x-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL.as_secs())
            .send()
            .await
            .map_err(|e| Self::error(WHAT, crate::http_client::describe(e)))?;
        if !resp.status().is_success() {
            return Err(Self::error(WHAT, format!("HTTP {}", resp.status())));
        }
        let t = resp
            .text()
            .await
            .map_err(|e| Self::error(WHAT, crate::http_client::describe(e)))?;
        *cached = Some((
            t.clone(),
            std::time::Instant::now() + TOKEN_TTL - TOKEN_MARGIN,
        ));
        Ok(t)
    }

    /// Reads an item; `Ok(None)` for 404. A 401 (the token expired early, or the service
    /// restarted) gets one more try with a new token.
    async fn get_opt(&self, path: &str) -> Result<Option<String>, ReadError> {
        let http = self
            .http
            .as_ref()
            .ok_or_else(|| Self::error(path, "cannot build the HTTP client"))?;
        for attempt in 0..2 {
            let token = self.token(http).await?;
            let resp = http
                .get(format!("{}{path}", self.endpoint))
                .header("x-aws-ec2-metadata-token", token)
                .send()
                .await
                .map_err(|e| Self::error(path, crate::http_client::describe(e)))?;
            match resp.status().as_u16() {
                200 => {
                    return resp
                        .text()
                        .await
                        .map(Some)
                        .map_err(|e| Self::error(path, crate::http_client::describe(e)))
                }
                404 => return Ok(None),
                401 if attempt == 0 => *self.token.lock().await = None,
                s => return Err(Self::error(path, format!("HTTP {s}"))),
            }
        }
        Err(Self::error(path, "the session token is refused"))
    }
}

impl Default for Imds {
    fn default() -> Self {
        Self::new()
    }
}

impl Imds {
    /// A client for the configured (or standard) endpoint.
    pub fn new() -> Self {
        Self {
            client: Client::builder().build(),
            poll: std::sync::Arc::new(Poller::new()),
        }
    }

    /// Reads an item the sources poll (lean: see [`Poller`]); `Ok(None)` when IMDS says 404.
    pub async fn poll(&self, path: &str) -> Result<Option<String>, ReadError> {
        self.poll.get_opt(path).await
    }

    /// Reads an item; `Ok(None)` when IMDS says 404.
    pub async fn get_opt(&self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.client.get(path).await {
            Ok(v) => Ok(Some(v.as_ref().to_string())),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_required(&self, path: &'static str) -> Result<String, IdentityError> {
        match self.get_opt(path).await {
            Ok(Some(v)) => Ok(v.trim().to_string()),
            Ok(None) => Err(IdentityError::Read {
                path,
                message: "not found (404)".into(),
            }),
            Err(e) => Err(IdentityError::Read {
                path,
                message: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            }),
        }
    }

    /// Reads the identity of this instance.
    pub async fn identity(&self) -> Result<Identity, IdentityError> {
        let instance_id = self.get_required("/latest/meta-data/instance-id").await?;
        if !crate::event::valid_instance_id(&instance_id) {
            return Err(IdentityError::BadInstanceId(instance_id));
        }
        let region = self
            .get_required("/latest/meta-data/placement/region")
            .await?;
        let availability_zone = self
            .get_required("/latest/meta-data/placement/availability-zone")
            .await?;
        let local_ipv4 = self
            .get_opt("/latest/meta-data/local-ipv4")
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let local_hostname = self
            .get_opt("/latest/meta-data/local-hostname")
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let hostname = os_hostname().unwrap_or_else(|| local_hostname.clone());
        Ok(Identity {
            instance_id,
            region,
            availability_zone,
            local_ipv4,
            local_hostname,
            hostname,
        })
    }

    /// An instance tag through instance metadata tags: `Ok(Some)` found, `Ok(None)` absent,
    /// `Err(TagsUnavailable)` when metadata tags are off for this instance.
    pub async fn tag(&self, key: &str) -> Result<Option<String>, TagsUnavailable> {
        match self
            .get_opt(&format!("/latest/meta-data/tags/instance/{key}"))
            .await
        {
            Ok(Some(v)) => Ok(Some(v)),
            Ok(None) => match self.get_opt("/latest/meta-data/tags/instance").await {
                Ok(Some(_)) => Ok(None),
                _ => Err(TagsUnavailable),
            },
            Err(_) => Err(TagsUnavailable),
        }
    }
}

/// The OS hostname now (what agents such as zabbix-agent register with). User-data or
/// configuration management can set it after lastcall started, so an action reads it afresh.
pub fn os_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

/// Instance metadata tags are off (or IMDS failed) for this instance.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("instance metadata tags are not available")]
pub struct TagsUnavailable;

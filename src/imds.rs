//! The instance metadata service (IMDSv2) client, through aws-config's IMDS client (which
//! honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`): who this instance is (plus the OS hostname),
//! its tags, and the items the metadata source and the queue source read.

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
        }
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

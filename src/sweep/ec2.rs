//! What EC2 says about instances, for the sweep.
//!
//! Ids are asked with the `instance-id` **filter**, not `InstanceIds`: one unknown id in
//! `InstanceIds` fails the whole call with `InvalidInstanceID.NotFound` (boto/boto3 #977), while a
//! filter leaves unknown ids out of the answer. Filters are sent in batches and every page is read
//! ("We strongly recommend using only paginated requests", DescribeInstances API reference). Any
//! error fails the whole lookup: the caller removes nothing that depends on it.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::Filter;

/// Filter values per call (the API documents no limit; batches of 100 are the common practice).
const BATCH: usize = 100;
/// Results per page (the API's maximum).
const PAGE: i32 = 1000;

/// What EC2 says about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// pending, running, stopping or stopped (a stopped instance is alive: warm pools).
    Alive(String),
    /// shutting-down or terminated.
    Gone(String),
}

impl Seen {
    fn from_state(state: &str) -> Self {
        match state {
            "shutting-down" | "terminated" => Self::Gone(state.to_string()),
            other => Self::Alive(other.to_string()),
        }
    }
}

/// EC2 in one region.
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
}

impl Ec2 {
    /// A client for the region of `conf`.
    pub fn new(conf: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_ec2::Client::new(conf),
        }
    }

    /// The state of each instance EC2 knows among `ids`; an id missing from the map is unknown to
    /// EC2 (never launched in this region and account, or terminated long enough ago to be
    /// forgotten, which "is usually less than one hour").
    pub async fn by_id(&self, ids: &[String]) -> Result<BTreeMap<String, Seen>, String> {
        let mut out = BTreeMap::new();
        for chunk in ids.chunks(BATCH) {
            for (id, _, state) in self.query("instance-id", chunk).await? {
                out.insert(id, Seen::from_state(&state));
            }
        }
        Ok(out)
    }

    /// The private IPs among `ips` that a live (not shutting-down or terminated) instance has,
    /// with that instance's id and state.
    pub async fn by_private_ip(
        &self,
        ips: &[String],
    ) -> Result<BTreeMap<String, (String, String)>, String> {
        let mut out = BTreeMap::new();
        for chunk in ips.chunks(BATCH) {
            for (id, ip, state) in self.query("private-ip-address", chunk).await? {
                if matches!(Seen::from_state(&state), Seen::Alive(_)) {
                    out.insert(ip, (id, state));
                }
            }
        }
        Ok(out)
    }

    /// (instance id, private IP, state name) of every instance matching the filter, every page.
    async fn query(
        &self,
        filter: &str,
        values: &[String],
    ) -> Result<Vec<(String, String, String)>, String> {
        let mut pages = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(filter)
                    .set_values(Some(values.to_vec()))
                    .build(),
            )
            .max_results(PAGE)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                format!(
                    "DescribeInstances ({filter} filter, {} value(s)): {}",
                    values.len(),
                    crate::aws::error_text(&e)
                )
            })?;
            for r in page.reservations() {
                for i in r.instances() {
                    let (Some(id), Some(state)) = (
                        i.instance_id(),
                        i.state().and_then(|s| s.name()).map(|n| n.as_str()),
                    ) else {
                        return Err(format!(
                            "DescribeInstances answered an instance without an id or a state ({:?})",
                            i.instance_id()
                        ));
                    };
                    out.push((
                        id.to_string(),
                        i.private_ip_address().unwrap_or_default().to_string(),
                        state.to_string(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

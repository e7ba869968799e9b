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
    /// on any of its network interfaces, with that instance's id and state. The filter is
    /// `network-interface.addresses.private-ip-address`: `private-ip-address` "can only be used
    /// to filter by the primary IP address of the network interface attached to the instance"
    /// (DescribeInstances API reference, "Filters"), and a host on a secondary IP or a second
    /// ENI would look dead.
    pub async fn by_private_ip(
        &self,
        ips: &[String],
    ) -> Result<BTreeMap<String, (String, String)>, String> {
        let mut out = BTreeMap::new();
        for chunk in ips.chunks(BATCH) {
            for (id, addresses, state) in self
                .query("network-interface.addresses.private-ip-address", chunk)
                .await?
            {
                if matches!(Seen::from_state(&state), Seen::Alive(_)) {
                    for ip in addresses.into_iter().filter(|ip| chunk.contains(ip)) {
                        out.insert(ip, (id.clone(), state.clone()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// (instance id, every private IP of every interface, state name) of every instance matching
    /// the filter, every page.
    async fn query(
        &self,
        filter: &str,
        values: &[String],
    ) -> Result<Vec<(String, Vec<String>, String)>, String> {
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
                    let mut ips: Vec<String> = i
                        .private_ip_address()
                        .map(str::to_string)
                        .into_iter()
                        .collect();
                    for ip in i
                        .network_interfaces()
                        .iter()
                        .flat_map(|n| n.private_ip_addresses())
                        .filter_map(|a| a.private_ip_address())
                    {
                        if !ips.iter().any(|x| x == ip) {
                            ips.push(ip.to_string());
                        }
                    }
                    out.push((id.to_string(), ips, state.to_string()));
                }
            }
        }
        Ok(out)
    }
}

//! `[sweep]`: which monitoring hosts are this group's, for `lastcall sweep`.

use std::time::Duration;

use super::fields::Fields;

/// Never delete a host younger than this unless `min_age` says otherwise.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);
/// A run that would remove more hosts than this removes none.
pub const DEFAULT_MAX_DELETE: usize = 20;

/// Where a Zabbix host's instance id is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZabbixInstanceId {
    /// In the technical name (`host`), e.g. `i-0123…` or `web-i-0123…`.
    Host,
    /// In the visible name.
    VisibleName,
    /// The value of a host tag.
    Tag(String),
    /// An inventory field, e.g. `asset_tag`.
    Inventory(String),
    /// The agent interface's IP is a live instance's private IP.
    Ip,
}

/// `[sweep]`.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Only Mackerel hosts in this service (no Mackerel sweep without it).
    pub mackerel_service: Option<String>,
    /// And in this role.
    pub mackerel_role: Option<String>,
    /// Only Zabbix hosts in this host group (no Zabbix sweep without it).
    pub zabbix_group: Option<String>,
    /// Where a Zabbix host's instance id is.
    pub zabbix_instance_id: ZabbixInstanceId,
    /// Never remove a host younger than this.
    pub min_age: Duration,
    /// Remove nothing when more than this many hosts would go.
    pub max_delete: usize,
}

pub(super) fn parse_sweep(f: &mut Fields) -> Option<SweepConfig> {
    let name = |f: &mut Fields, key: &str| -> Option<String> {
        let v: Option<String> = f.opt(key);
        if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
            f.problem(key, "must not be empty");
        }
        v
    };
    let mackerel_service = name(f, "mackerel_service");
    let mackerel_role = name(f, "mackerel_role");
    if mackerel_role.is_some() && mackerel_service.is_none() {
        f.problem(
            "mackerel_role",
            "needs mackerel_service: Mackerel roles belong to a service",
        );
    }
    let zabbix_group = name(f, "zabbix_group");
    let zabbix_instance_id = match f.opt::<String>("zabbix_instance_id").as_deref() {
        None | Some("host") => ZabbixInstanceId::Host,
        Some("visible_name") => ZabbixInstanceId::VisibleName,
        Some("ip") => ZabbixInstanceId::Ip,
        Some(s) => match s.split_once(':') {
            Some(("tag", t)) if !t.is_empty() => ZabbixInstanceId::Tag(t.to_string()),
            Some(("inventory", i)) if !i.is_empty() => ZabbixInstanceId::Inventory(i.to_string()),
            _ => {
                f.problem(
                    "zabbix_instance_id",
                    format!("{s:?} is not \"host\", \"visible_name\", \"tag:NAME\", \"inventory:FIELD\" or \"ip\""),
                );
                ZabbixInstanceId::Host
            }
        },
    };
    if zabbix_group.is_none() && f.has("zabbix_instance_id") {
        f.problem("zabbix_instance_id", "needs zabbix_group");
    }
    let min_age = f.duration("min_age").unwrap_or(DEFAULT_MIN_AGE);
    let max_delete = f.opt::<usize>("max_delete").unwrap_or(DEFAULT_MAX_DELETE);
    if mackerel_service.is_none() && zabbix_group.is_none() {
        f.problem_here(
            None,
            "sweeps nothing: set mackerel_service (and a mackerel step for its API key) or zabbix_group (and a zabbix step for its API)",
        );
    }
    Some(SweepConfig {
        mackerel_service,
        mackerel_role,
        zabbix_group,
        zabbix_instance_id,
        min_age,
        max_delete,
    })
}

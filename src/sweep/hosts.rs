//! The monitoring hosts a sweep looks at, read from the Mackerel and Zabbix APIs, and which
//! instance each one stands for.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::config::ZabbixInstanceId;
use crate::steps::zabbix::Session;
use crate::steps::StepError;

/// Which monitoring service a host is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    /// Mackerel: hosts are retired.
    Mackerel,
    /// Zabbix: hosts are deleted (or disabled).
    Zabbix,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mackerel => "mackerel",
            Self::Zabbix => "zabbix",
        })
    }
}

/// What a host says about its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The instance id.
    Instance(String),
    /// A private IP that a live instance must have.
    Ip(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Instance(i) => f.write_str(i),
            Self::Ip(ip) => write!(f, "ip {ip}"),
        }
    }
}

/// A monitoring host of the group.
#[derive(Debug, Clone)]
pub struct Host {
    /// Where it is.
    pub service: Service,
    /// Its id in that service.
    pub id: String,
    /// Its name (for people).
    pub name: String,
    /// Its instance.
    pub key: Key,
    /// When it was created, if the API says.
    pub created: Option<SystemTime>,
}

/// A host the sweep leaves alone, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// Where it is.
    pub service: Service,
    /// Its name.
    pub name: String,
    /// Why it is not this sweep's.
    pub why: String,
}

/// The instance id in `s`: `i-` and 8 or 17 lowercase hex digits, as a whole word.
pub fn instance_id_in(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(pos) = s[from..].find("i-") {
        let start = from + pos;
        let before_ok = start == 0 || !b[start - 1].is_ascii_alphanumeric();
        let hex = b[start + 2..]
            .iter()
            .take_while(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            .count();
        let end = start + 2 + hex;
        let after_ok = end == b.len() || !b[end].is_ascii_alphanumeric();
        if before_ok && after_ok && (hex == 8 || hex == 17) {
            return Some(s[start..end].to_string());
        }
        from = start + 2;
    }
    None
}

/// Reads a Mackerel host: `Ok(None)`-like skips come back as `Err(Skipped)`.
pub fn mackerel_host(v: &Value, region: &str) -> Result<Host, Skipped> {
    let name = v["name"].as_str().unwrap_or("?").to_string();
    let skip = |why: String| Skipped {
        service: Service::Mackerel,
        name: name.clone(),
        why,
    };
    let Some(id) = v["id"].as_str() else {
        return Err(skip("no host id in the answer".into()));
    };
    // mackerel-agent registers an EC2 instance as `<instance-id>.ec2.amazonaws.com` (no region:
    // mackerelio/mackerel-agent spec/cloud.go); anything else is not an EC2 instance's host.
    let ci = v["customIdentifier"].as_str().unwrap_or_default();
    let instance = ci
        .strip_suffix(".ec2.amazonaws.com")
        .filter(|i| instance_id_in(i).as_deref() == Some(*i));
    let Some(instance) = instance else {
        return Err(skip(if ci.is_empty() {
            "no customIdentifier: not an EC2 instance's host".into()
        } else {
            format!("customIdentifier {ci:?} is not an EC2 instance's")
        }));
    };
    if let Some(az) = v["meta"]["cloud"]["metadata"]["placement/availability-zone"].as_str() {
        if !az.starts_with(region) {
            return Err(skip(format!(
                "its instance is in availability zone {az}, not in region {region}"
            )));
        }
    }
    let created = v["createdAt"]
        .as_u64()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    Ok(Host {
        service: Service::Mackerel,
        id: id.to_string(),
        name,
        key: Key::Instance(instance.to_string()),
        created,
    })
}

/// The hosts of a Zabbix host group, with their instance as `how` says.
pub async fn zabbix_hosts(
    session: &mut Session<'_>,
    group: &str,
    how: &ZabbixInstanceId,
) -> Result<Vec<Result<Host, Skipped>>, StepError> {
    let groups = session
        .get(
            "hostgroup.get",
            json!({"output": ["groupid", "name"], "filter": {"name": [group]}}),
        )
        .await?;
    let gid = match groups.as_slice() {
        [g] => g["groupid"].as_str().unwrap_or_default().to_string(),
        [] => {
            return Err(StepError::Failed(format!(
                "Zabbix has no host group named {group:?}"
            )))
        }
        _ => {
            return Err(StepError::Failed(format!(
                "Zabbix has several host groups named {group:?}"
            )))
        }
    };
    let mut params = json!({
        "output": ["hostid", "host", "name"],
        "groupids": [gid],
    });
    // With `action = "disable"`, a host disabled before is done: not listed again every hour.
    if session.verb() == "disable" {
        params["filter"] = json!({"status": "0"});
    }
    match how {
        ZabbixInstanceId::Tag(_) => params["selectTags"] = json!(["tag", "value"]),
        ZabbixInstanceId::Inventory(field) => params["selectInventory"] = json!([field]),
        ZabbixInstanceId::Ip => params["selectInterfaces"] = json!(["ip", "type", "main", "useip"]),
        ZabbixInstanceId::Host | ZabbixInstanceId::VisibleName => {}
    }
    let hosts = session.get("host.get", params).await?;
    Ok(hosts.iter().map(|h| zabbix_host(h, how)).collect())
}

/// Reads a Zabbix host as `how` says.
pub fn zabbix_host(h: &Value, how: &ZabbixInstanceId) -> Result<Host, Skipped> {
    let name = h["host"].as_str().unwrap_or("?").to_string();
    let skip = |why: String| Skipped {
        service: Service::Zabbix,
        name: name.clone(),
        why,
    };
    let Some(id) = h["hostid"].as_str() else {
        return Err(skip("no hostid in the answer".into()));
    };
    let instance = |s: Option<&str>, from: &str| match s.and_then(instance_id_in) {
        Some(i) => Ok(Key::Instance(i)),
        None => Err(skip(format!("no instance id in {from}"))),
    };
    let key = match how {
        ZabbixInstanceId::Host => instance(h["host"].as_str(), "its technical name"),
        ZabbixInstanceId::VisibleName => instance(h["name"].as_str(), "its visible name"),
        ZabbixInstanceId::Tag(t) => {
            let v = h["tags"]
                .as_array()
                .and_then(|tags| tags.iter().find(|x| x["tag"].as_str() == Some(t)))
                .and_then(|x| x["value"].as_str());
            instance(v, &format!("tag {t}"))
        }
        // A host without inventory answers `"inventory": []`.
        ZabbixInstanceId::Inventory(f) => instance(
            h["inventory"][f.as_str()].as_str(),
            &format!("inventory field {f}"),
        ),
        ZabbixInstanceId::Ip => {
            let main_agent = h["interfaces"].as_array().and_then(|i| {
                i.iter()
                    .find(|x| x["type"].as_str() == Some("1") && x["main"].as_str() == Some("1"))
            });
            // `useip = 0`: the agent is reached by DNS name, and `ip` may hold anything (often
            // a placeholder such as 127.0.0.1): not evidence of which instance it is.
            match main_agent {
                Some(x) if x["useip"].as_str() == Some("0") => Err(skip(
                    "its main agent interface connects by DNS name (useip = 0), not by IP".into(),
                )),
                _ => match main_agent
                    .and_then(|x| x["ip"].as_str())
                    .filter(|ip| !ip.is_empty())
                {
                    Some(ip) => Ok(Key::Ip(ip.to_string())),
                    None => Err(skip("no main agent interface with an IP".into())),
                },
            }
        }
    }?;
    Ok(Host {
        service: Service::Zabbix,
        id: id.to_string(),
        name,
        key,
        created: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_whole_words_of_8_or_17_hex_digits() {
        assert_eq!(
            instance_id_in("i-0123456789abcdef0").as_deref(),
            Some("i-0123456789abcdef0")
        );
        assert_eq!(
            instance_id_in("web-i-0123abcd").as_deref(),
            Some("i-0123abcd")
        );
        assert_eq!(
            instance_id_in("web_i-0123abcd.example").as_deref(),
            Some("i-0123abcd")
        );
        assert_eq!(instance_id_in("i-0123abc"), None);
        assert_eq!(instance_id_in("i-0123456789ABCDEF0"), None);
        assert_eq!(instance_id_in("xi-0123abcd"), None);
        assert_eq!(instance_id_in("i-0123abcd9"), None);
        assert_eq!(instance_id_in("ip-10-0-1-2"), None);
    }

    #[test]
    fn mackerel_hosts_of_other_regions_and_non_ec2_hosts_are_skipped() {
        let h = |ci: Value, az: Value| {
            json!({"id":"abc","name":"web","customIdentifier":ci,"createdAt":1_700_000_000,
                   "meta":{"cloud":{"provider":"ec2","metadata":{"placement/availability-zone":az}}}})
        };
        let ok = mackerel_host(
            &h(json!("i-0123abcd.ec2.amazonaws.com"), json!("us-east-1a")),
            "us-east-1",
        )
        .expect("ours");
        assert_eq!(ok.key, Key::Instance("i-0123abcd".into()));
        assert!(ok.created.is_some());
        assert!(mackerel_host(
            &h(json!("i-0123abcd.ec2.amazonaws.com"), json!("eu-west-1b")),
            "us-east-1"
        )
        .unwrap_err()
        .why
        .contains("eu-west-1b"));
        assert!(mackerel_host(&h(Value::Null, json!("us-east-1a")), "us-east-1").is_err());
        assert!(mackerel_host(
            &h(json!("db.example.com"), json!("us-east-1a")),
            "us-east-1"
        )
        .is_err());
        assert!(mackerel_host(
            &h(json!("x-i-0123abcd.ec2.amazonaws.com"), json!("us-east-1a")),
            "us-east-1"
        )
        .is_err());
    }

    #[test]
    fn zabbix_hosts_are_read_where_the_config_says() {
        let h = json!({"hostid":"10501","host":"web-i-0123abcd","name":"Web i-0fedcba9",
            "tags":[{"tag":"instance","value":"i-00000001"}],
            "inventory":{"asset_tag":"i-00000002"},
            "interfaces":[{"ip":"10.0.0.9","type":"2","main":"1"},{"ip":"10.0.0.7","type":"1","main":"1"}]});
        let key = |how| zabbix_host(&h, &how).map(|x| x.key).map_err(|s| s.why);
        assert_eq!(
            key(ZabbixInstanceId::Host),
            Ok(Key::Instance("i-0123abcd".into()))
        );
        assert_eq!(
            key(ZabbixInstanceId::VisibleName),
            Ok(Key::Instance("i-0fedcba9".into()))
        );
        assert_eq!(
            key(ZabbixInstanceId::Tag("instance".into())),
            Ok(Key::Instance("i-00000001".into()))
        );
        assert_eq!(
            key(ZabbixInstanceId::Inventory("asset_tag".into())),
            Ok(Key::Instance("i-00000002".into()))
        );
        assert_eq!(key(ZabbixInstanceId::Ip), Ok(Key::Ip("10.0.0.7".into())));
        // Connected by DNS name: its `ip` says nothing about which instance it is.
        let dns = json!({"hostid":"2","host":"h","name":"h",
            "interfaces":[{"ip":"127.0.0.1","type":"1","main":"1","useip":"0"}]});
        assert!(zabbix_host(&dns, &ZabbixInstanceId::Ip).is_err());
        assert!(key(ZabbixInstanceId::Tag("other".into())).is_err());
        let no_inventory = json!({"hostid":"1","host":"h","name":"h","inventory":[]});
        assert!(zabbix_host(
            &no_inventory,
            &ZabbixInstanceId::Inventory("asset_tag".into())
        )
        .is_err());
    }
}

//! Whose turn it is to sweep: one instance per group per run (design §6).
//!
//! Every instance of a group runs `lastcall-sweep.timer`; if each swept, a fleet of N would list
//! every Mackerel and Zabbix host of the group and describe all their instances N times an hour
//! (about 1 M host records and 10 k DescribeInstances calls an hour at N = 1,000). The group's
//! `InService` instance with the lowest instance id sweeps; the others say so and exit 0. This
//! needs no coordination: every instance reads the same group (DescribeAutoScalingGroups) and
//! applies the same rule, at two Auto Scaling calls per instance per run. An instance leaving
//! the group (Terminating) or on standby is not InService, so the next one sweeps.

use aws_sdk_autoscaling::error::DisplayErrorContext;

/// Who sweeps this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// This instance: it is the group's InService instance with the lowest id (or no instance
    /// of the group is InService).
    Mine {
        /// The group.
        group: String,
    },
    /// Another instance of the group.
    Theirs {
        /// The group.
        group: String,
        /// The instance whose turn it is.
        instance_id: String,
    },
    /// This instance is in no Auto Scaling group: it sweeps.
    NoGroup,
}

/// The instance that sweeps: the lowest id of those `InService`.
pub fn sweeper<'a>(instances: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<&'a str> {
    instances
        .into_iter()
        .filter(|(_, state)| *state == "InService")
        .map(|(id, _)| id)
        .min()
}

/// Whose turn it is, from Auto Scaling. `Err` when Auto Scaling cannot tell (then nobody can
/// be sure it is theirs, and this instance does not sweep this run).
pub async fn turn(sdk: &aws_config::SdkConfig, me: &str) -> Result<Turn, String> {
    let asg = crate::aws::autoscaling(sdk);
    let Some(group) = crate::autoscaling::AutoScaling::new(asg.clone())
        .instance(me)
        .await
        .map_err(|e| e.to_string())?
        .map(|i| i.group)
        .filter(|g| !g.is_empty())
    else {
        return Ok(Turn::NoGroup);
    };
    let out = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .map_err(|e| {
            format!(
                "DescribeAutoScalingGroups {group}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    let Some(g) = out
        .auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(group.as_str()))
    else {
        return Err(format!(
            "DescribeAutoScalingGroups does not show group {group}, which DescribeAutoScalingInstances names"
        ));
    };
    let lowest = sweeper(g.instances().iter().map(|i| {
        (
            i.instance_id().unwrap_or_default(),
            i.lifecycle_state().map(|s| s.as_str()).unwrap_or_default(),
        )
    }));
    Ok(match lowest {
        Some(id) if id != me => Turn::Theirs {
            group,
            instance_id: id.to_string(),
        },
        _ => Turn::Mine { group },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_in_service_id_sweeps() {
        let group = [
            ("i-0c", "InService"),
            ("i-0a", "Terminating:Wait"),
            ("i-0b", "InService"),
            ("i-00", "Standby"),
        ];
        assert_eq!(sweeper(group), Some("i-0b"));
        assert_eq!(sweeper([("i-0a", "Pending")]), None);
        assert_eq!(sweeper([]), None);
    }
}

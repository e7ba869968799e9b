//! The step lists `[[step]]` and `[[launch_step]]`: every step's common keys (name, timeout,
//! failure policy, when it applies); the kind's own keys are read by its file in `steps/`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::fields::Fields;
use crate::autoscaling::MAX_ACTION_LIFE;
use crate::steps::StepKind;

/// What a step's failure does to the rest of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Go on with the next step.
    Continue,
    /// Skip the remaining steps (the action is still completed, with the failure result).
    Abort,
}

/// One `[[step]]`.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position in the file.
    pub index: usize,
    /// Unique name (defaults to the kind, numbered when a kind repeats).
    pub name: String,
    /// Upper bound on the step's run time.
    pub timeout: Duration,
    /// Failure policy.
    pub on_failure: OnFailure,
    /// Run this step also when the instance only goes to the warm pool (it comes back).
    pub warm_pool: bool,
    /// Run this step on a spot interruption notice.
    pub on_spot: bool,
    /// Run this step on a rebalance recommendation (advisory: the instance may run for hours).
    pub on_rebalance: bool,
    /// What the step does.
    pub kind: StepKind,
}

/// Reads `[[step]]` or `[[launch_step]]` (`list` is the key).
pub(super) fn parse_steps(top: &mut Fields, list: &str) -> Vec<Step> {
    let launch = list == "launch_step";
    let raw: Vec<toml::Value> = match top.table.get(list) {
        None => return Vec::new(),
        Some(toml::Value::Array(a)) => {
            top.used.insert(list.into());
            a.clone()
        }
        Some(_) => {
            top.used.insert(list.into());
            top.problem(
                list,
                format!("must be an array of tables: write each one as [[{list}]]"),
            );
            return Vec::new();
        }
    };
    // Count kinds first so that default names are numbered only where a kind repeats.
    let mut kind_count: BTreeMap<String, usize> = BTreeMap::new();
    for v in &raw {
        if let Some(k) = v.get("kind").and_then(|k| k.as_str()) {
            *kind_count.entry(k.to_string()).or_default() += 1;
        }
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut steps = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let index = i + 1;
        let Some(t) = v.as_table() else {
            top.problem_in(format!("[[{list}]] #{index}"), None, "must be a table");
            continue;
        };
        let kind = t.get("kind").and_then(|k| k.as_str()).map(str::to_string);
        let explicit_name = t.get("name").and_then(|k| k.as_str()).map(str::to_string);
        let name = match (&explicit_name, &kind) {
            (Some(n), _) => n.clone(),
            (None, Some(k)) if kind_count.get(k).copied().unwrap_or(0) > 1 => {
                format!("{k}-{index}")
            }
            (None, Some(k)) => k.clone(),
            (None, None) => format!("step-{index}"),
        };
        let section = format!("[[{list}]] #{index} {name:?}");
        let mut f = Fields::new(t, top.path, section, top.problems);
        let _: Option<String> = f.opt("name");
        if explicit_name.as_deref() == Some("") {
            f.problem("name", "must not be empty");
        }
        if let Some(first) = names.insert(name.clone(), index) {
            f.problem(
                "name",
                format!("{name:?} is already the name of step #{first}; step names must be unique"),
            );
        }
        let kind_str: Option<String> = f.req("kind");
        let timeout = f.duration("timeout");
        if timeout.is_some_and(|d| d.is_zero()) {
            f.problem("timeout", "must be longer than zero");
        } else if timeout.is_some_and(|d| d > MAX_ACTION_LIFE) {
            f.problem(
                "timeout",
                "must be at most 48h: no lifecycle action lives longer (a hook's global timeout is at most 48 hours)",
            );
        }
        let on_failure = match f.opt::<String>("on_failure").as_deref() {
            None | Some("continue") => OnFailure::Continue,
            Some("abort") => OnFailure::Abort,
            Some(s) => {
                f.problem(
                    "on_failure",
                    format!("{s:?} is not \"continue\" or \"abort\""),
                );
                OnFailure::Continue
            }
        };
        let warm_pool: Option<bool> = f.opt("warm_pool");
        if warm_pool == Some(true) && matches!(kind_str.as_deref(), Some("zabbix" | "mackerel")) {
            f.problem(
                "warm_pool",
                "cannot be true for a monitoring step: an instance going to the warm pool comes back, so its Zabbix or Mackerel host must stay (remove the key; only real terminations remove the host)",
            );
        }
        let on_spot: Option<bool> = f.opt("on_spot");
        let on_rebalance: Option<bool> = f.opt("on_rebalance");
        if on_rebalance == Some(true) && matches!(kind_str.as_deref(), Some("zabbix" | "mackerel"))
        {
            f.problem(
                "on_rebalance",
                "cannot be true for a monitoring step: a rebalance recommendation is advisory and the instance may run for hours, so its host must stay monitored until it really leaves",
            );
        }
        if launch {
            for (key, v) in [
                ("warm_pool", warm_pool),
                ("on_spot", on_spot),
                ("on_rebalance", on_rebalance),
            ] {
                if v.is_some() {
                    f.problem(
                        key,
                        "only applies to [[step]]: launch steps run on every launch",
                    );
                }
            }
        }
        let kind = kind_str.and_then(|k| StepKind::parse(&k, &mut f));
        if let Some(kind) = kind {
            let timeout = match timeout {
                Some(t) => {
                    if let Some(min) = kind.minimum_timeout() {
                        if t < min {
                            f.problem(
                                "timeout",
                                format!(
                                    "{} is shorter than what the step itself needs ({})",
                                    humantime::format_duration(t),
                                    humantime::format_duration(min)
                                ),
                            );
                        }
                    }
                    if let StepKind::Nomad(n) = &kind {
                        if t <= n.deadline {
                            f.warn(
                                "timeout",
                                format!(
                                    "{} is not longer than the drain's deadline ({}): allocations that run until the deadline are not waited for",
                                    humantime::format_duration(t),
                                    humantime::format_duration(n.deadline)
                                ),
                            );
                        }
                    }
                    t
                }
                None => kind.default_timeout(),
            };
            steps.push(Step {
                index,
                name,
                timeout,
                on_failure,
                warm_pool: warm_pool.unwrap_or_else(|| kind.default_warm_pool()),
                on_spot: on_spot.unwrap_or(true),
                on_rebalance: on_rebalance.unwrap_or(false),
                kind,
            });
        }
        f.finish();
    }
    steps
}

//! `systemd`: `systemctl stop UNIT` (or another verb), then wait until the unit is in the state that
//! verb leads to.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::fields::Fields;
use crate::template::{Context, RenderError, Template};

use super::{run_capture, StepEnv, StepError};

/// How often `systemctl is-active` is asked while waiting.
const POLL: Duration = Duration::from_millis(200);

/// The verbs a step may use.
const ACTIONS: &[&str] = &["stop", "start", "restart", "reload", "try-restart"];

/// `kind = "systemd"`.
#[derive(Debug, Clone)]
pub struct SystemdStep {
    /// The unit, e.g. `zabbix-agent.service`.
    pub unit: Template,
    /// The verb (default `stop`).
    pub action: String,
    /// Path to systemctl.
    pub systemctl: PathBuf,
}

impl SystemdStep {
    /// Reads `unit`, `action`, `systemctl`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let unit = f.req_template("unit");
        let action = f.opt::<String>("action").unwrap_or_else(|| "stop".into());
        if !ACTIONS.contains(&action.as_str()) {
            f.problem(
                "action",
                format!("{action:?} is not one of {}", ACTIONS.join(", ")),
            );
        }
        let systemctl = super::systemctl_path(f);
        Some(Self {
            unit: unit?,
            action,
            systemctl,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        vec![&self.unit]
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        Ok(format!(
            "systemctl {} {}",
            self.action,
            self.unit.render(ctx)?
        ))
    }

    /// Runs the verb and waits for the unit's resulting state.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let unit = self.unit.render(env.ctx)?;
        let (code, _, stderr) = run_capture(
            &self.systemctl,
            &[self.action.as_str(), "--", unit.as_str()],
        )
        .await?;
        if code != Some(0) {
            return Err(StepError::Failed(format!(
                "systemctl {} {unit} failed (exit {}): {stderr}",
                self.action,
                code.map_or("by signal".into(), |c| c.to_string())
            )));
        }
        let want_active = match self.action.as_str() {
            "stop" => false,
            "start" | "restart" => true,
            // reload and try-restart leave the unit as it was.
            _ => return Ok(format!("systemctl {} {unit}", self.action)),
        };
        loop {
            let (_, state, _) =
                run_capture(&self.systemctl, &["is-active", "--", unit.as_str()]).await?;
            let done = if want_active {
                state == "active"
            } else {
                matches!(state.as_str(), "inactive" | "failed" | "unknown" | "")
            };
            if done {
                return Ok(format!(
                    "systemctl {} {unit}: {}",
                    self.action,
                    if state.is_empty() { "inactive" } else { &state }
                ));
            }
            if want_active && state == "failed" {
                return Err(StepError::Failed(format!("unit {unit} failed to start")));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for systemctl (systemd cannot run here): records its argv and answers
    /// `is-active` with "active" twice, then "inactive".
    fn fake_systemctl(dir: &std::path::Path, fail_stop: bool) -> PathBuf {
        let p = dir.join("systemctl");
        let script = format!(
            r#"#!/bin/sh
echo "$*" >> {dir}/calls
case "$1" in
  stop) {stop} ;;
  is-active)
    n=$(grep -c is-active {dir}/calls)
    if [ "$n" -le 2 ]; then echo active; exit 0; else echo inactive; exit 3; fi ;;
esac
"#,
            dir = dir.display(),
            stop = if fail_stop {
                "echo 'Unit nope.service not loaded.' >&2; exit 5"
            } else {
                "exit 0"
            }
        );
        std::fs::write(&p, script).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn step(unit: &str, systemctl: PathBuf) -> SystemdStep {
        SystemdStep {
            unit: Template::parse(unit).expect("template"),
            action: "stop".into(),
            systemctl,
        }
    }

    #[tokio::test]
    async fn stops_the_unit_and_waits_until_it_is_inactive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = step("zabbix-agent.service", fake_systemctl(dir.path(), false));
        let ctx = Context::default();
        let env = StepEnv::test(&ctx);
        let out = s.run(&env).await.expect("ok");
        assert!(out.contains("inactive"), "{out}");
        let calls = std::fs::read_to_string(dir.path().join("calls")).expect("calls");
        assert_eq!(
            calls.lines().collect::<Vec<_>>(),
            [
                "stop -- zabbix-agent.service",
                "is-active -- zabbix-agent.service",
                "is-active -- zabbix-agent.service",
                "is-active -- zabbix-agent.service"
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_systemctl_is_reported_with_its_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = step("nope.service", fake_systemctl(dir.path(), true));
        let ctx = Context::default();
        let env = StepEnv::test(&ctx);
        let err = s.run(&env).await.expect_err("fails").to_string();
        assert!(
            err.contains(
                "systemctl stop nope.service failed (exit 5): Unit nope.service not loaded."
            ),
            "{err}"
        );
    }
}

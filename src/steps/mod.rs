//! The step kinds: a closed enum, one file per kind, dispatched by one `match`.
//!
//! A kind's file holds both its config (`parse`, from the keys of its `[[step]]` table) and what it
//! does (`run`). The pipeline applies the timeout and the failure policy; a kind only reports what
//! happened.

use std::time::Duration;

use crate::config::fields::Fields;
use crate::template::{Context, RenderError, Template};

pub mod api;
pub mod command;
pub mod ecs;
pub mod fluentd;
pub mod http;
pub mod mackerel;
pub mod nomad;
pub mod process;
pub mod signal;
pub mod sleep;
pub mod systemd;
pub mod zabbix;

/// A step's timeout when it sets none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Where `systemctl` is unless a step says otherwise.
pub const DEFAULT_SYSTEMCTL: &str = "/usr/bin/systemctl";

/// What a step does, by kind.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Run an argv.
    Command(command::CommandStep),
    /// Send a signal to a process.
    Signal(signal::SignalStep),
    /// Stop (or start, restart, reload) a systemd unit.
    Systemd(systemd::SystemdStep),
    /// Wait a fixed time.
    Sleep(sleep::SleepStep),
    /// Flush fluentd and confirm it.
    Fluentd(fluentd::FluentdStep),
    /// Delete (or disable) the host in Zabbix.
    Zabbix(zabbix::ZabbixStep),
    /// Retire the host in Mackerel.
    Mackerel(mackerel::MackerelStep),
    /// One HTTP request.
    Http(http::HttpStep),
    /// Drain this ECS container instance.
    Ecs(ecs::EcsStep),
    /// Drain this Nomad client node.
    Nomad(nomad::NomadStep),
}

/// The names of the kinds, as written in `kind = "…"`.
pub const KINDS: &[&str] = &[
    "ecs", "nomad", "fluentd", "systemd", "zabbix", "mackerel", "command", "http", "signal",
    "sleep",
];

/// The default timeout of an `ecs` step: a load balancer's deregistration delay is 300 s by
/// default, and a service's tasks stop only after it.
pub const DEFAULT_ECS_TIMEOUT: Duration = Duration::from_secs(600);

/// What a step is given when it runs.
#[derive(Debug)]
pub struct StepEnv<'a> {
    /// The step's name (for logs).
    pub name: &'a str,
    /// Placeholder values.
    pub ctx: &'a Context,
    /// True when this step was started before and interrupted (the process died mid-step).
    pub resumed: bool,
    /// When the step's timeout runs out: steps that wait or retry stop shortly before, so
    /// that they can say what they were waiting for.
    pub deadline: tokio::time::Instant,
}

impl StepEnv<'_> {
    /// Time left before the deadline, less a small margin for reporting.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(std::time::Duration::from_millis(100))
    }
}

#[cfg(test)]
impl<'a> StepEnv<'a> {
    /// A step named "t" with 30 s to run, for unit tests.
    pub fn test(ctx: &'a Context) -> Self {
        Self {
            name: "t",
            ctx,
            resumed: false,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(30),
        }
    }
}

/// Why a step did not succeed (a timeout is reported by the pipeline, not here).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A placeholder could not be filled.
    #[error("cannot fill in the step's settings: {0}")]
    Render(#[from] RenderError),
    /// The step ran and failed.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for StepError {
    fn from(s: String) -> Self {
        Self::Failed(s)
    }
}

impl StepKind {
    /// Reads the kind-specific keys of a `[[step]]` table.
    pub fn parse(kind: &str, f: &mut Fields) -> Option<Self> {
        match kind {
            "command" => command::CommandStep::parse(f).map(Self::Command),
            "signal" => signal::SignalStep::parse(f).map(Self::Signal),
            "systemd" => systemd::SystemdStep::parse(f).map(Self::Systemd),
            "sleep" => sleep::SleepStep::parse(f).map(Self::Sleep),
            "fluentd" => fluentd::FluentdStep::parse(f).map(Self::Fluentd),
            "zabbix" => zabbix::ZabbixStep::parse(f).map(Self::Zabbix),
            "mackerel" => mackerel::MackerelStep::parse(f).map(Self::Mackerel),
            "http" => http::HttpStep::parse(f).map(Self::Http),
            "ecs" => ecs::EcsStep::parse(f).map(Self::Ecs),
            "nomad" => nomad::NomadStep::parse(f).map(Self::Nomad),
            other => {
                f.problem(
                    "kind",
                    format!("unknown step kind {other:?} (known: {})", KINDS.join(", ")),
                );
                None
            }
        }
    }

    /// The kind's name.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Command(_) => "command",
            Self::Signal(_) => "signal",
            Self::Systemd(_) => "systemd",
            Self::Sleep(_) => "sleep",
            Self::Fluentd(_) => "fluentd",
            Self::Zabbix(_) => "zabbix",
            Self::Mackerel(_) => "mackerel",
            Self::Http(_) => "http",
            Self::Ecs(_) => "ecs",
            Self::Nomad(_) => "nomad",
        }
    }

    /// The timeout used when the step sets none.
    pub fn default_timeout(&self) -> Duration {
        match self {
            Self::Sleep(s) => s.duration + Duration::from_secs(5),
            Self::Ecs(_) => DEFAULT_ECS_TIMEOUT,
            Self::Nomad(s) => s.default_timeout(),
            _ => DEFAULT_STEP_TIMEOUT,
        }
    }

    /// Whether the step runs, unless it says otherwise, when the instance only goes to the warm
    /// pool. Monitoring identities must survive that (the instance comes back); so must the
    /// scheduler's view of the node: a drained ECS container instance stays DRAINING and a
    /// drained Nomad node ineligible when the instance returns, and would get no work again.
    /// Everything else (flushing logs, stopping agents before the instance stops) is wanted there
    /// too.
    pub fn default_warm_pool(&self) -> bool {
        !matches!(
            self,
            Self::Zabbix(_) | Self::Mackerel(_) | Self::Ecs(_) | Self::Nomad(_)
        )
    }

    /// A timeout shorter than this cannot succeed.
    pub fn minimum_timeout(&self) -> Option<Duration> {
        match self {
            Self::Sleep(s) => Some(s.duration),
            _ => None,
        }
    }

    /// Every placeholder string of the step.
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            Self::Command(s) => s.templates(),
            Self::Signal(s) => s.templates(),
            Self::Systemd(s) => s.templates(),
            Self::Sleep(_) => Vec::new(),
            Self::Fluentd(s) => s.templates(),
            Self::Zabbix(s) => s.templates(),
            Self::Mackerel(s) => s.templates(),
            Self::Http(s) => s.templates(),
            Self::Ecs(s) => s.templates(),
            Self::Nomad(s) => s.templates(),
        }
    }

    /// A one-line description with placeholders filled (for `plan` and logs).
    pub fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        match self {
            Self::Command(s) => s.describe(ctx),
            Self::Signal(s) => s.describe(ctx),
            Self::Systemd(s) => s.describe(ctx),
            Self::Sleep(s) => Ok(format!("sleep {}", humantime::format_duration(s.duration))),
            Self::Fluentd(s) => s.describe(ctx),
            Self::Zabbix(s) => s.describe(ctx),
            Self::Mackerel(s) => s.describe(ctx),
            Self::Http(s) => s.describe(ctx),
            Self::Ecs(s) => s.describe(ctx),
            Self::Nomad(s) => s.describe(ctx),
        }
    }

    /// Runs the step; returns a short description of what was done.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        match self {
            Self::Command(s) => s.run(env).await,
            Self::Signal(s) => s.run(env).await,
            Self::Systemd(s) => s.run(env).await,
            Self::Sleep(s) => s.run().await,
            Self::Fluentd(s) => s.run(env).await,
            Self::Zabbix(s) => s.run(env).await,
            Self::Mackerel(s) => s.run(env).await,
            Self::Http(s) => s.run(env).await,
            Self::Ecs(s) => s.run(env).await,
            Self::Nomad(s) => s.run(env).await,
        }
    }
}

/// Reads an optional `systemctl` path key (for hosts where it is not at the usual place).
fn systemctl_path(f: &mut Fields) -> std::path::PathBuf {
    let p: std::path::PathBuf = f
        .opt::<String>("systemctl")
        .unwrap_or_else(|| DEFAULT_SYSTEMCTL.to_string())
        .into();
    if !p.is_absolute() {
        f.problem("systemctl", "must be an absolute path");
    }
    p
}

/// Runs a short helper command (systemctl) and returns (exit code, stdout, stderr).
async fn run_capture(
    program: &std::path::Path,
    args: &[&str],
) -> Result<(Option<i32>, String, String), StepError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = process::run(
        program,
        &args,
        &[],
        process::Inherit::Minimal,
        None,
        process::Output::Capture,
    )
    .await?;
    Ok((out.status.code(), out.stdout, out.stderr))
}

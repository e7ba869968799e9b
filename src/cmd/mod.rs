//! The commands, one file each: [`run`] (the daemon), [`once`] (cron and timers), [`check`]
//! (preflight), [`plan`], [`simulate`] and [`sweep`]. [`wiring`] builds what `run` and `once` share: who
//! this instance is, the AWS clients, the handler and the sources.

use tracing::{error, warn};

use crate::cli::{Cli, Command, Exit};
use crate::config::{Config, ConfigError, Loaded, Severity};
use crate::handler::Outcome;
use crate::imds::{Identity, Imds};

pub mod check;
pub mod once;
pub mod plan;
pub mod run;
pub mod simulate;
pub mod sweep;
pub mod wiring;

/// Runs the command and returns the exit code.
pub async fn main(cli: Cli) -> Exit {
    match &cli.command {
        Command::Check { offline: true } => check::offline(&cli),
        Command::Check { offline: false } => check::online(&cli).await,
        Command::Run => run::run(&cli).await,
        Command::Once { wait } => once::once(&cli, *wait).await,
        Command::Plan => plan::plan(&cli).await,
        Command::Sweep { dry_run, region } => sweep::sweep(&cli, *dry_run, region.as_deref()).await,
        Command::Simulate {
            message,
            group,
            hook,
            dry_run,
        } => {
            simulate::simulate(
                &cli,
                message.as_deref(),
                group.clone(),
                hook.clone(),
                *dry_run,
            )
            .await
        }
    }
}

/// Loads the config named on the command line; its problems go to stderr, its warnings to the
/// log.
fn load(cli: &Cli) -> Result<Loaded, Exit> {
    match Config::from_file(&cli.config) {
        Ok(l) => {
            for w in &l.warnings {
                warn!("{w}");
            }
            Ok(l)
        }
        Err(e @ ConfigError::Read { .. }) => {
            error!("{e}");
            eprintln!("lastcall: {e}");
            Err(Exit::Config)
        }
        Err(ConfigError::Invalid { path, problems }) => {
            let n = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            error!(file = %path.display(), errors = n, "the config file is invalid");
            for p in &problems {
                eprintln!("{p}");
            }
            Err(Exit::Config)
        }
    }
}

/// The config and this instance's identity, for the one-shot commands that need both.
async fn config_and_identity(cli: &Cli) -> Result<(Config, Imds, Identity), Exit> {
    let config = load(cli)?.config;
    let imds = Imds::new();
    match imds.identity().await {
        Ok(identity) => Ok((config, imds, identity)),
        Err(e) => {
            eprintln!("lastcall: {e}");
            Err(Exit::Failure)
        }
    }
}

/// Folds how actions ended into an exit code (worst wins: an action that could not be handled
/// or completed, then one not acted on, then failed steps).
fn exit_for(handled: &[Outcome]) -> Exit {
    let rank = |e: Exit| match e {
        Exit::Failure => 3,
        Exit::NotActed => 2,
        Exit::StepsFailed => 1,
        _ => 0,
    };
    let mut code = Exit::Ok;
    for h in handled {
        let c = match h {
            Outcome::Completed { steps, .. } if steps.failed > 0 => Exit::StepsFailed,
            Outcome::NotWaiting {
                api_error: false, ..
            }
            | Outcome::Refused => Exit::NotActed,
            Outcome::NotWaiting {
                api_error: true, ..
            }
            | Outcome::Failed { .. }
            | Outcome::Unowned { .. } => Exit::Failure,
            _ => Exit::Ok,
        };
        if rank(c) > rank(code) {
            code = c;
        }
    }
    code
}

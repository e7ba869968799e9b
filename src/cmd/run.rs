//! `lastcall run`: the daemon. Every configured source until SIGTERM; SIGHUP reloads the config
//! between pipelines (an invalid one is refused and the old one kept).

use std::sync::Arc;

use tracing::{error, info, warn};

use super::wiring::{base, build};
use crate::cli::{Cli, Exit};
use crate::config::Config;
use crate::shutdown;

/// Runs the daemon until SIGTERM.
pub async fn run(cli: &Cli) -> Exit {
    let (trigger, mut shutdown) = shutdown::channel();
    let mut hup = match shutdown::on_signals(trigger) {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return Exit::Failure;
        }
    };
    let mut config = match super::load(cli) {
        Ok(l) => Arc::new(l.config),
        Err(code) => return code,
    };
    let base = match base(None, &mut shutdown).await {
        Ok(b) => b,
        Err(_) if shutdown.is_requested() => return Exit::Ok,
        Err(code) => return code,
    };
    let mut first = true;
    // What the metadata source learned, carried over a reload.
    let mut progress = None;
    // The queue source saw this instance's termination through: a reload does not restart it.
    let mut departed = false;
    loop {
        let mut parts = match build(&base, config.clone(), &shutdown) {
            Ok(p) => p,
            Err(code) => return code,
        };
        if let Some(p) = progress.take() {
            parts.metadata = parts.metadata.take().map(|src| src.with_progress(p));
        }
        parts.sqs = parts.sqs.take().map(|src| src.departed(departed));
        if first {
            parts.handler.report_hook_choice().await;
            // Failures are logged there; their notifications bring them back.
            parts.handler.resume_incomplete().await;
            first = false;
        }
        if shutdown.is_requested() {
            break;
        }
        // The sources stop on SIGTERM or SIGHUP; a pipeline that is running finishes first.
        let (stop_sources, sources_shutdown) = shutdown::channel();
        let sqs = async {
            match parts.sqs {
                Some(src) => src.run(&parts.handler, sources_shutdown.clone()).await,
                None => false,
            }
        };
        let metadata = async {
            match parts.metadata {
                Some(src) => Some(src.run(&parts.handler, sources_shutdown.clone()).await),
                None => None,
            }
        };
        let mut watch = shutdown.clone();
        let reload = async {
            let reload = tokio::select! {
                _ = watch.requested() => false,
                _ = hup.changed() => true,
            };
            stop_sources.fire();
            reload
        };
        let (gone, learned, reload) = tokio::join!(sqs, metadata, reload);
        progress = learned;
        departed |= gone;
        if !reload || shutdown.is_requested() {
            break;
        }
        match Config::from_file_async(&cli.config).await {
            Ok(l) => {
                for w in &l.warnings {
                    warn!("{w}");
                }
                info!(file = %cli.config.display(), steps = l.config.steps.len(), "SIGHUP: config reloaded");
                config = Arc::new(l.config);
            }
            Err(e) => {
                error!(file = %cli.config.display(), "SIGHUP: the new config is not usable; keeping the old one: {e}");
            }
        }
    }
    info!("lastcall stopped");
    Exit::Ok
}

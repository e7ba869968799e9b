//! What `run` and `once` share: who this instance is (retrying instance metadata), the AWS
//! configuration, and for a config the handler and the sources.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::autoscaling::AutoScaling;
use crate::cli::{Cli, Exit};
use crate::config::Config;
use crate::handler::Handler;
use crate::imds::{Identity, Imds};
use crate::shutdown::Shutdown;
use crate::source::metadata::MetadataSource;
use crate::source::sqs::SqsSource;

/// First pause when instance metadata cannot be read at start; doubled up to
/// [`IDENTITY_RETRY_MAX`].
const IDENTITY_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between those reads. Short: instance metadata is a link-local service (no
/// account-wide throttle to spare), and a daemon that is not ready yet can be chosen for a
/// scale-in meanwhile, its action's clock running; at a one-minute cap it could stay unready for
/// a minute after metadata answered again.
const IDENTITY_RETRY_MAX: Duration = Duration::from_secs(5);

/// The pause after `pause` between identity reads.
fn next_identity_pause(pause: Duration) -> Duration {
    (pause * 2).min(IDENTITY_RETRY_MAX)
}
/// Attempts to read instance metadata for one-shot commands.
pub const IDENTITY_ATTEMPTS_ONCE: u32 = 3;

/// Reads the identity, retrying; `attempts = None` retries until shutdown.
async fn identity(imds: &Imds, attempts: Option<u32>, shutdown: &mut Shutdown) -> Option<Identity> {
    let mut pause = IDENTITY_RETRY_FIRST;
    let mut n = 0;
    loop {
        n += 1;
        match imds.identity().await {
            Ok(id) => return Some(id),
            Err(e) if attempts.is_some_and(|max| n >= max) => {
                error!(error = %e, "cannot learn this instance's identity");
                return None;
            }
            Err(e) => {
                warn!(error = %e, retry_in_s = pause.as_secs(), "cannot read instance metadata yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.requested() => return None,
                }
                pause = next_identity_pause(pause);
            }
        }
    }
}

/// The handler and the sources built for one config.
pub struct Parts {
    /// The config they were built for.
    pub config: Arc<Config>,
    /// Handles this instance's actions.
    pub handler: Handler,
    /// The queue source, when `[sqs]` is configured.
    pub sqs: Option<SqsSource>,
    /// The metadata source, when `[imds]` is configured.
    pub metadata: Option<MetadataSource>,
}

/// What does not change when the config is reloaded: who we are and the AWS configuration.
pub struct Base {
    identity: Identity,
    imds: Imds,
    sdk: aws_config::SdkConfig,
}

pub async fn base(attempts: Option<u32>, shutdown: &mut Shutdown) -> Result<Base, Exit> {
    let imds = Imds::new();
    let Some(identity) = identity(&imds, attempts, shutdown).await else {
        return Err(Exit::Failure);
    };
    let sdk = crate::aws::load(&identity.region).await;
    Ok(Base {
        identity,
        imds,
        sdk,
    })
}

/// The handler and the sources for a config. `shutdown` (the process's) reaches the pipeline,
/// so that only SIGTERM, not a reload, cuts a pipeline short.
pub fn build(base: &Base, config: Arc<Config>, shutdown: &Shutdown) -> Result<Parts, Exit> {
    let Base {
        identity,
        imds,
        sdk,
    } = base;
    let asg = AutoScaling::new(crate::aws::autoscaling(sdk));
    let launch = !config.launch_steps.is_empty();
    let metadata = config.imds.as_ref().map(|c| {
        MetadataSource::new(
            imds.clone(),
            asg.clone(),
            c.clone(),
            identity.instance_id.clone(),
            config.lifecycle.hooks(),
            launch,
        )
    });
    let handler = Handler::new(
        config.clone(),
        identity.clone(),
        imds.clone(),
        asg,
        shutdown.clone(),
    );
    let sqs = config.sqs.as_ref().map(|s| {
        SqsSource::new(
            crate::aws::sqs(sdk, &s.queue_url, s.wait_time),
            s.clone(),
            identity.instance_id.clone(),
            config.lifecycle.hooks(),
            launch,
        )
    });
    info!(
        version = env!("CARGO_PKG_VERSION"),
        instance_id = %identity.instance_id,
        region = %identity.region,
        steps = config.steps.len(),
        "lastcall ready"
    );
    Ok(Parts {
        config,
        handler,
        sqs,
        metadata,
    })
}

pub async fn setup(
    cli: &Cli,
    attempts: Option<u32>,
    shutdown: &mut Shutdown,
) -> Result<Parts, Exit> {
    let config = Arc::new(super::load(cli)?.config);
    let base = base(attempts, shutdown).await?;
    build(&base, config, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_reads_back_off_to_five_seconds() {
        let mut pause = IDENTITY_RETRY_FIRST;
        let mut seen = vec![pause.as_secs()];
        for _ in 0..5 {
            pause = next_identity_pause(pause);
            seen.push(pause.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 5, 5, 5]);
    }
}

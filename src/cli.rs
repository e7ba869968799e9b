//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG_PATH;

const EXIT_CODES: &str = "\
Exit status:
  0  success: nothing to do, or this instance's termination was handled and every step succeeded
     (check: the config and every preflight check are fine)
  1  runtime failure: instance metadata or AWS could not be used, or this instance's lifecycle
     action could not be handled or completed (once: Auto Scaling did not answer the
     verification; a notification's token was refused; several hooks and none named)
  2  usage error (unknown option or command)
  3  the config file is missing or invalid (every problem is printed, with file, section and key)
  4  once: this instance's termination was handled, but a step failed (the action was completed
     with on_failure_result)
  5  once: a termination notification for this instance was not acted on, because Auto Scaling
     does not show the instance in Terminating:Wait (see the log)
  1  sweep: an API failed (what depended on it was left alone), or max_delete refused the run

Environment:
  AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, …   the standard AWS configuration
  AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SQS, …       other AWS endpoints (emulators, VPC endpoints)
  AWS_EC2_METADATA_SERVICE_ENDPOINT               another instance metadata endpoint
  LASTCALL_LOG                                    a tracing filter, e.g. \"lastcall=debug,info\"";

/// lastcall: runs pre-shutdown steps on an EC2 instance that Auto Scaling is terminating, then
/// completes the lifecycle action so the instance goes away only after the work is done.
#[derive(Debug, Parser)]
#[command(name = "lastcall", version, about, long_about = None, after_long_help = EXIT_CODES, after_help = "Exit status and environment: see --help.")]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH, env = "LASTCALL_CONFIG")]
    pub config: PathBuf,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More detail in the log (-v lastcall's debug lines, -vv everything's debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a daemon: watch every configured source until SIGTERM. A SIGTERM during a
    /// pipeline lets the running step finish (up to its timeout); the journal keeps the rest for
    /// the next start.
    Run,
    /// One check of every configured source (one long poll of the queue), handle what is this
    /// instance's, then exit. For cron and systemd timers; several at once are safe.
    Once {
        /// Long-poll wait for this check (default: [sqs] wait_time). "0s" returns at once.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Validate the config (every problem at once), then check what can be reached: instance
    /// metadata, this instance's group and hook, permissions, the queue, and each step's service
    /// (Zabbix login, the Mackerel key, the fluentd pid file). Changes nothing.
    Check {
        /// Only validate the config file; contact nothing.
        #[arg(long)]
        offline: bool,
    },
    /// Print what would run on this instance: the sources, and each step with its placeholders
    /// filled and its timeout. Changes nothing.
    Plan,
    /// Run the real steps for a synthetic termination of this instance (or for a notification
    /// saved in a file), without any lifecycle call: nothing is verified, heartbeated or
    /// completed, and the real journal is not touched. For trying a config.
    Simulate {
        /// A notification body (any of the shapes a queue delivers) to simulate instead.
        #[arg(long, value_name = "FILE")]
        message: Option<PathBuf>,
        /// The group name for {asg_name} (default: the instance's aws:autoscaling:groupName tag).
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// The hook name for {hook_name} (default: [lifecycle] hook_name).
        #[arg(long, value_name = "NAME")]
        hook: Option<String>,
        /// Print the steps as they would run; run nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Retire (Mackerel) or delete (Zabbix) the monitoring hosts of instances that died without
    /// running their steps: the hosts of [sweep]'s Mackerel service/role and Zabbix host group
    /// whose EC2 instance is terminated, or unknown to EC2 for longer than min_age. Uses the
    /// mackerel and zabbix steps' credentials. Fails closed: nothing that depends on a failed
    /// API answer is removed, nothing at all when EC2 cannot be asked or does not show this
    /// instance, and nothing when more than max_delete hosts would go. Run it from
    /// lastcall-sweep.timer on every instance, or once from anywhere with --region.
    Sweep {
        /// Print each host, its instance, the instance's state and what would be done; change
        /// nothing.
        #[arg(long)]
        dry_run: bool,
        /// The region to sweep when not on an EC2 instance (on one, its own region; then both
        /// must agree).
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
    },
}

/// Process exit codes (see `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Runtime failure.
    Failure = 1,
    /// Usage error (clap's own).
    Usage = 2,
    /// Config missing or invalid.
    Config = 3,
    /// A step failed; the action was completed with the failure result.
    StepsFailed = 4,
    /// This instance's notification was not acted on.
    NotActed = 5,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

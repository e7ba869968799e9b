//! lastcall: an on-instance termination handler for EC2 Auto Scaling.
//!
//! The path of a termination, from source to completion:
//! - [`cmd`] carries out a command (one file each; [`cmd::wiring`] builds what `run` and `once`
//!   share) after [`cli`] parsed the command line and [`config`] read the strict TOML config
//!   (the generic reader [`config::fields`], the sections, the step lists).
//! - A source notices this instance's lifecycle action: [`source::sqs`] (the group's shared
//!   queue; [`event`] parses the five message shapes) or [`source::metadata`] (this instance's
//!   own instance metadata, read through the IMDSv2 client [`imds`]).
//! - [`handler`] handles one action: lock and [`journal`], verify with [`autoscaling`] (the Auto
//!   Scaling client, with the one function that chooses lastcall's hook), heartbeats
//!   ([`handler::heartbeat`]), the [`pipeline`] of [`steps`], completion; its private `hooks`
//!   (which hook is lastcall's, described once per group) and `spot` (spot notices and
//!   rebalance recommendations, one departure with the hook) parts are files of their own.
//!   Every [`handler::Action`] is built in [`handler::action`].
//! - Each step kind is a file in [`steps`]; the API steps share one retry loop
//!   ([`steps::api`]) over one HTTP client ([`http_client`]), and the steps that run programs
//!   share one runner ([`steps::process`]). Secrets come through [`secret`]; placeholders are
//!   [`template`]s. [`aws`] builds the AWS clients; [`shutdown`] carries SIGTERM to every loop;
//!   [`backoff`] spreads every waiting loop's calls with jitter; [`clock`] is AWS's clock, as
//!   its answers' `Date` tells it.
//!
//! - [`sweep`] is `lastcall sweep`: the monitoring hosts of instances that died without their
//!   steps, matched to what EC2 says, removed with the steps' own API clients.
//!
//! Dependencies point one way, from `cmd` down to the sources, the handler, the pipeline, the
//! steps, the clients and the config reader (`tests/layout.rs` keeps it so).

pub mod autoscaling;
pub mod aws;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod event;
pub mod handler;
pub mod http_client;
pub mod imds;
pub mod journal;
pub mod logging;
pub mod pipeline;
pub mod secret;
pub mod shutdown;
pub mod source;
pub mod steps;
pub mod sweep;
pub mod template;

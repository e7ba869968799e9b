//! lastcall: an on-instance termination handler for EC2 Auto Scaling.
//!
//! How the modules fit together:
//! - [`cli`] parses the command line; [`app`] carries out a command.
//! - [`config`] reads the strict TOML config into a validated [`config::Config`]; step strings
//!   are [`template::Template`]s whose placeholders are checked there.
//! - [`identity`] reads who this instance is from IMDSv2; [`aws`] builds the AWS clients.
//! - A source ([`source::sqs`]) receives notifications; [`event`] parses their five shapes.
//! - [`handler`] handles one lifecycle action of this instance: lock and [`journal`], verify with
//!   [`lifecycle`] (the Auto Scaling calls), heartbeats, the [`pipeline`] of [`steps`], completion.
//! - [`shutdown`] carries SIGTERM to every loop.

pub mod autoscaling;
pub mod aws;
pub mod cli;
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
pub mod template;

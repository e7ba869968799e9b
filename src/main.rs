//! The `lastcall` binary: parse the command line, set up logging, run, exit with a code.

use std::process::ExitCode;

use clap::Parser;
use lastcall::cli::{Cli, Exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    lastcall::logging::init(cli.log_format, cli.verbose);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lastcall: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    rt.block_on(lastcall::cmd::main(cli)).into()
}

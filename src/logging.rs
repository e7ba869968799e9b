//! tracing to stderr (journald captures it), as text or JSON.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Sets up the global subscriber. `LASTCALL_LOG` (a tracing filter) overrides `-v`.
pub fn init(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "lastcall=debug,info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("LASTCALL_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

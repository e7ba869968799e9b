//! The HTTP client shared by the steps that call APIs (zabbix, mackerel, http, fluentd's
//! monitor_agent): rustls with the crypto provider the AWS SDK already links, the system's CA
//! store, timeouts on connecting, and one connection pool for the process.

use std::sync::OnceLock;
use std::time::Duration;

/// Connecting to an API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request, when the step leaves more time than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The shared client (built on first use).
pub fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("lastcall/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Describes a request error with its causes but without its URL (a URL can hold a secret,
/// e.g. a webhook token).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Pause before retry `attempt` (1-based): 250 ms doubling to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5).saturating_sub(1)))
        .min(Duration::from_secs(5))
}

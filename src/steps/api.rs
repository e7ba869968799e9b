//! The one retry loop of the steps that call HTTP APIs (zabbix, mackerel, http): send, let the
//! step judge the answer, and on a transient failure (connection error, 5xx, 429) wait with
//! backoff (or as `Retry-After` says) and send again, until the step's deadline would pass.

use std::future::Future;
use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response, StatusCode};

use super::StepEnv;
use crate::http_client;

/// What the step made of one answer.
#[derive(Debug)]
pub enum Verdict<T, E> {
    /// Done: this is the result.
    Done(T),
    /// Worth another try (the why is logged and, when the deadline comes, reported).
    Retry {
        /// What went wrong, with the request it was.
        why: String,
        /// How long the server asked us to wait (`Retry-After`).
        after: Option<Duration>,
    },
    /// Failed for good.
    Fail(E),
}

/// Sends the request `build` makes until `judge` is satisfied or fails it; transport errors are
/// retried. `what` names the request in messages. The error type takes the final "gave up"
/// message.
pub async fn send<T, E, B, J, F>(env: &StepEnv<'_>, what: &str, build: B, judge: J) -> Result<T, E>
where
    E: From<String>,
    B: Fn(&Client) -> RequestBuilder,
    J: Fn(Response) -> F,
    F: Future<Output = Verdict<T, E>>,
{
    let client = http_client::client().map_err(E::from)?;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let req = build(client).timeout(env.remaining().min(http_client::REQUEST_TIMEOUT));
        let (why, after) = match req.send().await {
            Ok(resp) => match judge(resp).await {
                Verdict::Done(t) => return Ok(t),
                Verdict::Fail(e) => return Err(e),
                Verdict::Retry { why, after } => (why, after),
            },
            Err(e) => (format!("{what}: {}", http_client::describe(e)), None),
        };
        let pause = after.unwrap_or_else(|| http_client::backoff(attempt));
        retry_after(env, attempt, pause, &why)
            .await
            .map_err(E::from)?;
    }
}

/// True for the statuses worth another try: 5xx and 429.
pub fn transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The `Retry-After` header in seconds, when the server sent one.
pub fn retry_after_header(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Waits `pause` before another attempt after `attempt` failed with `why`, or gives up (with
/// `why` and the number of attempts) when the step's deadline would pass first.
async fn retry_after(
    env: &StepEnv<'_>,
    attempt: u32,
    pause: std::time::Duration,
    why: &str,
) -> Result<(), String> {
    if env.remaining() <= pause {
        return Err(format!("{why} (gave up after {attempt} attempt(s))"));
    }
    tracing::warn!(
        step = env.name,
        attempt,
        retry_in_ms = pause.as_millis() as u64,
        "{why}; retrying"
    );
    tokio::time::sleep(pause).await;
    Ok(())
}

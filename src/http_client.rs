//! The HTTP client shared by the steps that call APIs (zabbix, mackerel, http, fluentd's
//! monitor_agent): rustls with the crypto provider the AWS SDK already links, the system's CA
//! store, timeouts on connecting, and one connection pool for the process.
//!
//! Redirects are followed only within the same scheme, host and port: on a redirect elsewhere
//! reqwest would drop `Authorization` but forward every other header (`X-Api-Key`, an http
//! step's `DD-API-KEY`, …) and, on 307/308, a body holding a Zabbix token. A redirect to another
//! host is answered as the 3xx it is, which the steps report.

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
                .redirect(reqwest::redirect::Policy::custom(same_origin_only))
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("lastcall/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// At most this many redirects are followed.
const MAX_REDIRECTS: usize = 10;

fn same_origin_only(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let first = attempt.previous().first();
    let same = first.is_some_and(|f| {
        f.scheme() == attempt.url().scheme()
            && f.host_str() == attempt.url().host_str()
            && f.port_or_known_default() == attempt.url().port_or_known_default()
    });
    if !same {
        attempt.stop()
    } else if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error("too many redirects")
    } else {
        attempt.follow()
    }
}

/// A URL fit to print: without a `user:password@` part.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "<a URL that cannot be parsed>".to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_never_printed() {
        assert_eq!(
            redact("https://api:s3cret@zabbix.example.com/api_jsonrpc.php"),
            "https://zabbix.example.com/api_jsonrpc.php"
        );
        assert_eq!(redact("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080/x");
    }

    /// Serves one request on `listener` with `response`; returns the request's head.
    async fn serve_one(listener: tokio::net::TcpListener, response: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        sock.write_all(response.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&head).into_owned()
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_is_not_followed_with_the_secrets() {
        // Before: reqwest followed it and sent X-Api-Key along to the other host.
        let other = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let other_port = other.local_addr().expect("addr").port();
        let other_hit = tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                serve_one(other, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into()),
            )
            .await
        });
        let api = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let api_port = api.local_addr().expect("addr").port();
        // "localhost" is another host than "127.0.0.1" for the redirect policy.
        let redirect = format!(
            "HTTP/1.1 302 Found\r\nlocation: http://localhost:{other_port}/steal\r\ncontent-length: 0\r\n\r\n"
        );
        tokio::spawn(serve_one(api, redirect));
        let resp = client()
            .expect("client")
            .get(format!("http://127.0.0.1:{api_port}/api"))
            .header("X-Api-Key", "the-secret")
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 302);
        let hit = other_hit.await.expect("task");
        assert!(hit.is_err(), "the other host was asked: {hit:?}");
    }
}

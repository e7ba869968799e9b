//! The one place AWS clients are built. Standard AWS configuration applies (credentials chain,
//! `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SQS`, …), which is also how tests point lastcall at a
//! local emulator. Every call has a timeout.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
// The same types in every SDK crate (re-exported from the smithy runtime).
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Connecting to an AWS endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of an ordinary call.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// An ordinary call, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(45);

/// Loads the shared AWS configuration for `region`.
pub async fn load(region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// An SQS client whose calls may outlast a long poll of `wait`, and whose answers' `Date`
/// headers keep [`crate::clock`] up to date.
///
/// Stalled-stream protection is off: a long poll is a stream that stalls on purpose for up to
/// 20 s, and the protection checks its throughput every 100 ms meanwhile (aws-smithy-runtime's
/// minimum-throughput body: `time_window / 10`), which woke the idle daemon ten times a second
/// and was most of its idle CPU. The attempt and operation timeouts bound every call instead.
pub fn sqs(conf: &SdkConfig, queue_url: &str, wait: Duration) -> aws_sdk_sqs::Client {
    let mut b = aws_sdk_sqs::config::Builder::from(conf)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(wait + ATTEMPT_TIMEOUT)
                .operation_timeout(wait + OPERATION_TIMEOUT)
                .build(),
        )
        .stalled_stream_protection(aws_sdk_sqs::config::StalledStreamProtectionConfig::disabled())
        // Messages' ages are judged by AWS's clock (G14).
        .interceptor(crate::clock::DateWatch);
    // A queue in another region than the instance is addressed in its own region.
    if let Some(region) = queue_region(queue_url) {
        b = b.region(Region::new(region));
    }
    aws_sdk_sqs::Client::from_conf(b.build())
}

/// An Auto Scaling client.
pub fn autoscaling(conf: &SdkConfig) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(conf)
}

/// An SDK error as one line: the service's code and message when it answered, else the
/// error with its causes (timeouts, connection failures).
pub fn error_text<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("(no message)")
            )
        }
        other => DisplayErrorContext(other).to_string(),
    }
}

/// The region in an AWS queue URL (`https://sqs.REGION.amazonaws.com/…`), if it is one.
pub fn queue_region(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let rest = host.strip_prefix("sqs.")?;
    let (region, domain) = rest.split_once('.')?;
    (domain.starts_with("amazonaws.com") && !region.is_empty()).then(|| region.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_from_queue_url() {
        assert_eq!(
            queue_region("https://sqs.ap-northeast-1.amazonaws.com/123456789012/q").as_deref(),
            Some("ap-northeast-1")
        );
        assert_eq!(
            queue_region("https://sqs.cn-north-1.amazonaws.com.cn/1/q").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(queue_region("http://127.0.0.1:5000/123456789012/q"), None);
    }
}

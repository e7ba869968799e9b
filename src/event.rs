//! Lifecycle notifications as they arrive in an SQS message body, in any of the five shapes:
//! the flat hook JSON (direct to SQS, or SNS raw delivery), an SNS envelope holding it, an
//! EventBridge event, and an EventBridge event inside an SNS envelope.
//!
//! Every value taken from a message is checked against the Auto Scaling API's own patterns before
//! it is used anywhere (a file name, a log line, an API call).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// The largest body we look at (SQS allows 1 MiB; a lifecycle notification is under 2 KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// How deep JSON may nest before it is refused (serde_json's own limit is 128).
const MAX_DEPTH: usize = 32;

/// `LifecycleTransition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// `autoscaling:EC2_INSTANCE_TERMINATING`.
    Terminating,
    /// `autoscaling:EC2_INSTANCE_LAUNCHING`.
    Launching,
}

impl Transition {
    /// Every transition, for [`Transition::parse`].
    const ALL: [Self; 2] = [Self::Terminating, Self::Launching];

    /// The API's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Terminating => "autoscaling:EC2_INSTANCE_TERMINATING",
            Self::Launching => "autoscaling:EC2_INSTANCE_LAUNCHING",
        }
    }

    /// The transition with the API's spelling `s` (the one place such strings are read: from
    /// messages, from `DescribeLifecycleHooks`, from the journal).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which envelope the notification came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The hook's own JSON (direct to SQS, or SNS with raw delivery).
    Flat,
    /// An SNS envelope whose `Message` holds the hook's JSON.
    Sns,
    /// An EventBridge event.
    EventBridge,
    /// An SNS envelope whose `Message` holds an EventBridge event.
    SnsEventBridge,
}

impl Shape {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flat => "flat",
            Self::Sns => "sns",
            Self::EventBridge => "eventbridge",
            Self::SnsEventBridge => "sns+eventbridge",
        }
    }
}

/// A lifecycle action notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The instance the action is for.
    pub instance_id: String,
    /// Its Auto Scaling group.
    pub group: String,
    /// The hook that holds it.
    pub hook_name: String,
    /// Launching or terminating.
    pub transition: Transition,
    /// The action token (absent in some hand-made messages; the instance id also identifies it).
    pub token: Option<String>,
    /// The hook's NotificationMetadata.
    pub metadata: Option<String>,
    /// When Auto Scaling sent it.
    pub time: Option<SystemTime>,
    /// `Origin` (EC2, AutoScalingGroup, WarmPool), when present.
    pub origin: Option<String>,
    /// `Destination` (EC2, AutoScalingGroup, WarmPool), when present.
    pub destination: Option<String>,
    /// The envelope it came in.
    pub shape: Shape,
}

/// What a message body turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// `autoscaling:TEST_NOTIFICATION`, sent when a hook is created.
    Test {
        /// The group named in it.
        group: Option<String>,
    },
    /// A lifecycle action.
    Lifecycle(LifecycleEvent),
    /// An AWS notification that no lifecycle action follows (an Auto Scaling
    /// notification-configuration event such as `autoscaling:EC2_INSTANCE_TERMINATE`, an
    /// EventBridge event of another detail-type such as "EC2 Instance Terminate Successful" or
    /// "EC2 Spot Instance Interruption Warning"): never acted on, even when it names this
    /// instance; nobody else will take it either, so it is deleted (design §2.1).
    Other {
        /// Its `Event` or `detail-type`, for the log.
        kind: String,
    },
}

/// Why a body is not a notification we can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Larger than any notification.
    #[error("body is {0} bytes, larger than any lifecycle notification")]
    TooLarge(usize),
    /// Not JSON (or too deeply nested).
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("body is JSON but not an object")]
    NotObject,
    /// An SNS envelope whose Message is not a notification.
    #[error("SNS envelope's Message: {0}")]
    InSns(Box<ParseError>),
    /// An EventBridge event that is not a lifecycle action.
    #[error("EventBridge event of detail-type {0:?} is not a lifecycle action")]
    OtherEventBridge(String),
    /// A JSON object with none of the keys of any known shape.
    #[error("unknown message shape (no LifecycleTransition, Event, detail-type or SNS Message)")]
    UnknownShape,
    /// A needed field is missing.
    #[error("field {0} is missing")]
    Missing(&'static str),
    /// A field has a value the Auto Scaling API would never send.
    #[error("field {field} is not valid: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A transition we do not know.
    #[error("unknown LifecycleTransition {0:?}")]
    UnknownTransition(String),
}

/// The `Event` (or `LifecycleTransition`) of Auto Scaling's test notification.
const TEST_NOTIFICATION: &str = "autoscaling:TEST_NOTIFICATION";

/// Parses a message body.
pub fn parse(body: &str) -> Result<Notification, ParseError> {
    if body.len() > MAX_BODY {
        return Err(ParseError::TooLarge(body.len()));
    }
    let v = parse_json(body)?;
    let obj = v.as_object().ok_or(ParseError::NotObject)?;
    if obj.contains_key("detail-type") {
        return from_eventbridge(&v, Shape::EventBridge);
    }
    if obj.get("Type").and_then(Value::as_str) == Some("Notification")
        || obj.contains_key("TopicArn")
    {
        let msg = obj
            .get("Message")
            .and_then(Value::as_str)
            .ok_or(ParseError::InSns(Box::new(ParseError::Missing("Message"))))?;
        let inner = parse_json(msg).map_err(|e| ParseError::InSns(Box::new(e)))?;
        if !inner.is_object() {
            return Err(ParseError::InSns(Box::new(ParseError::NotObject)));
        }
        if inner.get("detail-type").is_some() {
            return from_eventbridge(&inner, Shape::SnsEventBridge)
                .map_err(|e| ParseError::InSns(Box::new(e)));
        }
        return from_flat(&inner, Shape::Sns).map_err(|e| ParseError::InSns(Box::new(e)));
    }
    from_flat(&v, Shape::Flat)
}

fn parse_json(text: &str) -> Result<Value, ParseError> {
    if nesting(text) > MAX_DEPTH {
        return Err(ParseError::NotJson(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))
}

/// The deepest bracket nesting, ignoring brackets inside strings (a cheap pre-check).
fn nesting(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn from_eventbridge(v: &Value, shape: Shape) -> Result<Notification, ParseError> {
    // A test notification in an EventBridge event (aws-node-termination-handler's queue processor
    // skips `Event` or `LifecycleTransition` of autoscaling:TEST_NOTIFICATION in `detail`).
    if let Some(detail) = v.get("detail").filter(|d| d.is_object()) {
        let is_test = |k: &str| detail.get(k).and_then(Value::as_str) == Some(TEST_NOTIFICATION);
        if is_test("Event") || is_test("LifecycleTransition") {
            let group = opt_str(detail, "AutoScalingGroupName")?.filter(|g| valid_group_name(g));
            return Ok(Notification::Test { group });
        }
    }
    let dt = v
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let source = v.get("source").and_then(Value::as_str).unwrap_or_default();
    let transition_hint = match dt {
        "EC2 Instance-terminate Lifecycle Action" => Transition::Terminating,
        "EC2 Instance-launch Lifecycle Action" => Transition::Launching,
        // Every AWS service's event (`aws.*`: EC2's state changes and spot warnings, AWS
        // Health's scheduled changes, ECS's): no lifecycle action follows it (design §2.1).
        other if source.starts_with("aws.") && printable(source) && printable(other) => {
            return Ok(Notification::Other {
                kind: truncate(other, 80),
            })
        }
        other => return Err(ParseError::OtherEventBridge(truncate(other, 80))),
    };
    // Lifecycle actions come from Auto Scaling: anything else claiming to be one is forged or
    // a test, and is left for the redrive policy.
    if source != "aws.autoscaling" {
        return Err(ParseError::Invalid {
            field: "source",
            why: "a lifecycle action's EventBridge source is aws.autoscaling".into(),
        });
    }
    let detail = v.get("detail").ok_or(ParseError::Missing("detail"))?;
    if !detail.is_object() {
        return Err(ParseError::Invalid {
            field: "detail",
            why: "not an object".into(),
        });
    }
    let mut ev = lifecycle_fields(detail, shape)?;
    if ev.time.is_none() {
        ev.time = opt_str(v, "time")?.and_then(|t| parse_time(&t));
    }
    if ev.transition != transition_hint {
        return Err(ParseError::Invalid {
            field: "LifecycleTransition",
            why: format!("{} does not match detail-type {dt:?}", ev.transition),
        });
    }
    Ok(Notification::Lifecycle(ev))
}

fn from_flat(v: &Value, shape: Shape) -> Result<Notification, ParseError> {
    let event = opt_str(v, "Event")?;
    let transition = opt_str(v, "LifecycleTransition")?;
    if event.as_deref() == Some(TEST_NOTIFICATION)
        || transition.as_deref() == Some(TEST_NOTIFICATION)
    {
        let group = opt_str(v, "AutoScalingGroupName")?.filter(|g| valid_group_name(g));
        return Ok(Notification::Test { group });
    }
    if transition.is_none() {
        // Auto Scaling's notification-configuration events (autoscaling:EC2_INSTANCE_LAUNCH,
        // …_TERMINATE, …_ERROR variants) carry an instance id but no lifecycle action.
        if let Some(e) = event.filter(|e| e.starts_with("autoscaling:") && printable(e)) {
            return Ok(Notification::Other {
                kind: truncate(&e, 80),
            });
        }
        return Err(ParseError::UnknownShape);
    }
    Ok(Notification::Lifecycle(lifecycle_fields(v, shape)?))
}

fn lifecycle_fields(v: &Value, shape: Shape) -> Result<LifecycleEvent, ParseError> {
    let raw = req_str(v, "LifecycleTransition")?;
    let transition =
        Transition::parse(&raw).ok_or_else(|| ParseError::UnknownTransition(truncate(&raw, 80)))?;
    let instance_id = req_str(v, "EC2InstanceId")?;
    if !valid_instance_id(&instance_id) {
        return Err(invalid(
            "EC2InstanceId",
            "not an instance id like i-0123456789abcdef0",
        ));
    }
    let group = req_str(v, "AutoScalingGroupName")?;
    if !valid_group_name(&group) {
        return Err(invalid(
            "AutoScalingGroupName",
            "not 1–255 printable characters without control characters",
        ));
    }
    let hook_name = req_str(v, "LifecycleHookName")?;
    if !valid_hook_name(&hook_name) {
        return Err(invalid(
            "LifecycleHookName",
            "not 1–255 characters of A–Z, a–z, 0–9, '-', '_', '/'",
        ));
    }
    let token = opt_str(v, "LifecycleActionToken")?;
    if let Some(t) = &token {
        if !valid_token(t) {
            return Err(invalid("LifecycleActionToken", "not a 36-character token"));
        }
    }
    let metadata = opt_str(v, "NotificationMetadata")?;
    if metadata.as_ref().is_some_and(|m| m.len() > 4000) {
        return Err(invalid(
            "NotificationMetadata",
            "longer than 4000 characters",
        ));
    }
    let origin = opt_str(v, "Origin")?.filter(|s| valid_place(s));
    let destination = opt_str(v, "Destination")?.filter(|s| valid_place(s));
    let time = opt_str(v, "Time")?.and_then(|t| parse_time(&t));
    Ok(LifecycleEvent {
        instance_id,
        group,
        hook_name,
        transition,
        token,
        metadata,
        time,
        origin,
        destination,
        shape,
    })
}

fn invalid(field: &'static str, why: &str) -> ParseError {
    ParseError::Invalid {
        field,
        why: why.to_string(),
    }
}

fn req_str(v: &Value, field: &'static str) -> Result<String, ParseError> {
    opt_str(v, field)?.ok_or(ParseError::Missing(field))
}

fn opt_str(v: &Value, field: &'static str) -> Result<Option<String>, ParseError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, "not a string")),
    }
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// True for a short name fit for a log line (no control characters).
fn printable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `i-` and 8 or 17 lowercase hex digits.
pub fn valid_instance_id(s: &str) -> bool {
    s.len() <= 19
        && s.strip_prefix("i-").is_some_and(|h| {
            (h.len() == 8 || h.len() == 17)
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// An Auto Scaling group name: 1–255 characters, none of them control characters.
pub fn valid_group_name(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 255 && !s.chars().any(char::is_control)
}

/// A lifecycle hook name: 1–255 of `[A-Za-z0-9\-_\/]`.
pub fn valid_hook_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'))
}

/// A lifecycle action token: 36 characters of hex digits and dashes.
pub fn valid_token(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn valid_place(s: &str) -> bool {
    matches!(s, "EC2" | "AutoScalingGroup" | "WarmPool")
}

impl LifecycleEvent {
    /// True when the instance goes to the warm pool instead of away.
    pub fn to_warm_pool(&self) -> bool {
        self.destination.as_deref() == Some("WarmPool")
    }

    /// How old the event is, if it says when it was sent.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.time.and_then(|t| now.duration_since(t).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &str = r#"{"Origin":"AutoScalingGroup","Destination":"EC2","LifecycleHookName":"drain","AccountId":"123456789012","RequestId":"5d858daa-5692-135e-98ca-ef04118c2ab5","LifecycleTransition":"autoscaling:EC2_INSTANCE_TERMINATING","AutoScalingGroupName":"web-asg","Service":"AWS Auto Scaling","Time":"2018-05-16T20:13:40.414Z","EC2InstanceId":"i-0194708ef7e24dcc7","NotificationMetadata":"meta","LifecycleActionToken":"602063c7-4a06-4a67-b8cf-87ccc33bdc86"}"#;

    fn expected(shape: Shape) -> Notification {
        Notification::Lifecycle(LifecycleEvent {
            instance_id: "i-0194708ef7e24dcc7".into(),
            group: "web-asg".into(),
            hook_name: "drain".into(),
            transition: Transition::Terminating,
            token: Some("602063c7-4a06-4a67-b8cf-87ccc33bdc86".into()),
            metadata: Some("meta".into()),
            time: parse_time("2018-05-16T20:13:40.414Z"),
            origin: Some("AutoScalingGroup".into()),
            destination: Some("EC2".into()),
            shape,
        })
    }

    fn sns(inner: &str) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "90c5fe10-4e0a-58c1-976b-aabd25b0a514",
            "TopicArn": "arn:aws:sns:us-west-2:111111111111:lifecycle-topic",
            "Subject": "Auto Scaling:  Lifecycle action 'TERMINATING' for instance i-0194708ef7e24dcc7 in progress.",
            "Message": inner,
            "Timestamp": "2019-01-07T15:00:10.063Z",
            "SignatureVersion": "1", "Signature": "x", "SigningCertURL": "https://x", "UnsubscribeURL": "https://x"
        })
        .to_string()
    }

    fn eventbridge() -> String {
        let flat: Value = serde_json::from_str(FLAT).expect("json");
        serde_json::json!({
            "version": "0", "id": "12345678-1234-1234-1234-123456789012",
            "detail-type": "EC2 Instance-terminate Lifecycle Action",
            "source": "aws.autoscaling", "account": "123456789012",
            "time": "2021-01-13T00:12:37Z", "region": "us-west-2", "resources": [],
            "detail": flat,
        })
        .to_string()
    }

    #[test]
    fn all_five_shapes_parse_to_the_same_event() {
        assert_eq!(parse(FLAT), Ok(expected(Shape::Flat)));
        assert_eq!(parse(&sns(FLAT)), Ok(expected(Shape::Sns)));
        assert_eq!(parse(&eventbridge()), Ok(expected(Shape::EventBridge)));
        assert_eq!(
            parse(&sns(&eventbridge())),
            Ok(expected(Shape::SnsEventBridge))
        );
    }

    #[test]
    fn eventbridge_without_time_in_detail_uses_the_event_time() {
        let mut v: Value = serde_json::from_str(&eventbridge()).expect("json");
        v["detail"].as_object_mut().expect("obj").remove("Time");
        let Ok(Notification::Lifecycle(ev)) = parse(&v.to_string()) else {
            panic!("not parsed")
        };
        assert_eq!(ev.time, parse_time("2021-01-13T00:12:37Z"));
    }

    #[test]
    fn test_notification_is_recognised_in_every_envelope() {
        let t = r#"{"AccountId":"609519224176","RequestId":"b36d6757-57c7-11e8-a9ca-b3409db76d91","AutoScalingGroupARN":"arn:aws:autoscaling:us-west-2:609519224176:autoScalingGroup:x:autoScalingGroupName/MyASG","AutoScalingGroupName":"MyASG","Service":"AWS Auto Scaling","Event":"autoscaling:TEST_NOTIFICATION","Time":"2018-05-14T22:39:45.555Z"}"#;
        let want = Notification::Test {
            group: Some("MyASG".into()),
        };
        assert_eq!(parse(t), Ok(want.clone()));
        assert_eq!(parse(&sns(t)), Ok(want));
    }

    #[test]
    fn launching_is_parsed_as_such() {
        let b = FLAT.replace("EC2_INSTANCE_TERMINATING", "EC2_INSTANCE_LAUNCHING");
        let Ok(Notification::Lifecycle(ev)) = parse(&b) else {
            panic!("not parsed")
        };
        assert_eq!(ev.transition, Transition::Launching);
    }

    #[test]
    fn hostile_and_broken_bodies_are_refused_with_a_reason() {
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not JSON"),
            (FLAT[..40].into(), "not JSON"),
            ("[1,2]".into(), "not an object"),
            ("{\"hello\":1}".into(), "unknown message shape"),
            (
                FLAT.replace("i-0194708ef7e24dcc7", "i-0194708e; rm -rf /"),
                "EC2InstanceId",
            ),
            (
                FLAT.replace("i-0194708ef7e24dcc7", "../../etc/passwd"),
                "EC2InstanceId",
            ),
            (
                FLAT.replace("\"drain\"", "\"dr\\nain\""),
                "LifecycleHookName",
            ),
            (
                FLAT.replace("\"web-asg\"", "\"web\\nasg\""),
                "AutoScalingGroupName",
            ),
            (FLAT.replace("\"web-asg\"", "42"), "not a string"),
            (
                FLAT.replace("EC2_INSTANCE_TERMINATING", "EC2_INSTANCE_EXPLODING"),
                "unknown LifecycleTransition",
            ),
            (
                FLAT.replace("602063c7-4a06-4a67-b8cf-87ccc33bdc86", "short"),
                "LifecycleActionToken",
            ),
            (
                FLAT.replace(",\"EC2InstanceId\":\"i-0194708ef7e24dcc7\"", ""),
                "EC2InstanceId is missing",
            ),
            (sns("not json"), "SNS envelope's Message"),
            (
                format!("{}1{}", "[".repeat(100), "]".repeat(100)),
                "nested deeper",
            ),
            (
                eventbridge()
                    .replace(
                        "EC2 Instance-terminate Lifecycle Action",
                        "EC2 Instance Terminate Successful",
                    )
                    .replace("aws.autoscaling", "my.app"),
                "is not a lifecycle action",
            ),
            (
                eventbridge().replace("aws.autoscaling", "custom.forger"),
                "source is aws.autoscaling",
            ),
            ("x".repeat(MAX_BODY + 1), "larger than any"),
        ];
        for (body, want) in cases {
            let err = parse(&body).expect_err(&body.chars().take(80).collect::<String>());
            assert!(
                err.to_string().contains(want),
                "{err} does not mention {want:?}"
            );
        }
    }

    #[test]
    fn aws_notifications_without_a_lifecycle_action_are_recognised() {
        // Before: "unparseable", left to circulate for days under a high maxReceiveCount.
        let ev = eventbridge().replace(
            "EC2 Instance-terminate Lifecycle Action",
            "EC2 Instance Terminate Successful",
        );
        assert_eq!(
            parse(&ev),
            Ok(Notification::Other {
                kind: "EC2 Instance Terminate Successful".into()
            })
        );
        let asg = r#"{"Service":"AWS Auto Scaling","Event":"autoscaling:EC2_INSTANCE_TERMINATE","EC2InstanceId":"i-0194708ef7e24dcc7","AutoScalingGroupName":"web-asg"}"#;
        assert_eq!(
            parse(asg),
            Ok(Notification::Other {
                kind: "autoscaling:EC2_INSTANCE_TERMINATE".into()
            })
        );
        assert!(matches!(parse(&sns(asg)), Ok(Notification::Other { .. })));
    }

    #[test]
    fn duplicated_keys_take_the_last_value_and_still_validate() {
        let b = FLAT.replacen('{', "{\"EC2InstanceId\":\"$(reboot)\",", 1);
        assert!(parse(&b).is_ok(), "the later, valid id wins");
        let b = FLAT.replacen(
            "\"NotificationMetadata\"",
            "\"EC2InstanceId\":\"$(reboot)\",\"NotificationMetadata\"",
            1,
        );
        assert!(parse(&b).is_err(), "the later, invalid id is refused");
    }

    #[test]
    fn identifier_patterns() {
        assert!(valid_instance_id("i-0123abcd"));
        assert!(valid_instance_id("i-0123456789abcdef0"));
        assert!(!valid_instance_id("i-0123456789ABCDEF0"));
        assert!(!valid_instance_id("i-0123"));
        assert!(valid_hook_name("a/b_c-d"));
        assert!(!valid_hook_name("a b"));
        assert!(!valid_group_name(""));
        assert!(valid_group_name("my asg (prod)"));
    }
}

//! What to do with one message of the shared queue (see the parent module for the rules).

use std::time::{Duration, SystemTime};

use crate::autoscaling::HookNames;
use crate::event::{self, LifecycleEvent, Notification, ParseError, Transition};

/// What to do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A test notification: delete.
    Test,
    /// An AWS notification that no lifecycle action follows: delete.
    Other {
        /// Its kind.
        kind: String,
    },
    /// Older than any live action: delete.
    Stale {
        /// How old.
        age: Duration,
    },
    /// Another instance's: release.
    Foreign {
        /// Whose.
        instance_id: String,
    },
    /// This instance's, but for a hook we do not complete: release.
    OtherHook {
        /// The hook.
        hook: String,
    },
    /// This instance's launch, and no launch steps are configured: release.
    Launch,
    /// Not parseable: leave for redrive.
    Unparseable(ParseError),
    /// This instance's termination (or launch, with launch steps): handle.
    Mine(Box<LifecycleEvent>),
}

/// Who is asking, for [`route`].
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// This instance.
    pub instance_id: &'a str,
    /// The hooks we complete, when configured (per transition).
    pub hooks: &'a HookNames,
    /// Launch steps are configured.
    pub launch: bool,
}

/// Decides what to do with a message body.
pub fn route(
    body: &str,
    sent: Option<SystemTime>,
    now: SystemTime,
    me: Me<'_>,
    stale_after: Duration,
) -> Route {
    let ev = match event::parse(body) {
        Ok(Notification::Test { .. }) => return Route::Test,
        Ok(Notification::Other { kind }) => return Route::Other { kind },
        Ok(Notification::Lifecycle(ev)) => ev,
        Err(e) => return Route::Unparseable(e),
    };
    let age = ev
        .age(now)
        .or_else(|| sent.and_then(|s| now.duration_since(s).ok()));
    if let Some(age) = age.filter(|a| *a > stale_after) {
        return Route::Stale { age };
    }
    if ev.instance_id != me.instance_id {
        return Route::Foreign {
            instance_id: ev.instance_id,
        };
    }
    // A launch's hook is never the terminating hook: each transition has its own name.
    if me
        .hooks
        .get(&ev.transition)
        .is_some_and(|h| h != ev.hook_name)
    {
        return Route::OtherHook { hook: ev.hook_name };
    }
    if ev.transition == Transition::Launching && !me.launch {
        return Route::Launch;
    }
    Route::Mine(Box::new(ev))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "i-0194708ef7e24dcc7";

    fn body(instance: &str, hook: &str, transition: &str, time: &str) -> String {
        serde_json::json!({
            "LifecycleHookName": hook, "AccountId": "123456789012",
            "LifecycleTransition": transition, "AutoScalingGroupName": "web",
            "Service": "AWS Auto Scaling", "Time": time, "EC2InstanceId": instance,
            "LifecycleActionToken": "602063c7-4a06-4a67-b8cf-87ccc33bdc86"
        })
        .to_string()
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("time")
    }

    const T: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn routes() {
        let now = at("2026-01-02T00:00:00Z");
        let r = |b: &str, hook: Option<&str>| {
            let hooks = HookNames {
                terminating: hook.map(str::to_string),
                launching: None,
            };
            let me = Me {
                instance_id: ME,
                hooks: &hooks,
                launch: false,
            };
            route(b, None, now, me, 2 * DAY)
        };
        assert!(matches!(
            r(&body(ME, "drain", T, "2026-01-01T23:59:00Z"), None),
            Route::Mine(_)
        ));
        assert_eq!(
            r(
                &body("i-0123456789abcdef0", "drain", T, "2026-01-01T23:59:00Z"),
                None
            ),
            Route::Foreign {
                instance_id: "i-0123456789abcdef0".into()
            }
        );
        assert_eq!(
            r(&body(ME, "other", T, "2026-01-01T23:59:00Z"), Some("drain")),
            Route::OtherHook {
                hook: "other".into()
            }
        );
        assert_eq!(
            r(
                &body(
                    ME,
                    "drain",
                    "autoscaling:EC2_INSTANCE_LAUNCHING",
                    "2026-01-01T23:59:00Z"
                ),
                None
            ),
            Route::Launch
        );
        assert!(matches!(
            r(
                &body("i-0123456789abcdef0", "drain", T, "2025-12-01T00:00:00Z"),
                None
            ),
            Route::Stale { .. }
        ));
        assert_eq!(
            r(r#"{"Event":"autoscaling:TEST_NOTIFICATION"}"#, None),
            Route::Test
        );
        assert!(matches!(r("{{{", None), Route::Unparseable(_)));
    }

    #[test]
    fn staleness_falls_back_to_the_sent_timestamp() {
        let now = at("2026-01-10T00:00:00Z");
        let b = body(ME, "drain", T, "").replace(",\"Time\":\"\"", "");
        let b = b.replace("\"Time\":\"\",", "");
        let old = Some(at("2026-01-01T00:00:00Z"));
        let hooks = HookNames::default();
        let me = Me {
            instance_id: ME,
            hooks: &hooks,
            launch: true,
        };
        assert!(matches!(
            route(&b, old, now, me, 2 * DAY),
            Route::Stale { .. }
        ));
        assert!(matches!(
            route(&b, Some(now), now, me, 2 * DAY),
            Route::Mine(_)
        ));
        let launch = body(ME, "drain", "autoscaling:EC2_INSTANCE_LAUNCHING", "");
        assert!(matches!(
            route(&launch, Some(now), now, me, 2 * DAY),
            Route::Mine(_)
        ));
    }

    #[test]
    fn a_launch_is_routed_by_its_own_hook_name() {
        // Before: one hook_name for both transitions, so with hook_name = "drain" every launch
        // notification was released as another hook's, and launch steps never ran.
        let now = at("2026-01-10T00:00:00Z");
        let launch = |hook: &str| body(ME, hook, "autoscaling:EC2_INSTANCE_LAUNCHING", "");
        let only_drain = HookNames {
            terminating: Some("drain".into()),
            launching: None,
        };
        let both = HookNames {
            terminating: Some("drain".into()),
            launching: Some("boot".into()),
        };
        let me = |hooks| Me {
            instance_id: ME,
            hooks,
            launch: true,
        };
        assert!(matches!(
            route(&launch("boot"), Some(now), now, me(&only_drain), 2 * DAY),
            Route::Mine(_)
        ));
        assert!(matches!(
            route(&launch("boot"), Some(now), now, me(&both), 2 * DAY),
            Route::Mine(_)
        ));
        assert_eq!(
            route(&launch("other-tool"), Some(now), now, me(&both), 2 * DAY),
            Route::OtherHook {
                hook: "other-tool".into()
            }
        );
    }
}

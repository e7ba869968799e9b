//! Any bytes as an SQS message body: the parser and the router must never panic, and whatever
//! they accept must carry only values that pass the Auto Scaling API's patterns.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use lastcall::autoscaling::HookNames;
use lastcall::event::{self, valid_group_name, valid_hook_name, valid_instance_id, Notification};
use lastcall::source::sqs::{route, Me};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Notification::Lifecycle(ev)) = event::parse(body) {
        assert!(valid_instance_id(&ev.instance_id));
        assert!(valid_group_name(&ev.group));
        assert!(valid_hook_name(&ev.hook_name));
    }
    let hooks = HookNames {
        terminating: Some("drain".into()),
        launching: Some("boot".into()),
    };
    let me = Me {
        instance_id: "i-0194708ef7e24dcc7",
        hooks: &hooks,
        launch: true,
    };
    let _ = route(
        body,
        Some(UNIX_EPOCH),
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        me,
        Duration::from_secs(172_800),
    );
});

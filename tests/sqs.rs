//! End-to-end tests of the shared-queue source: the built `lastcall` binary against the local
//! AWS emulator (moto with lifecycle hooks) and a fake IMDSv2 per instance.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(40);

fn completed(actions: &[Value]) -> Vec<&Value> {
    actions
        .iter()
        .filter(|a| a["state"] == "completed")
        .collect()
}

/// The hook's own notification for `instance`, read from a queue nobody polls.
async fn hook_message(aws: &Aws, sink: &str, instance: &str) -> String {
    wait_for("the hook's notification", LONG, || async {
        let out = aws
            .sqs
            .receive_message()
            .queue_url(sink)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        out.messages()
            .iter()
            .filter_map(|m| m.body())
            .find(|b| b.contains(instance) && b.contains("EC2_INSTANCE_TERMINATING"))
            .map(str::to_string)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_runs_the_victims_steps_and_continues() {
    let aws = aws().await;
    let g = group(
        &aws,
        "happy",
        GroupSpec {
            size: 3,
            ..Default::default()
        },
    )
    .await;
    let steps = format!(
        "{}\n[[step]]\nkind = \"sleep\"\nduration = \"200ms\"\n",
        marker("mark", "ran")
    );
    let mut nodes = Vec::new();
    for i in &g.instances {
        let mut n = Node::new(i, &g.queue_url, &config("", &steps)).await;
        n.start();
        nodes.push(n);
    }
    set_desired(&aws, &g.name, 2).await;
    let victim = wait_victim(&aws, &g.instances, LONG).await;
    wait_terminated(&aws, &victim, LONG).await;

    let acts = actions(&victim).await;
    let done = completed(&acts);
    assert_eq!(done.len(), 1, "one completed action: {acts:?}");
    assert_eq!(done[0]["result"], "CONTINUE");
    for n in &nodes {
        let ran = lines(&n.path("ran"));
        if n.instance == victim {
            assert_eq!(ran, [format!("{victim} 0")], "the victim ran its step once");
            n.wait_log("termination handled", LONG).await;
            let log = n.log();
            assert!(log.contains("result=CONTINUE"), "{log}");
            assert!(
                log.contains("autoscaling:TEST_NOTIFICATION received; deleting it")
                    || nodes.iter().any(|m| m.log().contains("TEST_NOTIFICATION"))
            );
        } else {
            assert!(ran.is_empty(), "{} ran nothing", n.instance);
            assert_eq!(state(&aws, &n.instance).await.as_deref(), Some("InService"));
        }
    }
    // The test notification and the termination message are both gone from the queue.
    wait_queue_empty(&aws, &g.queue_url, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_short_hook_alive_past_its_timeout() {
    let aws = aws().await;
    // HeartbeatTimeout 3 s, default ABANDON: without heartbeats the action would time out
    // during the 7 s step.
    let g = group(
        &aws,
        "heartbeat",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 3,
            default_result: "ABANDON",
        },
    )
    .await;
    let victim = g.instances[0].clone();
    let steps = "[[step]]\nkind = \"sleep\"\nduration = \"7s\"\n";
    let mut n = Node::new(&victim, &g.queue_url, &config("", steps)).await;
    n.start();
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, LONG).await;
    let acts = actions(&victim).await;
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!(acts[0]["state"], "completed", "not timed out: {acts:?}");
    assert_eq!(acts[0]["result"], "CONTINUE");
    assert!(acts[0]["heartbeats"].as_u64().unwrap_or(0) >= 3, "{acts:?}");
    assert!(n.log().contains("heartbeat sent"));

    // F21: a fixed `heartbeat` not shorter than the hook's HeartbeatTimeout would let the action
    // expire between heartbeats; the daemon says so and heartbeats at half the timeout.
    let g = group(
        &aws,
        "heartbeat-slow",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 3,
            default_result: "ABANDON",
        },
    )
    .await;
    let victim = g.instances[0].clone();
    let cfg = config("heartbeat = \"10s\"", steps);
    let mut n = Node::new(&victim, &g.queue_url, &cfg).await;
    n.start();
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, LONG).await;
    let acts = actions(&victim).await;
    assert_eq!(
        (acts[0]["state"].as_str(), acts[0]["result"].as_str()),
        (Some("completed"), Some("CONTINUE")),
        "not timed out: {acts:?}\n{}",
        n.log()
    );
    assert!(
        n.log()
            .contains("heartbeat is not shorter than the hook's HeartbeatTimeout"),
        "{}",
        n.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_notification_is_heartbeaten_at_once() {
    // AWS sends the notification "while the instance is in a wait state", after SNS or
    // EventBridge hops: the hook's timer has run for a while when lastcall sees it. Here it has
    // run 3 s of a 4 s HeartbeatTimeout. Before: the first heartbeat came half a timeout after
    // pickup (5 s into the action), too late, and the action expired mid-step (ABANDON).
    let aws = aws().await;
    let g = group(
        &aws,
        "late",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 4,
            default_result: "ABANDON",
        },
    )
    .await;
    realism(&g.name, json!({"notification_delay": 3})).await;
    let victim = g.instances[0].clone();
    let steps = "[[step]]\nkind = \"sleep\"\nduration = \"3s\"\n";
    let mut n = Node::new(&victim, &g.queue_url, &config("", steps)).await;
    n.start();
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, LONG).await;
    let acts = actions(&victim).await;
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!(
        acts[0]["state"],
        "completed",
        "not timed out: {acts:?}\n{}",
        n.log()
    );
    assert_eq!(acts[0]["result"], "CONTINUE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_outlasts_eventual_consistency() {
    // DescribeAutoScalingInstances shows InService for 6 s after the action began (Auto Scaling
    // is eventually consistent). Before: verify gave up after about 5.5 s and the message stayed
    // hidden for the whole visibility timeout (20 s here, 5 min by default), past the hook's
    // life (14 s here).
    let aws = aws().await;
    let g = group(
        &aws,
        "lag",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 14,
            default_result: "ABANDON",
        },
    )
    .await;
    realism(&g.name, json!({"describe_lag": 6})).await;
    let victim = g.instances[0].clone();
    let steps = "[[step]]\nkind = \"command\"\ncommand = [\"/bin/true\"]\n";
    let mut n = Node::new(&victim, &g.queue_url, &config("", steps)).await;
    n.start();
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, Duration::from_secs(35)).await;
    let acts = actions(&victim).await;
    assert_eq!(acts[0]["state"], "completed", "{acts:?}\n{}", n.log());
    assert_eq!(acts[0]["result"], "CONTINUE");
    assert!(n.log().contains("termination handled"), "{}", n.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_verifies_the_action_while_describe_lags_past_the_hooks_life() {
    // DescribeAutoScalingInstances shows InService for 60 s after the action began, longer than
    // the hook lives (HeartbeatTimeout 10 s, then ABANDON): as under eventual consistency, or
    // with the describe throttled for a fleet leaving at once. The message's token proves the
    // action by itself: Auto Scaling accepts a heartbeat with it only for this instance's active
    // action of this hook and group. Before: the daemon asked the group again and again, ran
    // nothing, and the action expired (ABANDON).
    let aws = aws().await;
    let g = group(
        &aws,
        "hbverify",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 10,
            default_result: "ABANDON",
        },
    )
    .await;
    realism(&g.name, json!({"describe_lag": 60})).await;
    let victim = g.instances[0].clone();
    let mut n = Node::new(&victim, &g.queue_url, &config("", &marker("mark", "ran"))).await;
    n.start();
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, Duration::from_secs(30)).await;
    let acts = actions(&victim).await;
    assert_eq!(acts[0]["state"], "completed", "{acts:?}\n{}", n.log());
    assert_eq!(acts[0]["result"], "CONTINUE");
    assert_eq!(lines(&n.path("ran")), [format!("{victim} 0")]);
    assert!(!n.log().contains("running nothing for now"), "{}", n.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_shape_reaches_its_owner() {
    let aws = aws().await;
    // The hook sends to a queue nobody polls; the test re-sends each real notification to the
    // polled queue in another envelope.
    let name = unique("shapes");
    let (sink, sink_arn) = queue(&aws, &format!("{name}-sink")).await;
    let (polled, _) = queue(&aws, &name).await;
    let g = group_with_target(
        &aws,
        &name,
        Some(&sink_arn),
        GroupSpec {
            size: 5,
            ..Default::default()
        },
    )
    .await;
    let mut nodes = Vec::new();
    for i in &g.instances {
        let mut n = Node::new(i, &polled, &config("", &marker("mark", "ran"))).await;
        n.start();
        nodes.push(n);
    }
    let wrap: [(&str, Wrap); 5] = [
        ("flat", |b| b.to_string()),
        ("sns", sns),
        ("flat", |b| b.to_string()), // SNS raw delivery is the flat body
        ("eventbridge", eventbridge),
        ("sns+eventbridge", |b| sns(&eventbridge(b))),
    ];
    for (i, (_, f)) in g.instances.iter().zip(wrap.iter()) {
        terminate(&aws, i).await;
        let body = hook_message(&aws, &sink, i).await;
        send(&aws, &polled, &f(&body)).await;
    }
    for ((i, (shape, _)), n) in g.instances.iter().zip(wrap.iter()).zip(&nodes) {
        wait_terminated(&aws, i, LONG).await;
        n.wait_log("termination handled", LONG).await;
        assert!(
            n.log().contains(&format!("shape=\"{shape}\""))
                || n.log().contains(&format!("shape={shape}")),
            "{shape}: {}",
            n.log()
        );
        assert_eq!(lines(&n.path("ran")).len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_is_not_recorded_as_done_and_once_says_so() {
    // Anyone who may send to the queue can send a message with a made-up token for an instance
    // that really is terminating. Completion answers "No active Lifecycle Action" for that token
    // while the group still shows the instance waiting. Before: recorded as completed, `once`
    // exited 0, and the real notification was then taken for a duplicate and never completed.
    let aws = aws().await;
    let name = unique("forged");
    let (sink, sink_arn) = queue(&aws, &format!("{name}-sink")).await;
    let (polled, _) = queue(&aws, &name).await;
    let g = group_with_target(&aws, &name, Some(&sink_arn), GroupSpec::default()).await;
    let victim = g.instances[0].clone();
    let mut n = Node::new(&victim, &polled, &config("", &marker("mark", "ran"))).await;
    terminate(&aws, &victim).await;
    let real = hook_message(&aws, &sink, &victim).await;
    let v: Value = serde_json::from_str(&real).expect("json");
    let token = v["LifecycleActionToken"]
        .as_str()
        .expect("token")
        .to_string();
    let forged = real.replace(&token, "00000000-0000-4000-8000-000000000000");
    send(&aws, &polled, &forged).await;
    // Not acted on (exit 5), and not taken for forged at once either: a second hook or Auto
    // Scaling's eventual consistency look the same (the message comes back with back-off).
    assert_eq!(n.once(&["--wait", "2s"]), 5, "{}", n.log());
    assert!(
        n.log().contains("refuses the message's token"),
        "{}",
        n.log()
    );
    assert_eq!(
        state(&aws, &victim).await.as_deref(),
        Some("Terminating:Wait")
    );
    // The real notification is handled in full: the steps already done are not run again, and
    // the action is completed.
    send(&aws, &polled, &real).await;
    let mut code = n.once(&["--wait", "2s"]);
    if code == 5 {
        // The forged message was received first again (it is kept for its redrive policy).
        code = n.once(&["--wait", "2s"]);
    }
    assert_eq!(code, 0, "{}", n.log());
    wait_terminated(&aws, &victim, LONG).await;
    let acts = actions(&victim).await;
    assert_eq!(acts[0]["state"], "completed", "{acts:?}");
    assert_eq!(lines(&n.path("ran")).len(), 1, "the steps ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_that_cannot_be_written_stops_nothing() {
    // A full or read-only disk is a common reason an instance is replaced. Before: no step ran
    // and the action was never completed. Here the state directory sits under a regular file,
    // so nothing can be created there.
    let aws = aws().await;
    let g = group(&aws, "nodisk", GroupSpec::default()).await;
    let victim = g.instances[0].clone();
    let cfg = config("", &marker("mark", "ran")).replace("{dir}/state", "{dir}/file/state");
    let mut n = Node::new(&victim, &g.queue_url, &cfg).await;
    std::fs::write(n.path("file"), "").expect("a regular file");
    n.start();
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, LONG).await;
    n.wait_log("termination handled", LONG).await;
    assert!(n.log().contains("carrying on in memory"), "{}", n.log());
    assert_eq!(lines(&n.path("ran")).len(), 1);
    assert_eq!(completed(&actions(&victim).await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_steps_run_when_hook_name_names_the_terminating_hook() {
    // The shipped example sets hook_name (its terminating hook) and has launch steps. Before:
    // every launch notification was released as "a hook lastcall does not complete", so the
    // launch steps never ran and each new instance waited out its launch hook.
    let aws = aws().await;
    let name = unique("launchq");
    let (url, arn) = queue(&aws, &name).await;
    let g = group_with_target(
        &aws,
        &name,
        Some(&arn),
        GroupSpec {
            size: 0,
            ..Default::default()
        },
    )
    .await;
    add_hook(
        &aws,
        &g.name,
        &format!("{name}-boot"),
        "autoscaling:EC2_INSTANCE_LAUNCHING",
        Some(&arn),
        &GroupSpec::default(),
    )
    .await;
    set_desired(&aws, &g.name, 1).await;
    let id = wait_for("a pending instance", LONG, || async {
        instances(&aws, &g.name).await.into_iter().next()
    })
    .await;
    let launch = "\n[[launch_step]]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo \\\"$0\\\" >> {dir}/launched\", \"{instance_id}\"]\n";
    let cfg = config(&format!("hook_name = \"{}\"", g.hook), launch);
    let mut n = Node::new(&id, &url, &cfg).await;
    n.start();
    wait_for("the launch to be completed", LONG, || async {
        actions(&id)
            .await
            .iter()
            .any(|a| a["state"] == "completed" && a["result"] == "CONTINUE")
            .then_some(())
    })
    .await;
    assert_eq!(state(&aws, &id).await.as_deref(), Some("InService"));
    assert_eq!(
        lines(&n.path("launched")),
        std::slice::from_ref(&id),
        "{}",
        n.log()
    );
    assert!(n.log().contains("launch handled"), "{}", n.log());
    // G18: SQS delivers at least once; a duplicate of the launch's notification, after its
    // record was archived, is known by its token and deleted. Before, it was verified again, found
    // InService ("not waiting") and kept for up to 48 h, a heartbeat and describes each minute.
    let launched = actions(&id).await;
    let token = launched
        .iter()
        .find(|a| a["transition"] == "autoscaling:EC2_INSTANCE_LAUNCHING")
        .and_then(|a| a["token"].as_str())
        .expect("the launch's token")
        .to_string();
    let duplicate = json!({
        "Origin": "EC2", "Destination": "AutoScalingGroup",
        "LifecycleHookName": format!("{name}-boot"), "AccountId": ACCOUNT,
        "RequestId": "5d858daa-5692-135e-98ca-ef04118c2ab6",
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
        "AutoScalingGroupName": g.name, "Service": "AWS Auto Scaling",
        "Time": now_rfc3339(), "EC2InstanceId": id, "LifecycleActionToken": token,
    });
    let dup = send(&aws, &url, &duplicate.to_string()).await;
    wait_for("the duplicate to be deleted", LONG, || async {
        deleted(&queue_name(&url))
            .await
            .contains_key(&dup)
            .then_some(())
    })
    .await;
    assert!(
        n.log().contains("archived journal record with this token"),
        "{}",
        n.log()
    );
    assert!(!n.log().contains("suspicious notification"), "{}", n.log());
    assert_eq!(
        lines(&n.path("launched")),
        std::slice::from_ref(&id),
        "ran once"
    );
    // G13: restarted after its launch (the installer restarts the unit on a config change),
    // the daemon still steps out of the queue's way for another instance's message. Before,
    // only a launch handled by this very process counted, so it never stepped aside again.
    sigterm_exits_within_a_second(&mut n).await;
    // (The journal's times are whole seconds: the restart comes in a later one.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    n.start();
    let runs = n.log();
    send(&aws, &url, &flat_termination(&g, "i-0ddddddddddddddd1")).await;
    n.wait_log(STEPPING_ASIDE, LONG).await;
    assert!(!runs.contains(STEPPING_ASIDE), "{runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_terminating_hooks_and_none_named_complete_nothing_and_run_once() {
    // Two terminating hooks send to the queue (lastcall's and another tool's drain hook) and
    // hook_name is unset. Before: lastcall completed both (the other tool's before it had
    // drained) and ran its steps twice. Now: steps once, no hook completed, nothing deleted.
    let aws = aws().await;
    let g = group(&aws, "twohooksq", GroupSpec::default()).await;
    let arn = format!("arn:aws:sqs:us-east-1:123456789012:{}", g.name);
    let other = format!("{}-other", g.name);
    add_hook(
        &aws,
        &g.name,
        &other,
        "autoscaling:EC2_INSTANCE_TERMINATING",
        Some(&arn),
        &GroupSpec::default(),
    )
    .await;
    let victim = g.instances[0].clone();
    let mut n = Node::new(&victim, &g.queue_url, &config("", &marker("mark", "ran"))).await;
    let key = n.start_with_key("twohooksq");
    n.wait_log("set [lifecycle] hook_name", LONG).await;
    terminate(&aws, &victim).await;
    n.wait_log("no hook completed", LONG).await;
    // Let the second hook's message come round too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lines(&n.path("ran")).len(), 1, "{}", n.log());
    // Not received at round-trip speed: before, this instance received and released both
    // notifications tens of times a second, driving the other tool's to the dead-letter queue
    // (maxReceiveCount) before its owner got it.
    let before = receives_by(&key).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let in_10s = receives_by(&key).await - before;
    assert!(
        (1..=12).contains(&in_10s),
        "{in_10s} receives in 10 s (the daemon polls on, a handful at most)"
    );
    let acts = actions(&victim).await;
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(acts.iter().all(|a| a["state"] == "pending"), "{acts:?}");
    let (visible, in_flight) = queue_counts(&aws, &g.queue_url).await;
    assert!(
        visible + in_flight >= 2,
        "both notifications are kept for their owners"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_comes_from_the_hook_not_from_the_message() {
    // {metadata} reaches command arguments and HTTP bodies. Before: it was taken from the
    // message, which anyone allowed to send to the queue can write.
    let aws = aws().await;
    let name = unique("meta");
    let (sink, sink_arn) = queue(&aws, &format!("{name}-sink")).await;
    let (polled, _) = queue(&aws, &name).await;
    let g = group_with_target(&aws, &name, Some(&sink_arn), GroupSpec::default()).await;
    aws.asg
        .put_lifecycle_hook()
        .auto_scaling_group_name(&g.name)
        .lifecycle_hook_name(&g.hook)
        .notification_metadata("the-hooks-own")
        .send()
        .await
        .expect("metadata");
    let victim = g.instances[0].clone();
    let step = "[[step]]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"printf %s \\\"$0\\\" > {dir}/meta\", \"{metadata}\"]\n";
    let mut n = Node::new(&victim, &polled, &config("", step)).await;
    terminate(&aws, &victim).await;
    let real = hook_message(&aws, &sink, &victim).await;
    let forged = real.replace("the-hooks-own", "chosen-by-the-sender");
    assert_ne!(real, forged);
    send(&aws, &polled, &forged).await;
    n.start();
    wait_terminated(&aws, &victim, LONG).await;
    assert_eq!(
        std::fs::read_to_string(n.path("meta")).expect("ran"),
        "the-hooks-own",
        "{}",
        n.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_looks_through_a_queue_that_answers_in_samples() {
    // A standard queue answers each receive with a sample, here one message at a time, and four
    // other instances' messages are there too. Before: `once` made one receive, most likely got
    // another's message, and left its own for the next timer run (a minute later, every time).
    let aws = aws().await;
    let g = group(&aws, "sample", GroupSpec::default()).await;
    let queue_name = queue_name(&g.queue_url);
    let victim = g.instances[0].clone();
    let mut n = Node::new(&victim, &g.queue_url, &config("", &marker("mark", "ran"))).await;
    let now = now_rfc3339();
    for other in [
        "i-0aaaaaaaaaaaaaaa1",
        "i-0aaaaaaaaaaaaaaa2",
        "i-0aaaaaaaaaaaaaaa3",
        "i-0aaaaaaaaaaaaaaa4",
    ] {
        send(&aws, &g.queue_url, &flat_termination_at(&g, other, &now)).await;
    }
    realism_queue(&queue_name, json!({"receive_max": 1})).await;
    terminate(&aws, &victim).await;
    assert_eq!(n.once(&["--wait", "1s"]), 0, "{}", n.log());
    assert_eq!(lines(&n.path("ran")).len(), 1, "{}", n.log());
    wait_terminated(&aws, &victim, LONG).await;
    // The others' messages are all still there, for their owners.
    let (visible, in_flight) = queue_counts(&aws, &g.queue_url).await;
    assert_eq!(visible + in_flight, 4);
}

/// Puts a flat notification into another envelope.
type Wrap = fn(&str) -> String;

fn sns(inner: &str) -> String {
    json!({
        "Type": "Notification",
        "MessageId": "90c5fe10-4e0a-58c1-976b-aabd25b0a514",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:lifecycle",
        "Subject": "Auto Scaling:  Lifecycle action 'TERMINATING'",
        "Message": inner,
        "Timestamp": "2026-01-01T00:00:00.000Z",
        "SignatureVersion": "1", "Signature": "x", "SigningCertURL": "https://x", "UnsubscribeURL": "https://x"
    })
    .to_string()
}

fn eventbridge(flat: &str) -> String {
    let mut detail: Value = serde_json::from_str(flat).expect("flat json");
    let time = detail["Time"].clone();
    for k in ["Service", "Time", "RequestId", "AccountId"] {
        detail.as_object_mut().expect("object").remove(k);
    }
    json!({
        "version": "0", "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Instance-terminate Lifecycle Action",
        "source": "aws.autoscaling", "account": ACCOUNT, "time": time,
        "region": "us-east-1", "resources": [], "detail": detail,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_stale_broken_and_unverified_messages_are_routed_safely() {
    let aws = aws().await;
    let g = group(
        &aws,
        "routing",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, &g.queue_url, &config("", &marker("mark", "ran"))).await;
    let flat = |instance: &str, time: &str| flat_termination_at(&g, instance, time);
    let now = now_rfc3339();
    let foreign = send(&aws, &g.queue_url, &flat("i-0aaaaaaaaaaaaaaaa", &now)).await;
    let stale = send(
        &aws,
        &g.queue_url,
        &flat("i-0bbbbbbbbbbbbbbbb", "2020-01-01T00:00:00.000Z"),
    )
    .await;
    let broken = send(
        &aws,
        &g.queue_url,
        "{\"EC2InstanceId\": \"i-0194708ef7e24dcc7\", truncated",
    )
    .await;
    // This instance's "termination" while the group says InService: suspicious.
    let unverified = send(&aws, &g.queue_url, &flat(&me, &now)).await;
    n.start();

    n.wait_log(&format!("message_id={foreign}"), LONG).await;
    n.wait_log(&format!("message_id={stale}"), LONG).await;
    n.wait_log(&format!("message_id={broken}"), LONG).await;
    n.wait_log("suspicious notification", LONG).await;
    n.wait_log("TEST_NOTIFICATION", LONG).await;
    // Let a few more polls happen, then stop the daemon and look at the queue ourselves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    n.signal(Signal::SIGTERM);
    assert_eq!(n.wait_exit(LONG).await, Some(0));
    let log = n.log();
    assert!(lines(&n.path("ran")).is_empty(), "no step ran");
    assert!(log.contains("message for another instance; releasing it to its owner"));
    assert!(log.contains("older than any lifecycle action can live; deleting it"));
    assert!(log.contains("leaving it for the queue's redrive policy"));
    // The broken message was received once, not in a hot loop.
    let broken_lines = log.lines().filter(|l| l.contains(&broken)).count();
    assert_eq!(broken_lines, 1, "{log}");
    assert_eq!(state(&aws, &me).await.as_deref(), Some("InService"));

    // What is left: the foreign message (released: at once the first time, then held out of
    // this instance's way a little longer each time it comes back), and the broken and
    // unverified ones (invisible until their visibility timeout). The test notification and
    // the stale message are deleted.
    let (visible, in_flight) = queue_counts(&aws, &g.queue_url).await;
    assert_eq!(
        visible + in_flight,
        3,
        "foreign, broken and unverified are all kept"
    );
    let first = log
        .lines()
        .find(|l| l.contains(&foreign))
        .expect("the foreign message was seen");
    assert!(first.contains("releasing it to its owner"), "{first}");
    // Its owner gets it: it becomes visible again within the (short) hold.
    let got = wait_for("the foreign message to be visible again", LONG, || async {
        let out = aws
            .sqs
            .receive_message()
            .queue_url(&g.queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        out.messages()
            .iter()
            .any(|m| m.message_id() == Some(foreign.as_str()))
            .then_some(())
    })
    .await;
    let _ = (got, unverified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_step_resumes_at_that_step_and_completes_once() {
    let aws = aws().await;
    let g = group(
        &aws,
        "resume",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let victim = g.instances[0].clone();
    let steps = format!(
        r#"{}
[[step]]
kind = "command"
name = "slow"
command = ["/bin/sh", "-c", "echo \"start ${{{{LASTCALL_RESUMED:-0}}}}\" >> {{dir}}/slow; sleep 3; echo \"end ${{{{LASTCALL_RESUMED:-0}}}}\" >> {{dir}}/slow"]
{}"#,
        marker("first", "first"),
        marker("last", "last")
    );
    let mut n = Node::new(&victim, &g.queue_url, &config("", &steps)).await;
    n.start();
    terminate(&aws, &victim).await;
    n.wait_log("step=slow", LONG).await;
    wait_for("the slow step to start", LONG, || async {
        (!lines(&n.path("slow")).is_empty()).then_some(())
    })
    .await;
    n.signal(Signal::SIGKILL);
    n.wait_exit(LONG).await;
    assert_eq!(
        state(&aws, &victim).await.as_deref(),
        Some("Terminating:Wait")
    );
    let rec = n.journal();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["steps"][1]["state"], "started", "{rec:?}");

    n.start();
    wait_terminated(&aws, &victim, LONG).await;
    n.wait_log("termination handled", LONG).await;
    assert_eq!(
        lines(&n.path("first")),
        [format!("{victim} 0")],
        "finished step not re-run"
    );
    assert_eq!(
        lines(&n.path("slow")),
        ["start 0", "start 1", "end 1"],
        "interrupted step re-run, resumed"
    );
    assert_eq!(lines(&n.path("last")).len(), 1);
    let acts = actions(&victim).await;
    assert_eq!(completed(&acts).len(), 1, "{acts:?}");
    assert!(n
        .log()
        .contains("resuming an unfinished lifecycle action from the journal"));
    // The message comes back after the restart and is recognised as done, then deleted.
    wait_queue_empty(&aws, &g.queue_url, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_step_finish_and_keeps_the_journal() {
    let aws = aws().await;
    let g = group(
        &aws,
        "sigterm",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let victim = g.instances[0].clone();
    let steps = format!(
        r#"
[[step]]
kind = "command"
name = "slow"
command = ["/bin/sh", "-c", "sleep 2; echo done >> {{dir}}/slow"]
{}"#,
        marker("after", "after")
    );
    let mut n = Node::new(&victim, &g.queue_url, &config("", &steps)).await;
    n.start();
    terminate(&aws, &victim).await;
    n.wait_log("step=slow", LONG).await;
    n.signal(Signal::SIGTERM);
    assert_eq!(n.wait_exit(LONG).await, Some(0));
    assert_eq!(
        lines(&n.path("slow")),
        ["done"],
        "the running step finished"
    );
    assert!(
        lines(&n.path("after")).is_empty(),
        "no new step after SIGTERM"
    );
    let rec = n.journal();
    assert_eq!(rec[0]["steps"][0]["state"], "ok");
    assert!(rec[0]["completion"].is_null());
    assert_eq!(
        state(&aws, &victim).await.as_deref(),
        Some("Terminating:Wait")
    );

    n.start();
    wait_terminated(&aws, &victim, LONG).await;
    assert_eq!(lines(&n.path("slow")), ["done"]);
    assert_eq!(lines(&n.path("after")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_once_runs_a_duplicated_message_once() {
    let aws = aws().await;
    let name = unique("once");
    let (sink, sink_arn) = queue(&aws, &format!("{name}-sink")).await;
    let (polled, _) = queue(&aws, &name).await;
    let g = group_with_target(
        &aws,
        &name,
        Some(&sink_arn),
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let victim = g.instances[0].clone();
    let steps = format!(
        "{}\n[[step]]\nkind = \"sleep\"\nduration = \"2s\"\n",
        marker("mark", "ran")
    );
    let mut n = Node::new(&victim, &polled, &config("", &steps)).await;
    terminate(&aws, &victim).await;
    let body = hook_message(&aws, &sink, &victim).await;
    // Standard queues deliver at least once: the same notification twice.
    send(&aws, &polled, &body).await;
    send(&aws, &polled, &body).await;
    let mut a = n
        .command(&["once", "--wait", "2s"])
        .spawn()
        .expect("once a");
    let mut b = n
        .command(&["once", "--wait", "2s"])
        .spawn()
        .expect("once b");
    let (ca, cb) = (a.wait().expect("a"), b.wait().expect("b"));
    assert_eq!((ca.code(), cb.code()), (Some(0), Some(0)), "{}", n.log());
    assert_eq!(
        lines(&n.path("ran")).len(),
        1,
        "the pipeline ran once: {}",
        n.log()
    );
    wait_terminated(&aws, &victim, LONG).await;
    assert_eq!(completed(&actions(&victim).await).len(), 1);
    // Whichever copy is left is recognised as done by a later run and deleted.
    wait_for("the leftover copy to be deleted", LONG, || {
        let code = n.once(&["--wait", "1s"]);
        let aws = aws.clone();
        let polled = polled.clone();
        async move {
            assert_eq!(code, 0);
            (queue_counts(&aws, &polled).await == (0, 0)).then_some(())
        }
    })
    .await;
    assert_eq!(lines(&n.path("ran")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborting_failure_skips_the_rest_and_sends_the_failure_result() {
    let aws = aws().await;
    let g = group(
        &aws,
        "abort",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let victim = g.instances[0].clone();
    let steps = format!(
        "[[step]]\nkind = \"command\"\nname = \"fails\"\ncommand = [\"/bin/false\"]\non_failure = \"abort\"\n{}",
        marker("never", "never")
    );
    let mut n = Node::new(
        &victim,
        &g.queue_url,
        &config("on_failure_result = \"ABANDON\"", &steps),
    )
    .await;
    terminate(&aws, &victim).await;
    let code = n.once(&["--wait", "5s"]);
    assert_eq!(code, 4, "exit 4: handled with a failed step\n{}", n.log());
    assert!(lines(&n.path("never")).is_empty());
    wait_terminated(&aws, &victim, LONG).await;
    let acts = actions(&victim).await;
    assert_eq!(acts[0]["result"], "ABANDON", "{acts:?}");
    let rec = n.journal();
    assert_eq!(rec[0]["steps"][1]["state"], "skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_on_an_empty_queue_returns_at_once() {
    let aws = aws().await;
    let g = group(
        &aws,
        "empty",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let mut n = Node::new(&g.instances[0], &g.queue_url, &config("", "")).await;
    assert_eq!(n.once(&["--wait", "0s"]), 0, "{}", n.log());
    // The hook's test notification was the only message, and it is deleted.
    assert!(n.log().contains("TEST_NOTIFICATION"));
    assert_eq!(queue_counts(&aws, &g.queue_url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_idle_exits_within_a_second() {
    let aws = aws().await;
    let g = group(&aws, "idle-term", GroupSpec::default()).await;
    // A 20 s long poll is in progress when the signal comes.
    let cfg = config("", "").replace("wait_time = \"1s\"", "wait_time = \"20s\"");
    let mut n = Node::new(&g.instances[0], &g.queue_url, &cfg).await;
    n.start();
    n.wait_log("polling the lifecycle queue", LONG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm_exits_within_a_second(&mut n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_keeps_the_old_one_when_invalid() {
    let aws = aws().await;
    let g = group(&aws, "hup", GroupSpec::default()).await;
    let victim = g.instances[0].clone();
    let mut n = Node::new(&victim, &g.queue_url, &config("", &marker("old", "old"))).await;
    n.start();
    n.wait_log("polling the lifecycle queue", LONG).await;
    let path = n.path("lastcall.toml");
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, "[sqs]\nqueue_url = 42\n").expect("write");
    n.signal(Signal::SIGHUP);
    n.wait_log("keeping the old one", LONG).await;
    assert!(
        n.log().contains("key `queue_url`"),
        "the log says why: {}",
        n.log()
    );
    let new = good
        .replace("name = \"old\"", "name = \"new\"")
        .replace("/old\"", "/new\"");
    std::fs::write(&path, new).expect("write");
    n.signal(Signal::SIGHUP);
    n.wait_log("SIGHUP: config reloaded", LONG).await;
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, LONG).await;
    assert!(lines(&n.path("old")).is_empty(), "the old step is gone");
    assert_eq!(
        lines(&n.path("new")).len(),
        1,
        "the reloaded step ran: {}",
        n.log()
    );
}

/// The time now, as the hook's notifications write it.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// G17 (F24): a long poll cut short by SIGTERM (or a reload) is still served by SQS
/// (aws/aws-sdk-js#2350): what it takes stays hidden for as long as the receive asked. lastcall
/// asks for 30 s, not the queue's `visibility_timeout` (here 300 s, the default), during which
/// another instance's action (HeartbeatTimeout 300 s, say) could expire unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_cut_short_hides_another_instances_message_for_seconds_not_minutes() {
    let aws = aws().await;
    let g = group(&aws, "cutpoll", GroupSpec::default()).await;
    let cfg = config("", &marker("mark", "ran"))
        .replace("wait_time = \"1s\"", "wait_time = \"20s\"")
        .replace(
            "visibility_timeout = \"20s\"",
            "visibility_timeout = \"300s\"\nstep_aside = \"0s\"",
        );
    let mut n = Node::new(&g.instances[0], &g.queue_url, &cfg).await;
    n.start();
    n.wait_log("polling the lifecycle queue", LONG).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sigterm_exits_within_a_second(&mut n).await;
    // The poll the daemon left is still open at the emulator, as at SQS: it takes the message.
    send(
        &aws,
        &g.queue_url,
        &flat_termination(&g, "i-0eeeeeeeeeeeeeee1"),
    )
    .await;
    wait_for("the cut poll to take the message", LONG, || async {
        (queue_counts(&aws, &g.queue_url).await == (0, 1)).then_some(())
    })
    .await;
    let taken = std::time::Instant::now();
    wait_for("the message to be visible again", LONG, || async {
        (queue_counts(&aws, &g.queue_url).await == (1, 0)).then_some(())
    })
    .await;
    assert!(
        taken.elapsed() < Duration::from_secs(40),
        "hidden for {:?}",
        taken.elapsed()
    );
}

/// Sends SIGTERM and checks that the daemon exits cleanly within a second.
async fn sigterm_exits_within_a_second(n: &mut Node) {
    let t = std::time::Instant::now();
    n.signal(Signal::SIGTERM);
    assert_eq!(n.wait_exit(LONG).await, Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "exited after {:?}",
        t.elapsed()
    );
}

/// A fresh termination notification for `instance` (which need not exist) on group `g`.
fn flat_termination(g: &Group, instance: &str) -> String {
    flat_termination_at(g, instance, &now_rfc3339())
}

/// The hook's flat termination notification for `instance` on group `g`, sent at `time`.
fn flat_termination_at(g: &Group, instance: &str, time: &str) -> String {
    json!({
        "Origin": "AutoScalingGroup", "Destination": "EC2",
        "LifecycleHookName": g.hook, "AccountId": ACCOUNT,
        "RequestId": "5d858daa-5692-135e-98ca-ef04118c2ab5",
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "AutoScalingGroupName": g.name, "Service": "AWS Auto Scaling",
        "Time": time, "EC2InstanceId": instance,
        "LifecycleActionToken": "602063c7-4a06-4a67-b8cf-87ccc33bdc86"
    })
    .to_string()
}

const STEPPING_ASIDE: &str = "stepping out of the queue's way";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staying_instances_step_aside_and_the_leaving_one_gets_its_message_first() {
    let aws = aws().await;
    let g = group(&aws, "aside", GroupSpec::of(4)).await;
    let steps = marker("mark", "ran");
    let mut nodes = Vec::new();
    for i in &g.instances {
        let mut n = Node::new(i, &g.queue_url, &config("", &steps)).await;
        n.start();
        nodes.push(n);
    }
    // A message for an instance that is not there (its owner is gone) makes its round: every
    // node that receives it is InService, releases it and steps aside for 30 s.
    send(
        &aws,
        &g.queue_url,
        &flat_termination(&g, "i-0ffffffffffffffff"),
    )
    .await;
    for n in &nodes {
        n.wait_log(STEPPING_ASIDE, LONG).await;
        assert!(n.log().contains("target_state=InService"), "{}", n.log());
    }
    // Now the whole group is out of the queue's way. The victim's metadata says Terminated
    // within a moment of the scale-in: it goes back at once and takes its message, well before
    // the others' 30 s are over, and no staying node ever receives that message.
    let start = std::time::Instant::now();
    set_desired(&aws, &g.name, 3).await;
    let victim = wait_victim(&aws, &g.instances, LONG).await;
    wait_terminated(&aws, &victim, LONG).await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the victim waited out its step aside: {took:?}"
    );
    for n in &nodes {
        let log = n.log();
        if n.instance == victim {
            assert!(log.contains("back to the queue at once"), "{log}");
            assert_eq!(lines(&n.path("ran")), [format!("{victim} 0")]);
        } else {
            assert!(
                !log.contains(&format!("owner={victim}")),
                "a staying node received the victim's message: {log}"
            );
            assert!(lines(&n.path("ran")).is_empty());
        }
    }
    // SIGTERM while stepped aside ends the daemon at once, as during a long poll. (The node
    // that stepped aside last is still aside: that was less than 20 s ago, the victim's time.)
    let aside = nodes
        .iter_mut()
        .find(|n| n.instance != victim && !n.log().contains("back to the queue"))
        .expect("a node still stepped aside");
    sigterm_exits_within_a_second(aside).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_target_state_nobody_steps_aside() {
    let aws = aws().await;
    let g = group(
        &aws,
        "noaside",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, &g.queue_url, &config("", "")).await;
    // 404: the instance's last transition predates the item (or metadata cannot tell).
    imds_override(
        &n.imds,
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        404,
        "",
    )
    .await;
    n.start();
    let id = send(
        &aws,
        &g.queue_url,
        &flat_termination(&g, "i-0eeeeeeeeeeeeeeee"),
    )
    .await;
    // Released at once, and received again (and again) by the only poller: it never steps
    // aside, since it cannot know that it is staying.
    n.wait_log("another instance's message again", LONG).await;
    let log = n.log();
    assert!(log.contains(&format!("message_id={id}")), "{log}");
    assert!(!log.contains(STEPPING_ASIDE), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_step_aside_does_not_spin_on_others_messages() {
    // A leaving instance (or one that cannot tell, as here) whose receives bring only others'
    // young messages. Before: receive, release, receive at round-trip speed (hundreds of
    // receives a second on the emulator), each one counting towards the messages' dead-letter
    // maxReceiveCount.
    let aws = aws().await;
    let g = group(&aws, "nospin", GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, &g.queue_url, &config("", "")).await;
    imds_override(
        &n.imds,
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        404,
        "",
    )
    .await;
    let key = n.start_with_key("SPINKEY");
    n.wait_log("polling the lifecycle queue", LONG).await;
    for i in 1..=3 {
        send(
            &aws,
            &g.queue_url,
            &flat_termination(&g, &format!("i-0eeeeeeeeeeeeeee{i}")),
        )
        .await;
    }
    n.wait_log("message for another instance", LONG).await;
    let before = receives_by(&key).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = receives_by(&key).await - before;
    assert!(during <= 12, "{during} receives in 4 s");
    assert!(during >= 2, "it keeps polling: {during}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_aside_zero_turns_it_off() {
    let aws = aws().await;
    let g = group(
        &aws,
        "asideoff",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let me = g.instances[0].clone();
    let cfg = with_sqs(&config("", ""), "step_aside = \"0s\"");
    let mut n = Node::new(&me, &g.queue_url, &cfg).await;
    n.start();
    send(
        &aws,
        &g.queue_url,
        &flat_termination(&g, "i-0dddddddddddddddd"),
    )
    .await;
    n.wait_log("another instance's message again", LONG).await;
    assert!(n.log().contains("step_aside_s=0"), "{}", n.log());
    assert!(!n.log().contains(STEPPING_ASIDE), "{}", n.log());
}

/// ReceiveMessage calls made with access key `key` (see [`Node::start_with_key`]).
async fn receives_by(key: &str) -> u64 {
    calls_by(key).await["sqs"]["ReceiveMessage"]
        .as_u64()
        .unwrap_or(0)
}

const DEPARTED: &str = "no more receiving from the lifecycle queue";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_instance_stops_receiving_even_after_a_reload() {
    // Once its own termination is over, an instance's receives only take others' messages out
    // of their owners' sight; and on AWS a long poll cut short by the shutdown is still served,
    // hiding what it took for the visibility timeout (aws/aws-sdk-js#2350).
    let aws = aws().await;
    let g = group(&aws, "depart", GroupSpec::of(2)).await;
    let steps = marker("mark", "ran");
    let mut nodes = Vec::new();
    let mut keys = Vec::new();
    for i in &g.instances {
        let mut n = Node::new(i, &g.queue_url, &config("", &steps)).await;
        keys.push(n.start_with_key("DEPART"));
        nodes.push(n);
    }
    set_desired(&aws, &g.name, 1).await;
    let victim = wait_victim(&aws, &g.instances, LONG).await;
    wait_terminated(&aws, &victim, LONG).await;
    let v = nodes
        .iter()
        .position(|n| n.instance == victim)
        .expect("the victim's node");
    nodes[v].wait_log(DEPARTED, LONG).await;
    assert_eq!(lines(&nodes[v].path("ran")), [format!("{victim} 0")]);
    // A reload does not bring it back to the queue.
    nodes[v].signal(Signal::SIGHUP);
    nodes[v]
        .wait_log("not receiving from the lifecycle queue again", LONG)
        .await;
    let before = receives_by(&keys[v]).await;
    // Another message comes: only the instance that stays receives it.
    let id = send(
        &aws,
        &g.queue_url,
        &flat_termination(&g, "i-0ccccccccccccccc1"),
    )
    .await;
    let other = &nodes[1 - v];
    other.wait_log(&format!("message_id={id}"), LONG).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receives_by(&keys[v]).await,
        before,
        "the departed instance received again: {}",
        nodes[v].log()
    );
    assert!(!nodes[v].log().contains(&id), "{}", nodes[v].log());
    // It is still a daemon that exits cleanly.
    sigterm_exits_within_a_second(&mut nodes[v]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_days_ahead_takes_no_fresh_message_for_stale() {
    // G14: this machine's clock runs three days ahead of AWS's. The emulator shows it as AWS
    // would: its answers' Date header, the messages' SentTimestamp and the notification's
    // Time all three days behind this machine's clock. Before, the age was judged by the local
    // clock: another instance's fresh notification was "older than any lifecycle action can
    // live" and deleted.
    const SKEW: u64 = 3 * 86400;
    let aws = aws().await;
    let g = group(&aws, "skew", GroupSpec::default()).await;
    let queue_name = queue_name(&g.queue_url);
    realism_queue(&queue_name, json!({"sent_age": SKEW, "date_behind": SKEW})).await;
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, &g.queue_url, &config("", "")).await;
    n.start();
    n.wait_log("polling the lifecycle queue", LONG).await;
    let then = std::time::SystemTime::now() - Duration::from_secs(SKEW);
    let body = flat_termination_at(
        &g,
        "i-0ccccccccccccccc1",
        &humantime::format_rfc3339_millis(then).to_string(),
    );
    let id = send(&aws, &g.queue_url, &body).await;
    n.wait_log("message for another instance", LONG).await;
    let log = n.log();
    assert!(log.contains(&format!("message_id={id}")), "{log}");
    assert!(!log.contains("older than any lifecycle action"), "{log}");
    assert!(log.contains("this machine's clock is 259"), "{log}");
    // (The group's test notification is deleted, as it should be; the other's message is not.)
    assert!(!deleted(&queue_name).await.contains_key(&id), "{log}");
}

/// G18: this instance's own notification whose action was never seen waiting, older than its
/// hook's GlobalTimeout (100 x HeartbeatTimeout: 3,000 s here), is of an action that is over: it
/// is deleted. Before, it came back every minute for up to `stale_after` (48 h), a heartbeat and
/// describes each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_message_older_than_its_hooks_global_timeout_is_deleted() {
    const AGE: u64 = 4000;
    let aws = aws().await;
    let g = group(
        &aws,
        "outlived",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 30,
            default_result: "ABANDON",
        },
    )
    .await;
    let queue_name = queue_name(&g.queue_url);
    realism_queue(&queue_name, json!({"sent_age": AGE})).await;
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, &g.queue_url, &config("", &marker("mark", "ran"))).await;
    n.start();
    n.wait_log("polling the lifecycle queue", LONG).await;
    let then = std::time::SystemTime::now() - Duration::from_secs(AGE);
    let body = flat_termination_at(&g, &me, &humantime::format_rfc3339_millis(then).to_string());
    let id = send(&aws, &g.queue_url, &body).await;
    wait_for("the outlived message to be deleted", LONG, || async {
        deleted(&queue_name).await.contains_key(&id).then_some(())
    })
    .await;
    let log = n.log();
    assert!(log.contains("older than its hook's GlobalTimeout"), "{log}");
    assert!(lines(&n.path("ran")).is_empty(), "nothing ran: {log}");
    assert_eq!(state(&aws, &me).await.as_deref(), Some("InService"));
}

const HELD: &str = "held out of every consumer's sight for a while";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_instance_holds_no_message_back_from_its_owner() {
    // A message that keeps coming back after a minute in the queue is held out of sight for a
    // while (1, 2, 4… s): it is probably a dead instance's. The hold hides it from every
    // consumer, its owner included; in a mass departure the owners are alive and leaving too.
    // So a leaving instance holds nothing, while one that cannot tell still does.
    let aws = aws().await;
    let g = group(&aws, "noheld", GroupSpec::default()).await;
    let queue_name = queue_name(&g.queue_url);
    // Messages that look a minute and a half old.
    realism_queue(&queue_name, json!({"sent_age": 90})).await;
    let me = g.instances[0].clone();
    let mut leaving = Node::new(&me, &g.queue_url, &config("", "")).await;
    imds_override(
        &leaving.imds,
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        200,
        "Terminated",
    )
    .await;
    let mut unsure = Node::new(&me, &g.queue_url, &config("", "")).await;
    imds_override(
        &unsure.imds,
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        404,
        "",
    )
    .await;
    let id = send(
        &aws,
        &g.queue_url,
        &flat_termination(&g, "i-0ccccccccccccccc2"),
    )
    .await;
    // One after the other, so that each sees the message alone.
    for (n, holds) in [(&mut unsure, true), (&mut leaving, false)] {
        n.start();
        let again = format!("message_id={id}");
        wait_for("five receptions of the message", LONG, || async {
            let seen = n
                .log()
                .lines()
                .filter(|l| l.contains(&again) && l.contains("releasing it"))
                .count();
            (seen >= 5).then_some(())
        })
        .await;
        n.signal(Signal::SIGTERM);
        assert_eq!(n.wait_exit(LONG).await, Some(0));
        let log = n.log();
        let held: Vec<&str> = log.lines().filter(|l| l.contains(HELD)).collect();
        if holds {
            // Released at once twice, then held 1 s, 2 s…
            assert!(held.len() >= 2, "{log}");
            assert!(held[0].contains("hold_s=1"), "{log}");
            assert!(held[1].contains("hold_s=2"), "{log}");
        } else {
            assert!(held.is_empty(), "a leaving instance held a message: {log}");
            assert!(log.contains("releasing others' messages at once"), "{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_that_expired_while_another_hook_holds_the_instance_is_done() {
    // lastcall's hook (named) and a second terminating hook that nobody completes; heartbeats
    // off and a step longer than the hook's HeartbeatTimeout: lastcall's action expires (its
    // DefaultResult CONTINUE), the other hook keeps the instance in Terminating:Wait. Before:
    // "not the action's (forged or garbled)", the message kept and the error again every
    // visibility timeout for as long as the other hook waits.
    let aws = aws().await;
    let spec = GroupSpec {
        heartbeat_timeout: 3,
        default_result: "CONTINUE",
        ..Default::default()
    };
    let g = group(&aws, "expired2", spec).await;
    add_hook(
        &aws,
        &g.name,
        &format!("{}-other", g.name),
        "autoscaling:EC2_INSTANCE_TERMINATING",
        None,
        &GroupSpec::default(),
    )
    .await;
    let victim = g.instances[0].clone();
    let steps = format!(
        "{}\n[[step]]\nkind = \"sleep\"\nduration = \"6s\"\n",
        marker("mark", "ran")
    );
    let cfg = config(
        &format!("hook_name = \"{}\"\nheartbeat = \"off\"", g.hook),
        &steps,
    );
    let mut n = Node::new(&victim, &g.queue_url, &cfg).await;
    n.start();
    terminate(&aws, &victim).await;
    n.wait_log("termination handled", LONG).await;
    assert!(
        n.log().contains("completed already or it expired"),
        "{}",
        n.log()
    );
    assert!(n.log().contains("accepted=false"), "{}", n.log());
    assert_eq!(
        state(&aws, &victim).await.as_deref(),
        Some("Terminating:Wait"),
        "the other hook holds it"
    );
    wait_queue_empty(&aws, &g.queue_url, Duration::from_secs(10)).await;
    assert_eq!(lines(&n.path("ran")).len(), 1, "{}", n.log());
    assert!(!n.log().contains("forged"), "{}", n.log());
}

//! End-to-end tests of the instance-metadata sources (no queue, spot notices, launches), and of
//! the queue and metadata sources together: the built binary against the emulator, whose fake
//! IMDS reports the target lifecycle state from the group.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(40);

fn marker(name: &str, file: &str, extra: &str) -> String {
    format!(
        "\n[[step]]\nkind = \"command\"\nname = \"{name}\"\ncommand = [\"/bin/sh\", \"-c\", \"echo \\\"$0\\\" >> {{dir}}/{file}\", \"{{instance_id}} {{transition}}\"]\n{extra}\n"
    )
}

fn imds_config(extra: &str, steps: &str) -> String {
    format!(
        "[imds]\nlifecycle = true\npoll_interval = \"200ms\"\n{extra}\n[lifecycle]\nstate_dir = \"{{dir}}/state\"\n{steps}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queue_scale_in_completes_by_instance_id() {
    let aws = aws().await;
    let name = unique("noqueue");
    let g = group_with_target(
        &aws,
        &name,
        None,
        GroupSpec {
            size: 2,
            ..Default::default()
        },
    )
    .await;
    let mut nodes = Vec::new();
    for i in &g.instances {
        let mut n = Node::new(i, "", &imds_config("", &marker("mark", "ran", ""))).await;
        n.start();
        nodes.push(n);
    }
    for n in &nodes {
        n.wait_log("target lifecycle state target_state=InService", LONG)
            .await;
    }
    set_desired(&aws, &g.name, 1).await;
    let victim = wait_victim(&aws, &g.instances, LONG).await;
    wait_terminated(&aws, &victim, LONG).await;
    let acts = actions(&victim).await;
    assert_eq!(acts.len(), 1);
    assert_eq!(
        (acts[0]["state"].as_str(), acts[0]["result"].as_str()),
        (Some("completed"), Some("CONTINUE"))
    );
    for n in &nodes {
        let ran = lines(&n.path("ran"));
        if n.instance == victim {
            assert_eq!(
                ran,
                [format!("{victim} autoscaling:EC2_INSTANCE_TERMINATING")]
            );
            assert!(n.log().contains("termination handled"));
            assert!(n.log().contains("trigger=\"imds\""));
        } else {
            assert!(ran.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_metadata_together_run_one_pipeline_and_clean_the_queue() {
    let aws = aws().await;
    let g = group(
        &aws,
        "both",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let victim = g.instances[0].clone();
    let n = queue_and_metadata(
        &g,
        "wait_time = \"1s\"\nvisibility_timeout = \"3s\"\n",
        "1s",
    )
    .await;
    terminate(&aws, &victim).await;
    wait_terminated(&aws, &victim, LONG).await;
    assert_eq!(lines(&n.path("ran")).len(), 1, "one pipeline: {}", n.log());
    assert_eq!(completed_count(&victim).await, 1);
    wait_queue_empty(&aws, &g.queue_url, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_comes_while_metadata_runs_the_pipeline_is_deleted_soon_after() {
    // Queue and metadata together, the notification late (it often is: Auto Scaling sends it
    // "while the instance is in a wait state", through SNS or EventBridge): instance metadata
    // starts the pipeline, and the message arrives while it runs. The queue source must not
    // keep it out of sight for its whole visibility timeout (5 min by default): by then the
    // instance is gone, and its message would circulate among the survivors for days.
    let aws = aws().await;
    let g = group(&aws, "bothlate", GroupSpec::of(1)).await;
    realism(&g.name, json!({"notification_delay": 1})).await;
    let victim = g.instances[0].clone();
    let n = queue_and_metadata(&g, "", "4s").await;
    terminate(&aws, &victim).await;
    n.wait_log("another lastcall process is handling this action", LONG)
        .await;
    wait_terminated(&aws, &victim, LONG).await;
    // Back within seconds, recognised as done, deleted.
    wait_queue_empty(&aws, &g.queue_url, Duration::from_secs(20)).await;
    assert_eq!(lines(&n.path("ran")).len(), 1, "one pipeline: {}", n.log());
    assert_eq!(completed_count(&victim).await, 1);
    n.wait_log("no more receiving from the lifecycle queue", LONG)
        .await;
}

/// A started node of `g`'s only instance with both sources (`sqs` adds to `[sqs]`), whose
/// steps mark "ran" and then sleep for `sleep`; both sources are running when it returns.
async fn queue_and_metadata(g: &Group, sqs: &str, sleep: &str) -> Node {
    let steps = marker(
        "mark",
        "ran",
        &format!("[[step]]\nkind = \"sleep\"\nduration = \"{sleep}\"\n"),
    );
    let cfg = format!(
        "[sqs]\nqueue_url = \"{{queue}}\"\n{sqs}{}",
        imds_config("", &steps)
    );
    let mut n = Node::new(&g.instances[0], &g.queue_url, &cfg).await;
    n.start();
    n.wait_log("polling the lifecycle queue", LONG).await;
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    n
}

async fn completed_count(instance: &str) -> usize {
    actions(instance)
        .await
        .iter()
        .filter(|a| a["state"] == "completed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_runs_the_spot_steps_before_its_deadline() {
    let aws = aws().await;
    let name = unique("spot");
    let g = group_with_target(
        &aws,
        &name,
        None,
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let me = g.instances[0].clone();
    let steps = format!(
        "{}{}\n[[step]]\nkind = \"sleep\"\nname = \"long-drain\"\nduration = \"20s\"\ntimeout = \"30s\"\n{}",
        marker("flush", "flushed", ""),
        marker("not-on-spot", "never", "on_spot = false"),
        marker("after", "after", "")
    );
    let mut n = Node::new(&me, "", &imds_config("spot = true", &steps)).await;
    n.start();
    n.wait_log("polling instance metadata", LONG).await;
    let deadline = std::time::SystemTime::now() + Duration::from_secs(3);
    let body = format!(
        "{{\"action\": \"terminate\", \"time\": \"{}\"}}",
        humantime::format_rfc3339_seconds(deadline)
    );
    let start = Instant::now();
    imds_override(
        &n.imds,
        "/latest/meta-data/spot/instance-action",
        200,
        &body,
    )
    .await;
    n.wait_log("spot interruption handled", LONG).await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "finished near the deadline, not after the 20s step: {took:?}"
    );
    assert_eq!(lines(&n.path("flushed")).len(), 1);
    assert!(lines(&n.path("flushed"))[0].ends_with("spot:terminate"));
    assert!(
        lines(&n.path("never")).is_empty(),
        "on_spot = false is not run"
    );
    // The step after the squeezed one has no time left.
    assert!(lines(&n.path("after")).is_empty());
    let log = n.log();
    assert!(
        log.contains("cut short by the interruption deadline"),
        "{log}"
    );
    assert!(log.contains("outcome=\"timed_out\""));
    // Nothing to complete: the instance is still in service as far as the group knows.
    assert_eq!(state(&aws, &me).await.as_deref(), Some("InService"));
    // The notice stays in metadata; the steps are not run again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines(&n.path("flushed")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_and_the_hook_share_one_departure_and_a_rebalance_retires_nothing() {
    // Before: the spot notice and the termination hook of the same instance were journaled
    // apart, so every step ran twice; a rebalance recommendation ran the on_spot steps (all, by
    // default: monitoring retired while the instance ran on for hours) and then counted as the
    // spot notice, so a real interruption later ran nothing.
    let aws = aws().await;
    let name = unique("departure");
    let g = group_with_target(&aws, &name, None, GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let steps = format!(
        "{}{}{}",
        marker("drain", "drained", "on_rebalance = true"),
        marker("flush", "flushed", ""),
        marker("retire-monitoring", "retired", "on_spot = false")
    );
    let mut n = Node::new(
        &me,
        "",
        &imds_config("spot = true\nrebalance = true", &steps),
    )
    .await;
    n.start();
    n.wait_log("polling instance metadata", LONG).await;
    // A rebalance recommendation: only the step marked for it.
    imds_override(
        &n.imds,
        "/latest/meta-data/events/recommendations/rebalance",
        200,
        "{\"noticeTime\": \"2026-01-01T00:00:00Z\"}",
    )
    .await;
    n.wait_log("rebalance recommendation handled", LONG).await;
    assert_eq!(lines(&n.path("drained")).len(), 1);
    assert!(lines(&n.path("flushed")).is_empty(), "{}", n.log());
    assert!(lines(&n.path("retired")).is_empty());
    // The interruption notice: the on_spot steps, monitoring not yet.
    let deadline = std::time::SystemTime::now() + Duration::from_secs(120);
    imds_override(
        &n.imds,
        "/latest/meta-data/spot/instance-action",
        200,
        &format!(
            "{{\"action\": \"terminate\", \"time\": \"{}\"}}",
            humantime::format_rfc3339_seconds(deadline)
        ),
    )
    .await;
    n.wait_log("spot interruption handled", LONG).await;
    assert_eq!(
        lines(&n.path("drained")).len(),
        2,
        "a departure step of its own"
    );
    assert_eq!(lines(&n.path("flushed")).len(), 1);
    assert!(lines(&n.path("retired")).is_empty());
    // Then the group terminates it through its hook: what the notice did is not done again.
    terminate(&aws, &me).await;
    n.wait_log("termination handled", LONG).await;
    wait_terminated(&aws, &me, LONG).await;
    assert_eq!(lines(&n.path("drained")).len(), 2, "{}", n.log());
    assert_eq!(lines(&n.path("flushed")).len(), 1, "{}", n.log());
    assert_eq!(lines(&n.path("retired")).len(), 1, "{}", n.log());
    assert!(n
        .log()
        .contains("done already for another trigger of this departure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_terminating_hooks_need_a_configured_name() {
    let aws = aws().await;
    let name = unique("twohooks");
    let g = group_with_target(
        &aws,
        &name,
        None,
        GroupSpec {
            size: 1,
            heartbeat_timeout: 30,
            ..Default::default()
        },
    )
    .await;
    let other = format!("{name}-other");
    add_hook(
        &aws,
        &g.name,
        &other,
        "autoscaling:EC2_INSTANCE_TERMINATING",
        None,
        &GroupSpec {
            size: 1,
            heartbeat_timeout: 30,
            default_result: "CONTINUE",
        },
    )
    .await;
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, "", &imds_config("", &marker("mark", "ran", ""))).await;
    n.start();
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    // Said at the daemon's start, naming both hooks and the fix.
    n.wait_log(
        "set [lifecycle] hook_name to the one lastcall completes",
        LONG,
    )
    .await;
    assert!(n.log().contains(&g.hook) && n.log().contains(&other));
    // A termination that comes anyway runs the steps once and completes neither hook (design
    // §2.1). Before: nothing ran at all, and the instance waited out its hooks.
    terminate(&aws, &me).await;
    n.wait_log("no hook completed", LONG).await;
    assert_eq!(lines(&n.path("ran")).len(), 1);
    assert!(
        actions(&me).await.iter().all(|a| a["state"] == "pending"),
        "no hook completed"
    );

    // With the name configured, lastcall completes its own hook only; the other stays pending.
    let mut m = Node::new(
        &me,
        "",
        &imds_config("", &marker("mark", "ran", "")).replace(
            "[lifecycle]\n",
            &format!("[lifecycle]\nhook_name = \"{}\"\n", g.hook),
        ),
    )
    .await;
    n.signal(nix::sys::signal::Signal::SIGTERM);
    n.wait_exit(LONG).await;
    m.start();
    m.wait_log("termination handled", LONG).await;
    let acts = actions(&me).await;
    let mine: Vec<_> = acts
        .iter()
        .filter(|a| a["hook"] == g.hook.as_str())
        .collect();
    let theirs: Vec<_> = acts
        .iter()
        .filter(|a| a["hook"] == other.as_str())
        .collect();
    assert_eq!(mine[0]["state"], "completed");
    assert_eq!(
        theirs[0]["state"], "pending",
        "the other tool's hook is not ours to complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_steps_run_and_continue_or_abandon() {
    let aws = aws().await;
    let name = unique("launch");
    let g = group_with_target(
        &aws,
        &name,
        None,
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
        None,
        &GroupSpec::default(),
    )
    .await;
    set_desired(&aws, &g.name, 2).await;
    let ids = wait_for("two pending instances", LONG, || async {
        let ids = instances(&aws, &g.name).await;
        (ids.len() == 2).then_some(ids)
    })
    .await;
    for i in &ids {
        assert_eq!(state(&aws, i).await.as_deref(), Some("Pending:Wait"));
    }
    let launch = |fail: bool| {
        format!(
            "\n[[launch_step]]\nkind = \"command\"\nname = \"register\"\ncommand = [\"/bin/sh\", \"-c\", \"echo \\\"$0\\\" >> {{dir}}/launched; exit {}\", \"{{instance_id}} {{transition}}\"]\non_failure = \"abort\"\n",
            if fail { 1 } else { 0 }
        )
    };
    // hook_name names the terminating hook; the launch is completed on the group's only
    // launching hook. Before: one hook_name for both, and "hook … is not a launch hook".
    let drain = format!("hook_name = \"{}\"\n", g.hook);
    let mut good = Node::new(
        &ids[0],
        "",
        &imds_config("", &(drain.clone() + &launch(false))),
    )
    .await;
    let mut bad = Node::new(&ids[1], "", &imds_config("", &(drain + &launch(true)))).await;
    // `once` at boot, as a timer would run it.
    assert_eq!(good.once(&[]), 0, "{}", good.log());
    assert_eq!(bad.once(&[]), 4, "{}", bad.log());
    assert_eq!(
        lines(&good.path("launched")),
        [format!("{} autoscaling:EC2_INSTANCE_LAUNCHING", ids[0])]
    );
    assert_eq!(state(&aws, &ids[0]).await.as_deref(), Some("InService"));
    let bad_acts = actions(&ids[1]).await;
    assert_eq!(bad_acts[0]["result"], "ABANDON", "{bad_acts:?}");
    wait_terminated(&aws, &ids[1], LONG).await;
    // A later check finds nothing more to do.
    assert_eq!(good.once(&[]), 0);
    assert_eq!(lines(&good.path("launched")).len(), 1);
}

/// A group of two with a warm pool that reuses instances on scale-in, and a running lastcall on
/// each: the first sees its actions through instance metadata, the second through the queue.
/// Their steps: "flush" (also on a return to the pool) and "retire-monitoring" (not: monitoring
/// must survive a trip to the pool).
async fn warm_pool_pair(
    aws: &Aws,
    prefix: &str,
    state: aws_sdk_autoscaling::types::WarmPoolState,
) -> (String, Node, String, Node) {
    let g = group(
        aws,
        prefix,
        GroupSpec {
            size: 2,
            ..Default::default()
        },
    )
    .await;
    aws.asg
        .put_warm_pool()
        .auto_scaling_group_name(&g.name)
        .pool_state(state)
        .instance_reuse_policy(
            aws_sdk_autoscaling::types::InstanceReusePolicy::builder()
                .reuse_on_scale_in(true)
                .build(),
        )
        .send()
        .await
        .expect("warm pool");
    let steps = format!(
        "{}{}",
        marker("flush", "flushed", ""),
        marker("retire-monitoring", "retired", "warm_pool = false")
    );
    let (a, b) = (g.instances[0].clone(), g.instances[1].clone());
    let mut na = Node::new(&a, "", &imds_config("", &steps)).await;
    let sqs_cfg = format!(
        "[sqs]\nqueue_url = \"{{queue}}\"\nwait_time = \"1s\"\n[lifecycle]\nstate_dir = \"{{dir}}/state\"\n{steps}"
    );
    let mut nb = Node::new(&b, &g.queue_url, &sqs_cfg).await;
    na.start();
    nb.start();
    na.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    nb.wait_log("polling the lifecycle queue", LONG).await;
    (a, na, b, nb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_return_runs_only_warm_pool_steps_and_keeps_monitoring() {
    let aws = aws().await;
    let (a, na, b, nb) = warm_pool_pair(
        &aws,
        "warm",
        aws_sdk_autoscaling::types::WarmPoolState::Stopped,
    )
    .await;
    for (i, n) in [(&a, &na), (&b, &nb)] {
        terminate(&aws, i).await;
        n.wait_log("warm-pool return handled", LONG).await;
        wait_for("the warmed state", LONG, || async {
            (state(&aws, i).await.as_deref() == Some("Warmed:Stopped")).then_some(())
        })
        .await;
        assert_eq!(lines(&n.path("flushed")).len(), 1, "{}", n.log());
        assert!(
            lines(&n.path("retired")).is_empty(),
            "monitoring kept: {}",
            n.log()
        );
        let acts = actions(i).await;
        assert_eq!(acts[0]["destination"], "WarmPool");
        assert_eq!(acts[0]["result"], "CONTINUE");
    }
    assert!(nb.log().contains("warm_pool=true"));
}

/// Auto Scaling calls the emulator counted for one access key.
async fn autoscaling_calls(key: &str) -> u64 {
    calls_by(key).await["autoscaling"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_metadata_mode_makes_no_aws_calls_even_with_launch_steps_or_a_reload() {
    // Before: with launch steps, an instance in service described itself every poll for its
    // whole life (about 500 calls/s for 1,000 instances, the budget heartbeats and completions
    // need), again after every restart or SIGHUP.
    let aws = aws().await;
    let g = group(&aws, "idle", GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let launch = "\n[[launch_step]]\nkind = \"command\"\ncommand = [\"/bin/true\"]\n";
    let mut n = Node::new(&me, "", &imds_config("", launch)).await;
    let key = n.start_with_key("IDLEKEY");
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = autoscaling_calls(&key).await;
    assert!(
        settled <= 4,
        "start-up costs a few calls at most: {settled}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(autoscaling_calls(&key).await, settled, "idle: no AWS call");
    n.signal(nix::sys::signal::Signal::SIGHUP);
    n.wait_log("SIGHUP: config reloaded", LONG).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        autoscaling_calls(&key).await,
        settled,
        "a reload keeps what the source learned: {}",
        n.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_termination_from_the_warm_pool_runs_the_whole_pipeline() {
    // An instance of a Running warm pool is terminated from the pool (instance refresh, pool
    // shrink): it waits in Warmed:Terminating:Wait. Before: the queue source called the
    // notification suspicious and ran nothing; the metadata source ignored Warmed:Terminated.
    let aws = aws().await;
    let (a, na, b, nb) = warm_pool_pair(
        &aws,
        "warmterm",
        aws_sdk_autoscaling::types::WarmPoolState::Running,
    )
    .await;
    for (i, n) in [(&a, &na), (&b, &nb)] {
        // Into the pool (monitoring kept), then terminated from it (monitoring retired).
        terminate(&aws, i).await;
        n.wait_log("warm-pool return handled", LONG).await;
        wait_for("the warmed state", LONG, || async {
            (state(&aws, i).await.as_deref() == Some("Warmed:Running")).then_some(())
        })
        .await;
        terminate(&aws, i).await;
        n.wait_log("termination handled", LONG).await;
        wait_terminated(&aws, i, LONG).await;
        assert_eq!(lines(&n.path("flushed")).len(), 2, "{}", n.log());
        assert_eq!(lines(&n.path("retired")).len(), 1, "{}", n.log());
        let acts = actions(i).await;
        let last = acts.last().expect("actions");
        assert_eq!(last["origin"], "WarmPool");
        assert_eq!(last["state"], "completed", "{acts:?}");
        assert_eq!(last["result"], "CONTINUE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_which_sources_will_work() {
    let aws = aws().await;
    let g = group(
        &aws,
        "check",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let cfg = format!(
        "[sqs]\nqueue_url = \"{{queue}}\"\n{}",
        imds_config("", &marker("mark", "ran", ""))
    );
    let mut n = Node::new(&g.instances[0], &g.queue_url, &cfg).await;
    let (code, text) = n.stdout_of(&["check"]);
    assert_eq!(code, Some(0), "{text}\n{}", n.log());
    for needle in [
        "[ ok ] instance metadata (IMDSv2)",
        "[ ok ] Auto Scaling (DescribeAutoScalingInstances): group",
        "[ ok ] source imds: target-lifecycle-state: InService",
        &format!(
            "[ ok ] terminating hook (DescribeLifecycleHooks): {} will be completed",
            g.hook
        ),
        "[ ok ] permission autoscaling:RecordLifecycleActionHeartbeat: allowed",
        "[ ok ] queue (GetQueueAttributes)",
        "[ ok ] instance lifecycle policy (DescribeAutoScalingGroups): ABANDON (on_failure_result, or a hook's DefaultResult at its timeout) terminates the instance",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("maxReceiveCount"), "{text}");
    assert!(!text.contains("[lifecycle] heartbeat"), "{text}");
    // F21: a fixed heartbeat interval not shorter than the hook's HeartbeatTimeout (300 s) lets
    // the action expire between heartbeats: check fails and says what to set.
    let slow = cfg.replace("[lifecycle]\n", "[lifecycle]\nheartbeat = \"5m\"\n");
    let mut slow_node = Node::new(&g.instances[0], &g.queue_url, &slow).await;
    let (code, slow_text) = slow_node.stdout_of(&["check"]);
    assert_eq!(code, Some(1), "{slow_text}");
    assert!(
        slow_text.contains(&format!(
            "[FAIL] [lifecycle] heartbeat: every 300s, but hook {}'s HeartbeatTimeout is 300s",
            g.hook
        )),
        "{slow_text}"
    );
    // A dead-letter queue whose maxReceiveCount suits a small group but not this one's MaxSize:
    // in an instance refresh each message passes through about as many wrong instances as
    // are leaving.
    let (_, dlq_arn) = queue(&aws, &format!("{}-dlq", g.name)).await;
    set_redrive(&aws, &g.queue_url, &dlq_arn, 150).await;
    aws.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name(&g.name)
        .max_size(100)
        .send()
        .await
        .expect("set the group's MaxSize");
    let (code, text) = n.stdout_of(&["check"]);
    assert_eq!(code, Some(0), "a warning, not a failure: {text}");
    assert!(
        text.contains("[warn] the queue's dead-letter maxReceiveCount is 150 and the group can have 100 instances")
            && text.contains("a count below 200 (2 x MaxSize)"),
        "{text}"
    );
    // Since November 2025 a group's instance lifecycle policy can keep an abandoned instance:
    // check says what ABANDON will do, and warns when lastcall would send it.
    aws.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name(&g.name)
        .instance_lifecycle_policy(
            aws_sdk_autoscaling::types::InstanceLifecyclePolicy::builder()
                .retention_triggers(
                    aws_sdk_autoscaling::types::RetentionTriggers::builder()
                        .terminate_hook_abandon(aws_sdk_autoscaling::types::RetentionAction::Retain)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("set the instance lifecycle policy");
    let abandon = cfg.replace(
        "[lifecycle]\n",
        "[lifecycle]\non_failure_result = \"ABANDON\"\n",
    );
    std::fs::write(
        n.path("lastcall.toml"),
        abandon
            .replace(
                "{dir}",
                n.path("").to_str().expect("utf8").trim_end_matches('/'),
            )
            .replace("{queue}", &g.queue_url),
    )
    .expect("config");
    let (_, text) = n.stdout_of(&["check"]);
    assert!(
        text.contains("TerminateHookAbandon = retain: ABANDON")
            && text.contains("[warn] on_failure_result = \"ABANDON\": an instance whose step failed stays in Terminating:Retained"),
        "{text}"
    );
    std::fs::write(
        n.path("lastcall.toml"),
        cfg.replace(
            "{dir}",
            n.path("").to_str().expect("utf8").trim_end_matches('/'),
        )
        .replace("{queue}", &g.queue_url),
    )
    .expect("config");
    // A second terminating hook makes the choice ambiguous: check says so and fails.
    add_hook(
        &aws,
        &g.name,
        "other-tool",
        "autoscaling:EC2_INSTANCE_TERMINATING",
        None,
        &GroupSpec::default(),
    )
    .await;
    let (code, text) = n.stdout_of(&["check"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("[FAIL] terminating hook (DescribeLifecycleHooks)")
            && text.contains("set [lifecycle] hook_name"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_simulate_show_and_run_the_steps_without_lifecycle_calls() {
    let aws = aws().await;
    let g = group(
        &aws,
        "plan",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let me = g.instances[0].clone();
    let steps = format!(
        "{}\n[[step]]\nkind = \"zabbix\"\nurl = \"http://127.0.0.1:9/api_jsonrpc.php\"\ntoken_env = \"NOT_SET\"\n",
        marker("mark", "ran", "")
    );
    let mut n = Node::new(&me, &g.queue_url, &imds_config("", &steps)).await;
    let run = |n: &mut Node, args: &[&str]| {
        let out = n
            .command(args)
            .stdout(std::process::Stdio::piped())
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, text) = run(&mut n, &["plan"]);
    assert_eq!(code, Some(0), "{text}{}", n.log());
    assert!(
        text.contains(&format!("lastcall plan for {me}"))
            && text.contains(&format!("in {}: InService", g.name)),
        "{text}"
    );
    assert!(
        text.contains(&format!("completes hook: {}", g.hook)),
        "{text}"
    );
    assert!(text.contains(&format!("1. mark [command, timeout 2m, on failure continue]: run [\"/bin/sh\", \"-c\", \"echo \\\"$0\\\" >> {}/ran\", \"{me} autoscaling:EC2_INSTANCE_TERMINATING\"]", n.dir.path().display())), "{text}");
    assert!(text.contains("2. zabbix [zabbix, timeout 2m, on failure continue]: delete the Zabbix host with host "), "{text}");
    // The warm-pool plan leaves Zabbix out.
    let warm = text
        .split("On a return to the warm pool:")
        .nth(1)
        .expect("warm section");
    assert!(
        warm.contains("1. mark") && !warm.contains("2. zabbix"),
        "{text}"
    );
    assert!(lines(&n.path("ran")).is_empty(), "plan runs nothing");

    let (code, text) = run(&mut n, &["simulate", "--group", "web-prod", "--dry-run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("dry run") && lines(&n.path("ran")).is_empty(),
        "{text}"
    );

    let (code, text) = run(&mut n, &["simulate", "--group", "web-prod"]);
    assert_eq!(
        code,
        Some(4),
        "the zabbix step fails (no token): {text}\n{}",
        n.log()
    );
    assert_eq!(
        lines(&n.path("ran")),
        [format!("{me} autoscaling:EC2_INSTANCE_TERMINATING")]
    );
    assert!(
        text.contains("1 step(s) ok, 1 failed")
            && text.contains("would complete the action with CONTINUE"),
        "{text}"
    );
    assert!(n
        .log()
        .contains("environment variable NOT_SET (a secret) is not set"));
    assert!(n.journal().is_empty(), "the real journal is untouched");
    assert_eq!(state(&aws, &me).await.as_deref(), Some("InService"));
    assert!(actions(&me).await.is_empty(), "no lifecycle call");

    let foreign = n.path("foreign.json");
    std::fs::write(&foreign, r#"{"LifecycleTransition":"autoscaling:EC2_INSTANCE_TERMINATING","EC2InstanceId":"i-0aaaaaaaaaaaaaaaa","AutoScalingGroupName":"x","LifecycleHookName":"h"}"#).expect("write");
    let out = n
        .command(&["simulate", "--message", foreign.to_str().expect("utf8")])
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would leave it to its owner"));
}

/// DescribeAutoScalingInstances calls the emulator counted for one access key.
async fn describes(key: &str) -> u64 {
    calls_by(key).await["autoscaling"]["DescribeAutoScalingInstances"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_added_after_the_daemon_started_is_handled() {
    // The packaged default config (no hook_name) on a group whose hook is added later (the
    // imds-mode stack added to a running group). Before: the hook list was described once, at
    // start, and every termination of the running fleet waited out the hook's timeout with no
    // step run ("has no terminating lifecycle hook").
    let aws = aws().await;
    let name = unique("latehook");
    let g = group_with_target(&aws, &name, None, GroupSpec::default()).await;
    aws.asg
        .delete_lifecycle_hook()
        .auto_scaling_group_name(&g.name)
        .lifecycle_hook_name(&g.hook)
        .send()
        .await
        .expect("delete the hook");
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, "", &imds_config("", &marker("mark", "ran", ""))).await;
    n.start();
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spec = GroupSpec {
        default_result: "CONTINUE",
        ..Default::default()
    };
    add_hook(
        &aws,
        &g.name,
        "added-later",
        "autoscaling:EC2_INSTANCE_TERMINATING",
        None,
        &spec,
    )
    .await;
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, Duration::from_secs(60)).await;
    assert_eq!(lines(&n.path("ran")).len(), 1, "{}", n.log());
    let acts = actions(&me).await;
    assert_eq!(acts[0]["hook"], "added-later", "{acts:?}");
    assert_eq!(acts[0]["state"], "completed", "{acts:?}");
    assert_eq!(acts[0]["result"], "CONTINUE", "{acts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_group_lags_behind_metadata_its_describes_back_off() {
    // Instance metadata says Terminated while DescribeAutoScalingInstances still shows the
    // state before the wait (on AWS: the load balancer's deregistration delay, 300 s by default,
    // runs before the hooks). Before: one describe per poll (here every 200 ms, 2 s by default)
    // for as long as that lasts, and the same after errors.
    let aws = aws().await;
    let g = group(&aws, "lagdesc", GroupSpec::default()).await;
    realism(&g.name, json!({"describe_lag": 20})).await;
    let me = g.instances[0].clone();
    let mut n = Node::new(&me, "", &imds_config("", &marker("mark", "ran", ""))).await;
    let key = n.start_with_key("LAGKEY");
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    let before = describes(&key).await;
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, Duration::from_secs(60)).await;
    let during = describes(&key).await - before;
    assert_eq!(lines(&n.path("ran")).len(), 1, "{}", n.log());
    // 2, 4, 8, 16 s (with jitter: at least half of each), then at most every 20 s: about 6 in
    // 20 s; a fixed 200 ms poll made about 100.
    assert!(
        (2..=12).contains(&during),
        "{during} DescribeAutoScalingInstances calls during a 20 s lag"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_waited_for_the_metadata_pipeline_is_deleted_at_its_completion() {
    // Both sources; instance metadata runs the pipeline (20 s of steps) and the queue source
    // finds the action busy. Before: the message came back after 5, 10, 20, 40 then 60 s, so
    // after completion it waited up to a minute while the instance shut down within seconds,
    // and then circulated among the survivors until the dead-letter queue or 48 h.
    let aws = aws().await;
    let g = group(&aws, "busywatch", GroupSpec::of(1)).await;
    // The notification comes a little after the wait began (as through SNS or EventBridge).
    realism(&g.name, json!({"notification_delay": 1})).await;
    let victim = g.instances[0].clone();
    let n = queue_and_metadata(&g, "", "20s").await;
    terminate(&aws, &victim).await;
    n.wait_log("another lastcall process is handling this action", LONG)
        .await;
    wait_terminated(&aws, &victim, LONG).await;
    // The instance powers off soon after completion.
    tokio::time::sleep(Duration::from_secs(3)).await;
    n.signal(nix::sys::signal::Signal::SIGKILL);
    let (visible, in_flight) = queue_counts(&aws, &g.queue_url).await;
    assert_eq!(
        (visible, in_flight),
        (0, 0),
        "the notification is deleted at completion: {}",
        n.log()
    );
    assert!(
        n.log().contains("completed by another pipeline"),
        "{}",
        n.log()
    );
}

//! Fault injection: `tests/faults/proxy.py` between lastcall and the emulator (or IMDS, Zabbix)
//! returns errors in each protocol's own format, throttles, resets connections. Each case says
//! what must happen: the daemon survives, backs off, and completes exactly once when the service
//! returns; a step that cannot reach its service fails with a message that names it.
//!
//! Outages are seconds here rather than the minute an operator might see, to keep the suite fast;
//! the code paths are the same.

mod common;

use std::time::Duration;

use common::services::*;
use common::*;
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn marker() -> &'static str {
    "[[step]]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo ran >> {dir}/ran\"]\n"
}

/// Starts `lastcall run` for the node with AWS (and optionally IMDS) behind proxies.
fn start_behind(n: &mut Node, aws: &Proxy, imds: Option<&str>) {
    let mut c = n.command(&["run"]);
    c.env("AWS_ENDPOINT_URL", &aws.url);
    if let Some(i) = imds {
        c.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", i);
    }
    n.child = Some(c.spawn().expect("start"));
}

fn completed(acts: &[serde_json::Value]) -> usize {
    acts.iter().filter(|a| a["state"] == "completed").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_down_at_start_the_daemon_backs_off_and_completes_once_it_returns() {
    let aws = aws().await;
    let proxy = Proxy::start(&emulator().endpoint);
    let g = group(&aws, "sqs-down", GroupSpec::default()).await;
    let me = g.instances[0].clone();
    // SQS answers 503 to the first dozen receives (a few polls, with the SDK's own retries),
    // and resets the connection on two more.
    proxy.rule(json!({"match": "ReceiveMessage", "action": "error", "status": 503, "code": "ServiceUnavailable", "message": "down", "count": 12})).await;
    proxy
        .rule(json!({"match": "ReceiveMessage", "action": "reset", "count": 2}))
        .await;
    let mut n = Node::new(&me, &g.queue_url, &config("", marker())).await;
    start_behind(&mut n, &proxy, None);
    n.wait_log("polling the queue failed; backing off", LONG)
        .await;
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, LONG).await;
    assert_eq!(lines(&n.path("ran")), ["ran"], "{}", n.log());
    assert_eq!(completed(&actions(&me).await), 1);
    let (seen, faulted) = proxy.count("ReceiveMessage").await;
    assert!(
        faulted >= 3 && seen > faulted,
        "{seen} receives, {faulted} failed"
    );
    // It backed off rather than spinning through the outage.
    assert!(seen < 60, "{seen} receives in the outage: no hot loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_throttled_five_times_is_retried_and_completes_once() {
    let aws = aws().await;
    let proxy = Proxy::start(&emulator().endpoint);
    let g = group(&aws, "throttled", GroupSpec::default()).await;
    let me = g.instances[0].clone();
    proxy.rule(json!({"match": "CompleteLifecycleAction", "action": "error", "status": 400, "code": "Throttling", "message": "Rate exceeded", "count": 5})).await;
    let mut n = Node::new(&me, &g.queue_url, &config("", marker())).await;
    start_behind(&mut n, &proxy, None);
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, LONG).await;
    let (seen, faulted) = proxy.count("CompleteLifecycleAction").await;
    assert_eq!(
        (seen, faulted),
        (6, 5),
        "five throttled, the sixth accepted"
    );
    assert_eq!(completed(&actions(&me).await), 1);
    assert_eq!(lines(&n.path("ran")), ["ran"]);
    wait_queue_empty(&aws, &g.queue_url, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_completion_answer_is_recognised_as_done() {
    let aws = aws().await;
    let proxy = Proxy::start(&emulator().endpoint);
    let g = group(&aws, "lost-answer", GroupSpec::default()).await;
    let me = g.instances[0].clone();
    // The completion reaches Auto Scaling, but its answer is lost (connection reset).
    proxy.rule(json!({"match": "CompleteLifecycleAction", "action": "reset", "forward": true, "count": 1})).await;
    let mut n = Node::new(&me, &g.queue_url, &config("", marker())).await;
    start_behind(&mut n, &proxy, None);
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, LONG).await;
    n.wait_log("termination handled", LONG).await;
    assert!(
        n.log()
            .contains("no active lifecycle action: already completed or expired"),
        "{}",
        n.log()
    );
    assert_eq!(completed(&actions(&me).await), 1);
    wait_queue_empty(&aws, &g.queue_url, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_heartbeats_are_survived_and_later_ones_keep_the_action_alive() {
    let aws = aws().await;
    let proxy = Proxy::start(&emulator().endpoint);
    // HeartbeatTimeout 4 s (heartbeats every 2 s), default ABANDON, a 9 s step.
    let g = group(
        &aws,
        "hb-fail",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 4,
            default_result: "ABANDON",
        },
    )
    .await;
    let me = g.instances[0].clone();
    proxy.rule(json!({"match": "RecordLifecycleActionHeartbeat", "action": "error", "status": 500, "code": "InternalFailure", "message": "boom", "count": 3})).await;
    let steps = format!(
        "{}[[step]]\nkind = \"sleep\"\nduration = \"9s\"\n",
        marker()
    );
    let mut n = Node::new(&me, &g.queue_url, &config("", &steps)).await;
    start_behind(&mut n, &proxy, None);
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, LONG).await;
    let acts = actions(&me).await;
    assert_eq!(
        (acts[0]["state"].as_str(), acts[0]["result"].as_str()),
        (Some("completed"), Some("CONTINUE")),
        "{acts:?}\n{}",
        n.log()
    );
    let (_, faulted) = proxy.count("RecordLifecycleActionHeartbeat").await;
    assert_eq!(faulted, 3);
}

/// A completion by instance id (the metadata source: no token) that Auto Scaling answers "No
/// active Lifecycle Action found" while the group shows the instance waiting is retried (the
/// target state can show before the action exists), with doubling pauses: 1, 2, 4 s… Before,
/// every second for a minute, a completion and a describe each time, from every leaving instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_by_instance_id_not_active_yet_is_retried_with_back_off() {
    let aws = aws().await;
    let proxy = Proxy::start(&emulator().endpoint);
    let g = group_with_target(&aws, &unique("notyet"), None, GroupSpec::default()).await;
    let me = g.instances[0].clone();
    proxy.rule(json!({"match": "CompleteLifecycleAction", "action": "error", "status": 400, "code": "ValidationError",
        "message": format!("No active Lifecycle Action found with instance ID {me}"), "count": 4})).await;
    let cfg = format!(
        "[imds]\nlifecycle = true\npoll_interval = \"200ms\"\n[lifecycle]\nstate_dir = \"{{dir}}/state\"\n{}",
        marker()
    );
    let mut n = Node::new(&me, "", &cfg).await;
    start_behind(&mut n, &proxy, None);
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, LONG).await;
    let log = proxy.log().await;
    let times: Vec<f64> = log
        .iter()
        .filter(|e| e["operation"] == "CompleteLifecycleAction")
        .filter_map(|e| e["time"].as_f64())
        .collect();
    assert_eq!(times.len(), 5, "four refused, the fifth accepted");
    // The fourth pause is 8 s, jittered to 4 s or more (every second before).
    let last = times[4] - times[3];
    assert!(last >= 3.5, "the last pause was {last:.2} s: {times:?}");
    assert_eq!(completed(&actions(&me).await), 1);
}

/// F26: a heartbeat refused for good (AccessDenied: the role lacks
/// autoscaling:RecordLifecycleActionHeartbeat) is not retried every quarter interval for as long
/// as the steps run; it is logged once as an error and tried again at the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_refused_for_good_is_not_hammered() {
    let aws = aws().await;
    let proxy = Proxy::start(&emulator().endpoint);
    // HeartbeatTimeout 8 s: heartbeats every 4 s; a quarter interval is 1 s.
    let g = group(
        &aws,
        "hb-denied",
        GroupSpec {
            size: 1,
            heartbeat_timeout: 8,
            default_result: "CONTINUE",
        },
    )
    .await;
    let me = g.instances[0].clone();
    proxy.rule(json!({"match": "RecordLifecycleActionHeartbeat", "action": "error", "status": 403, "code": "AccessDenied", "message": "User: arn:aws:sts::123456789012:assumed-role/web/i is not authorized to perform: autoscaling:RecordLifecycleActionHeartbeat", "count": 0})).await;
    let steps = "[[step]]\nkind = \"sleep\"\nduration = \"9s\"\n";
    let mut n = Node::new(&me, &g.queue_url, &config("", steps)).await;
    start_behind(&mut n, &proxy, None);
    terminate(&aws, &me).await;
    n.wait_log("step started step=sleep", LONG).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (_, refused) = proxy.count("RecordLifecycleActionHeartbeat").await;
    let log = n.log();
    // At once, then at 4 and 8 s (and the one that verified the notification): not every second.
    assert!((2..=5).contains(&refused), "{refused} heartbeats: {log}");
    assert_eq!(
        log.matches("retrying will not change that").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_down_at_start_and_refusing_a_token_later_are_survived() {
    let aws = aws().await;
    let proxy = Proxy::start(&emulator().endpoint);
    let name = unique("imds-down");
    let g = group_with_target(&aws, &name, None, GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let imds = imds(&me).await;
    let imds_proxy = Proxy::start(&imds);
    // No token for the first several tries (instance metadata not up yet at boot).
    imds_proxy
        .rule(json!({"match": "/latest/api/token", "action": "error", "status": 503, "count": 8}))
        .await;
    let cfg = format!(
        "[imds]\npoll_interval = \"200ms\"\n[lifecycle]\nstate_dir = \"{{dir}}/state\"\n{}",
        marker()
    );
    let mut n = Node::new(&me, "", &cfg).await;
    start_behind(&mut n, &proxy, Some(&imds_proxy.url));
    n.wait_log("cannot read instance metadata yet; retrying", LONG)
        .await;
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    // Later, a 401 on a read (an expired token, as IMDS answers it): the client gets a new
    // token and goes on.
    imds_proxy.rule(json!({"match": "/latest/meta-data/autoscaling/target-lifecycle-state", "action": "error", "status": 401, "count": 2})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, LONG).await;
    assert_eq!(lines(&n.path("ran")), ["ran"], "{}", n.log());
    assert_eq!(completed(&actions(&me).await), 1);
    assert!(
        n.child
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("wait")
            .is_none(),
        "still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zabbix_5xx_is_retried_within_the_timeout_and_named_when_it_does_not_recover() {
    use lastcall::config::Config;
    use lastcall::steps::StepEnv;
    use lastcall::template::Context;
    let z = zabbix();
    let upstream = z.url.trim_end_matches("/api_jsonrpc.php").to_string();
    let proxy = Proxy::start(&upstream);
    let url = format!("{}/api_jsonrpc.php", proxy.url);
    let run = |timeout: Duration, host: String| {
        let url = url.clone();
        async move {
            let text = format!(
                "[imds]\n[[step]]\nkind = \"zabbix\"\nurl = \"{url}\"\ntoken_file = \"{}\"\nhost = \"{host}\"",
                z.token_file.display()
            );
            let kind = Config::from_str(&text, std::path::Path::new("t.toml"))
                .unwrap_or_else(|e| panic!("{e}"))
                .config
                .steps
                .remove(0)
                .kind;
            let ctx = Context::default();
            let env = StepEnv {
                name: "zabbix",
                ctx: &ctx,
                resumed: false,
                deadline: tokio::time::Instant::now() + timeout,
            };
            kind.run(&env).await
        }
    };
    // Down for 2 seconds, then back: the step rides it out.
    let (h, _, _) = zabbix_host(z).await;
    proxy.rule(json!({"match": "/api_jsonrpc.php", "action": "error", "status": 503, "count": 0, "seconds": 2})).await;
    let out = run(Duration::from_secs(15), h.clone())
        .await
        .expect("recovered");
    assert!(out.contains("deleted Zabbix host"), "{out}");
    assert!(zabbix_get(z, &h).await.is_empty());
    // Down for good: a failure that names the service and what it answered.
    let (h, _, _) = zabbix_host(z).await;
    proxy.rule(json!({"match": "/api_jsonrpc.php", "action": "error", "status": 502, "count": 0, "seconds": 60})).await;
    let err = run(Duration::from_secs(2), h.clone())
        .await
        .expect_err("down");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot reach the Zabbix API")
            && msg.contains("502")
            && msg.contains("gave up"),
        "{msg}"
    );
    assert_eq!(zabbix_get(z, &h).await.len(), 1);
}

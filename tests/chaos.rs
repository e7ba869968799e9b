//! A randomized soak, reproducible from a seed: a group of lastcall daemons on a shared queue
//! **and** instance metadata, with the emulator's realism knobs on at random values (late
//! notifications, a lagging DescribeAutoScalingInstances and IMDS, "No active Lifecycle Action"
//! right after the wait began, partial receives, Auto Scaling throttling), for several rounds of:
//! scale-in (many leaving at once), scale-out, duplicate notifications, other groups' and other
//! tools' notifications, garbage, SIGKILL and restart of daemons at random moments, SIGHUP.
//!
//! At the end, from the emulator's records and the steps' own side effects: every terminated
//! instance ran each step once (twice only for a step a SIGKILL interrupted) before its action
//! was completed by lastcall, never expired; the other tool's hook was never completed; no other
//! group's message was deleted (the emulator's record of deletions, `GET /deleted/QUEUE`, says
//! who deleted what); nothing went to the dead-letter queue (maxReceiveCount 1000). It
//! prints the highest receive count, the Auto Scaling calls per termination and the throttling
//! errors. A failure prints the seed; `LASTCALL_CHAOS_SEED=N` runs that seed again.
//!
//! CI runs the short version (20 daemons, 3 rounds). By hand:
//! `LASTCALL_CHAOS_NODES=100 LASTCALL_CHAOS_MINUTES=30 cargo test --test chaos -- --ignored --nocapture`

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// xorshift64*: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Each step appends "<instance> <step>" to the node's `effects` file; the second one takes a
/// moment, so that a SIGKILL can land in the middle of a step.
fn node_config(hook: &str) -> String {
    let step = |name: &str, pause: &str| {
        format!(
            "[[step]]\nkind = \"command\"\nname = \"{name}\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep {pause}; echo \\\"$0 {name}\\\" >> {{dir}}/effects\", \"{{instance_id}}\"]\n"
        )
    };
    format!(
        "[sqs]\nqueue_url = \"{{queue}}\"\nwait_time = \"2s\"\nvisibility_timeout = \"20s\"\n\
         [imds]\nlifecycle = true\npoll_interval = \"500ms\"\n\
         [lifecycle]\nstate_dir = \"{{dir}}/state\"\nhook_name = \"{hook}\"\n{}{}",
        step("one", "0"),
        step("two", "0.4")
    )
}

struct Fleet {
    seed: u64,
    rng: Rng,
    aws: Aws,
    group: Group,
    nodes: BTreeMap<String, Node>,
    keys: BTreeMap<String, String>,
    /// SIGKILLs per instance.
    kills: BTreeMap<String, u32>,
    /// Instances whose action completed (their nodes are stopped at the next round).
    departed: BTreeSet<String>,
    /// Message ids of other groups' notifications: never to be deleted.
    foreign: BTreeSet<String>,
    throttle: Option<(f64, f64)>,
}

impl Fleet {
    fn say(&self, what: &str) {
        println!("[chaos seed {}] {what}", self.seed);
    }

    async fn start_node(&mut self, instance: &str) {
        let mut n = Node::new(
            instance,
            &self.group.queue_url,
            &node_config(&self.group.hook),
        )
        .await;
        let key = n.start_with_key("chaos");
        self.keys.insert(instance.to_string(), key);
        self.nodes.insert(instance.to_string(), n);
    }

    async fn apply_throttle(&self) {
        let Some((rate, burst)) = self.throttle else {
            return;
        };
        let keys: Vec<&String> = self.keys.values().collect();
        let r = reqwest::Client::new()
            .post(format!("{}/realism", emulator().control))
            .json(&json!({"autoscaling_throttle": {"rate": rate, "burst": burst, "keys": keys, "shared": true}}))
            .send()
            .await
            .expect("POST /realism");
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }

    /// One chaos event, chosen by the seed.
    async fn event(&mut self) {
        let live: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(i, _)| i.clone())
            .collect();
        match self.rng.below(6) {
            0 | 1 if !live.is_empty() => {
                let victim = live[self.rng.below(live.len())].clone();
                let n = self.nodes.get_mut(&victim).expect("node");
                n.signal(Signal::SIGKILL);
                n.wait_exit(Duration::from_secs(10)).await;
                *self.kills.entry(victim.clone()).or_default() += 1;
                let pause = self.rng.between(0.1, 2.0);
                tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                let key = self.keys[&victim].clone();
                let n = self.nodes.get_mut(&victim).expect("node");
                let mut cmd = n.command(&["run"]);
                cmd.env("AWS_ACCESS_KEY_ID", key);
                n.child = Some(cmd.spawn().expect("restart"));
                self.say(&format!("SIGKILL {victim}, restarted after {pause:.1}s"));
            }
            2 if !live.is_empty() => {
                let who = live[self.rng.below(live.len())].clone();
                self.nodes[&who].signal(Signal::SIGHUP);
                self.say(&format!("SIGHUP {who}"));
            }
            3 => {
                // A duplicate of a pending action's notification (SNS and EventBridge redeliver).
                let acts = all_actions().await;
                let pending: Vec<&Value> = acts
                    .iter()
                    .filter(|a| {
                        a["group"] == self.group.name.as_str()
                            && a["hook"] == self.group.hook.as_str()
                            && a["state"] == "pending"
                    })
                    .collect();
                if let Some(a) = pending.get(self.rng.below(pending.len().max(1))) {
                    let body = lifecycle_body(
                        &self.group.name,
                        &self.group.hook,
                        a["instance"].as_str().unwrap_or_default(),
                        a["token"].as_str().unwrap_or_default(),
                    );
                    send(&self.aws, &self.group.queue_url, &body).await;
                    self.say(&format!("duplicate for {}", a["instance"]));
                }
            }
            4 => {
                // Another group's termination on the shared queue: its owner is elsewhere.
                let other = format!("i-0{:016x}", self.rng.next() >> 4);
                let body = lifecycle_body(
                    "another-group",
                    "their-hook",
                    &other,
                    "00000000-0000-4000-8000-000000000000",
                );
                let id = send(&self.aws, &self.group.queue_url, &body).await;
                self.foreign.insert(id);
                self.say(&format!("another group's notification for {other}"));
            }
            _ => {
                let garbage = [
                    "{not json",
                    "{\"Event\":\"autoscaling:TEST_NOTIFICATION\",\"AutoScalingGroupName\":\"x\"}",
                    "plain text, no JSON at all",
                ];
                let g = garbage[self.rng.below(garbage.len())];
                send(&self.aws, &self.group.queue_url, g).await;
                self.say("garbage");
            }
        }
    }

    /// Stops the daemons of instances that are gone (the machine died with them).
    fn bury(&mut self) {
        for i in &self.departed {
            if let Some(n) = self.nodes.get_mut(i) {
                if let Some(c) = n.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                    n.child = None;
                }
            }
        }
    }
}

fn lifecycle_body(group: &str, hook: &str, instance: &str, token: &str) -> String {
    json!({
        "Origin": "AutoScalingGroup", "LifecycleHookName": hook, "Destination": "EC2",
        "AccountId": ACCOUNT, "RequestId": "00000000-0000-4000-8000-00000000c4a0",
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "AutoScalingGroupName": group, "Service": "AWS Auto Scaling",
        "Time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "EC2InstanceId": instance, "LifecycleActionToken": token,
    })
    .to_string()
}

async fn all_actions() -> Vec<Value> {
    control_json("actions").await
}

async fn calls() -> Value {
    control_json("calls").await
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn chaos(nodes: usize, rounds: Option<usize>, minutes: u64) {
    let seed = env_or(
        "LASTCALL_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_nanos() as u64,
    );
    let aws = aws().await;
    // The queue's dead-letter queue, with a redrive that suits a shared queue.
    let name = unique("chaos");
    let (dlq_url, dlq_arn) = queue(&aws, &format!("{name}-dlq")).await;
    let (queue_url, queue_arn) = queue(&aws, &name).await;
    set_redrive(&aws, &queue_url, &dlq_arn, 1000).await;
    // The hook's HeartbeatTimeout: lastcall heartbeats only once it has verified the action, and
    // under throttling that takes a while (AWS's default timeout is 3600 s; 300 s is a common
    // setting).
    let spec = GroupSpec {
        size: nodes as i32,
        heartbeat_timeout: 300,
        default_result: "ABANDON",
    };
    let mut group = group_with_target(&aws, &name, Some(&queue_arn), spec).await;
    group.queue_url = queue_url.clone();
    // Another tool's hook on the same group: never lastcall's to complete.
    add_hook(
        &aws,
        &name,
        "other-tool",
        "autoscaling:EC2_INSTANCE_TERMINATING",
        None,
        &GroupSpec {
            heartbeat_timeout: 5,
            default_result: "CONTINUE",
            ..Default::default()
        },
    )
    .await;
    let mut rng = Rng::new(seed);
    let knobs = json!({
        "notification_delay": (rng.between(0.0, 2.0) * 10.0).round() / 10.0,
        "describe_lag": (rng.between(0.0, 2.0) * 10.0).round() / 10.0,
        "imds_target_lag": (rng.between(0.0, 2.0) * 10.0).round() / 10.0,
        "no_action_window": (rng.between(0.0, 2.0) * 10.0).round() / 10.0,
    });
    realism(&name, knobs.clone()).await;
    let queue_knobs = json!({
        "receive_max": 1 + rng.below(10),
        "receive_sample": (rng.between(0.3, 1.0) * 10.0).round() / 10.0,
        "receive_order": "oldest_first_jitter",
        "latency": (rng.between(0.0, 0.05) * 100.0).round() / 100.0,
    });
    realism_queue(&name, queue_knobs.clone()).await;
    // An account's Auto Scaling budget the fleet can live with: M instances leaving at once need
    // some 5–8 calls each, so R calls/s take 7M/R seconds, which must stay well inside the hook's
    // timeout: 1–4 calls/s per 20 instances. (A first 30-minute run at 100 daemons with 2 calls/s
    // for the whole fleet and a 60 s timeout saw an action expire while its
    // DescribeAutoScalingInstances kept being throttled: seed 1796152381396722569.)
    let scale = (nodes as f64 / 20.0).max(1.0);
    let throttle = rng.chance(0.7).then(|| {
        (
            (rng.between(1.0, 4.0) * scale).round(),
            (rng.between(3.0, 8.0) * scale).round(),
        )
    });
    let mut f = Fleet {
        seed,
        rng,
        aws: aws.clone(),
        group,
        nodes: BTreeMap::new(),
        keys: BTreeMap::new(),
        kills: BTreeMap::new(),
        departed: BTreeSet::new(),
        foreign: BTreeSet::new(),
        throttle,
    };
    f.say(&format!(
        "{nodes} nodes; group knobs {knobs}; queue knobs {queue_knobs}; Auto Scaling throttle (rate, burst) {throttle:?}"
    ));
    for i in f.group.instances.clone() {
        f.start_node(&i).await;
    }
    f.apply_throttle().await;
    for n in f.nodes.values() {
        n.wait_log(
            "target lifecycle state target_state=InService",
            Duration::from_secs(120),
        )
        .await;
    }
    let _ = reqwest::Client::new()
        .post(format!("{}/calls/reset", emulator().control))
        .send()
        .await;

    let started = Instant::now();
    let mut round = 0;
    let mut terminations = 0usize;
    loop {
        let done = match rounds {
            Some(r) => round >= r,
            None => started.elapsed() >= Duration::from_secs(60 * minutes),
        };
        if done {
            break;
        }
        round += 1;
        f.bury();
        let members = instances(&aws, &f.group.name).await;
        let in_service: Vec<String> = members
            .iter()
            .filter(|i| !f.departed.contains(*i))
            .cloned()
            .collect();
        // Many leave at once: up to half the group (an instance refresh or a big scale-in).
        let leaving = 1 + f.rng.below((in_service.len() / 2).max(1));
        let desired = in_service.len().saturating_sub(leaving) as i32;
        f.say(&format!(
            "round {round}: {} in service, {leaving} leaving",
            in_service.len()
        ));
        set_desired(&aws, &f.group.name, desired).await;
        let events = 1 + f.rng.below(4);
        for _ in 0..events {
            tokio::time::sleep(Duration::from_secs_f64(f.rng.between(0.1, 1.5))).await;
            f.event().await;
        }
        // Every one of lastcall's actions of this round is completed (none may expire).
        let mine = |a: &Value, name: &str, hook: &str| a["group"] == name && a["hook"] == hook;
        let (name, hook) = (f.group.name.clone(), f.group.hook.clone());
        wait_for(
            "lastcall's actions of the round to end",
            Duration::from_secs(360),
            || async {
                let acts = all_actions().await;
                (!acts
                    .iter()
                    .any(|a| mine(a, &name, &hook) && a["state"] == "pending"))
                .then_some(())
            },
        )
        .await;
        let acts = all_actions().await;
        for a in acts.iter().filter(|a| mine(a, &name, &hook)) {
            let i = a["instance"].as_str().unwrap_or_default().to_string();
            if f.departed.insert(i) {
                terminations += 1;
            }
        }
        // Back to strength, sometimes: new instances, new daemons.
        if f.rng.chance(0.6) {
            set_desired(&aws, &f.group.name, nodes as i32).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            for i in instances(&aws, &f.group.name).await {
                if !f.nodes.contains_key(&i) {
                    f.start_node(&i).await;
                }
            }
            f.apply_throttle().await;
        }
    }
    // Let the queue settle: duplicates and releases in flight end; then every machine stops.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in f.nodes.values_mut() {
        if let Some(c) = n.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
            n.child = None;
        }
    }
    let fail = |what: String| -> String {
        format!("[chaos seed {seed}] {what} (run again with LASTCALL_CHAOS_SEED={seed})")
    };

    // 1. Every departed instance ran each step once (twice only where a SIGKILL may have cut a
    //    step short), and lastcall completed its action: CONTINUE, never expired.
    let acts = all_actions().await;
    for i in &f.departed {
        let mine: Vec<&Value> = acts
            .iter()
            .filter(|a| a["instance"] == i.as_str() && a["hook"] == f.group.hook.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{}", fail(format!("{i}: actions {mine:?}")));
        assert_eq!(
            (mine[0]["state"].as_str(), mine[0]["result"].as_str()),
            (Some("completed"), Some("CONTINUE")),
            "{}",
            fail(format!("{i}: {}", mine[0]))
        );
        let effects = lines(&f.nodes[i].path("effects"));
        let killed = f.kills.get(i).copied().unwrap_or(0);
        for step in ["one", "two"] {
            let n = effects
                .iter()
                .filter(|l| **l == format!("{i} {step}"))
                .count();
            let ok = if killed == 0 {
                n == 1
            } else {
                (1..=1 + killed as usize).contains(&n)
            };
            assert!(
                ok,
                "{}",
                fail(format!(
                    "{i}: step {step} ran {n} times ({killed} SIGKILLs): {effects:?}\n{}",
                    f.nodes[i].log()
                ))
            );
        }
    }
    // Instances still in service ran nothing.
    for (i, n) in &f.nodes {
        if !f.departed.contains(i) {
            assert!(
                lines(&n.path("effects")).is_empty(),
                "{}",
                fail(format!("{i} is in service but ran steps"))
            );
        }
    }
    // 2. The other tool's hook was never completed by anyone.
    for a in acts.iter().filter(|a| a["hook"] == "other-tool") {
        assert_ne!(
            a["state"],
            "completed",
            "{}",
            fail(format!("another tool's action completed: {a}"))
        );
    }
    // 3. No other group's notification was deleted; nothing went to the dead-letter queue.
    // Decided from the emulator's record of each deletion and whose key made it, never from a
    // message's absence: a message a daemon holds out of sight (a visibility timeout, a back-off
    // hold of up to 60 s) is absent from receives too, and was once taken for deleted.
    let deleted = deleted(&name).await;
    let by_key: BTreeMap<&str, &str> = f
        .keys
        .iter()
        .map(|(i, k)| (k.as_str(), i.as_str()))
        .collect();
    let lost: Vec<String> = f
        .foreign
        .iter()
        .filter_map(|id| {
            deleted.get(id).map(|key| {
                let who = by_key.get(key.as_str()).copied().unwrap_or(key.as_str());
                format!("{id} by {who}")
            })
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{}",
        fail(format!("other groups' notifications deleted: {lost:?}"))
    );
    // The record is live: this run's own notifications were deleted by the daemons.
    assert!(
        deleted.values().any(|k| by_key.contains_key(k.as_str())),
        "{}",
        fail(format!("no deletion by any daemon recorded: {deleted:?}"))
    );
    let (dlq_visible, dlq_in_flight) = queue_counts(&aws, &dlq_url).await;
    assert_eq!(
        dlq_visible + dlq_in_flight,
        0,
        "{}",
        fail("messages in the dead-letter queue".into())
    );

    // 4. The numbers.
    let c = calls().await;
    let max_receive = c["max_receive_count"][name.as_str()].as_u64().unwrap_or(0);
    let mut asg_calls = 0u64;
    let mut throttled = 0u64;
    for key in f.keys.values() {
        if let Some(ops) = c["keys"][key.as_str()]["autoscaling"].as_object() {
            asg_calls += ops.values().filter_map(Value::as_u64).sum::<u64>();
        }
        if let Some(ops) = c["throttled"][key.as_str()]["autoscaling"].as_object() {
            throttled += ops.values().filter_map(Value::as_u64).sum::<u64>();
        }
    }
    f.say(&format!(
        "{round} rounds in {:.0?}: {terminations} terminations, {} SIGKILLs; highest receive count {max_receive}; {:.1} Auto Scaling calls per termination; {throttled} throttled",
        started.elapsed(),
        f.kills.values().sum::<u32>(),
        asg_calls as f64 / terminations.max(1) as f64
    ));
    assert!(
        terminations > 0,
        "{}",
        fail("no termination happened".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twenty_daemons_three_rounds() {
    chaos(
        env_or("LASTCALL_CHAOS_NODES", 20) as usize,
        Some(env_or("LASTCALL_CHAOS_ROUNDS", 3) as usize),
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by hand (LASTCALL_CHAOS_NODES, LASTCALL_CHAOS_MINUTES)"]
async fn chaos_long() {
    chaos(
        env_or("LASTCALL_CHAOS_NODES", 100) as usize,
        None,
        env_or("LASTCALL_CHAOS_MINUTES", 30),
    )
    .await;
}

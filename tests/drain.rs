//! The drain steps: `nomad` against the Nomad double (no Nomad can be installed here:
//! `tests/doubles/fake_nomad.py` follows Nomad's API documentation and source), and `ecs`
//! against the emulator's ECS (moto) with the ECS agent's introspection API played by
//! `tests/doubles/fake_ecs_agent.py`.
//!
//! moto's ECS does not stop a service's tasks when a container instance drains (AWS does, after
//! the load balancer's deregistration delay): these tests play the scheduler and stop them.

mod common;

use std::time::{Duration, Instant};

use common::services::*;
use common::*;

use lastcall::steps::{StepError, StepKind};
use lastcall::template::Context;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

fn ctx() -> Context {
    step_context(&[
        ("instance_id", "i-0123456789abcdef0"),
        ("asg_name", "workers"),
        ("hook_name", "drain"),
        ("region", "us-east-1"),
    ])
}

fn step(toml: &str) -> StepKind {
    step_kind(toml)
}

async fn run(kind: &StepKind, timeout: Duration) -> Result<String, StepError> {
    run_step(kind, &ctx(), timeout).await
}

// ---------------------------------------------------------------------------------------------
// nomad

fn nomad_step(n: &Double, extra: &str) -> StepKind {
    step(&format!(
        "kind = \"nomad\"\naddress = \"{}\"\ndeadline = \"30s\"\n{extra}",
        n.url
    ))
}

fn alloc_status(state: &Value, name: &str) -> String {
    state["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .find(|a| a["Name"] == name)
        .unwrap_or_else(|| panic!("no allocation {name} in {state}"))["ClientStatus"]
        .as_str()
        .expect("ClientStatus")
        .to_string()
}

#[tokio::test]
async fn nomad_drains_and_waits_for_the_allocations_to_stop() {
    let n = Double::start("fake_nomad.py", &[]);
    let web = n
        .post(
            "allocs",
            json!({"job": "web", "type": "service", "stop_seconds": 1.0}),
        )
        .await;
    let agent = n
        .post("allocs", json!({"job": "mackerel-agent", "type": "system"}))
        .await;
    let started = Instant::now();
    let out = run(&nomad_step(&n, ""), LONG).await.expect("drained");
    let took = started.elapsed();
    assert!(out.contains("drained"), "{out}");
    let state = n.get("state").await;
    assert_eq!(state["drain_request_count"], 1, "{state}");
    let body = &state["drain_requests"][0]["json"];
    assert_eq!(body["DrainSpec"]["Deadline"], 30_000_000_000u64, "{body}");
    assert_eq!(body["DrainSpec"]["IgnoreSystemJobs"], true);
    assert_eq!(body["MarkEligible"], false);
    assert!(
        body["Meta"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("i-0123456789abcdef0") && m.contains("workers")),
        "{body}"
    );
    // It waited for the service's allocation to stop, and left the system job's running for the
    // later steps (the monitoring agent goes last).
    assert_eq!(
        alloc_status(&state, web["name"].as_str().unwrap()),
        "complete"
    );
    assert_eq!(
        alloc_status(&state, agent["name"].as_str().unwrap()),
        "running"
    );
    assert!(
        took >= Duration::from_millis(900),
        "returned after {took:?}"
    );
    assert!(state["node"]["DrainStrategy"].is_null(), "{state}");
}

#[tokio::test]
async fn nomad_node_draining_or_drained_already_is_only_waited_for() {
    let n = Double::start("fake_nomad.py", &[]);
    n.post(
        "allocs",
        json!({"job": "web", "type": "service", "stop_seconds": 0.5}),
    )
    .await;
    // An operator (or drain_on_shutdown) started the drain.
    n.post(
        "node",
        json!({"drain": {"Deadline": 60_000_000_000u64, "IgnoreSystemJobs": true}}),
    )
    .await;
    let out = run(&nomad_step(&n, ""), LONG).await.expect("waited");
    assert!(out.contains("was draining already"), "{out}");
    // A run after a restart finds it drained and requests nothing.
    let out = run(&nomad_step(&n, ""), LONG).await.expect("drained");
    assert!(out.contains("was drained already"), "{out}");
    let state = n.get("state").await;
    assert_eq!(state["drain_request_count"], 0, "{state}");
}

#[tokio::test]
async fn nomad_token_refused_fails_at_once_and_never_shows_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = Double::start("fake_nomad.py", &[]);
    n.post(
        "acl",
        json!({"enabled": true, "tokens": [{"secret": "good-secret-1234", "policies": ["agent:read", "node:read", "node:write", "namespace:read-job"]}]}),
    )
    .await;
    let bad = secret_file(dir.path(), "bad.token", "wrong-secret-5678");
    let kind = nomad_step(&n, &format!("token_file = \"{}\"", bad.display()));
    let started = Instant::now();
    let err = run(&kind, LONG).await.expect_err("refused").to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
    assert!(err.contains("403") && err.contains("refused"), "{err}");
    assert!(!err.contains("wrong-secret"), "{err}");
    let good = secret_file(dir.path(), "good.token", "good-secret-1234");
    let kind = nomad_step(&n, &format!("token_file = \"{}\"", good.display()));
    run(&kind, LONG)
        .await
        .expect("drained with the right token");
    let requests = n.get("requests").await;
    let text = requests.to_string();
    assert!(!text.contains("good-secret") && !text.contains("wrong-secret"));
    assert!(requests
        .as_array()
        .expect("requests")
        .iter()
        .all(|r| r["token_present"] == true));
}

#[tokio::test]
async fn nomad_timeout_names_the_allocation_that_keeps_running() {
    let n = Double::start("fake_nomad.py", &[]);
    let stuck = n
        .post(
            "allocs",
            json!({"job": "api", "type": "service", "stuck": true}),
        )
        .await;
    let kind = step(&format!(
        "kind = \"nomad\"\naddress = \"{}\"\ndeadline = \"1h\"",
        n.url
    ));
    let err = run(&kind, Duration::from_secs(3))
        .await
        .expect_err("times out")
        .to_string();
    let name = stuck["name"].as_str().expect("name");
    assert!(err.contains(name) && err.contains("still running"), "{err}");
}

#[tokio::test]
async fn nomad_agent_that_is_not_a_client_is_a_clear_failure() {
    let n = Double::start("fake_nomad.py", &["--server-only"]);
    let err = run(&nomad_step(&n, ""), LONG)
        .await
        .expect_err("no client")
        .to_string();
    assert!(err.contains("runs no client"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// ecs

/// A cluster with the instance registered as a container instance; returns (cluster, arn).
async fn container_instance(aws: &Aws, instance: &str) -> (String, String) {
    let cluster = unique("ecs");
    aws.ecs
        .create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .expect("create cluster");
    let doc = json!({"instanceId": instance, "region": "us-east-1", "accountId": ACCOUNT});
    let ci = aws
        .ecs
        .register_container_instance()
        .cluster(&cluster)
        .instance_identity_document(doc.to_string())
        .instance_identity_document_signature("signature")
        .send()
        .await
        .expect("register container instance");
    let arn = ci
        .container_instance()
        .and_then(|c| c.container_instance_arn())
        .expect("arn")
        .to_string();
    aws.ecs
        .register_task_definition()
        .family("app")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("app:1")
                .memory(64)
                .build(),
        )
        .send()
        .await
        .expect("task definition");
    (cluster, arn)
}

/// Starts a task on the container instance in `group` ("service:web" for a service's task).
async fn start_task(aws: &Aws, cluster: &str, arn: &str, group: &str) -> String {
    let out = aws
        .ecs
        .start_task()
        .cluster(cluster)
        .task_definition("app")
        .container_instances(arn)
        .group(group)
        .send()
        .await
        .expect("start task");
    out.tasks()[0].task_arn().expect("task arn").to_string()
}

async fn ci_status(aws: &Aws, cluster: &str, arn: &str) -> String {
    aws.ecs
        .describe_container_instances()
        .cluster(cluster)
        .container_instances(arn)
        .send()
        .await
        .expect("describe")
        .container_instances()[0]
        .status()
        .unwrap_or_default()
        .to_string()
}

fn ecs_config(agent: &str) -> String {
    format!(
        "[imds]\nlifecycle = true\npoll_interval = \"200ms\"\n[lifecycle]\nstate_dir = \"{{dir}}/state\"\n\
         [[step]]\nkind = \"ecs\"\nagent_url = \"{agent}\"\ninterval = \"300ms\"\ntimeout = \"30s\"\n\
         [[step]]\nkind = \"command\"\nname = \"after\"\ncommand = [\"/bin/sh\", \"-c\", \"echo after >> {{dir}}/ran\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_scale_in_drains_the_container_instance_before_completing() {
    let aws = aws().await;
    let name = unique("ecsdrain");
    let g = group_with_target(&aws, &name, None, GroupSpec::default()).await;
    let victim = g.instances[0].clone();
    let (cluster, arn) = container_instance(&aws, &victim).await;
    let service_task = start_task(&aws, &cluster, &arn, "service:web").await;
    let agent = Double::start("fake_ecs_agent.py", &["--cluster", &cluster, "--arn", &arn]);
    let mut n = Node::new(&victim, "", &ecs_config(&agent.url)).await;
    n.start();
    n.wait_log("target lifecycle state target_state=InService", LONG)
        .await;
    terminate(&aws, &victim).await;
    // The scheduler's part: ECS stops a service's tasks on DRAINING.
    wait_for("the container instance to drain", LONG, || async {
        (ci_status(&aws, &cluster, &arn).await == "DRAINING").then_some(())
    })
    .await;
    n.wait_log("waiting for tasks to stop", LONG).await;
    assert!(
        lines(&n.path("ran")).is_empty(),
        "the next step waits for the drain"
    );
    assert_eq!(
        actions(&victim).await[0]["state"],
        "pending",
        "not completed while tasks run"
    );
    aws.ecs
        .stop_task()
        .cluster(&cluster)
        .task(&service_task)
        .send()
        .await
        .expect("stop task");
    wait_terminated(&aws, &victim, LONG).await;
    assert_eq!(lines(&n.path("ran")), ["after"], "{}", n.log());
    let acts = actions(&victim).await;
    assert_eq!(
        (acts[0]["state"].as_str(), acts[0]["result"].as_str()),
        (Some("completed"), Some("CONTINUE"))
    );
    assert!(
        n.log().contains("set to DRAINING; no task left on it"),
        "{}",
        n.log()
    );
}

/// Runs `lastcall simulate` for the node and returns (exit code, log).
fn simulate(n: &mut Node) -> (i32, String) {
    let code = n
        .command(&["simulate", "--group", "workers", "--hook", "drain"])
        .status()
        .expect("simulate")
        .code()
        .unwrap_or(-1);
    (code, n.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_already_draining_only_waits_and_unregistered_has_nothing_to_drain() {
    let aws = aws().await;
    let g = group_with_target(&aws, &unique("ecswait"), None, GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let (cluster, arn) = container_instance(&aws, &me).await;
    // ECS managed draining (a capacity provider) set it DRAINING before lastcall ran.
    aws.ecs
        .update_container_instances_state()
        .cluster(&cluster)
        .container_instances(&arn)
        .status(aws_sdk_ecs::types::ContainerInstanceStatus::Draining)
        .send()
        .await
        .expect("drain");
    let agent = Double::start("fake_ecs_agent.py", &["--cluster", &cluster, "--arn", &arn]);
    let mut n = Node::new(&me, "", &ecs_config(&agent.url)).await;
    let (code, log) = simulate(&mut n);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("DRAINING already"), "{log}");
    assert!(
        log.contains("was DRAINING already; no task left on it"),
        "{log}"
    );

    // An agent that has not registered: nothing to drain, said so.
    let unregistered = Double::start("fake_ecs_agent.py", &["--cluster", &cluster]);
    let mut n = Node::new(&me, "", &ecs_config(&unregistered.url)).await;
    let (code, log) = simulate(&mut n);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("has not registered a container instance"),
        "{log}"
    );

    // No agent at all (a current agent serves introspection only once registered), on a host
    // said to run none (agent_wait = "0s"): nothing to drain.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let none = ecs_config(&closed).replace(
        "interval = \"300ms\"",
        "agent_wait = \"0s\"\ninterval = \"300ms\"",
    );
    let mut n = Node::new(&me, "", &none).await;
    let (code, log) = simulate(&mut n);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("no ECS agent answers here"), "{log}");
    // Where an agent is expected (agent_url given), refusals past agent_wait fail the step: its
    // tasks may still run.
    let expected = ecs_config(&closed).replace(
        "interval = \"300ms\"",
        "agent_wait = \"1s\"\ninterval = \"300ms\"",
    );
    let mut n = Node::new(&me, "", &expected).await;
    let (code, log) = simulate(&mut n);
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("refused connections for 1s (agent_wait"),
        "{log}"
    );
    assert!(!log.contains("no ECS agent answers here"), "{log}");
}

/// G15: an agent restarted by ecs-init (or by a Docker restart) refuses connections for seconds.
/// That is not "no agent": the step waits for it and drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_agent_that_restarts_is_waited_for_and_the_instance_drained() {
    let aws = aws().await;
    let g = group_with_target(&aws, &unique("ecsrestart"), None, GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let (cluster, arn) = container_instance(&aws, &me).await;
    let port = free_port();
    let mut n = Node::new(&me, "", &ecs_config(&format!("http://127.0.0.1:{port}"))).await;
    let mut run = n
        .command(&["simulate", "--group", "workers", "--hook", "drain"])
        .spawn()
        .expect("simulate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port_arg = port.to_string();
    let _agent = Double::start(
        "fake_ecs_agent.py",
        &["--cluster", &cluster, "--arn", &arn, "--port", &port_arg],
    );
    let code = run.wait().expect("simulate").code();
    let log = n.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("set to DRAINING; no task left on it"), "{log}");
    assert_eq!(ci_status(&aws, &cluster, &arn).await, "DRAINING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_timeout_names_the_standalone_task_that_keeps_running() {
    let aws = aws().await;
    let g = group_with_target(&aws, &unique("ecsstuck"), None, GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let (cluster, arn) = container_instance(&aws, &me).await;
    let task = start_task(&aws, &cluster, &arn, "family:app").await;
    let agent = Double::start("fake_ecs_agent.py", &["--cluster", &cluster, "--arn", &arn]);
    let cfg = ecs_config(&agent.url).replace("timeout = \"30s\"", "timeout = \"3s\"");
    let mut n = Node::new(&me, "", &cfg).await;
    let key = unique("ecspoll").replace('-', "");
    let code = n
        .command(&["simulate", "--group", "workers", "--hook", "drain"])
        .env("AWS_ACCESS_KEY_ID", &key)
        .status()
        .expect("simulate")
        .code()
        .unwrap_or(-1);
    let log = n.log();
    assert_ne!(code, 0, "{log}");
    // G19: each poll lists the RUNNING tasks and describes them; STOPPED is listed on the first
    // poll only (stopped tasks stay listed for about an hour; a scale-in polls from every leaving
    // instance at once). Before, every poll listed both.
    let ecs = &calls_by(&key).await["ecs"];
    let count = |a: &str| ecs[a].as_u64().unwrap_or(0);
    let (lists, describes) = (count("ListTasks"), count("DescribeTasks"));
    assert!(describes >= 4, "polled {describes} times in 3 s: {ecs}");
    assert!(
        lists <= describes + 1,
        "{lists} ListTasks for {describes} polls: {ecs}"
    );
    let id = task.rsplit('/').next().expect("id");
    assert!(
        log.contains("standalone tasks are not stopped by draining"),
        "{log}"
    );
    assert!(
        log.contains("still on it at the timeout") && log.contains(id),
        "{log}"
    );
    assert_eq!(ci_status(&aws, &cluster, &arn).await, "DRAINING");
}

#[tokio::test]
async fn nomad_check_reports_the_node_and_changes_nothing() {
    let n = Double::start("fake_nomad.py", &[]);
    n.post("allocs", json!({"job": "web", "type": "service"}))
        .await;
    n.post("allocs", json!({"job": "mackerel-agent", "type": "system"}))
        .await;
    let StepKind::Nomad(step) = nomad_step(&n, "") else {
        panic!("a nomad step")
    };
    let c = ctx();
    let env = lastcall::steps::StepEnv {
        name: "check",
        ctx: &c,
        resumed: false,
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
    };
    let out = step.check(&env).await.expect("reachable");
    assert!(
        out.contains("is ready, eligible, 1 allocation(s) of drainable jobs"),
        "{out}"
    );
    let state = n.get("state").await;
    assert_eq!(state["drain_request_count"], 0, "{state}");
    assert!(state["node"]["DrainStrategy"].is_null());
}

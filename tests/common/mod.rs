//! Test harness: the local AWS emulator (moto with lifecycle hooks, plus a fake IMDSv2 per
//! instance, from `tests/emulator/emulator.py`), real aws-sdk-rust clients to set up groups and
//! queues, and the built `lastcall` binary run against them.
//!
//! One emulator serves all tests of a test binary; every test makes its own group, queue and
//! state directory, so tests run in parallel.

#![allow(dead_code)]

pub mod host;
pub mod services;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The AMI id moto accepts for launch configurations.
pub const AMI: &str = "ami-12c6146b";
/// The account moto uses.
pub const ACCOUNT: &str = "123456789012";

/// The running emulator.
pub struct Emulator {
    /// moto's endpoint (all AWS services).
    pub endpoint: String,
    /// The control API (fake IMDS servers, lifecycle action listing).
    pub control: String,
    _proc: Ready,
}

/// A helper process (emulator, double, proxy) that printed its JSON ready line. Its stdin is
/// held open for as long as this lives: the helper exits at EOF, so a dead test process never
/// leaves it behind.
pub struct Ready {
    /// The ready line.
    pub info: Value,
    _child: Child,
    _stdin: ChildStdin,
}

impl Ready {
    /// Starts `cmd` with stdin and stdout piped and reads its ready line; `what` names it in
    /// panics.
    pub fn start(mut cmd: Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read {what}'s ready line: {e}"));
        let info = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{what}'s ready line {line:?}: {e}"));
        Self {
            info,
            _child: child,
            _stdin: stdin,
        }
    }

    /// A string field of the ready line.
    pub fn field(&self, key: &str) -> String {
        self.info[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in the ready line {}", self.info))
            .to_string()
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts (once per test binary) and returns the emulator.
pub fn emulator() -> &'static Emulator {
    static EMU: OnceLock<Emulator> = OnceLock::new();
    EMU.get_or_init(|| {
        // reqwest is built without a bundled crypto provider; use the one the AWS SDK links.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let python = root().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
            python.display()
        );
        let mut cmd = Command::new(&python);
        cmd.arg(root().join("tests/emulator/emulator.py"));
        let proc = Ready::start(cmd, "the emulator");
        Emulator {
            endpoint: proc.field("endpoint"),
            control: proc.field("control"),
            _proc: proc,
        }
    })
}

/// AWS clients pointed at the emulator.
#[derive(Clone)]
pub struct Aws {
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// Auto Scaling.
    pub asg: aws_sdk_autoscaling::Client,
    /// ECS (container instances and tasks for the `ecs` step).
    pub ecs: aws_sdk_ecs::Client,
    /// EC2 (instances for the sweep).
    pub ec2: aws_sdk_ec2::Client,
}

/// Builds the clients.
pub async fn aws() -> Aws {
    let emu = emulator();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&emu.endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    Aws {
        sqs: aws_sdk_sqs::Client::new(&conf),
        asg: aws_sdk_autoscaling::Client::new(&conf),
        ecs: aws_sdk_ecs::Client::new(&conf),
        ec2: aws_sdk_ec2::Client::new(&conf),
    }
}

/// Placeholder values for running a step in-process (the rustls provider installed first).
pub fn step_context(values: &[(&'static str, &str)]) -> lastcall::template::Context {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut c = lastcall::template::Context::default();
    for (k, v) in values {
        c.values.insert(*k, v.to_string());
    }
    c
}

/// Parses one step from TOML (through the real config code) and returns its kind.
pub fn step_kind(toml: &str) -> lastcall::steps::StepKind {
    let text = format!("[imds]\n[[step]]\n{toml}");
    let loaded = lastcall::config::Config::from_str(&text, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    loaded.config.steps.into_iter().next().expect("a step").kind
}

/// Runs a step in-process with `ctx`, its deadline `timeout` away; it must stop by itself.
pub async fn run_step(
    kind: &lastcall::steps::StepKind,
    ctx: &lastcall::template::Context,
    timeout: Duration,
) -> Result<String, lastcall::steps::StepError> {
    let env = lastcall::steps::StepEnv {
        name: "t",
        ctx,
        resumed: false,
        deadline: tokio::time::Instant::now() + timeout,
    };
    tokio::time::timeout(timeout + Duration::from_secs(1), kind.run(&env))
        .await
        .expect("the step stops by itself before its deadline")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos
    )
}

/// A group with a terminating hook whose target is a queue.
pub struct Group {
    /// Group name.
    pub name: String,
    /// Hook name.
    pub hook: String,
    /// The hook's queue.
    pub queue_url: String,
    /// Its instances, in the order Auto Scaling lists them.
    pub instances: Vec<String>,
}

/// Options for [`group`].
pub struct GroupSpec {
    /// Instances.
    pub size: i32,
    /// The hook's HeartbeatTimeout in seconds.
    pub heartbeat_timeout: i32,
    /// The hook's DefaultResult.
    pub default_result: &'static str,
}

impl GroupSpec {
    /// `size` instances, the rest as by default.
    pub fn of(size: i32) -> Self {
        Self {
            size,
            ..Default::default()
        }
    }
}

impl Default for GroupSpec {
    fn default() -> Self {
        Self {
            size: 1,
            heartbeat_timeout: 300,
            default_result: "ABANDON",
        }
    }
}

/// Creates a queue and returns (url, arn).
pub async fn queue(aws: &Aws, name: &str) -> (String, String) {
    let url = aws
        .sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("url");
    let arn = format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{name}");
    (url, arn)
}

/// Gives queue `url` a dead-letter queue (`dlq_arn`) after `max_receive_count` receives.
pub async fn set_redrive(aws: &Aws, url: &str, dlq_arn: &str, max_receive_count: u32) {
    aws.sqs
        .set_queue_attributes()
        .queue_url(url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
                .to_string(),
        )
        .send()
        .await
        .expect("set the redrive policy");
}

/// Creates a queue, a group of `spec.size` instances and a terminating hook to the queue.
pub async fn group(aws: &Aws, prefix: &str, spec: GroupSpec) -> Group {
    let name = unique(prefix);
    let (queue_url, queue_arn) = queue(aws, &name).await;
    group_with_target(aws, &name, Some(&queue_arn), spec)
        .await
        .with_queue(queue_url)
}

impl Group {
    fn with_queue(mut self, url: String) -> Self {
        self.queue_url = url;
        self
    }
}

/// Creates a group whose terminating hook sends to `target_arn` (no target: the hook only holds
/// the instance, for the instance-metadata source).
pub async fn group_with_target(
    aws: &Aws,
    name: &str,
    target_arn: Option<&str>,
    spec: GroupSpec,
) -> Group {
    aws.asg
        .create_launch_configuration()
        .launch_configuration_name(name)
        .image_id(AMI)
        .instance_type("t3.micro")
        .send()
        .await
        .expect("create launch configuration");
    let hook = format!("{name}-drain");
    aws.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(name)
        .min_size(0)
        .max_size(spec.size.max(1) * 2)
        .desired_capacity(spec.size)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("create group");
    add_hook(
        aws,
        name,
        &hook,
        "autoscaling:EC2_INSTANCE_TERMINATING",
        target_arn,
        &spec,
    )
    .await;
    let instances = instances(aws, name).await;
    assert_eq!(
        instances.len(),
        spec.size as usize,
        "group {name} has its instances"
    );
    Group {
        name: name.to_string(),
        hook,
        queue_url: String::new(),
        instances,
    }
}

/// Adds a lifecycle hook to a group.
pub async fn add_hook(
    aws: &Aws,
    group: &str,
    hook: &str,
    transition: &str,
    target_arn: Option<&str>,
    spec: &GroupSpec,
) {
    let mut req = aws
        .asg
        .put_lifecycle_hook()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(hook)
        .lifecycle_transition(transition)
        .heartbeat_timeout(spec.heartbeat_timeout)
        .default_result(spec.default_result);
    if let Some(t) = target_arn {
        req = req
            .notification_target_arn(t)
            .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/asg-notify"));
    }
    req.send().await.expect("put lifecycle hook");
}

/// Sets an item of a fake IMDS (status 404 removes it).
pub async fn imds_override(imds_endpoint: &str, path: &str, status: u16, body: &str) {
    let port = imds_endpoint.rsplit(':').next().expect("port");
    let r = reqwest::Client::new()
        .post(format!("{}/imds/{port}/override", emulator().control))
        .json(&serde_json::json!({ "path": path, "status": status, "body": body }))
        .send()
        .await
        .expect("override");
    assert!(r.status().is_success());
}

/// The instance ids in a group.
pub async fn instances(aws: &Aws, group: &str) -> Vec<String> {
    let out = aws
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .expect("describe group");
    out.auto_scaling_groups()
        .first()
        .map(|g| {
            g.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The instance's lifecycle state, or None when it is in no group.
pub async fn state(aws: &Aws, instance: &str) -> Option<String> {
    aws.asg
        .describe_auto_scaling_instances()
        .instance_ids(instance)
        .send()
        .await
        .expect("describe instances")
        .auto_scaling_instances()
        .first()
        .and_then(|i| i.lifecycle_state().map(str::to_string))
}

/// Starts terminating one chosen instance (as a scale-in that picks it would).
pub async fn terminate(aws: &Aws, instance: &str) {
    aws.asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(instance)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .expect("terminate instance in group");
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the instance has left its group (terminated).
pub async fn wait_terminated(aws: &Aws, instance: &str, timeout: Duration) {
    wait_for(&format!("{instance} to be terminated"), timeout, || async {
        state(aws, instance).await.is_none().then_some(())
    })
    .await
}

/// A JSON answer of the emulator's control API, e.g. `/actions` or `/calls`.
pub async fn control(path: &str) -> Value {
    reqwest::get(format!("{}{path}", emulator().control))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// What the emulator counted for one access key (`GET /calls`): `{service: {action: n}}`.
pub async fn calls_by(key: &str) -> Value {
    control("/calls").await["keys"][key].clone()
}

/// Lifecycle actions as the emulator records them.
pub async fn actions(instance: &str) -> Vec<Value> {
    let v = control("/actions").await;
    v.as_array()
        .expect("array")
        .iter()
        .filter(|a| a["instance"].as_str() == Some(instance))
        .cloned()
        .collect()
}

/// Turns on the emulator's realism knobs for one group (see tests/emulator/README.md),
/// e.g. `json!({"notification_delay": 3, "describe_lag": 8})`.
pub async fn realism(group: &str, knobs: Value) {
    set_realism("group", group, knobs).await
}

/// Turns on the emulator's realism knobs for one queue (by name), e.g.
/// `json!({"receive_max": 1})`.
pub async fn realism_queue(queue: &str, knobs: Value) {
    set_realism("queue", queue, knobs).await
}

/// Every message of the queue named `queue` that was deleted, and by whose access key id (the
/// emulator's record, `GET /deleted/QUEUE`): "deleted" is decided from this, never from a
/// message's absence.
pub async fn deleted(queue: &str) -> std::collections::BTreeMap<String, String> {
    control_json(&format!("deleted/{queue}")).await
}

/// `GET /PATH` on the emulator's control server, read as JSON.
pub async fn control_json<T: serde::de::DeserializeOwned>(path: &str) -> T {
    reqwest::get(format!("{}/{path}", emulator().control))
        .await
        .unwrap_or_else(|e| panic!("GET /{path}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET /{path}: json: {e}"))
}

/// A queue's name: the last part of its URL.
pub fn queue_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or(url).to_string()
}

async fn set_realism(scope: &str, name: &str, knobs: Value) {
    let mut body = knobs;
    body[scope] = Value::from(name);
    let r = reqwest::Client::new()
        .post(format!("{}/realism", emulator().control))
        .json(&body)
        .send()
        .await
        .expect("POST /realism");
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// Starts a fake IMDS for an instance and returns its endpoint.
pub async fn imds(instance: &str) -> String {
    let v: Value = reqwest::Client::new()
        .post(format!("{}/imds", emulator().control))
        .json(&serde_json::json!({ "instance_id": instance }))
        .send()
        .await
        .expect("POST /imds")
        .json()
        .await
        .expect("json");
    v["endpoint"].as_str().expect("endpoint").to_string()
}

/// Queue message counts: (visible, in flight).
pub async fn queue_counts(aws: &Aws, url: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = aws
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes.unwrap_or_default();
    let n = |k: A| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0u64);
    (
        n(A::ApproximateNumberOfMessages),
        n(A::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Sends a body to a queue.
pub async fn send(aws: &Aws, url: &str, body: &str) -> String {
    aws.sqs
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .expect("send")
        .message_id
        .expect("id")
}

/// A lastcall instance: its fake IMDS, its config and state directory, its log.
pub struct Node {
    /// The instance it acts for.
    pub instance: String,
    /// Its fake IMDS.
    pub imds: String,
    /// Scratch directory (config, state, markers, log).
    pub dir: tempfile::TempDir,
    /// The daemon, when running.
    pub child: Option<Child>,
    runs: u32,
    /// The program run as `lastcall`: this build's binary, unless [`Node::program`] set another
    /// (a release artefact, perhaps behind an emulator such as qemu-user).
    program: Vec<std::ffi::OsString>,
}

impl Node {
    /// Prepares a node for `instance` with `config` (the text may use `{dir}` for the scratch
    /// directory and `{queue}` for the queue URL).
    pub async fn new(instance: &str, queue_url: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let imds = imds(instance).await;
        let text = config
            .replace("{dir}", dir.path().to_str().expect("utf8"))
            .replace("{queue}", queue_url);
        std::fs::write(dir.path().join("lastcall.toml"), text).expect("write config");
        // Empty AWS config files, so that nothing from the machine running the tests leaks in.
        std::fs::write(dir.path().join("aws-config"), "").expect("write aws config");
        Self {
            instance: instance.to_string(),
            imds,
            dir,
            child: None,
            runs: 0,
            program: vec![env!("CARGO_BIN_EXE_lastcall").into()],
        }
    }

    /// Runs `binary` as this node's lastcall, behind `runner` when there is one
    /// (`qemu-aarch64-static` for the aarch64 build).
    pub fn program(mut self, runner: Option<&Path>, binary: &Path) -> Self {
        self.program = runner
            .into_iter()
            .chain([binary])
            .map(|p| p.as_os_str().to_owned())
            .collect();
        self
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `lastcall` command for this node (at debug level), its stderr written to `log.N`.
    pub fn command(&mut self, args: &[&str]) -> Command {
        self.command_at(args, true)
    }

    /// A `lastcall` command at debug level (`verbose`) or at the default info level.
    pub fn command_at(&mut self, args: &[&str], verbose: bool) -> Command {
        self.runs += 1;
        let log = std::fs::File::create(self.path(&format!("log.{}", self.runs))).expect("log");
        let mut c = Command::new(&self.program[0]);
        c.args(&self.program[1..]);
        c.arg("--config").arg(self.path("lastcall.toml"));
        if verbose {
            c.arg("-v");
        }
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_ENDPOINT_URL", &emulator().endpoint)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", self.path("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.path("aws-config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        c
    }

    /// Runs a `lastcall` command to the end: its exit code and what it printed on stdout.
    pub fn stdout_of(&mut self, args: &[&str]) -> (Option<i32>, String) {
        let out = self
            .command(args)
            .stdout(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("run lastcall {args:?}: {e}"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Starts `lastcall run`.
    pub fn start(&mut self) {
        let child = self.command(&["run"]).spawn().expect("start lastcall run");
        self.child = Some(child);
    }

    /// Starts `lastcall run` with an access key id of its own (made from `prefix`), so that the
    /// emulator's call counts (`GET /calls`, by key) are this node's alone; returns the key.
    pub fn start_with_key(&mut self, prefix: &str) -> String {
        let key = unique(prefix).replace('-', "");
        let mut cmd = self.command(&["run"]);
        cmd.env("AWS_ACCESS_KEY_ID", &key);
        self.child = Some(cmd.spawn().expect("start lastcall run"));
        key
    }

    /// Runs `lastcall once` to the end and returns its exit code.
    pub fn once(&mut self, extra: &[&str]) -> i32 {
        let mut args = vec!["once"];
        args.extend_from_slice(extra);
        self.command(&args)
            .status()
            .expect("run lastcall once")
            .code()
            .unwrap_or(-1)
    }

    /// Every log written so far, in order.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|i| std::fs::read_to_string(self.path(&format!("log.{i}"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {needle:?} in the log of {}:\n{}",
                self.instance,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
    }

    /// Waits for the daemon to exit; returns its code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "lastcall did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The journal record(s) of this node.
    pub fn journal(&self) -> Vec<Value> {
        let dir = self.path("state/actions");
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(e.path()).expect("read record");
                out.push(serde_json::from_str(&text).expect("record json"));
            }
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- log of lastcall for {} ----\n{}",
                self.instance,
                self.log()
            );
        }
    }
}

/// Reads a file's lines (empty when it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A marker step: appends "<instance> <resumed>" to `{dir}/<file>`.
pub fn marker(name: &str, file: &str) -> String {
    format!(
        r#"
[[step]]
kind = "command"
name = "{name}"
command = ["/bin/sh", "-c", "echo \"$0 ${{{{LASTCALL_RESUMED:-0}}}}\" >> {{dir}}/{file}", "{{instance_id}}"]
"#
    )
}

/// A config with the queue, a state directory under the node's scratch dir, and `steps`.
pub fn config(extra_lifecycle: &str, steps: &str) -> String {
    format!(
        r#"
[sqs]
queue_url = "{{queue}}"
wait_time = "1s"
visibility_timeout = "20s"

[lifecycle]
state_dir = "{{dir}}/state"
{extra_lifecycle}

{steps}
"#
    )
}

/// `config` (from [`config`]) with one more `[sqs]` setting, e.g. `step_aside = "0s"`.
pub fn with_sqs(config: &str, setting: &str) -> String {
    config.replacen(
        "visibility_timeout = \"20s\"",
        &format!("visibility_timeout = \"20s\"\n{setting}"),
        1,
    )
}

/// Sets the group's desired capacity (a scale-in or a scale-out).
pub async fn set_desired(aws: &Aws, group: &str, desired: i32) {
    aws.asg
        .set_desired_capacity()
        .auto_scaling_group_name(group)
        .desired_capacity(desired)
        .send()
        .await
        .expect("set desired capacity");
}

/// Waits until one of `instances` is in Terminating:Wait and returns it (the scale-in's victim).
pub async fn wait_victim(aws: &Aws, instances: &[String], timeout: Duration) -> String {
    wait_for("an instance in Terminating:Wait", timeout, || async {
        for i in instances {
            if state(aws, i).await.as_deref() == Some("Terminating:Wait") {
                return Some(i.clone());
            }
        }
        None
    })
    .await
}

/// Waits until the queue holds no message at all (visible or in flight).
pub async fn wait_queue_empty(aws: &Aws, url: &str, timeout: Duration) {
    wait_for("an empty queue", timeout, || async {
        (queue_counts(aws, url).await == (0, 0)).then_some(())
    })
    .await
}

//! The deployment files, checked with the tools that read them: `systemd-analyze verify` on the
//! units, the user-data installer run into a scratch root (and `shellcheck`), the cron.d entry's
//! shape, `cfn-lint` on the CloudFormation templates, the instance policies against the AWS
//! calls in src/. The release artefacts (the packages among them) are checked by tests/dist.rs.
//! scripts/setup-test-env.sh installs the tools; a missing one fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::host::*;

const LASTCALL: &str = env!("CARGO_BIN_EXE_lastcall");
const UNITS: [&str; 5] = [
    "lastcall.service",
    "lastcall-once.service",
    "lastcall-once.timer",
    "lastcall-sweep.service",
    "lastcall-sweep.timer",
];
const TEMPLATES: [&str; 3] = [
    "cloudformation/queue-mode.yaml",
    "cloudformation/imds-mode.yaml",
    "cloudformation/example.yaml",
];
const SYNC: &str = "run `python3 tests/deploy/sync_copies.py` to rewrite the copies";

/// Where an IAM action may apply, in the instance policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The shared queue only (`!GetAtt Queue.Arn`).
    Queue,
    /// The one group, by ARN.
    Group,
    /// `"*"`: the action supports no resource-level permissions.
    Any,
    /// The ECS cluster's container instances or tasks (`${EcsClusterName}`), by ARN, or `"*"`
    /// with an `ecs:cluster` condition naming it.
    Cluster,
}

/// Which of a template's managed policies grants an action: the instance policy every instance
/// needs, or an optional one for a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Policy {
    /// `InstancePolicy`: the sources, verification and completion.
    Instance,
    /// `EcsDrainPolicy` (when `EcsClusterName` is set): the `ecs` step.
    EcsDrain,
    /// `SweepPolicy` (when `EnableSweep` is true): `lastcall sweep`.
    Sweep,
}

impl Policy {
    fn resource(self) -> &'static str {
        match self {
            Self::Instance => "InstancePolicy",
            Self::EcsDrain => "EcsDrainPolicy",
            Self::Sweep => "SweepPolicy",
        }
    }
}

/// Every AWS SDK call lastcall may make: (service, SDK method, IAM action, where it applies,
/// which policy grants it). A call in src/ that is missing here fails
/// `instance_policies_grant_exactly_the_calls_in_src`.
#[rustfmt::skip]
const SDK_CALLS: &[(&str, &str, &str, Scope, Policy)] = &[
    ("autoscaling", "describe_auto_scaling_instances", "autoscaling:DescribeAutoScalingInstances", Scope::Any, Policy::Instance),
    ("autoscaling", "describe_lifecycle_hooks", "autoscaling:DescribeLifecycleHooks", Scope::Any, Policy::Instance),
    ("autoscaling", "describe_auto_scaling_groups", "autoscaling:DescribeAutoScalingGroups", Scope::Any, Policy::Instance),
    ("autoscaling", "describe_tags", "autoscaling:DescribeTags", Scope::Any, Policy::Instance),
    ("autoscaling", "record_lifecycle_action_heartbeat", "autoscaling:RecordLifecycleActionHeartbeat", Scope::Group, Policy::Instance),
    ("autoscaling", "complete_lifecycle_action", "autoscaling:CompleteLifecycleAction", Scope::Group, Policy::Instance),
    ("sqs", "receive_message", "sqs:ReceiveMessage", Scope::Queue, Policy::Instance),
    ("sqs", "delete_message", "sqs:DeleteMessage", Scope::Queue, Policy::Instance),
    ("sqs", "delete_message_batch", "sqs:DeleteMessage", Scope::Queue, Policy::Instance),
    ("sqs", "change_message_visibility", "sqs:ChangeMessageVisibility", Scope::Queue, Policy::Instance),
    ("sqs", "change_message_visibility_batch", "sqs:ChangeMessageVisibility", Scope::Queue, Policy::Instance),
    ("sqs", "get_queue_attributes", "sqs:GetQueueAttributes", Scope::Queue, Policy::Instance),
    ("ecs", "describe_container_instances", "ecs:DescribeContainerInstances", Scope::Cluster, Policy::EcsDrain),
    ("ecs", "update_container_instances_state", "ecs:UpdateContainerInstancesState", Scope::Cluster, Policy::EcsDrain),
    ("ecs", "list_tasks", "ecs:ListTasks", Scope::Cluster, Policy::EcsDrain),
    ("ecs", "describe_tasks", "ecs:DescribeTasks", Scope::Cluster, Policy::EcsDrain),
    ("ec2", "describe_instances", "ec2:DescribeInstances", Scope::Any, Policy::Sweep),
];

const GROUP_ARN_PREFIX: &str = "arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}:autoScalingGroup:*:autoScalingGroupName/";

// ---- helpers

/// Cargo's home: its registry sources, and the cargo subcommands `cargo install` put in bin/.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"))
}

/// A program from the project's virtualenv, or a failed test that says how to install it.
fn venv_tool(name: &str) -> PathBuf {
    let path = top(".venv/bin").join(name);
    assert!(path.is_file(), "{} is missing: {SETUP}", path.display());
    path
}

/// The SHA-256 of the built binary, computed once per test run.
fn lastcall_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| sha256(Path::new(LASTCALL)))
}

/// The user id files created by this process get: what the installer's files must be owned by
/// (root, when the tests run as root as they do in CI).
fn own_uid() -> u32 {
    let probe = tempfile::NamedTempFile::new().expect("temp file");
    probe.as_file().metadata().expect("metadata").uid()
}

/// Values of `key` in `[section]` of a systemd unit file.
fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name;
        } else if let Some((k, v)) = line.split_once('=') {
            if current == section && k.trim() == key {
                values.push(v.trim().to_string());
            }
        }
    }
    values
}

fn unit_value(unit: &str, section: &str, key: &str) -> String {
    let values = unit_values(unit, section, key);
    assert_eq!(values.len(), 1, "[{section}] {key}= once, in:\n{unit}");
    values[0].clone()
}

/// Runs deploy/user-data/install.sh with /bin/sh (dash on Debian: the strictest sh at hand) into
/// the scratch root `root`, with the given parameters and no others from this environment.
fn install(root: &Path, vars: &[(&str, &str)]) -> Output {
    system_tool("systemctl");
    let mut cmd = Command::new("sh");
    cmd.arg(top("deploy/user-data/install.sh"));
    for name in [
        "LASTCALL_URL",
        "LASTCALL_SHA256",
        "LASTCALL_CONFIG",
        "LASTCALL_CONFIG_SSM",
        "LASTCALL_MODE",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("LASTCALL_ROOT", root).envs(vars.iter().copied());
    run(&mut cmd)
}

/// The installer failed, said `expected` on stderr, and wrote nothing under `root`.
fn assert_refused(out: &Output, root: &Path, expected: &str) {
    assert!(
        !out.status.success(),
        "install.sh accepted it: {}",
        described(out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(expected),
        "{}",
        described(out)
    );
    assert!(!root.exists(), "nothing installed: {:#?}", tree(root));
}

fn binary_url() -> String {
    format!("file://{LASTCALL}")
}

/// The CloudFormation templates as JSON, read by cfn-lint's own decoder.
fn templates() -> &'static BTreeMap<String, Value> {
    static TEMPLATES_JSON: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    TEMPLATES_JSON.get_or_init(|| {
        let out = run(Command::new(venv_tool("python"))
            .current_dir(TOP)
            .arg("tests/deploy/decode_templates.py")
            .args(TEMPLATES));
        assert!(
            out.status.success(),
            "decode templates: {}",
            described(&out)
        );
        serde_json::from_slice(&out.stdout).expect("decoded templates are JSON")
    })
}

fn template(path: &str) -> &'static Value {
    &templates()[path]
}

// ---- systemd units

#[test]
fn systemd_units_verify_without_warnings() {
    let analyze = system_tool("systemd-analyze");
    // A scratch root holding systemd's own units (for the targets ours refer to), our units and a
    // stand-in /usr/bin/lastcall: verify checks that ExecStart= binaries exist under the root.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("sysinit.target").exists())
        .expect("systemd's own units (sysinit.target) are installed");
    let copy_to = root.join(system_units.trim_start_matches('/'));
    fs::create_dir_all(copy_to.parent().unwrap()).unwrap();
    let out = run(Command::new("cp").arg("-a").arg(system_units).arg(&copy_to));
    assert!(
        out.status.success(),
        "copy systemd's units: {}",
        described(&out)
    );
    let etc = root.join("etc/systemd/system");
    fs::create_dir_all(&etc).unwrap();
    for unit in UNITS {
        fs::copy(top(&format!("deploy/systemd/{unit}")), etc.join(unit)).unwrap();
    }
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    let stand_in = root.join("usr/bin/lastcall");
    fs::write(&stand_in, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&stand_in, fs::Permissions::from_mode(0o755)).unwrap();

    let out = run(Command::new(&analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.display()))
        .args(UNITS));
    let ours: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap()
        .lines()
        .chain(std::str::from_utf8(&out.stdout).unwrap().lines())
        .filter(|l| l.contains("lastcall"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}",
        described(&out)
    );
}

#[test]
fn systemd_units_run_lastcall_as_documented() {
    let daemon = read("deploy/systemd/lastcall.service");
    assert_eq!(
        unit_value(&daemon, "Service", "ExecStart"),
        "/usr/bin/lastcall run"
    );
    assert_eq!(unit_value(&daemon, "Service", "Restart"), "always");
    assert_eq!(unit_value(&daemon, "Service", "KillMode"), "mixed");
    assert_eq!(unit_value(&daemon, "Service", "StateDirectory"), "lastcall");
    assert_eq!(
        unit_value(&daemon, "Unit", "Wants"),
        "network-online.target"
    );
    assert_eq!(
        unit_value(&daemon, "Unit", "After"),
        "network-online.target"
    );
    assert_eq!(
        unit_value(&daemon, "Install", "WantedBy"),
        "multi-user.target"
    );

    let once = read("deploy/systemd/lastcall-once.service");
    assert_eq!(unit_value(&once, "Service", "Type"), "oneshot");
    assert_eq!(
        unit_value(&once, "Service", "ExecStart"),
        "/usr/bin/lastcall once"
    );
    assert_eq!(unit_value(&once, "Service", "KillMode"), "mixed");
    assert_eq!(unit_value(&once, "Service", "StateDirectory"), "lastcall");

    // A stop lets the running step finish: the kill must not come before a step's own timeout.
    for unit in [&daemon, &once] {
        let stop = unit_value(unit, "Service", "TimeoutStopSec");
        let stop = humantime::parse_duration(&stop).expect("TimeoutStopSec is a duration");
        assert!(
            stop > lastcall::config::DEFAULT_STEP_TIMEOUT + Duration::from_secs(60),
            "TimeoutStopSec={stop:?} leaves a step with the default timeout no time to finish"
        );
    }
    // `lastcall check` warns against the unit's value.
    let stop = unit_value(&daemon, "Service", "TimeoutStopSec");
    assert_eq!(
        humantime::parse_duration(&stop).expect("duration"),
        lastcall::cmd::check::DAEMON_TIMEOUT_STOP
    );

    let timer = read("deploy/systemd/lastcall-once.timer");
    assert_eq!(unit_value(&timer, "Timer", "OnCalendar"), "minutely");
    assert_eq!(unit_value(&timer, "Timer", "Persistent"), "true");
    let spread = unit_value(&timer, "Timer", "RandomizedDelaySec");
    let spread = humantime::parse_duration(&spread).expect("RandomizedDelaySec is a duration");
    assert!(spread > Duration::ZERO && spread < Duration::from_secs(30));
    assert_eq!(unit_value(&timer, "Install", "WantedBy"), "timers.target");

    let sweep = read("deploy/systemd/lastcall-sweep.service");
    assert_eq!(unit_value(&sweep, "Service", "Type"), "oneshot");
    assert_eq!(
        unit_value(&sweep, "Service", "ExecStart"),
        "/usr/bin/lastcall sweep"
    );
    assert_eq!(unit_value(&sweep, "Service", "StateDirectory"), "lastcall");
    let sweep_timer = read("deploy/systemd/lastcall-sweep.timer");
    assert_eq!(unit_value(&sweep_timer, "Timer", "OnCalendar"), "hourly");
    // The group's instances all sweep: spread them over the hour.
    let spread = unit_value(&sweep_timer, "Timer", "RandomizedDelaySec");
    let spread = humantime::parse_duration(&spread).expect("RandomizedDelaySec is a duration");
    assert!(spread >= Duration::from_secs(600), "{spread:?}");
    assert_eq!(
        unit_value(&sweep_timer, "Install", "WantedBy"),
        "timers.target"
    );
}

// ---- cron

#[test]
fn cron_entry_runs_lastcall_once_every_minute_as_root() {
    let text = read("deploy/cron/lastcall");
    assert!(
        text.ends_with('\n'),
        "cron ignores a last line without a newline"
    );
    let entries: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert_eq!(entries.len(), 1, "one entry in deploy/cron/lastcall");
    for entry in entries {
        let fields: Vec<&str> = entry.split_whitespace().collect();
        assert!(
            fields.len() >= 7,
            "5 time fields, a user and a command: {entry:?}"
        );
        for time in &fields[..5] {
            assert!(
                time.chars()
                    .all(|c| c.is_ascii_digit() || "*/,-".contains(c)),
                "time field {time:?} in {entry:?}"
            );
        }
        assert_eq!(fields[..5], ["*"; 5], "every minute: {entry:?}");
        assert_eq!(fields[5], "root");
        assert_eq!(fields[6..8], ["/usr/bin/lastcall", "once"], "{entry:?}");
        let command = fields[6..].join(" ");
        assert!(
            !command.contains('%'),
            "cron turns % into a newline: {command:?}"
        );
        // Every program in the pipeline by absolute path: cron's PATH is minimal.
        for program in command
            .split('|')
            .map(|p| p.split_whitespace().next().unwrap_or(""))
        {
            assert!(
                program.starts_with('/'),
                "{program:?} by absolute path in {command:?}"
            );
        }
        let out = run(Command::new("sh").args(["-n", "-c", &command]));
        assert!(out.status.success(), "sh -n: {}", described(&out));
    }
}

// ---- the user-data installer

#[test]
fn shell_scripts_are_shellcheck_clean() {
    let out = run(Command::new(system_tool("shellcheck"))
        .current_dir(TOP)
        .arg("-x")
        .args([
            "deploy/user-data/install.sh",
            "scripts/setup-test-env.sh",
            "scripts/setup-demo-env.sh",
            "scripts/setup-lib.sh",
            "scripts/demo.sh",
            "scripts/dist.sh",
            "scripts/test.sh",
            "deploy/debian/postinst",
            "deploy/debian/prerm",
            "deploy/debian/postrm",
            "deploy/rpm/post_install.sh",
            "deploy/rpm/pre_uninstall.sh",
            "deploy/rpm/post_uninstall.sh",
        ]));
    assert!(out.status.success(), "shellcheck: {}", described(&out));
}

#[test]
fn installer_installs_into_a_scratch_root() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let config = read("tests/fixtures/good.toml");
    let url = binary_url();
    let out = install(
        &root,
        &[
            ("LASTCALL_URL", &url),
            ("LASTCALL_SHA256", lastcall_sha256()),
            ("LASTCALL_CONFIG", &config),
        ],
    );
    assert!(out.status.success(), "install.sh: {}", described(&out));

    let mut expected: BTreeMap<String, String> = [
        ("etc", "dir 0755"),
        ("etc/lastcall", "dir 0755"),
        ("etc/lastcall/lastcall.toml", "file 0600"),
        ("etc/systemd", "dir 0755"),
        ("etc/systemd/system", "dir 0755"),
        ("etc/systemd/system/multi-user.target.wants", "dir 0755"),
        (
            "etc/systemd/system/multi-user.target.wants/lastcall.service",
            "link /etc/systemd/system/lastcall.service",
        ),
        ("usr", "dir 0755"),
        ("usr/bin", "dir 0755"),
        ("usr/bin/lastcall", "file 0755"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for unit in UNITS {
        expected.insert(format!("etc/systemd/system/{unit}"), "file 0644".into());
    }
    assert_eq!(tree(&root), expected, "what install.sh wrote");

    assert_eq!(sha256(&root.join("usr/bin/lastcall")), lastcall_sha256());
    let installed_config = root.join("etc/lastcall/lastcall.toml");
    assert_eq!(fs::read_to_string(&installed_config).unwrap(), config);
    assert_eq!(fs::metadata(&installed_config).unwrap().uid(), own_uid());
    for unit in UNITS {
        assert_eq!(
            fs::read_to_string(root.join("etc/systemd/system").join(unit)).unwrap(),
            read(&format!("deploy/systemd/{unit}")),
            "the installed {unit} differs from deploy/systemd/{unit}: {SYNC}"
        );
    }

    // Again in timer mode, keeping the config: the timer is enabled instead of the daemon.
    let out = install(
        &root,
        &[
            ("LASTCALL_URL", &url),
            ("LASTCALL_SHA256", lastcall_sha256()),
            ("LASTCALL_MODE", "timer"),
        ],
    );
    assert!(
        out.status.success(),
        "install.sh, timer mode: {}",
        described(&out)
    );
    let after = tree(&root);
    assert_eq!(
        after
            .get("etc/systemd/system/timers.target.wants/lastcall-once.timer")
            .map(String::as_str),
        Some("link /etc/systemd/system/lastcall-once.timer"),
        "{after:#?}"
    );
    assert!(
        !after.contains_key("etc/systemd/system/multi-user.target.wants/lastcall.service"),
        "the daemon is disabled in timer mode: {after:#?}"
    );
    assert!(
        !after.contains_key("etc/systemd/system/timers.target.wants/lastcall-sweep.timer"),
        "the sweep is enabled only when asked: {after:#?}"
    );
    assert_eq!(fs::read_to_string(&installed_config).unwrap(), config);

    // With LASTCALL_SWEEP=1 the sweep's timer is enabled too; anything else is refused.
    let out = install(
        &root,
        &[
            ("LASTCALL_URL", &url),
            ("LASTCALL_SHA256", lastcall_sha256()),
            ("LASTCALL_SWEEP", "1"),
        ],
    );
    assert!(
        out.status.success(),
        "install.sh, sweep: {}",
        described(&out)
    );
    assert_eq!(
        tree(&root)
            .get("etc/systemd/system/timers.target.wants/lastcall-sweep.timer")
            .map(String::as_str),
        Some("link /etc/systemd/system/lastcall-sweep.timer")
    );
    let out = install(
        &root,
        &[
            ("LASTCALL_URL", &url),
            ("LASTCALL_SHA256", lastcall_sha256()),
            ("LASTCALL_SWEEP", "yes"),
        ],
    );
    assert!(!out.status.success(), "{}", described(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LASTCALL_SWEEP must be 0 or 1"));
}

#[test]
fn installer_refuses_a_wrong_checksum_and_installs_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let good = lastcall_sha256();
    let wrong = format!(
        "{}{}",
        if good.starts_with('0') { "1" } else { "0" },
        &good[1..]
    );
    let out = install(
        &root,
        &[
            ("LASTCALL_URL", &binary_url()),
            ("LASTCALL_SHA256", &wrong),
            ("LASTCALL_CONFIG", &read("tests/fixtures/good.toml")),
        ],
    );
    assert_refused(&out, &root, "SHA-256 mismatch");
}

/// Release tarballs of both architectures in `dir`, as scripts/dist.sh names them, and their
/// SHA256SUMS text. Both hold this build's binary (this machine runs only its own architecture);
/// the aarch64 one has a byte appended (ELF ignores it), so that the installed file tells which
/// tarball was picked. Returns (URL with `{arch}`, SHA256SUMS, hash of each binary by arch).
fn release_tarballs(dir: &Path) -> (String, String, BTreeMap<&'static str, String>) {
    let mut sums = String::new();
    let mut binaries = BTreeMap::new();
    // Without its debug information the test build is a tenth of its size: quicker to pack.
    let stripped = dir.join("lastcall-stripped");
    let out = run(Command::new(system_tool("strip"))
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(LASTCALL));
    assert!(out.status.success(), "strip: {}", described(&out));
    for arch in ["x86_64", "aarch64"] {
        let name = format!("lastcall-9.9.9-{arch}-unknown-linux-musl");
        let inner = dir.join("stage").join(&name);
        fs::create_dir_all(&inner).unwrap();
        let mut binary = fs::read(&stripped).unwrap();
        if arch == "aarch64" {
            binary.push(0);
        }
        fs::write(inner.join("lastcall"), &binary).unwrap();
        fs::set_permissions(inner.join("lastcall"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(inner.join("README.md"), "readme\n").unwrap();
        binaries.insert(arch, sha256(&inner.join("lastcall")));
        let tarball = dir.join(format!("{name}.tar.gz"));
        let out = run(Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.join("stage"))
            .arg(&name));
        assert!(out.status.success(), "tar: {}", described(&out));
        sums.push_str(&format!("{}  {name}.tar.gz\n", sha256(&tarball)));
    }
    let url = format!(
        "file://{}/lastcall-9.9.9-{{arch}}-unknown-linux-musl.tar.gz",
        dir.display()
    );
    (url, sums, binaries)
}

/// A PATH whose `uname` says `machine` for `uname -m`.
fn path_with_uname(dir: &Path, machine: &str) -> String {
    let bin = dir.join(format!("uname-{machine}"));
    fs::create_dir_all(&bin).unwrap();
    let uname = bin.join("uname");
    fs::write(
        &uname,
        format!("#!/bin/sh\n[ \"$1\" = -m ] && echo {machine} && exit 0\nexec /bin/uname \"$@\"\n"),
    )
    .unwrap();
    fs::set_permissions(&uname, fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn installer_picks_the_artefact_for_the_machines_architecture() {
    let scratch = tempfile::tempdir().unwrap();
    let (url, sums, binaries) = release_tarballs(scratch.path());
    let config = read("tests/fixtures/good.toml");
    // (uname -m, the binary expected): Graviton says aarch64 on Linux, arm64 elsewhere.
    for (machine, arch) in [
        ("x86_64", "x86_64"),
        ("aarch64", "aarch64"),
        ("arm64", "aarch64"),
    ] {
        let root = scratch.path().join(format!("root-{machine}"));
        let path = path_with_uname(scratch.path(), machine);
        // SHA256SUMS as published, with its newlines, or pasted on one line, or its hashes in
        // capitals (file names keep their case).
        let capitals: String = sums
            .lines()
            .map(|l| format!("{}{}\n", l[..64].to_uppercase(), &l[64..]))
            .collect();
        for sha in [sums.clone(), sums.replace('\n', " "), capitals] {
            let out = install(
                &root,
                &[
                    ("PATH", &path),
                    ("LASTCALL_URL", &url),
                    ("LASTCALL_SHA256", &sha),
                    ("LASTCALL_CONFIG", &config),
                ],
            );
            assert!(out.status.success(), "{machine}: {}", described(&out));
            assert_eq!(
                sha256(&root.join("usr/bin/lastcall")),
                binaries[arch],
                "{machine}: the {arch} tarball's binary"
            );
            assert!(
                String::from_utf8_lossy(&out.stderr)
                    .contains(&format!("lastcall-9.9.9-{arch}-unknown-linux-musl.tar.gz")),
                "{}",
                described(&out)
            );
        }
    }

    // Refused, nothing installed: an architecture without a build; SHA256SUMS without a line for
    // the file; a wrong hash on the right line.
    let wrong_line = sums
        .lines()
        .map(
            |l| match l.strip_suffix("aarch64-unknown-linux-musl.tar.gz") {
                Some(_) => format!("{}{}", "0".repeat(64), &l[64..]),
                None => l.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n");
    let x86_only: String = sums.lines().filter(|l| l.contains("x86_64")).collect();
    for (machine, sha, expected) in [
        (
            "armv7l",
            sums.clone(),
            "no lastcall build for this machine's architecture 'armv7l' (there are x86_64 and aarch64)",
        ),
        (
            "aarch64",
            format!("{x86_only}\n{}  other.tar.gz", "1".repeat(64)),
            "LASTCALL_SHA256 has no line for lastcall-9.9.9-aarch64-unknown-linux-musl.tar.gz",
        ),
        ("aarch64", wrong_line, "SHA-256 mismatch"),
    ] {
        let root = scratch.path().join("refused");
        let out = install(
            &root,
            &[
                ("PATH", &path_with_uname(scratch.path(), machine)),
                ("LASTCALL_URL", &url),
                ("LASTCALL_SHA256", &sha),
                ("LASTCALL_CONFIG", &config),
            ],
        );
        assert_refused(&out, &root, expected);
    }
}

#[test]
fn installer_refuses_a_binary_that_does_not_run_here_and_installs_nothing() {
    // The right hash of the wrong file: an aarch64 build on an x86_64 machine fails to execute,
    // as this stand-in does.
    let scratch = tempfile::tempdir().unwrap();
    let foreign = scratch.path().join("lastcall-aarch64");
    fs::write(&foreign, "#!/bin/sh\nexit 126\n").unwrap();
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o755)).unwrap();
    let root = scratch.path().join("root");
    let out = install(
        &root,
        &[
            ("LASTCALL_URL", &format!("file://{}", foreign.display())),
            ("LASTCALL_SHA256", &sha256(&foreign)),
            ("LASTCALL_CONFIG", &read("tests/fixtures/good.toml")),
        ],
    );
    assert_refused(&out, &root, "does not run on this");
}

#[test]
fn installer_refuses_an_invalid_config_and_installs_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let out = install(
        &root,
        &[
            ("LASTCALL_URL", &binary_url()),
            ("LASTCALL_SHA256", lastcall_sha256()),
            ("LASTCALL_CONFIG", &read("tests/fixtures/bad.toml")),
        ],
    );
    assert_refused(&out, &root, "the config is not valid");
}

// ---- CloudFormation

#[test]
fn cloudformation_templates_pass_cfn_lint() {
    let out = run(Command::new(venv_tool("cfn-lint"))
        .current_dir(TOP)
        .args(["--format", "parseable"])
        .args(TEMPLATES));
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "cfn-lint (no errors, no warnings): {}",
        described(&out)
    );
}

/// The SDK operations of `krate` (the directories of its src/operation/), from the version in
/// Cargo.lock, in Cargo's registry sources.
fn sdk_operations(krate: &str) -> BTreeSet<String> {
    let lock = read("Cargo.lock");
    let versions: Vec<&str> = lock
        .split("[[package]]")
        .filter(|p| p.lines().any(|l| l.trim() == format!("name = \"{krate}\"")))
        .filter_map(|p| {
            p.lines()
                .find_map(|l| l.trim().strip_prefix("version = \"")?.strip_suffix('"'))
        })
        .collect();
    assert!(!versions.is_empty(), "{krate} is not in Cargo.lock");
    let cargo_home = cargo_home();
    let mut ops = BTreeSet::new();
    for version in versions {
        let sources = fs::read_dir(cargo_home.join("registry/src"))
            .unwrap_or_else(|e| panic!("{}/registry/src: {e}", cargo_home.display()))
            .map(|r| {
                r.unwrap()
                    .path()
                    .join(format!("{krate}-{version}/src/operation"))
            })
            .find(|p| p.is_dir())
            .unwrap_or_else(|| {
                panic!("the sources of {krate} {version} are not in Cargo's registry")
            });
        for entry in fs::read_dir(sources).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                ops.insert(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(ops.len() > 5, "{krate}: operations found: {ops:?}");
    ops
}

/// src/ without its comment lines, every .rs file.
fn source_code() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                for line in fs::read_to_string(&path).unwrap().lines() {
                    if !line.trim_start().starts_with("//") {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        }
    }
    let mut code = String::new();
    walk(&top("src"), &mut code);
    code
}

/// The IAM actions lastcall needs, with where they apply: one per SDK call found in src/ (an SDK
/// operation is called as `.operation_name()`).
fn needed_actions() -> BTreeMap<&'static str, (Scope, Policy)> {
    let code = source_code();
    // Every AWS SDK crate lastcall depends on, so that a new service is scanned too.
    let crates: Vec<String> = read("Cargo.toml")
        .lines()
        .filter_map(|l| {
            Some(
                l.strip_prefix("aws-sdk-")?
                    .split_once('=')?
                    .0
                    .trim()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        crates.len() >= 2,
        "aws-sdk-* crates in Cargo.toml: {crates:?}"
    );
    let mut needed = BTreeMap::new();
    for service in &crates {
        for op in sdk_operations(&format!("aws-sdk-{service}")) {
            if !code.contains(&format!(".{op}()")) {
                continue;
            }
            // An operation name several services share (`describe_tags`: Auto Scaling and EC2)
            // is the listed service's call.
            let listed_elsewhere = SDK_CALLS
                .iter()
                .any(|(s, o, _, _, _)| s != service && *o == op);
            let listed_here = SDK_CALLS
                .iter()
                .any(|(s, o, _, _, _)| s == service && *o == op);
            if listed_elsewhere && !listed_here {
                continue;
            }
            let (_, _, action, scope, policy) = SDK_CALLS
                .iter()
                .find(|(s, o, _, _, _)| s == service && *o == op)
                .unwrap_or_else(|| {
                    panic!(
                        "src/ calls {service} .{op}(), which SDK_CALLS in tests/deploy.rs does not \
                         list: add its IAM action there and grant it in cloudformation/*.yaml"
                    )
                });
            needed.insert(*action, (*scope, *policy));
        }
    }
    assert!(
        needed.contains_key("autoscaling:CompleteLifecycleAction"),
        "the scan of src/ found the calls: {needed:?}"
    );
    needed
}

/// The group name (a Fn::Sub string) the template's lifecycle hook is on.
fn hook_group(t: &Value) -> String {
    let group = &t["Resources"]["LifecycleHook"]["Properties"]["AutoScalingGroupName"];
    let name = group["Ref"].as_str().expect("the hook's group is a Ref");
    if t["Parameters"].get(name).is_some() {
        return format!("${{{name}}}");
    }
    let resource = &t["Resources"][name];
    assert_eq!(resource["Type"], "AWS::AutoScaling::AutoScalingGroup");
    resource["Properties"]["AutoScalingGroupName"]["Fn::Sub"]
        .as_str()
        .expect("the group has a fixed name, so that the policy can name it")
        .to_string()
}

/// A managed policy's grants: action -> scope, checking each resource's form on the way. `None`
/// when the template has no such policy.
fn granted_actions(path: &str, policy: Policy) -> Option<BTreeMap<String, Scope>> {
    let t = template(path);
    let resource = &t["Resources"].get(policy.resource())?;
    assert_eq!(resource["Type"], "AWS::IAM::ManagedPolicy", "{path}");
    match policy {
        Policy::Instance => assert!(resource.get("Condition").is_none(), "{path}"),
        Policy::EcsDrain => assert_eq!(resource["Condition"], "EcsDrain", "{path}"),
        Policy::Sweep => assert_eq!(resource["Condition"], "Sweep", "{path}"),
    }
    let group = hook_group(t);
    let cluster_arn = "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:";
    let mut granted = BTreeMap::new();
    for statement in resource["Properties"]["PolicyDocument"]["Statement"]
        .as_array()
        .expect("statements")
    {
        assert_eq!(statement["Effect"], "Allow", "{path}: {statement}");
        assert!(statement.get("NotAction").is_none());
        let resource = &statement["Resource"];
        let condition = statement.get("Condition");
        let sub = resource["Fn::Sub"].as_str();
        let scope = if resource == "*" && condition.is_none() {
            Scope::Any
        } else if resource == "*" {
            // Only the one condition that limits an ECS call to the cluster.
            assert_eq!(
                condition.and_then(|c| c["ArnEquals"]["ecs:cluster"]["Fn::Sub"].as_str()),
                Some(format!("{cluster_arn}cluster/${{EcsClusterName}}").as_str()),
                "{path}: {statement}"
            );
            Scope::Cluster
        } else if resource["Fn::GetAtt"] == serde_json::json!(["Queue", "Arn"]) {
            Scope::Queue
        } else if let Some(sub) = sub.filter(|s| s.starts_with(cluster_arn)) {
            assert!(
                sub == format!("{cluster_arn}container-instance/${{EcsClusterName}}/*")
                    || sub == format!("{cluster_arn}task/${{EcsClusterName}}/*"),
                "{path}: {sub}"
            );
            Scope::Cluster
        } else if let Some(sub) = sub {
            assert_eq!(
                sub.strip_prefix(GROUP_ARN_PREFIX),
                Some(group.as_str()),
                "{path}: the group's ARN, with the hook's group {group}"
            );
            Scope::Group
        } else {
            panic!("{path}: unexpected resource {resource}");
        };
        assert!(
            condition.is_none() || scope == Scope::Cluster,
            "{path}: {statement}"
        );
        let actions = match &statement["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_string()).collect(),
            other => panic!("{path}: Action {other}"),
        };
        for action in actions {
            assert!(
                !action.contains('*'),
                "{path}: no wildcard actions: {action}"
            );
            assert!(
                granted.insert(action.clone(), scope).is_none(),
                "{path}: {action} twice"
            );
        }
    }
    Some(granted)
}

#[test]
fn instance_policies_grant_exactly_the_calls_in_src() {
    let needed = needed_actions();
    let of = |policy: Policy, only: &dyn Fn(&str) -> bool| -> BTreeMap<String, Scope> {
        needed
            .iter()
            .filter(|(a, (_, p))| *p == policy && only(a))
            .map(|(a, (s, _))| (a.to_string(), *s))
            .collect()
    };
    let all = |_: &str| true;
    let autoscaling = |a: &str| a.starts_with("autoscaling:");
    for (path, core) in [
        ("cloudformation/queue-mode.yaml", of(Policy::Instance, &all)),
        ("cloudformation/example.yaml", of(Policy::Instance, &all)),
        (
            "cloudformation/imds-mode.yaml",
            of(Policy::Instance, &autoscaling),
        ),
    ] {
        assert_eq!(
            granted_actions(path, Policy::Instance),
            Some(core),
            "{path}'s InstancePolicy against the AWS calls in src/"
        );
        assert_eq!(
            granted_actions(path, Policy::Sweep),
            Some(of(Policy::Sweep, &all)),
            "{path}'s SweepPolicy against the EC2 calls in src/"
        );
    }
    // The ECS drain's policy, in the templates for an existing group (the example stack runs no ECS).
    for path in [
        "cloudformation/queue-mode.yaml",
        "cloudformation/imds-mode.yaml",
    ] {
        assert_eq!(
            granted_actions(path, Policy::EcsDrain),
            Some(of(Policy::EcsDrain, &all)),
            "{path}'s EcsDrainPolicy against the ECS calls in src/"
        );
    }
    assert_eq!(
        granted_actions("cloudformation/example.yaml", Policy::EcsDrain),
        None
    );
}

#[test]
fn queue_stacks_suit_a_shared_queue() {
    for path in [
        "cloudformation/queue-mode.yaml",
        "cloudformation/example.yaml",
    ] {
        let r = &template(path)["Resources"];
        let redrive = &r["Queue"]["Properties"]["RedrivePolicy"];
        assert_eq!(
            redrive["deadLetterTargetArn"]["Fn::GetAtt"],
            serde_json::json!(["DeadLetterQueue", "Arn"])
        );
        let max = redrive["maxReceiveCount"]
            .as_u64()
            .expect("maxReceiveCount");
        // lastcall check warns below 100: every instance receives every message.
        assert!(max >= 1000, "{path}: maxReceiveCount {max}");

        let hook = &r["LifecycleHook"]["Properties"];
        assert_eq!(
            hook["LifecycleTransition"],
            "autoscaling:EC2_INSTANCE_TERMINATING"
        );
        assert_eq!(
            hook["NotificationTargetARN"]["Fn::GetAtt"],
            serde_json::json!(["Queue", "Arn"])
        );
        assert_eq!(
            hook["RoleARN"]["Fn::GetAtt"],
            serde_json::json!(["NotificationRole", "Arn"])
        );

        let role = &r["NotificationRole"]["Properties"];
        assert_eq!(
            role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
            "autoscaling.amazonaws.com"
        );
        let send = &role["Policies"][0]["PolicyDocument"]["Statement"][0];
        assert_eq!(
            send["Action"],
            serde_json::json!(["sqs:SendMessage", "sqs:GetQueueUrl"])
        );
        assert_eq!(
            send["Resource"]["Fn::GetAtt"],
            serde_json::json!(["Queue", "Arn"])
        );
    }
    // The example carries the queue-mode resources inline: the same queues.
    for queue in ["Queue", "DeadLetterQueue"] {
        assert_eq!(
            template("cloudformation/example.yaml")["Resources"][queue],
            template("cloudformation/queue-mode.yaml")["Resources"][queue],
            "{queue} in example.yaml and queue-mode.yaml"
        );
    }
    let imds_hook =
        &template("cloudformation/imds-mode.yaml")["Resources"]["LifecycleHook"]["Properties"];
    assert_eq!(
        imds_hook["LifecycleTransition"],
        "autoscaling:EC2_INSTANCE_TERMINATING"
    );
    assert!(
        imds_hook.get("NotificationTargetARN").is_none(),
        "no target in imds mode"
    );
}

#[test]
fn example_launch_template_requires_imdsv2_and_attaches_the_policy() {
    let r = &template("cloudformation/example.yaml")["Resources"];
    let data = &r["LaunchTemplate"]["Properties"]["LaunchTemplateData"];
    let metadata = &data["MetadataOptions"];
    assert_eq!(metadata["HttpTokens"], "required");
    assert_eq!(metadata["InstanceMetadataTags"], "enabled");
    // G21: hop limit 1 (lastcall runs on the host) unless containers are let in on purpose.
    assert_eq!(
        metadata["HttpPutResponseHopLimit"],
        serde_json::json!({"Fn::If": ["ContainersImds", 2, 1]})
    );
    let t = template("cloudformation/example.yaml");
    assert_eq!(
        t["Parameters"]["ContainersReachMetadata"]["Default"],
        "false"
    );
    assert_eq!(t["Conditions"]["ContainersImds"]["Fn::Equals"][1], "true");
    assert_eq!(
        data["IamInstanceProfile"]["Arn"]["Fn::GetAtt"],
        serde_json::json!(["InstanceProfile", "Arn"])
    );
    assert_eq!(
        r["InstanceProfile"]["Properties"]["Roles"][0]["Ref"],
        "InstanceRole"
    );
    assert_eq!(
        r["InstanceRole"]["Properties"]["ManagedPolicyArns"],
        serde_json::json!([
            {"Ref": "InstancePolicy"},
            {"Fn::If": ["Sweep", {"Ref": "SweepPolicy"}, {"Ref": "AWS::NoValue"}]}
        ])
    );
}

/// Evaluates an intrinsic-function expression of a decoded template the way CloudFormation does,
/// with `params` as the parameters' values: Ref, Condition, Fn::Equals, Not, And, Or, If, Select,
/// Split, Join (what the example's conditions and policy use).
fn cfn_eval(t: &Value, e: &Value, params: &BTreeMap<&str, &str>) -> Value {
    let ev = |x: &Value| cfn_eval(t, x, params);
    let args = |x: &Value| -> Vec<Value> { x.as_array().expect("a list").iter().map(ev).collect() };
    let Some((name, arg)) = e.as_object().and_then(|o| o.iter().next()) else {
        return e.clone();
    };
    match name.as_str() {
        "Ref" => Value::from(params[arg.as_str().expect("a name")]),
        "Condition" => ev(&t["Conditions"][arg.as_str().expect("a name")]),
        "Fn::Equals" => {
            let a = args(arg);
            Value::from(a[0] == a[1])
        }
        "Fn::Not" => Value::from(!args(arg)[0].as_bool().expect("a condition")),
        "Fn::And" => Value::from(args(arg).iter().all(|c| c.as_bool().expect("a condition"))),
        "Fn::Or" => Value::from(args(arg).iter().any(|c| c.as_bool().expect("a condition"))),
        "Fn::If" => {
            let a = arg.as_array().expect("a list");
            let cond = ev(&t["Conditions"][a[0].as_str().expect("a condition name")]);
            ev(&a[if cond.as_bool().expect("a condition") {
                1
            } else {
                2
            }])
        }
        "Fn::Split" => {
            let a = args(arg);
            let (d, s) = (a[0].as_str().unwrap(), a[1].as_str().expect("a string"));
            Value::from(s.split(d).collect::<Vec<_>>())
        }
        "Fn::Select" => {
            let a = args(arg);
            let i = a[0]
                .as_u64()
                .or_else(|| a[0].as_str()?.parse().ok())
                .expect("an index");
            a[1][i as usize].clone()
        }
        "Fn::Join" => {
            let a = args(arg);
            let parts: Vec<&str> = a[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            Value::from(parts.join(a[0].as_str().unwrap()))
        }
        _ => e.clone(),
    }
}

#[test]
fn example_instance_type_decides_the_architecture() {
    let t = template("cloudformation/example.yaml");
    let image = &t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["ImageId"];
    let al2023 = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-";
    // Graviton types, and x86 types with a "g" or "en" elsewhere in their names.
    let arm = [
        "t4g.micro",
        "m7g.large",
        "m7gd.xlarge",
        "c7gn.2xlarge",
        "r8g.large",
        "i8ge.large",
        "is4gen.large",
        "im4gn.large",
        "g5g.xlarge",
        "hpc7g.4xlarge",
        "x2gd.medium",
        "r8gb.large",
    ];
    let x86 = [
        "t3.micro",
        "m7i.large",
        "m5zn.large",
        "g4dn.xlarge",
        "g6e.xlarge",
        "gr6.4xlarge",
        "c7a.large",
        "inf2.xlarge",
        "p5en.48xlarge",
        "m6idn.large",
        "u7i-6tb.112xlarge",
    ];
    for (types, arch) in [(&arm[..], "arm64"), (&x86[..], "x86_64")] {
        for instance_type in types {
            for (architecture, expected) in
                [("auto", arch), ("arm64", "arm64"), ("x86_64", "x86_64")]
            {
                let params = BTreeMap::from([
                    ("InstanceType", *instance_type),
                    ("Architecture", architecture),
                ]);
                assert_eq!(
                    cfn_eval(t, image, &params),
                    Value::from(format!("{al2023}{expected}")),
                    "{instance_type} with Architecture {architecture}"
                );
            }
        }
    }
    // The instances may read the object of either architecture when the binary is in S3.
    let object = &t["Resources"]["InstanceRole"]["Properties"]["Policies"]["Fn::If"][1][0]
        ["PolicyDocument"]["Statement"][0]["Resource"]["Fn::Sub"][1]["Object"];
    for (url, expected) in [
        (
            "s3://bucket/v1/lastcall-0.1.0-{arch}-unknown-linux-musl.tar.gz",
            "bucket/v1/lastcall-0.1.0-*-unknown-linux-musl.tar.gz",
        ),
        ("s3://bucket/lastcall", "bucket/lastcall"),
    ] {
        let params = BTreeMap::from([("LastcallUrl", url)]);
        assert_eq!(cfn_eval(t, object, &params), Value::from(expected), "{url}");
    }
}

/// Fn::Sub as CloudFormation does it: `${Name}` from `vars`, `${!Text}` to `${Text}`.
fn fn_sub(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        rest = &rest[at + 2..];
        if let Some(literal) = rest.strip_prefix('!') {
            out.push_str("${");
            rest = literal;
            continue;
        }
        let end = rest.find('}').expect("a closing brace");
        let name = &rest[..end];
        out.push_str(
            vars.get(name)
                .unwrap_or_else(|| panic!("Fn::Sub: ${{{name}}} is not known")),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn example_user_data_carries_the_installer_and_installs_with_it() {
    let user_data = template("cloudformation/example.yaml")["Resources"]["LaunchTemplate"]
        ["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
        .as_str()
        .expect("UserData is Fn::Base64 of a Fn::Sub string");

    // The copy of install.sh matches the script.
    let begin = "# --- BEGIN a copy of deploy/user-data/install.sh";
    let end = "# --- END of the copy ---\n";
    let start = user_data.find(begin).expect("the copy's first marker");
    let start = start + user_data[start..].find('\n').unwrap() + 1;
    let stop = user_data.rfind(end).expect("the copy's last marker");
    assert!(user_data[stop..] == *end, "the copy ends the user-data");
    assert!(
        user_data[start..stop].replace("${!", "${") == read("deploy/user-data/install.sh"),
        "the copy of install.sh in cloudformation/example.yaml differs from the script: {SYNC}"
    );

    // As an instance gets it: substituted, at most 16 KB, and installing lastcall in timer mode
    // from the release tarball of this machine's architecture.
    let scratch = tempfile::tempdir().unwrap();
    let (url, sums, binaries) = release_tarballs(scratch.path());
    let vars: BTreeMap<&str, String> = [
        ("LastcallUrl", url),
        ("LastcallSha256", sums),
        ("LastcallMode", "timer".to_string()),
        ("EnableSweep", "false".to_string()),
        (
            "Queue",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/example-Queue-1".to_string(),
        ),
        ("HookName", "lastcall".to_string()),
    ]
    .into_iter()
    .collect();
    let script = fn_sub(user_data, &vars);
    assert!(
        script.len() <= 16 * 1024,
        "EC2 takes at most 16 KB of user-data: {}",
        script.len()
    );
    let file = scratch.path().join("user-data");
    fs::write(&file, &script).unwrap();
    system_tool("systemctl");
    let root = scratch.path().join("root");
    let out = run(Command::new("sh")
        .arg(&file)
        .env("LASTCALL_ROOT", &root)
        .env_remove("LASTCALL_CONFIG")
        .env_remove("LASTCALL_CONFIG_SSM"));
    assert!(
        out.status.success(),
        "the example's user-data: {}",
        described(&out)
    );
    let config = fs::read_to_string(root.join("etc/lastcall/lastcall.toml")).unwrap();
    assert!(config.starts_with("[sqs]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123456789012/example-Queue-1\"\n"), "{config}");
    assert!(config.contains("hook_name = \"lastcall\"\n"), "{config}");
    assert!(root
        .join("etc/systemd/system/timers.target.wants/lastcall-once.timer")
        .is_symlink());
    assert_eq!(
        sha256(&root.join("usr/bin/lastcall")),
        binaries[std::env::consts::ARCH],
        "this machine's architecture's binary"
    );
}

#[test]
fn default_config_and_its_commented_steps_are_valid() {
    let text = read("deploy/lastcall.default.toml");
    assert!(text.contains("/usr/share/doc/lastcall/lastcall.example.toml"));
    let scratch = tempfile::tempdir().unwrap();
    // The commented-out examples, uncommented: what an operator gets by removing the "# ".
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest == "[[step]]"
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    for (name, config, steps) in [
        ("as-shipped.toml", &text, 0),
        ("uncommented.toml", &uncommented, 3),
    ] {
        let path = scratch.path().join(name);
        fs::write(&path, config).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let out = run(Command::new(LASTCALL)
            .args(["check", "--offline", "--config"])
            .arg(&path));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", described(&out));
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.trim_start().starts_with("step "))
                .count(),
            steps,
            "{name}: {}",
            described(&out)
        );
    }
}

//! The command line of the built binary: help, version, and `check --offline` on fixture configs.

use std::process::{Command, Output};

fn lastcall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lastcall"))
        .args(args)
        .env_remove("LASTCALL_CONFIG")
        .output()
        .expect("run lastcall")
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn help_teaches_commands_and_exit_codes() {
    let out = lastcall(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "run",
        "once",
        "check",
        "--config",
        "--log-format",
        "Exit status:",
        "  3  the config file",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
    let out = lastcall(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("lastcall "));
    assert_eq!(lastcall(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn check_offline_accepts_the_good_fixture_and_the_shipped_example() {
    for file in [
        fixture("good.toml"),
        format!(
            "{}/deploy/lastcall.example.toml",
            env!("CARGO_MANIFEST_DIR")
        ),
    ] {
        let out = lastcall(&["--config", &file, "check", "--offline"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("valid"), "{stdout}");
    }
}

#[test]
fn check_offline_reports_every_problem_of_the_bad_fixture() {
    let file = fixture("bad.toml");
    let out = lastcall(&["--config", &file, "check", "--offline"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = [
        "[sqs]: key `queue_url`: must be a queue URL",
        "[sqs]: key `wait_time`: must be whole seconds from 0s to 20s",
        "[sqs]: key `visibility_timout`: unknown key in [sqs]",
        "[lifecycle]: key `heartbeat`: \"often\" is not",
        "[lifecycle]: key `on_failure_result`: \"RETRY\" is not",
        "[lifecycle]: key `state_dir`: must be an absolute path",
        "[[step]] #1 \"notify\": key `command[1]`: unknown placeholder {instance}",
        "[[step]] #1 \"notify\": key `command`: the program \"notify\" must be an absolute path",
        "[[step]] #2 \"notify\": key `name`: \"notify\" is already the name of step #1",
        "[[step]] #2 \"notify\": key `signal`: \"SIGWHAT\" is not a signal name",
        "[[step]] #3 \"systemd\": key `timeout`: \"soon\" is not a duration",
        "[[step]] #3 \"systemd\": key `unit`: is required",
        "[[step]] #4 \"sleep\": key `timeout`: 5s is shorter than what the step itself needs (10s)",
        "[[step]] #5 \"zeppelin\": key `kind`: unknown step kind \"zeppelin\"",
    ];
    for e in expected {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
        assert!(
            err.contains(&format!("error: {file}: {e}")),
            "problem not prefixed with the file: {e}"
        );
    }
    let count = err.lines().filter(|l| l.starts_with("error: ")).count();
    assert_eq!(count, expected.len(), "exactly these problems:\n{err}");
}

#[test]
fn a_missing_config_file_is_exit_3_and_names_the_file() {
    let out = lastcall(&[
        "--config",
        "/nonexistent/lastcall.toml",
        "check",
        "--offline",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config file /nonexistent/lastcall.toml"));
}

#[test]
fn syntax_errors_point_at_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("broken.toml");
    std::fs::write(
        &p,
        "[sqs]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\n[[step]\n",
    )
    .expect("write");
    let out = lastcall(&["--config", p.to_str().expect("utf8"), "check", "--offline"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not valid TOML") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn a_config_others_can_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("lastcall.toml");
    std::fs::copy(fixture("good.toml"), &p).expect("copy");
    let path = p.to_str().expect("utf8");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = lastcall(&["--config", path, "check", "--offline"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is writable by group or others (mode 666)")
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod dir");
    let out = lastcall(&["--config", path, "check", "--offline"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("so the file can be replaced"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod dir");
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&p, Some(65534), None).expect("chown");
        let out = lastcall(&["--config", path, "check", "--offline"]);
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is owned by uid 65534, not root"));
        std::os::unix::fs::chown(&p, Some(0), None).expect("chown");
    }
    assert_eq!(
        lastcall(&["--config", path, "check", "--offline"])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn check_warns_when_the_steps_outlast_the_units_stop_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("long.toml");
    std::fs::write(
        &path,
        "[imds]\nlifecycle = true\n[[step]]\nkind = \"sleep\"\nduration = \"10m\"\n[[step]]\nkind = \"command\"\ncommand = [\"/bin/true\"]\ntimeout = \"6m\"\n",
    )
    .expect("write");
    let out = lastcall(&[
        "--config",
        path.to_str().expect("utf8"),
        "check",
        "--offline",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("[warn] the steps' timeouts add up to 16m 5s, more than the daemon unit's TimeoutStopSec (15m)"),
        "{stdout}"
    );
}

//! `signal`: send a named signal to the process in a pid file or to a unit's main process, and
//! optionally wait for it to exit.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::fields::Fields;
use crate::template::{Context, RenderError, Template};

use super::{run_capture, StepEnv, StepError};

/// How often the process is checked while waiting for it to exit.
const POLL: Duration = Duration::from_millis(100);

/// Whose pid to signal.
#[derive(Debug, Clone)]
pub enum Target {
    /// The pid written in this file.
    PidFile(Template),
    /// The main pid of this systemd unit.
    Unit(Template),
}

/// `kind = "signal"`.
#[derive(Debug, Clone)]
pub struct SignalStep {
    /// Whose pid.
    pub target: Target,
    /// Which signal.
    pub signal: Signal,
    /// Wait for the process to exit after signalling it.
    pub wait_exit: bool,
    /// Path to systemctl (for `unit`).
    pub systemctl: PathBuf,
}

impl SignalStep {
    /// Reads `pid_file` or `unit`, `signal`, `wait_exit`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let pid_file = f.template("pid_file");
        let unit = f.template("unit");
        let target = match (pid_file, unit) {
            (Some(p), None) => Some(Target::PidFile(p)),
            (None, Some(u)) => Some(Target::Unit(u)),
            (Some(_), Some(_)) => {
                f.problem("unit", "give either pid_file or unit, not both");
                None
            }
            (None, None) => {
                f.problem("pid_file", "is required (or give unit = \"NAME.service\")");
                None
            }
        };
        let signal = match f.req::<String>("signal") {
            Some(s) => match parse_signal(&s) {
                Some(sig) => Some(sig),
                None => {
                    f.problem(
                        "signal",
                        format!(
                            "{s:?} is not a signal name like \"SIGUSR1\", \"USR1\" or \"TERM\""
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        let wait_exit = f.opt("wait_exit").unwrap_or(false);
        let systemctl = super::systemctl_path(f);
        Some(Self {
            target: target?,
            signal: signal?,
            wait_exit,
            systemctl,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        match &self.target {
            Target::PidFile(t) | Target::Unit(t) => vec![t],
        }
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        let whom = match &self.target {
            Target::PidFile(p) => format!("the pid in {}", p.render(ctx)?),
            Target::Unit(u) => format!("the main pid of {}", u.render(ctx)?),
        };
        Ok(format!(
            "send {} to {whom}{}",
            self.signal.as_str(),
            if self.wait_exit {
                " and wait for it to exit"
            } else {
                ""
            }
        ))
    }

    /// Signals the process (and waits for its exit if asked). Run again after an interruption
    /// (`env.resumed`), a process that is gone is success: it was signalled before lastcall
    /// stopped (design §5: the built-in kinds are safe to repeat).
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        match self.signal(env).await {
            Ok(done) => Ok(done),
            Err(Failure::Gone(why)) if env.resumed => Ok(format!(
                "{why}: it was signalled before lastcall was interrupted; nothing left to do"
            )),
            Err(Failure::Gone(why)) => Err(StepError::Failed(why)),
            Err(Failure::Step(e)) => Err(e),
        }
    }

    async fn signal(&self, env: &StepEnv<'_>) -> Result<String, Failure> {
        let (pid, whence) = match &self.target {
            Target::PidFile(p) => {
                let path = p.render(env.ctx)?;
                (read_pid_file(&path)?, path)
            }
            Target::Unit(u) => {
                let unit = u.render(env.ctx)?;
                let (code, out, err) = run_capture(
                    &self.systemctl,
                    &["show", "--property=MainPID", "--value", "--", unit.as_str()],
                )
                .await?;
                if code != Some(0) {
                    return Err(Failure::Step(StepError::Failed(format!(
                        "cannot read the main pid of {unit}: {err}"
                    ))));
                }
                let pid = out.parse::<i32>().unwrap_or(0);
                if pid <= 1 {
                    return Err(Failure::Gone(format!(
                        "unit {unit} has no running main process"
                    )));
                }
                (Pid::from_raw(pid), unit)
            }
        };
        match kill(pid, self.signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) => {
                return Err(Failure::Gone(format!(
                    "process {pid} (from {whence}) is not running; nothing to signal"
                )))
            }
            Err(e) => {
                return Err(Failure::Step(StepError::Failed(format!(
                    "cannot send {} to process {pid} (from {whence}): {e}",
                    self.signal.as_str()
                ))))
            }
        }
        if self.wait_exit {
            while alive(pid) {
                tokio::time::sleep(POLL).await;
            }
            return Ok(format!("sent {} to {pid}; it exited", self.signal.as_str()));
        }
        Ok(format!("sent {} to {pid}", self.signal.as_str()))
    }
}

/// Why there was nothing signalled.
#[derive(Debug)]
enum Failure {
    /// The process is not there (no pid file, no main process, not running).
    Gone(String),
    /// Anything else.
    Step(StepError),
}

impl From<StepError> for Failure {
    fn from(e: StepError) -> Self {
        Self::Step(e)
    }
}

impl From<RenderError> for Failure {
    fn from(e: RenderError) -> Self {
        Self::Step(e.into())
    }
}

/// Accepts `SIGUSR1`, `USR1`, `sigusr1`.
fn parse_signal(s: &str) -> Option<Signal> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).ok()
}

/// Reads a pid file; refuses pids 0 and 1 and anything that is not a number. A missing file
/// is [`Failure::Gone`] (a daemon removes its pid file when it exits).
fn read_pid_file(path: &str) -> Result<Pid, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::Gone(format!("cannot read pid file {path}: {e}")))
        }
        Err(e) => {
            return Err(Failure::Step(StepError::Failed(format!(
                "cannot read pid file {path}: {e}"
            ))))
        }
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(Pid::from_raw(pid)),
        _ => Err(Failure::Step(StepError::Failed(format!(
            "pid file {path} does not hold a usable pid: {:?}",
            text.chars().take(32).collect::<String>()
        )))),
    }
}

/// True while the process exists and is not a zombie.
fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    // A zombie still answers kill(0); its state letter in /proc/PID/stat is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_in_every_common_spelling() {
        assert_eq!(parse_signal("SIGUSR1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("usr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn pid_files_must_hold_a_real_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.pid");
        for bad in ["", "abc", "1", "0", "-5"] {
            std::fs::write(&p, bad).expect("write");
            assert!(read_pid_file(p.to_str().expect("utf8")).is_err(), "{bad:?}");
        }
        std::fs::write(&p, "4242\n").expect("write");
        assert_eq!(
            read_pid_file(p.to_str().expect("utf8")).expect("pid"),
            Pid::from_raw(4242)
        );
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;
    use crate::template::Context;

    fn step(pid_file: &str, signal: Signal, wait_exit: bool) -> SignalStep {
        SignalStep {
            target: Target::PidFile(Template::parse(pid_file).expect("template")),
            signal,
            wait_exit,
            systemctl: "/bin/false".into(),
        }
    }

    #[tokio::test]
    async fn signals_a_live_process_and_waits_for_its_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new("/bin/sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .expect("sleep");
        let pid_file = dir.path().join("p.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id().expect("pid"))).expect("write");
        let s = step(pid_file.to_str().expect("utf8"), Signal::SIGTERM, true);
        let ctx = Context::default();
        let env = StepEnv::test(&ctx);
        // Reap the child concurrently, as its real parent (an init system) would.
        let (r, status) = tokio::join!(s.run(&env), child.wait());
        assert!(r.expect("ok").contains("it exited"));
        assert!(!status.expect("status").success());
    }

    #[tokio::test]
    async fn a_stale_pid_file_is_a_clear_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new("/bin/true")
            .spawn()
            .expect("true");
        let pid = child.id().expect("pid");
        child.wait().await.expect("wait");
        let pid_file = dir.path().join("p.pid");
        std::fs::write(&pid_file, pid.to_string()).expect("write");
        let s = step(pid_file.to_str().expect("utf8"), Signal::SIGUSR1, false);
        let ctx = Context::default();
        let env = StepEnv::test(&ctx);
        let err = s.run(&env).await.expect_err("stale");
        assert!(err.to_string().contains("is not running"), "{err}");
        // Run again after lastcall was interrupted, the process is gone because it was signalled
        // before: that is what the step was for.
        let resumed = StepEnv {
            resumed: true,
            ..StepEnv::test(&ctx)
        };
        let done = s.run(&resumed).await.expect("resumed");
        assert!(
            done.contains("signalled before lastcall was interrupted"),
            "{done}"
        );
        let gone = step("/nonexistent/x.pid", Signal::SIGUSR1, false);
        gone.run(&resumed)
            .await
            .expect("pid file removed by the exiting daemon");
        let s = step("/nonexistent/x.pid", Signal::SIGUSR1, false);
        let err = s.run(&env).await.expect_err("missing");
        assert!(
            err.to_string()
                .contains("cannot read pid file /nonexistent/x.pid"),
            "{err}"
        );
    }
}

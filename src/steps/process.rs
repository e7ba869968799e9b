//! The one child-process runner of the steps (`command`, and `systemctl` for `systemd` and
//! `signal`): no stdin, its own process group (so that a timeout ends its children too), killed
//! with lastcall (the parent-death signal: a step is run again on restart, never twice at once),
//! and its output either captured or logged line by line under the step's name.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tracing::info;

use super::StepError;

/// Longest output line logged as is; the rest is cut.
const MAX_LINE: usize = 4096;
/// How long the output readers may take to drain once the program has exited (a daemon it
/// started may hold the pipe open for ever).
const DRAIN: Duration = Duration::from_millis(500);

/// A user to run as (and its primary group).
#[derive(Debug, Clone)]
pub struct RunAs {
    /// The user's name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: std::path::PathBuf,
}

/// What to do with the program's stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// Keep it, for the caller to read (short helper commands).
    Capture,
    /// Log it line by line under this step's name.
    Log(&'a str),
}

/// How the program ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout, trimmed ([`Output::Capture`] only).
    pub stdout: String,
    /// Its stderr, trimmed ([`Output::Capture`] only).
    pub stderr: String,
}

/// Runs `program` with `args` and the extra `env`, as `user` when given, and waits for it.
/// Dropping the future (a timeout, shutdown) kills the program's whole process group.
pub async fn run(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    user: Option<&RunAs>,
    output: Output<'_>,
) -> Result<Finished, StepError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(u) = user {
        // std drops supplementary groups when root switches uid.
        cmd.uid(u.uid)
            .gid(u.gid)
            .env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    cmd.process_group(0);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other(
                    "lastcall exited before the step started",
                ));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| StepError::Failed(format!("cannot start {}: {e}", program.display())))?;
    let group = child.id().map(KillGroupOnDrop);
    let readers = match output {
        Output::Capture => [
            child.stdout.take().map(|s| tokio::spawn(read_all(s))),
            child.stderr.take().map(|s| tokio::spawn(read_all(s))),
        ],
        Output::Log(step) => [
            child
                .stdout
                .take()
                .map(|s| tokio::spawn(log_lines(s, step.to_string(), "stdout"))),
            child
                .stderr
                .take()
                .map(|s| tokio::spawn(log_lines(s, step.to_string(), "stderr"))),
        ],
    };
    let status = child
        .wait()
        .await
        .map_err(|e| StepError::Failed(format!("cannot wait for {}: {e}", program.display())))?;
    // The program ended by itself: what it left running in the background is its business.
    std::mem::forget(group);
    // A program that left a daemon holding its output must not hold the step: give the
    // readers a moment to drain, then drop them.
    let mut texts = Vec::with_capacity(2);
    for task in readers {
        let text = match task {
            Some(t) => match tokio::time::timeout(DRAIN, t).await {
                Ok(Ok(s)) => s,
                _ => String::new(),
            },
            None => String::new(),
        };
        texts.push(text);
    }
    let stderr = texts.pop().unwrap_or_default();
    let stdout = texts.pop().unwrap_or_default();
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// Kills a step's whole process group when the step is abandoned (timeout, shutdown).
struct KillGroupOnDrop(u32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn read_all<R: AsyncRead + Unpin>(mut reader: R) -> String {
    let mut buf = Vec::new();
    let _ = reader.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).trim().to_string()
}

async fn log_lines<R: AsyncRead + Unpin>(reader: R, step: String, stream: &'static str) -> String {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        info!(step = %step, stream, "{line}");
    }
    String::new()
}

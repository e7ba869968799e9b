//! The one child-process runner of the steps (`command`, and `systemctl` for `systemd` and
//! `signal`): no stdin, its own process group (so that a timeout ends its children too), killed
//! with lastcall (the parent-death signal: a step is run again on restart, never twice at once),
//! a clean environment (`PATH`, `LANG` and what the caller gives: lastcall's own environment can
//! hold `*_env` secrets), and its output either captured or logged line by line under the step's
//! name. Output is read as bytes, each line capped and logged lossily, and drained to the end, so
//! that no byte sequence and no missing newline can stop the reader (which would kill the
//! program with SIGPIPE) or grow lastcall's memory.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing::info;

use super::StepError;

/// Longest output line logged as is; the rest is cut.
const MAX_LINE: usize = 4096;
/// How long the output readers may take to drain once the program has exited (a daemon it
/// started may hold the pipe open for ever).
const DRAIN: Duration = Duration::from_millis(500);
/// Most bytes of captured output kept ([`Output::Capture`]).
const MAX_CAPTURE: usize = 64 * 1024;
/// `PATH` for programs when lastcall itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which of lastcall's own environment variables a program gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inherit {
    /// Only `PATH` and `LANG` (the default: `*_env` secrets stay in lastcall).
    Minimal,
    /// All of it (`inherit_env = true`).
    All,
}

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
    inherit: Inherit,
    user: Option<&RunAs>,
    output: Output<'_>,
) -> Result<Finished, StepError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if inherit == Inherit::Minimal {
        cmd.env_clear().env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        );
        if let Some(lang) = std::env::var_os("LANG") {
            cmd.env("LANG", lang);
        }
    }
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
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Reader::start(s, output, "stdout")),
        child
            .stderr
            .take()
            .map(|s| Reader::start(s, output, "stderr")),
    ];
    let status = child
        .wait()
        .await
        .map_err(|e| StepError::Failed(format!("cannot wait for {}: {e}", program.display())))?;
    // The program ended by itself: what it left running in the background is its business.
    std::mem::forget(group);
    // A program that left a daemon holding its output must not hold the step: give the
    // readers a moment to drain, then drop them.
    let mut texts = Vec::with_capacity(2);
    for reader in readers {
        texts.push(match reader {
            Some(r) => r.finish().await,
            None => String::new(),
        });
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

/// A task reading one of the program's outputs; aborted when dropped, so that a daemon the
/// program left holding the pipe cannot keep lastcall logging under the step's name.
struct Reader(tokio::task::JoinHandle<String>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reader {
    fn start<R: AsyncRead + Unpin + Send + 'static>(
        reader: R,
        output: Output<'_>,
        stream: &'static str,
    ) -> Self {
        Self(match output {
            Output::Capture => tokio::spawn(async move {
                let mut kept = Vec::new();
                read_lines(reader, |line, _| {
                    if kept.len() < MAX_CAPTURE {
                        kept.extend_from_slice(line);
                        kept.push(b'\n');
                    }
                })
                .await;
                String::from_utf8_lossy(&kept).trim().to_string()
            }),
            Output::Log(step) => {
                let step = step.to_string();
                tokio::spawn(async move {
                    read_lines(reader, |line, cut| {
                        let text = String::from_utf8_lossy(line);
                        let more = if cut { "…" } else { "" };
                        info!(step = %step, stream, "{text}{more}");
                    })
                    .await;
                    String::new()
                })
            }
        })
    }

    /// What it read, once it has drained (at most [`DRAIN`] after the program's exit).
    async fn finish(mut self) -> String {
        match tokio::time::timeout(DRAIN, &mut self.0).await {
            Ok(Ok(s)) => s,
            _ => String::new(),
        }
    }
}

/// Reads `reader` to its end, giving each line (without its newline) to `line`, cut after
/// [`MAX_LINE`] bytes (then the flag is true, and the rest of that line is skipped). Bytes, not
/// text: any byte sequence is a line like another.
async fn read_lines<R: AsyncRead + Unpin>(reader: R, mut line: impl FnMut(&[u8], bool)) {
    let mut r = BufReader::new(reader);
    let mut buf: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Ok(chunk) = r.fill_buf().await {
        if chunk.is_empty() {
            if !buf.is_empty() || cut {
                line(&buf, cut);
            }
            break;
        }
        let (take, end) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, Some(i + 1)),
            None => (chunk.len(), None),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        cut |= take > room;
        let used = end.unwrap_or(take);
        r.consume(used);
        if end.is_some() {
            line(&buf, cut);
            buf.clear();
            cut = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_bytes_and_endless_lines_are_read_to_the_end() {
        let mut input = vec![b'a'; 3 * MAX_LINE];
        input.extend_from_slice(b"\n\xff\xfe latin-1 \xe9\nlast line without newline");
        let mut lines = Vec::new();
        read_lines(&input[..], |l, cut| {
            lines.push((String::from_utf8_lossy(l).into_owned(), cut))
        })
        .await;
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0].0.len(), MAX_LINE);
        assert!(lines[0].1, "the long line is marked as cut");
        assert_eq!(
            lines[1],
            ("\u{fffd}\u{fffd} latin-1 \u{fffd}".into(), false)
        );
        assert_eq!(lines[2], ("last line without newline".into(), false));
    }
}

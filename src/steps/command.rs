//! `command`: run an argv (never through a shell built by lastcall), with placeholders filled into
//! argv elements and environment values, optionally as another user. Output goes to the log.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::fields::Fields;
use crate::template::{Context, RenderError, Template};

use super::process::{self, Inherit, Output, RunAs};
use super::{StepEnv, StepError};

/// `kind = "command"`.
#[derive(Debug, Clone)]
pub struct CommandStep {
    /// The program (an absolute path) and its arguments.
    pub argv: Vec<Template>,
    /// Extra environment variables.
    pub env: BTreeMap<String, Template>,
    /// Run as this user (and its primary group).
    pub user: Option<String>,
    /// Pass lastcall's whole environment (default: only `PATH` and `LANG`, since lastcall's
    /// environment can hold `*_env` secrets).
    pub inherit_env: bool,
}

impl CommandStep {
    /// Reads `command`, `env`, `user`, `inherit_env`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        if !f.has("command") {
            f.problem(
                "command",
                "is required: command = [\"/path/to/program\", \"arg\", …]",
            );
        }
        // The program is checked on the raw text, so that this is reported even when another
        // element has a bad placeholder.
        let program = f
            .peek("command")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let argv = f.templates("command");
        match (&program, &argv) {
            (Some(p), _) if !p.starts_with('/') => f.problem(
                "command",
                format!(
                    "the program {p:?} must be an absolute path (there is no shell and no PATH search); \
                     to use a shell, write it: [\"/bin/sh\", \"-c\", \"…\"]"
                ),
            ),
            (None, Some(_)) => f.problem(
                "command",
                "must name a program: command = [\"/path/to/program\", \"arg\", …]",
            ),
            _ => {}
        }
        let env = f.template_map("env").unwrap_or_default();
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                f.problem(
                    &format!("env.{k}"),
                    "is not a valid environment variable name",
                );
            }
        }
        let user: Option<String> = f.opt("user");
        let inherit_env = f.opt("inherit_env").unwrap_or(false);
        Some(Self {
            argv: argv?,
            env,
            user,
            inherit_env,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        self.argv.iter().chain(self.env.values()).collect()
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        let argv = self
            .argv
            .iter()
            .map(|t| t.render(ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let mut s = format!("run {argv:?}");
        if let Some(u) = &self.user {
            s.push_str(&format!(" as {u}"));
        }
        Ok(s)
    }

    /// What `lastcall check` can confirm without running the program: that its `user` exists
    /// (None when there is no `user`).
    pub async fn check(&self) -> Option<Result<String, StepError>> {
        let name = self.user.as_ref()?;
        Some(look_up(name).await.map(|u| {
            format!(
                "runs as user {:?} (uid {}, gid {}), found {USERS_FROM}",
                u.name, u.uid, u.gid
            )
        }))
    }

    /// Runs the program and waits for it; success is exit status 0.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let argv = self
            .argv
            .iter()
            .map(|t| t.render(env.ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let mut vars = lastcall_env(env);
        for (k, t) in &self.env {
            vars.push((k.clone(), t.render(env.ctx)?));
        }
        let user = match &self.user {
            Some(name) => Some(look_up(name).await?),
            None => None,
        };
        let status = process::run(
            Path::new(&argv[0]),
            &argv[1..],
            &vars,
            if self.inherit_env {
                Inherit::All
            } else {
                Inherit::Minimal
            },
            user.as_ref(),
            Output::Log(env.name),
        )
        .await?
        .status;
        if status.success() {
            Ok(format!("{} exited 0", argv[0]))
        } else if let Some(code) = status.code() {
            Err(StepError::Failed(format!(
                "{} exited with status {code}",
                argv[0]
            )))
        } else {
            Err(StepError::Failed(format!(
                "{} was killed by a signal ({status})",
                argv[0]
            )))
        }
    }
}

/// The variables every command step gets, so that scripts need no placeholders.
fn lastcall_env(env: &StepEnv<'_>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .ctx
        .values
        .iter()
        .map(|(k, val)| (format!("LASTCALL_{}", k.to_ascii_uppercase()), val.clone()))
        .collect();
    v.push(("LASTCALL_STEP".into(), env.name.to_string()));
    if env.resumed {
        v.push(("LASTCALL_RESUMED".into(), "1".into()));
    }
    v
}

/// Where this build finds users. A static (musl) build has no NSS: musl reads /etc/passwd, and asks
/// nscd when one runs, so a user that only LDAP, SSSD or another NSS module knows is not found.
#[cfg(target_env = "musl")]
const USERS_FROM: &str = "in /etc/passwd";
#[cfg(not(target_env = "musl"))]
const USERS_FROM: &str = "through NSS";
#[cfg(target_env = "musl")]
const NOT_FOUND: &str = "is not in /etc/passwd: this static build of lastcall reads users from \
     /etc/passwd (and from nscd when it runs), not through NSS modules such as LDAP or SSSD; \
     add a local user (useradd --system), or leave `user` out and run the program through \
     [\"/usr/sbin/runuser\", \"-u\", \"NAME\", \"--\", …]";
#[cfg(not(target_env = "musl"))]
const NOT_FOUND: &str = "does not exist (looked up through NSS)";

/// The user `name`, looked up off the async thread (NSS can mean LDAP or SSSD, over the network).
async fn look_up(name: &str) -> Result<RunAs, StepError> {
    let n = name.to_string();
    let u = tokio::task::spawn_blocking(move || nix::unistd::User::from_name(&n))
        .await
        .map_err(|e| StepError::Failed(format!("cannot look up user {name:?}: {e}")))?
        .map_err(|e| StepError::Failed(format!("cannot look up user {name:?}: {e}")))?
        .ok_or_else(|| StepError::Failed(format!("user {name:?} {NOT_FOUND}")))?;
    Ok(RunAs {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn step(argv: &[&str], user: Option<&str>) -> CommandStep {
        CommandStep {
            argv: argv
                .iter()
                .map(|a| Template::parse(a).expect("template"))
                .collect(),
            env: BTreeMap::from([(
                "GREETING".to_string(),
                Template::parse("hi {instance_id}").expect("t"),
            )]),
            user: user.map(str::to_string),
            inherit_env: false,
        }
    }

    #[tokio::test]
    async fn a_non_utf8_line_does_not_stop_the_output_or_kill_the_program() {
        // Before: the line reader stopped at the first non-UTF-8 line and closed the pipe, and
        // the program died of SIGPIPE at its next write.
        let c = ctx();
        let env = StepEnv::test(&c);
        let s = step(
            &[
                "/bin/sh",
                "-c",
                "printf 'caf\\351\\n'; sleep 0.2; i=0; while [ $i -lt 2000 ]; do echo more output; i=$((i+1)); done",
            ],
            None,
        );
        let r = s.run(&env).await;
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn commands_get_a_clean_environment_unless_they_ask() {
        // Cargo sets CARGO_PKG_NAME for the test process, as systemd's Environment= would set a
        // `*_env` secret for lastcall: a command must not see it.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("env");
        let c = ctx();
        let env = StepEnv::test(&c);
        let argv = [
            "/bin/sh",
            "-c",
            "env > \"$1\"",
            "sh",
            out.to_str().expect("utf8"),
        ];
        step(&argv, None).run(&env).await.expect("ok");
        let seen = std::fs::read_to_string(&out).expect("env");
        assert!(!seen.contains("CARGO_PKG_NAME"), "{seen}");
        assert!(
            seen.contains("PATH=") && seen.contains("GREETING=hi"),
            "{seen}"
        );
        assert!(
            seen.contains("LASTCALL_INSTANCE_ID=i-0123456789abcdef0"),
            "{seen}"
        );
        let mut inherit = step(&argv, None);
        inherit.inherit_env = true;
        inherit.run(&env).await.expect("ok");
        let seen = std::fs::read_to_string(&out).expect("env");
        assert!(seen.contains("CARGO_PKG_NAME=lastcall"), "{seen}");
    }

    fn ctx() -> Context {
        let mut c = Context::default();
        c.values.insert("instance_id", "i-0123456789abcdef0".into());
        c
    }

    #[tokio::test]
    async fn placeholders_go_into_single_arguments_never_a_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let mut c = ctx();
        c.values
            .insert("hostname", "$(touch /tmp/pwned); `id`".into());
        let s = step(
            &["/bin/sh", "-c", "printf '%s|%s|%s|%s' \"$1\" \"$GREETING\" \"$LASTCALL_INSTANCE_ID\" \"$LASTCALL_RESUMED\" > \"$2\"", "sh", "{hostname}", out.to_str().expect("utf8")],
            None,
        );
        let env = StepEnv {
            resumed: true,
            ..StepEnv::test(&c)
        };
        s.run(&env).await.expect("ok");
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "$(touch /tmp/pwned); `id`|hi i-0123456789abcdef0|i-0123456789abcdef0|1"
        );
    }

    #[tokio::test]
    async fn exit_status_decides_and_runs_as_the_configured_user() {
        let c = ctx();
        let env = StepEnv::test(&c);
        let err = step(&["/bin/sh", "-c", "exit 7"], None)
            .run(&env)
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("exited with status 7"), "{err}");
        let err = step(&["/nonexistent/prog"], None)
            .run(&env)
            .await
            .expect_err("fails");
        assert!(
            err.to_string().contains("cannot start /nonexistent/prog"),
            "{err}"
        );
        if nix::unistd::geteuid().is_root() {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
            let out = dir.path().join("uid");
            step(
                &[
                    "/bin/sh",
                    "-c",
                    "id -u > \"$0\"",
                    out.to_str().expect("utf8"),
                ],
                Some("nobody"),
            )
            .run(&env)
            .await
            .expect("ok");
            let nobody = nix::unistd::User::from_name("nobody")
                .expect("lookup")
                .expect("nobody exists");
            assert_eq!(
                std::fs::read_to_string(&out).expect("uid").trim(),
                nobody.uid.to_string()
            );
            let err = step(&["/bin/true"], Some("no-such-user-here"))
                .run(&env)
                .await
                .expect_err("fails");
            assert!(
                err.to_string()
                    .contains(&format!("user \"no-such-user-here\" {NOT_FOUND}")),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn an_abandoned_step_takes_its_children_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let late = dir.path().join("late");
        let s = step(
            &[
                "/bin/sh",
                "-c",
                "(sleep 1; echo late > \"$0\") & sleep 1; echo late > \"$0\"",
                late.to_str().expect("utf8"),
            ],
            None,
        );
        let c = ctx();
        let env = StepEnv::test(&c);
        let r = tokio::time::timeout(Duration::from_millis(200), s.run(&env)).await;
        assert!(r.is_err(), "timed out");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!late.exists(), "the step's processes were killed with it");
    }
}

//! Secrets (API keys, passwords, tokens): read from a file (`*_file`) or an environment variable
//! (`*_env`) when a step runs, never written inline in the config, and never shown: `Secret`'s
//! `Debug` and `Display` are redacted, and errors name where a secret comes from, not what it is.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::config::fields::Fields;

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (its content, without the trailing newline).
    File(PathBuf),
    /// An environment variable of the lastcall process.
    Env(String),
}

/// A secret's value; prints as `** redacted **`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

/// A secret could not be read (the message never holds the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The variable is not set.
    #[error("environment variable {0} (a secret) is not set")]
    EnvMissing(String),
    /// The file could be changed by someone else.
    #[error("refusing the secret file: {0}")]
    Unsafe(String),
    /// The secret is empty.
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

impl SecretSource {
    /// Reads `<base>_file` / `<base>_env` (exactly one) from a step table. A secret written
    /// inline as `<base>` is refused.
    pub fn parse(f: &mut Fields, base: &str, required: bool) -> Option<Self> {
        let file_key = format!("{base}_file");
        let env_key = format!("{base}_env");
        if f.has(base) {
            let _: Option<toml::Value> = f.opt(base);
            f.problem(
                base,
                format!("secrets are not written in the config file: use {file_key} = \"/etc/lastcall/…\" or {env_key} = \"VARIABLE\""),
            );
        }
        let file: Option<String> = f.opt(&file_key);
        let env: Option<String> = f.opt(&env_key);
        match (file, env) {
            (Some(p), None) => Some(Self::checked_file(f, &file_key, &p)),
            (None, Some(v)) => {
                if v.is_empty() || v.contains('=') {
                    f.problem(&env_key, "is not a valid environment variable name");
                }
                Some(Self::Env(v))
            }
            (Some(_), Some(_)) => {
                f.problem(
                    &env_key,
                    format!("give either {file_key} or {env_key}, not both"),
                );
                None
            }
            (None, None) => {
                if required {
                    f.problem(&file_key, format!("is required (or {env_key})"));
                }
                None
            }
        }
    }

    /// A secret file named by `key`, with the checks every secret file gets when the config is
    /// read: an absolute path, a file only root can change (an error), readable by root alone (a
    /// warning), and present (a warning: it must exist when the step runs).
    pub fn checked_file(f: &mut Fields, key: &str, p: &str) -> Self {
        let path = PathBuf::from(p);
        if !path.is_absolute() {
            f.problem(key, "must be an absolute path");
        }
        if let Some(why) = crate::config::permissions::unsafe_file(&path) {
            f.problem(key, format!("{why}; lastcall refuses it"));
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.mode() & 0o022 != 0 => {}
            Ok(m) if m.mode() & 0o077 != 0 => f.warn(
                key,
                format!(
                    "{p} is accessible to group or others (mode {:o}); make it 0600",
                    m.mode() & 0o777
                ),
            ),
            Ok(_) => {}
            Err(e) => f.warn(
                key,
                format!("{p} cannot be read now ({e}); it must exist when the step runs"),
            ),
        }
        Self::File(path)
    }

    /// Reads `<base>_file` / `<base>_env` when the plain `<base>` key is allowed too (the
    /// caller handles it): only the two secret forms are read here.
    pub fn parse_prefixed(f: &mut Fields, base: &str) -> Option<Self> {
        let file_key = format!("{base}_file");
        let env_key = format!("{base}_env");
        match (f.opt::<String>(&file_key), f.opt::<String>(&env_key)) {
            (Some(p), None) => Some(Self::checked_file(f, &file_key, &p)),
            (None, Some(v)) => Some(Self::Env(v)),
            (Some(_), Some(_)) => {
                f.problem(
                    &env_key,
                    format!("give either {file_key} or {env_key}, not both"),
                );
                None
            }
            (None, None) => None,
        }
    }

    /// Reads the secret now.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let value = match self {
            Self::File(path) => {
                if let Some(why) = crate::config::permissions::unsafe_file(path) {
                    return Err(SecretError::Unsafe(why));
                }
                if let Ok(m) = std::fs::metadata(path) {
                    if m.mode() & 0o077 != 0 {
                        tracing::warn!(file = %path.display(), mode = format!("{:o}", m.mode() & 0o777), "secret file is accessible to group or others; make it 0600");
                    }
                }
                std::fs::read_to_string(path).map_err(|e| SecretError::Read {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            Self::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?
            }
        };
        let value = value.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_load_trimmed_and_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key");
        std::fs::write(&p, "s3cr3t-value\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let s = SecretSource::File(p.clone()).load().expect("load");
        assert_eq!(s.expose(), "s3cr3t-value");
        assert_eq!(format!("{s} {s:?}"), "** redacted ** ** redacted **");
        std::fs::write(&p, "\n").expect("write");
        let e = SecretSource::File(p).load().expect_err("empty");
        assert!(!e.to_string().contains("s3cr3t"));
        let e = SecretSource::Env("LASTCALL_TEST_SURELY_UNSET".into())
            .load()
            .expect_err("unset");
        assert_eq!(
            e,
            SecretError::EnvMissing("LASTCALL_TEST_SURELY_UNSET".into())
        );
    }
}

//! The config-reading machinery: [`Fields`] reads the keys of one TOML table and records every
//! [`Problem`] (file, section, key, message) instead of stopping at the first, so that `lastcall
//! check` reports them all at once. It knows nothing of lastcall's sections or step kinds: the
//! sections, the step kinds and the secrets use it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::template::Template;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The config is refused.
    Error,
    /// The config works but probably not as meant.
    Warning,
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// `[sqs]`, `[[step]] #2 "flush"`, … (empty for the file as a whole).
    pub section: String,
    /// The key, when one is to blame.
    pub key: Option<String>,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file.display())?;
        if !self.section.is_empty() {
            write!(f, ": {}", self.section)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads the keys of one TOML table, recording every problem and every key it did not know.
pub struct Fields<'a> {
    pub(super) table: &'a toml::Table,
    pub(super) path: &'a Path,
    section: String,
    pub(super) used: BTreeSet<String>,
    pub(super) problems: &'a mut Vec<Problem>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(
        table: &'a toml::Table,
        path: &'a Path,
        section: String,
        problems: &'a mut Vec<Problem>,
    ) -> Self {
        Self {
            table,
            path,
            section,
            used: BTreeSet::new(),
            problems,
        }
    }

    /// An optional key of any serde type; a wrong type is recorded and read as absent.
    pub fn opt<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        self.used.insert(key.to_string());
        let v = self.table.get(key)?;
        match v.clone().try_into::<T>() {
            Ok(x) => Some(x),
            Err(e) => {
                let msg = format!(
                    "has the wrong type ({}): {}",
                    v.type_str(),
                    e.to_string().trim_end()
                );
                self.problem(key, msg);
                None
            }
        }
    }

    /// A required key.
    pub fn req<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        if !self.table.contains_key(key) {
            self.used.insert(key.to_string());
            self.problem(key, "is required");
            return None;
        }
        self.opt(key)
    }

    /// True when the key is present (whatever its value).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The raw value of a key, without marking it as read or checking it.
    pub fn peek(&self, key: &str) -> Option<&toml::Value> {
        self.table.get(key)
    }

    /// An optional duration such as `"30s"` or `"5m"`.
    pub fn duration(&mut self, key: &str) -> Option<Duration> {
        let s: String = self.opt(key)?;
        match humantime::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "{s:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h 30m\""
                    ),
                );
                None
            }
        }
    }

    /// A required duration.
    pub fn req_duration(&mut self, key: &str) -> Option<Duration> {
        if !self.table.contains_key(key) {
            self.used.insert(key.to_string());
            self.problem(key, "is required");
            return None;
        }
        self.duration(key)
    }

    /// An optional string with placeholders.
    pub fn template(&mut self, key: &str) -> Option<Template> {
        let s: String = self.opt(key)?;
        self.parse_template(key, &s)
    }

    /// A required string with placeholders.
    pub fn req_template(&mut self, key: &str) -> Option<Template> {
        let s: String = self.req(key)?;
        self.parse_template(key, &s)
    }

    /// An optional array of strings with placeholders.
    pub fn templates(&mut self, key: &str) -> Option<Vec<Template>> {
        let v: Vec<String> = self.opt(key)?;
        let mut out = Vec::with_capacity(v.len());
        let mut ok = true;
        for (i, s) in v.iter().enumerate() {
            match Template::parse(s) {
                Ok(t) => out.push(t),
                Err(e) => {
                    ok = false;
                    self.problem(&format!("{key}[{i}]"), e.to_string());
                }
            }
        }
        ok.then_some(out)
    }

    /// An optional table of strings with placeholders (e.g. `env`).
    pub fn template_map(&mut self, key: &str) -> Option<BTreeMap<String, Template>> {
        let v: BTreeMap<String, String> = self.opt(key)?;
        let mut out = BTreeMap::new();
        for (k, s) in v {
            match Template::parse(&s) {
                Ok(t) => {
                    out.insert(k, t);
                }
                Err(e) => self.problem(&format!("{key}.{k}"), e.to_string()),
            }
        }
        Some(out)
    }

    fn parse_template(&mut self, key: &str, s: &str) -> Option<Template> {
        match Template::parse(s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    pub(super) fn table(&mut self, key: &str) -> Option<toml::Table> {
        self.used.insert(key.to_string());
        match self.table.get(key)? {
            toml::Value::Table(t) => Some(t.clone()),
            other => {
                let msg = format!("must be a table like [{key}], not a {}", other.type_str());
                self.problem(key, msg);
                None
            }
        }
    }

    /// Records an error against a key of this section.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let section = self.section.clone();
        self.push(
            Severity::Error,
            section,
            Some(key.to_string()),
            message.into(),
        );
    }

    /// Records a warning against a key of this section.
    pub fn warn(&mut self, key: &str, message: impl Into<String>) {
        let section = self.section.clone();
        self.push(
            Severity::Warning,
            section,
            Some(key.to_string()),
            message.into(),
        );
    }

    pub(super) fn problem_here(&mut self, key: Option<&str>, message: impl Into<String>) {
        let section = self.section.clone();
        self.push(
            Severity::Error,
            section,
            key.map(str::to_string),
            message.into(),
        );
    }

    pub(super) fn problem_in(
        &mut self,
        section: String,
        key: Option<&str>,
        message: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            section,
            key.map(str::to_string),
            message.into(),
        );
    }

    fn push(&mut self, severity: Severity, section: String, key: Option<String>, message: String) {
        self.problems.push(Problem {
            severity,
            file: self.path.to_path_buf(),
            section,
            key,
            message,
        });
    }

    /// Records every key that was present but never asked for.
    pub(super) fn finish(self) {
        for key in self.table.keys() {
            if !self.used.contains(key) {
                let where_ = if self.section.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in {}", self.section)
                };
                self.problems.push(Problem {
                    severity: Severity::Error,
                    file: self.path.to_path_buf(),
                    section: self.section.clone(),
                    key: Some(key.clone()),
                    message: format!("unknown key {where_}"),
                });
            }
        }
    }
}

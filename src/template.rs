//! Placeholders in step strings: `{instance_id}`, `{tag:Name}`, … and `{{`/`}}` for literal braces.
//!
//! A [`Template`] is parsed once, when the config is validated, so that an unknown placeholder is a
//! config error found by `lastcall check` and never a surprise during a termination.

use std::collections::BTreeMap;
use std::fmt;

/// Every placeholder name a step string may use (besides `tag:KEY`).
pub const PLACEHOLDERS: &[&str] = &[
    "instance_id",
    "hostname",
    "local_ipv4",
    "local_hostname",
    "region",
    "availability_zone",
    "asg_name",
    "hook_name",
    "transition",
    "metadata",
];

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
    Tag(String),
}

/// A string with placeholders, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Why a template string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}} (known: {known}, tag:KEY)", known = PLACEHOLDERS.join(", "))]
    Unknown(String),
    #[error("unclosed '{{' at byte {0} (write '{{{{' for a literal brace)")]
    Unclosed(usize),
    #[error("stray '}}' at byte {0} (write '}}}}' for a literal brace)")]
    Stray(usize),
    #[error("empty tag name in {{tag:}}")]
    EmptyTag,
}

/// The values placeholders are filled with when a step runs.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Values of the plain placeholders, by name.
    pub values: BTreeMap<&'static str, String>,
    /// Instance tags, by key.
    pub tags: BTreeMap<String, String>,
}

/// A placeholder had no value at run time (an unset metadata, a missing tag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("placeholder {{{0}}} has no value for this event")]
    Missing(String),
    #[error("instance tag {0:?} not found (are instance metadata tags enabled, or is the tag propagated from the group?)")]
    MissingTag(String),
}

impl Template {
    /// Parses `source`, refusing unknown placeholders.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let bytes = source.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    lit.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    lit.push('}');
                    i += 2;
                }
                b'{' => {
                    let end = source[i..].find('}').ok_or(TemplateError::Unclosed(i))? + i;
                    let name = &source[i + 1..end];
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    if let Some(key) = name.strip_prefix("tag:") {
                        if key.is_empty() {
                            return Err(TemplateError::EmptyTag);
                        }
                        parts.push(Part::Tag(key.to_string()));
                    } else if PLACEHOLDERS.contains(&name) {
                        parts.push(Part::Var(name.to_string()));
                    } else {
                        return Err(TemplateError::Unknown(name.to_string()));
                    }
                    i = end + 1;
                }
                b'}' => return Err(TemplateError::Stray(i)),
                _ => {
                    // Copy one UTF-8 character.
                    let ch = source[i..].chars().next().unwrap_or_default();
                    lit.push(ch);
                    i += ch.len_utf8().max(1);
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Self {
            source: source.to_string(),
            parts,
        })
    }

    /// Fills the placeholders.
    pub fn render(&self, ctx: &Context) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Var(name) => match ctx.values.get(name.as_str()) {
                    Some(v) => out.push_str(v),
                    None => return Err(RenderError::Missing(name.clone())),
                },
                Part::Tag(key) => match ctx.tags.get(key) {
                    Some(v) => out.push_str(v),
                    None => return Err(RenderError::MissingTag(key.clone())),
                },
            }
        }
        Ok(out)
    }

    /// The tag keys this template refers to.
    pub fn tag_keys(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Tag(k) => Some(k.as_str()),
            _ => None,
        })
    }

    /// The string as written in the config.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let mut c = Context::default();
        c.values.insert("instance_id", "i-0123456789abcdef0".into());
        c.values.insert("hostname", "web-1".into());
        c.tags.insert("Name".into(), "web".into());
        c
    }

    #[test]
    fn renders_placeholders_tags_and_escaped_braces() {
        let t = Template::parse(r#"{{"id":"{instance_id}","host":"{hostname}","n":"{tag:Name}"}}"#)
            .expect("parses");
        assert_eq!(
            t.render(&ctx()).expect("renders"),
            r#"{"id":"i-0123456789abcdef0","host":"web-1","n":"web"}"#
        );
        assert_eq!(t.tag_keys().collect::<Vec<_>>(), vec!["Name"]);
    }

    #[test]
    fn refuses_unknown_and_malformed_placeholders() {
        assert_eq!(
            Template::parse("x {instanceid}"),
            Err(TemplateError::Unknown("instanceid".into()))
        );
        assert_eq!(
            Template::parse("x {hostname"),
            Err(TemplateError::Unclosed(2))
        );
        assert_eq!(Template::parse("x } y"), Err(TemplateError::Stray(2)));
        assert_eq!(Template::parse("{tag:}"), Err(TemplateError::EmptyTag));
    }

    #[test]
    fn missing_values_are_errors_at_render_time() {
        let t = Template::parse("{metadata}").expect("parses");
        assert_eq!(
            t.render(&ctx()),
            Err(RenderError::Missing("metadata".into()))
        );
        let t = Template::parse("{tag:Env}").expect("parses");
        assert_eq!(t.render(&ctx()), Err(RenderError::MissingTag("Env".into())));
    }

    #[test]
    fn keeps_non_ascii_text() {
        let t = Template::parse("ホスト {hostname} ✓").expect("parses");
        assert_eq!(t.render(&ctx()).expect("renders"), "ホスト web-1 ✓");
    }
}

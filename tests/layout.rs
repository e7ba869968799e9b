//! The source layout stays as the crate doc describes it: no file imports another that imports
//! it back (directly or round a longer loop; a child using its own parent does not count), and no
//! file holds more than 600 lines of non-test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most non-test lines a file under src/ may hold.
const MAX_LINES: usize = 600;

type Module = Vec<String>;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`.
fn module(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Module = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code before the unit tests, without comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths like `crate::a::b`, `super::c` and (to a child module `d`) `d::e` in `code`, with
/// `{…}` groups expanded one level.
fn paths(code: &str, me: &Module, children: &[String]) -> Vec<Module> {
    let mut out = Vec::new();
    let mut parent = me.clone();
    parent.pop();
    let mut prefixes = vec![
        ("crate::".to_string(), Vec::new()),
        ("super::".to_string(), parent),
    ];
    for c in children {
        let mut child = me.clone();
        child.push(c.clone());
        prefixes.push((format!("{c}::"), child));
    }
    for (prefix, base) in prefixes {
        for (i, _) in code.match_indices(prefix.as_str()) {
            // `x::c::` is not the child `c`.
            let before = code[..i].chars().next_back();
            if before.is_some_and(|b| b.is_alphanumeric() || b == '_' || b == ':') {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut parts = base.clone();
            parts.extend(
                head.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            let after = &rest[head.len()..];
            if let Some(group) = after.strip_prefix('{') {
                for item in group.split('}').next().unwrap_or_default().split(',') {
                    let mut p = parts.clone();
                    p.extend(
                        item.trim()
                            .split("::")
                            .filter(|s| !s.is_empty())
                            .map(str::to_string),
                    );
                    out.push(p);
                }
            }
            out.push(parts);
        }
    }
    out
}

#[test]
fn no_import_cycles_and_no_file_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mods: BTreeMap<Module, PathBuf> =
        files.iter().map(|f| (module(&src, f), f.clone())).collect();
    let resolve = |p: &Module| -> Option<Module> {
        (1..=p.len())
            .rev()
            .map(|i| p[..i].to_vec())
            .find(|m| mods.contains_key(m))
    };
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut too_long = Vec::new();
    for (m, f) in &mods {
        let text = std::fs::read_to_string(f).expect("read");
        let code = code(&text);
        let lines = code.lines().count();
        if lines > MAX_LINES {
            too_long.push(format!("{} ({lines} lines)", f.display()));
        }
        let children: Vec<String> = mods
            .keys()
            .filter(|c| c.len() == m.len() + 1 && c.starts_with(m))
            .filter_map(|c| c.last().cloned())
            .collect();
        let deps = paths(&code, m, &children)
            .iter()
            .filter_map(&resolve)
            // A module using itself or one of its ancestors does not count.
            .filter(|d| d != m && !m.starts_with(d))
            .collect();
        edges.insert(m.clone(), deps);
    }
    assert!(
        too_long.is_empty(),
        "files over {MAX_LINES} lines of non-test code: {too_long:?}"
    );
    // A cycle exists when some module reaches itself.
    let mut cycles = Vec::new();
    for start in edges.keys() {
        let mut stack: Vec<Vec<Module>> = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().expect("non-empty");
            for d in edges.get(last).into_iter().flatten() {
                if d == start {
                    cycles.push(
                        path.iter()
                            .map(|m| m.join("::"))
                            .collect::<Vec<_>>()
                            .join(" -> "),
                    );
                } else if seen.insert(d.clone()) {
                    let mut p = path.clone();
                    p.push(d.clone());
                    stack.push(p);
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles in src/: {cycles:#?}");
    // The scan sees the dependencies it must (else it would pass on anything).
    let dep = |a: &[&str], b: &[&str]| {
        let a: Module = a.iter().map(|s| s.to_string()).collect();
        let b: Module = b.iter().map(|s| s.to_string()).collect();
        edges.get(&a).is_some_and(|d| d.contains(&b))
    };
    assert!(dep(&["steps", "zabbix"], &["config", "fields"]));
    assert!(dep(&["config", "steps"], &["steps"]));
    assert!(dep(&["handler", "heartbeat"], &["handler", "action"]));
    assert!(dep(&["config"], &["config", "fields"]));
}

//! Which files lastcall trusts: a file that decides what runs as root (the config, a secret)
//! must not be changeable by anyone but root.

use std::path::Path;

/// Why a file that decides what runs as root must not be trusted, like sshd's StrictModes and
/// sudo: writable by group or others (or in such a directory without the sticky bit), or, when
/// running as root, owned by another user.
pub fn unsafe_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    let root = nix::unistd::geteuid().is_root();
    if root && meta.uid() != 0 {
        return Some(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    let dir = std::fs::canonicalize(path).ok()?.parent()?.to_path_buf();
    let d = std::fs::metadata(&dir).ok()?;
    if d.mode() & 0o022 != 0 && d.mode() & 0o1000 == 0 {
        return Some(format!(
            "its directory {} is writable by group or others (mode {:o}), so the file can be replaced",
            dir.display(),
            d.mode() & 0o777
        ));
    }
    if root && d.uid() != 0 {
        return Some(format!(
            "its directory {} is owned by uid {}, not root",
            dir.display(),
            d.uid()
        ));
    }
    None
}

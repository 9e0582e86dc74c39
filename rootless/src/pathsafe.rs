//! Resolving container paths inside a root directory without ever leaving it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, RootlessError};

/// What to do with a `..` (in a path or a symlink target) that would climb above the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotDot {
    /// Stay at the root, as `chroot` would.
    Clamp,
    /// Fail: the path is hostile.
    Reject,
}

const MAX_LINKS: usize = 40;

/// Resolve `path` (absolute or relative to `/` of the container) inside `root`. Symlinks are
/// followed as if `root` were `/` (an absolute target restarts at `root`), the final component
/// only when `follow_final`. Components that do not exist are appended literally. The result
/// always lies under `root`.
pub fn resolve_in_root(root: &Path, path: &str, follow_final: bool, dd: DotDot) -> Result<PathBuf> {
    let mut queue: VecDeque<OsString> = split(Path::new(path));
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0usize;
    let mut missing = false;
    while let Some(comp) = queue.pop_front() {
        if comp == ".." {
            if resolved.pop().is_none() && dd == DotDot::Reject {
                return Err(RootlessError::Escape {
                    path: path.to_string(),
                    reason: "`..` above the root".into(),
                });
            }
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&comp);
        let is_last = queue.is_empty();
        if !missing && (follow_final || !is_last) {
            match std::fs::symlink_metadata(&candidate) {
                Ok(md) if md.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(RootlessError::Escape {
                            path: path.to_string(),
                            reason: "too many levels of symbolic links".into(),
                        });
                    }
                    let target = std::fs::read_link(&candidate)
                        .map_err(|e| RootlessError::io(&candidate, e))?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for c in split(&target).into_iter().rev() {
                        queue.push_front(c);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing = true,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => missing = true,
                Err(e) => return Err(RootlessError::io(&candidate, e)),
            }
        }
        resolved.push(comp);
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(out)
}

/// Split into normal components and `..`; `/`, `.` and empty components vanish.
fn split(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Lexically clean a path from an archive: strips `./`; a leading `/` is an error, except for
/// an entry that is only the root (`/`, which umoci writes for the root directory); any `..`
/// is an error. Returns the relative components joined with `/` (empty for the root itself).
pub fn clean_archive_path(p: &Path) -> std::result::Result<PathBuf, String> {
    let bytes = p.as_os_str().as_bytes();
    if !bytes.is_empty() && bytes.iter().all(|b| *b == b'/') {
        return Ok(PathBuf::new());
    }
    if bytes.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in path".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(out)
}

/// The container path `p` relative to `/` (for display and joins).
pub fn rel(p: &str) -> &str {
    p.trim_start_matches('/')
}

/// True when `name` is one component (no `/`, not `.`/`..`).
pub fn is_plain_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("/usr/lib", r.join("lib")).unwrap();
        symlink("../../../../etc", r.join("up")).unwrap();
        symlink("/", r.join("rootlink")).unwrap();
        let got = resolve_in_root(r, "/lib/x", true, DotDot::Clamp).unwrap();
        assert_eq!(got, r.join("usr/lib/x"));
        let got = resolve_in_root(r, "up/passwd", true, DotDot::Clamp).unwrap();
        assert_eq!(got, r.join("etc/passwd"));
        assert!(resolve_in_root(r, "up/passwd", true, DotDot::Reject).is_err());
        let got = resolve_in_root(r, "../../x", true, DotDot::Clamp).unwrap();
        assert_eq!(got, r.join("x"));
        let got = resolve_in_root(r, "rootlink/../../x", true, DotDot::Clamp).unwrap();
        assert_eq!(got, r.join("x"));
        // final component not followed
        let got = resolve_in_root(r, "/lib", false, DotDot::Reject).unwrap();
        assert_eq!(got, r.join("lib"));
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        assert!(resolve_in_root(d.path(), "a/x", true, DotDot::Clamp).is_err());
    }

    #[test]
    fn archive_paths() {
        assert_eq!(
            clean_archive_path(Path::new("./a/b/")).unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(clean_archive_path(Path::new("./")).unwrap(), PathBuf::new());
        assert_eq!(clean_archive_path(Path::new("/")).unwrap(), PathBuf::new());
        assert!(clean_archive_path(Path::new("/etc")).is_err());
        assert!(clean_archive_path(Path::new("/etc/passwd")).is_err());
        assert!(clean_archive_path(Path::new("a/../../b")).is_err());
    }
}

//! Lexical checks of paths from archives and requests. Paths inside a root are resolved by
//! descriptors in [`crate::fsroot`].

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

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

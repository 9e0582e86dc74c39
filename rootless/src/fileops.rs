//! File actions on an overlay (BuildKit FileOp semantics) and tree removal.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{Result, RootlessError};
use crate::overlay::Overlay;
use crate::pathsafe::{DotDot, resolve_in_root};
use crate::proto::{CopySource, FileAction};
use crate::unpack::remove_any;

/// Delete a tree (as uid 0 of the namespace, so subordinate-owned files go too).
pub fn remove_all(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RootlessError::io(path, e)),
        Ok(_) => {}
    }
    make_writable(path);
    crate::unpack::remove_any(path).map_err(|e| RootlessError::io(path, e))
}

/// Directories without write/exec bits block removal even for namespace root on some trees
/// (e.g. files of unmapped ids are not ours): add u+rwx to dirs first.
fn make_writable(p: &Path) {
    if let Ok(md) = std::fs::symlink_metadata(p)
        && md.is_dir()
    {
        let mode = md.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Mount the overlay and perform `actions` in order.
pub fn run_actions(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    actions: &[FileAction],
) -> Result<()> {
    let ov = Overlay::mount(lowers, Some((upper, work)))?;
    for (i, a) in actions.iter().enumerate() {
        run_one(&ov.merged, a)
            .map_err(|e| RootlessError::Invalid(format!("file action {i}: {e}")))?;
    }
    Ok(())
}

fn chown(p: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((u, g)) = owner {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            p,
            Some(Uid::from_raw(u)),
            Some(Gid::from_raw(g)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| RootlessError::sys(format!("chown {u}:{g} {}", p.display()), e))?;
    }
    Ok(())
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| RootlessError::io(p, e))
}

/// mkdir -p inside `root` (container path), chowning what it creates.
fn mkdir_all(root: &Path, path: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    let host = resolve_in_root(root, path, true, DotDot::Clamp)?;
    let rel = host
        .strip_prefix(root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(RootlessError::Invalid(format!(
                    "{}: not a directory",
                    cur.display()
                )));
            }
            Err(_) => {
                std::fs::create_dir(&cur).map_err(|e| RootlessError::io(&cur, e))?;
                chmod(&cur, mode)?;
                chown(&cur, owner)?;
            }
        }
    }
    Ok(host)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Shell-style match of one path component (`*`, `?`, `[...]`).
pub fn glob_match(pat: &[u8], name: &[u8]) -> bool {
    match (pat.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pat[1..], name) || (!name.is_empty() && glob_match(pat, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pat[1..], &name[1..]),
        (Some(b'['), Some(c)) => match pat.iter().position(|b| *b == b']') {
            Some(end) if end > 1 => {
                let set = &pat[1..end];
                let (neg, set) = match set.first() {
                    Some(b'!') | Some(b'^') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == b'-' {
                        hit |= set[i] <= *c && *c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == *c;
                        i += 1;
                    }
                }
                hit != neg && glob_match(&pat[end + 1..], &name[1..])
            }
            _ => pat[0] == *c && glob_match(&pat[1..], &name[1..]),
        },
        (Some(p), Some(c)) => p == c && glob_match(&pat[1..], &name[1..]),
        _ => false,
    }
}

/// Host paths of the entries `path` names in `root`: one, or (wildcards in the last component)
/// all matches, sorted.
fn expand(root: &Path, path: &str, wildcard: bool, follow: bool) -> Result<Vec<PathBuf>> {
    let (dir, last) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((d, l)) => (if d.is_empty() { "/" } else { d }, l),
        None => ("/", path.trim_end_matches('/')),
    };
    if wildcard && has_glob(last) {
        let d = resolve_in_root(root, dir, true, DotDot::Clamp)?;
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if glob_match(last.as_bytes(), e.file_name().as_bytes()) {
                    let cpath = format!(
                        "{}/{}",
                        dir.trim_end_matches('/'),
                        e.file_name().to_string_lossy()
                    );
                    v.push(resolve_in_root(root, &cpath, follow, DotDot::Clamp)?);
                }
            }
        }
        v.sort();
        Ok(v)
    } else {
        let p = resolve_in_root(root, path, follow, DotDot::Clamp)?;
        if std::fs::symlink_metadata(&p).is_ok() {
            Ok(vec![p])
        } else {
            Ok(vec![])
        }
    }
}

fn run_one(root: &Path, a: &FileAction) -> Result<()> {
    match a {
        FileAction::Mkdir {
            path,
            mode,
            make_parents,
            owner,
        } => {
            if *make_parents {
                let p = mkdir_all(root, path, *mode, *owner)?;
                chmod(&p, *mode)?;
                chown(&p, *owner)?;
            } else {
                let p = resolve_in_root(root, path, true, DotDot::Clamp)?;
                std::fs::create_dir(&p).map_err(|e| RootlessError::io(path, e))?;
                chmod(&p, *mode)?;
                chown(&p, *owner)?;
            }
        }
        FileAction::Mkfile {
            path,
            mode,
            data,
            owner,
        } => {
            let p = resolve_in_root(root, path, true, DotDot::Clamp)?;
            std::fs::write(&p, data).map_err(|e| RootlessError::io(path, e))?;
            chmod(&p, *mode)?;
            chown(&p, *owner)?;
        }
        FileAction::Rm {
            path,
            allow_not_found,
            allow_wildcard,
        } => {
            let v = expand(root, path, *allow_wildcard, false)?;
            if v.is_empty() && !allow_not_found {
                return Err(RootlessError::Invalid(format!("rm {path}: not found")));
            }
            for p in v {
                if p == root {
                    return Err(RootlessError::Invalid(format!(
                        "rm {path}: refusing to remove /"
                    )));
                }
                remove_any(&p).map_err(|e| RootlessError::io(&p, e))?;
            }
        }
        FileAction::Copy {
            src_root,
            src,
            dest,
            owner,
            mode,
            follow_symlinks,
            dir_copy_contents,
            create_dest_path,
            allow_wildcard,
            allow_empty_wildcard,
        } => {
            let _view;
            let sroot: PathBuf = match src_root {
                CopySource::Dir(d) => d.clone(),
                CopySource::Lowers(l) if l.len() == 1 => l[0].clone(),
                CopySource::Lowers(l) => {
                    let ov = Overlay::mount(l, None)?;
                    let m = ov.merged.clone();
                    _view = ov;
                    m
                }
            };
            let sroot = std::fs::canonicalize(&sroot).map_err(|e| RootlessError::io(&sroot, e))?;
            let srcs = expand(&sroot, src, *allow_wildcard, *follow_symlinks)?;
            if srcs.is_empty() {
                if *allow_wildcard && has_glob(src) && *allow_empty_wildcard {
                    return Ok(());
                }
                return Err(RootlessError::Invalid(format!(
                    "copy: source {src} not found"
                )));
            }
            let dest_host = resolve_in_root(root, dest, true, DotDot::Clamp)?;
            let dest_is_dir = dest.ends_with('/') || srcs.len() > 1 || dest_host.is_dir();
            let opts = CopyOpts {
                owner: *owner,
                mode: *mode,
            };
            for s in srcs {
                let md = std::fs::symlink_metadata(&s).map_err(|e| RootlessError::io(&s, e))?;
                let base = s
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = if md.is_dir() && *dir_copy_contents {
                    dest.to_string()
                } else if dest_is_dir {
                    format!("{}/{base}", dest.trim_end_matches('/'))
                } else {
                    dest.to_string()
                };
                let parent = match target.trim_end_matches('/').rsplit_once('/') {
                    Some((p, _)) if !p.is_empty() => p.to_string(),
                    _ => "/".to_string(),
                };
                if *create_dest_path || dest_is_dir {
                    mkdir_all(root, &parent, 0o755, None)?;
                }
                if md.is_dir() && *dir_copy_contents {
                    mkdir_all(root, &target, 0o755, *owner)?;
                    copy_children(&s, root, &target, &opts)?;
                } else {
                    copy_entry(&s, root, &target, &opts)?;
                }
            }
        }
    }
    Ok(())
}

struct CopyOpts {
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
}

fn copy_children(src: &Path, root: &Path, dest: &str, o: &CopyOpts) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| RootlessError::io(src, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for n in names {
        let t = format!("{}/{}", dest.trim_end_matches('/'), n.to_string_lossy());
        copy_entry(&src.join(&n), root, &t, o)?;
    }
    Ok(())
}

/// Copy one entry (recursively for dirs) from host path `src` to container path `dest`.
fn copy_entry(src: &Path, root: &Path, dest: &str, o: &CopyOpts) -> Result<()> {
    let md = std::fs::symlink_metadata(src).map_err(|e| RootlessError::io(src, e))?;
    let d = resolve_in_root(root, dest, false, DotDot::Clamp)?;
    let existing = std::fs::symlink_metadata(&d).ok();
    let owner = o.owner.or(Some((md.uid(), md.gid())));
    if md.is_dir() {
        match existing {
            Some(e) if e.is_dir() => {}
            Some(_) => {
                remove_any(&d).map_err(|e| RootlessError::io(&d, e))?;
                std::fs::create_dir(&d).map_err(|e| RootlessError::io(&d, e))?;
            }
            None => std::fs::create_dir(&d).map_err(|e| RootlessError::io(&d, e))?,
        }
        copy_children(src, root, dest, o)?;
        chmod(&d, o.mode.unwrap_or(md.mode()))?;
        chown(&d, owner)?;
    } else {
        if existing.as_ref().is_some_and(|e| e.is_dir()) {
            return Err(RootlessError::Invalid(format!(
                "copy: cannot replace directory {dest} with a file"
            )));
        }
        if existing.is_some() {
            remove_any(&d).map_err(|e| RootlessError::io(&d, e))?;
        }
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(src).map_err(|e| RootlessError::io(src, e))?;
            std::os::unix::fs::symlink(&t, &d).map_err(|e| RootlessError::io(&d, e))?;
            chown(&d, owner)?;
            return Ok(());
        } else if md.is_file() {
            std::fs::copy(src, &d).map_err(|e| RootlessError::io(&d, e))?;
        } else {
            return Err(RootlessError::Invalid(format!(
                "copy: {} is not a file, dir or symlink",
                src.display()
            )));
        }
        chown(&d, owner)?;
        chmod(&d, o.mode.unwrap_or(md.mode()))?;
    }
    let ts = TimeSpec::new(md.mtime(), md.mtime_nsec());
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &d,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.txt", b"a.txt"));
        assert!(!glob_match(b"*.txt", b"a.txt2"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[!a-c]x", b"bx"));
        assert!(glob_match(b"*", b""));
    }
}

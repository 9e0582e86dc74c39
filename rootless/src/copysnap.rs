//! The copy fallback for kernels that do not mount overlayfs in a user namespace (before
//! 5.11, or where it is disabled): a layer stack is materialized by copying its dirs into one
//! tree, a step works on that tree, and what changed is written back as an overlay-style upper
//! dir — changed entries, whiteouts, opaque dirs — so the rest of envkit (layer diffs, lazy
//! Merge/Diff, exports) sees the same format either way.
//!
//! Whiteouts are char devices 0/0 where the kernel lets an unprivileged process make one
//! (5.8+), else empty files with the `user.overlay.whiteout` xattr; both are read back.
//! Files are compared by type, mode, owner, size, mtime (to the nanosecond: copies keep it),
//! link target and xattrs, like containerd's tree differ. Directory times are not compared
//! (mount points made for a step touch them); a directory is written when its own metadata or
//! something below it changed.

use std::collections::BTreeSet;
use std::ffi::{CStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::difftar::{UpperKind, classify};
use crate::error::{Result, RootlessError};
use crate::unpack::remove_any;

const OVL_PREFIX: &str = "user.overlay.";

/// Which snapshotter the helper uses: 0 auto (overlay, copies where it cannot mount),
/// 1 copy, 2 overlay only.
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Picks the snapshotter from the helper's arguments (`--snapshotter=copy|overlay|auto`).
pub(crate) fn set_mode_from_args() {
    for a in std::env::args() {
        let m = match a.as_str() {
            "--snapshotter=copy" => 1,
            "--snapshotter=overlay" => 2,
            "--snapshotter=auto" => 0,
            _ => continue,
        };
        MODE.store(m, std::sync::atomic::Ordering::Relaxed);
    }
}

fn mode() -> u8 {
    match std::env::var("ENVKIT_SNAPSHOTTER").as_deref() {
        Ok("copy") => 1,
        Ok("overlay") => 2,
        _ => MODE.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Whether the copy snapshotter is asked for even where overlay works.
pub(crate) fn forced() -> bool {
    mode() == 1
}

/// Whether overlay failing to mount may fall back to copies.
pub(crate) fn fallback_allowed() -> bool {
    mode() != 2
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> RootlessError + '_ {
    move |e| RootlessError::io(p, e)
}

/// The xattrs of a path that belong in a layer (not overlay's own).
fn xattrs(p: &Path) -> Vec<(OsString, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(names) = xattr::list(p) {
        for n in names {
            if n.as_bytes().starts_with(OVL_PREFIX.as_bytes()) {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(p, &n) {
                out.push((n, v));
            }
        }
    }
    out.sort();
    out
}

/// Owner, mode (not for symlinks), xattrs (best effort) and times of `md` onto `dst`.
fn copy_meta(src: &Path, md: &std::fs::Metadata, dst: &Path) -> Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dst,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| RootlessError::sys(format!("chown {}", dst.display()), e))?;
    if !md.file_type().is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(io(dst))?;
        for (k, v) in xattrs(src) {
            let _ = xattr::set(dst, &k, &v);
        }
    }
    set_times(md, dst);
    Ok(())
}

fn set_times(md: &std::fs::Metadata, dst: &Path) {
    let a = TimeSpec::new(md.atime(), md.atime_nsec());
    let m = TimeSpec::new(md.mtime(), md.mtime_nsec());
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &a,
        &m,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// Copies one non-directory entry (a file, symlink or fifo) with its metadata.
fn copy_leaf(src: &Path, md: &std::fs::Metadata, dst: &Path) -> Result<()> {
    let ft = md.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(src).map_err(io(src))?;
        std::os::unix::fs::symlink(&t, dst).map_err(io(dst))?;
    } else if ft.is_file() {
        std::fs::copy(src, dst).map_err(io(dst))?;
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
        nix::unistd::mkfifo(dst, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| RootlessError::sys(format!("mkfifo {}", dst.display()), e))?;
    } else {
        // Sockets and device nodes cannot be made here (nor are they in images).
        return Ok(());
    }
    copy_meta(src, md, dst)
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io(dir))?;
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(v)
}

/// Builds the merged tree of `lowers` (top first) in `dest` (an existing empty dir).
pub(crate) fn materialize(lowers: &[PathBuf], dest: &Path) -> Result<()> {
    for layer in lowers.iter().rev() {
        apply_layer(layer, dest)?;
        if let Ok(md) = std::fs::symlink_metadata(layer) {
            copy_meta(layer, &md, dest)?;
        }
    }
    Ok(())
}

/// Applies one upper-format layer dir onto `dest`.
fn apply_layer(src: &Path, dest: &Path) -> Result<()> {
    for name in sorted_children(src)? {
        let s = src.join(&name);
        let d = dest.join(&name);
        let md = std::fs::symlink_metadata(&s).map_err(io(&s))?;
        match classify(&s, &md) {
            UpperKind::Whiteout => {
                remove_any(&d).map_err(io(&d))?;
            }
            UpperKind::Entry { opaque } => {
                let existing = std::fs::symlink_metadata(&d).ok();
                if md.is_dir() {
                    match existing {
                        Some(e) if e.is_dir() => {
                            if opaque {
                                for c in sorted_children(&d)? {
                                    remove_any(&d.join(c)).map_err(io(&d))?;
                                }
                            }
                        }
                        Some(_) => {
                            remove_any(&d).map_err(io(&d))?;
                            std::fs::create_dir(&d).map_err(io(&d))?;
                        }
                        None => std::fs::create_dir(&d).map_err(io(&d))?,
                    }
                    apply_layer(&s, &d)?;
                    copy_meta(&s, &md, &d)?;
                } else {
                    if existing.is_some() {
                        remove_any(&d).map_err(io(&d))?;
                    }
                    // Hard links are copied apart: overlayfs breaks a link when one of its
                    // names is written (copy-up), and the layers must come out the same.
                    copy_leaf(&s, &md, &d)?;
                }
            }
        }
    }
    Ok(())
}

/// What one layer says about a path.
enum InLayer {
    Found(PathBuf, std::fs::Metadata),
    /// Deleted here, or below a non-directory: nothing beneath shows through.
    Hidden,
    /// Not in this layer; `opaque`: an ancestor here is opaque, so neither in the ones below.
    Absent {
        opaque: bool,
    },
}

fn in_layer(layer: &Path, rel: &Path) -> InLayer {
    let comps: Vec<_> = rel.components().collect();
    let mut cur = layer.to_path_buf();
    let mut opaque = false;
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let Ok(md) = std::fs::symlink_metadata(&cur) else {
            return InLayer::Absent { opaque };
        };
        match classify(&cur, &md) {
            UpperKind::Whiteout => return InLayer::Hidden,
            UpperKind::Entry { .. } if i + 1 == comps.len() => return InLayer::Found(cur, md),
            UpperKind::Entry { .. } if !md.is_dir() => return InLayer::Hidden,
            UpperKind::Entry { opaque: o } => opaque |= o,
        }
    }
    InLayer::Absent { opaque }
}

/// What the lower stack (top first) shows at `rel`: the entry's host path and metadata, or
/// None when it is absent, deleted, or hidden by an opaque dir or a non-dir above it.
fn lookup(lowers: &[PathBuf], rel: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
    for layer in lowers {
        match in_layer(layer, rel) {
            InLayer::Found(p, md) => return Some((p, md)),
            InLayer::Hidden => return None,
            InLayer::Absent { opaque: true } => return None,
            InLayer::Absent { opaque: false } => {}
        }
    }
    None
}

/// The names the lower stack shows in the directory `rel`.
fn lower_children(lowers: &[PathBuf], rel: &Path) -> BTreeSet<OsString> {
    let mut candidates = BTreeSet::new();
    for layer in lowers {
        if let Ok(rd) = std::fs::read_dir(layer.join(rel)) {
            candidates.extend(rd.flatten().map(|e| e.file_name()));
        }
    }
    candidates
        .into_iter()
        .filter(|n| lookup(lowers, &rel.join(n)).is_some())
        .collect()
}

/// Whether an entry differs from what the lowers had (directories: not by their times).
fn changed(before: &Path, b: &std::fs::Metadata, after: &Path, a: &std::fs::Metadata) -> bool {
    if b.file_type() != a.file_type()
        || b.mode() != a.mode()
        || b.uid() != a.uid()
        || b.gid() != a.gid()
    {
        return true;
    }
    if a.is_dir() {
        return xattrs(before) != xattrs(after);
    }
    if b.size() != a.size() || b.mtime() != a.mtime() || b.mtime_nsec() != a.mtime_nsec() {
        return true;
    }
    if a.file_type().is_symlink() {
        return std::fs::read_link(before).ok() != std::fs::read_link(after).ok();
    }
    xattrs(before) != xattrs(after)
}

/// Writes into `upper` (empty) what the step changed in `merged` relative to `lowers`
/// (top first). Changed entries are moved out of `merged`, which is thrown away afterwards.
pub(crate) fn diff_into(lowers: &[PathBuf], merged: &Path, upper: &Path) -> Result<()> {
    diff_dir(lowers, merged, upper, Path::new(""))?;
    if let Ok(md) = std::fs::symlink_metadata(merged) {
        copy_meta(merged, &md, upper)?;
    }
    Ok(())
}

/// Makes `upper/rel`'s parent dirs exist, with the merged tree's metadata.
fn ensure_parents(merged: &Path, upper: &Path, rel: &Path) -> Result<()> {
    let mut cur_rel = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur_rel.push(c);
        let u = upper.join(&cur_rel);
        if std::fs::symlink_metadata(&u).is_err() {
            std::fs::create_dir(&u).map_err(io(&u))?;
            let m = merged.join(&cur_rel);
            if let Ok(md) = std::fs::symlink_metadata(&m) {
                copy_meta(&m, &md, &u)?;
            }
        }
    }
    Ok(())
}

/// A whiteout at `upper/rel` (see [`make_whiteout`]).
fn whiteout(upper: &Path, rel: &Path, merged: &Path) -> Result<()> {
    ensure_parents(merged, upper, rel)?;
    let p = upper.join(rel);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(RootlessError::Invalid(format!(
            "whiteout {}: no parent",
            p.display()
        )));
    };
    let dir = nix::fcntl::open(
        parent,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RootlessError::sys(format!("opening {}", parent.display()), e))?;
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| RootlessError::Invalid(format!("bad file name {name:?}")))?;
    make_whiteout(dir.as_fd(), &name).map_err(io(&p))
}

/// Makes the whiteout `name` (which must not exist; never followed) in the directory `dir`:
/// a 0/0 char device if this kernel lets us make one, else an empty file marked with
/// `user.overlay.whiteout`. The format of every upper dir envkit writes (the copy
/// snapshotter's, and a layer unpacked as an upper dir).
pub(crate) fn make_whiteout(dir: BorrowedFd, name: &CStr) -> std::io::Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    if nix::sys::stat::mknodat(dir, name, SFlag::S_IFCHR, Mode::empty(), 0).is_ok() {
        return Ok(());
    }
    let fd = nix::fcntl::openat(
        dir,
        name,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    use xattr::FileExt;
    std::fs::File::from(fd).set_xattr("user.overlay.whiteout", b"y")
}

/// Moves `merged/rel` (a whole subtree) into the upper dir.
fn take(merged: &Path, upper: &Path, rel: &Path) -> Result<()> {
    ensure_parents(merged, upper, rel)?;
    let (from, to) = (merged.join(rel), upper.join(rel));
    std::fs::rename(&from, &to).map_err(io(&to))
}

/// Diffs the directory `rel` (present in `merged` as a dir that the lowers also have as a
/// dir, or the root); returns whether anything under it went into the upper dir.
fn diff_dir(lowers: &[PathBuf], merged: &Path, upper: &Path, rel: &Path) -> Result<bool> {
    let mut wrote = false;
    let now: BTreeSet<OsString> = sorted_children(&merged.join(rel))?.into_iter().collect();
    for name in &now {
        let r = rel.join(name);
        let a_path = merged.join(&r);
        let a = std::fs::symlink_metadata(&a_path).map_err(io(&a_path))?;
        match lookup(lowers, &r) {
            None => {
                take(merged, upper, &r)?;
                wrote = true;
            }
            Some((b_path, b)) if b.is_dir() && a.is_dir() => {
                let below = diff_dir(lowers, merged, upper, &r)?;
                let meta = changed(&b_path, &b, &a_path, &a);
                if meta || below {
                    let u = upper.join(&r);
                    if std::fs::symlink_metadata(&u).is_err() {
                        ensure_parents(merged, upper, &r)?;
                        std::fs::create_dir(&u).map_err(io(&u))?;
                    }
                    copy_meta(&a_path, &a, &u)?;
                    wrote = true;
                }
            }
            Some((b_path, b)) => {
                if b.is_dir() != a.is_dir() || changed(&b_path, &b, &a_path, &a) {
                    // A non-dir over a lower dir hides all of it; a new dir over a lower
                    // non-dir has nothing below it to hide.
                    take(merged, upper, &r)?;
                    wrote = true;
                }
            }
        }
    }
    for gone in lower_children(lowers, rel).difference(&now) {
        whiteout(upper, &rel.join(gone), merged)?;
        wrote = true;
    }
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, data: &str) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(p, data).unwrap();
    }

    fn mark_whiteout(p: &Path) {
        std::fs::write(p, b"").unwrap();
        xattr::set(p, "user.overlay.whiteout", b"y").unwrap();
    }

    fn tree(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in walkdir(root) {
            let rel = e.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&e).unwrap();
            let what = match classify(&e, &md) {
                UpperKind::Whiteout => "whiteout".to_string(),
                UpperKind::Entry { opaque: true } => "opaque dir".to_string(),
                UpperKind::Entry { .. } if md.is_dir() => "dir".to_string(),
                UpperKind::Entry { .. } => std::fs::read_to_string(&e).unwrap_or_default(),
            };
            out.push((rel, what));
        }
        out.sort();
        out
    }

    fn walkdir(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn materializes_stacks_and_diffs_back_to_an_upper_dir() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
        write(&l1.join("etc/a"), "a1");
        write(&l1.join("etc/b"), "b1");
        write(&l1.join("old/x"), "x");
        write(&l1.join("keep/k"), "k");
        write(&l2.join("etc/a"), "a2");
        std::fs::create_dir_all(&l2).unwrap();
        mark_whiteout(&l2.join("old"));
        std::fs::create_dir_all(l2.join("keep")).unwrap();
        xattr::set(l2.join("keep"), "user.overlay.opaque", b"y").unwrap();
        write(&l2.join("keep/new"), "n");
        let lowers = vec![l2.clone(), l1.clone()];
        let merged = t.path().join("merged");
        std::fs::create_dir(&merged).unwrap();
        materialize(&lowers, &merged).unwrap();
        assert_eq!(
            tree(&merged),
            vec![
                ("etc".into(), "dir".into()),
                ("etc/a".into(), "a2".into()),
                ("etc/b".into(), "b1".into()),
                ("keep".into(), "dir".into()),
                ("keep/new".into(), "n".into()),
            ]
        );
        // A step: change a, delete b, add c, replace keep by a file.
        std::fs::write(merged.join("etc/a"), "a3").unwrap();
        std::fs::remove_file(merged.join("etc/b")).unwrap();
        std::fs::write(merged.join("etc/c"), "c").unwrap();
        std::fs::remove_dir_all(merged.join("keep")).unwrap();
        std::fs::write(merged.join("keep"), "now a file").unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        diff_into(&lowers, &merged, &upper).unwrap();
        assert_eq!(
            tree(&upper),
            vec![
                ("etc".into(), "dir".into()),
                ("etc/a".into(), "a3".into()),
                ("etc/b".into(), "whiteout".into()),
                ("etc/c".into(), "c".into()),
                ("keep".into(), "now a file".into()),
            ]
        );
        // Applying the upper on the lowers gives the step's tree back.
        let again = t.path().join("again");
        std::fs::create_dir(&again).unwrap();
        materialize(&[upper.clone(), l2, l1], &again).unwrap();
        assert_eq!(
            tree(&again),
            vec![
                ("etc".into(), "dir".into()),
                ("etc/a".into(), "a3".into()),
                ("etc/c".into(), "c".into()),
                ("keep".into(), "now a file".into()),
            ]
        );
    }

    #[test]
    fn an_unchanged_tree_diffs_to_nothing() {
        let t = tempfile::tempdir().unwrap();
        let l1 = t.path().join("l1");
        write(&l1.join("usr/bin/tool"), "bin");
        std::os::unix::fs::symlink("tool", l1.join("usr/bin/link")).unwrap();
        let merged = t.path().join("m");
        std::fs::create_dir(&merged).unwrap();
        materialize(std::slice::from_ref(&l1), &merged).unwrap();
        // A mount point made and removed again touches only a dir's times.
        std::fs::create_dir(merged.join("usr/mnt")).unwrap();
        std::fs::remove_dir(merged.join("usr/mnt")).unwrap();
        let upper = t.path().join("u");
        std::fs::create_dir(&upper).unwrap();
        diff_into(std::slice::from_ref(&l1), &merged, &upper).unwrap();
        assert!(tree(&upper).is_empty(), "{:?}", tree(&upper));
    }
}

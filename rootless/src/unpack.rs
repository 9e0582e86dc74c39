//! Flattening image layers into a directory, inside the user namespace.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{Result, RootlessError};
use crate::pathsafe::{DotDot, clean_archive_path, resolve_in_root};
use crate::proto::{Compression, LayerFile};

const WH_PREFIX: &str = ".wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";

/// Unpack `layers` in order into `dest`; returns notes about skipped entries. A layer whose
/// files hold more than `max_layer_bytes` is refused (decompression bombs).
pub fn unpack_layers(
    layers: &[LayerFile],
    dest: &Path,
    max_layer_bytes: Option<u64>,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dest).map_err(|e| RootlessError::io(dest, e))?;
    let dest = std::fs::canonicalize(dest).map_err(|e| RootlessError::io(dest, e))?;
    let mut notes = Vec::new();
    for l in layers {
        let f = std::fs::File::open(&l.path).map_err(|e| RootlessError::io(&l.path, e))?;
        let f = std::io::BufReader::with_capacity(256 * 1024, f);
        let r: Box<dyn Read> = match l.compression {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Compression::None => Box::new(f),
        };
        let mode = TarMode {
            layer: true,
            max_bytes: max_layer_bytes,
            ..TarMode::default()
        };
        unpack_tar(r, &l.path, &dest, &mut notes, mode)?;
    }
    Ok(notes)
}

/// How [`unpack_tar`] treats a stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct TarMode {
    /// An image layer: `.wh.` entries are whiteouts. Otherwise (an archive a copy unpacks)
    /// they are ordinary files.
    pub layer: bool,
    /// Owner of everything unpacked, instead of the archive's.
    pub owner: Option<(u32, u32)>,
    /// Modification time (seconds, nanoseconds) of everything unpacked.
    pub mtime: Option<(i64, i64)>,
    /// The most bytes of file content the stream may unpack to.
    pub max_bytes: Option<u64>,
}

/// Unpack a tar stream into `dest` (an existing, canonical directory), rejecting entries
/// that would land outside it.
pub fn unpack_tar(
    r: impl Read,
    layer: &Path,
    dest: &Path,
    notes: &mut Vec<String>,
    tm: TarMode,
) -> Result<()> {
    let mut ar = tar::Archive::new(r);
    let bad = |entry: &str, reason: String| RootlessError::UnsafeEntry {
        layer: layer.to_path_buf(),
        entry: entry.to_string(),
        reason,
    };
    let io = |e: std::io::Error| RootlessError::io(layer, e);
    // Paths (relative) written by this layer: an opaque marker keeps them.
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    let mut dir_times: Vec<(PathBuf, (i64, i64))> = Vec::new();
    let mut budget = tm.max_bytes.unwrap_or(u64::MAX);
    let too_big = |name: &str| {
        bad(
            name,
            format!(
                "the layer unpacks to more than {} bytes, the limit ([worker] max-layer-size)",
                tm.max_bytes.unwrap_or(u64::MAX)
            ),
        )
    };
    for entry in ar.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let raw_path = entry.path().map_err(io)?.into_owned();
        let name = raw_path.to_string_lossy().into_owned();
        let rel = clean_archive_path(&raw_path).map_err(|r| bad(&name, r))?;
        let Some(file_name) = rel.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue; // the root itself
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = resolve_in_root(dest, &parent_rel.to_string_lossy(), true, DotDot::Reject)
            .map_err(|e| bad(&name, e.to_string()))?;
        if tm.layer && file_name == WH_OPAQUE {
            if parent.is_dir() {
                clear_dir(&parent, &parent_rel, &this_layer)
                    .map_err(|e| bad(&name, e.to_string()))?;
            }
            continue;
        }
        if let Some(victim) = file_name.strip_prefix(WH_PREFIX).filter(|_| tm.layer) {
            if victim.is_empty() || victim == "." || victim == ".." {
                return Err(bad(&name, "bad whiteout name".into()));
            }
            let p = parent.join(victim);
            remove_any(&p).map_err(|e| bad(&name, e.to_string()))?;
            continue;
        }
        // Parents must be real directories.
        if !parent.is_dir() {
            std::fs::create_dir_all(&parent)
                .map_err(|e| bad(&name, format!("creating parent: {e}")))?;
        }
        let target = parent.join(&file_name);
        let hdr = entry.header().clone();
        let et = hdr.entry_type();
        let mut uid = hdr.uid().map_err(io)?;
        let mut gid = hdr.gid().map_err(io)?;
        let mut mtime = hdr.mtime().unwrap_or(0) as i64;
        let mode = hdr.mode().map_err(io)? & 0o7777;
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let Ok(k) = ext.key() else { continue };
                let v = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.split('.').next()?.parse::<u64>().ok())
                };
                match k {
                    "uid" => uid = num().unwrap_or(uid),
                    "gid" => gid = num().unwrap_or(gid),
                    "mtime" => mtime = num().map(|n| n as i64).unwrap_or(mtime),
                    _ => {
                        if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((x.to_string(), v.to_vec()));
                        }
                    }
                }
            }
        }
        let (uid, gid) = (
            u32::try_from(uid).map_err(|_| bad(&name, format!("uid {uid} out of range")))?,
            u32::try_from(gid).map_err(|_| bad(&name, format!("gid {gid} out of range")))?,
        );
        let existing = std::fs::symlink_metadata(&target).ok();
        use tar::EntryType as T;
        match et {
            T::Directory => {
                if let Some(md) = &existing
                    && !md.is_dir()
                {
                    remove_any(&target).map_err(|e| bad(&name, e.to_string()))?;
                }
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    std::fs::create_dir(&target).map_err(|e| bad(&name, e.to_string()))?;
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                // The header's size is checked first (nothing is written for a claimed
                // bomb), then what is really copied (sparse files expand).
                if entry.size() > budget {
                    return Err(too_big(&name));
                }
                if existing.is_some() {
                    remove_any(&target).map_err(|e| bad(&name, e.to_string()))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| bad(&name, e.to_string()))?;
                let copied =
                    std::io::copy(&mut (&mut entry).take(budget.saturating_add(1)), &mut f)
                        .map_err(|e| bad(&name, e.to_string()))?;
                if copied > budget {
                    drop(f);
                    let _ = std::fs::remove_file(&target);
                    return Err(too_big(&name));
                }
                budget -= copied;
            }
            T::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io)?
                    .ok_or_else(|| bad(&name, "symlink without target".into()))?
                    .into_owned();
                if existing.is_some() {
                    remove_any(&target).map_err(|e| bad(&name, e.to_string()))?;
                }
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| bad(&name, e.to_string()))?;
            }
            T::Link => {
                let link = entry
                    .link_name()
                    .map_err(io)?
                    .ok_or_else(|| bad(&name, "hardlink without target".into()))?
                    .into_owned();
                let lrel = clean_archive_path(&link)
                    .map_err(|r| bad(&name, format!("hardlink target: {r}")))?;
                let src = resolve_in_root(dest, &lrel.to_string_lossy(), false, DotDot::Reject)
                    .map_err(|e| bad(&name, format!("hardlink target: {e}")))?;
                let smd = std::fs::symlink_metadata(&src)
                    .map_err(|e| bad(&name, format!("hardlink target {}: {e}", lrel.display())))?;
                if smd.is_dir() {
                    return Err(bad(&name, "hardlink to a directory".into()));
                }
                if src == target {
                    continue;
                }
                if existing.is_some() {
                    remove_any(&target).map_err(|e| bad(&name, e.to_string()))?;
                }
                std::fs::hard_link(&src, &target).map_err(|e| bad(&name, e.to_string()))?;
                this_layer.insert(rel.clone());
                continue; // metadata belongs to the target inode
            }
            T::Fifo => {
                if existing.is_some() {
                    remove_any(&target).map_err(|e| bad(&name, e.to_string()))?;
                }
                nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| bad(&name, e.to_string()))?;
            }
            T::Char | T::Block => {
                notes.push(format!("{}: skipped device node {name}", layer.display()));
                continue;
            }
            T::XGlobalHeader => continue,
            other => {
                notes.push(format!(
                    "{}: skipped {name} (tar type {:?})",
                    layer.display(),
                    other
                ));
                continue;
            }
        }
        this_layer.insert(rel.clone());
        let (uid, gid) = tm.owner.unwrap_or((uid, gid));
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &target,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| {
            bad(
                &name,
                format!("chown {uid}:{gid}: {e} (id not mapped in the namespace?)"),
            )
        })?;
        for (k, v) in &xattrs {
            if let Err(e) = xattr::set(&target, k, v) {
                notes.push(format!("{name}: xattr {k} not set: {e}"));
            }
        }
        if et != T::Symlink {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .map_err(|e| bad(&name, e.to_string()))?;
        }
        let mtime = tm.mtime.unwrap_or((mtime, 0));
        if et == T::Directory {
            dir_times.push((target, mtime));
        } else {
            set_mtime(&target, mtime);
        }
    }
    for (d, t) in dir_times.iter().rev() {
        set_mtime(d, *t);
    }
    Ok(())
}

fn set_mtime(p: &Path, (secs, nanos): (i64, i64)) {
    let ts = TimeSpec::new(secs, nanos);
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &ts,
        &ts,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// Remove whatever is at `p` (not following symlinks); missing is fine.
pub(crate) fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opaque marker: delete the dir's children that earlier layers wrote.
fn clear_dir(dir: &Path, rel: &Path, keep: &HashSet<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let crel = rel.join(e.file_name());
        if keep.contains(&crel) {
            if e.file_type()?.is_dir() {
                clear_dir(&e.path(), &crel, keep)?;
            }
            continue;
        }
        remove_any(&e.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack_one(r: impl Read, layer: &Path, dest: &Path, notes: &mut Vec<String>) -> Result<()> {
        let mode = TarMode {
            layer: true,
            ..TarMode::default()
        };
        unpack_tar(r, layer, dest, notes, mode)
    }

    fn tar_with(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
        let uid = nix::unistd::getuid().as_raw() as u64;
        let gid = nix::unistd::getgid().as_raw() as u64;
        let mut b = tar::Builder::new(Vec::new());
        for (path, et, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*et);
            h.set_mode(0o755);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_size(0);
            // write names raw so that hostile ones survive the builder's checks
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..path.len()].copy_from_slice(path.as_bytes());
                if let Some(l) = link {
                    gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
                }
            }
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack_err(entries: &[(&str, tar::EntryType, Option<&str>)]) -> String {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("root");
        std::fs::create_dir(&dest).unwrap();
        let data = tar_with(entries);
        let mut notes = Vec::new();
        match unpack_one(&data[..], Path::new("layer.tar"), &dest, &mut notes) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostile_entries_are_rejected() {
        use tar::EntryType as T;
        let e = unpack_err(&[("../evil", T::Regular, None)]);
        assert!(e.contains("../evil"), "{e}");
        let e = unpack_err(&[("/etc/passwd", T::Regular, None)]);
        assert!(e.contains("/etc/passwd") && e.contains("absolute"), "{e}");
        let e = unpack_err(&[
            ("up", T::Symlink, Some("../../..")),
            ("up/x", T::Regular, None),
        ]);
        assert!(e.contains("up/x"), "{e}");
        let e = unpack_err(&[("l", T::Link, Some("../../etc/passwd"))]);
        assert!(e.contains("\"l\""), "{e}");
        let e = unpack_err(&[("l", T::Link, Some("/etc/passwd"))]);
        assert!(e.contains("\"l\""), "{e}");
        let e = unpack_err(&[("a/.wh...", T::Regular, None)]);
        assert!(e.contains("whiteout"), "{e}");
        // absolute symlink in a parent is re-rooted, not followed out of dest
        let e = unpack_err(&[("etc", T::Symlink, Some("/")), ("etc/x", T::Regular, None)]);
        assert_eq!(e, "");
    }

    #[test]
    fn write_does_not_follow_final_symlink() {
        use tar::EntryType as T;
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("root");
        std::fs::create_dir(&dest).unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let data = tar_with(&[
            ("f", T::Symlink, Some(outside.to_str().unwrap())),
            ("f", T::Regular, None),
        ]);
        let mut notes = Vec::new();
        unpack_one(&data[..], Path::new("l"), &dest, &mut notes).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(dest.join("f")).unwrap().is_file());
    }
}

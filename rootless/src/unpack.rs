//! Flattening image layers into a directory, inside the user namespace.

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::SFlag;

use crate::error::{Result, RootlessError};
use crate::fsroot::{DotDot, Entry, Root};
use crate::pathsafe::clean_archive_path;
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
        // Decompression runs on a thread of its own, a few MiB ahead of the unpacking (which
        // mostly waits on file system calls): on two cores the two overlap.
        let r: Box<dyn Read> = match l.compression {
            Compression::Gzip => Box::new(ReadAhead::spawn(flate2::read::MultiGzDecoder::new(f))),
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

/// A reader whose source is read on another thread, up to [`ReadAhead::DEPTH`] chunks
/// ahead. Dropping it stops the thread (its next send fails) and waits for it.
pub struct ReadAhead {
    rx: Option<std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    const CHUNK: usize = 1 << 20;
    const DEPTH: usize = 4;

    pub fn spawn<R: Read + Send + 'static>(mut src: R) -> ReadAhead {
        let (tx, rx) = std::sync::mpsc::sync_channel(Self::DEPTH);
        let thread = std::thread::spawn(move || {
            loop {
                let mut buf = vec![0u8; Self::CHUNK];
                let mut n = 0;
                // Fill the chunk (decoders hand out small pieces), or stop at the end.
                let r = loop {
                    match src.read(&mut buf[n..]) {
                        Ok(0) => break Ok(()),
                        Ok(k) => {
                            n += k;
                            if n == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(n);
                let last = n < Self::CHUNK || r.is_err();
                if n > 0 && tx.send(Ok(buf)).is_err() {
                    return;
                }
                if let Err(e) = r {
                    let _ = tx.send(Err(e));
                    return;
                }
                if last {
                    return;
                }
            }
        });
        ReadAhead {
            rx: Some(rx),
            chunk: Vec::new(),
            pos: 0,
            done: false,
            thread: Some(thread),
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.as_ref().map(|rx| rx.recv()) {
                Some(Ok(Ok(chunk))) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Ok(Err(e))) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread finished: everything was read.
                Some(Err(_)) | None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    unpack_tar_in(r, layer, &Root::open(dest)?, notes, tm)
}

/// [`unpack_tar`] into a directory already opened as a [`Root`].
pub(crate) fn unpack_tar_in(
    r: impl Read,
    layer: &Path,
    root: &Root,
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
    // Directory times are set last (entries below would change them), found again by path:
    // holding a descriptor for each would run out of them.
    let mut dir_times: Vec<(String, (i64, i64))> = Vec::new();
    // The directory the last entry went into: most entries follow their siblings. Dropped
    // whenever something is removed (it could be that directory or one above it).
    let mut parent_cache: Option<(String, Rc<OwnedFd>)> = None;
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
        let Some(file_name) = rel.file_name().map(|f| f.to_os_string()) else {
            continue; // the root itself
        };
        let parent_rel = rel
            .parent()
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        let fname = file_name.to_string_lossy();
        let be = |e: RootlessError| bad(&name, e.to_string());
        if tm.layer && fname == WH_OPAQUE {
            if let Some(dir) = root.entry(&parent_rel, true, DotDot::Reject).map_err(be)?
                && dir.is_dir()
            {
                let keep = &this_layer;
                dir.clear_dir(&mut |c| keep_opaque(c, keep)).map_err(be)?;
            }
            parent_cache = None;
            continue;
        }
        if let Some(victim) = fname.strip_prefix(WH_PREFIX).filter(|_| tm.layer) {
            if victim.is_empty() || victim == "." || victim == ".." {
                return Err(bad(&name, "bad whiteout name".into()));
            }
            if let Some(dir) = root.entry(&parent_rel, true, DotDot::Reject).map_err(be)?
                && dir.is_dir()
            {
                let v = dir.child(std::ffi::OsStr::new(victim)).map_err(be)?;
                v.remove_all().map_err(be)?;
            }
            parent_cache = None;
            continue;
        }
        // Parents must be real directories (made where missing).
        let pdir = match &parent_cache {
            Some((p, fd)) if *p == parent_rel => fd.clone(),
            _ => {
                let (dir, _) = root
                    .mkdir_all(&parent_rel, DotDot::Reject, &mut |_| Ok(()))
                    .map_err(|e| bad(&name, format!("creating parent: {e}")))?;
                let fd = dir.as_dir().map_err(be)?;
                parent_cache = Some((parent_rel.clone(), fd.clone()));
                fd
            }
        };
        let target = Entry::in_dir(pdir, &file_name, rel.clone()).map_err(be)?;
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
        let existing = target.kind().map_err(be)?;
        let is_dir = existing == Some(SFlag::S_IFDIR);
        if existing.is_some() && !(is_dir && et == tar::EntryType::Directory) {
            // What stands there goes (or is linked to): the cached directory may be it.
            parent_cache = None;
        }
        use tar::EntryType as T;
        match et {
            T::Directory => {
                if existing.is_some() && !is_dir {
                    target.remove_all().map_err(be)?;
                }
                if !is_dir {
                    target.mkdir(0o700).map_err(be)?;
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                // The header's size is checked first (nothing is written for a claimed
                // bomb), then what is really copied (sparse files expand).
                if entry.size() > budget {
                    return Err(too_big(&name));
                }
                if existing.is_some() {
                    target.remove_all().map_err(be)?;
                }
                let mut f = target.create(0o600).map_err(be)?;
                let copied =
                    std::io::copy(&mut (&mut entry).take(budget.saturating_add(1)), &mut f)
                        .map_err(|e| bad(&name, e.to_string()))?;
                if copied > budget {
                    drop(f);
                    let _ = target.remove_all();
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
                    target.remove_all().map_err(be)?;
                }
                target.symlink(link.as_os_str()).map_err(be)?;
            }
            T::Link => {
                let link = entry
                    .link_name()
                    .map_err(io)?
                    .ok_or_else(|| bad(&name, "hardlink without target".into()))?
                    .into_owned();
                let lrel = clean_archive_path(&link)
                    .map_err(|r| bad(&name, format!("hardlink target: {r}")))?;
                let src = root
                    .entry(&lrel.to_string_lossy(), false, DotDot::Reject)
                    .map_err(|e| bad(&name, format!("hardlink target: {e}")))?
                    .filter(|e| !e.is_dot());
                let smd = src
                    .as_ref()
                    .map(|s| s.stat())
                    .transpose()
                    .map_err(|e| bad(&name, format!("hardlink target: {e}")))?
                    .flatten();
                let (Some(src), Some(smd)) = (src, smd) else {
                    return Err(bad(
                        &name,
                        format!("hardlink target {}: not found", lrel.display()),
                    ));
                };
                if smd.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
                    return Err(bad(&name, "hardlink to a directory".into()));
                }
                if let Some(t) = target.stat().map_err(be)?
                    && (t.st_dev, t.st_ino) == (smd.st_dev, smd.st_ino)
                {
                    continue;
                }
                if existing.is_some() {
                    target.remove_all().map_err(be)?;
                }
                target.link_to(&src).map_err(be)?;
                this_layer.insert(rel.clone());
                continue; // metadata belongs to the target inode
            }
            T::Fifo => {
                if existing.is_some() {
                    target.remove_all().map_err(be)?;
                }
                target.mkfifo(0o600).map_err(be)?;
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
        target
            .chown(uid, gid)
            .map_err(|e| bad(&name, format!("{e} (id not mapped in the namespace?)")))?;
        for (k, v) in &xattrs {
            if let Err(e) = target.set_xattr(k, v) {
                notes.push(format!("{name}: xattr {k} not set: {e}"));
            }
        }
        if et != T::Symlink {
            target.chmod(mode).map_err(be)?;
        }
        let mtime = tm.mtime.unwrap_or((mtime, 0));
        if et == T::Directory {
            dir_times.push((rel.to_string_lossy().into_owned(), mtime));
        } else {
            let _ = target.set_times(mtime.0, mtime.1);
        }
    }
    for (d, t) in dir_times.iter().rev() {
        if let Ok(Some(e)) = root.entry(d, false, DotDot::Reject) {
            let _ = e.set_times(t.0, t.1);
        }
    }
    Ok(())
}

/// Remove whatever is at `p` (not following symlinks); missing is fine. For trees the
/// caller owns (not found by resolving a container path).
pub(crate) fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opaque marker: whether a child of the marked dir stays (this layer wrote it). A kept
/// directory is cleared of what earlier layers wrote below it in turn.
fn keep_opaque(c: &Entry, keep: &HashSet<PathBuf>) -> bool {
    if !keep.contains(c.rel()) {
        return false;
    }
    if c.is_dir() {
        // Errors surface when the parent removes what it could not clear.
        let _ = c.clear_dir(&mut |g| keep_opaque(g, keep));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read-ahead thread hands on exactly its source's bytes, across chunk borders and
    /// with a source that gives small pieces; an error comes through after the bytes before
    /// it; a reader dropped half-way stops the thread.
    #[test]
    fn read_ahead_passes_bytes_and_errors_through() {
        struct Trickle(Vec<u8>, usize, bool);
        impl Read for Trickle {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.1 == self.0.len() {
                    return if self.2 {
                        Err(std::io::Error::other("corrupt deflate stream"))
                    } else {
                        Ok(0)
                    };
                }
                let n = out.len().min(777).min(self.0.len() - self.1);
                out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let data: Vec<u8> = (0..(3 * ReadAhead::CHUNK + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut got = Vec::new();
        ReadAhead::spawn(Trickle(data.clone(), 0, false))
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == data);
        let mut got = Vec::new();
        let e = ReadAhead::spawn(Trickle(data.clone(), 0, true))
            .read_to_end(&mut got)
            .unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(got == data, "the bytes before the error");
        let mut r = ReadAhead::spawn(Trickle(data.clone(), 0, false));
        let mut head = [0u8; 10];
        r.read_exact(&mut head).unwrap();
        drop(r); // joins the thread: must not hang
        let mut empty = Vec::new();
        ReadAhead::spawn(Trickle(Vec::new(), 0, false))
            .read_to_end(&mut empty)
            .unwrap();
        assert!(empty.is_empty());
    }

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

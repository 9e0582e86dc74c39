//! Flattening image layers into a directory, inside the user namespace.

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::SFlag;

use crate::error::{Result, RootlessError};
use crate::fsroot::{DotDot, Entry, Root, proc_path};
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
        let mode = TarMode {
            layer: true,
            max_bytes: max_layer_bytes,
            ..TarMode::default()
        };
        unpack_tar(open_layer(l)?, &l.path, &dest, &mut notes, mode)?;
    }
    Ok(notes)
}

/// Unpack one layer into `dest` (made if missing; it must be empty) as an overlay upper dir
/// of that layer, the format of envkit's snapshots: whiteouts are recorded instead of applied
/// (`dir/.wh.NAME` becomes a whiteout `dir/NAME`, a 0/0 char device or, where mknod is
/// refused, an empty file with `user.overlay.whiteout`; `dir/.wh..wh..opq` marks `dir` with
/// `user.overlay.opaque` = `y`), and nothing is deleted. Everything else is unpacked as by
/// [`unpack_layers`], with the same checks and the same `max_layer_bytes`. Returns notes
/// about skipped entries.
///
/// The inverse of the layer differ: for a layer it wrote from an upper dir, the layer it
/// writes from the unpacked dir is the same, byte for byte. Entries of the layer follow the
/// OCI rule that a whiteout hides only what lies below the layer: a name the layer both
/// writes and whites out keeps the layer's entry (a directory becomes opaque, since what was
/// below it is hidden). Overlay metadata xattrs (`user.overlay.*`, `trusted.overlay.*`) in
/// the archive are dropped: only whiteout entries make whiteouts.
pub fn unpack_upper(
    layer: &LayerFile,
    dest: &Path,
    max_layer_bytes: Option<u64>,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dest).map_err(|e| RootlessError::io(dest, e))?;
    let dest = std::fs::canonicalize(dest).map_err(|e| RootlessError::io(dest, e))?;
    let mut rd = std::fs::read_dir(&dest).map_err(|e| RootlessError::io(&dest, e))?;
    if rd.next().is_some() {
        return Err(RootlessError::Invalid(format!(
            "{}: unpacking a layer as an upper dir needs an empty directory",
            dest.display()
        )));
    }
    let mut notes = Vec::new();
    let mode = TarMode {
        layer: true,
        max_bytes: max_layer_bytes,
        ..TarMode::default()
    };
    unpack_stream(
        open_layer(layer)?,
        &layer.path,
        &Root::open(&dest)?,
        &mut notes,
        mode,
        Whiteouts::Record,
    )?;
    Ok(notes)
}

/// The decompressed stream of a layer file.
fn open_layer(l: &LayerFile) -> Result<Box<dyn Read>> {
    let f = std::fs::File::open(&l.path).map_err(|e| RootlessError::io(&l.path, e))?;
    let f = std::io::BufReader::with_capacity(256 * 1024, f);
    // Decompression runs on a thread of its own, a few MiB ahead of the unpacking (which
    // mostly waits on file system calls): on two cores the two overlap.
    Ok(match l.compression {
        Compression::Gzip => Box::new(ReadAhead::spawn(flate2::read::MultiGzDecoder::new(f))),
        Compression::None => Box::new(f),
    })
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
    let wh = if tm.layer {
        Whiteouts::Apply
    } else {
        Whiteouts::Files
    };
    unpack_stream(r, layer, root, notes, tm, wh)
}

/// What `.wh.` entries of a stream mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    /// Ordinary files (an archive, not a layer).
    Files,
    /// Deletions, applied to what the layers before wrote (flattening).
    Apply,
    /// Recorded overlay-style, as in an upper dir (see [`unpack_upper`]).
    Record,
}

/// Owner, time and xattrs of a tar entry (PAX records win over the header).
struct EntryMeta {
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn entry_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    bad: &dyn Fn(String) -> RootlessError,
    io: &dyn Fn(std::io::Error) -> RootlessError,
) -> Result<EntryMeta> {
    let hdr = entry.header();
    let mut uid = hdr.uid().map_err(io)?;
    let mut gid = hdr.gid().map_err(io)?;
    let mut mtime = hdr.mtime().unwrap_or(0) as i64;
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
    Ok(EntryMeta {
        uid: u32::try_from(uid).map_err(|_| bad(format!("uid {uid} out of range")))?,
        gid: u32::try_from(gid).map_err(|_| bad(format!("gid {gid} out of range")))?,
        mtime,
        xattrs,
    })
}

/// Overlay's own metadata, which an archive must not smuggle into an upper dir.
fn is_overlay_xattr(k: &str) -> bool {
    k.starts_with("user.overlay.") || k.starts_with("trusted.overlay.")
}

const OVL_OPAQUE: &str = "user.overlay.opaque";

/// Whether `e` is a whiteout of an upper dir (as [`crate::classify`] reads them). In a layer
/// unpacked as an upper dir only its own whiteouts are: device nodes are skipped and overlay
/// xattrs dropped.
fn is_whiteout(e: &Entry) -> Result<bool> {
    let Some(st) = e.stat()? else {
        return Ok(false);
    };
    let fmt = st.st_mode & SFlag::S_IFMT.bits();
    if fmt == SFlag::S_IFCHR.bits() {
        return Ok(st.st_rdev == 0);
    }
    if fmt != SFlag::S_IFREG.bits() || st.st_size != 0 {
        return Ok(false);
    }
    let Some(fd) = e.open_path()? else {
        return Ok(false);
    };
    Ok(matches!(
        xattr::get(proc_path(fd.as_fd()), "user.overlay.whiteout"),
        Ok(Some(_))
    ))
}

/// The stream loop of [`unpack_tar_in`] and [`unpack_upper`].
fn unpack_stream(
    r: impl Read,
    layer: &Path,
    root: &Root,
    notes: &mut Vec<String>,
    tm: TarMode,
    wh: Whiteouts,
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
    // File contents go through one buffer, a write per buffer-full.
    let mut buf = vec![0u8; COPY_BUF];
    let flusher = Flusher::spawn();
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
        let ebad = |r: String| bad(&name, r);
        if wh == Whiteouts::Apply && fname == WH_OPAQUE {
            if let Some(dir) = root.entry(&parent_rel, true, DotDot::Reject).map_err(be)?
                && dir.is_dir()
            {
                let keep = &this_layer;
                dir.clear_dir(&mut |c| keep_opaque(c, keep)).map_err(be)?;
            }
            parent_cache = None;
            continue;
        }
        if wh == Whiteouts::Record && fname == WH_OPAQUE {
            // The directory hides what lies below it; this layer's entries in it stay. Made
            // if missing (its own entry, before or after, gives it its metadata).
            if parent_rel.is_empty() {
                return Err(bad(
                    &name,
                    "an opaque marker for the root cannot be kept in an overlay upper dir".into(),
                ));
            }
            let (dir, _) = root
                .mkdir_all(&parent_rel, DotDot::Reject, &mut |_| Ok(()))
                .map_err(|e| bad(&name, format!("opaque directory: {e}")))?;
            if dir.rel().as_os_str().is_empty() {
                // Reached through a symlink to `/` (or `..`).
                return Err(bad(
                    &name,
                    "an opaque marker for the root cannot be kept in an overlay upper dir".into(),
                ));
            }
            dir.set_xattr(OVL_OPAQUE, b"y").map_err(be)?;
            continue;
        }
        if let Some(victim) = fname
            .strip_prefix(WH_PREFIX)
            .filter(|_| wh != Whiteouts::Files)
        {
            if victim.is_empty() || victim == "." || victim == ".." {
                return Err(bad(&name, "bad whiteout name".into()));
            }
            if wh == Whiteouts::Apply {
                if let Some(dir) = root.entry(&parent_rel, true, DotDot::Reject).map_err(be)?
                    && dir.is_dir()
                {
                    let v = dir.child(std::ffi::OsStr::new(victim)).map_err(be)?;
                    v.remove_all().map_err(be)?;
                }
                parent_cache = None;
                continue;
            }
            if victim.starts_with(WH_PREFIX) {
                // `.wh..wh.*` other than the opaque marker: aufs metadata (containerd skips
                // it too).
                notes.push(format!("{}: skipped aufs metadata {name}", layer.display()));
                continue;
            }
            let meta = entry_meta(&mut entry, &ebad, &io)?;
            let (dir, _) = root
                .mkdir_all(&parent_rel, DotDot::Reject, &mut |_| Ok(()))
                .map_err(|e| bad(&name, format!("creating parent: {e}")))?;
            let v = dir.child(std::ffi::OsStr::new(victim)).map_err(be)?;
            match v.kind().map_err(be)? {
                None => {
                    let pdir = dir.as_dir().map_err(be)?;
                    crate::copysnap::make_whiteout(pdir.as_fd(), v.name())
                        .map_err(|e| bad(&name, format!("making the whiteout: {e}")))?;
                    v.chown(meta.uid, meta.gid).map_err(|e| {
                        bad(&name, format!("{e} (id not mapped in the namespace?)"))
                    })?;
                    let _ = v.set_times(meta.mtime, 0);
                }
                // This layer's own directory: what lay below it is hidden.
                Some(SFlag::S_IFDIR) => v.set_xattr(OVL_OPAQUE, b"y").map_err(be)?,
                // This layer's own entry (or whiteout) hides what lies below already.
                Some(_) => {}
            }
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
        let et = entry.header().entry_type();
        let mode = entry.header().mode().map_err(io)? & 0o7777;
        let EntryMeta {
            uid,
            gid,
            mtime,
            mut xattrs,
        } = entry_meta(&mut entry, &ebad, &io)?;
        if wh == Whiteouts::Record {
            xattrs.retain(|(k, _)| {
                let keep = !is_overlay_xattr(k);
                if !keep {
                    notes.push(format!("{name}: overlay xattr {k} dropped"));
                }
                keep
            });
        }
        let existing = target.kind().map_err(be)?;
        let is_dir = existing == Some(SFlag::S_IFDIR);
        if existing.is_some() && !(is_dir && et == tar::EntryType::Directory) {
            // What stands there goes (or is linked to): the cached directory may be it.
            parent_cache = None;
        }
        use tar::EntryType as T;
        // A regular file just made: its metadata is set through its descriptor.
        let mut made: Option<std::fs::File> = None;
        match et {
            T::Directory => {
                if existing.is_some() && !is_dir {
                    target.remove_all().map_err(be)?;
                }
                if !is_dir {
                    target.mkdir(0o700).map_err(be)?;
                }
                if wh == Whiteouts::Record && existing.is_some() && !is_dir {
                    // Made where this layer had a whiteout or another non-directory, which
                    // hid what lay below: the directory must hide it too.
                    target.set_xattr(OVL_OPAQUE, b"y").map_err(be)?;
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
                let copied = copy_through(
                    &mut (&mut entry).take(budget.saturating_add(1)),
                    &mut f,
                    &mut buf,
                )
                .map_err(|e| bad(&name, e.to_string()))?;
                if copied > budget {
                    drop(f);
                    let _ = target.remove_all();
                    return Err(too_big(&name));
                }
                budget -= copied;
                if copied >= WRITEBACK_MIN {
                    flusher.push(&f);
                }
                made = Some(f);
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
                // A whiteout this layer made is no file to link to.
                let smd = match (&src, smd) {
                    (Some(s), Some(_))
                        if wh == Whiteouts::Record && is_whiteout(s).map_err(be)? =>
                    {
                        None
                    }
                    (_, smd) => smd,
                };
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
        let mtime = tm.mtime.unwrap_or((mtime, 0));
        if let Some(f) = made {
            file_meta(&f, (uid, gid), &xattrs, mode, mtime, notes, &name).map_err(be)?;
            continue;
        }
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

/// Starts the writeback of large unpacked files on a thread of its own, while the unpacking
/// goes on: the snapshot's commit then finds most of its data on the way to the disk already,
/// instead of waiting for all of it to be written at once (`syncfs`). Only a start: nothing
/// waits for the writes here, and a file it has no room for is left to the commit.
struct Flusher {
    tx: Option<std::sync::mpsc::SyncSender<std::fs::File>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn spawn() -> Flusher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::fs::File>(64);
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for f in rx {
                    start_writeback(&f);
                }
            });
        match thread {
            Ok(t) => Flusher {
                tx: Some(tx),
                thread: Some(t),
            },
            Err(_) => Flusher {
                tx: None,
                thread: None,
            },
        }
    }

    /// Asks for `f`'s writeback to start (never waits).
    fn push(&self, f: &std::fs::File) {
        if let (Some(tx), Ok(dup)) = (&self.tx, f.try_clone()) {
            let _ = tx.try_send(dup);
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The size from which a file just written has its writeback started ([`start_writeback`]);
/// smaller files are left to the commit's sync: one write each would cost more than it saves.
pub const WRITEBACK_MIN: u64 = 256 * 1024;

/// Starts writing `f`'s dirty pages to the disk, without waiting for them (a later `syncfs`
/// then has less to write). Best effort: a failure only means the sync does it all.
pub fn start_writeback(f: &std::fs::File) {
    // SAFETY: sync_file_range reads nothing from memory; `f` is an open descriptor for the
    // call's duration.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
            0,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// The buffer file contents are unpacked through.
const COPY_BUF: usize = 256 * 1024;

/// Copies `r` into `f` through `buf`: one write per buffer-full (`std::io::copy` from a
/// reader that is not a file writes every 8 KiB). Returns the bytes copied.
fn copy_through(r: &mut impl Read, f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<u64> {
    use std::io::Write;
    let mut total = 0u64;
    loop {
        let n = crate::fileops::read_full(r, buf)?;
        f.write_all(&buf[..n])?;
        total += n as u64;
        if n < buf.len() {
            return Ok(total);
        }
    }
}

/// Owner, extended attributes, mode and times of a regular file just unpacked, set through
/// its descriptor (no path is looked up again), in the order the others get them.
fn file_meta(
    f: &std::fs::File,
    owner: (u32, u32),
    xattrs: &[(String, Vec<u8>)],
    mode: u32,
    times: (i64, i64),
    notes: &mut Vec<String>,
    name: &str,
) -> Result<()> {
    use xattr::FileExt;
    crate::fsroot::chown_fd(f, owner, name)?;
    for (k, v) in xattrs {
        if let Err(e) = f.set_xattr(k, v) {
            notes.push(format!("{name}: xattr {k} not set: {e}"));
        }
    }
    crate::fsroot::chmod_and_time_fd(f, mode, times, false, name)
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

    // ---- unpacking a layer as an upper dir (no namespace: whiteouts are whatever mknod
    // allows here, 0/0 char devices as root, else `user.overlay.whiteout` files) -----------

    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use crate::difftar::{UpperKind, classify, write_diff_tar};

    fn kind_of(p: &Path) -> UpperKind {
        classify(p, &std::fs::symlink_metadata(p).unwrap())
    }

    fn set_mtime(p: &Path, secs: i64) {
        let ts = nix::sys::time::TimeSpec::new(secs, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn wh(dir: &Path, name: &str) {
        let d = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let c = std::ffi::CString::new(name).unwrap();
        crate::copysnap::make_whiteout(d.as_fd(), &c).unwrap();
    }

    fn plain(path: &Path) -> LayerFile {
        LayerFile {
            path: path.to_path_buf(),
            compression: Compression::None,
        }
    }

    /// An upper dir with every kind of entry the differ writes: files with modes, xattrs and
    /// hard links, symlinks, a fifo, both forms of whiteout (of a file and of a directory),
    /// opaque directories (one nested, one at the top), a long path.
    fn sample_upper(u: &Path) {
        let mk = |p: &str| std::fs::create_dir_all(u.join(p)).unwrap();
        let file = |p: &str, data: &str, mode: u32| {
            std::fs::write(u.join(p), data).unwrap();
            std::fs::set_permissions(u.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mk("etc");
        file("etc/a", "alpha", 0o640);
        xattr::set(u.join("etc/a"), "user.test", b"hello").unwrap();
        std::fs::hard_link(u.join("etc/a"), u.join("etc/hl")).unwrap();
        file("etc/suid", "s", 0o4755);
        wh(&u.join("etc"), "gone");
        std::fs::write(u.join("etc/gone-too"), b"").unwrap();
        xattr::set(u.join("etc/gone-too"), "user.overlay.whiteout", b"y").unwrap();
        wh(u, "was-a-dir");
        mk("opq/inner");
        xattr::set(u.join("opq"), "user.overlay.opaque", b"y").unwrap();
        xattr::set(u.join("opq/inner"), "user.overlay.opaque", b"y").unwrap();
        xattr::set(u.join("opq/inner"), "user.dir", b"d").unwrap();
        file("opq/new", "n", 0o644);
        file("opq/inner/deeper", "d", 0o600);
        wh(&u.join("opq/inner"), "x");
        std::os::unix::fs::symlink("/etc/a", u.join("abs")).unwrap();
        std::os::unix::fs::symlink("etc/a", u.join("rel")).unwrap();
        nix::unistd::mkfifo(
            &u.join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        let long = format!("{}/{}", "l".repeat(90), "m".repeat(80));
        mk(&long);
        file(&format!("{long}/file-with-a-long-path"), "long", 0o644);
        std::fs::set_permissions(u.join("etc"), std::fs::Permissions::from_mode(0o750)).unwrap();
        // Times: leaves first, then directories bottom up.
        for (i, p) in [
            "etc/a",
            "etc/suid",
            "etc/gone",
            "etc/gone-too",
            "was-a-dir",
            "opq/new",
            "opq/inner/deeper",
            "opq/inner/x",
            "abs",
            "rel",
            "pipe",
        ]
        .iter()
        .enumerate()
        {
            set_mtime(&u.join(p), 1_600_000_000 + i as i64);
        }
        set_mtime(
            &u.join(format!("{long}/file-with-a-long-path")),
            1_600_000_100,
        );
        for (i, d) in [long.as_str(), &long[..90], "opq/inner", "opq", "etc"]
            .iter()
            .enumerate()
        {
            set_mtime(&u.join(d), 1_650_000_000 + i as i64);
        }
    }

    fn tar_entry_names(data: &[u8]) -> Vec<String> {
        tar::Archive::new(data)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// The differ's layer of an upper dir, unpacked as an upper dir, diffs to the same
    /// bytes; whiteouts and opaque dirs come back as such (and from a gzip layer too).
    #[test]
    fn an_upper_dir_round_trips_through_its_layer() {
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("u");
        std::fs::create_dir(&u).unwrap();
        sample_upper(&u);
        let t1 = t.path().join("t1.tar");
        write_diff_tar(&u, &t1, None).unwrap();
        let b1 = std::fs::read(&t1).unwrap();
        let names = tar_entry_names(&b1);
        for want in [
            "etc/.wh.gone",
            "etc/.wh.gone-too",
            ".wh.was-a-dir",
            "opq/.wh..wh..opq",
            "opq/inner/.wh..wh..opq",
            "opq/inner/.wh.x",
            "etc/hl",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        for (i, layer) in [plain(&t1), {
            let gz = t.path().join("t1.tar.gz");
            let mut enc = flate2::write::GzEncoder::new(
                std::fs::File::create(&gz).unwrap(),
                flate2::Compression::fast(),
            );
            std::io::Write::write_all(&mut enc, &b1).unwrap();
            enc.finish().unwrap();
            LayerFile {
                path: gz,
                compression: Compression::Gzip,
            }
        }]
        .iter()
        .enumerate()
        {
            let u2 = t.path().join(format!("u2-{i}"));
            let notes = unpack_upper(layer, &u2, Some(1 << 20)).unwrap();
            assert!(notes.is_empty(), "{notes:?}");
            let t2 = t.path().join(format!("t2-{i}.tar"));
            write_diff_tar(&u2, &t2, None).unwrap();
            let b2 = std::fs::read(&t2).unwrap();
            assert_eq!(tar_entry_names(&b1), tar_entry_names(&b2));
            assert!(b1 == b2, "the layers differ");
            for w in ["etc/gone", "etc/gone-too", "was-a-dir", "opq/inner/x"] {
                assert_eq!(kind_of(&u2.join(w)), UpperKind::Whiteout, "{w}");
            }
            for o in ["opq", "opq/inner"] {
                assert_eq!(
                    kind_of(&u2.join(o)),
                    UpperKind::Entry { opaque: true },
                    "{o}"
                );
            }
            assert_eq!(kind_of(&u2.join("etc")), UpperKind::Entry { opaque: false });
            assert_eq!(
                std::fs::symlink_metadata(u2.join("etc/hl")).unwrap().ino(),
                std::fs::symlink_metadata(u2.join("etc/a")).unwrap().ino()
            );
            assert_eq!(
                xattr::get(u2.join("etc/a"), "user.test").unwrap(),
                Some(b"hello".to_vec())
            );
            assert_eq!(
                std::fs::symlink_metadata(u2.join("etc/gone"))
                    .unwrap()
                    .mtime(),
                1_600_000_002
            );
        }
    }

    struct Ent<'a> {
        path: &'a str,
        et: tar::EntryType,
        mode: u32,
        data: &'a [u8],
        link: Option<&'a str>,
        xattrs: &'a [(&'a str, &'a [u8])],
    }

    fn ent(path: &str, et: tar::EntryType) -> Ent<'_> {
        Ent {
            path,
            et,
            mode: if et == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            data: b"",
            link: None,
            xattrs: &[],
        }
    }

    fn layer_of(entries: &[Ent]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            if !e.xattrs.is_empty() {
                let kv: Vec<(String, &[u8])> = e
                    .xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                    .collect();
                b.append_pax_extensions(kv.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(e.et);
            h.set_mode(e.mode);
            h.set_uid(nix::unistd::getuid().as_raw() as u64);
            h.set_gid(nix::unistd::getgid().as_raw() as u64);
            h.set_mtime(1_700_000_000);
            h.set_size(e.data.len() as u64);
            match e.link {
                Some(l) => b.append_link(&mut h, e.path, l).unwrap(),
                None => b.append_data(&mut h, e.path, e.data).unwrap(),
            }
        }
        b.into_inner().unwrap()
    }

    fn unpack_upper_bytes(entries: &[Ent]) -> (tempfile::TempDir, PathBuf, Result<Vec<String>>) {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("layer.tar");
        std::fs::write(&l, layer_of(entries)).unwrap();
        let u = t.path().join("upper");
        let r = unpack_upper(&plain(&l), &u, None);
        (t, u, r)
    }

    /// Whiteouts and opaque markers in any order, with the OCI rule that a whiteout hides
    /// only what lies below the layer: the layer's own entries stay.
    #[test]
    fn whiteouts_are_recorded_not_applied() {
        use tar::EntryType as T;
        let (_t, u, r) = unpack_upper_bytes(&[
            // the marker first, the directory's own entry after it
            ent("a/.wh..wh..opq", T::Regular),
            Ent {
                mode: 0o750,
                ..ent("a/", T::Directory)
            },
            Ent {
                data: b"x",
                ..ent("a/x", T::Regular)
            },
            // a directory of this layer, then a whiteout of its name
            ent("b/", T::Directory),
            ent("b/y", T::Regular),
            ent(".wh.b", T::Regular),
            // a whiteout, then a directory of that name
            ent(".wh.c", T::Regular),
            ent("c/", T::Directory),
            ent("c/z", T::Regular),
            // a file, then its whiteout; a whiteout, then a file
            ent("f", T::Regular),
            ent(".wh.f", T::Regular),
            ent(".wh.g", T::Regular),
            ent("g", T::Regular),
            // a whiteout whose directory the layer does not list
            ent("h/.wh.i", T::Regular),
            // aufs metadata
            ent(".wh..wh.plnk/", T::Directory),
            // overlay xattrs in the archive do not make whiteouts
            Ent {
                xattrs: &[("user.overlay.whiteout", b"y"), ("user.keep", b"1")],
                ..ent("k", T::Regular)
            },
            Ent {
                xattrs: &[("user.overlay.opaque", b"y")],
                ..ent("m/", T::Directory)
            },
        ]);
        let notes = r.unwrap();
        assert_eq!(kind_of(&u.join("a")), UpperKind::Entry { opaque: true });
        let a = std::fs::metadata(u.join("a")).unwrap();
        assert_eq!((a.mode() & 0o7777, a.mtime()), (0o750, 1_700_000_000));
        assert_eq!(std::fs::read(u.join("a/x")).unwrap(), b"x");
        assert_eq!(kind_of(&u.join("b")), UpperKind::Entry { opaque: true });
        assert!(u.join("b/y").is_file());
        assert_eq!(kind_of(&u.join("c")), UpperKind::Entry { opaque: true });
        assert!(u.join("c/z").is_file());
        for f in ["f", "g", "k"] {
            assert!(
                std::fs::symlink_metadata(u.join(f)).unwrap().is_file(),
                "{f}"
            );
            assert_eq!(
                kind_of(&u.join(f)),
                UpperKind::Entry { opaque: false },
                "{f}"
            );
        }
        assert_eq!(kind_of(&u.join("h/i")), UpperKind::Whiteout);
        assert_eq!(kind_of(&u.join("h")), UpperKind::Entry { opaque: false });
        assert_eq!(kind_of(&u.join("m")), UpperKind::Entry { opaque: false });
        assert!(!u.join(".wh.plnk").exists() && !u.join(".wh..wh.plnk").exists());
        assert_eq!(
            xattr::get(u.join("k"), "user.keep").unwrap(),
            Some(b"1".to_vec())
        );
        assert!(notes.iter().any(|n| n.contains("aufs")), "{notes:?}");
        assert!(
            notes.iter().filter(|n| n.contains("overlay xattr")).count() == 2,
            "{notes:?}"
        );
    }

    #[test]
    fn upper_mode_refusals() {
        use tar::EntryType as T;
        let err = |entries: &[Ent]| match unpack_upper_bytes(entries).2 {
            Ok(n) => panic!("unpacked: {n:?}"),
            Err(e) => e.to_string(),
        };
        let e = err(&[
            ent(".wh.w", T::Regular),
            Ent {
                link: Some("w"),
                ..ent("l", T::Link)
            },
        ]);
        assert!(e.contains("\"l\"") && e.contains("not found"), "{e}");
        let e = err(&[ent(".wh..wh..opq", T::Regular)]);
        assert!(e.contains("root"), "{e}");
        let e = err(&[
            Ent {
                link: Some("/"),
                ..ent("s", T::Symlink)
            },
            ent("s/.wh..wh..opq", T::Regular),
        ]);
        assert!(e.contains("root"), "{e}");
        let e = err(&[ent("x/.wh..", T::Regular)]);
        assert!(e.contains("whiteout"), "{e}");
        // the destination must be empty
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("layer.tar");
        std::fs::write(&l, layer_of(&[ent("f", T::Regular)])).unwrap();
        let u = t.path().join("u");
        std::fs::create_dir(&u).unwrap();
        std::fs::write(u.join("old"), "").unwrap();
        let e = unpack_upper(&plain(&l), &u, None).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        // the size limit holds as when flattening
        std::fs::remove_file(u.join("old")).unwrap();
        let big = layer_of(&[Ent {
            data: &[7u8; 4096],
            ..ent("big", T::Regular)
        }]);
        std::fs::write(&l, big).unwrap();
        let e = unpack_upper(&plain(&l), &u, Some(1000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max-layer-size"), "{e}");
    }
}

//! Local sources on the host: which files a source selects (include/exclude patterns,
//! follow paths), their content checksum — with a stat cache, so a warm build rereads only
//! files whose metadata changed — and the copy into a snapshot.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rootless::patterns::Filter;
use sha2::{Digest as _, Sha256};

use super::OpsError;

/// The filter of a local source: its include and exclude patterns, with the paths of
/// `local.followpaths` resolved through their symlinks (each link and what it points at)
/// added to the includes — so, as in BuildKit, follow paths alone select only themselves.
pub fn local_filter(
    dir: &Path,
    attrs: &std::collections::BTreeMap<String, String>,
) -> Result<Filter, OpsError> {
    let list = |key: &str| -> Result<Vec<String>, OpsError> {
        match attrs.get(key).map(String::as_str) {
            None | Some("") => Ok(Vec::new()),
            Some(v) => serde_json::from_str(v).map_err(|e| {
                OpsError::Invalid(format!("{key} {v:?}: not a JSON list of strings: {e}"))
            }),
        }
    };
    let mut include = list("local.includepattern")?;
    let follow = list("local.followpaths")?;
    if !follow.is_empty() {
        let mut resolved = std::collections::BTreeSet::new();
        for p in &follow {
            follow_links(dir, p, &mut resolved, 0)?;
        }
        include.extend(resolved);
    }
    Ok(Filter::from_lists(
        &include,
        &list("local.excludepatterns")?,
    ))
}

/// Adds `path` (relative to `root`) to `out`, and for every symlink on the way the link and,
/// recursively, its target with the rest of the path.
fn follow_links(
    root: &Path,
    path: &str,
    out: &mut std::collections::BTreeSet<String>,
    depth: usize,
) -> Result<(), OpsError> {
    if depth > 40 {
        return Err(OpsError::Invalid(format!(
            "local.followpaths: too many levels of symlinks at {path}"
        )));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut current = String::new();
    for (i, part) in parts.iter().enumerate() {
        if !current.is_empty() {
            current.push('/');
        }
        current.push_str(part);
        let rest = parts[i + 1..].join("/");
        // Links this element names (several for a wildcard), as paths relative to the root.
        let mut targets = Vec::new();
        let parent = current.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let candidates: Vec<String> = if part.contains(['*', '?', '[']) {
            match fs::read_dir(root.join(parent)) {
                Ok(rd) => rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| rootless::patterns::glob(part.as_bytes(), n.as_bytes()))
                    .map(|n| {
                        if parent.is_empty() {
                            n
                        } else {
                            format!("{parent}/{n}")
                        }
                    })
                    .collect(),
                Err(_) => Vec::new(),
            }
        } else {
            vec![current.clone()]
        };
        for c in candidates {
            let Ok(link) = fs::read_link(root.join(&c)) else {
                continue;
            };
            let dir_of = c.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let target = if link.is_absolute() {
                link.to_string_lossy().into_owned()
            } else {
                format!("{dir_of}/{}", link.to_string_lossy())
            };
            targets.push(normalize(&target));
        }
        if (rest.is_empty() || !targets.is_empty()) && out.contains(&current) {
            return Ok(());
        }
        if !targets.is_empty() {
            out.insert(current.clone());
            for t in targets {
                let next = if rest.is_empty() {
                    t
                } else {
                    format!("{t}/{rest}")
                };
                follow_links(root, &next, out, depth + 1)?;
            }
            return Ok(());
        }
    }
    if !current.is_empty() {
        out.insert(current);
    }
    Ok(())
}

/// `a/./b/../c` → `a/c`, with `..` stopping at the root.
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    out.join("/")
}

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpsError + '_ {
    move |source| OpsError::Local {
        path: path.to_path_buf(),
        source,
    }
}

/// What the walk keeps of an entry's metadata (not following a symlink): what the checksum,
/// the stat cache and a copy read. Small, so that a walk of thousands of entries moves and
/// frees little memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// `st_mode`: the file type and permission bits.
    mode: u32,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

impl Stat {
    // The field types are the C library's (`off_t`, `time_t`, ...): 64-bit here, casts on
    // others.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &nix::sys::stat::FileStat) -> Stat {
        Stat {
            mode: st.st_mode as u32,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
        }
    }

    fn kind(&self) -> u32 {
        self.mode & 0o170000
    }

    fn is_dir(&self) -> bool {
        self.kind() == 0o040000
    }

    fn is_file(&self) -> bool {
        self.kind() == 0o100000
    }

    fn is_symlink(&self) -> bool {
        self.kind() == 0o120000
    }
}

/// One entry of a tree: its path relative to the root, and its metadata.
struct Entry {
    rel: PathBuf,
    st: Stat,
}

/// The entries of the directory `prefix` below `root`, sorted by name, their paths relative
/// to `root`; each stat'ed relative to the open directory (std's `DirEntry::metadata` takes
/// the whole path with musl: a warm context build took 8.1 instead of 6.1 ms). The names are
/// read into one buffer and each entry's path is its one allocation (a warm context build with
/// glibc 5.86 -> 5.74 ms, with musl 6.09 -> 6.01).
fn list_dir(root: &Path, prefix: &Path) -> Result<std::vec::IntoIter<Entry>, OpsError> {
    use nix::fcntl::{AtFlags, OFlag};
    use std::os::unix::ffi::OsStrExt;
    let dir = root.join(prefix);
    let err = |e: nix::errno::Errno| local_err(&dir)(e.into());
    let mut d = nix::dir::Dir::open(
        &dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err)?;
    // Each name with its NUL, and where it is in `names`.
    let mut names = Vec::with_capacity(4096);
    let mut starts = Vec::new();
    for e in d.iter() {
        let e = e.map_err(err)?;
        let name = e.file_name().to_bytes_with_nul();
        if name != b".\0" && name != b"..\0" {
            starts.push((names.len(), name.len()));
            names.extend_from_slice(name);
        }
    }
    let name_at = |(at, len): (usize, usize)| -> &[u8] { &names[at..at + len] };
    let mut stats = Vec::with_capacity(starts.len());
    for at in starts {
        let name = name_at(at);
        let path = || dir.join(std::ffi::OsStr::from_bytes(&name[..name.len() - 1]));
        let c = std::ffi::CStr::from_bytes_with_nul(name).map_err(|_| OpsError::Local {
            path: path(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        let st = nix::sys::stat::fstatat(&d, c, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| {
            OpsError::Local {
                path: path(),
                source: e.into(),
            }
        })?;
        stats.push((at, Stat::of(&st)));
    }
    stats.sort_by(|a, b| name_at(a.0).cmp(name_at(b.0)));
    let pre = prefix.as_os_str().len();
    let out: Vec<Entry> = stats
        .into_iter()
        .map(|(at, st)| {
            let name = name_at(at);
            let name = std::ffi::OsStr::from_bytes(&name[..name.len() - 1]);
            let mut rel = PathBuf::with_capacity(pre + 1 + name.len());
            rel.push(prefix);
            rel.push(name);
            Entry { rel, st }
        })
        .collect();
    Ok(out.into_iter())
}

/// The entries of a tree (the root excluded) that `filter` keeps, depth first with
/// siblings sorted by name, without following symlinks; a directory the filter drops is not
/// descended into. On a machine with several cores, the subtrees of the first directory
/// that has more than one are walked on as many threads (most of a walk is `statx` calls).
fn walk(root: &Path, filter: &Filter) -> Result<Walk, OpsError> {
    let threads = crate::cores::cores().min(4);
    if threads < 2 {
        return Ok(Walk(vec![walk_below(root, PathBuf::new(), filter)?]));
    }
    walk_split(root, PathBuf::new(), filter, threads, 0)
}

/// A walk's entries in order, in the pieces that the threads which walked them made (not
/// moved into one vector: thousands of entries would be copied once more, into new pages).
#[derive(Default)]
struct Walk(Vec<Vec<Entry>>);

impl Walk {
    fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter().flatten()
    }
}

impl IntoIterator for Walk {
    type Item = Entry;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<Entry>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// Whether `filter` keeps the entry `rel`.
fn kept(filter: &Filter, rel: &Path, is_dir: bool) -> bool {
    filter.is_empty() || filter.keeps(&rel.to_string_lossy(), is_dir)
}

/// The walk below `prefix` (relative to `root`; empty for the root), its entries' paths
/// relative to `root`.
fn walk_below(root: &Path, prefix: PathBuf, filter: &Filter) -> Result<Vec<Entry>, OpsError> {
    let mut out = Vec::new();
    let mut stack = vec![list_dir(root, &prefix)?];
    while let Some(entries) = stack.last_mut() {
        let Some(e) = entries.next() else {
            stack.pop();
            continue;
        };
        let is_dir = e.st.is_dir();
        if !kept(filter, &e.rel, is_dir) {
            continue;
        }
        if is_dir {
            stack.push(list_dir(root, &e.rel)?);
        }
        out.push(e);
    }
    Ok(out)
}

/// Subdirectories' walks, by their index among their siblings.
type Walked = Vec<(usize, Vec<Entry>)>;

/// [`walk_below`] of `prefix`, its subdirectories' walks shared among `threads` threads
/// when it has more than one (the calling thread is one of them: a new thread takes
/// 0.1-0.4 ms to start on a busy two-core machine); down a chain of single subdirectories
/// (at most 8) first.
fn walk_split(
    root: &Path,
    prefix: PathBuf,
    filter: &Filter,
    threads: usize,
    depth: usize,
) -> Result<Walk, OpsError> {
    let mut here = Vec::new();
    for e in list_dir(root, &prefix)? {
        if kept(filter, &e.rel, e.st.is_dir()) {
            here.push(e);
        }
    }
    let dirs: Vec<usize> = (0..here.len()).filter(|&i| here[i].st.is_dir()).collect();
    let mut below: Vec<Walk> = (0..here.len()).map(|_| Walk::default()).collect();
    match dirs.as_slice() {
        [] => {}
        [one] if depth < 8 => {
            below[*one] = walk_split(root, here[*one].rel.clone(), filter, threads, depth + 1)?;
        }
        [one] => below[*one] = Walk(vec![walk_below(root, here[*one].rel.clone(), filter)?]),
        several => {
            // Each thread takes the next subdirectory nobody has taken: a thread that starts
            // late takes fewer.
            let next = std::sync::atomic::AtomicUsize::new(0);
            let share = || -> Result<Walked, OpsError> {
                let mut mine = Vec::new();
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = several.get(k) else {
                        return Ok(mine);
                    };
                    mine.push((i, walk_below(root, here[i].rel.clone(), filter)?));
                }
            };
            let share = &share;
            let done: Vec<Result<Walked, OpsError>> = std::thread::scope(|s| {
                let others: Vec<_> = (1..threads.min(several.len()))
                    .map(|_| s.spawn(share))
                    .collect();
                let mut done = vec![share()];
                done.extend(others.into_iter().map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(OpsError::Invalid(
                            "a thread walking the tree panicked".into(),
                        ))
                    })
                }));
                done
            });
            for walked in done {
                for (i, entries) in walked? {
                    below[i] = Walk(vec![entries]);
                }
            }
        }
    }
    let mut pieces = Vec::new();
    let mut run = Vec::new();
    for (entry, under) in here.into_iter().zip(below) {
        run.push(entry);
        if !under.0.is_empty() {
            pieces.push(std::mem::take(&mut run));
            pieces.extend(under.0);
        }
    }
    pieces.push(run);
    Ok(Walk(pieces))
}

/// What a file looked like when its content was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    /// SHA-256 of the content.
    sha256: [u8; 32],
}

impl Seen {
    /// Whether the entry is old enough to be trusted later: a write within the same tick of
    /// the filesystem's clock would leave its metadata as recorded. Nanosecond timestamps
    /// tick with the kernel's coarse clock (a few milliseconds: 100 ms is ample); times in
    /// whole seconds (FAT keeps two) tick once a second or two. The ctime of a file on a
    /// nanosecond filesystem always has its nanoseconds (only mtime can be set), so the
    /// coarse case is told by both.
    fn settled(&self, now_ns: i64) -> bool {
        const SECOND: i64 = 1_000_000_000;
        let coarse = self.mtime_ns % SECOND == 0 && self.ctime_ns % SECOND == 0;
        let margin = if coarse { 2 * SECOND } else { SECOND / 10 };
        now_ns - self.mtime_ns.max(self.ctime_ns) > margin
    }

    fn matches(&self, st: &Stat) -> bool {
        self.size == st.size
            && self.mtime_ns == st.mtime_ns
            && self.ctime_ns == st.ctime_ns
            && self.ino == st.ino
            && self.dev == st.dev
    }
}

/// The first bytes of a stat cache file (the format's version).
const STAT_CACHE_MAGIC: &[u8] = b"envkit stat cache 1\n";

/// One file of a [`StatCache`]: where its record is in the cache's bytes (its path, `len`
/// bytes at `at`, then the rest of the record), and whether the walk under way met it.
#[derive(Debug, Clone, Copy)]
struct Rec {
    at: usize,
    len: usize,
    met: bool,
}

/// The bytes of a record after its path: size, mtime, ctime, inode, device, SHA-256.
const REC_TAIL: usize = 5 * 8 + 32;

/// Where a file of the walk under way is recorded: an earlier record, or one of this walk.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Old(usize),
    New(usize),
}

/// Content hashes of one directory's files by relative path, remembered with their
/// metadata (size, mtime, ctime, inode, device): a file whose metadata is unchanged is not
/// read again. Kept in the store in a compact binary form, its records in the order of the
/// walk that wrote them: the next walk meets its files in that order, so each is matched to
/// its record by a cursor (no hashing, no allocation per file), and only a file out of place
/// is looked up in an index made then. In memory it is the file's bytes as read, with the
/// place of each record. A missing or damaged cache is simply empty.
#[derive(Debug, Default)]
pub struct StatCache {
    /// The cache file's bytes: the magic, then the records.
    bytes: Vec<u8>,
    recs: Vec<Rec>,
    /// The record the walk under way expects next.
    cursor: usize,
    /// Records by path, made at the first file that is not where the cursor is.
    index: Option<HashMap<Vec<u8>, usize>>,
    /// The walk under way's files, in order, and those it hashed.
    order: Vec<Slot>,
    fresh: Vec<(Vec<u8>, Seen)>,
    dirty: bool,
}

impl StatCache {
    /// The cache file of `dir` seen through `filter`, under `cache_root`.
    pub fn path_for(cache_root: &Path, dir: &Path, filter: &Filter) -> PathBuf {
        let mut h = Sha256::new();
        h.update(dir.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(filter.key().as_bytes());
        cache_root.join(format!("{}.stat", hex::encode(h.finalize())))
    }

    pub fn load(path: &Path) -> StatCache {
        fs::read(path)
            .ok()
            .and_then(Self::decode)
            .unwrap_or_default()
    }

    fn path(&self, r: &Rec) -> &[u8] {
        &self.bytes[r.at..r.at + r.len]
    }

    fn seen(&self, r: &Rec) -> Seen {
        let t = &self.bytes[r.at + r.len..r.at + r.len + REC_TAIL];
        let u = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&t[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&t[40..]);
        Seen {
            size: u(0),
            mtime_ns: u(1) as i64,
            ctime_ns: u(2) as i64,
            ino: u(3),
            dev: u(4),
            sha256,
        }
    }

    /// Appends a record to `out`: path length (u32), path, size, mtime, ctime, inode, device
    /// (8 bytes each, little-endian), SHA-256 (32 bytes).
    fn encode_one(out: &mut Vec<u8>, path: &[u8], s: &Seen) {
        let Ok(len) = u32::try_from(path.len()) else {
            return;
        };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&s.size.to_le_bytes());
        out.extend_from_slice(&s.mtime_ns.to_le_bytes());
        out.extend_from_slice(&s.ctime_ns.to_le_bytes());
        out.extend_from_slice(&s.ino.to_le_bytes());
        out.extend_from_slice(&s.dev.to_le_bytes());
        out.extend_from_slice(&s.sha256);
    }

    /// The cache of a file's bytes (the magic, then records), checked whole.
    fn decode(bytes: Vec<u8>) -> Option<StatCache> {
        if !bytes.starts_with(STAT_CACHE_MAGIC) {
            return None;
        }
        let mut recs = Vec::with_capacity(bytes.len() / (4 + REC_TAIL + 8));
        let mut at = STAT_CACHE_MAGIC.len();
        while at < bytes.len() {
            let head = bytes.get(at..at + 4)?;
            let len = usize::try_from(u32::from_le_bytes(head.try_into().ok()?)).ok()?;
            let end = (at + 4).checked_add(len)?.checked_add(REC_TAIL)?;
            if end > bytes.len() {
                return None;
            }
            recs.push(Rec {
                at: at + 4,
                len,
                met: false,
            });
            at = end;
        }
        Some(StatCache {
            bytes,
            recs,
            ..StatCache::default()
        })
    }

    /// Writes the cache if it changed (atomically; a failure only costs the next build a
    /// rehash). Entries changed too recently are left out ([`Seen::settled`]): a later write
    /// in the same timestamp tick would otherwise go unnoticed.
    pub fn save(&mut self, path: &Path) {
        if !self.dirty {
            return;
        }
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut kept = Vec::with_capacity(self.bytes.len());
        kept.extend_from_slice(STAT_CACHE_MAGIC);
        for r in &self.recs {
            let seen = self.seen(r);
            if seen.settled(now_ns) {
                Self::encode_one(&mut kept, self.path(r), &seen);
            }
        }
        let Some(parent) = path.parent() else { return };
        if fs::create_dir_all(parent).is_ok() {
            // Best effort: a cache that is not written is computed again next time.
            let _ = crate::fsutil::write_atomic(path, &kept, false);
        }
        *self = Self::decode(kept).unwrap_or_default();
        // The JSON form earlier versions kept beside it is not read any more.
        let _ = fs::remove_file(path.with_extension("json"));
    }

    /// A walk begins: every record is expected again, from the first.
    fn begin(&mut self) {
        self.cursor = 0;
        for r in &mut self.recs {
            r.met = false;
        }
        self.order.clear();
        self.fresh.clear();
    }

    /// The record of `key`, where the cursor is or else through the index.
    fn find(&mut self, key: &[u8]) -> Option<usize> {
        if let Some(r) = self.recs.get(self.cursor)
            && self.path(r) == key
        {
            self.cursor += 1;
            return Some(self.cursor - 1);
        }
        if self.index.is_none() {
            let index = self
                .recs
                .iter()
                .enumerate()
                .map(|(i, r)| (self.path(r).to_vec(), i))
                .collect();
            self.index = Some(index);
        }
        let i = *self.index.as_ref()?.get(key)?;
        self.cursor = i + 1;
        // Out of the walk's order: written again in order.
        self.dirty = true;
        Some(i)
    }

    /// The content hash of the file `rel` with metadata `st`, from the cache or by reading it.
    fn hash(&mut self, root: &Path, rel: &Path, st: &Stat) -> Result<[u8; 32], OpsError> {
        let key = rel.as_os_str().as_encoded_bytes();
        if let Some(i) = self.find(key) {
            let seen = self.seen(&self.recs[i]);
            if !self.recs[i].met && seen.matches(st) {
                self.recs[i].met = true;
                self.order.push(Slot::Old(i));
                return Ok(seen.sha256);
            }
        }
        let path = root.join(rel);
        let mut f = fs::File::open(&path).map_err(local_err(&path))?;
        let mut fh = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(local_err(&path))?;
            if n == 0 {
                break;
            }
            fh.update(&buf[..n]);
        }
        let sha256: [u8; 32] = fh.finalize().into();
        self.fresh.push((
            key.to_vec(),
            Seen {
                size: st.size,
                mtime_ns: st.mtime_ns,
                ctime_ns: st.ctime_ns,
                ino: st.ino,
                dev: st.dev,
                sha256,
            },
        ));
        self.order.push(Slot::New(self.fresh.len() - 1));
        Ok(sha256)
    }

    /// The walk is over: the cache now holds exactly its files, in its order (files that are
    /// gone or filtered out are forgotten).
    fn end(&mut self) {
        let changed = !self.fresh.is_empty() || self.order.len() != self.recs.len();
        if changed || self.dirty {
            let mut bytes = Vec::with_capacity(self.bytes.len().max(STAT_CACHE_MAGIC.len()));
            bytes.extend_from_slice(STAT_CACHE_MAGIC);
            for slot in &self.order {
                match *slot {
                    Slot::Old(i) => {
                        let r = &self.recs[i];
                        bytes.extend_from_slice(&self.bytes[r.at - 4..r.at + r.len + REC_TAIL]);
                    }
                    Slot::New(j) => {
                        Self::encode_one(&mut bytes, &self.fresh[j].0, &self.fresh[j].1)
                    }
                }
            }
            *self = Self::decode(bytes).unwrap_or_default();
            self.dirty = true;
        }
        self.order.clear();
        self.fresh.clear();
    }

    /// Plants `sha256` as the content hash of record `i` (tests: a planted hash that is
    /// believed shows the file was not read).
    #[cfg(test)]
    fn plant(&mut self, i: usize, sha256: [u8; 32]) {
        let r = self.recs[i];
        let at = r.at + r.len + 40;
        self.bytes[at..at + 32].copy_from_slice(&sha256);
    }

    /// Makes every record's ctime `by` nanoseconds older (tests).
    #[cfg(test)]
    fn age(&mut self, by: i64) {
        for r in self.recs.clone() {
            let at = r.at + r.len + 16;
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.bytes[at..at + 8]);
            let older = i64::from_le_bytes(w) - by;
            self.bytes[at..at + 8].copy_from_slice(&older.to_le_bytes());
        }
    }
}

/// Content checksum of a directory: names, types, modes, file contents and link targets —
/// what a copy out of it can observe. Owners and times are left out, like BuildKit. Only the
/// part of the tree `filter` keeps counts; file contents come from `cache` when their
/// metadata is unchanged.
pub fn tree_checksum(
    root: &Path,
    filter: &Filter,
    cache: &mut StatCache,
) -> Result<String, OpsError> {
    tree_checksum_listed(root, filter, cache, None)
}

/// [`tree_checksum`], also listing what it hashed per entry into `listing` (for
/// `--explain-cache`: which file of a context changed, and how).
pub fn tree_checksum_listed(
    root: &Path,
    filter: &Filter,
    cache: &mut StatCache,
    listing: Option<&mut super::manifest::Listing>,
) -> Result<String, OpsError> {
    let entries = walk(root, filter)?;
    checksum_entries(root, entries, cache, listing)
}

/// [`tree_checksum_listed`] with the stat cache kept at `stat` (read first: a thread of its
/// own to read it while the tree is walked costs more than the read), saved afterwards.
pub fn tree_checksum_at(
    root: &Path,
    filter: &Filter,
    stat: &Path,
    listing: Option<&mut super::manifest::Listing>,
) -> Result<String, OpsError> {
    let mut cache = StatCache::load(stat);
    let entries = walk(root, filter)?;
    let sum = checksum_entries(root, entries, &mut cache, listing);
    cache.save(stat);
    sum
}

/// The checksum of a walk's entries (see [`tree_checksum`]).
fn checksum_entries(
    root: &Path,
    entries: Walk,
    cache: &mut StatCache,
    mut listing: Option<&mut super::manifest::Listing>,
) -> Result<String, OpsError> {
    let mut h = Sha256::new();
    cache.begin();
    let mut hex_sha = [0u8; 64];
    if let Some(l) = listing.as_deref_mut() {
        l.reserve(entries.len());
    }
    for Entry { rel, st } in entries {
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(st.mode.to_le_bytes());
        let mut what: &[u8] = &[];
        let target;
        if st.is_symlink() {
            let path = root.join(&rel);
            target = fs::read_link(&path).map_err(local_err(&path))?;
            what = target.as_os_str().as_encoded_bytes();
            h.update(what);
        } else if st.is_file() {
            let sha = cache.hash(root, &rel, &st)?;
            // The hex form, as the checksum has always hashed it.
            if hex::encode_to_slice(sha, &mut hex_sha).is_ok() {
                h.update(hex_sha);
                what = &hex_sha;
            }
        }
        h.update([0xff]);
        if let Some(l) = listing.as_deref_mut() {
            l.push(rel.as_os_str().as_encoded_bytes(), st.mode, what);
        }
    }
    cache.end();
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// [`tree_checksum`] of a whole directory, with the stat cache in `cache_root` (the
/// benchmarks' entry point, and what `local://` sources use).
pub fn checksum_dir(dir: &Path, cache_root: Option<&Path>) -> Result<String, OpsError> {
    let filter = Filter::default();
    match cache_root {
        None => tree_checksum(dir, &filter, &mut StatCache::default()),
        Some(root) => {
            let path = StatCache::path_for(root, dir, &filter);
            tree_checksum_at(dir, &filter, &path, None)
        }
    }
}

/// Copies a tree as the host user (inside the namespace the files then belong to uid 0).
pub fn copy_tree(src: &Path, dest: &Path, filter: &Filter) -> Result<(), OpsError> {
    copy_tree_reusing(src, dest, filter, None)
}

/// Files an earlier copy of a source holds unchanged: `files` (relative paths) under `from`.
#[derive(Debug)]
pub struct Reuse {
    pub from: PathBuf,
    pub files: std::collections::HashSet<Vec<u8>>,
}

/// [`copy_tree`], taking each file `reuse` names as a hard link to the earlier copy's when
/// that is still a regular file of the source file's size (a copy otherwise, or when the link
/// fails). A linked file's mode is not set again: it is the source's already, and the inode
/// is the earlier snapshot's too.
pub fn copy_tree_reusing(
    src: &Path,
    dest: &Path,
    filter: &Filter,
    reuse: Option<&Reuse>,
) -> Result<(), OpsError> {
    for Entry { rel, st } in walk(src, filter)? {
        let from = src.join(&rel);
        let to = dest.join(&rel);
        if st.is_dir() {
            fs::create_dir(&to).map_err(local_err(&to))?;
        } else if st.is_symlink() {
            let target = fs::read_link(&from).map_err(local_err(&from))?;
            std::os::unix::fs::symlink(target, &to).map_err(local_err(&to))?;
            continue;
        } else if st.is_file() {
            if let Some(r) = reuse
                && r.files.contains(rel.as_os_str().as_encoded_bytes())
            {
                let earlier = r.from.join(&rel);
                let same =
                    fs::symlink_metadata(&earlier).is_ok_and(|e| e.is_file() && e.len() == st.size);
                if same && fs::hard_link(&earlier, &to).is_ok() {
                    continue;
                }
            }
            if st.size >= rootless::WRITEBACK_MIN {
                // A large file's writeback starts now, so that the commit's sync finds it
                // on its way to the disk.
                let mut src = fs::File::open(&from).map_err(local_err(&from))?;
                let mut dst = fs::File::create_new(&to).map_err(local_err(&to))?;
                std::io::copy(&mut src, &mut dst).map_err(local_err(&to))?;
                rootless::start_writeback(&dst);
            } else {
                fs::copy(&from, &to).map_err(local_err(&to))?;
            }
        } else {
            // Sockets, fifos and devices have no place in a build context.
            continue;
        }
        fs::set_permissions(&to, fs::Permissions::from_mode(st.mode & 0o7777))
            .map_err(local_err(&to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn checksum_sees_content_and_modes_but_not_times() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/b"), b"2").unwrap();
        let c1 = tree_checksum(d.path(), &Filter::default(), &mut StatCache::default()).unwrap();
        let f = fs::File::options()
            .write(true)
            .open(d.path().join("a"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            tree_checksum(d.path(), &Filter::default(), &mut StatCache::default()).unwrap(),
            c1
        );
        fs::write(d.path().join("sub/b"), b"3").unwrap();
        let c2 = tree_checksum(d.path(), &Filter::default(), &mut StatCache::default()).unwrap();
        assert_ne!(c1, c2);
        fs::set_permissions(d.path().join("a"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(
            tree_checksum(d.path(), &Filter::default(), &mut StatCache::default()).unwrap(),
            c2
        );
    }

    #[test]
    fn copy_tree_keeps_files_links_and_modes() {
        let s = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(s.path().join("dir")).unwrap();
        fs::write(s.path().join("dir/x"), b"x").unwrap();
        fs::set_permissions(s.path().join("dir/x"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("dir/x", s.path().join("link")).unwrap();
        // A file large enough to start its writeback as it is copied.
        let big: Vec<u8> = (0..rootless::WRITEBACK_MIN + 4097)
            .map(|i| (i % 253) as u8)
            .collect();
        fs::write(s.path().join("dir/big"), &big).unwrap();
        fs::set_permissions(s.path().join("dir/big"), fs::Permissions::from_mode(0o640)).unwrap();
        copy_tree(s.path(), d.path(), &Filter::default()).unwrap();
        assert_eq!(fs::read(d.path().join("dir/x")).unwrap(), b"x");
        assert!(fs::read(d.path().join("dir/big")).unwrap() == big);
        let mode = fs::metadata(d.path().join("dir/big")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let mode = fs::metadata(d.path().join("dir/x")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o751);
        assert_eq!(
            fs::read_link(d.path().join("link")).unwrap(),
            Path::new("dir/x")
        );
        assert_eq!(
            tree_checksum(s.path(), &Filter::default(), &mut StatCache::default()).unwrap(),
            tree_checksum(d.path(), &Filter::default(), &mut StatCache::default()).unwrap()
        );
    }

    #[test]
    fn a_copy_links_the_files_an_earlier_copy_holds_unchanged() {
        let s = tempfile::tempdir().unwrap();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::create_dir(s.path().join("dir")).unwrap();
        for (name, body) in [("dir/same", "same"), ("dir/changed", "v1"), ("grew", "ab")] {
            fs::write(s.path().join(name), body).unwrap();
        }
        fs::set_permissions(s.path().join("dir/same"), fs::Permissions::from_mode(0o640)).unwrap();
        copy_tree(s.path(), d1.path(), &Filter::default()).unwrap();
        fs::write(s.path().join("dir/changed"), "v2").unwrap();
        fs::write(s.path().join("grew"), "abc").unwrap();
        // `grew` is named but no longer has the earlier copy's size: copied, not linked.
        let reuse = Reuse {
            from: d1.path().to_path_buf(),
            files: [&b"dir/same"[..], b"grew"]
                .iter()
                .map(|p| p.to_vec())
                .collect(),
        };
        copy_tree_reusing(s.path(), d2.path(), &Filter::default(), Some(&reuse)).unwrap();
        let ino = |d: &Path, p: &str| fs::metadata(d.join(p)).unwrap().ino();
        assert_eq!(ino(d1.path(), "dir/same"), ino(d2.path(), "dir/same"));
        assert_ne!(ino(d1.path(), "dir/changed"), ino(d2.path(), "dir/changed"));
        assert_ne!(ino(d1.path(), "grew"), ino(d2.path(), "grew"));
        assert_eq!(fs::read(d2.path().join("dir/changed")).unwrap(), b"v2");
        assert_eq!(fs::read(d2.path().join("grew")).unwrap(), b"abc");
        assert_eq!(fs::read(d1.path().join("dir/changed")).unwrap(), b"v1");
        // The new copy is the source, file for file.
        assert_eq!(
            tree_checksum(s.path(), &Filter::default(), &mut StatCache::default()).unwrap(),
            tree_checksum(d2.path(), &Filter::default(), &mut StatCache::default()).unwrap()
        );
    }

    /// The checksum of a small tree, computed independently (Python's hashlib over names,
    /// modes, hex content hashes and link targets): cache keys of earlier versions hold.
    #[test]
    fn the_checksum_of_a_known_tree_is_pinned() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        fs::set_permissions(d.path().join("a"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(d.path().join("d")).unwrap();
        fs::set_permissions(d.path().join("d"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("../a", d.path().join("d/l")).unwrap();
        let want = "sha256:c129c48d39e3a3b10533ff84e0adcd699a5283563a3d1dacf0510de979067bed";
        let mut cache = StatCache::default();
        assert_eq!(
            tree_checksum(d.path(), &Filter::default(), &mut cache).unwrap(),
            want
        );
        assert_eq!(
            tree_checksum(d.path(), &Filter::default(), &mut cache).unwrap(),
            want
        );
    }

    /// The walk (directory by directory, stat'ed relative to each) visits what walkdir's
    /// sorted walk did, in its order, so checksums and cache keys did not change with it.
    #[test]
    fn the_walk_keeps_walkdirs_sorted_order() {
        let s = tempfile::tempdir().unwrap();
        for d in ["dir/sub", "dir2", "empty", "Dir"] {
            fs::create_dir_all(s.path().join(d)).unwrap();
        }
        for f in [
            "b",
            "a",
            "A",
            ".hidden",
            "a.b",
            "a-b",
            "dir/x",
            "dir/sub/y",
            "dir2/z",
            "é",
            "Dir/q",
        ] {
            fs::write(s.path().join(f), f.as_bytes()).unwrap();
        }
        std::os::unix::fs::symlink("dir", s.path().join("ln")).unwrap();
        let reference = |filter: &Filter| -> Vec<PathBuf> {
            walkdir::WalkDir::new(s.path())
                .follow_links(false)
                .sort_by_file_name()
                .min_depth(1)
                .into_iter()
                .filter_entry(|e| {
                    let rel = e.path().strip_prefix(s.path()).unwrap();
                    filter.is_empty()
                        || filter.keeps(&rel.to_string_lossy(), e.file_type().is_dir())
                })
                .map(|e| {
                    e.unwrap()
                        .path()
                        .strip_prefix(s.path())
                        .unwrap()
                        .to_path_buf()
                })
                .collect()
        };
        for filter in [
            Filter::default(),
            Filter::from_lists(&[], &["dir/sub".into(), "*.b".into()]),
            Filter::from_lists(&["dir".into(), "a".into()], &[]),
        ] {
            let got: Vec<PathBuf> = walk(s.path(), &filter)
                .unwrap()
                .into_iter()
                .map(|e| e.rel)
                .collect();
            assert_eq!(got, reference(&filter));
            // Shared among threads, or on one: the same entries in the same order.
            let serial = walk_below(s.path(), PathBuf::new(), &filter).unwrap();
            let serial: Vec<PathBuf> = serial.into_iter().map(|e| e.rel).collect();
            assert_eq!(serial, got);
            for threads in [2, 3, 8] {
                let split = walk_split(s.path(), PathBuf::new(), &filter, threads, 0).unwrap();
                let split: Vec<PathBuf> = split.into_iter().map(|e| e.rel).collect();
                assert_eq!(split, got, "{threads} threads");
            }
        }
        // Down a chain of single directories first, then split: the same as walkdir.
        let chain = tempfile::tempdir().unwrap();
        for d in ["a/b/c/x", "a/b/c/y/z", "a/b/c/w"] {
            fs::create_dir_all(chain.path().join(d)).unwrap();
            fs::write(chain.path().join(d).join("f"), d).unwrap();
        }
        let got: Vec<PathBuf> = walk_split(chain.path(), PathBuf::new(), &Filter::default(), 2, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        let want: Vec<PathBuf> = walkdir::WalkDir::new(chain.path())
            .sort_by_file_name()
            .min_depth(1)
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(chain.path())
                    .unwrap()
                    .to_path_buf()
            })
            .collect();
        assert_eq!(got, want);
        let ln = walk(s.path(), &Filter::default()).unwrap();
        let ln = ln.iter().find(|e| e.rel == Path::new("ln")).unwrap();
        assert!(ln.st.is_symlink(), "links are not followed");
    }

    #[test]
    fn filters_apply_to_checksum_and_copy() {
        let s = tempfile::tempdir().unwrap();
        fs::create_dir_all(s.path().join("src/deep")).unwrap();
        fs::create_dir(s.path().join("target")).unwrap();
        fs::write(s.path().join("src/deep/a.rs"), b"a").unwrap();
        fs::write(s.path().join("src/b.tmp"), b"b").unwrap();
        fs::write(s.path().join("target/big"), b"big").unwrap();
        fs::write(s.path().join("Cargo.toml"), b"c").unwrap();
        let filter = Filter::from_lists(&[], &["target".into(), "**/*.tmp".into()]);
        let before = tree_checksum(s.path(), &filter, &mut StatCache::default()).unwrap();
        fs::write(s.path().join("target/big"), b"changed").unwrap();
        fs::write(s.path().join("src/c.tmp"), b"new").unwrap();
        assert_eq!(
            tree_checksum(s.path(), &filter, &mut StatCache::default()).unwrap(),
            before,
            "changes under excluded paths do not change the key"
        );
        let d = tempfile::tempdir().unwrap();
        copy_tree(s.path(), d.path(), &filter).unwrap();
        assert!(d.path().join("src/deep/a.rs").is_file());
        assert!(d.path().join("Cargo.toml").is_file());
        assert!(!d.path().join("target").exists());
        assert!(!d.path().join("src/b.tmp").exists());
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("local.includepattern".to_string(), "not json".to_string());
        assert!(local_filter(s.path(), &attrs).is_err());
    }

    #[test]
    fn follow_paths_select_links_and_their_targets() {
        let s = tempfile::tempdir().unwrap();
        fs::create_dir_all(s.path().join("real/dir")).unwrap();
        fs::write(s.path().join("real/dir/Dockerfile"), b"FROM x").unwrap();
        fs::write(s.path().join("other"), b"o").unwrap();
        std::os::unix::fs::symlink("real/dir", s.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/real/dir/Dockerfile", s.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("loop2", s.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", s.path().join("loop2")).unwrap();
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert(
            "local.followpaths".to_string(),
            r#"["link/Dockerfile","abs","loop1"]"#.to_string(),
        );
        let f = local_filter(s.path(), &attrs).unwrap();
        let kept: Vec<String> = walk(s.path(), &f)
            .unwrap()
            .iter()
            .map(|p| p.rel.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            kept,
            [
                "abs",
                "link",
                "loop1",
                "loop2",
                "real",
                "real/dir",
                "real/dir/Dockerfile"
            ],
            "only the follow paths, their links and targets"
        );
        assert_eq!(normalize("a/./b/../c"), "a/c");
        assert_eq!(normalize("/../x"), "x");
    }

    #[test]
    fn entries_settle_after_a_tick_of_their_filesystems_clock() {
        const S: i64 = 1_000_000_000;
        let seen = |mtime_ns, ctime_ns| Seen {
            size: 1,
            mtime_ns,
            ctime_ns,
            ino: 1,
            dev: 1,
            sha256: [0; 32],
        };
        let now = 1_000 * S + 500_000_000;
        // Nanosecond times: trusted once 100 ms old (by the later of mtime and ctime).
        assert!(seen(now - S / 5, now - S / 5 + 7).settled(now));
        assert!(!seen(now - S / 20, now - S / 20).settled(now));
        assert!(!seen(now - 5 * S, now - S / 20).settled(now));
        // A set mtime in whole seconds, but a nanosecond ctime: the fine clock's rule.
        assert!(seen(now - 9 * S - S / 2, now - S / 5 + 1).settled(now));
        // Whole seconds in both: two seconds.
        assert!(!seen(999 * S, 999 * S).settled(now));
        assert!(seen(998 * S, 998 * S).settled(now));
    }

    #[test]
    fn the_stat_cache_is_kept_in_the_walks_order_and_found_out_of_it() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("b")).unwrap();
        for f in ["a", "b/c", "b/d", "e"] {
            fs::write(d.path().join(f), f).unwrap();
        }
        let none = Filter::default();
        let fresh = || tree_checksum(d.path(), &none, &mut StatCache::default()).unwrap();
        let paths = |c: &StatCache| -> Vec<String> {
            c.recs
                .iter()
                .map(|r| String::from_utf8_lossy(c.path(r)).into_owned())
                .collect()
        };
        let truth = fresh();
        let mut cache = StatCache::default();
        assert_eq!(tree_checksum(d.path(), &none, &mut cache).unwrap(), truth);
        assert_eq!(paths(&cache), ["a", "b/c", "b/d", "e"]);
        assert!(cache.dirty);
        cache.dirty = false;
        // Met in order again: nothing to write.
        assert_eq!(tree_checksum(d.path(), &none, &mut cache).unwrap(), truth);
        assert!(!cache.dirty);
        // Records out of the walk's order (as an older envkit kept them) are still found —
        // planted hashes are believed — and the cache is put back in order.
        cache.recs.reverse();
        for i in 0..cache.recs.len() {
            cache.plant(i, [7; 32]);
        }
        assert_ne!(tree_checksum(d.path(), &none, &mut cache).unwrap(), truth);
        assert_eq!(paths(&cache), ["a", "b/c", "b/d", "e"]);
        assert!(cache.dirty);
        // A file added between two records and one removed: the tree as it is now.
        let mut cache = StatCache::default();
        tree_checksum(d.path(), &none, &mut cache).unwrap();
        fs::write(d.path().join("b/cc"), "new").unwrap();
        fs::remove_file(d.path().join("b/d")).unwrap();
        cache.dirty = false;
        assert_eq!(tree_checksum(d.path(), &none, &mut cache).unwrap(), fresh());
        assert_eq!(paths(&cache), ["a", "b/c", "b/cc", "e"]);
        assert!(cache.dirty);
    }

    #[test]
    fn the_stat_cache_skips_unchanged_files_and_notices_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("big");
        fs::write(&f, b"content").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let none = Filter::default();
        let truth = tree_checksum(d.path(), &none, &mut StatCache::default()).unwrap();
        let mut cache = StatCache::default();
        assert_eq!(tree_checksum(d.path(), &none, &mut cache).unwrap(), truth);
        // A planted hash for unchanged metadata is believed: the file was not read.
        cache.plant(0, [0; 32]);
        assert_ne!(tree_checksum(d.path(), &none, &mut cache).unwrap(), truth);
        // New content (and so new metadata) is read again.
        fs::write(&f, b"content2").unwrap();
        let changed = tree_checksum(d.path(), &none, &mut cache).unwrap();
        assert_eq!(
            changed,
            tree_checksum(d.path(), &none, &mut StatCache::default()).unwrap()
        );
        // Saved and loaded; entries younger than a second are not kept.
        let store = d.path().join("cache.stat");
        cache.save(&store);
        assert!(
            StatCache::load(&store).recs.is_empty(),
            "a fresh write was cached"
        );
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // ctime is now too: only entries whose ctime is old survive, so plant one.
        let mut c = StatCache::default();
        tree_checksum(d.path(), &none, &mut c).unwrap();
        c.age(60_000_000_000);
        c.dirty = true;
        c.save(&store);
        assert_eq!(StatCache::load(&store).recs.len(), 1);
        // A damaged cache is an empty one: cut short, or of another format.
        let whole = fs::read(&store).unwrap();
        fs::write(&store, &whole[..whole.len() - 5]).unwrap();
        assert!(StatCache::load(&store).recs.is_empty());
        fs::write(&store, b"{not json").unwrap();
        assert!(StatCache::load(&store).recs.is_empty());
        fs::write(&store, &whole).unwrap();
        assert_eq!(StatCache::load(&store).recs.len(), 1);
    }
}

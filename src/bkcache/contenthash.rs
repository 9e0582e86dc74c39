//! Content checksums of files and trees as BuildKit v0.32.2 computes them (its
//! `cache/contenthash` package): the digests that stand in a copy's or a mount's cache key for
//! the bytes it reads from an input.
//!
//! A file's digest is SHA-256 over a tarsum-v1 style header (`name`, `mode`, `uid`, `gid`,
//! `size`, `typeflag`, `linkname`, `uname`, `gname`, `devmajor`, `devminor`, then the kept
//! extended attributes, each written as its label followed by its value, no separators)
//! followed by the file's bytes. The modification time is not part of it. A directory has two
//! digests: its header (its own metadata, hashed like a file) and its contents, SHA-256 over
//! `\0<name><digest>` pairs of the header and of its children in byte order of their names.
//!
//! BuildKit keeps these records in a radix tree keyed by the path with every `/` turned into a
//! NUL byte (`/a/b` is `\0a\0b`; a directory's header is its key plus one more NUL); the walks
//! here run over the same keys in a sorted map, so that orderings and look-ups agree with it
//! byte for byte.
//!
//! Trees come in two kinds ([`Origin`]): the snapshot of a local source, whose records BuildKit
//! fills in while receiving the files (its root's header is then the digest of nothing), and
//! any other snapshot, which BuildKit scans from disk when asked (the root's header is then the
//! root directory's own metadata).

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Bound;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The most symlinks one path look-up follows.
const MAX_SYMLINKS: usize = 255;

/// A failure to compute a content checksum.
#[derive(Debug, thiserror::Error)]
pub enum ContentHashError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?}: not found")]
    NotFound(String),
    #[error("{0:?}: too many links")]
    TooManyLinks(String),
    #[error("required path {0:?} not found")]
    RequiredPath(String),
    #[error("invalid pattern {0:?}")]
    BadPattern(String),
    /// A pattern whose regular expression (BuildKit compiles include/exclude patterns to Go
    /// regexps) uses syntax this port does not evaluate.
    #[error("pattern {pattern:?}: {why} is not supported")]
    UnsupportedPattern { pattern: String, why: &'static str },
}

type Result<T> = std::result::Result<T, ContentHashError>;

fn io_err<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> ContentHashError + 'p {
    move |source| ContentHashError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a copy (or mount) reads from an input: BuildKit's `opsutils.Selector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub path: String,
    pub follow_links: bool,
    /// Set only when the path has wildcard characters (a FileOp's copy sets it only then).
    pub wildcard: bool,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub required_paths: Vec<String>,
}

/// The container's view of an owner: BuildKit hashes the uid/gid as seen inside the build's
/// user namespace (for a local source: as the client sent them).
pub trait IdMap {
    fn to_container(&self, uid: u32, gid: u32) -> (u32, u32);
}

/// Owners as they are on disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct SameIds;

impl IdMap for SameIds {
    fn to_container(&self, uid: u32, gid: u32) -> (u32, u32) {
        (uid, gid)
    }
}

/// Every file owned by one uid/gid: `AllOwnedBy(0, 0)` is what BuildKit's Go client sends for
/// every file of a local context, whoever owns it.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllOwnedBy(pub u32, pub u32);

impl IdMap for AllOwnedBy {
    fn to_container(&self, _uid: u32, _gid: u32) -> (u32, u32) {
        (self.0, self.1)
    }
}

/// Reads a path's extended attributes (name, value), without following a final symlink.
/// BuildKit hashes all of them except `security.*` (but `security.capability`) and `system.*`.
pub trait Xattrs {
    fn list(&self, path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// Files have no extended attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoXattrs;

impl Xattrs for NoXattrs {
    fn list(&self, _path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }
}

/// How BuildKit came by the records of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The snapshot of a local source (`root` holds what the client sent, after its
    /// include/exclude filtering): every path is recorded while receiving, and the root's
    /// header is the digest of nothing. An empty context has no records; BuildKit then scans
    /// its fresh snapshot, whose root is a `0755` directory owned by root, whatever `root`'s
    /// own metadata. BuildKit's Go client sends every file as owned by 0:0, so use
    /// [`AllOwnedBy`]`(0, 0)` as the [`IdMap`] for what it would have sent.
    LocalSource,
    /// Any other snapshot (an image's, an exec's or a FileOp's result): scanned from disk.
    Snapshot,
}

/// A tree to checksum.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// The host directory holding the tree (the snapshot's root).
    pub root: &'a Path,
    pub origin: Origin,
    pub ids: &'a dyn IdMap,
    pub xattrs: &'a dyn Xattrs,
}

/// BuildKit's checksum of `sel` inside `src`, as `sha256:<hex>` (one selector's digest in
/// `opsutils.NewContentHashFunc`: the path is first joined onto `/`).
pub fn checksum(src: &Source, sel: &Selector) -> std::result::Result<String, ContentHashError> {
    Hasher::new(*src)?.checksum(sel)
}

/// What `opsutils.NewContentHashFunc` gives for `sels` (already deduplicated and sorted as
/// the op does; none means one selector of the whole tree).
pub fn content_hash(
    src: &Source,
    sels: &[Selector],
) -> std::result::Result<String, ContentHashError> {
    Hasher::new(*src)?.content_hash(sels)
}

/// The digest (`sha256:<hex>`) of `data`.
fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn finish(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

// ---------------------------------------------------------------------------------------------
// Go's path package, on byte strings.

/// Go's `path.Clean`.
fn clean(p: &[u8]) -> Vec<u8> {
    if p.is_empty() {
        return b".".to_vec();
    }
    let rooted = p[0] == b'/';
    let n = p.len();
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let (mut r, mut dotdot) = (0, 0);
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        if p[r] == b'/' || (p[r] == b'.' && (r + 1 == n || p[r + 1] == b'/')) {
            r += 1;
        } else if p[r] == b'.' && p[r + 1] == b'.' && (r + 2 == n || p[r + 2] == b'/') {
            r += 2;
            if out.len() > dotdot {
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && p[r] != b'/' {
                out.push(p[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        return b".".to_vec();
    }
    out
}

/// Go's `path.Join`.
fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut s: Vec<u8> = Vec::new();
    let mut any = false;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        if any {
            s.push(b'/');
        }
        s.extend_from_slice(p);
        any = true;
    }
    if !any {
        return Vec::new();
    }
    clean(&s)
}

/// Go's `path.Base`.
fn base(p: &[u8]) -> &[u8] {
    if p.is_empty() {
        return b".";
    }
    let mut p = p;
    while p.len() > 1 && p[p.len() - 1] == b'/' {
        p = &p[..p.len() - 1];
    }
    if p == b"/" {
        return b"/";
    }
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// Go's `path.Dir` (the same as `filepath.Dir` on unix).
fn dir(p: &[u8]) -> Vec<u8> {
    let i = p.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
    clean(&p[..i])
}

/// BuildKit's `keyPath`: absolute and clean, the root being the empty path.
fn key_path(p: &[u8]) -> Vec<u8> {
    let p = join(&[b"/", p]);
    if p == b"/" { Vec::new() } else { p }
}

fn path_to_key(p: &[u8]) -> Vec<u8> {
    p.iter().map(|b| if *b == b'/' { 0 } else { *b }).collect()
}

fn key_to_path(k: &[u8]) -> Vec<u8> {
    k.iter().map(|b| if *b == 0 { b'/' } else { *b }).collect()
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn host_path(root: &Path, p: &[u8]) -> PathBuf {
    let rel: Vec<u8> = p.iter().copied().skip_while(|b| *b == b'/').collect();
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(&rel))
    }
}

/// One UTF-8 character of `s` as Go decodes it: an invalid byte is U+FFFD of width one.
fn decode_rune(s: &[u8]) -> (char, usize) {
    let n = match s.first() {
        None => return ('\u{fffd}', 0),
        Some(b) if *b < 0x80 => return (*b as char, 1),
        Some(b) if b & 0xe0 == 0xc0 => 2,
        Some(b) if b & 0xf0 == 0xe0 => 3,
        Some(b) if b & 0xf8 == 0xf0 => 4,
        Some(_) => return ('\u{fffd}', 1),
    };
    match s.get(..n).and_then(|c| std::str::from_utf8(c).ok()) {
        Some(c) => (c.chars().next().unwrap_or('\u{fffd}'), n),
        None => ('\u{fffd}', 1),
    }
}

// ---------------------------------------------------------------------------------------------
// One file's digest.

/// The metadata BuildKit puts in a file's header (what Go's `tar.FileInfoHeader` keeps of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileHeader {
    /// Permission bits with setuid/setgid/sticky (`0o7777`); symlinks have `0o777` on.
    mode: u32,
    uid: u32,
    gid: u32,
    /// Regular files only.
    size: u64,
    typeflag: u8,
    linkname: Vec<u8>,
    devmajor: u32,
    devminor: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl FileHeader {
    /// The bytes hashed ahead of a file's contents.
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.linkname.len());
        out.extend_from_slice(b"name");
        out.extend_from_slice(format!("mode{}", self.mode).as_bytes());
        out.extend_from_slice(format!("uid{}", self.uid).as_bytes());
        out.extend_from_slice(format!("gid{}", self.gid).as_bytes());
        out.extend_from_slice(format!("size{}", self.size).as_bytes());
        out.extend_from_slice(b"typeflag");
        out.push(self.typeflag);
        out.extend_from_slice(b"linkname");
        out.extend_from_slice(&self.linkname);
        out.extend_from_slice(b"uname");
        out.extend_from_slice(b"gname");
        out.extend_from_slice(format!("devmajor{}", self.devmajor).as_bytes());
        out.extend_from_slice(format!("devminor{}", self.devminor).as_bytes());
        let mut kept: Vec<&(Vec<u8>, Vec<u8>)> = self
            .xattrs
            .iter()
            .filter(|(k, _)| {
                k == b"security.capability"
                    || (!k.starts_with(b"security.") && !k.starts_with(b"system."))
            })
            .collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        kept.dedup_by(|a, b| a.0 == b.0);
        for (k, v) in kept {
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// Go's `unix.Major` / `unix.Minor` (glibc's encoding).
fn major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev & 0x0000_0000_000f_ff00) >> 8) | ((dev & 0xffff_f000_0000_0000) >> 32);
    let minor = (dev & 0x0000_0000_0000_00ff) | ((dev & 0x0000_0fff_fff0_0000) >> 12);
    (major as u32, minor as u32)
}

/// The digest of the file, directory (its header), symlink or node at `fp` (`NewFileHash`
/// plus the contents of a non-empty regular file).
fn file_digest(fp: &Path, ids: &dyn IdMap, xattrs: &dyn Xattrs) -> Result<String> {
    let md = std::fs::symlink_metadata(fp).map_err(io_err("lstat", fp))?;
    let st_mode = md.mode();
    let fmt = st_mode & S_IFMT;
    let (uid, gid) = ids.to_container(md.uid(), md.gid());
    let mut hdr = FileHeader {
        mode: st_mode & 0o7777,
        uid,
        gid,
        ..FileHeader::default()
    };
    match fmt {
        S_IFDIR => hdr.typeflag = b'5',
        S_IFLNK => {
            hdr.typeflag = b'2';
            hdr.mode |= 0o777;
            hdr.linkname = std::fs::read_link(fp)
                .map_err(io_err("readlink", fp))?
                .into_os_string()
                .into_vec();
        }
        S_IFCHR | S_IFBLK => {
            hdr.typeflag = if fmt == S_IFCHR { b'3' } else { b'4' };
            (hdr.devmajor, hdr.devminor) = major_minor(md.rdev());
        }
        S_IFIFO => hdr.typeflag = b'6',
        // Sockets lose their type bit before the header is made: a regular file of their size.
        S_IFREG | S_IFSOCK => {
            hdr.typeflag = b'0';
            hdr.size = md.size();
        }
        _ => hdr.typeflag = b'0',
    }
    hdr.xattrs = xattrs.list(fp).map_err(io_err("listxattr", fp))?;
    let mut h = Sha256::new();
    h.update(hdr.bytes());
    if fmt == S_IFREG && md.size() > 0 {
        let mut f = std::fs::File::open(fp).map_err(io_err("open", fp))?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read", fp)(e)),
            };
            h.update(&buf[..n]);
        }
    }
    Ok(finish(h))
}

// ---------------------------------------------------------------------------------------------
// The tree of records.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    /// A directory's contents.
    Dir,
    /// A directory's own metadata (key: the directory's plus a NUL).
    DirHeader,
    Symlink,
}

#[derive(Debug, Clone)]
struct Record {
    kind: Kind,
    digest: Option<String>,
    linkname: Vec<u8>,
}

impl Record {
    fn new(kind: Kind) -> Record {
        Record {
            kind,
            digest: None,
            linkname: Vec::new(),
        }
    }
}

/// Lexical path prefixes (BuildKit's `pathSet`).
#[derive(Default)]
struct PathSet(Vec<Vec<u8>>);

impl PathSet {
    fn norm(p: &[u8]) -> Vec<u8> {
        let mut p = join(&[b"/", p]);
        if p != b"/" {
            p.push(b'/');
        }
        p
    }

    fn add(&mut self, p: &[u8]) {
        if !self.includes(p) {
            self.0.push(Self::norm(p));
        }
    }

    fn includes(&self, p: &[u8]) -> bool {
        let p = Self::norm(p);
        self.0.iter().any(|x| p.starts_with(x))
    }
}

/// One path that a filtered or wildcard checksum takes in.
struct Included {
    path: Vec<u8>,
    kind: Kind,
    digest: String,
    included: bool,
    include_info: MatchInfo,
    exclude_info: MatchInfo,
    follow_links: bool,
}

/// BuildKit's cache context of one snapshot: its records, filled in as checksums need them.
/// Keep one per tree to reuse digests across selectors.
pub struct Hasher<'a> {
    src: Source<'a>,
    tree: BTreeMap<Vec<u8>, Record>,
}

impl<'a> Hasher<'a> {
    /// A local source's records are all made at once (as receiving the files does); a
    /// snapshot's are scanned on demand.
    pub fn new(src: Source<'a>) -> std::result::Result<Hasher<'a>, ContentHashError> {
        let mut hs = Hasher {
            src,
            tree: BTreeMap::new(),
        };
        if src.origin == Origin::LocalSource {
            let mut rd = std::fs::read_dir(src.root).map_err(io_err("read dir", src.root))?;
            let empty = rd.next().is_none();
            // Receiving files records a stand-in header for the root; with nothing received,
            // BuildKit scans the snapshot, whose root is a fresh directory (0755, root's).
            let root_header = if empty {
                let hdr = FileHeader {
                    mode: 0o755,
                    typeflag: b'5',
                    ..FileHeader::default()
                };
                digest_of(&hdr.bytes())
            } else {
                digest_of(b"")
            };
            hs.tree.insert(Vec::new(), Record::new(Kind::Dir));
            let mut hdr = Record::new(Kind::DirHeader);
            hdr.digest = Some(root_header);
            hs.tree.insert(vec![0], hdr);
            let root = src.root.to_path_buf();
            hs.walk(&root, &root)?;
        }
        Ok(hs)
    }

    /// The digest of one selector.
    pub fn checksum(&mut self, sel: &Selector) -> std::result::Result<String, ContentHashError> {
        let p = join(&[b"/", sel.path.as_bytes()]);
        if !sel.wildcard && sel.include_patterns.is_empty() && sel.exclude_patterns.is_empty() {
            return self.lazy_checksum(&p, sel.follow_links);
        }
        let (prefix, mut included) = self.included_paths(&p, sel)?;
        for w in included.iter_mut() {
            if w.follow_links && w.kind == Kind::Symlink {
                let path = w.path.clone();
                w.digest = self.lazy_checksum(&path, sel.follow_links)?;
                w.kind = Kind::File;
            }
        }
        if included.is_empty() {
            return Ok(digest_of(b""));
        }
        if included.len() == 1 && base(&p) == base(&included[0].path) {
            return Ok(included[0].digest.clone());
        }
        let mut h = Sha256::new();
        for w in &included {
            let rel = w.path.strip_prefix(prefix.as_slice()).unwrap_or(&w.path);
            let mut k = path_to_key(rel);
            if k.is_empty() {
                k.push(0);
            }
            h.update(&k);
            h.update(w.digest.as_bytes());
        }
        Ok(finish(h))
    }

    /// The digest of a list of selectors, as `NewContentHashFunc` combines them.
    pub fn content_hash(
        &mut self,
        sels: &[Selector],
    ) -> std::result::Result<String, ContentHashError> {
        let default = [Selector::default()];
        let sels = if sels.is_empty() { &default[..] } else { sels };
        let mut all: Vec<u8> = Vec::new();
        for (i, s) in sels.iter().enumerate() {
            if i > 0 {
                all.push(0);
            }
            all.extend_from_slice(self.checksum(s)?.as_bytes());
        }
        Ok(digest_of(&all))
    }

    fn lazy_checksum(&mut self, p: &[u8], follow_trailing: bool) -> Result<String> {
        let p = key_path(p);
        let k = path_to_key(&p);
        let (_, cr) = self.follow_links(&k, follow_trailing, &mut |_, _| {})?;
        if let Some(Record {
            digest: Some(d), ..
        }) = cr
        {
            return Ok(d);
        }
        if self.needs_scan(&p, follow_trailing)? {
            self.scan_path(&p, follow_trailing)?;
        }
        let cr = self.record_checksum(&k, follow_trailing)?;
        Ok(cr.digest.unwrap_or_default())
    }

    /// BuildKit's `getFollowLinksCallback`: the record at `k` with every symlink on the way
    /// resolved (the last one too when `follow_trailing`); `cb` sees each component looked up.
    fn follow_links(
        &self,
        k: &[u8],
        follow_trailing: bool,
        cb: &mut dyn FnMut(&[u8], Option<&Record>),
    ) -> Result<(Vec<u8>, Option<Record>)> {
        if let Some(v) = self.tree.get(k)
            && (!follow_trailing || v.kind != Kind::Symlink)
        {
            return Ok((k.to_vec(), Some(v.clone())));
        }
        if k.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut current: Vec<u8> = b"/".to_vec();
        let mut remaining = key_to_path(k);
        let had_trailing = remaining.last() == Some(&b'/');
        if had_trailing {
            remaining.pop();
        }
        let mut links = 0;
        let mut cr: Option<Record> = None;
        while !remaining.is_empty() {
            let (part, rest) = match remaining.iter().position(|b| *b == b'/') {
                Some(i) => (remaining[..i].to_vec(), remaining[i + 1..].to_vec()),
                None => (std::mem::take(&mut remaining), Vec::new()),
            };
            remaining = rest;
            let next = key_path(&join(&[b"/", &current, &part]));
            cr = self.tree.get(&path_to_key(&next)).cloned();
            cb(&next, cr.as_ref());
            let link = match &cr {
                Some(r) if r.kind == Kind::Symlink => r.linkname.clone(),
                _ => {
                    current = next;
                    continue;
                }
            };
            if !follow_trailing && remaining.is_empty() {
                current = next;
                break;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ContentHashError::TooManyLinks(show(&key_to_path(k))));
            }
            let mut r = link.clone();
            r.push(b'/');
            r.extend_from_slice(&remaining);
            remaining = r;
            if link.first() == Some(&b'/') {
                current = b"/".to_vec();
            }
        }
        if had_trailing {
            current.push(b'/');
            cr = self.tree.get(&path_to_key(&current)).cloned();
            cb(&current, cr.as_ref());
        }
        Ok((path_to_key(&current), cr))
    }

    /// Whether `p` is not known yet and no scanned directory rules it out.
    fn needs_scan(&self, p: &[u8], follow_trailing: bool) -> Result<bool> {
        let mut good = PathSet::default();
        let mut has_parent = false;
        let (_, cr) =
            self.follow_links(&path_to_key(p), follow_trailing, &mut |sub, cr| match cr {
                Some(r) => {
                    has_parent = r.kind != Kind::Symlink;
                    good.add(sub);
                }
                None => has_parent = good.includes(sub),
            })?;
        Ok(cr.is_none() && !has_parent)
    }

    /// Records the symlinks on the way to `p` and everything under the directory that holds
    /// what it resolves to (BuildKit's `scanPath`).
    fn scan_path(&mut self, p: &[u8], follow_trailing: bool) -> Result<()> {
        let p = join(&[b"/", p]);
        let resolved = self.root_path(&p, follow_trailing)?;
        let scan = if resolved == b"/" {
            resolved
        } else {
            dir(&resolved)
        };
        let root = self.src.root.to_path_buf();
        let start = host_path(&root, &scan);
        match std::fs::symlink_metadata(&start) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("walk", &start)(e)),
            Ok(_) => self.walk(&root, &start),
        }
    }

    /// Resolves `p` (absolute) inside the root, recording each symlink met; returns the
    /// resolved absolute path (BuildKit's `rootPath`).
    fn root_path(&mut self, p: &[u8], follow_trailing: bool) -> Result<Vec<u8>> {
        let mut unsafe_path = p.to_vec();
        let mut current: Vec<u8> = Vec::new();
        let mut links = 0;
        while !unsafe_path.is_empty() {
            if unsafe_path.last() == Some(&b'/') {
                unsafe_path.pop();
            }
            let part = match unsafe_path.iter().position(|b| *b == b'/') {
                Some(i) => {
                    let part = unsafe_path[..i].to_vec();
                    unsafe_path.drain(..=i);
                    part
                }
                None => std::mem::take(&mut unsafe_path),
            };
            let next = join(&[b"/", &current, &part]);
            if next == b"/" {
                current.clear();
                continue;
            }
            let full = host_path(self.src.root, &next);
            let md = match std::fs::symlink_metadata(&full) {
                Ok(md) => Some(md),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("lstat", &full)(e)),
            };
            if !md.is_some_and(|m| m.file_type().is_symlink()) {
                current = next;
                continue;
            }
            if !follow_trailing && unsafe_path.is_empty() {
                current = next;
                break;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ContentHashError::TooManyLinks(show(p)));
            }
            let dest = std::fs::read_link(&full)
                .map_err(io_err("readlink", &full))?
                .into_os_string()
                .into_vec();
            let mut rec = Record::new(Kind::Symlink);
            rec.linkname = dest.clone();
            self.tree.insert(path_to_key(&join(&[b"/", &next])), rec);
            let mut u = dest.clone();
            u.push(b'/');
            u.extend_from_slice(&unsafe_path);
            unsafe_path = u;
            if dest.first() == Some(&b'/') {
                current.clear();
            }
        }
        Ok(join(&[b"/", &current]))
    }

    /// Records `start` and everything under it that has no record yet (`filepath.Walk`).
    fn walk(&mut self, root: &Path, start: &Path) -> Result<()> {
        let mut stack = vec![start.to_path_buf()];
        while let Some(item) = stack.pop() {
            let md = std::fs::symlink_metadata(&item).map_err(io_err("walk", &item))?;
            let rel = item.strip_prefix(root).unwrap_or(Path::new(""));
            let mut k = path_to_key(&key_path(rel.as_os_str().as_bytes()));
            if !self.tree.contains_key(&k) {
                let ft = md.file_type();
                let mut cr = Record::new(Kind::File);
                if ft.is_symlink() {
                    cr.kind = Kind::Symlink;
                    cr.linkname = std::fs::read_link(&item)
                        .map_err(io_err("readlink", &item))?
                        .into_os_string()
                        .into_vec();
                }
                if ft.is_dir() {
                    cr.kind = Kind::DirHeader;
                    self.tree.insert(k.clone(), Record::new(Kind::Dir));
                    k.push(0);
                }
                self.tree.insert(k, cr);
            }
            if md.is_dir() {
                for e in std::fs::read_dir(&item).map_err(io_err("read dir", &item))? {
                    let e = e.map_err(io_err("read dir", &item))?;
                    stack.push(e.path());
                }
            }
        }
        Ok(())
    }

    /// The record at `k` with its digest computed (BuildKit's `cacheContext.checksum`).
    fn record_checksum(&mut self, k: &[u8], follow_trailing: bool) -> Result<Record> {
        let (k, cr) = self.follow_links(k, follow_trailing, &mut |_, _| {})?;
        let Some(mut cr) = cr else {
            return Err(ContentHashError::NotFound(show(&key_to_path(&k))));
        };
        if cr.digest.is_some() {
            return Ok(cr);
        }
        let dgst = if cr.kind == Kind::Dir {
            let mut h = Sha256::new();
            let mut next = k.clone();
            next.push(0);
            let mut subk = Some(next.clone());
            while let Some(sk) = subk.take().filter(|s| s.starts_with(&next)) {
                h.update(&sk[k.len()..]);
                let sub = self.record_checksum(&sk, false)?;
                h.update(sub.digest.as_deref().unwrap_or_default().as_bytes());
                let from = if sub.kind == Kind::Dir {
                    let mut s = sk.clone();
                    s.extend_from_slice(&[0, 0xff]);
                    Bound::Included(s)
                } else {
                    Bound::Excluded(sk)
                };
                subk = self
                    .tree
                    .range::<Vec<u8>, _>((from, Bound::Unbounded))
                    .next()
                    .map(|(k, _)| k.clone());
            }
            finish(h)
        } else {
            let p = key_to_path(k.strip_suffix(&[0]).unwrap_or(&k));
            let fp = host_path(self.src.root, &p);
            file_digest(&fp, self.src.ids, self.src.xattrs)?
        };
        cr.digest = Some(dgst);
        self.tree.insert(k, cr.clone());
        Ok(cr)
    }

    /// The paths a filtered or wildcard selector takes in, and the prefix their names are
    /// relative to (BuildKit's `includedPaths`).
    fn included_paths(&mut self, p: &[u8], sel: &Selector) -> Result<(Vec<u8>, Vec<Included>)> {
        if self.needs_scan(b"", false)? {
            self.scan_path(b"", false)?;
        }
        let ends_in_sep = p.last() == Some(&b'/');
        let p = key_path(p);
        let inc = if sel.include_patterns.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&sel.include_patterns)?)
        };
        let exc = if sel.exclude_patterns.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&sel.exclude_patterns)?)
        };

        let (orig_prefix, start_key, key_ok) = if sel.wildcard {
            self.wildcard_prefix(&p)?
        } else {
            let (k, cr) = self.follow_links(&path_to_key(&p), false, &mut |_, _| {})?;
            (p.clone(), k, cr.is_some())
        };
        let mut resolved_prefix: Vec<u8> = Vec::new();
        // The key being looked at; each next one is the first key above it.
        let mut cur: Option<Vec<u8>>;
        if !orig_prefix.is_empty() {
            cur = key_ok.then(|| start_key.clone());
            resolved_prefix = key_to_path(&start_key);
        } else {
            cur = self.tree.keys().next().cloned();
        }

        let mut all: Vec<Included> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        let mut parents: Vec<usize> = Vec::new();
        let mut last_matched: Vec<u8> = Vec::new();

        while let Some(k) = cur.take() {
            let mut fn_ = key_to_path(&k);
            if let Some(after) = fn_.strip_prefix(resolved_prefix.as_slice()) {
                let mut t = orig_prefix.clone();
                t.extend_from_slice(after);
                fn_ = t;
            }
            while let Some(&last) = parents.last() {
                let mut pre = all[last].path.clone();
                pre.push(b'/');
                if fn_.starts_with(&pre) {
                    break;
                }
                parents.pop();
            }
            let parent = parents.last().copied();

            let dir_header = k.last() == Some(&0);
            if dir_header {
                fn_.pop();
                if fn_ == p && ends_in_sep {
                    cur = self.next_key(&k);
                    continue;
                }
            }
            let mut item = Included {
                path: fn_.clone(),
                kind: Kind::File,
                digest: String::new(),
                included: false,
                include_info: MatchInfo::default(),
                exclude_info: MatchInfo::default(),
                follow_links: parent.is_none() && sel.follow_links,
            };
            let should;
            let mut with_slash = fn_.clone();
            with_slash.push(b'/');
            if sel.wildcard {
                let mut lm = last_matched.clone();
                lm.push(b'/');
                if !p.is_empty() && (last_matched.is_empty() || !fn_.starts_with(&lm)) {
                    if !go_path_match(&p, &fn_)? {
                        cur = self.next_key(&k);
                        continue;
                    }
                    last_matched = fn_.clone();
                }
                let mut lm = last_matched.clone();
                lm.push(b'/');
                let cand = rel_candidate(&with_slash, &lm);
                should = should_include(
                    &cand,
                    inc.as_ref(),
                    exc.as_ref(),
                    &mut item,
                    parent.map(|i| &all[i]),
                )?;
            } else {
                let mut pp = p.clone();
                pp.push(b'/');
                if !with_slash.starts_with(&pp) {
                    break;
                }
                let cand = rel_candidate(&with_slash, &pp);
                should = should_include(
                    &cand,
                    inc.as_ref(),
                    exc.as_ref(),
                    &mut item,
                    parent.map(|i| &all[i]),
                )?;
            }
            if !should && !dir_header {
                cur = self.next_key(&k);
                continue;
            }
            // A directory's contents are never taken whole (exclusions may apply inside it),
            // so only its kind matters here.
            let (kind, digest) = match self.tree.get(&k) {
                Some(r) if r.kind == Kind::Dir => (Kind::Dir, String::new()),
                _ => {
                    let r = self.record_checksum(&k, false)?;
                    (r.kind, r.digest.unwrap_or_default())
                }
            };
            item.kind = kind;
            item.digest = digest;
            let should = should && kind != Kind::Dir;
            let idx = all.len();
            all.push(item);
            if should {
                for &pi in &parents {
                    if !all[pi].included {
                        all[pi].included = true;
                        order.push(pi);
                    }
                }
                all[idx].included = true;
                order.push(idx);
            }
            if kind == Kind::DirHeader {
                parents.push(idx);
            }
            cur = self.next_key(&k);
        }

        for req in &sel.required_paths {
            let found = order
                .iter()
                .any(|&i| all[i].path.starts_with(req.as_bytes()));
            if !found {
                return Err(ContentHashError::RequiredPath(req.clone()));
            }
        }
        let mut out = Vec::with_capacity(order.len());
        let mut slots: Vec<Option<Included>> = all.into_iter().map(Some).collect();
        for i in order {
            if let Some(x) = slots[i].take() {
                out.push(x);
            }
        }
        Ok((orig_prefix, out))
    }

    /// The first key above `k`.
    fn next_key(&self, k: &[u8]) -> Option<Vec<u8>> {
        self.tree
            .range::<[u8], _>((Bound::Excluded(k), Bound::Unbounded))
            .next()
            .map(|(k, _)| k.clone())
    }

    /// The non-wildcard start of a wildcard path, resolved (BuildKit's `wildcardPrefix`):
    /// (prefix as written, its key, whether it exists).
    fn wildcard_prefix(&self, p: &[u8]) -> Result<(Vec<u8>, Vec<u8>, bool)> {
        let (d1, d2) = split_wildcards(p);
        if d1 == b"/" {
            return Ok((Vec::new(), Vec::new(), false));
        }
        let (k, cr) = self.follow_links(&path_to_key(&d1), !d2.is_empty(), &mut |_, _| {})?;
        Ok((d1, k, cr.is_some()))
    }
}

/// `strings.TrimSuffix(strings.TrimPrefix(with_slash, prefix), "/")`.
fn rel_candidate(with_slash: &[u8], prefix: &[u8]) -> Vec<u8> {
    let s = with_slash.strip_prefix(prefix).unwrap_or(with_slash);
    s.strip_suffix(b"/").unwrap_or(s).to_vec()
}

fn should_include(
    cand: &[u8],
    inc: Option<&PatternMatcher>,
    exc: Option<&PatternMatcher>,
    item: &mut Included,
    parent: Option<&Included>,
) -> Result<bool> {
    if let Some(m) = inc {
        let empty = MatchInfo::default();
        let pi = parent.map_or(&empty, |p| &p.include_info);
        let (hit, info) = m.matches_using_parent_results(cand, pi)?;
        item.include_info = info;
        if !hit {
            return Ok(false);
        }
    }
    if let Some(m) = exc {
        let empty = MatchInfo::default();
        let pi = parent.map_or(&empty, |p| &p.exclude_info);
        let (hit, info) = m.matches_using_parent_results(cand, pi)?;
        item.exclude_info = info;
        if hit {
            return Ok(false);
        }
    }
    Ok(true)
}

fn contains_wildcards(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'*' | b'?' | b'[' => return true,
            b'\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Splits a path into the part before the first element with a wildcard and the rest.
fn split_wildcards(p: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let joined = join(&[p]);
    let mut p1: Vec<Vec<u8>> = Vec::new();
    let mut p2: Vec<Vec<u8>> = Vec::new();
    let mut found = false;
    for part in joined.split(|b| *b == b'/') {
        if !found && contains_wildcards(part) {
            found = true;
        }
        let part = if part.is_empty() {
            b"/".to_vec()
        } else {
            part.to_vec()
        };
        if found {
            p2.push(part);
        } else {
            p1.push(part);
        }
    }
    let j = |v: &[Vec<u8>]| join(&v.iter().map(Vec::as_slice).collect::<Vec<_>>());
    (j(&p1), j(&p2))
}

// ---------------------------------------------------------------------------------------------
// Go's path.Match.

fn bad(pattern: &[u8]) -> ContentHashError {
    ContentHashError::BadPattern(show(pattern))
}

/// Go's `path.Match` (also `filepath.Match` on unix).
fn go_path_match(pattern: &[u8], name: &[u8]) -> Result<bool> {
    let whole = pattern;
    let mut pattern = pattern;
    let mut name = name;
    'outer: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let r = match_chunk(chunk, name);
        if let Ok(Some(t)) = r
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        r.map_err(|_| bad(whole))?;
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    Ok(Some(t)) => {
                        if pattern.is_empty() && !t.is_empty() {
                            i += 1;
                            continue;
                        }
                        name = t;
                        continue 'outer;
                    }
                    Ok(None) => {}
                    Err(()) => return Err(bad(whole)),
                }
                i += 1;
            }
        }
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"").map_err(|_| bad(whole))?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while pattern.first() == Some(&b'*') {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Matches one chunk at the start of `s`: `Ok(Some(rest))`, `Ok(None)` for no match,
/// `Err(())` for a malformed chunk.
fn match_chunk<'s>(mut chunk: &[u8], mut s: &'s [u8]) -> std::result::Result<Option<&'s [u8]>, ()> {
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = '\0';
                if !failed {
                    let (c, n) = decode_rune(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let c = if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(c) => *c,
                        None => return Err(()),
                    }
                } else {
                    c
                };
                if !failed {
                    if c != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed { Ok(None) } else { Ok(Some(s)) }
}

fn get_esc(chunk: &[u8]) -> std::result::Result<(char, &[u8]), ()> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(()),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(());
            }
        }
        _ => {}
    }
    let (r, n) = decode_rune(chunk);
    if r == '\u{fffd}' && n == 1 && chunk[0] >= 0x80 {
        return Err(());
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(());
    }
    Ok((r, rest))
}

// ---------------------------------------------------------------------------------------------
// moby/patternmatcher.

/// Which patterns matched a directory (`patternmatcher.MatchInfo`); empty: not known.
#[derive(Debug, Clone, Default)]
struct MatchInfo(Vec<bool>);

#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Regexp(Vec<Node>),
}

#[derive(Debug, Clone)]
struct PmPattern {
    exclusion: bool,
    cleaned: Vec<u8>,
    kind: MatchKind,
}

/// `patternmatcher.PatternMatcher`.
#[derive(Debug, Clone)]
struct PatternMatcher {
    patterns: Vec<PmPattern>,
}

impl PatternMatcher {
    fn new(patterns: &[String]) -> Result<PatternMatcher> {
        let mut out = Vec::new();
        for raw in patterns {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p.as_bytes());
            let mut exclusion = false;
            if p[0] == b'!' {
                if p.len() == 1 {
                    return Err(ContentHashError::BadPattern(raw.clone()));
                }
                exclusion = true;
                p.remove(0);
            }
            go_path_match(&p, b".")?;
            let kind = compile_pattern(raw, &p)?;
            out.push(PmPattern {
                exclusion,
                cleaned: p,
                kind,
            });
        }
        Ok(PatternMatcher { patterns: out })
    }

    /// `MatchesUsingParentResults`.
    fn matches_using_parent_results(
        &self,
        file: &[u8],
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo)> {
        let parent_matched = &parent.0;
        if !parent_matched.is_empty() && parent_matched.len() != self.patterns.len() {
            return Err(ContentHashError::BadPattern(
                "wrong number of values in parentMatched".into(),
            ));
        }
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pat) in self.patterns.iter().enumerate() {
            let mut hit = parent_matched.get(i).copied().unwrap_or(false);
            if !hit {
                if pat.exclusion != matched {
                    continue;
                }
                hit = pat.matches(file);
                if !hit && parent_matched.is_empty() {
                    let parent_path = dir(file);
                    if parent_path != b"." {
                        let dirs: Vec<&[u8]> = parent_path.split(|b| *b == b'/').collect();
                        for n in 1..=dirs.len() {
                            if pat.matches(&dirs[..n].join(&b'/')) {
                                hit = true;
                                break;
                            }
                        }
                    }
                }
            }
            info[i] = hit;
            if hit {
                matched = !pat.exclusion;
            }
        }
        Ok((matched, MatchInfo(info)))
    }
}

impl PmPattern {
    fn matches(&self, path: &[u8]) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned.as_slice(),
            MatchKind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            MatchKind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || (suffix.first() == Some(&b'/') && path == &suffix[1..])
            }
            MatchKind::Regexp(nodes) => {
                let text = decode_all(path);
                re_match(nodes, &text, 0)
            }
        }
    }
}

fn decode_all(s: &[u8]) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let (c, n) = decode_rune(&s[i..]);
        out.push(c);
        i += n.max(1);
    }
    out
}

/// patternmatcher's `compile`: the Go regexp source it builds, then that regexp parsed.
fn compile_pattern(raw: &str, cleaned: &[u8]) -> Result<MatchKind> {
    #[derive(PartialEq)]
    enum T {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let pattern: Vec<char> = String::from_utf8_lossy(cleaned).chars().collect();
    let mut re = String::from("^");
    let mut t = T::Exact;
    let mut pos = 0;
    let mut i = 0;
    while pos < pattern.len() {
        let ch = pattern[pos];
        pos += 1;
        let peek = pattern.get(pos).copied();
        if ch == '*' {
            if peek == Some('*') {
                pos += 1;
                if pattern.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos >= pattern.len() {
                    if t == T::Exact {
                        t = T::Prefix;
                    } else {
                        re.push_str(".*");
                        t = T::Regexp;
                    }
                } else {
                    re.push_str("(.*/)?");
                    t = T::Regexp;
                }
                if i == 0 {
                    t = T::Suffix;
                }
            } else {
                re.push_str("[^/]*");
                t = T::Regexp;
            }
        } else if ch == '?' {
            re.push_str("[^/]");
            t = T::Regexp;
        } else if ".+()|{}$".contains(ch) {
            re.push('\\');
            re.push(ch);
        } else if ch == '\\' {
            if let Some(n) = peek {
                pos += 1;
                re.push('\\');
                re.push(n);
                t = T::Regexp;
            } else {
                re.push('\\');
            }
        } else if ch == '[' || ch == ']' {
            re.push(ch);
            t = T::Regexp;
        } else {
            re.push(ch);
        }
        i += 1;
    }
    Ok(match t {
        T::Exact => MatchKind::Exact,
        T::Prefix => MatchKind::Prefix,
        T::Suffix => MatchKind::Suffix,
        T::Regexp => {
            re.push('$');
            MatchKind::Regexp(parse_re(raw, &re)?)
        }
    })
}

/// An element of the regexps patternmatcher builds.
#[derive(Debug, Clone)]
enum Atom {
    Char(char),
    /// Any character but a newline (`.`).
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `(.*/)?`
    AnyDirs,
    /// `^`
    Begin,
    /// `$`
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rep {
    One,
    Star,
    Opt,
}

#[derive(Debug, Clone)]
struct Node {
    atom: Atom,
    rep: Rep,
}

fn parse_re(raw: &str, re: &str) -> Result<Vec<Node>> {
    let unsupported = |why| ContentHashError::UnsupportedPattern {
        pattern: raw.to_string(),
        why,
    };
    let c: Vec<char> = re.chars().collect();
    let mut out: Vec<Node> = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let atom = match c[i] {
            '^' => {
                i += 1;
                Atom::Begin
            }
            '$' => {
                i += 1;
                Atom::End
            }
            '.' => {
                i += 1;
                Atom::Any
            }
            '(' => {
                if c[i..].starts_with(&['(', '.', '*', '/', ')', '?']) {
                    i += 6;
                    out.push(Node {
                        atom: Atom::AnyDirs,
                        rep: Rep::One,
                    });
                    continue;
                }
                return Err(unsupported("a group"));
            }
            '\\' => {
                let Some(&n) = c.get(i + 1) else {
                    return Err(ContentHashError::BadPattern(raw.to_string()));
                };
                if !n.is_ascii_punctuation() {
                    return Err(unsupported(
                        "an escape sequence of a letter, digit or non-ASCII",
                    ));
                }
                i += 2;
                Atom::Char(n)
            }
            '[' => {
                i += 1;
                let mut negated = false;
                if c.get(i) == Some(&'^') {
                    negated = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&ch) = c.get(i) else {
                        return Err(ContentHashError::BadPattern(raw.to_string()));
                    };
                    if ch == ']' && !first {
                        i += 1;
                        break;
                    }
                    if ch == '[' && c.get(i + 1) == Some(&':') {
                        return Err(unsupported("a POSIX character class"));
                    }
                    first = false;
                    let lo = class_char(&c, &mut i, raw)?;
                    if c.get(i) == Some(&'-') && c.get(i + 1).is_some_and(|x| *x != ']') {
                        i += 1;
                        let hi = class_char(&c, &mut i, raw)?;
                        if hi < lo {
                            return Err(ContentHashError::BadPattern(raw.to_string()));
                        }
                        ranges.push((lo, hi));
                    } else {
                        ranges.push((lo, lo));
                    }
                }
                Atom::Class { negated, ranges }
            }
            '*' | '?' | '+' | '{' | '|' | ')' => return Err(unsupported("a stray operator")),
            ch => {
                i += 1;
                Atom::Char(ch)
            }
        };
        let rep = match c.get(i) {
            Some('*') => {
                i += 1;
                Rep::Star
            }
            Some('?') => {
                i += 1;
                Rep::Opt
            }
            Some('+') | Some('{') => return Err(unsupported("a repetition")),
            _ => Rep::One,
        };
        if matches!(atom, Atom::Begin | Atom::End) && rep != Rep::One {
            return Err(unsupported("a repeated anchor"));
        }
        out.push(Node { atom, rep });
    }
    Ok(out)
}

fn class_char(c: &[char], i: &mut usize, raw: &str) -> Result<char> {
    let ch = c[*i];
    if ch == '\\' {
        let Some(&n) = c.get(*i + 1) else {
            return Err(ContentHashError::BadPattern(raw.to_string()));
        };
        if !n.is_ascii_punctuation() {
            return Err(ContentHashError::UnsupportedPattern {
                pattern: raw.to_string(),
                why: "an escape sequence of a letter, digit or non-ASCII",
            });
        }
        *i += 2;
        return Ok(n);
    }
    *i += 1;
    Ok(ch)
}

fn atom_matches(a: &Atom, ch: char) -> bool {
    match a {
        Atom::Char(c) => *c == ch,
        Atom::Any => ch != '\n',
        Atom::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| *lo <= ch && ch <= *hi) != *negated
        }
        Atom::AnyDirs | Atom::Begin | Atom::End => false,
    }
}

/// Whether `nodes` match `text` from `pos` to its end (a backtracking search: every regexp
/// here is anchored at both ends).
fn re_match(nodes: &[Node], text: &[char], pos: usize) -> bool {
    let Some((n, rest)) = nodes.split_first() else {
        return pos == text.len();
    };
    match (&n.atom, n.rep) {
        (Atom::Begin, _) => pos == 0 && re_match(rest, text, pos),
        (Atom::End, _) => pos == text.len() && re_match(rest, text, pos),
        (Atom::AnyDirs, _) => {
            // Nothing, or anything without a newline up to and including a slash.
            if re_match(rest, text, pos) {
                return true;
            }
            let mut j = pos;
            while j < text.len() && text[j] != '\n' {
                if text[j] == '/' && re_match(rest, text, j + 1) {
                    return true;
                }
                j += 1;
            }
            false
        }
        (a, Rep::One) => {
            pos < text.len() && atom_matches(a, text[pos]) && re_match(rest, text, pos + 1)
        }
        (a, Rep::Opt) => {
            (pos < text.len() && atom_matches(a, text[pos]) && re_match(rest, text, pos + 1))
                || re_match(rest, text, pos)
        }
        (a, Rep::Star) => {
            let mut end = pos;
            while end < text.len() && atom_matches(a, text[end]) {
                end += 1;
            }
            (pos..=end).rev().any(|j| re_match(rest, text, j))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// The fixture's extended attributes (a test cannot set or read them without a crate).
    struct FixtureXattrs;

    impl Xattrs for FixtureXattrs {
        fn list(&self, path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            if path.file_name().is_some_and(|n| n == "xattr.txt") {
                return Ok(vec![
                    (b"user.test".to_vec(), b"value1".to_vec()),
                    (b"user.a".to_vec(), b"A".to_vec()),
                ]);
            }
            Ok(Vec::new())
        }
    }

    fn write(root: &Path, p: &str, data: &[u8], mode: u32) {
        let fp = root.join(p);
        std::fs::write(&fp, data).unwrap();
        std::fs::set_permissions(&fp, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkdir(root: &Path, p: &str, mode: u32) {
        let fp = root.join(p);
        std::fs::create_dir(&fp).unwrap();
        std::fs::set_permissions(&fp, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The tree the pinned digests were made from (see `buildkitd_vectors`).
    fn fixture(root: &Path) {
        write(root, "a.txt", b"hello\n", 0o644);
        write(root, "exec.sh", b"#!/bin/sh\necho hi\n", 0o755);
        write(root, "suid.bin", b"suid", 0o4755);
        write(root, "sgid.bin", b"sgid", 0o2750);
        write(root, "empty.txt", b"", 0o600);
        mkdir(root, "dir", 0o750);
        write(root, "dir/b.txt", b"bbb\n", 0o644);
        std::fs::hard_link(root.join("a.txt"), root.join("dir/hard.txt")).unwrap();
        mkdir(root, "dir/sub", 0o755);
        write(root, "dir/sub/c.txt", b"c\n", 0o444);
        write(root, "dir/sub/d.tmp", b"tmp\n", 0o644);
        write(root, "dir.txt", b"dir.txt\n", 0o644);
        write(root, "dir-x", b"dash\n", 0o644);
        mkdir(root, "dir0", 0o755);
        write(root, "dir0/z", b"z", 0o644);
        mkdir(root, "emptydir", 0o1777);
        symlink("a.txt", root.join("link")).unwrap();
        symlink("dir", root.join("dirlink")).unwrap();
        symlink("/dir/b.txt", root.join("abslink")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::fs::set_permissions(root.join("fifo"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        write(root, "xattr.txt", b"x\n", 0o644);
        write(root, "sp ace.txt", b"space\n", 0o644);
        write(root, "\u{fc}n\u{ef}.txt", b"unicode\n", 0o644);
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn sel(path: &str, follow: bool) -> Selector {
        Selector {
            path: path.into(),
            follow_links: follow,
            ..Selector::default()
        }
    }

    fn pat(path: &str, follow: bool, wildcard: bool, inc: &[&str], exc: &[&str]) -> Selector {
        Selector {
            path: path.into(),
            follow_links: follow,
            wildcard,
            include_patterns: inc.iter().map(|s| s.to_string()).collect(),
            exclude_patterns: exc.iter().map(|s| s.to_string()).collect(),
            required_paths: Vec::new(),
        }
    }

    fn cases() -> Vec<(&'static str, Origin, Vec<Selector>, &'static str)> {
        use Origin::{LocalSource as L, Snapshot as S};
        vec![
            (
                "L01",
                L,
                vec![sel("/", false)],
                "4a136b43e983f2f9b0fa48b5a25f9af605ace197439ef3e9779f71ae68d53931",
            ),
            (
                "L02",
                L,
                vec![sel("/", true)],
                "4a136b43e983f2f9b0fa48b5a25f9af605ace197439ef3e9779f71ae68d53931",
            ),
            (
                "L03",
                L,
                vec![sel("/a.txt", false)],
                "286f4db492f491f7b3f357be9b60a4964ab5322915dda76c7810107aa9e116c3",
            ),
            (
                "L04",
                L,
                vec![sel("/dir", false)],
                "78269b6db2a490e70396fcf7beeb4ea24d874333736cc74a0b436fcdea725b5b",
            ),
            (
                "L05",
                L,
                vec![sel("/link", false)],
                "dfd0068210ecb997f9a1ba3f6bbe3de8b1edc826fe11daac4e8ed7c2cbfdf7e0",
            ),
            (
                "L06",
                L,
                vec![sel("/link", true)],
                "286f4db492f491f7b3f357be9b60a4964ab5322915dda76c7810107aa9e116c3",
            ),
            (
                "L07",
                L,
                vec![sel("/dirlink", true)],
                "78269b6db2a490e70396fcf7beeb4ea24d874333736cc74a0b436fcdea725b5b",
            ),
            (
                "L08",
                L,
                vec![sel("/dirlink/b.txt", false)],
                "5c83ba87c101ebd07f3d5f3f6556609377b59bacf8e9d8ff34fc864ca7967fe6",
            ),
            (
                "L09",
                L,
                vec![sel("/abslink", true)],
                "5c83ba87c101ebd07f3d5f3f6556609377b59bacf8e9d8ff34fc864ca7967fe6",
            ),
            (
                "L10",
                L,
                vec![sel("/emptydir", false)],
                "7bce9bce324b0e8feef52e1f7d59c7744d03a56bae96f564ea9a461d6b61bec0",
            ),
            (
                "L11",
                L,
                vec![sel("/dir/sub", false)],
                "9cdc069b52fc4b5d2854fe8ad0043aae90590e7192df533e5c080acff3a83da7",
            ),
            (
                "L12",
                L,
                vec![sel("/fifo", false)],
                "ba1d005550796abc8236a570dbc0b9307cc7abe8e735d784b647052d8922c020",
            ),
            (
                "L13",
                L,
                vec![sel("/xattr.txt", false)],
                "03de9289464b7eebdb5afb70083a08a3b11e96f6e3dc48378e89a2483026de2c",
            ),
            (
                "L14",
                L,
                vec![sel("/suid.bin", false)],
                "a5c43e19e4cfd62eaa4b765db6bb145a554b44960f0128ff15c1ba822444d4f3",
            ),
            (
                "L15",
                L,
                vec![pat("/dir*", false, true, &[], &[])],
                "3be32c6e465a585d782f23e177294e8ffcd3f4e394b3bb62d2cfd0d2374e186f",
            ),
            (
                "L16",
                L,
                vec![pat("/*.txt", true, true, &[], &[])],
                "cbbad0a519342e7d30b0f1cbc2be7911226479a0398dacb15872bd0d06cc03b5",
            ),
            (
                "L17",
                L,
                vec![pat("/", false, false, &["dir/**", "*.txt"], &["**/*.tmp"])],
                "72552f9c0bb18e8b9289671dd066a517a60a97cc574193b3815cb8348c4867e3",
            ),
            (
                "L18",
                L,
                vec![pat("/dir", false, false, &[], &["sub"])],
                "4bb1eb1c443576b7da8f4c73c32669d697fc3ec1f54d353ff788dfb6a1505fb2",
            ),
            (
                "L19",
                L,
                vec![pat("/", true, false, &["dir/sub"], &[])],
                "7762cdd5a9ff87f9a45b64d2fbf8f43b8204e940618a1f68d587262141d592d6",
            ),
            (
                "L20",
                L,
                vec![sel("/a.txt", false), sel("/dir", false), sel("/link", true)],
                "479980d64c7a8bd5c832ad6785a5605ad95d48652fb9830de9a32ab8d8419e2e",
            ),
            (
                "L21",
                L,
                vec![pat("/", false, false, &["*.txt", "!a.txt"], &[])],
                "946a818c829a3e2b2b75b11851108f766f7a42faf2c922b0faed7129f9553d91",
            ),
            (
                "L22",
                L,
                vec![pat("/d?r/*", false, true, &[], &[])],
                "f507a665f9ab1d6203dc5f65cda612a757a5432942ca5d41ab4711e514080b61",
            ),
            (
                "L23",
                L,
                vec![sel("/dirlink", false)],
                "e23180f326f8a7f1e173e294d3156320cae3bd50a03cce7d858cfd310516ff75",
            ),
            (
                "L24",
                L,
                vec![pat("/", true, false, &["link", "dirlink"], &[])],
                "13d7fa5ab7f7a8e4fefc89403fb14586e6bd3384bffe4894b572eccaf1978b3a",
            ),
            (
                "L25",
                L,
                vec![pat("/dir/*", true, true, &[], &["*.tmp"])],
                "2b1b7330a5254af85280c41e7fabc1f34e8ac0ae2fdd1601201c85d94a67363b",
            ),
            (
                "L26",
                L,
                vec![pat("/dir", false, false, &["sub/*.txt"], &[])],
                "1f8853afb3fa9947b89ff760432affcc4b7727d19b54d0a388b4efec859dca25",
            ),
            (
                "L27",
                L,
                vec![pat("/", false, false, &["**/c.txt"], &[])],
                "dadeee0b0e9024a3203965094065e61e4224d2fbb2700a0a5a32a1d94b1ff064",
            ),
            (
                "L28",
                L,
                vec![pat(
                    "/",
                    false,
                    false,
                    &[],
                    &["dir/sub/**", "!dir/sub/c.txt"],
                )],
                "0fb3491d4166a5718d8ced9c417b2d62a628386531c987f5a4823c84c2d9ca0c",
            ),
            (
                "L29",
                L,
                vec![pat("/", false, false, &["d[a-i]r/*.txt"], &[])],
                "1a77ae6c2b8a0a4833746678c7f59638098050ea064e7021bf7293adf3525494",
            ),
            (
                "L30",
                L,
                vec![pat("/[a-e]*.txt", false, true, &[], &[])],
                "64d18b651dcda902fc52efed0943a9ce1fc76665ade4dfcbbff1e75d4d07c4e1",
            ),
            (
                "L31",
                L,
                vec![pat("/", false, false, &["dir*"], &["dir/sub"])],
                "be06a5aba080e84a058b29a18bf900aa20fd9d11083e41bd8305033daf2391f6",
            ),
            (
                "L32",
                L,
                vec![pat("/", false, false, &["dir/"], &[])],
                "c4150e87485f1938d3286eaad83e7948e678d7b7b705cece2256df869f7a8a2c",
            ),
            (
                "L33",
                L,
                vec![pat("/dir/sub/*", true, true, &[], &[])],
                "48445b0314c897cb8513ee3fe714a2d70943fb00e5e79b80bfdb136286568b89",
            ),
            (
                "L34",
                L,
                vec![pat("/dirlink", false, false, &["*.txt"], &[])],
                "0364e78be895cef9249b83b20cdb6362cd3c317f55240669624258bc449a86fc",
            ),
            (
                "L35",
                L,
                vec![pat("/dirlink", true, false, &["*.txt"], &[])],
                "0364e78be895cef9249b83b20cdb6362cd3c317f55240669624258bc449a86fc",
            ),
            (
                "L36",
                L,
                vec![pat("/dirlink/sub", false, false, &["*.txt"], &[])],
                "bb95169dff0e52e118429c3ddd08502a157535a8970669b826c098863e332d39",
            ),
            (
                "L38",
                L,
                vec![pat("/", false, false, &[], &["*"])],
                "0364e78be895cef9249b83b20cdb6362cd3c317f55240669624258bc449a86fc",
            ),
            (
                "L39",
                L,
                vec![pat("/", false, false, &["**"], &[])],
                "f9c808916293af7d52a191c1da200e4d865e4de8754db95354a823bd43230aa9",
            ),
            (
                "L40",
                L,
                vec![pat("/", false, false, &["nomatch"], &[])],
                "0364e78be895cef9249b83b20cdb6362cd3c317f55240669624258bc449a86fc",
            ),
            (
                "L41",
                L,
                vec![pat("/", false, false, &["dir.txt", "dir?x", "**/sub"], &[])],
                "2fa8d1837887d78a5fadf7a2a361525e63bca395548af9955d26e7cd4ef81606",
            ),
            (
                "L42",
                L,
                vec![pat("/", false, false, &["dir/**/c.txt", "e*"], &["empty*"])],
                "ecb8786fa2d77a2b84c745555fef1f9cebead0d95eab3b79e89db23626b033b9",
            ),
            (
                "L43",
                L,
                vec![pat("/dir*/*", false, true, &["b.txt", "z"], &[])],
                "0364e78be895cef9249b83b20cdb6362cd3c317f55240669624258bc449a86fc",
            ),
            (
                "L44",
                L,
                vec![pat("/dir", false, false, &["sub"], &["sub/c.txt"])],
                "de55c0d15aa23050e860e8c879f109edf32fb19c66aadf4eee5a8ed7d365dd7e",
            ),
            (
                "S01",
                S,
                vec![sel("/", false)],
                "cf5b40420aa429f708c5a2eb7cfb576e1bc9fa5d57de234c6b0ffc5c4b847807",
            ),
            (
                "S02",
                S,
                vec![sel("/dir", false)],
                "78269b6db2a490e70396fcf7beeb4ea24d874333736cc74a0b436fcdea725b5b",
            ),
            (
                "S03",
                S,
                vec![sel("/a.txt", false)],
                "286f4db492f491f7b3f357be9b60a4964ab5322915dda76c7810107aa9e116c3",
            ),
            (
                "S04",
                S,
                vec![sel("/dirlink/b.txt", false)],
                "5c83ba87c101ebd07f3d5f3f6556609377b59bacf8e9d8ff34fc864ca7967fe6",
            ),
            (
                "S05",
                S,
                vec![pat("/", false, false, &["dir/**"], &[])],
                "c4150e87485f1938d3286eaad83e7948e678d7b7b705cece2256df869f7a8a2c",
            ),
            (
                "S06",
                S,
                vec![sel("/dirlink", true)],
                "78269b6db2a490e70396fcf7beeb4ea24d874333736cc74a0b436fcdea725b5b",
            ),
            (
                "S07",
                S,
                vec![sel("/xattr.txt", false)],
                "03de9289464b7eebdb5afb70083a08a3b11e96f6e3dc48378e89a2483026de2c",
            ),
            (
                "S08",
                S,
                vec![sel("/dirlink/sub/c.txt", false)],
                "95fbca9c756a16c7cf66ac0101bc5d2822ad8881d78ef258cb399a8bb9b3659c",
            ),
            (
                "S09",
                S,
                vec![sel("/abslink", true)],
                "5c83ba87c101ebd07f3d5f3f6556609377b59bacf8e9d8ff34fc864ca7967fe6",
            ),
            (
                "S10",
                S,
                vec![pat("/dir", false, false, &["**/*.txt"], &[])],
                "774fe010290c6bb508bb82b8e97c48b4135f774d04b78371be7c7b8959c6f3d7",
            ),
            (
                "S11",
                S,
                vec![sel("/link", false)],
                "dfd0068210ecb997f9a1ba3f6bbe3de8b1edc826fe11daac4e8ed7c2cbfdf7e0",
            ),
            (
                "S12",
                S,
                vec![sel("/dirlink/sub", true), sel("/emptydir", false)],
                "4f85fd88de05e9e284d2d306eb3afeae019edfb7f33561cd42412e75dcd70c30",
            ),
        ]
    }

    /// Local-source and snapshot checksums of the fixture, as BuildKit v0.32.2 computed them.
    ///
    /// Made with a buildkitd v0.32.2 of our own (OCI worker, `--save-cache-debug`): the same
    /// tree made by a script as root (owner 0:0, but BuildKit's client sends every file of a
    /// local context as 0:0 anyway; `xattr.txt` with `user.test=value1`, `user.a=A`), and one
    /// Definition per case, made with envkit's LLB builder: `scratch` plus one FileOp copying
    /// each selector from `local://context` (`L..`), or from a snapshot that copied the whole
    /// context into `scratch` (`S..`), built with `buildctl build --local context=DIR`. The
    /// pinned value is the `digest-list` record the build added to the debug DB
    /// (`/debug/cache/all`), i.e. what `NewContentHashFunc` returned for the op's input; where
    /// a build added none (its value was already there) it was checked to be in the DB.
    #[test]
    fn buildkitd_vectors() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path());
        let mut bad = Vec::new();
        for (name, origin, sels, want) in cases() {
            let src = Source {
                root: tmp.path(),
                origin,
                ids: &AllOwnedBy(0, 0),
                xattrs: &FixtureXattrs,
            };
            let got = content_hash(&src, &sels).unwrap();
            if got != format!("sha256:{want}") {
                bad.push(format!("{name}: got {got}, want sha256:{want}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    fn golden_dir(variant: &str) -> PathBuf {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/bkcache")
            .join(variant);
        assert!(
            d.join("context.lst").is_file(),
            "missing vector {}",
            d.display()
        );
        d
    }

    /// Rebuilds a golden context from its listing (modes as listed, whatever the checkout
    /// kept; empty directories too), keeping the paths `keep` accepts.
    fn tree_from_listing(dir: &Path, keep: &dyn Fn(&str) -> bool, out: &Path) {
        let lst = std::fs::read_to_string(dir.join("context.lst")).unwrap();
        for line in lst.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(rel) = words[0].strip_prefix("./") else {
                continue;
            };
            if !keep(rel) {
                continue;
            }
            let mode = words
                .iter()
                .find_map(|w| w.strip_prefix("mode="))
                .map(|m| u32::from_str_radix(m, 8).unwrap())
                .unwrap();
            let fp = out.join(rel);
            if let Some(target) = words.iter().find_map(|w| w.strip_prefix("symlink->")) {
                symlink(target, &fp).unwrap();
                continue;
            }
            if words.contains(&"dir") {
                std::fs::create_dir_all(&fp).unwrap();
            } else {
                std::fs::copy(dir.join("context").join(rel), &fp).unwrap();
            }
            std::fs::set_permissions(&fp, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    fn local(root: &Path) -> Source<'_> {
        Source {
            root,
            origin: Origin::LocalSource,
            ids: &AllOwnedBy(0, 0),
            xattrs: &NoXattrs,
        }
    }

    /// The other helper's vectors (`tests/golden/bkcache/README.md`): `local://context` with
    /// include `src/**`, `Cargo.toml`, `*.star` and exclude `target`, `**/*.tmp` copied from
    /// `/`. The client filters before sending, so the snapshot holds only what is kept here
    /// (the debug DB's file-lists list exactly these paths).
    #[test]
    fn golden_local_include() {
        let sent = |p: &str| {
            p == "Cargo.toml"
                || p == "build.star"
                || ((p == "src" || p.starts_with("src/")) && !p.ends_with(".tmp"))
        };
        for (variant, want) in [
            (
                "local-include",
                "sha256:dffff10af3a33e7755590f14c25bd9da80eeb4281dddc38cf9350b6735dece6d",
            ),
            (
                "local-include-edit",
                "sha256:17332e6836c5ff8ec76b1e69dc7336a9655dab0ad59a2020c8f2370a7875fd05",
            ),
            (
                "local-include-chmod",
                "sha256:03f04e81498cde76d5a20bb6e26b636764787eebf31b8ee8514b7da6c7cf89d7",
            ),
            (
                "local-include-excluded",
                "sha256:dffff10af3a33e7755590f14c25bd9da80eeb4281dddc38cf9350b6735dece6d",
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            tree_from_listing(&golden_dir(variant), &sent, tmp.path());
            let got = content_hash(&local(tmp.path()), &[sel("/", false)]).unwrap();
            assert_eq!(got, want, "{variant}");
        }
    }

    /// `copy-chown-mode`: `/bin` with include `*.sh`, and `/etc/app.conf`, from the whole
    /// (unfiltered) context.
    #[test]
    fn golden_copy_chown_mode() {
        let tmp = tempfile::tempdir().unwrap();
        tree_from_listing(&golden_dir("local-include"), &|_| true, tmp.path());
        let src = local(tmp.path());
        let bin = pat("/bin", false, false, &["*.sh"], &[]);
        assert_eq!(
            content_hash(&src, &[bin]).unwrap(),
            "sha256:e39cf25393661759a393ba4d0e194a1c73142c2ed99997388d2275aa5c1871b0"
        );
        assert_eq!(
            content_hash(&src, &[sel("/etc/app.conf", false)]).unwrap(),
            "sha256:3ce04dbbe3add41d7fa3fec5dbab7bf69be9f7b26222afb2629e475208a36cdd"
        );
    }

    /// An empty local context: BuildKit scans its fresh snapshot (our buildkitd, `E01`:
    /// the context directory was 0700, the digest does not depend on it).
    #[test]
    fn empty_local_source() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            content_hash(&local(tmp.path()), &[]).unwrap(),
            "sha256:d52fb411058d37efa1a75ead8c578790e302771cc794f81b2afe6e8e79f95617"
        );
    }

    fn header_digest(h: &FileHeader, content: &[u8]) -> String {
        let mut b = h.bytes();
        b.extend_from_slice(content);
        digest_of(&b)
    }

    /// File records of our buildkitd's debug DB: device nodes sent from a local context
    /// (`D01`), and a file chowned to 1000:1001 by a copy, hashed in its snapshot (`C01`).
    #[test]
    fn header_vectors() {
        let dev = |mode, typeflag, (devmajor, devminor)| FileHeader {
            mode,
            typeflag,
            devmajor,
            devminor,
            ..FileHeader::default()
        };
        let big = nix::sys::stat::makedev(300, 70000);
        for (h, want) in [
            (
                dev(0o600, b'3', major_minor(big)),
                "d2cf0d869ee7e0d8a4ebafe62d83e2d945b630f75e8ac4b79b962b16e73a430f",
            ),
            (
                dev(0o660, b'4', (7, 0)),
                "36d081cb07aa7b3da28449cd83a402d8d95eb3b062d947bcfa6584934886ac33",
            ),
            (
                dev(0o666, b'3', (1, 3)),
                "b5cab4d22002a5d4e9602cc55f9928e420ed51d77bf42d701ba879531b7a3274",
            ),
            (
                dev(0o755, b'5', (0, 0)),
                "1a2805521573cb10d73bcd51d16bfa84c8f461d68599740e35484b90b2ab1bab",
            ),
        ] {
            assert_eq!(header_digest(&h, b""), format!("sha256:{want}"));
        }
        let owned = FileHeader {
            mode: 0o640,
            uid: 1000,
            gid: 1001,
            size: 6,
            typeflag: b'0',
            ..FileHeader::default()
        };
        assert_eq!(
            String::from_utf8_lossy(&owned.bytes()),
            "namemode416uid1000gid1001size6typeflag0linkname\
             unamegnamedevmajor0devminor0"
        );
        assert_eq!(
            header_digest(&owned, b"owned\n"),
            "sha256:658542607d354e10cdfe16a2411134ab3b80fafba6de36441ad3e789e50268b5"
        );
        // Only `security.capability` of the `security.*` and `system.*` attributes counts;
        // the rest go sorted by name.
        let x = FileHeader {
            xattrs: vec![
                (b"user.b".to_vec(), b"2".to_vec()),
                (b"security.selinux".to_vec(), b"ctx".to_vec()),
                (b"system.posix_acl_access".to_vec(), b"acl".to_vec()),
                (b"security.capability".to_vec(), b"cap".to_vec()),
                (b"trusted.t".to_vec(), b"t".to_vec()),
                (b"user.a".to_vec(), b"1".to_vec()),
            ],
            ..FileHeader::default()
        };
        let b = x.bytes();
        assert!(b.ends_with(b"devminor0security.capabilitycaptrusted.ttuser.a1user.b2"));

        // Device nodes on disk, where the test may make them.
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("big");
        let made = nix::sys::stat::mknod(
            &p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            big,
        );
        if made.is_ok() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(
                file_digest(&p, &AllOwnedBy(0, 0), &NoXattrs).unwrap(),
                "sha256:d2cf0d869ee7e0d8a4ebafe62d83e2d945b630f75e8ac4b79b962b16e73a430f"
            );
        }
    }

    #[test]
    fn errors() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path());
        symlink("loop2", tmp.path().join("loop1")).unwrap();
        symlink("loop1", tmp.path().join("loop2")).unwrap();
        for origin in [Origin::LocalSource, Origin::Snapshot] {
            let src = Source {
                root: tmp.path(),
                origin,
                ids: &AllOwnedBy(0, 0),
                xattrs: &NoXattrs,
            };
            let e = checksum(&src, &sel("/nope", false)).unwrap_err();
            assert!(matches!(e, ContentHashError::NotFound(_)), "{e}");
            let e = checksum(&src, &sel("/dangling", true)).unwrap_err();
            assert!(matches!(e, ContentHashError::NotFound(_)), "{e}");
            let e = checksum(&src, &sel("/loop1", true)).unwrap_err();
            assert!(matches!(e, ContentHashError::TooManyLinks(_)), "{e}");
            // Not followed, the loop is just a symlink.
            checksum(&src, &sel("/loop1", false)).unwrap();
            let e = checksum(&src, &pat("/", false, false, &["["], &[])).unwrap_err();
            assert!(matches!(e, ContentHashError::BadPattern(_)), "{e}");
            let mut req = pat("/", false, false, &["dir/**"], &[]);
            req.required_paths = vec!["/dir/b.txt".into()];
            checksum(&src, &req).unwrap();
            req.required_paths = vec!["/a.txt".into()];
            let e = checksum(&src, &req).unwrap_err();
            assert!(matches!(e, ContentHashError::RequiredPath(_)), "{e}");
        }
    }

    #[test]
    fn go_paths() {
        for (p, want) in [
            ("", "."),
            ("/", "/"),
            ("a//b/./c/..", "a/b"),
            ("/../a/", "/a"),
            ("../../x", "../../x"),
            ("a/../..", ".."),
        ] {
            assert_eq!(clean(p.as_bytes()), want.as_bytes(), "{p}");
        }
        assert_eq!(join(&[b"", b""]), b"");
        assert_eq!(join(&[b"/", b"a/", b"../b"]), b"/b");
        assert_eq!(key_path(b"/"), b"");
        assert_eq!(key_path(b"a/b/"), b"/a/b");
        for (p, want) in [("", "."), ("/", "/"), ("/a/b/", "b"), ("c", "c")] {
            assert_eq!(base(p.as_bytes()), want.as_bytes(), "{p}");
        }
        assert_eq!(
            split_wildcards(b"/a/b*/c"),
            (b"/a".to_vec(), b"b*/c".to_vec())
        );
        assert_eq!(split_wildcards(b"/*"), (b"/".to_vec(), b"*".to_vec()));
    }

    /// Cases of Go's `path.Match` tests.
    #[test]
    fn go_path_match_cases() {
        let ok = |p: &str, n: &str| go_path_match(p.as_bytes(), n.as_bytes()).unwrap();
        let err = |p: &str, n: &str| go_path_match(p.as_bytes(), n.as_bytes()).is_err();
        assert!(ok("abc", "abc"));
        assert!(ok("*", "abc"));
        assert!(ok("*c", "abc"));
        assert!(!ok("a*", "ab/c"));
        assert!(ok("a*/b", "abc/b"));
        assert!(!ok("a*/b", "a/c/b"));
        assert!(ok("a*b*c*d*e*/f", "axbxcxdxe/f"));
        assert!(!ok("a*b*c*d*e*/f", "axbxcxdxe/xxx/f"));
        assert!(ok("a\\*b", "a*b"));
        assert!(!ok("a\\*b", "ab"));
        assert!(ok("a?b", "a\u{263a}b"));
        assert!(ok("a[^a]b", "a\u{263a}b"));
        assert!(!ok("a???b", "a\u{263a}b"));
        assert!(ok("[a-\u{3b6}]*", "\u{3b1}"));
        assert!(!ok("*[a-\u{3b6}]", "A"));
        assert!(!ok("a?b", "a/b"));
        assert!(!ok("a*b", "a/b"));
        assert!(ok("[\\]a]", "]"));
        assert!(ok("[x\\-]", "-"));
        assert!(!ok("[x\\-]", "z"));
        assert!(ok("*x", "xxx"));
        for (p, n) in [
            ("[]a]", "]"),
            ("[-]", "-"),
            ("[x-]", "x"),
            ("[-x]", "a"),
            ("\\", "a"),
            ("[a-b-c]", "a"),
            ("[", "a"),
            ("[^bc", "a"),
            ("a[", "a"),
            ("a[", "x"),
            ("a/b[", "x"),
        ] {
            assert!(err(p, n), "{p} {n}");
        }
    }

    #[test]
    fn pattern_matcher() {
        let m = |pats: &[&str]| {
            PatternMatcher::new(&pats.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let kinds = m(&["a.b", "src/**", "**/x", "**", "*.txt", "**/*.rs", "a/**/b"]);
        let k: Vec<&str> = kinds
            .patterns
            .iter()
            .map(|p| match p.kind {
                MatchKind::Exact => "exact",
                MatchKind::Prefix => "prefix",
                MatchKind::Suffix => "suffix",
                MatchKind::Regexp(_) => "regexp",
            })
            .collect();
        assert_eq!(
            k,
            [
                "exact", "prefix", "suffix", "suffix", "regexp", "regexp", "regexp"
            ]
        );
        let hit = |pm: &PatternMatcher, f: &str| {
            pm.matches_using_parent_results(f.as_bytes(), &MatchInfo::default())
                .unwrap()
                .0
        };
        let x = m(&["**/x"]);
        assert!(hit(&x, "x") && hit(&x, "a/b/x") && !hit(&x, "ax"));
        let r = m(&["**/*.rs"]);
        assert!(hit(&r, "main.rs") && hit(&r, "a/b.rs") && !hit(&r, "a.rsx"));
        let mid = m(&["a/**/b"]);
        assert!(hit(&mid, "a/b") && hit(&mid, "a/x/y/b") && hit(&mid, "a/b/c"));
        assert!(!hit(&mid, "a/xb"));
        // A parent matching carries to what is under it; a later exclusion wins.
        let ex = m(&["dir", "!dir/keep"]);
        assert!(hit(&ex, "dir/a") && !hit(&ex, "dir/keep") && !hit(&ex, "dir/keep/z"));
        // Go regexp classes: `!` is no negation there, `^` is.
        assert!(hit(&m(&["[!a]x"]), "!x") && !hit(&m(&["[!a]x"]), "bx"));
        assert!(hit(&m(&["[^a]x"]), "bx") && !hit(&m(&["[^a]x"]), "ax"));
        assert!(matches!(
            PatternMatcher::new(&["a\\d*".to_string()]),
            Err(ContentHashError::UnsupportedPattern { .. })
        ));
    }

    /// A directory's children go in byte order of their names, each directory's own subtree
    /// before a sibling that extends its name (`dir`, `dir-x`, `dir.txt`, `dir0` in the
    /// fixture), and the tree of records is the same however it was filled.
    #[test]
    fn snapshot_scans_match_local_records() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path());
        let src = Source {
            root: tmp.path(),
            origin: Origin::Snapshot,
            ids: &AllOwnedBy(0, 0),
            xattrs: &FixtureXattrs,
        };
        let mut h = Hasher::new(src).unwrap();
        // Partial scans first, then the whole tree.
        let a = h.checksum(&sel("/dirlink/sub/c.txt", false)).unwrap();
        let dir = h.checksum(&sel("/dir", false)).unwrap();
        h.checksum(&sel("/", false)).unwrap();
        let keys: Vec<String> = h
            .tree
            .range::<[u8], _>((Bound::Excluded(&[0u8][..]), Bound::Unbounded))
            .map(|(k, _)| show(&key_to_path(k)))
            .filter(|k| k.starts_with("/dir") && !k.starts_with("/dirl"))
            .collect();
        assert_eq!(
            keys,
            [
                "/dir",
                "/dir/",
                "/dir/b.txt",
                "/dir/hard.txt",
                "/dir/sub",
                "/dir/sub/",
                "/dir/sub/c.txt",
                "/dir/sub/d.tmp",
                "/dir-x",
                "/dir.txt",
                "/dir0",
                "/dir0/",
                "/dir0/z"
            ]
        );
        let mut fresh = Hasher::new(Source {
            origin: Origin::LocalSource,
            ..src
        })
        .unwrap();
        assert_eq!(fresh.checksum(&sel("/dir/sub/c.txt", false)).unwrap(), a);
        assert_eq!(fresh.checksum(&sel("/dir", false)).unwrap(), dir);
    }
}

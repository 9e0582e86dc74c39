//! File actions on an overlay (BuildKit FileOp semantics) and tree removal.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;

use crate::error::{Result, RootlessError};
use crate::fsroot::{DotDot, Entry, Root, chmod_and_time_fd, chown_fd};
use crate::overlay::Overlay;
use crate::patterns::{Filter, glob};
use crate::proto::{Chown, CopyAction, CopySource, FileAction, IdSpec, UserDb};

/// Delete a tree (as uid 0 of the namespace, so subordinate-owned files go too), descending
/// by descriptors; directories without write or search permission are opened up on the way.
pub fn remove_all(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(RootlessError::Invalid(format!(
            "refusing to remove {}",
            path.display()
        )));
    };
    let dir = match Root::open(parent) {
        Ok(d) => d,
        Err(_) if !path.exists() && !path.is_symlink() => return Ok(()),
        Err(e) => return Err(e),
    };
    match dir.entry(&name.to_string_lossy(), false, DotDot::Reject)? {
        Some(e) => e.remove_all(),
        None => Ok(()),
    }
}

/// Mount the overlay and perform `actions` in order.
pub fn run_actions(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    actions: &[FileAction],
) -> Result<()> {
    let mut ov = Overlay::mount(lowers, Some((upper, work)))?;
    let links = (!ov.is_copy() && Links::fit(actions)).then(Links::default);
    let root = Root::open(&ov.merged)?;
    for (i, a) in actions.iter().enumerate() {
        run_one(&root, a, links.as_ref())
            .map_err(|e| RootlessError::Invalid(format!("file action {i}: {e}")))?;
    }
    ov.finish()?;
    // The overlay is gone before its upper dir is written to directly.
    drop(root);
    drop(ov);
    match links {
        Some(l) => l.finish(upper),
        None => Ok(()),
    }
}

/// Large regular files that copies take from a snapshot, which is never written again: each
/// is created empty through the overlay, with the owner, mode and times the copy would leave
/// (those of the source: only such files are taken), and once the overlay is unmounted it is
/// replaced in the upper dir by a hard link to the source. The layer has the same bytes and
/// the data is neither copied nor written to the disk a second time.
///
/// Only for file ops made of copies alone that unpack no archives, so that nothing but a copy
/// can replace a file on its way: a copy that removes what is at a path forgets the files
/// kept for it. A source file is linked once per file op (the layer then has no hard links
/// between its own files that a copy would not have made); a source with extended attributes
/// is copied (a copy leaves them behind).
#[derive(Default)]
struct Links {
    /// Where each file goes (below the root), and its source.
    files: std::cell::RefCell<std::collections::BTreeMap<PathBuf, Entry>>,
    /// Source files already taken, by device and inode.
    taken: std::cell::RefCell<std::collections::HashSet<(u64, u64)>>,
}

impl Links {
    /// Files smaller than this are copied: a link and a rename cost about as much.
    const MIN_SIZE: i64 = 64 * 1024;

    /// Whether a file op's actions allow links (copies only, no archives unpacked).
    fn fit(actions: &[FileAction]) -> bool {
        actions
            .iter()
            .all(|a| matches!(a, FileAction::Copy(c) if !c.unpack_archives))
    }

    /// Takes `src` (whose stat is `md`) for the copy at `dest`, to be linked later, when the
    /// copy would leave it as it is: its own owner, mode and time.
    fn take(
        &self,
        src: &Entry,
        md: &nix::sys::stat::FileStat,
        dest: &Entry,
        owner: (u32, u32),
        mode: u32,
        time: Option<i64>,
    ) -> bool {
        let same_time = time.is_none_or(|t| t == md.st_mtime * 1_000_000_000 + md.st_mtime_nsec);
        if md.st_size < Self::MIN_SIZE
            || owner != (md.st_uid, md.st_gid)
            || mode & 0o7777 != md.st_mode & 0o7777
            || !same_time
            || src.has_xattrs()
        {
            return false;
        }
        if !self.taken.borrow_mut().insert((md.st_dev, md.st_ino)) {
            return false;
        }
        self.files
            .borrow_mut()
            .insert(dest.rel().to_path_buf(), src.clone());
        true
    }

    /// What is at `rel` was removed: files kept for it or below it are not linked.
    fn forget(&self, rel: &Path) {
        self.files.borrow_mut().retain(|p, _| !p.starts_with(rel));
    }

    /// Replaces each kept file in `upper` by a link to its source (a copy of it where the
    /// file system refuses the link); the directories keep their times.
    fn finish(self, upper: &Path) -> Result<()> {
        let files = self.files.into_inner();
        if files.is_empty() {
            return Ok(());
        }
        let root = Root::open(upper)?;
        for (rel, src) in files {
            let path = format!("/{}", rel.to_string_lossy());
            let dest = root.entry(&path, false, DotDot::Clamp)?;
            let st = match &dest {
                Some(d) => d.stat()?,
                None => None,
            };
            let (Some(dest), Some(st)) = (dest, st) else {
                return Err(RootlessError::Invalid(format!(
                    "copy: {path} went missing before its content was linked"
                )));
            };
            if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() || st.st_size != 0 {
                return Err(RootlessError::Invalid(format!(
                    "copy: {path} changed before its content was linked"
                )));
            }
            dest.keeping_dir_times(|| -> Result<()> {
                if dest.replace_with_link(&src)? {
                    return Ok(());
                }
                let mut from = src.open_read()?;
                let mut to = dest.open_truncate()?;
                std::io::copy(&mut from, &mut to).map_err(|e| RootlessError::io(&rel, e))?;
                drop(to);
                dest.chmod(st.st_mode)?;
                dest.set_times(st.st_mtime, st.st_mtime_nsec)
            })?;
        }
        Ok(())
    }
}

/// Performs `actions` in order directly on the directory `dir` (no overlay): what a
/// FileOp does to its merged view, for tests that drive it with hostile trees.
pub fn apply_actions(dir: &Path, actions: &[FileAction]) -> Result<()> {
    let root = Root::open(dir)?;
    for (i, a) in actions.iter().enumerate() {
        run_one(&root, a, None)
            .map_err(|e| RootlessError::Invalid(format!("file action {i}: {e}")))?;
    }
    Ok(())
}

fn chown(e: &Entry, owner: Option<(u32, u32)>) -> Result<()> {
    match owner {
        Some((u, g)) => e.chown(u, g),
        None => Ok(()),
    }
}

/// Sets atime and mtime (not following a symlink) to `ns` nanoseconds since the epoch.
fn set_time(e: &Entry, ns: Option<i64>) -> Result<()> {
    match ns {
        Some(ns) => e.set_times(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000)),
        None => Ok(()),
    }
}

/// Text of `/etc/<name>` in a user database location, if it is there.
fn db_file(root: &Root, db: &UserDb, name: &str) -> Option<String> {
    let path = format!("/etc/{name}");
    let read = |r: &Root| -> Option<std::result::Result<String, ()>> {
        let e = r.entry(&path, true, DotDot::Clamp).ok()??;
        let st = e.stat().ok()??;
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        if fmt == SFlag::S_IFCHR.bits() && st.st_rdev == 0 {
            return Some(Err(())); // an overlay whiteout: deleted in this layer
        }
        if fmt != SFlag::S_IFREG.bits() {
            return None;
        }
        let mut text = String::new();
        Some(
            e.open_read()
                .ok()
                .and_then(|mut f| f.read_to_string(&mut text).ok())
                .map(|_| text)
                .ok_or(()),
        )
    };
    match db {
        UserDb::Dest => read(root).and_then(|r| r.ok()),
        UserDb::Lowers(l) => l
            .iter()
            .find_map(|d| Root::open(d).ok().and_then(|r| read(&r)))
            .and_then(|r| r.ok()),
    }
}

/// The numeric owner of a [`Chown`], names looked up as BuildKit does (a user name brings
/// its primary group; a group alone leaves the user 0). An unknown name is an error.
fn resolve_owner(root: &Root, c: &Chown) -> Result<(u32, u32)> {
    let (mut uid, mut gid) = (0, 0);
    match &c.user {
        None => {}
        Some(IdSpec::Id(u)) => (uid, gid) = (*u, *u),
        Some(IdSpec::Name(n)) => {
            let text = db_file(root, &c.user_db, "passwd").unwrap_or_default();
            (uid, gid) = crate::userdb::lookup_user(&text, n).ok_or_else(|| {
                RootlessError::Invalid(format!("chown: no user {n:?} in /etc/passwd"))
            })?;
        }
    }
    match &c.group {
        None => {}
        Some(IdSpec::Id(g)) => gid = *g,
        Some(IdSpec::Name(n)) => {
            let text = db_file(root, &c.group_db, "group").unwrap_or_default();
            gid = crate::userdb::lookup_group(&text, n).ok_or_else(|| {
                RootlessError::Invalid(format!("chown: no group {n:?} in /etc/group"))
            })?;
        }
    }
    Ok((uid, gid))
}

fn owner_of(root: &Root, c: &Option<Chown>) -> Result<Option<(u32, u32)>> {
    c.as_ref().map(|c| resolve_owner(root, c)).transpose()
}

/// mkdir -p inside `root` (container path); what it creates gets `mode`, `owner` and the
/// time. Returns the directory and whether the last element was created.
fn mkdir_all(
    root: &Root,
    path: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
    time: Option<i64>,
) -> Result<(Entry, bool)> {
    root.mkdir_all(path, DotDot::Clamp, &mut |e| {
        e.chmod(mode)?;
        chown(e, owner)?;
        set_time(e, time)
    })
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The entries `path` names in `root`: one, or (wildcards in the last component) all
/// matches, sorted.
fn expand(root: &Root, path: &str, wildcard: bool, follow: bool) -> Result<Vec<Entry>> {
    let (dir, last) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((d, l)) => (if d.is_empty() { "/" } else { d }, l),
        None => ("/", path.trim_end_matches('/')),
    };
    if wildcard && has_glob(last) {
        let Some(d) = root.entry(dir, true, DotDot::Clamp)? else {
            return Ok(Vec::new());
        };
        if !d.is_dir() {
            return Ok(Vec::new());
        }
        let mut v = Vec::new();
        for n in d.list()? {
            if glob(last.as_bytes(), n.as_bytes()) {
                let cpath = format!("{}/{}", dir.trim_end_matches('/'), n.to_string_lossy());
                if let Some(e) = root.entry(&cpath, follow, DotDot::Clamp)?
                    && e.stat()?.is_some()
                {
                    v.push(e);
                }
            }
        }
        Ok(v)
    } else {
        match root.entry(path, follow, DotDot::Clamp)? {
            Some(e) if e.stat()?.is_some() => Ok(vec![e]),
            _ => Ok(vec![]),
        }
    }
}

/// The parent (container path) of a container path.
fn parent_of(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some((p, _)) if !p.is_empty() => p.to_string(),
        _ => "/".to_string(),
    }
}

/// The entry `path` names (its parents must exist).
fn entry_of(root: &Root, path: &str, follow: bool) -> Result<Entry> {
    root.entry(path, follow, DotDot::Clamp)?
        .ok_or_else(|| RootlessError::Invalid(format!("{path}: a parent directory does not exist")))
}

fn run_one(root: &Root, a: &FileAction, links: Option<&Links>) -> Result<()> {
    match a {
        FileAction::Mkdir {
            path,
            mode,
            make_parents,
            owner,
            timestamp,
        } => {
            let owner = owner_of(root, owner)?;
            if *make_parents {
                mkdir_all(root, path, *mode, owner, *timestamp)?;
            } else {
                let e = entry_of(root, path, true)?;
                // Like BuildKit: something already there is fine.
                if e.stat()?.is_none() {
                    e.mkdir(0o700)?;
                    e.chmod(*mode)?;
                    chown(&e, owner)?;
                    set_time(&e, *timestamp)?;
                }
            }
        }
        FileAction::Mkfile {
            path,
            mode,
            data,
            owner,
            timestamp,
        } => {
            let owner = owner_of(root, owner)?;
            let e = entry_of(root, path, true)?;
            let existed = e.stat()?.is_some();
            let mut f = if existed {
                e.open_truncate()?
            } else {
                e.create(0o600)?
            };
            f.write_all(data)
                .map_err(|er| RootlessError::io(path, er))?;
            drop(f);
            if !existed {
                e.chmod(*mode)?;
            }
            chown(&e, owner)?;
            set_time(&e, *timestamp)?;
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
            for e in v {
                if e.is_dot() {
                    return Err(RootlessError::Invalid(format!(
                        "rm {path}: refusing to remove a directory by `.` or `/`"
                    )));
                }
                e.remove_all()?;
            }
        }
        FileAction::Symlink {
            target,
            path,
            owner,
            timestamp,
        } => {
            let owner = owner_of(root, owner)?;
            let e = entry_of(root, path, false)?;
            e.symlink(std::ffi::OsStr::new(target))?;
            chown(&e, owner)?;
            set_time(&e, *timestamp)?;
        }
        FileAction::Copy(c) => copy(root, c, links)?,
    }
    Ok(())
}

fn copy(root: &Root, c: &CopyAction, links: Option<&Links>) -> Result<()> {
    let _view;
    let sroot: PathBuf = match &c.src_root {
        CopySource::Dir(d) => d.clone(),
        CopySource::Lowers(l) if l.len() == 1 => l[0].clone(),
        CopySource::Lowers(l) => {
            let ov = Overlay::mount(l, None)?;
            let m = ov.merged.clone();
            _view = ov;
            m
        }
    };
    let sroot = Root::open(&sroot)?;
    for req in &c.required_paths {
        let found = match sroot.entry(req, false, DotDot::Clamp)? {
            Some(e) => e.stat()?.is_some(),
            None => false,
        };
        if !found {
            return Err(RootlessError::Invalid(format!(
                "copy: required path {req} not found"
            )));
        }
    }
    let mode = match &c.mode_str {
        Some(s) => Some(ModeSpec::parse(s)?),
        None => c.mode.map(ModeSpec::Octal),
    };
    let srcs = expand(&sroot, &c.src, c.allow_wildcard, c.follow_symlinks)?;
    if srcs.is_empty() {
        if c.allow_wildcard && has_glob(&c.src) && c.allow_empty_wildcard {
            return Ok(());
        }
        return Err(RootlessError::Invalid(format!(
            "copy: source {} not found",
            c.src
        )));
    }
    if !c.create_dest_path {
        let parent = parent_of(&c.dest);
        if !root
            .entry(&parent, true, DotDot::Clamp)?
            .is_some_and(|e| e.is_dir())
        {
            return Err(RootlessError::Invalid(format!(
                "copy: the destination's parent {parent} does not exist (and creating it was not asked for)"
            )));
        }
    }
    let owner = owner_of(root, &c.owner)?;
    let dest_is_dir = c.dest.ends_with('/')
        || srcs.len() > 1
        || root
            .entry(&c.dest, true, DotDot::Clamp)?
            .is_some_and(|e| e.is_dir());
    // Files of a single snapshot (never written again) may be linked; an overlay view of
    // several is another file system.
    let single = matches!(&c.src_root, CopySource::Lowers(l) if l.len() == 1);
    let opts = CopyOpts {
        owner,
        mode,
        filter: Filter::from_lists(&c.include_patterns, &c.exclude_patterns),
        time: c.timestamp,
        replace: c.always_replace_existing,
        links: links.filter(|_| single),
    };
    for s in srcs {
        let md = s
            .stat()?
            .ok_or_else(|| RootlessError::Invalid(format!("copy: {} vanished", c.src)))?;
        let is_dir = md.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
        let is_file = md.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
        if c.unpack_archives && is_file && unpack_archive(&s, root, &c.dest, &opts)? {
            continue;
        }
        let base = if s.is_dot() {
            String::new()
        } else {
            String::from_utf8_lossy(s.name().to_bytes()).into_owned()
        };
        let target = if is_dir && c.dir_copy_contents {
            c.dest.to_string()
        } else if dest_is_dir {
            format!("{}/{base}", c.dest.trim_end_matches('/'))
        } else {
            c.dest.to_string()
        };
        // Like BuildKit, dirs created on the way get the copy's owner and time.
        if c.create_dest_path || dest_is_dir {
            mkdir_all(root, &parent_of(&target), 0o755, owner, c.timestamp)?;
        }
        if is_dir && c.dir_copy_contents {
            let (d, _) = mkdir_all(root, &target, 0o755, owner, c.timestamp)?;
            copy_children(&s, Path::new(""), &d, &opts)?;
            set_time(&d, c.timestamp)?;
        } else {
            let d = entry_of(root, &target, false)?;
            copy_entry(&s, Path::new(""), &d, &opts)?;
        }
    }
    Ok(())
}

/// A mode for copied entries: octal, or chmod's symbolic clauses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ModeSpec {
    Octal(u32),
    Symbolic(Vec<ModeClause>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModeClause {
    /// Bits of who: u=0o4700 (with setuid), g=0o2070, o=0o0007; `a` or empty: all.
    who: u32,
    op: u8,
    perms: Vec<u8>,
}

impl ModeSpec {
    fn parse(s: &str) -> Result<ModeSpec> {
        let bad = || RootlessError::Invalid(format!("copy: invalid mode {s:?}"));
        if !s.is_empty() && s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(ModeSpec::Octal)
                .ok_or_else(bad);
        }
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let b = part.as_bytes();
            let mut i = 0;
            let mut who = 0;
            while i < b.len() && b"ugoa".contains(&b[i]) {
                who |= match b[i] {
                    b'u' => 0o4700,
                    b'g' => 0o2070,
                    b'o' => 0o1007,
                    _ => 0o7777,
                };
                i += 1;
            }
            if i == b.len() {
                return Err(bad());
            }
            while i < b.len() {
                let op = b[i];
                if !b"+-=".contains(&op) {
                    return Err(bad());
                }
                i += 1;
                let start = i;
                while i < b.len() && b"rwxXst".contains(&b[i]) {
                    i += 1;
                }
                clauses.push(ModeClause {
                    who: if who == 0 { 0o7777 } else { who },
                    op,
                    perms: b[start..i].to_vec(),
                });
            }
        }
        if clauses.is_empty() {
            return Err(bad());
        }
        Ok(ModeSpec::Symbolic(clauses))
    }

    /// The new mode of an entry whose mode is `old`.
    fn apply(&self, old: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            ModeSpec::Octal(m) => return *m,
            ModeSpec::Symbolic(c) => c,
        };
        let mut mode = old & 0o7777;
        for c in clauses {
            let mut bits = 0;
            for p in &c.perms {
                bits |= match p {
                    b'r' => 0o444,
                    b'w' => 0o222,
                    b'x' => 0o111,
                    b'X' if is_dir || old & 0o111 != 0 => 0o111,
                    b's' => 0o6000,
                    b't' => 0o1000,
                    _ => 0,
                };
            }
            let bits = bits & c.who;
            match c.op {
                b'+' => mode |= bits,
                b'-' => mode &= !bits,
                _ => mode = (mode & !(c.who & 0o0777)) | bits,
            }
        }
        mode
    }
}

struct CopyOpts<'a> {
    owner: Option<(u32, u32)>,
    mode: Option<ModeSpec>,
    /// Include/exclude patterns, matched against paths relative to the copied source.
    filter: Filter,
    time: Option<i64>,
    replace: bool,
    /// Where large files that keep their metadata are linked instead of copied.
    links: Option<&'a Links>,
}

impl CopyOpts<'_> {
    /// What was at `dest` is gone: no link goes there.
    fn forget(&self, dest: &Entry) {
        if let Some(l) = self.links {
            l.forget(dest.rel());
        }
    }
}

/// Copies the children of the source dir `src` (at `rel` below the copied source) into the
/// directory `dest`; returns whether anything was copied.
fn copy_children(src: &Entry, rel: &Path, dest: &Entry, o: &CopyOpts) -> Result<bool> {
    let names = src.list()?;
    let (sd, dd) = (src.as_dir()?, dest.as_dir()?);
    let mut any = false;
    for n in names {
        let s = Entry::in_dir(sd.clone(), &n, src.rel().join(&n))?;
        let d = Entry::in_dir(dd.clone(), &n, dest.rel().join(&n))?;
        any |= copy_entry(&s, &rel.join(&n), &d, o)?;
    }
    Ok(any)
}

/// Copy one entry (recursively for dirs) from `src` (at `rel` below the copied source;
/// empty for the source itself) to `dest`. Returns whether it was copied (the patterns may
/// leave it out).
fn copy_entry(src: &Entry, rel: &Path, dest: &Entry, o: &CopyOpts) -> Result<bool> {
    let md = src.stat()?.ok_or_else(|| {
        RootlessError::Invalid(format!("copy: /{} vanished", src.rel().display()))
    })?;
    let fmt = SFlag::from_bits_truncate(md.st_mode & SFlag::S_IFMT.bits());
    let is_dir = fmt == SFlag::S_IFDIR;
    let mut partial = false;
    if !o.filter.is_empty() && !rel.as_os_str().is_empty() {
        let r = rel.to_string_lossy();
        match o.filter.decide(&r, is_dir) {
            crate::patterns::Keep::No => return Ok(false),
            crate::patterns::Keep::Partial => partial = true,
            crate::patterns::Keep::Yes => {}
        }
    }
    let existing = dest.kind()?;
    let owner = o.owner.or(Some((md.st_uid, md.st_gid)));
    let mode = o
        .mode
        .as_ref()
        .map(|m| m.apply(md.st_mode, is_dir))
        .unwrap_or(md.st_mode);
    if is_dir {
        let created = match existing {
            Some(SFlag::S_IFDIR) => false,
            Some(_) => {
                dest.remove_all()?;
                o.forget(dest);
                dest.mkdir(0o700)?;
                true
            }
            None => {
                dest.mkdir(0o700)?;
                true
            }
        };
        let any = copy_children(src, rel, dest, o)?;
        if partial && !any {
            // Only there for what the patterns might have kept below it: nothing was.
            if created {
                let _ = dest.remove_all();
                o.forget(dest);
            }
            return Ok(false);
        }
        dest.chmod(mode)?;
        chown(dest, owner)?;
    } else {
        if let Some(k) = existing {
            if k == SFlag::S_IFDIR && !o.replace {
                return Err(RootlessError::Invalid(format!(
                    "copy: cannot replace directory /{} with a file",
                    dest.rel().display()
                )));
            }
            dest.remove_all()?;
            o.forget(dest);
        }
        if fmt == SFlag::S_IFLNK {
            dest.symlink(&src.readlink()?)?;
            chown(dest, owner)?;
        } else if fmt == SFlag::S_IFREG {
            let (o_uid, o_gid) = owner.unwrap_or((md.st_uid, md.st_gid));
            let linked = o
                .links
                .is_some_and(|l| l.take(src, &md, dest, (o_uid, o_gid), mode, o.time));
            let mut to = dest.create(0o600)?;
            if !linked {
                let mut from = src.open_read()?;
                std::io::copy(&mut from, &mut to).map_err(|e| RootlessError::io(dest.rel(), e))?;
            }
            // Owner, mode and times through the new file's descriptor.
            let at = format!("/{}", dest.rel().display());
            chown_fd(&to, (o_uid, o_gid), &at)?;
            let times = match o.time {
                Some(ns) => (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000)),
                None => (md.st_mtime, md.st_mtime_nsec),
            };
            chmod_and_time_fd(&to, mode, times, o.time.is_some(), &at)?;
            return Ok(true);
        } else {
            return Err(RootlessError::Invalid(format!(
                "copy: /{} is not a file, dir or symlink",
                src.rel().display()
            )));
        }
    }
    match o.time {
        Some(_) => set_time(dest, o.time)?,
        None => {
            let _ = dest.set_times(md.st_mtime, md.st_mtime_nsec);
        }
    }
    Ok(true)
}

/// If `src` is a tar archive (plain or gzip), unpacks it into the container dir `dest`, as
/// Dockerfile's ADD does; returns false (nothing done) for any other file.
fn unpack_archive(src: &Entry, root: &Root, dest: &str, o: &CopyOpts) -> Result<bool> {
    use std::io::Seek;
    let shown = PathBuf::from("/").join(src.rel());
    let mut f = src.open_read()?;
    let mut head = vec![0u8; 512];
    let n = read_full(&mut f, &mut head).map_err(|e| RootlessError::io(&shown, e))?;
    head.truncate(n);
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let is_tar = |h: &[u8]| h.len() >= 262 && &h[257..262] == b"ustar";
    if gzip {
        // Look at the first block of the decompressed stream.
        f.rewind().map_err(|e| RootlessError::io(&shown, e))?;
        let mut dec = flate2::read::GzDecoder::new(&mut f);
        let mut block = vec![0u8; 512];
        let Ok(n) = read_full(&mut dec, &mut block) else {
            return Ok(false);
        };
        if !is_tar(&block[..n]) {
            return Ok(false);
        }
    } else if !is_tar(&head) {
        return Ok(false);
    }
    f.rewind().map_err(|e| RootlessError::io(&shown, e))?;
    let (d, _) = mkdir_all(root, dest, 0o755, o.owner, o.time)?;
    let into = Root::at(&d)?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            f,
        )))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let mut notes = Vec::new();
    let mode = crate::unpack::TarMode {
        layer: false,
        owner: o.owner,
        mtime: o
            .time
            .map(|ns| (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))),
        max_bytes: None,
    };
    crate::unpack::unpack_tar_in(reader, &shown, &into, &mut notes, mode)?;
    Ok(true)
}

/// Reads until `buf` is full or the reader ends; returns how much was read.
pub(crate) fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_modes() {
        let m = |s: &str, old: u32, dir: bool| ModeSpec::parse(s).unwrap().apply(old, dir);
        assert_eq!(m("755", 0o600, false), 0o755);
        assert_eq!(m("u+x", 0o644, false), 0o744);
        assert_eq!(m("go-w", 0o666, false), 0o644);
        assert_eq!(m("a=r", 0o777, false), 0o444);
        assert_eq!(m("+x", 0o644, false), 0o755);
        assert_eq!(m("u=rwx,g=rx,o=", 0o600, false), 0o750);
        assert_eq!(m("a+X", 0o644, true), 0o755);
        assert_eq!(m("a+X", 0o644, false), 0o644);
        assert_eq!(m("a+X", 0o744, false), 0o755);
        assert_eq!(m("u+s", 0o755, false), 0o4755);
        for bad in ["", "u", "q+x", "u+x,", "99", "u+x+"] {
            let r = ModeSpec::parse(bad);
            // "u+x+" is `u+x` then `u+` (nothing): valid in chmod, so allowed.
            if bad == "u+x+" {
                assert!(r.is_ok());
            } else {
                assert!(r.is_err(), "{bad:?} accepted");
            }
        }
    }
}

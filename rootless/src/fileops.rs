//! File actions on an overlay (BuildKit FileOp semantics) and tree removal.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{Result, RootlessError};
use crate::overlay::Overlay;
use crate::pathsafe::{DotDot, resolve_in_root};
use crate::patterns::{Filter, glob};
use crate::proto::{Chown, CopyAction, CopySource, FileAction, IdSpec, UserDb};
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
    let mut ov = Overlay::mount(lowers, Some((upper, work)))?;
    for (i, a) in actions.iter().enumerate() {
        run_one(&ov.merged, a)
            .map_err(|e| RootlessError::Invalid(format!("file action {i}: {e}")))?;
    }
    ov.finish()
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

/// Sets atime and mtime (not following a symlink) to `ns` nanoseconds since the epoch.
fn set_time(p: &Path, ns: Option<i64>) -> Result<()> {
    if let Some(ns) = ns {
        let ts = TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| RootlessError::sys(format!("setting the time of {}", p.display()), e))?;
    }
    Ok(())
}

/// Text of `/etc/<name>` in a user database location, if it is there.
fn db_file(root: &Path, db: &UserDb, name: &str) -> Option<String> {
    let path = format!("/etc/{name}");
    let read = |r: &Path| -> Option<std::result::Result<String, ()>> {
        let p = resolve_in_root(r, &path, true, DotDot::Clamp).ok()?;
        let md = std::fs::symlink_metadata(&p).ok()?;
        if md.file_type().is_char_device() && md.rdev() == 0 {
            return Some(Err(())); // an overlay whiteout: deleted in this layer
        }
        md.is_file()
            .then(|| std::fs::read_to_string(&p).map_err(|_| ()))
    };
    match db {
        UserDb::Dest => read(root).and_then(|r| r.ok()),
        UserDb::Lowers(l) => l.iter().find_map(|d| read(d)).and_then(|r| r.ok()),
    }
}

/// The numeric owner of a [`Chown`], names looked up as BuildKit does (a user name brings
/// its primary group; a group alone leaves the user 0). An unknown name is an error.
fn resolve_owner(root: &Path, c: &Chown) -> Result<(u32, u32)> {
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

fn owner_of(root: &Path, c: &Option<Chown>) -> Result<Option<(u32, u32)>> {
    c.as_ref().map(|c| resolve_owner(root, c)).transpose()
}

/// mkdir -p inside `root` (container path); what it creates gets `mode`, `owner` and the
/// time. Returns the host path and whether the last element was created.
fn mkdir_all(
    root: &Path,
    path: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
    time: Option<i64>,
) -> Result<(PathBuf, bool)> {
    let host = resolve_in_root(root, path, true, DotDot::Clamp)?;
    let rel = host
        .strip_prefix(root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let mut cur = root.to_path_buf();
    let mut created = false;
    for c in rel.components() {
        cur.push(c);
        created = false;
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(RootlessError::Invalid(format!(
                    "{}: not a directory",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                )));
            }
            Err(_) => {
                std::fs::create_dir(&cur).map_err(|e| RootlessError::io(&cur, e))?;
                chmod(&cur, mode)?;
                chown(&cur, owner)?;
                set_time(&cur, time)?;
                created = true;
            }
        }
    }
    Ok((host, created))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
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
                if glob(last.as_bytes(), e.file_name().as_bytes()) {
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

/// The parent (container path) of a container path.
fn parent_of(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some((p, _)) if !p.is_empty() => p.to_string(),
        _ => "/".to_string(),
    }
}

fn run_one(root: &Path, a: &FileAction) -> Result<()> {
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
                let p = resolve_in_root(root, path, true, DotDot::Clamp)?;
                match std::fs::create_dir(&p) {
                    // Like BuildKit: something already there is fine.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(RootlessError::io(path, e)),
                    Ok(()) => {
                        chmod(&p, *mode)?;
                        chown(&p, owner)?;
                        set_time(&p, *timestamp)?;
                    }
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
            let p = resolve_in_root(root, path, true, DotDot::Clamp)?;
            let existed = std::fs::symlink_metadata(&p).is_ok();
            std::fs::write(&p, data).map_err(|e| RootlessError::io(path, e))?;
            if !existed {
                chmod(&p, *mode)?;
            }
            chown(&p, owner)?;
            set_time(&p, *timestamp)?;
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
        FileAction::Symlink {
            target,
            path,
            owner,
            timestamp,
        } => {
            let owner = owner_of(root, owner)?;
            let p = resolve_in_root(root, path, false, DotDot::Clamp)?;
            std::os::unix::fs::symlink(target, &p).map_err(|e| RootlessError::io(path, e))?;
            chown(&p, owner)?;
            set_time(&p, *timestamp)?;
        }
        FileAction::Copy(c) => copy(root, c)?,
    }
    Ok(())
}

fn copy(root: &Path, c: &CopyAction) -> Result<()> {
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
    let sroot = std::fs::canonicalize(&sroot).map_err(|e| RootlessError::io(&sroot, e))?;
    for req in &c.required_paths {
        let p = resolve_in_root(&sroot, req, false, DotDot::Clamp)?;
        if std::fs::symlink_metadata(&p).is_err() {
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
        let p = resolve_in_root(root, &parent, true, DotDot::Clamp)?;
        if !p.is_dir() {
            return Err(RootlessError::Invalid(format!(
                "copy: the destination's parent {parent} does not exist (and creating it was not asked for)"
            )));
        }
    }
    let owner = owner_of(root, &c.owner)?;
    let dest_host = resolve_in_root(root, &c.dest, true, DotDot::Clamp)?;
    let dest_is_dir = c.dest.ends_with('/') || srcs.len() > 1 || dest_host.is_dir();
    let opts = CopyOpts {
        owner,
        mode,
        filter: Filter::from_lists(&c.include_patterns, &c.exclude_patterns),
        time: c.timestamp,
        replace: c.always_replace_existing,
    };
    for s in srcs {
        let md = std::fs::symlink_metadata(&s).map_err(|e| RootlessError::io(&s, e))?;
        if c.unpack_archives && md.is_file() && unpack_archive(&s, root, &c.dest, &opts)? {
            continue;
        }
        let base = s
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = if md.is_dir() && c.dir_copy_contents {
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
        if md.is_dir() && c.dir_copy_contents {
            let (d, _) = mkdir_all(root, &target, 0o755, owner, c.timestamp)?;
            copy_children(&s, Path::new(""), root, &target, &opts)?;
            set_time(&d, c.timestamp)?;
        } else {
            copy_entry(&s, Path::new(""), root, &target, &opts)?;
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

struct CopyOpts {
    owner: Option<(u32, u32)>,
    mode: Option<ModeSpec>,
    /// Include/exclude patterns, matched against paths relative to the copied source.
    filter: Filter,
    time: Option<i64>,
    replace: bool,
}

/// Copies the children of the source dir `src` (at `rel` below the copied source) into the
/// container dir `dest`; returns whether anything was copied.
fn copy_children(src: &Path, rel: &Path, root: &Path, dest: &str, o: &CopyOpts) -> Result<bool> {
    let mut names: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| RootlessError::io(src, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let mut any = false;
    for n in names {
        let t = format!("{}/{}", dest.trim_end_matches('/'), n.to_string_lossy());
        any |= copy_entry(&src.join(&n), &rel.join(&n), root, &t, o)?;
    }
    Ok(any)
}

/// Copy one entry (recursively for dirs) from host path `src` (at `rel` below the copied
/// source; empty for the source itself) to container path `dest`. Returns whether it was
/// copied (the patterns may leave it out).
fn copy_entry(src: &Path, rel: &Path, root: &Path, dest: &str, o: &CopyOpts) -> Result<bool> {
    let md = std::fs::symlink_metadata(src).map_err(|e| RootlessError::io(src, e))?;
    let mut partial = false;
    if !o.filter.is_empty() && !rel.as_os_str().is_empty() {
        let r = rel.to_string_lossy();
        match o.filter.decide(&r, md.is_dir()) {
            crate::patterns::Keep::No => return Ok(false),
            crate::patterns::Keep::Partial => partial = true,
            crate::patterns::Keep::Yes => {}
        }
    }
    let d = resolve_in_root(root, dest, false, DotDot::Clamp)?;
    let existing = std::fs::symlink_metadata(&d).ok();
    let owner = o.owner.or(Some((md.uid(), md.gid())));
    let mode = o
        .mode
        .as_ref()
        .map(|m| m.apply(md.mode(), md.is_dir()))
        .unwrap_or(md.mode());
    if md.is_dir() {
        let created = match existing {
            Some(e) if e.is_dir() => false,
            Some(_) => {
                remove_any(&d).map_err(|e| RootlessError::io(&d, e))?;
                std::fs::create_dir(&d).map_err(|e| RootlessError::io(&d, e))?;
                true
            }
            None => {
                std::fs::create_dir(&d).map_err(|e| RootlessError::io(&d, e))?;
                true
            }
        };
        let any = copy_children(src, rel, root, dest, o)?;
        if partial && !any {
            // Only there for what the patterns might have kept below it: nothing was.
            if created {
                let _ = std::fs::remove_dir(&d);
            }
            return Ok(false);
        }
        chmod(&d, mode)?;
        chown(&d, owner)?;
    } else {
        if let Some(e) = &existing {
            if e.is_dir() && !o.replace {
                return Err(RootlessError::Invalid(format!(
                    "copy: cannot replace directory {dest} with a file"
                )));
            }
            remove_any(&d).map_err(|e| RootlessError::io(&d, e))?;
        }
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(src).map_err(|e| RootlessError::io(src, e))?;
            std::os::unix::fs::symlink(&t, &d).map_err(|e| RootlessError::io(&d, e))?;
            chown(&d, owner)?;
        } else if md.is_file() {
            std::fs::copy(src, &d).map_err(|e| RootlessError::io(&d, e))?;
            chown(&d, owner)?;
            chmod(&d, mode)?;
        } else {
            return Err(RootlessError::Invalid(format!(
                "copy: {} is not a file, dir or symlink",
                src.display()
            )));
        }
    }
    match o.time {
        Some(_) => set_time(&d, o.time)?,
        None => {
            let ts = TimeSpec::new(md.mtime(), md.mtime_nsec());
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &d,
                &ts,
                &ts,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    Ok(true)
}

/// If `src` is a tar archive (plain or gzip), unpacks it into the container dir `dest`, as
/// Dockerfile's ADD does; returns false (nothing done) for any other file.
fn unpack_archive(src: &Path, root: &Path, dest: &str, o: &CopyOpts) -> Result<bool> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(src).map_err(|e| RootlessError::io(src, e))?;
    let mut head = vec![0u8; 512];
    let n = read_full(&mut f, &mut head).map_err(|e| RootlessError::io(src, e))?;
    head.truncate(n);
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let is_tar = |h: &[u8]| h.len() >= 262 && &h[257..262] == b"ustar";
    if gzip {
        // Look at the first block of the decompressed stream.
        f.rewind().map_err(|e| RootlessError::io(src, e))?;
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
    f.rewind().map_err(|e| RootlessError::io(src, e))?;
    let (d, _) = mkdir_all(root, dest, 0o755, o.owner, o.time)?;
    let d = std::fs::canonicalize(&d).map_err(|e| RootlessError::io(&d, e))?;
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
    crate::unpack::unpack_tar(reader, src, &d, &mut notes, mode)?;
    Ok(true)
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
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

//! Container paths resolved inside a root directory by file descriptors, never by strings.
//!
//! A [`Root`] holds an `O_PATH` descriptor of a directory. A container path is walked one
//! component at a time with `openat(dir, name, O_PATH|O_NOFOLLOW)` from that descriptor: a
//! symlink is read with `readlinkat` and its target walked in turn (an absolute target restarts
//! at the root), and `..` pops the walk's own stack of directories, so it never climbs above
//! the root, even through a directory that was renamed away meanwhile. The walk is the one
//! implementation every caller uses, because it also does what `openat2` cannot: make missing
//! parents on the way, refuse a `..` above the root, and tell the real directories it went
//! through. The kernel's `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` (Linux 5.6+)
//! answers [`Root::open_path`] and is the oracle the tests hold the walk to.
//!
//! What is found is an [`Entry`]: the descriptor of the directory that holds it plus one name.
//! Every change (create, open, unlink, link, rename, mkdir, mknod, chown, chmod, xattr, times)
//! is a `*at` call on that pair with the final component never followed, or goes through
//! `/proc/self/fd/N` of an `O_PATH` descriptor of the entry itself (chmod, xattrs),
//! which names exactly that inode. Nothing is ever done with a host path built from strings
//! found in the tree.

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::error::{Result, RootlessError};

/// What to do with a `..` (in a path or a symlink target) that would climb above the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotDot {
    /// Stay at the root, as `chroot` (and `RESOLVE_IN_ROOT`) would.
    Clamp,
    /// Fail: the path is hostile.
    Reject,
}

/// Symlinks followed in one resolution before giving up (the kernel's limit).
const MAX_LINKS: usize = 40;

fn sys(what: impl std::fmt::Display, e: Errno) -> RootlessError {
    RootlessError::sys(what.to_string(), e)
}

fn escape(path: &[u8], reason: &str) -> RootlessError {
    RootlessError::Escape {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: reason.into(),
    }
}

/// `openat(dir, name, flags)` with `O_CLOEXEC`.
fn openat(dir: BorrowedFd, name: &CStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(dir, name, flags | OFlag::O_CLOEXEC, mode)
}

fn open_path_nofollow(dir: BorrowedFd, name: &CStr) -> nix::Result<OwnedFd> {
    openat(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty())
}

fn fstat(fd: BorrowedFd) -> nix::Result<FileStat> {
    nix::sys::stat::fstat(fd)
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Owner of a file just made, through its descriptor (`at` names it in an error). Before its
/// mode: a chown clears set-id bits.
pub(crate) fn chown_fd(f: &std::fs::File, (uid, gid): (u32, u32), at: &str) -> Result<()> {
    nix::unistd::fchown(f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| {
        sys(
            format!("chown {uid}:{gid} {at} (id not mapped in the namespace?)"),
            e,
        )
    })
}

/// Mode, then access and modification times, of a file just made, through its descriptor
/// (`at` names it in an error); a failure to set the times is an error only where
/// `times_matter`.
pub(crate) fn chmod_and_time_fd(
    f: &std::fs::File,
    mode: u32,
    (secs, nanos): (i64, i64),
    times_matter: bool,
    at: &str,
) -> Result<()> {
    nix::sys::stat::fchmod(f, Mode::from_bits_truncate(mode & 0o7777))
        .map_err(|e| sys(format!("chmod {:o} {at}", mode & 0o7777), e))?;
    let t = nix::sys::time::TimeSpec::new(secs, nanos);
    match nix::sys::stat::futimens(f, &t, &t) {
        Err(e) if times_matter => Err(sys(format!("setting the time of {at}"), e)),
        _ => Ok(()),
    }
}

/// `/proc/self/fd/N`: a path naming exactly the file `fd` refers to.
pub fn proc_path(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Splits a container path into its components; empty ones vanish. A `.` is kept (it says
/// the component before it must be a directory, as the kernel reads `file/.`), and a
/// trailing `/` becomes one for the same reason.
fn split(p: &[u8]) -> VecDeque<OsString> {
    let mut v: VecDeque<OsString> = p
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect();
    if p.ends_with(b"/") && !v.is_empty() {
        v.push_back(OsString::from("."));
    }
    v
}

fn cstr(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| RootlessError::Invalid(format!("path contains NUL: {name:?}")))
}

// ---- openat2 ------------------------------------------------------------------------------

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// 0: not probed, 1: available, 2: missing.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// `openat2(dir, path, O_PATH [|O_NOFOLLOW], RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS)`; None
/// where the kernel has no openat2.
fn openat2_in_root(dir: BorrowedFd, path: &CStr, follow: bool) -> Option<nix::Result<OwnedFd>> {
    if OPENAT2.load(Ordering::Relaxed) == 2 {
        return None;
    }
    let mut flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    if !follow {
        flags |= libc::O_NOFOLLOW as u64;
    }
    let how = OpenHow {
        flags,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: openat2 reads `how` (its size given) and the NUL-terminated path; the
        // returned descriptor, if any, is owned by nobody else.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            OPENAT2.store(1, Ordering::Relaxed);
            // SAFETY: a fresh descriptor returned by the kernel.
            return Some(Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) }));
        }
        match Errno::last() {
            Errno::ENOSYS | Errno::EPERM if OPENAT2.load(Ordering::Relaxed) == 0 => {
                // No openat2 here (or a seccomp filter refuses it): use the walk from now on.
                OPENAT2.store(2, Ordering::Relaxed);
                return None;
            }
            // A rename raced the look-up: the kernel asks to try again.
            Errno::EAGAIN | Errno::EINTR => continue,
            e => return Some(Err(e)),
        }
    }
}

// ---- Root ---------------------------------------------------------------------------------

/// A directory that container paths are resolved in.
pub struct Root {
    fd: Rc<OwnedFd>,
    host: PathBuf,
}

/// One name in a directory, found (or to be created) inside a [`Root`]: the directory's
/// descriptor and a single path component (`.` for the root itself).
#[derive(Clone)]
pub struct Entry {
    dir: Rc<OwnedFd>,
    name: CString,
    /// The entry's path below the root, as found (for messages and bookkeeping).
    rel: PathBuf,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry(/{})", self.rel.display())
    }
}

/// Called for each directory a walk makes.
type Made<'a> = &'a mut dyn FnMut(&Entry) -> Result<()>;

/// How a walk ended.
enum Walked {
    /// The final name in its directory (it may not exist).
    Entry(Entry),
    /// A directory on the way is missing or is not a directory.
    NoParent,
}

impl Root {
    /// Opens the directory `host` (which must be one; a symlink there is not followed).
    pub fn open(host: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(
            host,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| sys(format!("opening {}", host.display()), e))?;
        Ok(Root {
            fd: Rc::new(fd),
            host: host.to_path_buf(),
        })
    }

    /// The directory `dir` (found in another root) as a root of its own.
    pub fn at(dir: &Entry) -> Result<Root> {
        Ok(Root {
            fd: dir.as_dir()?,
            host: PathBuf::from("/").join(dir.rel()),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The root directory itself as an entry (`.` in it).
    pub fn top(&self) -> Entry {
        Entry {
            dir: self.fd.clone(),
            name: c".".to_owned(),
            rel: PathBuf::new(),
        }
    }

    /// The entry `path` names: every component but the last resolved inside the root
    /// (symlinks followed, `..` treated as `dd` says), the last followed too when it is a
    /// symlink and `follow` is set. `Ok(None)` when a directory on the way does not exist;
    /// the entry itself may not exist.
    pub fn entry(&self, path: &str, follow: bool, dd: DotDot) -> Result<Option<Entry>> {
        match self.walk(path.as_bytes(), follow, dd, None)? {
            Walked::Entry(e) => Ok(Some(e)),
            Walked::NoParent => Ok(None),
        }
    }

    /// Like [`Root::entry`], but missing directories on the way are created (mode 0755), and
    /// `made` is called for each right after it is made.
    pub fn entry_mkparents(
        &self,
        path: &str,
        follow: bool,
        dd: DotDot,
        made: &mut dyn FnMut(&Entry) -> Result<()>,
    ) -> Result<Entry> {
        match self.walk(path.as_bytes(), follow, dd, Some(made))? {
            Walked::Entry(e) => Ok(e),
            Walked::NoParent => Err(RootlessError::Invalid(format!(
                "{path}: a parent is not a directory"
            ))),
        }
    }

    /// `mkdir -p` inside the root: the directory `path` names, made with its parents where
    /// missing (`made` is called for each new one). A non-directory on the way is an error.
    /// Returns the directory's entry and whether the last component was made.
    pub fn mkdir_all(
        &self,
        path: &str,
        dd: DotDot,
        made: &mut dyn FnMut(&Entry) -> Result<()>,
    ) -> Result<(Entry, bool)> {
        let e = self.entry_mkparents(path, true, dd, made)?;
        let created = match e.stat()? {
            Some(st) if kind(&st) == SFlag::S_IFDIR => false,
            Some(_) => {
                return Err(RootlessError::Invalid(format!("{path}: not a directory")));
            }
            None => {
                e.mkdir(0o755)?;
                made(&e)?;
                true
            }
        };
        Ok((e, created))
    }

    /// An `O_PATH` descriptor of what `path` names (the last component followed when
    /// `follow`), None when it does not exist.
    pub fn open_path(&self, path: &str, follow: bool) -> Result<Option<OwnedFd>> {
        let c = CString::new(path.as_bytes())
            .map_err(|_| RootlessError::Invalid(format!("path contains NUL: {path:?}")))?;
        let c = if c.as_bytes().is_empty() {
            c"/".to_owned()
        } else {
            c
        };
        if let Some(r) = openat2_in_root(self.fd(), &c, follow) {
            return match r {
                Ok(fd) => Ok(Some(fd)),
                Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
                Err(e) => Err(sys(
                    format!("resolving {path} in {}", self.host.display()),
                    e,
                )),
            };
        }
        match self.entry(path, follow, DotDot::Clamp)? {
            Some(e) => e.open_path(),
            None => Ok(None),
        }
    }

    /// The contents of the regular file `path` names (followed inside the root), None when
    /// it is missing or not a regular file.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let e = self.entry(path, true, DotDot::Clamp).ok()??;
        let mut f = e.open_read().ok()?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).ok()?;
        Some(v)
    }

    /// The walk itself (see the module's comment).
    fn walk(
        &self,
        path: &[u8],
        follow: bool,
        dd: DotDot,
        mut create: Option<Made<'_>>,
    ) -> Result<Walked> {
        let mut queue = split(path);
        // Directories entered below the root, with their names.
        let mut stack: Vec<(Rc<OwnedFd>, OsString)> = Vec::new();
        let mut links = 0usize;
        let rel_of = |stack: &[(Rc<OwnedFd>, OsString)], name: Option<&OsStr>| {
            let mut p: PathBuf = stack.iter().map(|(_, n)| n.as_os_str()).collect();
            if let Some(n) = name {
                p.push(n);
            }
            p
        };
        while let Some(comp) = queue.pop_front() {
            if comp == "." {
                continue;
            }
            if comp == ".." {
                if stack.pop().is_none() && dd == DotDot::Reject {
                    return Err(escape(path, "`..` above the root"));
                }
                continue;
            }
            let cur = stack
                .last()
                .map(|(fd, _)| fd.clone())
                .unwrap_or_else(|| self.fd.clone());
            let name = cstr(&comp)?;
            let is_last = queue.is_empty();
            let fd = match open_path_nofollow(cur.as_fd(), &name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if is_last => {
                    return Ok(Walked::Entry(Entry {
                        dir: cur,
                        name,
                        rel: rel_of(&stack, Some(&comp)),
                    }));
                }
                Err(Errno::ENOENT) => match create.as_mut() {
                    Some(made) => {
                        let e = Entry {
                            dir: cur.clone(),
                            name: name.clone(),
                            rel: rel_of(&stack, Some(&comp)),
                        };
                        e.mkdir(0o755)?;
                        made(&e)?;
                        open_path_nofollow(cur.as_fd(), &name)
                            .map_err(|er| sys(format!("opening /{}", e.rel.display()), er))?
                    }
                    None => return Ok(Walked::NoParent),
                },
                Err(Errno::ENOTDIR) => return Ok(Walked::NoParent),
                Err(e) => {
                    return Err(sys(
                        format!("opening /{}", rel_of(&stack, Some(&comp)).display()),
                        e,
                    ));
                }
            };
            let st = fstat(fd.as_fd()).map_err(|e| sys("fstat", e))?;
            let k = kind(&st);
            if k == SFlag::S_IFLNK && (follow || !is_last) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(escape(path, "too many levels of symbolic links"));
                }
                let target = nix::fcntl::readlinkat(fd.as_fd(), c"")
                    .map_err(|e| sys("readlink", e))?
                    .into_vec();
                if target.first() == Some(&b'/') {
                    stack.clear();
                }
                for c in split(&target).into_iter().rev() {
                    queue.push_front(c);
                }
                if target.is_empty() {
                    return Ok(Walked::NoParent);
                }
                continue;
            }
            if is_last {
                return Ok(Walked::Entry(Entry {
                    dir: cur,
                    name,
                    rel: rel_of(&stack, Some(&comp)),
                }));
            }
            if k != SFlag::S_IFDIR {
                if create.is_some() {
                    return Err(RootlessError::Invalid(format!(
                        "/{}: not a directory",
                        rel_of(&stack, Some(&comp)).display()
                    )));
                }
                return Ok(Walked::NoParent);
            }
            stack.push((Rc::new(fd), comp));
        }
        // The path ended in a directory reached through `..` or a symlink, or is the root.
        Ok(Walked::Entry(match stack.pop() {
            None => self.top(),
            Some((fd, _)) => Entry {
                dir: fd,
                name: c".".to_owned(),
                rel: rel_of(&stack, None),
            },
        }))
    }
}

// ---- Entry --------------------------------------------------------------------------------

impl Entry {
    /// The entry's path below its root (`/`-less), as it was found.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// The name in its directory (`.` for a directory reached as such).
    pub fn name(&self) -> &CStr {
        &self.name
    }

    fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Whether this is a directory itself rather than a name in one (the root, or a path that
    /// ended in `..`).
    pub fn is_dot(&self) -> bool {
        self.name.as_bytes() == b"."
    }

    fn err(&self, what: &str, e: Errno) -> RootlessError {
        sys(format!("{what} /{}", self.rel.display()), e)
    }

    /// lstat: None when it does not exist.
    pub fn stat(&self) -> Result<Option<FileStat>> {
        match nix::sys::stat::fstatat(
            self.dir(),
            self.name.as_c_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.err("stat", e)),
        }
    }

    /// The file type, None when missing.
    pub fn kind(&self) -> Result<Option<SFlag>> {
        Ok(self.stat()?.map(|s| kind(&s)))
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind(), Ok(Some(SFlag::S_IFDIR)))
    }

    /// An `O_PATH|O_NOFOLLOW` descriptor of the entry; None when missing.
    pub fn open_path(&self) -> Result<Option<OwnedFd>> {
        match open_path_nofollow(self.dir(), &self.name) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.err("opening", e)),
        }
    }

    /// The entry as a directory that children are found in (never through a symlink).
    pub fn as_dir(&self) -> Result<Rc<OwnedFd>> {
        if self.is_dot() {
            return Ok(self.dir.clone());
        }
        openat(
            self.dir(),
            &self.name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map(Rc::new)
        .map_err(|e| self.err("opening directory", e))
    }

    /// The child `name` of this directory entry.
    pub fn child(&self, name: &OsStr) -> Result<Entry> {
        Entry::in_dir(self.as_dir()?, name, self.rel.join(name))
    }

    /// An entry for `name` in the directory `dir` (one component, not `.`/`..`).
    pub fn in_dir(dir: Rc<OwnedFd>, name: &OsStr, rel: PathBuf) -> Result<Entry> {
        if !crate::pathsafe::is_plain_name(name) {
            return Err(RootlessError::Invalid(format!("bad file name {name:?}")));
        }
        Ok(Entry {
            dir,
            name: cstr(name)?,
            rel,
        })
    }

    /// The names in this directory, sorted.
    pub fn list(&self) -> Result<Vec<OsString>> {
        let fd = openat(
            self.dir(),
            &self.name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| self.err("listing", e))?;
        let mut d = nix::dir::Dir::from_fd(fd).map_err(|e| self.err("listing", e))?;
        let mut v = Vec::new();
        for ent in d.iter() {
            let ent = ent.map_err(|e| self.err("listing", e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                v.push(OsString::from_vec(n.to_vec()));
            }
        }
        v.sort();
        Ok(v)
    }

    pub fn mkdir(&self, mode: u32) -> Result<()> {
        nix::sys::stat::mkdirat(
            self.dir(),
            self.name.as_c_str(),
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| self.err("mkdir", e))
    }

    /// Creates a new regular file (it must not exist; never through a symlink).
    pub fn create(&self, mode: u32) -> Result<std::fs::File> {
        openat(
            self.dir(),
            &self.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(mode),
        )
        .map(std::fs::File::from)
        .map_err(|e| self.err("creating", e))
    }

    /// Opens an existing regular file for writing, truncated (never through a symlink).
    pub fn open_truncate(&self) -> Result<std::fs::File> {
        openat(
            self.dir(),
            &self.name,
            OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map(std::fs::File::from)
        .map_err(|e| self.err("opening", e))
    }

    /// Opens a regular file for reading (never through a symlink; anything else is refused).
    pub fn open_read(&self) -> Result<std::fs::File> {
        let fd = openat(
            self.dir(),
            &self.name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| self.err("opening", e))?;
        let st = fstat(fd.as_fd()).map_err(|e| self.err("fstat", e))?;
        if kind(&st) != SFlag::S_IFREG {
            return Err(RootlessError::Invalid(format!(
                "/{}: not a regular file",
                self.rel.display()
            )));
        }
        Ok(std::fs::File::from(fd))
    }

    pub fn symlink(&self, target: &OsStr) -> Result<()> {
        nix::unistd::symlinkat(target, self.dir(), self.name.as_c_str())
            .map_err(|e| self.err("symlink", e))
    }

    pub fn readlink(&self) -> Result<OsString> {
        nix::fcntl::readlinkat(self.dir(), self.name.as_c_str())
            .map_err(|e| self.err("readlink", e))
    }

    /// Makes this name a hard link to `src` (itself not followed).
    pub fn link_to(&self, src: &Entry) -> Result<()> {
        nix::unistd::linkat(
            src.dir(),
            src.name.as_c_str(),
            self.dir(),
            self.name.as_c_str(),
            AtFlags::empty(),
        )
        .map_err(|e| self.err(&format!("link to /{}", src.rel.display()), e))
    }

    /// Puts a hard link to `src` (itself not followed) in this entry's place in one step: the
    /// link is made beside it under a name nothing has, then renamed over it. `Ok(false)`: the
    /// file system refused the link (another file system, too many links, not permitted), and
    /// nothing changed.
    pub fn replace_with_link(&self, src: &Entry) -> Result<bool> {
        let mut n = 0u32;
        let tmp = loop {
            let tmp = cstr(OsStr::new(&format!(
                ".envkit-link-{}-{n}",
                std::process::id()
            )))?;
            match nix::unistd::linkat(
                src.dir(),
                src.name.as_c_str(),
                self.dir(),
                tmp.as_c_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => break tmp,
                Err(Errno::EEXIST) if n < 64 => n += 1,
                Err(Errno::EXDEV | Errno::EPERM | Errno::EMLINK | Errno::EACCES) => {
                    return Ok(false);
                }
                Err(e) => return Err(self.err(&format!("link to /{}", src.rel.display()), e)),
            }
        };
        nix::fcntl::renameat(self.dir(), tmp.as_c_str(), self.dir(), self.name.as_c_str())
            .map_err(|e| {
                let _ = nix::unistd::unlinkat(
                    self.dir(),
                    tmp.as_c_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                self.err("renaming a link over", e)
            })?;
        Ok(true)
    }

    /// Whether the entry itself (not a symlink's target) has extended attributes; `true`
    /// where that cannot be told.
    pub fn has_xattrs(&self) -> bool {
        let p = proc_path(self.dir()).join(OsStr::from_bytes(self.name.as_bytes()));
        match xattr::list(&p) {
            Ok(mut names) => names.next().is_some(),
            Err(_) => true,
        }
    }

    pub fn mkfifo(&self, mode: u32) -> Result<()> {
        nix::sys::stat::mknodat(
            self.dir(),
            self.name.as_c_str(),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(mode),
            0,
        )
        .map_err(|e| self.err("mkfifo", e))
    }

    pub fn chown(&self, uid: u32, gid: u32) -> Result<()> {
        nix::unistd::fchownat(
            self.dir(),
            self.name.as_c_str(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(&format!("chown {uid}:{gid}"), e))
    }

    /// chmod of the entry itself; a symlink is left alone (Linux has no modes for them).
    pub fn chmod(&self, mode: u32) -> Result<()> {
        let Some(fd) = self.open_path()? else {
            return Err(self.err("chmod", Errno::ENOENT));
        };
        let st = fstat(fd.as_fd()).map_err(|e| self.err("fstat", e))?;
        if kind(&st) == SFlag::S_IFLNK {
            return Ok(());
        }
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &proc_path(fd.as_fd()),
            Mode::from_bits_truncate(mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| self.err(&format!("chmod {:o}", mode & 0o7777), e))
    }

    /// Sets an extended attribute on the entry itself (not on a symlink's target).
    pub fn set_xattr(&self, key: &str, value: &[u8]) -> Result<()> {
        let Some(fd) = self.open_path()? else {
            return Err(self.err("setxattr", Errno::ENOENT));
        };
        let st = fstat(fd.as_fd()).map_err(|e| self.err("fstat", e))?;
        if kind(&st) == SFlag::S_IFLNK {
            // Through /proc the link itself cannot be named; lsetxattr from its directory.
            let p = proc_path(self.dir()).join(OsStr::from_bytes(self.name.as_bytes()));
            return xattr::set(&p, key, value).map_err(|e| RootlessError::io(&self.rel, e));
        }
        let p = CString::new(proc_path(fd.as_fd()).into_os_string().into_vec())
            .map_err(|_| RootlessError::Invalid("proc path".into()))?;
        let k =
            CString::new(key).map_err(|_| RootlessError::Invalid(format!("xattr name {key:?}")))?;
        // SAFETY: both strings are NUL-terminated and the value's length is given.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                k.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            return Err(self.err(&format!("setxattr {key}"), Errno::last()));
        }
        Ok(())
    }

    /// Sets atime and mtime (of the entry itself, not a symlink's target).
    pub fn set_times(&self, secs: i64, nanos: i64) -> Result<()> {
        let ts = nix::sys::time::TimeSpec::new(secs, nanos);
        nix::sys::stat::utimensat(
            self.dir(),
            self.name.as_c_str(),
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.err("setting the time of", e))
    }

    /// Runs `f` (which adds or removes this entry) and gives the directory the entry is in
    /// its access and modification times back: a change the runtime makes for its own ends
    /// (a mount point) leaves no trace in the tree's times.
    pub fn keeping_dir_times<R>(&self, f: impl FnOnce() -> R) -> R {
        let before = nix::sys::stat::fstat(self.dir()).ok();
        let out = f();
        if let Some(st) = before {
            let a = nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec);
            let m = nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &proc_path(self.dir()),
                &a,
                &m,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            );
        }
        out
    }

    /// Removes whatever is there, a directory with everything in it; missing is fine.
    /// Directories without write or search permission are opened up first (as uid 0 of
    /// the namespace that is always allowed on what it owns).
    pub fn remove_all(&self) -> Result<()> {
        if self.is_dot() {
            return Err(RootlessError::Invalid(format!(
                "refusing to remove /{} itself",
                self.rel.display()
            )));
        }
        match self.kind()? {
            None => Ok(()),
            Some(SFlag::S_IFDIR) => {
                self.clear_dir(&mut |_| false)?;
                nix::unistd::unlinkat(
                    self.dir(),
                    self.name.as_c_str(),
                    nix::unistd::UnlinkatFlags::RemoveDir,
                )
                .or_else(|e| if e == Errno::ENOENT { Ok(()) } else { Err(e) })
                .map_err(|e| self.err("rmdir", e))
            }
            Some(_) => nix::unistd::unlinkat(
                self.dir(),
                self.name.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .or_else(|e| if e == Errno::ENOENT { Ok(()) } else { Err(e) })
            .map_err(|e| self.err("unlink", e)),
        }
    }

    /// Removes an empty directory or an empty regular file; anything else stays.
    pub fn remove_if_empty(&self) {
        let Ok(Some(st)) = self.stat() else { return };
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        let flag = if fmt == SFlag::S_IFDIR.bits() {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else if fmt == SFlag::S_IFREG.bits() && st.st_size == 0 {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        } else {
            return;
        };
        let _ = nix::unistd::unlinkat(self.dir(), self.name.as_c_str(), flag);
    }

    /// Removes the children of this directory for which `keep` says false (`keep` sees each
    /// child entry and decides; a kept directory is not descended into here).
    pub fn clear_dir(&self, keep: &mut dyn FnMut(&Entry) -> bool) -> Result<()> {
        if let Some(st) = self.stat()?
            && st.st_mode & 0o700 != 0o700
        {
            let _ = self.chmod(st.st_mode | 0o700);
        }
        let dir = self.as_dir()?;
        for n in self.list()? {
            let c = Entry::in_dir(dir.clone(), &n, self.rel.join(&n))?;
            if !keep(&c) {
                c.remove_all()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn host_of(root: &Path, e: &Entry) -> PathBuf {
        root.join(e.rel())
    }

    #[test]
    fn symlinks_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("/usr/lib", r.join("lib")).unwrap();
        symlink("../../../../etc", r.join("up")).unwrap();
        symlink("/", r.join("rootlink")).unwrap();
        std::fs::create_dir(r.join("etc")).unwrap();
        let root = Root::open(r).unwrap();
        let e = root.entry("/lib/x", true, DotDot::Clamp).unwrap().unwrap();
        assert_eq!(host_of(r, &e), r.join("usr/lib/x"));
        let e = root
            .entry("up/passwd", true, DotDot::Clamp)
            .unwrap()
            .unwrap();
        assert_eq!(host_of(r, &e), r.join("etc/passwd"));
        assert!(root.entry("up/passwd", true, DotDot::Reject).is_err());
        let e = root.entry("../../x", true, DotDot::Clamp).unwrap().unwrap();
        assert_eq!(host_of(r, &e), r.join("x"));
        let e = root
            .entry("rootlink/../../x", true, DotDot::Clamp)
            .unwrap()
            .unwrap();
        assert_eq!(host_of(r, &e), r.join("x"));
        let e = root.entry("/lib", false, DotDot::Reject).unwrap().unwrap();
        assert_eq!(host_of(r, &e), r.join("lib"));
        assert!(
            root.entry("/", true, DotDot::Reject)
                .unwrap()
                .unwrap()
                .is_dot()
        );
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        let root = Root::open(d.path()).unwrap();
        assert!(root.entry("a/x", true, DotDot::Clamp).is_err());
    }

    /// The escape of the string resolver: a missing component, `..`, then a symlink out.
    #[test]
    fn missing_component_then_dotdot_then_symlink_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("root");
        let host = d.path().join("host");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        symlink(&host, r.join("esc")).unwrap();
        symlink("x/../esc", r.join("l")).unwrap();
        let root = Root::open(&r).unwrap();
        // x does not exist: as in the kernel, `x/..` does not resolve.
        assert!(root.entry("l/f", true, DotDot::Clamp).unwrap().is_none());
        assert!(root.open_path("l/f", true).unwrap().is_none());
        // Creating parents makes x, and then esc is followed inside the root.
        let e = root
            .entry_mkparents("l/f", true, DotDot::Clamp, &mut |_| Ok(()))
            .unwrap();
        e.create(0o644).unwrap();
        assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0);
        assert!(r.join(host.strip_prefix("/").unwrap()).join("f").exists());
    }

    #[test]
    fn final_symlink_is_not_written_through_unless_followed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("root");
        std::fs::create_dir(&r).unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        symlink(&outside, r.join("f")).unwrap();
        let root = Root::open(&r).unwrap();
        let e = root.entry("f", false, DotDot::Clamp).unwrap().unwrap();
        assert!(e.open_truncate().is_err());
        e.chmod(0o777).unwrap();
        e.chown(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
        .unwrap();
        // Followed, the outside path is re-rooted, where its directories do not exist.
        assert!(root.entry("f", true, DotDot::Clamp).unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
    }

    #[test]
    fn openat2_and_the_walk_agree() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "x").unwrap();
        symlink("/a", r.join("abs")).unwrap();
        symlink("../../../a/b", r.join("a/up")).unwrap();
        let root = Root::open(r).unwrap();
        for p in [
            "abs/b/f",
            "a/up/f",
            "/../a/./b//f",
            "abs/up/f",
            "nope/f",
            "a/b/f/g",
        ] {
            let k = root.open_path(p, true).unwrap().map(|fd| {
                let st = fstat(fd.as_fd()).unwrap();
                (st.st_dev, st.st_ino)
            });
            let w = root
                .entry(p, true, DotDot::Clamp)
                .unwrap()
                .and_then(|e| e.stat().unwrap())
                .map(|st| (st.st_dev, st.st_ino));
            assert_eq!(k, w, "{p}");
        }
    }

    #[test]
    fn remove_all_does_not_follow() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("root");
        let host = d.path().join("host");
        std::fs::create_dir_all(r.join("d/e")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("keep"), "1").unwrap();
        symlink(&host, r.join("d/e/link")).unwrap();
        let root = Root::open(&r).unwrap();
        root.entry("d", false, DotDot::Clamp)
            .unwrap()
            .unwrap()
            .remove_all()
            .unwrap();
        assert!(!r.join("d").exists());
        assert!(host.join("keep").exists());
        assert!(root.top().remove_all().is_err());
    }
}

//! One container step: overlay + new mount/PID namespace + pivot_root + exec; the network is
//! the host's, none (loopback only) or a namespace of its own behind slirp4netns.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::error::{Result, RootlessError};
use crate::fsroot::{DotDot, Root};
use crate::overlay::{Overlay, remount_ro};
use crate::proto::{CA_BUNDLE_ENV, CA_BUNDLE_PATH, ExecRequest, ExitStatus, Mount, MountKind};
use crate::userdb::{ExecUser, resolve_user};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What to mount, with targets already resolved to host paths under the rootfs.
pub(crate) enum Plan {
    Proc(PathBuf),
    /// /dev, with /dev/shm of this many bytes, and the step's emulator bound in it.
    Dev(PathBuf, u64, Option<PathBuf>),
    /// A recursive bind (the host's /sys on the host's network), its top read-only unless
    /// the step is insecure (as runc mounts /sys for an unprivileged container).
    Rbind(PathBuf, PathBuf, bool),
    /// A fresh, read-only sysfs (the step's own network namespace shows in it).
    Sysfs(PathBuf),
    BindRo(PathBuf, PathBuf),
    Bind {
        src: PathBuf,
        dst: PathBuf,
        ro: bool,
    },
    Tmpfs {
        dst: PathBuf,
        size: Option<u64>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// Creates mount points in the rootfs, remembering which ones it had to create.
///
/// Targets are found by the descriptor walk of [`Root`] (symlinks followed inside the root);
/// what is handed to `mount` is the host path made of the real directories that walk went
/// through, so the kernel's own look-up at mount time takes exactly those (nothing runs in
/// the tree between the two). A path is used rather than `/proc/self/fd/N` because a magic
/// link does not cross mounts stacked on its directory later (`/dev`'s tmpfs, then device
/// binds in it), and a read-only remount must name the new mount, not the one beneath it.
pub(crate) struct MountPoints {
    pub(crate) root: PathBuf,
    fs: Root,
    pub(crate) created: Vec<PathBuf>,
}

impl MountPoints {
    pub(crate) fn new(root: &Path) -> Result<MountPoints> {
        Ok(MountPoints {
            root: root.to_path_buf(),
            fs: Root::open(root)?,
            created: Vec::new(),
        })
    }

    fn ensure(&mut self, target: &str, kind: Kind) -> Result<PathBuf> {
        let made = &mut self.created;
        let e = self
            .fs
            .entry_mkparents(target, true, DotDot::Clamp, &mut |e| {
                made.push(e.rel().to_path_buf());
                Ok(())
            })
            .map_err(|e| RootlessError::Invalid(format!("mount point {target}: {e}")))?;
        if e.stat()?.is_none() {
            // The directory it is made in keeps its times (they would otherwise tell when
            // the step started, and reach its layer).
            e.keeping_dir_times(|| {
                if kind == Kind::File {
                    e.create(0o644).map(drop)
                } else {
                    e.mkdir(0o755)
                }
            })?;
            self.created.push(e.rel().to_path_buf());
        }
        Ok(self.root.join(e.rel()))
    }
}

/// The text of the file `p` names inside `fs` (empty when there is none).
fn read_text(fs: &Root, p: &str) -> String {
    fs.read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub(crate) fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Find `arg0` in `path` inside the rootfs; returns the container path to exec.
fn lookup(root: &Path, arg0: &str, path: &str) -> Option<String> {
    if arg0.contains('/') {
        return Some(arg0.to_string());
    }
    let fs = Root::open(root).ok()?;
    for dir in path.split(':') {
        if dir.is_empty() {
            continue;
        }
        let cand = format!("{}/{arg0}", dir.trim_end_matches('/'));
        if let Ok(Some(e)) = fs.entry(&cand, true, DotDot::Clamp)
            && let Ok(Some(st)) = e.stat()
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_mode & 0o111 != 0
        {
            return Some(cand);
        }
    }
    None
}

/// Run the step; returns how it ended. Setup failures are errors.
pub fn run_step(r: &ExecRequest) -> Result<ExitStatus> {
    if r.args.is_empty() {
        return Err(RootlessError::Invalid("exec: empty args".into()));
    }
    // A network of its own: slirp4netns comes up while the root is mounted.
    let mut net = match r.sandbox_net {
        true => Some(crate::slirp::SandboxNet::start()?),
        false => None,
    };
    let mut ov = Overlay::mount(&r.lowers, Some((&r.upper, &r.work)))?;
    let root = ov.merged.clone();
    // Layer views are mounted here (the step's own mount namespace inherits them) and bound
    // into the root like any other directory.
    let mut views: Vec<Overlay> = Vec::new();
    // Views whose changes are outputs of the step (their upper dirs are kept).
    let mut kept: Vec<usize> = Vec::new();
    let mut scratch_dirs: Vec<PathBuf> = Vec::new();
    let mut scratch_mounts: Vec<PathBuf> = Vec::new();
    let mut resolved = r.clone();
    let mut created: Vec<PathBuf> = Vec::new();
    let mounted = mount_views(
        r,
        &mut resolved,
        &mut views,
        &mut kept,
        &mut scratch_dirs,
        &mut scratch_mounts,
    );
    let mut res = mounted.and_then(|()| {
        let mut mp = MountPoints::new(&root)?;
        let res = prepare_and_run(&resolved, &root, &mut mp, net.as_mut());
        created = std::mem::take(&mut mp.created);
        res
    });
    if res.is_ok() {
        for &i in &kept {
            if let Err(e) = views[i].finish() {
                res = Err(e);
                break;
            }
        }
    }
    drop(views);
    if r.sandbox_net {
        let _ = std::fs::remove_file(sandbox_resolv_path(r));
    }
    for d in &scratch_dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    for d in &scratch_mounts {
        let _ = nix::mount::umount2(d, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(d);
    }
    if ov.is_copy() {
        // The copy's tree is diffed as it is: the mount points made for the step go first.
        remove_mount_points(&root, &created);
        if res.is_ok() {
            ov.finish()?;
        }
    }
    drop(ov);
    let lowers = r.lowers.clone();
    // Mount points we created must not end up in the layer.
    remove_mount_points(&r.upper, &created);
    // Existing parents were copied up only because we created a mount point in them: drop
    // them again when they are empty and unchanged.
    let mut parents: Vec<PathBuf> = created
        .iter()
        .filter_map(|c| c.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty() && !created.contains(p))
        .collect();
    parents.sort();
    parents.dedup();
    for rel in parents.iter().rev() {
        drop_unchanged_copy_up(&r.upper, &lowers, rel);
    }
    res
}

/// Where a sandboxed step's resolv.conf is written: beside its work dir, inside the snapshot
/// being prepared (removed after the step; a crash leaves it to the store's clean-up).
fn sandbox_resolv_path(r: &ExecRequest) -> PathBuf {
    r.work.with_file_name("sandbox-resolv.conf")
}

/// Removes the mount points made for a step (empty dirs and files, deepest first) under
/// `base`. The step may have changed the tree: they are found inside `base` by descriptors.
fn remove_mount_points(base: &Path, created: &[PathBuf]) {
    let Ok(fs) = Root::open(base) else { return };
    for rel in created.iter().rev() {
        if let Ok(Some(e)) = fs.entry(&rel.to_string_lossy(), false, DotDot::Clamp) {
            e.keeping_dir_times(|| e.remove_if_empty());
        }
    }
}

/// Brings up `lo` in a fresh network namespace (it starts down).
pub(crate) fn loopback_up() -> Result<()> {
    // SAFETY: plain socket/ioctl calls on a struct we own; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(RootlessError::sys("socket", nix::errno::Errno::last()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let res = if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            Err(RootlessError::sys(
                "SIOCGIFFLAGS lo",
                nix::errno::Errno::last(),
            ))
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                Err(RootlessError::sys(
                    "SIOCSIFFLAGS lo",
                    nix::errno::Errno::last(),
                ))
            } else {
                Ok(())
            }
        };
        libc::close(fd);
        res
    }
}

/// A fresh private tmpfs on a temp dir (for files that must stay in memory).
fn tmpfs_dir() -> Result<PathBuf> {
    let t = std::env::temp_dir().join("envkit-mem-XXXXXX");
    let dir = nix::unistd::mkdtemp(&t)
        .map_err(|e| RootlessError::sys(format!("mkdtemp {}", t.display()), e))?;
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=16m"),
    )
    .map_err(|e| RootlessError::sys(format!("mount tmpfs on {}", dir.display()), e))?;
    Ok(dir)
}

/// Mounts every [`MountKind::Layers`] and [`MountKind::MemFile`] of `r`, prepares every
/// [`MountKind::Socket`], and rewrites each in `out` as a bind.
fn mount_views(
    r: &ExecRequest,
    out: &mut ExecRequest,
    views: &mut Vec<Overlay>,
    kept: &mut Vec<usize>,
    scratch_dirs: &mut Vec<PathBuf>,
    scratch_mounts: &mut Vec<PathBuf>,
) -> Result<()> {
    for (i, m) in r.mounts.iter().enumerate() {
        if let MountKind::Socket { uid, gid, mode } = &m.kind {
            nix::unistd::chown(
                &m.source,
                Some(Uid::from_raw(*uid)),
                Some(Gid::from_raw(*gid)),
            )
            .map_err(|e| RootlessError::sys(format!("chown {}", m.source.display()), e))?;
            std::fs::set_permissions(&m.source, std::fs::Permissions::from_mode(*mode & 0o7777))
                .map_err(|e| RootlessError::io(&m.source, e))?;
            out.mounts[i] = Mount {
                source: m.source.clone(),
                target: m.target.clone(),
                kind: MountKind::Bind { readonly: false },
            };
            continue;
        }
        if let MountKind::MemFile {
            data,
            uid,
            gid,
            mode,
        } = &m.kind
        {
            let dir = tmpfs_dir()?;
            let file = dir.join("data");
            let res = (|| {
                std::fs::write(&file, &data.0).map_err(|e| RootlessError::io(&file, e))?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode & 0o7777))
                    .map_err(|e| RootlessError::io(&file, e))?;
                nix::unistd::chown(&file, Some(Uid::from_raw(*uid)), Some(Gid::from_raw(*gid)))
                    .map_err(|e| RootlessError::sys(format!("chown {}", file.display()), e))
            })();
            scratch_mounts.push(dir);
            res?;
            out.mounts[i] = Mount {
                source: file,
                target: m.target.clone(),
                kind: MountKind::Bind { readonly: true },
            };
            continue;
        }
        let MountKind::Layers {
            lowers,
            selector,
            writable,
            keep,
        } = &m.kind
        else {
            continue;
        };
        let ov = if let (true, Some((u, w))) = (*writable, keep) {
            kept.push(views.len());
            Overlay::mount(lowers, Some((u, w)))?
        } else if *writable {
            // Next to the step's work dir: the same filesystem, and inside the snapshot being
            // prepared, so a crash leaves nothing the store does not clean up.
            let dir = r.work.with_file_name(format!("view-{i}"));
            let (u, w) = (dir.join("upper"), dir.join("work"));
            scratch_dirs.push(dir);
            Overlay::mount(lowers, Some((&u, &w)))?
        } else if let [only] = lowers.as_slice() {
            // One read-only layer (a selector into it): its own directory is the view.
            out.mounts[i] = Mount {
                source: find_selector(only, selector, &m.target)?,
                target: m.target.clone(),
                kind: MountKind::Bind { readonly: true },
            };
            continue;
        } else {
            Overlay::mount(lowers, None)?
        };
        let sel = selector.trim_start_matches('/');
        let source = if sel.is_empty() {
            ov.merged.clone()
        } else {
            find_selector(&ov.merged, sel, &m.target)?
        };
        out.mounts[i] = Mount {
            source,
            target: m.target.clone(),
            kind: MountKind::Bind {
                readonly: !*writable,
            },
        };
        views.push(ov);
    }
    Ok(())
}

/// The host path of a mount's `selector` inside `base`: found by descriptors (symlinks
/// followed inside `base`), handed on as the path of the real directories that walk went
/// through.
fn find_selector(base: &Path, selector: &str, target: &str) -> Result<PathBuf> {
    let e = Root::open(base)?
        .entry(selector, true, DotDot::Reject)?
        .filter(|e| matches!(e.stat(), Ok(Some(_))))
        .ok_or_else(|| {
            RootlessError::Invalid(format!(
                "mount {target}: {selector} does not exist in its input"
            ))
        })?;
    Ok(base.join(e.rel()))
}

fn drop_unchanged_copy_up(upper: &Path, lowers: &[PathBuf], rel: &Path) {
    use std::os::unix::fs::MetadataExt;
    // The step may have changed the tree: the dir is found by descriptors, and the path used
    // below is made of the real directories that walk went through.
    let rel = rel.to_string_lossy();
    let Some(e) = Root::open(upper)
        .ok()
        .and_then(|fs| fs.entry(&rel, false, DotDot::Clamp).ok().flatten())
    else {
        return;
    };
    let up = upper.join(e.rel());
    let Ok(md) = std::fs::symlink_metadata(&up) else {
        return;
    };
    if !md.is_dir()
        || std::fs::read_dir(&up)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return;
    }
    // Only overlay bookkeeping (impure, origin) may be there; opaque or user xattrs keep it.
    let keep = xattr::list(&up)
        .map(|l| {
            l.into_iter().any(|n| {
                let n = n.to_string_lossy();
                !n.starts_with("user.overlay.") || n == "user.overlay.opaque"
            })
        })
        .unwrap_or(true);
    if keep {
        return;
    }
    let lower = lowers.iter().find_map(|l| {
        let fs = Root::open(l).ok()?;
        fs.entry(&rel, false, DotDot::Clamp).ok()??.stat().ok()?
    });
    if let Some(lmd) = lower
        && lmd.st_mode & libc::S_IFMT == libc::S_IFDIR
        && lmd.st_mode == md.mode()
        && lmd.st_uid == md.uid()
        && lmd.st_gid == md.gid()
    {
        e.remove_if_empty();
    }
}

/// What a process in the container gets: its mounts, environment and user.
pub(crate) struct Prepared {
    pub(crate) plan: Vec<Plan>,
    pub(crate) env: Vec<String>,
    pub(crate) user: ExecUser,
}

/// The mounts, environment and user of `r` in the root of `mp` (where mount points are made); the
/// cwd is created.
pub(crate) fn build_plan(r: &ExecRequest, mp: &mut MountPoints) -> Result<Prepared> {
    let user = resolve_user(
        &r.user,
        &read_text(&mp.fs, "/etc/passwd"),
        &read_text(&mp.fs, "/etc/group"),
    )?;
    let mut env = r.env.clone();
    if env_get(&env, "PATH").is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if env_get(&env, "HOME").is_none() {
        env.push(format!("HOME={}", user.home));
    }
    if !r.hostname.is_empty() && env_get(&env, "HOSTNAME").is_none() {
        env.push(format!("HOSTNAME={}", r.hostname));
    }
    let mut plan = vec![
        Plan::Proc(mp.ensure("/proc", Kind::Dir)?),
        Plan::Dev(
            mp.ensure("/dev", Kind::Dir)?,
            64 << 20,
            r.emulator.as_ref().map(|e| e.path.clone()),
        ),
        // sysfs shows the network namespace of whoever mounted it: a step with a network of
        // its own gets a fresh one (read-only); on the host's network, the host's is bound.
        if r.network_none || r.sandbox_net {
            Plan::Sysfs(mp.ensure("/sys", Kind::Dir)?)
        } else {
            Plan::Rbind(
                PathBuf::from("/sys"),
                mp.ensure("/sys", Kind::Dir)?,
                !r.insecure,
            )
        },
    ];
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if f == "/etc/resolv.conf" && r.sandbox_net {
            // Behind slirp4netns the name server is slirp's forwarder.
            let rc = sandbox_resolv_path(r);
            std::fs::write(&rc, crate::slirp::resolv_conf())
                .map_err(|e| RootlessError::io(&rc, e))?;
            plan.push(Plan::BindRo(rc, mp.ensure(f, Kind::File)?));
        } else if Path::new(f).exists() {
            plan.push(Plan::BindRo(PathBuf::from(f), mp.ensure(f, Kind::File)?));
        }
    }
    if let Some(ca) = &r.ca_bundle {
        if !ca.is_file() {
            return Err(RootlessError::Invalid(format!(
                "CA bundle {} is not a file",
                ca.display()
            )));
        }
        plan.push(Plan::BindRo(
            ca.clone(),
            mp.ensure(CA_BUNDLE_PATH, Kind::File)?,
        ));
        for k in CA_BUNDLE_ENV {
            if env_get(&env, k).is_none() {
                env.push(format!("{k}={CA_BUNDLE_PATH}"));
            }
        }
    }
    let mut extra = r.mounts.clone();
    extra.sort_by_key(|m| m.target.matches('/').count());
    for m in &extra {
        match &m.kind {
            MountKind::Bind { readonly } => {
                let md =
                    std::fs::metadata(&m.source).map_err(|e| RootlessError::io(&m.source, e))?;
                let kind = if md.is_dir() { Kind::Dir } else { Kind::File };
                plan.push(Plan::Bind {
                    src: m.source.clone(),
                    dst: mp.ensure(&m.target, kind)?,
                    ro: *readonly,
                });
            }
            MountKind::Tmpfs { size } => plan.push(Plan::Tmpfs {
                dst: mp.ensure(&m.target, Kind::Dir)?,
                size: *size,
            }),
            MountKind::Layers { .. } | MountKind::MemFile { .. } | MountKind::Socket { .. } => {
                return Err(RootlessError::Invalid(format!(
                    "view at {} was not mounted",
                    m.target
                )));
            }
        }
    }
    // cwd: created if missing, and it persists.
    let cwd = if r.cwd.is_empty() { "/" } else { &r.cwd };
    mp.fs
        .mkdir_all(cwd, DotDot::Clamp, &mut |_| Ok(()))
        .map_err(|e| RootlessError::Invalid(format!("working directory {cwd}: {e}")))?;
    Ok(Prepared { plan, env, user })
}

fn prepare_and_run(
    r: &ExecRequest,
    root: &Path,
    mp: &mut MountPoints,
    net: Option<&mut crate::slirp::SandboxNet>,
) -> Result<ExitStatus> {
    // A step of another architecture: its own binfmt_misc handler where the kernel allows
    // one, else the emulator runs the first program only.
    let mut bound;
    let r = match &r.emulator {
        Some(e) => match crate::binfmt::register_if(e) {
            Ok(()) => {
                bound = r.clone();
                bound.emulator = None;
                &bound
            }
            Err(why) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "envkit: {why}; the emulator runs this step's first program only (programs it \
starts fail with \"Exec format error\"): a binfmt_misc handler registered with the F flag, or \
Linux 6.7 or later, runs them all"
                );
                r
            }
        },
        None => r,
    };
    let Prepared { plan, env, user } = build_plan(r, mp)?;
    let args = match &r.emulator {
        Some(_) => emulated_args(root, &r.args, &env)?,
        None => r.args.clone(),
    };
    let Some(mut step) = make_step(root, &args, &env, &r.cwd, user, &r.rlimits)? else {
        return Ok(ExitStatus::Code(127));
    };
    step.set_confinement(r.insecure, r.no_new_privs);
    run_in_pid_ns(root, &plan, r, &step, net)
}

impl Step {
    /// Confined as BuildKit confines a step (Docker's default capabilities and seccomp
    /// profile) unless `insecure`; `no_new_privs` as asked. Call before forking the step's
    /// process: the seccomp filter is built here, once per process, and only installed there.
    pub(crate) fn set_confinement(&mut self, insecure: bool, no_new_privs: bool) {
        self.confine = !insecure;
        self.no_new_privs = no_new_privs;
        if self.confine && !crate::seccomp::prepare() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "envkit: no seccomp profile for {}: steps run without a syscall filter",
                    std::env::consts::ARCH
                );
            });
        }
    }
}

/// The process to exec: `args[0]` looked up on the env's PATH inside `root`. None (and a
/// message on stderr) when there is no such executable.
pub(crate) fn make_step(
    root: &Path,
    args: &[String],
    env: &[String],
    cwd: &str,
    user: ExecUser,
    rlimits_in: &[(String, u64, u64)],
) -> Result<Option<Step>> {
    let Some(arg0) = args.first() else {
        return Err(RootlessError::Invalid("exec: empty args".into()));
    };
    let path_env = env_get(env, "PATH").unwrap_or(DEFAULT_PATH).to_string();
    let Some(exe) = lookup(root, arg0, &path_env) else {
        let mut err = std::io::stderr();
        let _ = writeln!(
            err,
            "envkit: {arg0:?}: executable file not found in $PATH ({path_env})"
        );
        return Ok(None);
    };
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    let cs = |s: &str, what: &str| {
        CString::new(s).map_err(|_| RootlessError::Invalid(format!("{what} contains NUL: {s:?}")))
    };
    let exe_c = cs(&exe, "executable")?;
    let args_c = args
        .iter()
        .map(|a| cs(a, "argument"))
        .collect::<Result<Vec<_>>>()?;
    let env_c = env
        .iter()
        .map(|a| cs(a, "environment"))
        .collect::<Result<Vec<_>>>()?;
    let cwd_c = cs(cwd, "cwd")?;
    let mut rlimits = Vec::with_capacity(rlimits_in.len());
    for (name, soft, hard) in rlimits_in {
        let res = rlimit_resource(name)
            .ok_or_else(|| RootlessError::Invalid(format!("unknown ulimit {name:?}")))?;
        if soft > hard {
            return Err(RootlessError::Invalid(format!(
                "ulimit {name}: soft limit {soft} is above the hard limit {hard}"
            )));
        }
        let lim = libc::rlimit {
            rlim_cur: *soft as libc::rlim_t,
            rlim_max: *hard as libc::rlim_t,
        };
        rlimits.push((res, lim, name.clone()));
    }
    Ok(Some(Step {
        exe: exe_c,
        args: args_c,
        env: env_c,
        cwd: cwd_c,
        user,
        rlimits,
        stdin_null: true,
        confine: false,
        no_new_privs: false,
    }))
}

fn run_in_pid_ns(
    root: &Path,
    plan: &[Plan],
    r: &ExecRequest,
    step: &Step,
    net: Option<&mut crate::slirp::SandboxNet>,
) -> Result<ExitStatus> {
    if let Some(n) = net {
        n.wait_ready()
            .map_err(|e| RootlessError::Helper(format!("step setup: {e}")))?;
    }
    let (fork, st_r, st_w) = fork_pid1()?;
    match fork {
        ForkResult::Child => {
            drop(st_r);
            pid1(root, plan, r, step, st_w)
        }
        ForkResult::Parent { child } => {
            drop(st_w);
            let recs = records(st_r);
            let ws = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => break r.map_err(|e| RootlessError::sys("waitpid", e))?,
                }
            };
            let mut status = match ws {
                WaitStatus::Exited(_, c) => ExitStatus::Code(c),
                WaitStatus::Signaled(_, s, _) => ExitStatus::Signal(s as i32),
                _ => ExitStatus::Code(125),
            };
            for (kind, text) in recs {
                match kind {
                    b'F' => return Err(RootlessError::Helper(format!("step setup: {text}"))),
                    b'X' => {
                        let _ = writeln!(std::io::stderr(), "envkit: {text}");
                    }
                    b'E' => status = ExitStatus::Code(text.parse().unwrap_or(125)),
                    b'S' => status = ExitStatus::Signal(text.parse().unwrap_or(9)),
                    _ => {}
                }
            }
            Ok(status)
        }
    }
}

pub(crate) struct Step {
    exe: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    user: ExecUser,
    rlimits: Vec<(RlimitResource, libc::rlimit, String)>,
    /// Replace stdin by /dev/null (build steps); else it is inherited (a terminal).
    pub(crate) stdin_null: bool,
    /// Keep only Docker's default capabilities and install the seccomp filter (steps and
    /// environments that are not insecure).
    pub(crate) confine: bool,
    /// Set `no_new_privs` before exec.
    pub(crate) no_new_privs: bool,
}

/// `setrlimit`'s resource argument: glibc gives it a type of its own, musl an int.
#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

/// A resource by its `ulimit` name (as BuildKit's `Ulimit.Name` spells them).
fn rlimit_resource(name: &str) -> Option<RlimitResource> {
    Some(match name {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Enters a new PID namespace and forks its first process. The pipe carries the child's
/// status records (`send`) to the parent (`records`): the read end is the parent's, the write
/// end the child's; each side drops the other's.
pub(crate) fn fork_pid1() -> Result<(ForkResult, OwnedFd, OwnedFd)> {
    nix::sched::unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| RootlessError::sys("unshare(CLONE_NEWPID)", e))?;
    let (st_r, st_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RootlessError::sys("pipe2", e))?;
    // SAFETY: the helper is single-threaded.
    let fork = unsafe { nix::unistd::fork() }.map_err(|e| RootlessError::sys("fork", e))?;
    Ok((fork, st_r, st_w))
}

/// Every status record the child sent, once it has closed its end: (kind, text).
pub(crate) fn records(st_r: OwnedFd) -> Vec<(u8, String)> {
    let mut msgs = Vec::new();
    let _ = std::fs::File::from(st_r).read_to_end(&mut msgs);
    msgs.split(|b| *b == 0)
        .filter(|r| !r.is_empty())
        .map(|r| (r[0], String::from_utf8_lossy(&r[1..]).into_owned()))
        .collect()
}

/// Writes one status record: a kind byte, the text, a NUL.
pub(crate) fn send(fd: &OwnedFd, kind: u8, msg: &str) {
    let mut v = Vec::with_capacity(msg.len() + 2);
    v.push(kind);
    v.extend_from_slice(msg.as_bytes());
    v.push(0);
    let _ = nix::unistd::write(fd, &v);
}

/// PID 1 of the step's PID namespace: mounts, pivot_root, runs the step, reaps, reports.
fn pid1(root: &Path, plan: &[Plan], r: &ExecRequest, step: &Step, st: OwnedFd) -> ! {
    let code = match pid1_inner(root, plan, r, step, &st) {
        Ok(()) => 0,
        Err(e) => {
            send(&st, b'F', &e.to_string());
            125
        }
    };
    // SAFETY: plain process exit in a forked child.
    unsafe { libc::_exit(code) }
}

fn m(
    src: Option<&Path>,
    dst: &Path,
    fs: Option<&str>,
    fl: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    nix::mount::mount(src, dst, fs, fl, data).map_err(|e| {
        RootlessError::sys(
            format!(
                "mount {} on {} ({})",
                src.map(|s| s.display().to_string()).unwrap_or_default(),
                dst.display(),
                fs.unwrap_or("bind")
            ),
            e,
        )
    })
}

/// The argv of a step run by the emulator at [`EMULATOR_PATH`]: the emulator, `-0` and the
/// program's own argv[0], the program (found on the step's `PATH` in `root`, as the kernel
/// would not do for the emulator), then the program's arguments. A program that is not found
/// is left to [`make_step`] to report.
fn emulated_args(root: &Path, args: &[String], env: &[String]) -> Result<Vec<String>> {
    let Some(arg0) = args.first() else {
        return Err(RootlessError::Invalid("exec: empty args".into()));
    };
    let path_env = env_get(env, "PATH").unwrap_or(DEFAULT_PATH);
    let Some(exe) = lookup(root, arg0, path_env) else {
        return Ok(args.to_vec());
    };
    let mut out = vec![
        crate::proto::EMULATOR_PATH.to_string(),
        "-0".to_string(),
        arg0.clone(),
        exe,
    ];
    out.extend(args[1..].iter().cloned());
    Ok(out)
}

/// Binds the emulator `src` read-only at [`EMULATOR_PATH`] in the freshly mounted `dev`.
fn bind_emulator(src: &Path, dev: &Path) -> Result<()> {
    let name = crate::proto::EMULATOR_PATH.trim_start_matches("/dev/");
    let t = dev.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o555)
        .open(&t)
        .map_err(|e| RootlessError::io(&t, e))?;
    m(Some(src), &t, None, MsFlags::MS_BIND, None)?;
    remount_ro(&t)
}

fn setup_dev(dev: &Path, shm_size: u64) -> Result<()> {
    let nosuid = MsFlags::MS_NOSUID;
    m(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        nosuid | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for n in DEV_NODES {
        let host = Path::new("/dev").join(n);
        if !host.exists() {
            continue;
        }
        let t = dev.join(n);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .open(&t)
            .map_err(|e| RootlessError::io(&t, e))?;
        m(Some(&host), &t, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| RootlessError::io(&pts, e))?;
    let fl = nosuid | MsFlags::MS_NOEXEC;
    if m(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        fl,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .is_err()
    {
        m(
            Some(Path::new("devpts")),
            &pts,
            Some("devpts"),
            fl,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?;
    }
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| RootlessError::io(&shm, e))?;
    m(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        nosuid | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=1777,size={shm_size}")),
    )?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let l = dev.join(name);
        std::os::unix::fs::symlink(target, &l).map_err(|e| RootlessError::io(&l, e))?;
    }
    Ok(())
}

fn pid1_inner(
    root: &Path,
    plan: &[Plan],
    r: &ExecRequest,
    step: &Step,
    st: &OwnedFd,
) -> Result<()> {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    enter_root(root, plan, r)?;

    // SAFETY: single-threaded.
    let child = match unsafe { nix::unistd::fork() }.map_err(|e| RootlessError::sys("fork", e))? {
        ForkResult::Child => {
            let e = exec_step(step);
            send(st, b'X', &e);
            // SAFETY: forked child.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    reap(child, st);
    Ok(())
}

/// In a fresh mount (and UTS, network) namespace: mounts `plan` and pivots into `root`. (A
/// sandboxed step's network namespace is the helper's own, inherited: see [`crate::slirp`].)
pub(crate) fn enter_root(root: &Path, plan: &[Plan], r: &ExecRequest) -> Result<()> {
    let mut ns = CloneFlags::CLONE_NEWNS;
    if !r.hostname.is_empty() {
        ns |= CloneFlags::CLONE_NEWUTS;
    }
    if r.network_none {
        ns |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(ns).map_err(|e| RootlessError::sys("unshare(CLONE_NEWNS)", e))?;
    if r.network_none {
        loopback_up()?;
    }
    if !r.hostname.is_empty() {
        nix::unistd::sethostname(&r.hostname).map_err(|e| RootlessError::sys("sethostname", e))?;
    }
    for p in plan {
        match p {
            Plan::Proc(t) => m(
                Some(Path::new("proc")),
                t,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None,
            )?,
            Plan::Dev(t, shm, emulator) => {
                setup_dev(t, *shm)?;
                if let Some(e) = emulator {
                    bind_emulator(e, t)?;
                }
            }
            Plan::Rbind(s, t, ro) => {
                m(Some(s), t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                if *ro {
                    remount_ro(t)?;
                }
            }
            Plan::Sysfs(t) => m(
                Some(Path::new("sysfs")),
                t,
                Some("sysfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                None,
            )?,
            Plan::BindRo(s, t) => {
                m(Some(s), t, None, MsFlags::MS_BIND, None)?;
                remount_ro(t)?;
            }
            Plan::Bind { src, dst, ro } => {
                // A target under a tmpfs mounted by this plan (/dev: GPU device nodes) is not
                // where the plan made it: make it in the fresh tmpfs.
                if std::fs::symlink_metadata(dst).is_err() {
                    if let Some(parent) = dst.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| RootlessError::io(parent, e))?;
                    }
                    if src.is_dir() {
                        std::fs::create_dir(dst).map_err(|e| RootlessError::io(dst, e))?;
                    } else {
                        std::fs::File::create(dst).map_err(|e| RootlessError::io(dst, e))?;
                    }
                }
                m(
                    Some(src),
                    dst,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                if *ro {
                    remount_ro(dst)?;
                }
            }
            Plan::Tmpfs { dst, size } => {
                let mut o = String::from("mode=1777");
                if let Some(s) = size {
                    o.push_str(&format!(",size={s}"));
                }
                m(
                    Some(Path::new("tmpfs")),
                    dst,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(&o),
                )?
            }
        }
    }
    if !r.insecure {
        crate::confine::mask_paths(root)?;
    }
    if r.readonly_rootfs {
        let fl = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        m(
            None,
            root,
            None,
            fl | crate::overlay::locked_flags(root),
            None,
        )?;
    }
    nix::unistd::chdir(root).map_err(|e| RootlessError::sys("chdir rootfs", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| RootlessError::sys("pivot_root", e))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| RootlessError::sys("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| RootlessError::sys("chdir /", e))?;
    Ok(())
}

/// Wait for the step, reaping orphans meanwhile; report its status.
fn reap(step: Pid, st: &OwnedFd) {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, c)) if p == step => {
                send(st, b'E', &c.to_string());
                return;
            }
            Ok(WaitStatus::Signaled(p, s, _)) if p == step => {
                send(st, b'S', &(s as i32).to_string());
                return;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// In the step's process: drop to the user and exec. Returns only on failure.
pub(crate) fn exec_step(s: &Step) -> String {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Rust ignores SIGPIPE at start-up; a step must get the default.
    // SAFETY: resetting dispositions in a single-threaded child.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    if s.stdin_null {
        match std::fs::File::open("/dev/null") {
            Ok(f) => {
                // SAFETY: dup2 onto stdin.
                unsafe { libc::dup2(f.as_raw_fd(), 0) };
            }
            Err(e) => return format!("open /dev/null: {e}"),
        }
    }
    for (res, lim, name) in &s.rlimits {
        // SAFETY: setrlimit with a valid struct, in the step's own process.
        if unsafe { libc::setrlimit(*res, lim) } != 0 {
            let e = std::io::Error::last_os_error();
            return format!(
                "ulimit {name}={}:{}: {e} (a hard limit cannot be raised without privilege)",
                lim.rlim_cur, lim.rlim_max
            );
        }
    }
    if s.confine {
        if let Err(e) = crate::confine::drop_capabilities() {
            return e;
        }
        // Last before dropping to the user: the filter allows setgroups/setuid and execve,
        // and installing it needs the CAP_SYS_ADMIN the process still has (no no_new_privs).
        if let Err(e) = crate::seccomp::install() {
            return e;
        }
    }
    // SAFETY: prctl with integer arguments.
    if s.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return format!("no_new_privs: {}", std::io::Error::last_os_error());
    }
    let groups: Vec<Gid> = s.user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        return format!("setgroups {:?}: {e}", s.user.groups);
    }
    let g = Gid::from_raw(s.user.gid);
    if let Err(e) = nix::unistd::setresgid(g, g, g) {
        return format!("setgid {}: {e}", s.user.gid);
    }
    let u = Uid::from_raw(s.user.uid);
    if let Err(e) = nix::unistd::setresuid(u, u, u) {
        return format!("setuid {}: {e}", s.user.uid);
    }
    if let Err(e) = nix::unistd::chdir(s.cwd.as_c_str()) {
        return format!("chdir {:?}: {e}", s.cwd);
    }
    match nix::unistd::execve(&s.exe, &s.args, &s.env) {
        Err(e) => format!("exec {:?}: {e}", s.exe),
        Ok(never) => match never {},
    }
}

//! overlayfs (with `userxattr`) mounted in the helper's mount namespace.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Result, RootlessError};
use crate::proto::ProbeResult;

/// Mount options must fit in a page (with room to spare).
const MAX_OPTS: usize = 4000;
/// overlayfs's stacking limit (`OVL_MAX_STACK`).
const MAX_LOWERS: usize = 500;

/// An overlay mounted on a private temp dir; unmounted and removed on drop. Where the kernel
/// does not mount overlayfs in a user namespace (or `ENVKIT_SNAPSHOTTER=copy`), the same
/// interface is served by copies ([`crate::copysnap`]): `merged` is then a materialized tree,
/// and [`Overlay::finish`] writes what changed into the upper dir.
pub struct Overlay {
    pub merged: PathBuf,
    scratch: Vec<PathBuf>,
    copy: Option<CopyView>,
}

/// The copy snapshotter's side of an [`Overlay`].
struct CopyView {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    /// The materialized tree this view owns (None: a single lower used as it is).
    tree: Option<PathBuf>,
}

fn temp_dir(prefix: &str) -> Result<PathBuf> {
    let t = std::env::temp_dir().join(format!("{prefix}-XXXXXX"));
    nix::unistd::mkdtemp(&t).map_err(|e| RootlessError::sys(format!("mkdtemp {}", t.display()), e))
}

fn check_opt_path(p: &Path) -> Result<()> {
    let b = p.as_os_str().as_bytes();
    if b.iter().any(|c| matches!(c, b',' | b':' | b'\\' | b'\n')) {
        return Err(RootlessError::Invalid(format!(
            "overlay path {} contains ',', ':' or '\\'",
            p.display()
        )));
    }
    Ok(())
}

impl Overlay {
    /// Mount `lowers` (top first) + `upper` (+ `work`) read-write; with `upper == None` a
    /// read-only view of the lowers. Falls back to copies where overlayfs cannot be mounted.
    pub fn mount(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<Overlay> {
        if crate::copysnap::forced() {
            return Self::mount_copy(lowers, upper);
        }
        match Self::mount_kernel(lowers, upper) {
            Err(RootlessError::Sys { source, .. })
                if (source == nix::errno::Errno::EPERM || source == nix::errno::Errno::ENODEV)
                    && crate::copysnap::fallback_allowed() =>
            {
                Self::mount_copy(lowers, upper)
            }
            other => other,
        }
    }

    /// Whether this is the copy snapshotter's stand-in.
    pub fn is_copy(&self) -> bool {
        self.copy.is_some()
    }

    /// With an upper dir, makes it hold what changed: nothing to do for a kernel overlay (it
    /// wrote there all along); the copy snapshotter diffs its tree against the lowers.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(CopyView {
            lowers,
            upper: Some(upper),
            tree: Some(tree),
        }) = &self.copy
        {
            // Off its bind mount first: changes then move into the upper dir by rename.
            let _ = nix::mount::umount2(tree, MntFlags::MNT_DETACH);
            crate::copysnap::diff_into(lowers, tree, upper)?;
        }
        Ok(())
    }

    fn mount_copy(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<Overlay> {
        let (tree, merged) = match upper {
            None if lowers.len() == 1 => (None, lowers[0].clone()),
            None => {
                let t = temp_dir("envkit-copyview")?;
                (Some(t.clone()), t)
            }
            Some((u, w)) => {
                for d in [u, w] {
                    std::fs::create_dir_all(d).map_err(|e| RootlessError::io(d, e))?;
                }
                // Beside the upper dir: the same filesystem, so changes move there by rename.
                let t = w.join("copy-merged");
                crate::fileops::remove_all(&t)?;
                std::fs::create_dir(&t).map_err(|e| RootlessError::io(&t, e))?;
                (Some(t.clone()), t)
            }
        };
        let ov = Overlay {
            merged,
            scratch: Vec::new(),
            copy: Some(CopyView {
                lowers: lowers.to_vec(),
                upper: upper.map(|(u, _)| u.to_path_buf()),
                tree: tree.clone(),
            }),
        };
        if let Some(t) = &tree {
            crate::copysnap::materialize(lowers, t)?;
            // A mount point, like an overlay's merged dir (pivot_root needs one).
            nix::mount::mount(
                Some(t.as_path()),
                t.as_path(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| RootlessError::sys(format!("bind {}", t.display()), e))?;
        }
        Ok(ov)
    }

    fn mount_kernel(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<Overlay> {
        let mut scratch = Vec::new();
        let merged = temp_dir("envkit-merged")?;
        scratch.push(merged.clone());
        let mut ov = Overlay {
            merged,
            scratch,
            copy: None,
        };
        let mut lowers: Vec<PathBuf> = lowers.to_vec();
        // overlay needs one lower with an upper, two without.
        let need = if upper.is_some() { 1 } else { 2 };
        while lowers.len() < need {
            let e = temp_dir("envkit-empty")?;
            ov.scratch.push(e.clone());
            lowers.push(e);
        }
        let mut canon = Vec::with_capacity(lowers.len());
        for l in &lowers {
            let l = std::fs::canonicalize(l).map_err(|e| RootlessError::io(l, e))?;
            check_opt_path(&l)?;
            canon.push(l);
        }
        let mut tail = String::new();
        if let Some((u, w)) = upper {
            for d in [u, w] {
                std::fs::create_dir_all(d).map_err(|e| RootlessError::io(d, e))?;
            }
            let u = std::fs::canonicalize(u).map_err(|e| RootlessError::io(u, e))?;
            let w = std::fs::canonicalize(w).map_err(|e| RootlessError::io(w, e))?;
            check_opt_path(&u)?;
            check_opt_path(&w)?;
            tail.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        tail.push_str(",userxattr");
        let joined = |names: &[String]| format!("lowerdir={}{tail}", names.join(":"));
        let full: Vec<String> = canon
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        let mut opts = joined(&full);
        // Mount options fit in one page. A long chain is mounted through a dir of short
        // symlinks (`0`, `1`, …) to its layers, named relative to the cwd; the kernel resolves
        // them at mount time, so the dir goes right after.
        let mut links = None;
        if opts.len() >= MAX_OPTS {
            if canon.len() > MAX_LOWERS {
                return Err(RootlessError::Invalid(format!(
                    "{} layers are more than overlayfs stacks ({MAX_LOWERS})",
                    canon.len()
                )));
            }
            let dir = temp_dir("envkit-lowers")?;
            let names: Vec<String> = (0..canon.len()).map(|i| i.to_string()).collect();
            for (n, l) in names.iter().zip(&canon) {
                let link = dir.join(n);
                std::os::unix::fs::symlink(l, &link).map_err(|e| RootlessError::io(&link, e))?;
            }
            opts = joined(&names);
            links = Some(dir);
        }
        if opts.len() >= MAX_OPTS {
            return Err(RootlessError::Invalid(format!(
                "overlay options too long ({} bytes, {} lowers)",
                opts.len(),
                lowers.len()
            )));
        }
        let flags = if upper.is_some() {
            MsFlags::empty()
        } else {
            MsFlags::MS_RDONLY
        };
        let prev_cwd = match &links {
            Some(dir) => {
                let prev = std::env::current_dir().map_err(|e| RootlessError::io(dir, e))?;
                std::env::set_current_dir(dir).map_err(|e| RootlessError::io(dir, e))?;
                Some(prev)
            }
            None => None,
        };
        let mounted = nix::mount::mount(
            Some("overlay"),
            &ov.merged,
            Some("overlay"),
            flags,
            Some(opts.as_str()),
        );
        if let Some(dir) = &links {
            if let Some(prev) = &prev_cwd {
                let _ = std::env::set_current_dir(prev);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        mounted.map_err(|e| {
            let shown = if links.is_some() {
                format!("{} lowers through short links", canon.len())
            } else {
                opts.clone()
            };
            RootlessError::sys(format!("mount overlay ({shown})"), e)
        })?;
        Ok(ov)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Some(c) = &self.copy {
            if let Some(t) = &c.tree {
                let _ = nix::mount::umount2(t, MntFlags::MNT_DETACH);
                let _ = crate::fileops::remove_all(t);
            }
            return;
        }
        let _ = nix::mount::umount2(&self.merged, MntFlags::MNT_DETACH);
        for d in self.scratch.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Mount flags that a bind remount must keep (they are locked in a user namespace).
pub(crate) fn locked_flags(path: &Path) -> MsFlags {
    let mut f = MsFlags::empty();
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        // ST_RELATIME (Linux's statfs flag 4096); nix names it only on glibc.
        let relatime = FsFlags::from_bits_retain(4096);
        let m = st.flags();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (relatime, MsFlags::MS_RELATIME),
        ] {
            if m.contains(a) {
                f |= b;
            }
        }
    }
    f
}

/// Remount an existing bind mount read-only, keeping its locked flags.
pub(crate) fn remount_ro(path: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(path);
    nix::mount::mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(|e| RootlessError::sys(format!("remount {} read-only", path.display()), e))
}

/// Does overlay with userxattr mount here, and does copy-up work?
pub fn probe() -> ProbeResult {
    match probe_inner() {
        Ok(()) => ProbeResult {
            overlay_userxattr: true,
            detail: "overlay with userxattr works".into(),
        },
        Err(e) => ProbeResult {
            overlay_userxattr: false,
            detail: e.to_string(),
        },
    }
}

fn probe_inner() -> Result<()> {
    let base = temp_dir("envkit-probe")?;
    let res = (|| {
        let (l, u, w) = (base.join("l"), base.join("u"), base.join("w"));
        for d in [&l, &u, &w] {
            std::fs::create_dir(d).map_err(|e| RootlessError::io(d, e))?;
        }
        std::fs::write(l.join("f"), b"x").map_err(|e| RootlessError::io(l.join("f"), e))?;
        let ov = Overlay::mount_kernel(std::slice::from_ref(&l), Some((&u, &w)))?;
        let f = ov.merged.join("f");
        std::fs::write(&f, b"y").map_err(|e| RootlessError::io(&f, e))?;
        std::fs::remove_file(&f).map_err(|e| RootlessError::io(&f, e))?;
        drop(ov);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&base);
    res
}

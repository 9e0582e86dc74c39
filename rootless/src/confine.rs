//! What confines a build step beyond its namespaces, as runc and containerd set it for Docker
//! and BuildKit: masked and read-only `/proc` paths (steps and environments), and Docker's
//! default capability set (steps and environments). `security.insecure` lifts both (every
//! capability of the user namespace, an unmasked /proc), and the seccomp filter
//! ([`crate::seccomp`]) with them.

use std::path::Path;

use nix::mount::MsFlags;

use crate::error::{Result, RootlessError};

/// Paths hidden from a step (files: /dev/null bound over them; directories: an empty
/// read-only tmpfs): containerd's defaults, which BuildKit v0.32.2 uses, and /proc/interrupts,
/// which Docker's own list (moby) hides as well.
pub const MASKED: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths runc makes read-only.
pub const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's default capabilities, by number (linux/capability.h): CHOWN 0, DAC_OVERRIDE 1,
/// FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8, NET_BIND_SERVICE 10, NET_RAW 13,
/// SYS_CHROOT 18, MKNOD 27, AUDIT_WRITE 29, SETFCAP 31 — CapEff 0x00000000a80425fb for a root
/// step.
pub const DEFAULT_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// [`DEFAULT_CAPS`] by name, in the same order.
pub const DEFAULT_CAP_NAMES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SYS_CHROOT",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// Masks and read-only binds under `root` (the step's root, with its /proc and /sys already
/// mounted), before pivot_root. A path that does not exist there is left alone.
pub(crate) fn mask_paths(root: &Path) -> Result<()> {
    let null = Path::new("/dev/null");
    // Found inside the root like every mount target (an image's /proc may be a symlink).
    let fs = crate::fsroot::Root::open(root)?;
    let find = |p: &str| -> Option<std::path::PathBuf> {
        let e = fs
            .entry(p, true, crate::fsroot::DotDot::Clamp)
            .ok()
            .flatten()?;
        e.stat().ok().flatten()?;
        Some(root.join(e.rel()))
    };
    for p in MASKED {
        let Some(t) = find(p) else { continue };
        let Ok(md) = std::fs::symlink_metadata(&t) else {
            continue;
        };
        let res = if md.is_dir() {
            nix::mount::mount(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            )
        } else {
            nix::mount::mount(Some(null), &t, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        };
        res.map_err(|e| RootlessError::sys(format!("masking {p}"), e))?;
    }
    for p in READ_ONLY {
        let Some(t) = find(p) else { continue };
        nix::mount::mount(
            Some(&t),
            &t,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| RootlessError::sys(format!("binding {p}"), e))?;
        crate::overlay::remount_ro(&t)?;
    }
    Ok(())
}

/// In the step's process right before exec: the bounding set keeps only Docker's defaults,
/// and the inheritable and ambient sets are cleared (a root step then gets exactly the defaults
/// at exec; a non-root one none, as before). Returns an error message (async-signal-safe
/// callers print it).
pub(crate) fn drop_capabilities() -> std::result::Result<(), String> {
    let last = last_cap();
    for cap in 0..=last {
        if DEFAULT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(format!("dropping capability {cap}: {e}"));
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    clear_inheritable()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// An empty inheritable set: what root gets at exec is then the bounding set.
fn clear_inheritable() -> std::result::Result<(), String> {
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data structs, as the ABI wants.
    unsafe {
        if libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        ) != 0
        {
            return Err(format!("capget: {}", std::io::Error::last_os_error()));
        }
        for d in &mut data {
            d.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) != 0 {
            return Err(format!("capset: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

//! A build step's own network (BuildKit's default, `sandbox`): a network namespace with its
//! own loopback (no host interfaces, no host abstract unix sockets), connected to the outside
//! by slirp4netns — user-mode NAT with `--disable-host-loopback`, so the step reaches neither
//! the user's loopback services nor the host's other addresses through 10.0.2.2. DNS goes to
//! slirp's forwarder (10.0.2.3).
//!
//! The helper forks a slirp4netns launcher first (it must stay in the host's network and PID
//! namespaces), then moves itself into a new network namespace, which the step's processes
//! inherit, and hands the launcher its pid. slirp4netns configures `tap0` while the helper
//! mounts the step's root and makes its plan; the helper waits for it only right before the
//! step starts. slirp4netns ends when the helper closes its exit fd.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::error::{Result, RootlessError};

/// The address of slirp4netns's DNS forwarder inside the namespace.
pub const DNS: &str = "10.0.2.3";
/// How long slirp4netns may take to come up.
const READY_TIMEOUT_MS: u16 = 10_000;

/// slirp4netns on PATH.
fn slirp_exe() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("slirp4netns"))
        .find(|p| p.is_file())
}

/// Whether steps can have a network of their own here: slirp4netns is installed and
/// `/dev/net/tun` may be opened. The error says what is missing.
pub fn available() -> std::result::Result<(), String> {
    if slirp_exe().is_none() {
        return Err("slirp4netns is not installed (Debian: apt-get install slirp4netns)".into());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "/dev/net/tun cannot be opened ({e}); stock Debian makes it 0666 \
             (`chmod 0666 /dev/net/tun` as root)"
        )),
    }
}

/// slirp4netns for one step: forked before the step's PID namespace exists (a process
/// forked later would be inside it, and the namespace's end would wait for it), waiting for
/// the step's pid; stopped when dropped.
pub(crate) struct Slirp {
    pid: Pid,
    /// The launcher reads the step's pid here, then execs slirp4netns.
    pid_w: Option<OwnedFd>,
    ready_r: OwnedFd,
    /// Closing it ends slirp4netns (`--exit-fd`).
    exit_w: Option<OwnedFd>,
    err_r: OwnedFd,
}

impl Drop for Slirp {
    fn drop(&mut self) {
        self.pid_w.take();
        self.exit_w.take();
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        // Not waited for: its exit unregisters tap0, which waits for the kernel's RCU grace
        // periods (~25 ms here). The helper exits right after; the zombie goes to init.
        let _ = nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

impl Slirp {
    /// Forks the launcher (call before the step's PID namespace is made).
    pub(crate) fn prefork() -> Result<Slirp> {
        let exe = slirp_exe().ok_or_else(|| {
            RootlessError::Invalid(
                "slirp4netns is not installed (Debian: apt-get install slirp4netns)".into(),
            )
        })?;
        let exe = std::ffi::CString::new(exe.into_os_string().into_encoded_bytes())
            .map_err(|_| RootlessError::Invalid("slirp4netns path".into()))?;
        let p = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| RootlessError::sys("pipe2", e))
        };
        let (pid_r, pid_w) = p()?;
        let (ready_r, ready_w) = p()?;
        let (exit_r, exit_w) = p()?;
        let (err_r, err_w) = p()?;
        // SAFETY: the helper is single-threaded; the child only reads, dup2s and execs.
        match unsafe { nix::unistd::fork() }.map_err(|e| RootlessError::sys("fork", e))? {
            nix::unistd::ForkResult::Child => {
                drop((pid_w, ready_r, exit_w, err_r));
                let mut buf = [0u8; 16];
                let n = nix::unistd::read(&pid_r, &mut buf).unwrap_or(0);
                let target = std::str::from_utf8(&buf[..n])
                    .unwrap_or("")
                    .trim()
                    .to_string();
                if target.is_empty() {
                    // SAFETY: plain exit of a forked child.
                    unsafe { libc::_exit(0) }
                }
                let args: Vec<std::ffi::CString> = [
                    "slirp4netns",
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    "--ready-fd=3",
                    "--exit-fd=4",
                    &target,
                    "tap0",
                ]
                .iter()
                .filter_map(|a| std::ffi::CString::new(*a).ok())
                .collect();
                // SAFETY: dup2 onto fds 0-4 of this process, then exec.
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    libc::dup2(null, 0);
                    libc::dup2(null, 1);
                    libc::dup2(err_w.as_raw_fd(), 2);
                    libc::dup2(ready_w.as_raw_fd(), 3);
                    libc::dup2(exit_r.as_raw_fd(), 4);
                }
                let _ = nix::unistd::execv(&exe, &args);
                // SAFETY: plain exit of a forked child.
                unsafe { libc::_exit(127) }
            }
            nix::unistd::ForkResult::Parent { child } => Ok(Slirp {
                pid: child,
                pid_w: Some(pid_w),
                ready_r,
                exit_w: Some(exit_w),
                err_r,
            }),
        }
    }
}

/// The step's network namespace, made in the helper itself, and slirp4netns connecting it.
pub(crate) struct SandboxNet {
    slirp: Slirp,
}

impl SandboxNet {
    /// Call in the helper before the step's root is mounted: forks the slirp4netns launcher,
    /// moves the helper into a new network namespace (loopback up) and has slirp4netns
    /// connect it, in the background.
    pub(crate) fn start() -> Result<SandboxNet> {
        let mut slirp = Slirp::prefork()?;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| RootlessError::sys("unshare(CLONE_NEWNET)", e))?;
        crate::exec::loopback_up()?;
        if let Some(w) = slirp.pid_w.take() {
            nix::unistd::write(&w, std::process::id().to_string().as_bytes())
                .map_err(|e| RootlessError::sys("write", e))?;
        }
        Ok(SandboxNet { slirp })
    }

    /// Waits until slirp4netns has configured `tap0` (right before the step starts).
    pub(crate) fn wait_ready(&mut self) -> Result<()> {
        let slirp = &mut self.slirp;
        let mut b = [0u8; 1];
        let mut fds = [PollFd::new(slirp.ready_r.as_fd(), PollFlags::POLLIN)];
        let ready = match nix::poll::poll(&mut fds, PollTimeout::from(READY_TIMEOUT_MS)) {
            Ok(n) if n > 0 => matches!(nix::unistd::read(&slirp.ready_r, &mut b), Ok(1)),
            _ => false,
        };
        if ready {
            return Ok(());
        }
        let _ = nix::sys::signal::kill(slirp.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(slirp.pid, None);
        slirp.exit_w.take();
        let mut err = String::new();
        if let Ok(fd) = slirp.err_r.try_clone() {
            let _ = std::fs::File::from(fd).read_to_string(&mut err);
        }
        Err(RootlessError::Invalid(format!(
            "slirp4netns did not connect the step's network: {}",
            err.trim()
        )))
    }
}

/// The step's resolv.conf: slirp's DNS forwarder, with the host's search and options lines.
pub(crate) fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = format!("nameserver {DNS}\n");
    for l in host.lines() {
        let t = l.trim_start();
        if t.starts_with("search ") || t.starts_with("domain ") || t.starts_with("options ") {
            out.push_str(t);
            out.push('\n');
        }
    }
    out
}

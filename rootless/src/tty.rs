//! The terminal of a command joined to an environment.
//!
//! A process in an environment must never hold the caller's own terminal: with it, `TIOCSTI`
//! pushes keystrokes into the caller's shell, which then runs them. So the command always
//! starts a session of its own (no controlling terminal: `TIOCSTI` on an inherited terminal fd
//! is refused), and where the caller sits at a terminal it gets a pty pair made in the
//! environment's own `/dev/pts`: the slave is its stdin, stdout, stderr and controlling
//! terminal, and the joining process relays between the caller's terminal (put in raw mode)
//! and the master, carrying window-size changes and forwarding signals. No fd of the caller's
//! terminal is passed in.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{SetArg, Termios};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::error::{Result, RootlessError};

/// Whether the command gets a pty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TtyMode {
    /// When the caller's stdin and stdout are terminals.
    #[default]
    Auto,
    /// Always (`-t`); the caller's stdin must be a terminal.
    Always,
    /// Never (`--no-tty`): the caller's stdin, stdout and stderr as they are, but never as a
    /// controlling terminal.
    Never,
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

fn stdout() -> BorrowedFd<'static> {
    // SAFETY: fd 1 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(1) }
}

/// What the joining process prepared before forking the command.
pub(crate) struct Terminal {
    /// The pty's master and slave, when the command gets one.
    pty: Option<(OwnedFd, OwnedFd)>,
    signals: SignalFd,
}

/// Signals the joining process watches (blocked, read from a signalfd): the command's end,
/// window-size changes, and those it forwards to the command.
fn watched() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGWINCH,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        s.add(sig);
    }
    s
}

impl Terminal {
    /// Call in the environment's mount namespace (the pty is made in its `/dev/pts`) before
    /// forking the command.
    pub(crate) fn prepare(mode: TtyMode) -> Result<Terminal> {
        let want = match mode {
            TtyMode::Auto => is_tty(0) && is_tty(1),
            TtyMode::Always => {
                if !is_tty(0) {
                    return Err(RootlessError::Invalid(
                        "-t: the input device is not a terminal".into(),
                    ));
                }
                true
            }
            TtyMode::Never => false,
        };
        let pty = if want {
            let ws = window_size(stdin());
            let p = nix::pty::openpty(ws.as_ref(), None).map_err(|e| {
                RootlessError::sys("opening a pty in the environment's /dev/pts", e)
            })?;
            Some((p.master, p.slave))
        } else {
            None
        };
        watched()
            .thread_block()
            .map_err(|e| RootlessError::sys("sigprocmask", e))?;
        let signals = SignalFd::with_flags(&watched(), SfdFlags::SFD_CLOEXEC)
            .map_err(|e| RootlessError::sys("signalfd", e))?;
        Ok(Terminal { pty, signals })
    }

    /// In the forked command, before it execs: a session of its own, and the pty's slave as
    /// its controlling terminal and stdio.
    pub(crate) fn attach_child(&self) -> std::result::Result<(), String> {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        if let Some((master, slave)) = &self.pty {
            // SAFETY: TIOCSCTTY on a pty slave we opened; dup2 onto stdio.
            unsafe {
                if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
                    return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
                }
                for fd in 0..3 {
                    if libc::dup2(slave.as_raw_fd(), fd) < 0 {
                        return Err(format!("dup2: {}", std::io::Error::last_os_error()));
                    }
                }
                libc::close(master.as_raw_fd());
            }
        }
        Ok(())
    }

    /// In the joining process: relays until the command ends; returns how it ended.
    pub(crate) fn relay(self, child: Pid) -> Result<WaitStatus> {
        let Terminal { pty, signals } = self;
        let master = pty.map(|(m, _slave)| m);
        let _raw = match &master {
            Some(_) => RawMode::enter(stdin()),
            None => None,
        };
        if let Some(m) = &master {
            nix::fcntl::fcntl(
                m,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| RootlessError::sys("fcntl", e))?;
        }
        let mut stdin_open = master.is_some();
        let mut master_open = master.is_some();
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            let mut m_idx = None;
            let mut i_idx = None;
            if let Some(m) = master.as_ref().filter(|_| master_open) {
                let mut fl = PollFlags::POLLIN;
                if !pending.is_empty() {
                    fl |= PollFlags::POLLOUT;
                }
                m_idx = Some(fds.len());
                fds.push(PollFd::new(m.as_fd(), fl));
                if stdin_open && pending.len() < 64 * 1024 {
                    i_idx = Some(fds.len());
                    fds.push(PollFd::new(stdin(), PollFlags::POLLIN));
                }
            }
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(RootlessError::sys("poll", e)),
            }
            let ready = |i: Option<usize>, f: PollFlags| {
                i.and_then(|i| fds[i].revents())
                    .is_some_and(|r| r.intersects(f))
            };
            let any = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
            let sig_ready = ready(Some(0), PollFlags::POLLIN);
            let m_in = ready(m_idx, any);
            let m_out = ready(m_idx, PollFlags::POLLOUT);
            let i_in = ready(i_idx, any);
            drop(fds);
            if i_in {
                match nix::unistd::read(stdin(), &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            if let Some(m) = master.as_ref().filter(|_| master_open) {
                if m_out || !pending.is_empty() {
                    match nix::unistd::write(m, &pending) {
                        Ok(n) => {
                            pending.drain(..n);
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        Err(_) => pending.clear(),
                    }
                }
                if m_in && !copy_out(m.as_fd(), &mut buf) {
                    master_open = false;
                }
            }
            if sig_ready {
                if let Ok(Some(si)) = signals.read_signal() {
                    let sig = si.ssi_signo as i32;
                    if sig == libc::SIGWINCH {
                        if let (Some(m), Some(ws)) = (&master, window_size(stdin())) {
                            // SAFETY: TIOCSWINSZ with a winsize we own.
                            unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                        }
                    } else if sig != libc::SIGCHLD {
                        // SAFETY: forwarding a signal to our own child.
                        unsafe { libc::kill(child.as_raw(), sig) };
                    }
                }
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                    Ok(ws @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                        // What the command wrote last is still in the pty.
                        if let Some(m) = &master {
                            let _ = copy_out(m.as_fd(), &mut buf);
                        }
                        return Ok(ws);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(RootlessError::sys("waitpid", e)),
                }
            }
        }
    }
}

/// Copies what the master has now to stdout; false once it has nothing more to give (every
/// holder of the slave is gone).
fn copy_out(m: BorrowedFd, buf: &mut [u8]) -> bool {
    loop {
        match nix::unistd::read(m, buf) {
            Err(Errno::EAGAIN) => return true,
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                let mut out = &buf[..n];
                while !out.is_empty() {
                    match nix::unistd::write(stdout(), out) {
                        Ok(k) => out = &out[k..],
                        Err(Errno::EINTR | Errno::EAGAIN) => {}
                        Err(_) => return false,
                    }
                }
            }
        }
    }
}

fn window_size(fd: BorrowedFd) -> Option<nix::pty::Winsize> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// The caller's terminal in raw mode (keys go to the command's pty as they are typed; Ctrl-C
/// is a byte the pty turns into the command's SIGINT); restored when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter(fd: BorrowedFd) -> Option<RawMode> {
        let saved = nix::sys::termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

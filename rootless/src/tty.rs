//! The terminal of a command joined to an environment.
//!
//! A process in an environment must never hold the caller's own terminal: with it, `TIOCSTI`
//! pushes keystrokes into the caller's shell, which then runs them. So the command always
//! starts a session of its own (no controlling terminal: `TIOCSTI` on an inherited terminal fd
//! is refused), and where the caller sits at a terminal it gets a pty pair made in the
//! environment's own `/dev/pts`: the slave is its stdin, stdout, stderr and controlling
//! terminal, and the joining process relays between the caller's terminal (put in raw mode)
//! and the master, carrying window-size changes and forwarding signals. Without a pty
//! (`--no-tty`, `-i`), each of the caller's stdin, stdout and stderr that is a terminal is
//! replaced by a pipe the joining process relays (as `docker exec -i` does); pipes and files
//! of the caller's pass as they are. No fd of the caller's terminal is passed in.

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

/// What the joining process prepared before forking the command.
pub(crate) struct Terminal {
    /// The pty's master and slave, when the command gets one.
    pty: Option<(OwnedFd, OwnedFd)>,
    /// Without a pty: for each of the caller's stdin, stdout and stderr that is a terminal, a
    /// pipe in its place (the caller's end, the command's end); the caller's terminal fd
    /// itself never goes in.
    pipes: Vec<(i32, OwnedFd, OwnedFd)>,
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

fn nonblocking(fd: BorrowedFd) -> Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| RootlessError::sys("fcntl", e))?;
    Ok(())
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
        let mut pipes = Vec::new();
        let pty = if want {
            let ws = window_size(stdin());
            let p = nix::pty::openpty(ws.as_ref(), None).map_err(|e| {
                RootlessError::sys("opening a pty in the environment's /dev/pts", e)
            })?;
            Some((p.master, p.slave))
        } else {
            for fd in 0..3 {
                if !is_tty(fd) {
                    continue; // a pipe or a file of the caller's: passed as it is
                }
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| RootlessError::sys("pipe2", e))?;
                let (ours, theirs) = if fd == 0 { (w, r) } else { (r, w) };
                nonblocking(ours.as_fd())?;
                pipes.push((fd, ours, theirs));
            }
            None
        };
        watched()
            .thread_block()
            .map_err(|e| RootlessError::sys("sigprocmask", e))?;
        let signals = SignalFd::with_flags(&watched(), SfdFlags::SFD_CLOEXEC)
            .map_err(|e| RootlessError::sys("signalfd", e))?;
        Ok(Terminal {
            pty,
            pipes,
            signals,
        })
    }

    /// In the forked command, before it execs: a session of its own, and the pty's slave as
    /// its controlling terminal and stdio (or the pipes in place of the caller's terminal).
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
        for (fd, _, theirs) in &self.pipes {
            // SAFETY: dup2 of a pipe end we made onto a stdio fd (the others are CLOEXEC).
            if unsafe { libc::dup2(theirs.as_raw_fd(), *fd) } < 0 {
                return Err(format!("dup2: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// In the joining process: relays until the command ends; returns how it ended.
    pub(crate) fn relay(self, child: Pid) -> Result<WaitStatus> {
        let Terminal {
            pty,
            pipes,
            signals,
        } = self;
        let master = pty.map(|(m, _slave)| m);
        let _raw = match &master {
            Some(_) => RawMode::enter(stdin()),
            None => None,
        };
        // What is relayed: the caller's stdin into the pty (or the stdin pipe), and the pty
        // (or the output pipes) out to the caller's stdout and stderr.
        let mut pumps: Vec<Pump> = Vec::new();
        if let Some(m) = &master {
            nonblocking(m.as_fd())?;
            pumps.push(Pump::input(m.as_raw_fd(), None));
            pumps.push(Pump::output(m.as_raw_fd(), 1));
        }
        // The read ends of the output pipes, open until the relay returns. The command's
        // ends are closed here, so that a pipe ends when the command and its children do.
        let mut outputs = Vec::new();
        for (fd, ours, theirs) in pipes {
            drop(theirs);
            if fd == 0 {
                pumps.push(Pump::input(ours.as_raw_fd(), Some(ours)));
            } else {
                pumps.push(Pump::output(ours.as_raw_fd(), fd));
                outputs.push(ours);
            }
        }
        relay_loop(&mut pumps, master.as_ref(), &signals, child)
    }
}

/// One direction of the relay.
struct Pump {
    /// Read from (the caller's stdin, the pty master or a pipe's read end).
    from: i32,
    /// Written to (the pty master, a pipe's write end, the caller's stdout or stderr).
    to: i32,
    /// The command's output (read non-blocking, written to the caller blocking), or its input.
    output: bool,
    open: bool,
    pending: Vec<u8>,
    /// The write end of the command's stdin pipe, closed when the caller's stdin ends so that
    /// the command sees its end too.
    close_on_end: Option<OwnedFd>,
}

impl Pump {
    fn input(to: i32, close_on_end: Option<OwnedFd>) -> Pump {
        Pump {
            from: 0,
            to,
            output: false,
            open: true,
            pending: Vec::new(),
            close_on_end,
        }
    }

    fn output(from: i32, to: i32) -> Pump {
        Pump {
            from,
            to,
            output: true,
            open: true,
            pending: Vec::new(),
            close_on_end: None,
        }
    }

    fn end(&mut self) {
        self.open = false;
        if self.pending.is_empty() {
            self.close_on_end = None;
        }
    }

    /// Moves what `from` has now (its end closes the pump).
    fn pump(&mut self, buf: &mut [u8]) {
        // SAFETY: the fds stay open while the relay runs (the caller's stdio, or fds the
        // Terminal owns).
        let from = unsafe { BorrowedFd::borrow_raw(self.from) };
        // SAFETY: as `from`.
        let to = unsafe { BorrowedFd::borrow_raw(self.to) };
        if self.output {
            loop {
                match nix::unistd::read(from, buf) {
                    Err(Errno::EAGAIN) => return,
                    Err(Errno::EINTR) => {}
                    Ok(0) | Err(_) => return self.end(),
                    Ok(n) => {
                        let mut out = &buf[..n];
                        while !out.is_empty() {
                            match nix::unistd::write(to, out) {
                                Ok(k) => out = &out[k..],
                                Err(Errno::EINTR | Errno::EAGAIN) => {}
                                Err(_) => return self.end(),
                            }
                        }
                    }
                }
            }
        }
        if self.open && self.pending.len() < 64 * 1024 {
            // Poll said the caller's stdin is ready: one read does not block.
            match nix::unistd::read(from, buf) {
                Ok(0) | Err(_) => self.end(),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
        self.flush();
    }

    /// Writes what is pending to the command's side (non-blocking).
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // SAFETY: as in `pump`.
        let to = unsafe { BorrowedFd::borrow_raw(self.to) };
        match nix::unistd::write(to, &self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => self.pending.clear(),
        }
        if !self.open && self.pending.is_empty() {
            self.close_on_end = None;
        }
    }
}

fn relay_loop(
    pumps: &mut [Pump],
    master: Option<&OwnedFd>,
    signals: &SignalFd,
    child: Pid,
) -> Result<WaitStatus> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: as in `Pump::pump`.
        let borrow = |fd: i32| unsafe { BorrowedFd::borrow_raw(fd) };
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let mut slots = Vec::new();
        for (i, p) in pumps.iter().enumerate() {
            let reading = p.open && (p.output || p.pending.len() < 64 * 1024);
            if reading {
                slots.push((fds.len(), i, PollFlags::POLLIN));
                fds.push(PollFd::new(borrow(p.from), PollFlags::POLLIN));
            }
            if !p.output && !p.pending.is_empty() {
                slots.push((fds.len(), i, PollFlags::POLLOUT));
                fds.push(PollFd::new(borrow(p.to), PollFlags::POLLOUT));
            }
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(RootlessError::sys("poll", e)),
        }
        let any = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        let sig_ready = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let mut ready = Vec::new();
        for (slot, i, what) in slots {
            let r = fds[slot].revents().unwrap_or(PollFlags::empty());
            if (what == PollFlags::POLLIN && r.intersects(any))
                || (what == PollFlags::POLLOUT
                    && r.intersects(PollFlags::POLLOUT | PollFlags::POLLERR))
            {
                ready.push((i, what));
            }
        }
        drop(fds);
        for (i, what) in ready {
            if what == PollFlags::POLLIN {
                pumps[i].pump(&mut buf);
            } else {
                pumps[i].flush();
            }
        }
        // A pty whose every slave holder is gone takes no more input either.
        if master.is_some() && pumps.iter().any(|p| p.output && !p.open) {
            for p in pumps.iter_mut() {
                p.open = false;
                p.pending.clear();
            }
        }
        if sig_ready {
            if let Ok(Some(si)) = signals.read_signal() {
                let sig = si.ssi_signo as i32;
                if sig == libc::SIGWINCH {
                    if let (Some(m), Some(ws)) = (master, window_size(stdin())) {
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
                    // What the command wrote last is still in the pty or the pipes.
                    for p in pumps.iter_mut().filter(|p| p.output && p.open) {
                        p.pump(&mut buf);
                    }
                    return Ok(ws);
                }
                Ok(_) => {}
                Err(e) => return Err(RootlessError::sys("waitpid", e)),
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

/// SIGINT and SIGQUIT ignored until dropped (the previous handlers come back).
pub struct IgnoreInterrupts {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl IgnoreInterrupts {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let mut old = Vec::new();
        for sig in [libc::SIGINT, libc::SIGQUIT] {
            // SAFETY: sigaction with zeroed structs we own; SIG_IGN needs no handler code.
            unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = libc::SIG_IGN;
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &new, &mut prev) == 0 {
                    old.push((sig, prev));
                }
            }
        }
        IgnoreInterrupts { old }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restoring the disposition saved above.
            unsafe {
                libc::sigaction(*sig, prev, std::ptr::null_mut());
            }
        }
    }
}

/// The rows and columns of the terminal `fd` is on; None when it is not one.
pub fn terminal_size(fd: BorrowedFd) -> Option<(u16, u16)> {
    window_size(fd).map(|ws| (ws.ws_row, ws.ws_col))
}

//! Parent side: spawn the helper, map its ids, send the request, stream its output.
//!
//! Wire protocol (private to this crate; both ends are the same binary):
//! - helper fd 3 (named by env `ENVKIT_ROOTLESS_FD`) is the *control* pipe, helper → parent:
//!   one byte `U` once the helper has unshared its user + mount namespace (or `E` when that
//!   failed), then, at the end, one JSON [`Response`] until EOF.
//! - the parent maps ids with newuidmap/newgidmap, then writes the JSON [`Request`] on the
//!   helper's stdin and closes it: the request doubles as the "go on" signal. If mapping fails
//!   the parent closes stdin empty, the helper exits.
//! - helper stdout and stderr are one pipe: the step's output, passed to `on_output`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;

use crate::error::{Result, RootlessError};
use crate::idmap::IdMap;
use crate::proto::{Request, Response};

/// Environment variable naming the control fd in the helper.
pub(crate) const FD_ENV: &str = "ENVKIT_ROOTLESS_FD";
pub(crate) const CONTROL_FD: i32 = 3;

/// A way to stop a running helper from another thread: [`Cancel::cancel`] kills it (and with
/// it the step's whole pid namespace, whose init dies with the helper).
#[derive(Debug, Default)]
pub struct Cancel {
    state: std::sync::Mutex<CancelState>,
}

#[derive(Debug, Default)]
struct CancelState {
    /// The running helper, until it has exited (its pid is not reused before it is reaped).
    pid: Option<u32>,
    cancelled: bool,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Kills the helper if it runs, and makes a helper not started yet fail at once.
    pub fn cancel(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.cancelled = true;
        if let Some(pid) = st.pid
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.lock().map(|s| s.cancelled).unwrap_or(true)
    }

    /// Records the helper's pid; false (and the helper is killed) when already cancelled.
    fn started(&self, pid: u32) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        st.pid = Some(pid);
        !st.cancelled
    }

    /// The helper has exited; it must not be signalled any more.
    fn finished(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.pid = None;
        }
    }
}

/// Spawn `exe args…` (which calls [`crate::helper_main`] first thing), put it into a user
/// namespace mapped by `ids`, run `req` there and return its response. Step output is passed to
/// `on_output` as it arrives. Blocking; call it from a blocking thread.
pub fn run_helper(
    exe: &Path,
    args: &[&str],
    ids: &IdMap,
    req: &Request,
    on_output: &mut dyn FnMut(&[u8]),
) -> Result<Response> {
    run_helper_cancellable(exe, args, ids, req, on_output, &Cancel::new())
}

/// [`run_helper`] that `cancel` can stop: the helper is killed and
/// [`RootlessError::Cancelled`] returned.
pub fn run_helper_cancellable(
    exe: &Path,
    args: &[&str],
    ids: &IdMap,
    req: &Request,
    on_output: &mut dyn FnMut(&[u8]),
    cancel: &Cancel,
) -> Result<Response> {
    if cancel.is_cancelled() {
        return Err(RootlessError::Cancelled);
    }
    let res = run_helper_inner(exe, args, ids, req, on_output, cancel);
    if cancel.is_cancelled() {
        return Err(RootlessError::Cancelled);
    }
    res
}

fn run_helper_inner(
    exe: &Path,
    args: &[&str],
    ids: &IdMap,
    req: &Request,
    on_output: &mut dyn FnMut(&[u8]),
    cancel: &Cancel,
) -> Result<Response> {
    let request = serde_json::to_vec(req)
        .map_err(|e| RootlessError::Protocol(format!("encoding request: {e}")))?;
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| RootlessError::sys("pipe2", e));
    let (ctl_r, ctl_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let out_w2 = out_w
        .try_clone()
        .map_err(|e| RootlessError::io("output pipe", e))?;
    let ctl_raw = ctl_w.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(FD_ENV, CONTROL_FD.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(out_w2));
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if ctl_raw == CONTROL_FD {
                if libc::fcntl(ctl_raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(ctl_raw, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| RootlessError::Spawn {
        exe: exe.to_path_buf(),
        source,
    })?;
    // From here on every path that reaps the child calls `cancel.finished()` first, so that a
    // late cancel cannot signal a reused pid.
    if !cancel.started(child.id()) {
        let _ = child.kill();
    }
    drop(cmd); // closes our copies of the write ends held by the Command
    drop(ctl_w);
    let mut ctl = std::fs::File::from(ctl_r);
    let mut out = std::fs::File::from(out_r);

    let mut first = [0u8; 1];
    let n = read_retry(&mut ctl, &mut first);
    let fail = |child: &mut std::process::Child, e: RootlessError| {
        let _ = child.kill();
        let _ = {
            cancel.finished();
            child.wait()
        };
        e
    };
    match (n, first[0]) {
        (Ok(1), b'U') => {}
        (Ok(1), b'E') => {
            let mut rest = Vec::new();
            let _ = ctl.read_to_end(&mut rest);
            let _ = {
                cancel.finished();
                child.wait()
            };
            return Err(match serde_json::from_slice::<Response>(&rest) {
                Ok(Response::Error { message }) => RootlessError::Helper(message),
                _ => RootlessError::Protocol("helper failed to unshare".into()),
            });
        }
        _ => {
            let mut o = Vec::new();
            let _ = out.read_to_end(&mut o);
            let status = {
                cancel.finished();
                child.wait()
            };
            return Err(RootlessError::Protocol(format!(
                "helper {} exited before the handshake ({status:?}); is it calling helper_main() \
                 first thing? output: {}",
                exe.display(),
                String::from_utf8_lossy(&o)
            )));
        }
    }
    let pid = child.id();
    if let Err(e) = map_ids(pid, ids) {
        return Err(fail(&mut child, e));
    }
    {
        let Some(mut stdin) = child.stdin.take() else {
            return Err(fail(
                &mut child,
                RootlessError::Protocol("no stdin pipe".into()),
            ));
        };
        if let Err(e) = stdin.write_all(&request) {
            return Err(fail(&mut child, RootlessError::io("helper stdin", e)));
        }
    }
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let r = ctl.read_to_end(&mut v);
        r.map(|_| v)
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => on_output(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(&mut child, RootlessError::io("helper output", e))),
        }
    }
    let resp = reader
        .join()
        .map_err(|_| RootlessError::Protocol("control reader panicked".into()))?
        .map_err(|e| RootlessError::io("helper control pipe", e))?;
    let status = child
        .wait()
        .map_err(|e| RootlessError::io("waiting for helper", e))?;
    if resp.is_empty() {
        return Err(RootlessError::Protocol(format!(
            "helper died without a response ({status})"
        )));
    }
    match serde_json::from_slice::<Response>(&resp) {
        Ok(Response::Error { message }) => Err(RootlessError::Helper(message)),
        Ok(r) => Ok(r),
        Err(e) => Err(RootlessError::Protocol(format!("bad response: {e}"))),
    }
}

fn read_retry(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn map_ids(pid: u32, ids: &IdMap) -> Result<()> {
    let run = |tool: &'static str, own: u32, start: u32, count: u32| -> Result<()> {
        let args = [
            pid.to_string(),
            "0".into(),
            own.to_string(),
            "1".into(),
            "1".into(),
            start.to_string(),
            count.to_string(),
        ];
        let out = Command::new(tool)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RootlessError::IdMapping {
                tool,
                args: args.join(" "),
                msg: format!("cannot run it ({e}); install the `uidmap` package"),
            })?;
        if !out.status.success() {
            return Err(RootlessError::IdMapping {
                tool,
                args: args.join(" "),
                msg: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    };
    run("newuidmap", ids.uid, ids.subuid_start, ids.subuid_count)?;
    run("newgidmap", ids.gid, ids.subgid_start, ids.subgid_count)?;
    Ok(())
}

//! Child side: the helper process.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

use crate::error::{Result, RootlessError};
use crate::parent::{CONTROL_FD, FD_ENV};
use crate::proto::{Request, Response};

/// Entry point of the helper process. Call it first thing in `main()` (before any thread
/// exists) when the process was started by [`crate::run_helper`]; exit with its return value.
pub fn helper_main() -> i32 {
    // Die with the parent.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    crate::copysnap::set_mode_from_args();
    let fd = match std::env::var(FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(fd) if fd == CONTROL_FD => fd,
        _ => {
            eprintln!(
                "rootless helper: {FD_ENV} not set; this process must be started by run_helper"
            );
            return 2;
        }
    };
    // SAFETY: the parent set up CONTROL_FD for us and nothing else owns it.
    let mut ctl = unsafe { std::fs::File::from_raw_fd(fd) };
    // Remove the variable so steps do not inherit it.
    // SAFETY: single-threaded at this point (documented contract of helper_main).
    unsafe { std::env::remove_var(FD_ENV) };
    let _ = nix::fcntl::fcntl(
        &ctl,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );

    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
        let msg = format!(
            "unshare(CLONE_NEWUSER|CLONE_NEWNS): {e} (are unprivileged user namespaces \
             enabled? was the helper started before any thread?)"
        );
        let _ = ctl.write_all(b"E");
        let _ = write_response(&mut ctl, &Response::Error { message: msg });
        return 1;
    }
    if ctl.write_all(b"U").is_err() {
        return 1;
    }
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() || input.is_empty() {
        // The parent gave up (id mapping failed).
        return 1;
    }
    let resp = match serde_json::from_slice::<Request>(&input) {
        Ok(req) => match become_root().and_then(|()| dispatch(req)) {
            Ok(r) => r,
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        },
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    // Make sure step output is flushed before the response ends the exchange.
    let _ = std::io::stdout().flush();
    if write_response(&mut ctl, &resp).is_err() {
        return 1;
    }
    0
}

fn write_response(ctl: &mut std::fs::File, r: &Response) -> std::io::Result<()> {
    let v = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    ctl.write_all(&v)
}

fn become_root() -> Result<()> {
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(|e| {
        RootlessError::sys("setresgid(0) in the user namespace (ids not mapped?)", e)
    })?;
    nix::unistd::setgroups(&[]).map_err(|e| RootlessError::sys("setgroups([])", e))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| RootlessError::sys("setresuid(0) in the user namespace", e))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| RootlessError::sys("making / rprivate", e))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    Ok(())
}

fn dispatch(req: Request) -> Result<Response> {
    match req {
        Request::Unpack {
            layers,
            dest,
            max_layer_bytes,
        } => {
            let notes = crate::unpack::unpack_layers(&layers, &dest, max_layer_bytes)?;
            Ok(Response::Unpacked { notes })
        }
        Request::UnpackUpper {
            layer,
            dest,
            max_layer_bytes,
        } => {
            let notes = crate::unpack::unpack_upper(&layer, &dest, max_layer_bytes)?;
            Ok(Response::Unpacked { notes })
        }
        Request::Exec(r) => Ok(Response::Exited(crate::exec::run_step(&r)?)),
        Request::StartEnv(r) => {
            if r.exec.hostname.is_empty() {
                return Err(RootlessError::Invalid(
                    "an environment needs a hostname (its own UTS namespace)".into(),
                ));
            }
            Ok(Response::EnvStarted {
                pid: crate::env::start_env(&r)?,
            })
        }
        Request::FileActions {
            lowers,
            upper,
            work,
            actions,
        } => {
            crate::fileops::run_actions(&lowers, &upper, &work, &actions)?;
            Ok(Response::Done)
        }
        Request::DiffTar {
            upper,
            out,
            mtime_clamp,
        } => {
            let tar = crate::difftar::write_diff_tar(&upper, &out, mtime_clamp)?;
            Ok(Response::DiffWritten {
                entries: tar.entries,
                sha256: Some(tar.sha256),
                size: Some(tar.size),
            })
        }
        Request::RemoveAll { path } => {
            crate::fileops::remove_all(&path)?;
            Ok(Response::Done)
        }
        Request::Probe => Ok(Response::Probe(crate::overlay::probe())),
    }
}

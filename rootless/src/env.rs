//! Long-running environments (`envkit up`): an init in its own PID, mount and UTS namespaces
//! (inside the helper's user namespace) that keeps services running until it is told to
//! stop, and the way back in (`envkit exec`): join the init's namespaces, as `nsenter` does,
//! then fork so that the command is inside the PID namespace too.
//!
//! The init is PID 1 of its namespace: when it exits (SIGTERM from `destroy`, or SIGKILL),
//! the kernel kills everything else in there, and the mount namespace with the environment's
//! overlay goes with the last process. Nothing of it is mounted on the host.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::error::{Result, RootlessError};
use crate::exec::{
    MountPoints, Plan, Step, build_plan, enter_root, exec_step, fork_pid1, make_step, records, send,
};
use crate::overlay::Overlay;
use crate::proto::{EnvRequest, JoinRequest};
use crate::tty::Terminal;
use crate::userdb::resolve_user;

/// Environment variable that makes the process a [`join_main`] (its value: the JSON
/// [`JoinRequest`]).
pub const JOIN_ENV: &str = "ENVKIT_ROOTLESS_JOIN";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// In the helper (namespace root, single-threaded): mounts the environment's rootfs, forks
/// its init into a new PID namespace and returns the init's host pid once it runs.
pub(crate) fn start_env(r: &EnvRequest) -> Result<u32> {
    let ov = Overlay::mount(&r.exec.lowers, Some((&r.exec.upper, &r.exec.work)))?;
    let root = ov.merged.clone();
    // The init's mount namespace keeps its own copy of this mount; the helper's copy goes
    // when the helper exits. Nothing here must unmount or delete it first.
    std::mem::forget(ov);
    let mut mp = MountPoints::new(&root)?;
    let mut prepared = build_plan(&r.exec, &mut mp)?;
    for p in &mut prepared.plan {
        if let Plan::Dev(_, shm, _) = p {
            *shm = r.shm_size.max(1 << 20);
        }
    }
    std::fs::create_dir_all(&r.log_dir).map_err(|e| RootlessError::io(&r.log_dir, e))?;
    let open_log = |name: &str| -> Result<std::fs::File> {
        let p = r.log_dir.join(format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| RootlessError::io(&p, e))
    };
    let init_log = open_log("init")?;
    let mut logs = Vec::new();
    for s in &r.services {
        if !crate::pathsafe::is_plain_name(std::ffi::OsStr::new(&s.name)) {
            return Err(RootlessError::Invalid(format!(
                "service name {:?} is not a plain name",
                s.name
            )));
        }
        logs.push(open_log(&s.name)?);
    }
    let (fork, st_r, st_w) = fork_pid1()?;
    match fork {
        ForkResult::Child => {
            drop(st_r);
            let mut keep = vec![st_w.as_raw_fd(), init_log.as_raw_fd()];
            keep.extend(logs.iter().map(|l| l.as_raw_fd()));
            let code = match init(
                &root,
                &prepared.plan,
                r,
                &prepared,
                &logs,
                &init_log,
                &keep,
                &st_w,
            ) {
                Ok(()) => 0,
                Err(e) => {
                    send(&st_w, b'F', &e.to_string());
                    125
                }
            };
            // SAFETY: plain exit of a forked child.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(st_w);
            for (kind, text) in records(st_r) {
                match kind {
                    b'R' => return Ok(child.as_raw() as u32),
                    b'F' => {
                        return Err(RootlessError::Helper(format!("environment setup: {text}")));
                    }
                    _ => {}
                }
            }
            Err(RootlessError::Helper(
                "the environment's init exited before it was ready".into(),
            ))
        }
    }
}

/// Closes every descriptor but `keep` and the standard ones.
fn close_others(keep: &[RawFd]) {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing descriptors this process no longer uses (single-threaded).
            unsafe { libc::close(fd) };
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn init(
    root: &Path,
    plan: &[Plan],
    r: &EnvRequest,
    prepared: &crate::exec::Prepared,
    logs: &[std::fs::File],
    init_log: &std::fs::File,
    keep: &[RawFd],
    st: &OwnedFd,
) -> Result<()> {
    close_others(keep);
    let null = std::fs::File::open("/dev/null").map_err(|e| RootlessError::io("/dev/null", e))?;
    // SAFETY: redirecting this process's own standard descriptors.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(init_log.as_raw_fd(), 1);
        libc::dup2(init_log.as_raw_fd(), 2);
    }
    // Its own session: the terminal that ran `envkit up` may go away.
    let _ = nix::unistd::setsid();
    enter_root(root, plan, &r.exec)?;
    let mut steps: Vec<Option<Step>> = Vec::new();
    for s in &r.services {
        let step = make_step(
            Path::new("/"),
            &s.args,
            &prepared.env,
            &r.exec.cwd,
            prepared.user.clone(),
            &r.exec.rlimits,
        )?;
        let step = step.map(|mut st| {
            st.set_confinement(r.exec.insecure, r.exec.no_new_privs);
            st
        });
        if step.is_none() {
            eprintln!(
                "envkit init: service {}: {:?} not found",
                s.name,
                s.args.first()
            );
        }
        steps.push(step);
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    send(st, b'R', "");
    // The parent reads until EOF: close our end now.
    // SAFETY: st's descriptor is not used after this.
    unsafe { libc::close(st.as_raw_fd()) };
    std::mem::forget(null);
    supervise(r, &steps, logs);
    Ok(())
}

/// Starts every service, restarts the ones that exit (after 1 s, doubling up to 30 s while
/// they keep failing within 10 s), reaps orphans, and on SIGTERM stops everything.
fn supervise(r: &EnvRequest, steps: &[Option<Step>], logs: &[std::fs::File]) {
    let mut running: BTreeMap<i32, usize> = BTreeMap::new();
    let mut started: Vec<Instant> = vec![Instant::now(); steps.len()];
    let mut delay: Vec<Duration> = vec![Duration::from_secs(1); steps.len()];
    // One-shot services first, one after the other; the rest once they are all done.
    let first_once = r.services.iter().position(|s| s.once);
    let mut due: Vec<Option<Instant>> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_ref()?;
            match first_once {
                Some(f) if i != f => None,
                _ => Some(Instant::now()),
            }
        })
        .collect();
    let mut once_left: Vec<usize> = (0..steps.len())
        .filter(|&i| r.services[i].once && steps[i].is_some())
        .collect();
    if let Some(f) = first_once
        && steps[f].is_none()
    {
        // Not startable: go on with the next one-shot, or with the rest.
        once_left.retain(|&i| i != f);
        start_next(&mut due, &once_left, r);
    }
    let say = |msg: String| {
        let mut e = std::io::stderr();
        let _ = writeln!(e, "{} envkit init: {msg}", unix_now());
    };
    loop {
        if STOP.load(Ordering::SeqCst) {
            say("stopping".into());
            let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                    Err(nix::errno::Errno::ECHILD) => break,
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(50)),
                    _ => {}
                }
            }
            let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
            return;
        }
        let now = Instant::now();
        for i in 0..due.len() {
            let (Some(t), Some(step)) = (due[i], steps[i].as_ref()) else {
                continue;
            };
            if t > now {
                continue;
            }
            due[i] = None;
            // SAFETY: the init is single-threaded.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    let log = logs[i].as_raw_fd();
                    // SAFETY: the service's own standard output and error.
                    unsafe {
                        libc::dup2(log, 1);
                        libc::dup2(log, 2);
                    }
                    let e = exec_step(step);
                    let _ = writeln!(std::io::stderr(), "envkit: {e}");
                    // SAFETY: forked child.
                    unsafe { libc::_exit(127) }
                }
                Ok(ForkResult::Parent { child }) => {
                    say(format!("started {} (pid {child})", r.services[i].name));
                    running.insert(child.as_raw(), i);
                    started[i] = Instant::now();
                }
                Err(e) => {
                    say(format!("fork for {}: {e}", r.services[i].name));
                    due[i] = Some(now + Duration::from_secs(5));
                }
            }
        }
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, _)) | Ok(WaitStatus::Signaled(p, _, _)) => {
                if let Some(i) = running.remove(&p.as_raw()) {
                    if r.services[i].once {
                        say(format!("{} (pid {p}) finished", r.services[i].name));
                        once_left.retain(|&j| j != i);
                        start_next(&mut due, &once_left, r);
                        continue;
                    }
                    let ran = started[i].elapsed();
                    delay[i] = if ran < Duration::from_secs(10) {
                        (delay[i] * 2).min(Duration::from_secs(30))
                    } else {
                        Duration::from_secs(1)
                    };
                    // A daemon that keeps failing may want what the default confinement
                    // takes away (mount, other capabilities): say how to lift it.
                    let hint = if !r.exec.insecure && ran < Duration::from_secs(10) {
                        " (it runs confined as under `docker run`: Docker's default \
                         capabilities and seccomp profile; `envkit up --allow \
                         security.insecure` lifts that)"
                    } else {
                        ""
                    };
                    say(format!(
                        "{} (pid {p}) exited after {:.1} s; starting it again in {} s{hint}",
                        r.services[i].name,
                        ran.as_secs_f64(),
                        delay[i].as_secs()
                    ));
                    due[i] = Some(Instant::now() + delay[i]);
                }
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After a one-shot service: the next one, or (none left) every other service.
fn start_next(due: &mut [Option<Instant>], once_left: &[usize], r: &EnvRequest) {
    let now = Instant::now();
    match once_left.first() {
        Some(&next) => due[next] = Some(now),
        None => {
            for (i, d) in due.iter_mut().enumerate() {
                if !r.services[i].once {
                    *d = Some(now);
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether this process was started to join an environment (see [`join_command`]).
pub fn is_join() -> bool {
    std::env::var_os(JOIN_ENV).is_some()
}

/// A command that runs `req` inside the environment: this executable again, which joins the
/// environment first thing in `main` (call [`join_main`] there, before any thread exists).
pub fn join_command(exe: &Path, req: &JoinRequest) -> Result<std::process::Command> {
    let json = serde_json::to_string(req)
        .map_err(|e| RootlessError::Invalid(format!("join request: {e}")))?;
    let mut c = std::process::Command::new(exe);
    c.env(JOIN_ENV, json);
    Ok(c)
}

/// Entry point of a joining process: enters the environment's namespaces, forks the command
/// into its PID namespace, waits and returns its exit code (128 + signal when killed).
pub fn join_main() -> i32 {
    match join() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envkit exec: {e}");
            125
        }
    }
}

fn join() -> Result<i32> {
    let json = std::env::var(JOIN_ENV).unwrap_or_default();
    // SAFETY: single-threaded at this point (documented contract of join_main).
    unsafe { std::env::remove_var(JOIN_ENV) };
    let req: JoinRequest = serde_json::from_str(&json)
        .map_err(|e| RootlessError::Invalid(format!("join request: {e}")))?;
    let ns_dir = PathBuf::from(format!("/proc/{}/ns", req.pid));
    let open = |n: &str| {
        let p = ns_dir.join(n);
        std::fs::File::open(&p).map_err(|e| RootlessError::io(&p, e))
    };
    // Opened before joining anything: /proc is the container's afterwards.
    let user = open("user")?;
    let mnt = open("mnt")?;
    let uts = open("uts")?;
    let pid = open("pid")?;
    for (f, flag, what) in [
        (&user, CloneFlags::CLONE_NEWUSER, "user"),
        (&mnt, CloneFlags::CLONE_NEWNS, "mount"),
        (&uts, CloneFlags::CLONE_NEWUTS, "uts"),
        (&pid, CloneFlags::CLONE_NEWPID, "pid"),
    ] {
        nix::sched::setns(f, flag).map_err(|e| {
            RootlessError::sys(
                format!(
                    "joining the environment's {what} namespace (pid {})",
                    req.pid
                ),
                e,
            )
        })?;
    }
    drop((user, mnt, uts, pid));
    nix::unistd::chdir("/").map_err(|e| RootlessError::sys("chdir /", e))?;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let who = resolve_user(&req.user, &passwd, &group)?;
    let mut env = req.env.clone();
    if crate::exec::env_get(&env, "HOME").is_none() {
        env.push(format!("HOME={}", who.home));
    }
    let Some(mut step) = make_step(Path::new("/"), &req.args, &env, &req.cwd, who, &[])? else {
        return Ok(127);
    };
    step.stdin_null = false;
    step.set_confinement(req.insecure, req.no_new_privs);
    // The command's terminal: its own pty (or none), never the caller's (see crate::tty).
    let term = Terminal::prepare(req.tty)?;
    // SAFETY: single-threaded; the child execs or exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| RootlessError::sys("fork", e))? {
        ForkResult::Child => {
            let e = match term.attach_child() {
                Ok(()) => exec_step(&step),
                Err(e) => e,
            };
            eprintln!("envkit exec: {e}");
            // SAFETY: forked child.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => match term.relay(child)? {
            WaitStatus::Exited(_, c) => Ok(c),
            WaitStatus::Signaled(_, s, _) => Ok(128 + s as i32),
            _ => Ok(125),
        },
    }
}

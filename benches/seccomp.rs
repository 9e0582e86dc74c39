//! What the default seccomp profile costs a build step (the step-confinement issue): building
//! the BPF program (once per helper), installing it (once per step), and the time it adds to
//! every syscall (a cheap one, `getppid`, in a loop; the filter tests the hot syscalls first,
//! `getppid` comes late in its list).
//!
//! `cargo bench --bench seccomp` prints medians. Unprivileged, the child sets no_new_privs
//! to be allowed to install the filter (steps hold CAP_SYS_ADMIN in their namespace instead).

use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

const CALLS: u32 = 1_000_000;

/// Nanoseconds per `getppid` in a forked child, with or without the filter, and how long
/// installing it took there.
fn in_child(filter: bool) -> (f64, f64) {
    let mut fds = [0i32; 2];
    // SAFETY: a pipe of our own; the child writes 16 bytes and exits.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        match libc::fork() {
            0 => {
                let mut install_ns = 0f64;
                if filter {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    let t = Instant::now();
                    if rootless::seccomp::install().is_err() {
                        libc::_exit(1);
                    }
                    install_ns = t.elapsed().as_nanos() as f64;
                }
                let t = Instant::now();
                for _ in 0..CALLS {
                    libc::syscall(libc::SYS_getppid);
                }
                let per = t.elapsed().as_nanos() as f64 / CALLS as f64;
                let out = [per.to_ne_bytes(), install_ns.to_ne_bytes()].concat();
                libc::write(fds[1], out.as_ptr().cast(), out.len());
                libc::_exit(0);
            }
            pid => {
                libc::close(fds[1]);
                let mut buf = [0u8; 16];
                libc::read(fds[0], buf.as_mut_ptr().cast(), 16);
                libc::close(fds[0]);
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
                let per = f64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
                let inst = f64::from_ne_bytes(buf[8..].try_into().unwrap_or_default());
                (per, inst)
            }
        }
    }
}

fn main() {
    let mut builds = Vec::new();
    let mut len = 0;
    for _ in 0..50 {
        let t = Instant::now();
        len = rootless::seccomp::default_program().map_or(0, |p| p.len());
        builds.push(t.elapsed());
    }
    println!(
        "build the program ({len} instructions): median {:?}",
        median(builds)
    );
    assert!(
        rootless::seccomp::prepare(),
        "no profile for this architecture"
    );
    let (mut plain, mut filtered, mut install) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        plain.push(in_child(false).0);
        let (per, inst) = in_child(true);
        filtered.push(per);
        install.push(inst);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, f) = (med(plain), med(filtered));
    println!(
        "install in a step's process: median {:.1} µs",
        med(install) / 1000.0
    );
    println!(
        "getppid: {p:.0} ns without the filter, {f:.0} ns with it (+{:.0} ns a syscall)",
        f - p
    );
}

//! The `envkit` command. The rootless helper (a hidden first argument) is dispatched before
//! anything else runs, so that it is still single-threaded when it creates its namespace.
//!
//! `main` is the C entry point itself (`no_main`). std's start-up before a Rust `main` reads
//! `/proc/self/maps` to find the main thread's stack guard, installs the handlers that name a
//! thread whose stack overflowed, and polls the three standard descriptors: ~60 µs of every
//! command and of every build step's helper on the machines measured (BENCHMARKS.md). What of
//! it envkit relies on is done here: descriptors 0, 1 and 2 opened on `/dev/null` where they
//! are closed, SIGPIPE ignored (a closed pipe is a write error, not the end of the process),
//! stdout flushed at the end, and a panic's exit code (101). A stack overflow is a plain
//! SIGSEGV without std's message.
//!
//! Only with glibc: std takes the arguments from glibc's `.init_array` call, which other C
//! libraries (musl) do not make, so there std's own `main` runs, which hands them over.

#![cfg_attr(target_env = "gnu", no_main)]
#![deny(unsafe_code)]

use std::io::Write;

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(not(target_env = "gnu"))]
fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(run_to_end())
}

#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    // SAFETY: `fcntl(F_GETFD)` and `open` of a constant path only look at and fill the
    // descriptor table, and setting a signal's disposition to SIG_IGN runs no handler; this
    // is before any other thread exists. std's arguments come from its own hook, not from
    // argc/argv.
    unsafe {
        // 0, 1 and 2 are open, as std's start-up makes sure: were one closed, the runtime's
        // epoll or a blob of the store would get its number and printing would write there.
        for fd in 0..3 {
            if libc::fcntl(fd, libc::F_GETFD) == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
                && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) != fd
            {
                libc::abort();
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    std::ffi::c_int::from(run_to_end())
}

/// The command's exit code (101 after a panic), once what it printed is flushed.
fn run_to_end() -> u8 {
    let code = std::panic::catch_unwind(run).unwrap_or(101);
    let _ = std::io::stdout().flush();
    code
}

fn run() -> u8 {
    if rootless::is_join() {
        // `envkit exec`: join an environment's namespaces while still single-threaded.
        let code = rootless::join_main();
        return u8::try_from(code).unwrap_or(1);
    }
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(envkit::worker::HELPER_ARG))
    {
        let code = rootless::helper_main();
        return u8::try_from(code).unwrap_or(1);
    }
    envkit::cli::main()
}

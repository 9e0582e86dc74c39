//! The `envkit` command. The rootless helper (a hidden first argument) is dispatched before
//! anything else runs, so that it is still single-threaded when it creates its namespace.

#![deny(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    if rootless::is_join() {
        // `envkit exec`: join an environment's namespaces while still single-threaded.
        let code = rootless::join_main();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(envkit::worker::HELPER_ARG))
    {
        let code = rootless::helper_main();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    envkit::cli::main()
}

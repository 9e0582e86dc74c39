//! A minimal helper binary: what envkit's hidden `__rootless-helper` subcommand does. Used by
//! the crate's integration tests.

fn main() {
    std::process::exit(rootless::helper_main());
}

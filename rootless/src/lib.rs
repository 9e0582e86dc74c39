//! envkit's namespace code: user namespaces, mounts, one container step. Synchronous, no tokio.
//!
//! The async envkit process never calls namespace code itself: it spawns a helper (itself,
//! re-executed with a hidden argument) with [`run_helper`]; the helper's `main` calls
//! [`helper_main`] first thing, before any thread exists.

mod binfmt;
pub mod confine;
mod copysnap;
mod difftar;
mod env;
mod error;
mod exec;
mod fileops;
pub mod fsroot;
mod hashfile;
mod helper;
mod idmap;
mod overlay;
mod parent;
pub mod pathsafe;
pub mod patterns;
mod proto;
pub mod seccomp;
pub mod slirp;
mod tty;
mod unpack;
pub mod userdb;

pub use difftar::{UpperKind, classify};
pub use env::{JOIN_ENV, is_join, join_command, join_main};
pub use error::{Result, RootlessError};
pub use fileops::apply_actions;
pub use helper::helper_main;
pub use idmap::IdMap;
pub use parent::{Cancel, run_helper, run_helper_cancellable};
pub use proto::{
    CA_BUNDLE_ENV, CA_BUNDLE_PATH, Chown, Compression, CopyAction, CopySource, EMULATOR_PATH,
    Emulator, EnvRequest, ExecRequest, ExitStatus, FileAction, IdSpec, JoinRequest, LayerFile,
    Mount, MountKind, ProbeResult, Request, Response, SecretBytes, Service, UserDb,
};
pub use tty::{IgnoreInterrupts, TtyMode, terminal_size};
pub use unpack::{
    TarMode, WRITEBACK_MIN, start_writeback, unpack_layers, unpack_tar, unpack_upper,
};

//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the rootless crate.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: nix::Error,
    },
    /// No subordinate id range for the user.
    #[error(
        "no subordinate {kind} range for user {user} (uid {uid}) in {file}; add one \
         (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`, \
         or run scripts/test-env.sh for the test user)"
    )]
    NoSubIds {
        kind: &'static str,
        user: String,
        uid: u32,
        file: PathBuf,
    },
    /// A malformed line in /etc/subuid, /etc/subgid, /etc/passwd or /etc/group.
    #[error("{file}:{line}: {msg}")]
    Parse {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    /// The helper was stopped by its [`Cancel`](crate::Cancel) (the build was cancelled).
    #[error("cancelled")]
    Cancelled,
    /// The helper process could not be started.
    #[error("starting helper {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// newuidmap/newgidmap failed.
    #[error("{tool} {args}: {msg}")]
    IdMapping {
        tool: &'static str,
        args: String,
        msg: String,
    },
    /// The helper broke the protocol (died early, sent garbage).
    #[error("rootless helper: {0}")]
    Protocol(String),
    /// The helper ran but the request failed; the message comes from the helper.
    #[error("{0}")]
    Helper(String),
    /// A tar entry that must not be unpacked.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    UnsafeEntry {
        layer: PathBuf,
        entry: String,
        reason: String,
    },
    /// A path that would leave its root.
    #[error("path {path:?} escapes its root: {reason}")]
    Escape { path: String, reason: String },
    /// A user or group that cannot be resolved in the rootfs.
    #[error("user {spec:?}: {msg}")]
    User { spec: String, msg: String },
    /// A bad request (invalid option, path, ...).
    #[error("{0}")]
    Invalid(String),
}

impl RootlessError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RootlessError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn sys(op: impl Into<String>, source: nix::Error) -> Self {
        RootlessError::Sys {
            op: op.into(),
            source,
        }
    }
}

pub type Result<T, E = RootlessError> = std::result::Result<T, E>;

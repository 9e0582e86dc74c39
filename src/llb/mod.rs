//! The LLB model: a `State` builder modelled on BuildKit's Go client, deterministic marshalling
//! to a `Definition` whose op bytes and digests equal the Go client's, loading and validating
//! untrusted Definitions, and JSON / DOT dumps.
//!
//! Byte compatibility is pinned by `tests/llb_golden.rs` against vectors from BuildKit
//! v0.32.2's Go client.

mod dot;
pub(crate) mod json;
mod load;
mod marshal;
pub mod shlex;
mod state;
mod wire;

use thiserror::Error;

pub use crate::platform::Platform;
pub use crate::reference::normalize_image_ref;
pub use json::{metadata_json, op_json};
pub use load::{LoadedGraph, Vertex, load, load_definition, op_label};
pub use marshal::{Definition, Digest, ExecExtra, MarshalOptions};
pub use state::{
    CUSTOM_NAME_KEY, CacheSharing, Chmod, Chown, Constraints, CopyOptions, ExecState, FileAction,
    GitOptions, HttpOptions, ImageOptions, LocalOptions, MkdirOptions, MkfileOptions, Mount,
    ResolveMode, RmOptions, Run, SecretMount, SshMount, State, SymlinkOptions, UserRef, diff, git,
    http, image, image_with, local, merge, scratch, source,
};
pub(crate) use wire::encode_op;

/// Errors of the llb module.
#[derive(Debug, Error)]
pub enum LlbError {
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },
    #[error("invalid digest {0:?} (want sha256:<64 hex>)")]
    InvalidDigest(String),
    #[error("op {op} has input {input} which is not in the definition")]
    DanglingInput { op: Digest, input: String },
    #[error("definition has no terminal op (the last op must have no body and one input)")]
    NoTerminal,
    #[error("invalid LLB graph: {0}")]
    InvalidGraph(String),
    #[error("invalid platform {0:?} (want os/arch[/variant])")]
    InvalidPlatform(String),
    #[error("internal error: {0}")]
    Internal(String),
}

//! envkit's side of a BuildKit session: the remote BuildKit calls back into the client for what
//! only the client has. Served here: the file sync of local sources (`FileSync.DiffCopy`, as
//! fsutil's sender does it), registry credentials, what an exporter sends back (a file, or a
//! directory tree as fsutil's receiver takes it) and the health check. The session is an
//! HTTP/2 connection on which envkit is the server; it reaches the BuildKit either through
//! dockerd's `/session` HTTP upgrade or tunnelled in a buildkitd's `Control.Session` stream
//! (each message a slice of the connection's bytes, the session's headers as gRPC metadata).
//!
//! DiffCopy: envkit walks the directory as Go's `filepath.Walk` does (depth first, names
//! sorted), sends one STAT packet per entry and an empty STAT at the end; the receiver asks
//! for file contents by id (REQ), gets them as DATA packets closed by an empty one, and ends
//! with FIN, which is answered with FIN.
//!
//! Files, as BuildKit's session splits it: `transport.rs` (the connection, its headers and
//! the router), `send.rs` (filesync: sending local sources), `receive.rs` (filesync: what an
//! exporter sends back), `auth.rs` (credentials), `healthcheck.rs`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};

use super::RemoteError;
use super::pb::filesync::{
    BytesMessage, CredentialsRequest, CredentialsResponse, Packet, Stat, auth_server,
    file_send_server, file_sync_server, packet::PacketType,
};
use super::pb::health::{self, HealthCheckRequest, HealthCheckResponse, health_server};

mod auth;
mod healthcheck;
mod receive;
mod send;
mod transport;

use auth::*;
use healthcheck::*;
use receive::*;
use send::*;

use transport::*;

pub use transport::{attach_control, attach_dockerd};

pub use receive::tree_to_tar;
pub use send::{go_mode, walk};

/// Go's os.FileMode bits (what fsutil's Stat.mode carries).
mod go {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
    pub const IRREGULAR: u32 = 1 << 19;
    /// os.ModeType: a file with none of these has contents.
    pub const TYPE: u32 = DIR | SYMLINK | DEVICE | PIPE | SOCKET | CHAR | IRREGULAR;
}
use go::{CHAR, DEVICE, DIR, PIPE, SETGID, SETUID, SOCKET, STICKY, SYMLINK};

/// What the session offers: local directories by the names the Definition uses.
#[derive(Debug, Clone, Default)]
pub struct Locals(pub BTreeMap<String, PathBuf>);

/// What an exporter sends back through the session.
#[derive(Debug, Clone)]
pub enum Receive {
    /// One file (the `tar`, `oci` and `docker` exporters), written to this path (the caller
    /// renames it into place).
    File(PathBuf),
    /// A directory tree (the `local` exporter, fsutil's packets): the stats are kept, each
    /// regular file's contents land in this (empty, private) directory named by its index.
    Tree(PathBuf),
}

/// What a session serves: local sources, and what an exporter may send.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub locals: Locals,
    pub receive: Option<Receive>,
    /// The registries the build names (image sources, the output's names), as envkit keys
    /// credentials (`docker.io` for Docker Hub): the only ones the session answers
    /// credentials for. A remote BuildKit asking for any other host gets none.
    pub registries: std::collections::BTreeSet<String>,
}

/// The tree a `local` exporter sent: its entries in the order they came, once all came.
type TreeSlot = Arc<tokio::sync::watch::Sender<Option<Result<Vec<Stat>, String>>>>;

/// A running session; dropping it ends it.
pub struct Session {
    pub id: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tree: TreeSlot,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Session {
    /// The tree received for `Receive::Tree`. The job may report success a moment before
    /// the session has taken the sender's last packet: this waits for it, up to `wait`.
    pub async fn received_tree(
        &self,
        wait: std::time::Duration,
    ) -> Option<Result<Vec<Stat>, String>> {
        let mut rx = self.tree.subscribe();
        match tokio::time::timeout(wait, rx.wait_for(|v| v.is_some())).await {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;

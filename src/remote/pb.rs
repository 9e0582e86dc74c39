//! Generated client of BuildKit's control API (see `proto/control.proto`).

#![allow(clippy::all, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/moby.buildkit.v1.rs"));

/// The gateway (LLBBridge) client.
pub mod frontend {
    include!(concat!(env!("OUT_DIR"), "/moby.buildkit.v1.frontend.rs"));
}

/// What a client serves on its session: file sync.
pub mod filesync {
    include!(concat!(env!("OUT_DIR"), "/moby.filesync.v1.rs"));
}

/// What a client serves on its session: the health check.
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

//! Generated client of BuildKit's control API (see `proto/control.proto`).

#![allow(clippy::all, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/moby.buildkit.v1.rs"));

/// The gateway (LLBBridge) client.
pub mod frontend {
    include!(concat!(env!("OUT_DIR"), "/moby.buildkit.v1.frontend.rs"));
}

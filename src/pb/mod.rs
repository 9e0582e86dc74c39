//! Generated protobuf code for BuildKit's wire format (see `proto/ops.proto`).
//!
//! Maps are `BTreeMap`s so encoding is deterministic (keys in sorted order).

#![allow(clippy::all, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/pb.rs"));

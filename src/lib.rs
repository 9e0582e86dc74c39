//! envkit: builds envd environments (`build.envd`) into OCI images without a daemon, Docker or
//! root. See ARCHITECTURE.md for the module map and the data flow.
//!
//! No `unsafe` here: system calls go through `nix`, `std` or the `rootless` crate. The one
//! exception is starlark's `owned_frozen_value` (see `frontend::builtins::base`).
#![deny(unsafe_code)]

pub mod backend;
pub mod bkcache;
pub mod cli;
pub mod compile;
pub mod config;
pub mod content;
pub mod cores;
pub mod devenv;
pub mod dockerfile;
pub mod engine;
pub mod export;
pub mod frontend;
pub mod fsutil;
pub mod gc;
pub mod image;
pub mod ir;
pub mod llb;
pub mod lower;
pub mod meta;
pub mod ops;
pub mod pb;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod remote;
pub mod snapshot;
pub mod solver;
pub mod timefmt;
pub mod worker;

//! BuildKit's remote cache (`--export-cache`/`--import-cache`): BuildKit v0.32.2's cache keys
//! (`keys.rs`), the content hash of files (`contenthash.rs`), and the cache config.

pub mod config;
pub mod contenthash;
pub mod keys;
pub mod layout;
pub mod matching;
pub mod spec;

/// Errors of BuildKit cache keys and configs.
#[derive(Debug, thiserror::Error)]
pub enum BkCacheError {
    #[error("invalid op for a BuildKit cache key: {0}")]
    Invalid(String),
    #[error("cache config refused: {0}")]
    Config(String),
    #[error("cache spec {0}")]
    Spec(String),
}

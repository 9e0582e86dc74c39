//! Store usage (`envkit du`) and garbage collection (`envkit prune`).
//!
//! What a store holds: snapshots (the build cache: every step's result), content blobs (image
//! layers, configs and manifests), cache mounts (`--mount=type=cache` dirs) and the metadata
//! DB. Prune removes build cache that is not needed by what it keeps, then the blobs no image
//! and no kept snapshot refers to; `--all` also empties the cache mounts.
//!
//! Running builds hold the store's GC lock shared for their whole life; prune takes it
//! exclusively, so it waits for them and never removes what a running build holds.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use thiserror::Error;

mod check;
pub use check::{CheckReport, Fix, Problem, check};

use crate::content;
use crate::meta;
use crate::snapshot::SnapRef;
use crate::worker::{Worker, WorkerError};

#[derive(Debug, Error)]
pub enum GcError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    #[error(transparent)]
    Content(#[from] content::ContentError),
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Count and bytes of one kind of store data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub count: u64,
    pub bytes: u64,
}

/// What `envkit du` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub snapshots: Amount,
    pub content: Amount,
    pub cache_mounts: Amount,
    pub metadata: Amount,
    /// Ingests in progress or left by killed processes, interrupted downloads kept for
    /// resuming, and temporary snapshot dirs.
    pub temporary: Amount,
}

/// Bytes under `dir` (files' sizes; what the user cannot read is left out).
fn tree_bytes(dir: &Path) -> u64 {
    tree_bytes_once(dir, &mut HashSet::new())
}

/// [`tree_bytes`], counting a file with several links (context copies share unchanged
/// files between snapshots) only the first time `seen` meets it.
fn tree_bytes_once(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file() && (m.nlink() < 2 || seen.insert((m.dev(), m.ino()))))
        .map(|m| m.len())
        .sum()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A file name of hex digits (a snapshot id, a blob's digest), as a string.
fn hex_name(p: &Path) -> Option<&str> {
    p.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_snapshot_id(p: &Path) -> bool {
    hex_name(p).is_some()
}

/// The store's usage by kind.
pub fn usage(root: &Path) -> Usage {
    let mut u = Usage::default();
    let mut seen = HashSet::new();
    for p in entries(&root.join("snapshots")) {
        if is_snapshot_id(&p) && p.join("ref.json").is_file() {
            u.snapshots.count += 1;
            u.snapshots.bytes += tree_bytes_once(&p, &mut seen);
        } else if p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("tmp-"))
        {
            u.temporary.count += 1;
            u.temporary.bytes += tree_bytes(&p);
        }
    }
    for p in entries(&root.join("content/ingest")) {
        u.temporary.count += 1;
        u.temporary.bytes += std::fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    for p in entries(&root.join("content/blobs/sha256")) {
        if let Ok(m) = std::fs::metadata(&p) {
            u.content.count += 1;
            u.content.bytes += m.len();
        }
    }
    for p in entries(&root.join("cache-mounts")) {
        u.cache_mounts.count += 1;
        u.cache_mounts.bytes += tree_bytes(&p);
    }
    if let Ok(m) = std::fs::metadata(root.join("meta.db")) {
        u.metadata = Amount {
            count: 1,
            bytes: m.len(),
        };
    }
    for p in metadata_notes(root) {
        u.metadata.count += 1;
        u.metadata.bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    u
}

/// The store's metadata files beside its snapshots and blobs: stat caches and file lists of
/// local sources (content hashes of build contexts), the graphs `--explain-cache` compares
/// with, and the frontend's kept evaluations (a set for each envkit binary that built here).
fn metadata_notes(root: &Path) -> Vec<PathBuf> {
    let mut notes = entries(&root.join("local-checksums"));
    notes.extend(entries(&root.join("explain")));
    notes.extend(entries(&root.join("content").join("evaluations")));
    notes
}

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Also cache mounts.
    pub all: bool,
    /// Keep the most recently used build cache up to this many bytes.
    pub keep_storage: Option<u64>,
    /// Only what was last used longer ago than this (`--filter until=24h`).
    pub until: Option<Duration>,
    /// Only the cache mounts, no build cache (`--filter type=exec.cachemount`).
    pub only_cache_mounts: bool,
}

/// What prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub snapshots: Amount,
    pub blobs: Amount,
    pub cache_mounts: Amount,
}

struct Snap {
    id: String,
    dir: PathBuf,
    used: SystemTime,
    bytes: u64,
    record: SnapRef,
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Removes build cache (and then unreferenced blobs) as `opts` says. `worker` must hold the
/// store's GC lock exclusively ([`Worker::new_exclusive`]).
pub async fn prune(worker: &Worker, opts: &PruneOptions) -> Result<PruneReport, GcError> {
    let now = SystemTime::now();
    let cutoff = opts.until.and_then(|u| now.checked_sub(u)).unwrap_or(now);
    if opts.only_cache_mounts {
        let mut report = PruneReport::default();
        prune_cache_mounts(worker, cutoff, &mut report).await?;
        return Ok(report);
    }
    let mut snaps: Vec<Snap> = Vec::new();
    let mut seen = HashSet::new();
    for dir in entries(worker.snapshots.root()) {
        if !is_snapshot_id(&dir) {
            continue;
        }
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(Some(record)) = worker.snapshots.lookup_quiet(&id) else {
            continue;
        };
        snaps.push(Snap {
            used: modified(&dir.join("ref.json")),
            bytes: tree_bytes_once(&dir, &mut seen),
            id,
            dir,
            record,
        });
    }
    // Candidates: used before the cutoff; with --keep-storage, the oldest until the rest fits.
    let mut drop: BTreeSet<String> = snaps
        .iter()
        .filter(|s| s.used < cutoff)
        .map(|s| s.id.clone())
        .collect();
    if let Some(keep) = opts.keep_storage {
        let mut by_age: Vec<&Snap> = snaps.iter().filter(|s| drop.contains(&s.id)).collect();
        by_age.sort_by_key(|s| std::cmp::Reverse(s.used));
        let mut kept: u64 = snaps
            .iter()
            .filter(|s| !drop.contains(&s.id))
            .map(|s| s.bytes)
            .sum();
        for s in by_age {
            if kept + s.bytes <= keep {
                kept += s.bytes;
                drop.remove(&s.id);
            }
        }
    }
    // Development environments stand on their image's snapshots while they exist.
    let in_use = crate::devenv::lowers_in_use(&worker.root);
    drop.retain(|id| {
        !snaps
            .iter()
            .any(|s| &s.id == id && in_use.iter().any(|l| l.starts_with(&s.dir)))
    });
    // A kept result needs every snapshot of its stack.
    loop {
        let needed: BTreeSet<String> = snaps
            .iter()
            .filter(|s| !drop.contains(&s.id))
            .flat_map(|s| s.record.chain.iter().cloned())
            .collect();
        let before = drop.len();
        drop.retain(|id| !needed.contains(id));
        if drop.len() == before {
            break;
        }
    }
    let mut report = PruneReport::default();
    for s in snaps.iter().filter(|s| drop.contains(&s.id)) {
        worker.remove_tree(&s.dir).await?;
        report.snapshots.count += 1;
        report.snapshots.bytes += s.bytes;
    }
    let kept: Vec<&Snap> = snaps.iter().filter(|s| !drop.contains(&s.id)).collect();
    report.blobs = prune_blobs(worker, &kept, cutoff)?;
    if opts.all {
        prune_cache_mounts(worker, cutoff, &mut report).await?;
        // Stat caches and kept evaluations are only a speed-up: the next build rehashes its
        // context and evaluates its file; explain records only make the next explanation
        // more precise.
        for f in metadata_notes(&worker.root) {
            if modified(&f) < cutoff {
                let _ = std::fs::remove_file(&f);
            }
        }
    }
    Ok(report)
}

/// Removes the cache mounts last used before `cutoff`.
async fn prune_cache_mounts(
    worker: &Worker,
    cutoff: SystemTime,
    report: &mut PruneReport,
) -> Result<(), GcError> {
    for dir in entries(&worker.root.join("cache-mounts")) {
        if modified(&dir) < cutoff {
            let bytes = tree_bytes(&dir);
            worker.remove_tree(&dir).await?;
            report.cache_mounts.count += 1;
            report.cache_mounts.bytes += bytes;
        }
    }
    Ok(())
}

/// Deletes blobs that no image in the store and no kept snapshot refers to.
fn prune_blobs(worker: &Worker, kept: &[&Snap], cutoff: SystemTime) -> Result<Amount, GcError> {
    let store = &worker.content;
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let db = meta::Meta::open(&worker.root)?;
    for (_, img) in db.list_images()? {
        // The record's manifest or index, and below an index each manifest it lists.
        let mut todo = vec![img.manifest_digest.clone()];
        while let Some(top) = todo.pop() {
            if !keep.insert(top.clone()) {
                continue;
            }
            if let Ok(d) = content::parse_digest(&top)
                && let Ok(bytes) = store.read_blob(&d)
            {
                let index = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .is_ok_and(|v| v.get("manifests").is_some());
                for r in manifest_refs(&bytes) {
                    if index {
                        todo.push(r);
                    } else {
                        keep.insert(r);
                    }
                }
            }
        }
    }
    for s in kept {
        if let Some(b) = &s.record.base {
            keep.insert(b.manifest_digest.clone());
            keep.insert(b.config_digest.clone());
            keep.extend(b.layers.iter().map(|l| l.digest().to_string()));
        }
        if let Ok(bytes) = std::fs::read(s.dir.join("layer.json"))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(d) = v["descriptor"]["digest"].as_str()
        {
            keep.insert(d.to_string());
        }
    }
    let mut removed = Amount::default();
    let blobs = worker.root.join("content/blobs/sha256");
    for p in entries(&blobs) {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if keep.contains(&format!("sha256:{name}")) || modified(&p) >= cutoff {
            continue;
        }
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&p).map_err(|source| GcError::Io {
            path: p.clone(),
            source,
        })?;
        removed.count += 1;
        removed.bytes += len;
    }
    // Interrupted downloads kept for resuming, older than the cutoff: no writer can hold
    // them while prune has the store to itself.
    for p in entries(&worker.root.join("content/ingest")) {
        if modified(&p) >= cutoff {
            continue;
        }
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(&p).is_ok() {
            removed.count += 1;
            removed.bytes += len;
        }
    }
    Ok(removed)
}

/// The config and layer digests a manifest (or the manifests an index) names.
fn manifest_refs(bytes: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(d) = v["config"]["digest"].as_str() {
        out.push(d.to_string());
    }
    for key in ["layers", "manifests"] {
        if let Some(items) = v[key].as_array() {
            out.extend(
                items
                    .iter()
                    .filter_map(|l| l["digest"].as_str().map(str::to_string)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_refs_name_config_and_layers() {
        let m = br#"{"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l1"},{"digest":"sha256:l2"}]}"#;
        assert_eq!(manifest_refs(m), ["sha256:c", "sha256:l1", "sha256:l2"]);
        assert!(manifest_refs(b"not json").is_empty());
    }

    #[test]
    fn a_file_two_snapshots_share_counts_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for id in ["aaaa", "bbbb"] {
            std::fs::create_dir_all(root.join(format!("snapshots/{id}/fs"))).unwrap();
            std::fs::write(root.join(format!("snapshots/{id}/ref.json")), b"").unwrap();
        }
        std::fs::write(root.join("snapshots/aaaa/fs/big"), vec![0u8; 1000]).unwrap();
        std::fs::hard_link(
            root.join("snapshots/aaaa/fs/big"),
            root.join("snapshots/bbbb/fs/big"),
        )
        .unwrap();
        std::fs::write(root.join("snapshots/bbbb/fs/own"), b"12").unwrap();
        let u = usage(root);
        assert_eq!(u.snapshots.count, 2);
        assert_eq!(u.snapshots.bytes, 1002);
        // Each snapshot on its own still has all of its files.
        assert_eq!(tree_bytes(&root.join("snapshots/bbbb")), 1002);
    }

    #[test]
    fn usage_counts_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("snapshots/abcd/fs")).unwrap();
        std::fs::write(root.join("snapshots/abcd/ref.json"), b"{}").unwrap();
        std::fs::write(root.join("snapshots/abcd/fs/f"), b"12345").unwrap();
        std::fs::create_dir_all(root.join("snapshots/tmp-x")).unwrap();
        std::fs::create_dir_all(root.join("content/blobs/sha256")).unwrap();
        std::fs::write(root.join("content/blobs/sha256/aa"), b"123").unwrap();
        std::fs::create_dir_all(root.join("content/evaluations")).unwrap();
        std::fs::write(root.join("content/evaluations/ee.json"), b"{}").unwrap();
        std::fs::create_dir_all(root.join("explain")).unwrap();
        std::fs::write(root.join("explain/x.json"), b"[1]").unwrap();
        let u = usage(root);
        assert_eq!(u.snapshots.count, 1);
        assert_eq!(u.snapshots.bytes, 7);
        assert_eq!(u.content, Amount { count: 1, bytes: 3 });
        // Notes are metadata (prune --all removes the same files).
        assert_eq!(u.metadata, Amount { count: 2, bytes: 5 });
    }
}

//! `envkit check`: verifies a store and, with `--repair`, removes what is broken.
//!
//! What is checked: every blob hashes to its name; every snapshot has a readable record, its
//! tree, and a chain of committed snapshots below it; every image record's manifest (and, for
//! an image manifest, its config and layers; for an index, at least one manifest) is in the
//! content store; what killed processes left behind (temporary snapshot dirs of dead leases,
//! unlocked ingest files). The worker passed in holds the store exclusively, so no build
//! changes it meanwhile.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{GcError, entries, hex_name, manifest_refs};
use crate::content;
use crate::meta;
use crate::snapshot::SnapRef;
use crate::worker::Worker;

/// What to do about a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Delete this file.
    RemoveFile(PathBuf),
    /// Delete this tree (through the helper: it may hold files of subordinate ids).
    RemoveTree(PathBuf),
    /// Remove this image name from the image store.
    RemoveImage(String),
}

/// One thing wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: Fix,
}

/// What `check` looked at and found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub blobs: u64,
    pub snapshots: u64,
    pub images: u64,
    pub problems: Vec<Problem>,
    /// With `repair`: the problems whose fix was applied.
    pub repaired: usize,
}

/// Checks the store `worker` holds exclusively; with `repair`, applies every fix.
pub async fn check(worker: &Worker, repair: bool) -> Result<CheckReport, GcError> {
    let mut r = CheckReport::default();
    let root = worker.root.clone();

    // Blobs: each must hash to its name.
    let blob_dir = root.join("content/blobs/sha256");
    let mut blobs: BTreeSet<String> = BTreeSet::new();
    for p in entries(&blob_dir) {
        r.blobs += 1;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ok = hex_name(&p)
            .and_then(|h| content::parse_digest(&format!("sha256:{h}")).ok())
            .is_some_and(|d| worker.content.verify(&d).is_ok());
        if ok {
            blobs.insert(format!("sha256:{name}"));
        } else {
            r.problems.push(Problem {
                what: format!("blob {name}: its contents do not hash to its name"),
                fix: Fix::RemoveFile(p),
            });
        }
    }

    // Snapshots: record, tree, chain; leftovers of dead processes.
    let snaps = worker.snapshots.root().to_path_buf();
    let stale: BTreeSet<PathBuf> = worker
        .snapshots
        .stale()
        .map_err(|e| GcError::Worker(crate::worker::WorkerError::Snapshot(e)))?
        .into_iter()
        .collect();
    let mut records: Vec<(String, Option<SnapRef>, PathBuf)> = Vec::new();
    for p in entries(&snaps) {
        if stale.contains(&p) {
            r.problems.push(Problem {
                what: format!(
                    "{}: left by a process that is gone",
                    p.strip_prefix(&root).unwrap_or(&p).display()
                ),
                fix: Fix::RemoveTree(p),
            });
            continue;
        }
        let Some(id) = hex_name(&p).map(str::to_string) else {
            continue;
        };
        r.snapshots += 1;
        let rec = std::fs::read(p.join("ref.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<SnapRef>(&b).ok());
        records.push((id, rec, p));
    }
    let committed: BTreeSet<&str> = records
        .iter()
        .filter(|(_, rec, p)| rec.is_some() && p.join("fs").is_dir())
        .map(|(id, _, _)| id.as_str())
        .collect();
    for (id, rec, p) in &records {
        let why = match rec {
            None => Some("its record (ref.json) is missing or unreadable".to_string()),
            Some(_) if !p.join("fs").is_dir() => Some("its tree (fs/) is missing".to_string()),
            Some(rec) => rec
                .chain
                .iter()
                .find(|c| !committed.contains(c.as_str()))
                .map(|c| format!("its chain needs snapshot {c}, which is missing or broken")),
        };
        if let Some(why) = why {
            r.problems.push(Problem {
                what: format!("build cache {id}: {why}"),
                fix: Fix::RemoveTree(p.clone()),
            });
        }
    }

    // Ingests of killed processes (live writers hold a lock).
    for p in content::stale_ingests(&root.join("content/ingest")) {
        r.problems.push(Problem {
            what: format!(
                "{}: an ingest a killed process left",
                p.strip_prefix(&root).unwrap_or(&p).display()
            ),
            fix: Fix::RemoveFile(p),
        });
    }

    // Image records: what they name must be in the content store.
    let db = meta::Meta::open(&root)?;
    let bad_blobs: BTreeSet<String> = r
        .problems
        .iter()
        .filter_map(|p| match &p.fix {
            Fix::RemoveFile(f) if f.starts_with(&blob_dir) => f
                .file_name()
                .map(|n| format!("sha256:{}", n.to_string_lossy())),
            _ => None,
        })
        .collect();
    let have = |d: &str| blobs.contains(d) && !bad_blobs.contains(d);
    for (name, rec) in db.list_images()? {
        r.images += 1;
        let missing = image_missing(&rec.manifest_digest, &have, &root);
        if let Some(m) = missing {
            r.problems.push(Problem {
                what: format!("image {name}: {m}"),
                fix: Fix::RemoveImage(name),
            });
        }
    }
    drop(db);

    if repair {
        for p in &r.problems {
            let done = match &p.fix {
                Fix::RemoveFile(f) => std::fs::remove_file(f).is_ok() || !f.exists(),
                Fix::RemoveTree(t) => worker.remove_tree(t).await.is_ok(),
                Fix::RemoveImage(n) => meta::Meta::open(&root)?.remove_image(n).is_ok(),
            };
            if done {
                r.repaired += 1;
            }
        }
    }
    Ok(r)
}

/// What an image record lacks, if anything: its manifest; an image manifest's config or a
/// layer; for an index, every manifest it lists.
fn image_missing(
    manifest: &str,
    have: &dyn Fn(&str) -> bool,
    root: &std::path::Path,
) -> Option<String> {
    if !have(manifest) {
        return Some(format!("its manifest {manifest} is missing or corrupt"));
    }
    let hex = manifest.strip_prefix("sha256:")?;
    let bytes = std::fs::read(root.join("content/blobs/sha256").join(hex)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if v.get("manifests").is_some() {
        let children = manifest_refs(&bytes);
        if !children.is_empty() && !children.iter().any(|c| have(c)) {
            return Some("none of its index's manifests is in the store".into());
        }
        return children
            .iter()
            .filter(|c| have(c))
            .find_map(|c| image_missing(c, have, root));
    }
    manifest_refs(&bytes)
        .into_iter()
        .find(|d| !have(d))
        .map(|d| format!("blob {d} of its manifest is missing or corrupt"))
}

//! Snapshots: directories under `<root>/snapshots/`, stacked like overlay layers.
//!
//! A snapshot `<id>/fs` holds one layer's files: a flattened base image, a copy of a local
//! source, or the overlay upper dir of one exec/file step (whiteouts in overlay's own form).
//! A build result ([`SnapRef`]) is a chain of snapshot ids, bottom first; mounting it means an
//! overlay with the chain's `fs` dirs as lowers. A snapshot is committed by writing its
//! `ref.json` into a temporary directory and renaming that directory to `<id>` — atomic, so a
//! crash leaves only `tmp-*` directories, which the next run deletes. Snapshot ids are derived
//! from cache keys, so a committed snapshot *is* the cache entry for its step.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid snapshot id {0:?}")]
    BadId(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the bottom of a chain came from, when it is a pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// Normalised reference, e.g. `docker.io/library/python:3.11-slim`.
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// The image's own layers: the export reuses them as they are.
    pub layers: Vec<oci_spec::image::Descriptor>,
}

/// A build result: a stack of snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRef {
    /// Snapshot ids, bottom first. Empty = scratch.
    pub chain: Vec<String>,
    /// Set when `chain[0]` is a flattened pulled image.
    pub base: Option<BaseImage>,
}

impl SnapRef {
    pub fn scratch() -> Self {
        SnapRef {
            chain: Vec::new(),
            base: None,
        }
    }

    /// The snapshots this chain adds on top of its base image (or all of them).
    pub fn own_layers(&self) -> &[String] {
        match self.base {
            Some(_) if !self.chain.is_empty() => &self.chain[1..],
            _ => &self.chain,
        }
    }
}

/// A snapshot being written: `fs/` (overlay upper or plain dir) and `work/` (overlay workdir).
/// Copies name the same directory; [`Snapshots::commit`] takes one of them.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub dir: PathBuf,
    pub fs: PathBuf,
    pub work: PathBuf,
}

/// An exclusive lock on one cache key, held while its result is built (see
/// [`Snapshots::lock_key`]).
#[derive(Debug)]
pub struct KeyLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// The snapshot directory of a store.
///
/// Every process that opens it holds a *lease*: a lock file under `<root>/leases/`, locked
/// with `flock` for as long as the process lives. Its temporary directories carry the lease
/// id, so [`Snapshots::stale`] removes only those of processes that are gone — never the
/// work in progress of another build on the same store.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
    lease: Option<std::sync::Arc<Lease>>,
}

/// This process's lease (see [`Snapshots`]).
#[derive(Debug)]
struct Lease {
    id: String,
    path: PathBuf,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

const LEASES: &str = "leases";

fn take_lease(leases: &Path) -> Result<Lease, SnapshotError> {
    fs::create_dir_all(leases).map_err(io_err(leases))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Another process's clean-up may take the file's lock and unlink it between our create
    // and our flock (it looks dead then): a lease counts only once its locked file is still
    // the one at its path; else take a new one.
    for attempt in 0..16u32 {
        let id = format!("{}_{nanos}_{attempt}", std::process::id());
        let path = leases.join(format!("{id}.lock"));
        let file = fs::File::create(&path).map_err(io_err(&path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| SnapshotError::Io {
                path: path.clone(),
                source: std::io::Error::from(e),
            })?;
        use std::os::unix::fs::MetadataExt;
        let held = lock.metadata().map_err(io_err(&path))?;
        let same = fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()) == (held.dev(), held.ino()))
            .unwrap_or(false);
        if same {
            return Ok(Lease {
                id,
                path,
                _lock: lock,
            });
        }
    }
    Err(SnapshotError::Io {
        path: leases.to_path_buf(),
        source: std::io::Error::other("could not take a lease (its file kept being removed)"),
    })
}

/// Whether the process holding lease `id` under `leases` is gone (its lock is free, or there
/// is no lease file at all).
fn lease_is_dead(leases: &Path, id: &str) -> bool {
    let path = leases.join(format!("{id}.lock"));
    let Ok(file) = fs::File::open(&path) else {
        return true;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_held) => {
            let _ = fs::remove_file(&path);
            true
        }
        Err(_) => false,
    }
}

const RECORD: &str = "ref.json";

impl Snapshots {
    pub fn open(store_root: &Path) -> Result<Self, SnapshotError> {
        let root = store_root.join("snapshots");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let lease = take_lease(&root.join(LEASES))?;
        Ok(Snapshots {
            root,
            lease: Some(std::sync::Arc::new(lease)),
        })
    }

    /// The prefix of this process's temporary names: `tmp-<lease>-`.
    fn tmp_prefix(&self) -> String {
        match &self.lease {
            Some(l) => format!("tmp-{}-", l.id),
            None => "tmp-".to_string(),
        }
    }

    /// Waits for the exclusive lock of cache key `id` (shared by every process on the store).
    pub async fn lock_key(&self, id: &str) -> Result<KeyLock, SnapshotError> {
        Self::check_id(id)?;
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{id}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let lock = tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                SnapshotError::Io {
                    path,
                    source: std::io::Error::from(e),
                }
            })
        })
        .await
        .map_err(|e| SnapshotError::Io {
            path: dir,
            source: std::io::Error::other(e.to_string()),
        })??;
        Ok(KeyLock { _lock: lock })
    }

    /// A temporary directory in the store (removed when dropped; after a crash, by the next
    /// process's [`Snapshots::stale`]).
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, SnapshotError> {
        tempfile::Builder::new()
            .prefix(&self.tmp_prefix())
            .tempdir_in(&self.root)
            .map_err(io_err(&self.root))
    }

    /// A temporary file in the store, like [`Snapshots::temp_dir`].
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, SnapshotError> {
        tempfile::Builder::new()
            .prefix(&self.tmp_prefix())
            .tempfile_in(&self.root)
            .map_err(io_err(&self.root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh name for a tree on its way out (`tmp-<lease>-del-…`): a tree renamed here is
    /// gone from where it was in one step, so a record never sits over a half-deleted tree,
    /// and what a crash leaves of it is stale like any other temporary dir.
    pub fn trash_path(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join(format!("{}del-{n}-{nanos:x}", self.tmp_prefix()))
    }

    fn check_id(id: &str) -> Result<(), SnapshotError> {
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SnapshotError::BadId(id.to_string()));
        }
        Ok(())
    }

    /// The files of a committed snapshot.
    pub fn fs(&self, id: &str) -> PathBuf {
        self.root.join(id).join("fs")
    }

    /// The directory of a committed snapshot (its `fs/`, record and cached layer live there).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Overlay lowers for a chain: top first, as overlayfs wants them.
    pub fn lowers(&self, r: &SnapRef) -> Vec<PathBuf> {
        r.chain.iter().rev().map(|id| self.fs(id)).collect()
    }

    /// The committed result for `id`, if there is one; a hit marks it used now (what
    /// `envkit prune --filter until=…` and `--keep-storage` go by).
    pub fn lookup(&self, id: &str) -> Result<Option<SnapRef>, SnapshotError> {
        let found = self.lookup_quiet(id)?;
        if found.is_some()
            && let Ok(f) = fs::File::options()
                .write(true)
                .open(self.root.join(id).join(RECORD))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Ok(found)
    }

    /// [`Snapshots::lookup`] without marking the result used.
    pub fn lookup_quiet(&self, id: &str) -> Result<Option<SnapRef>, SnapshotError> {
        Self::check_id(id)?;
        let path = self.root.join(id).join(RECORD);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| SnapshotError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SnapshotError::Io { path, source: e }),
        }
    }

    /// A fresh temporary snapshot directory.
    pub fn prepare(&self) -> Result<Prepared, SnapshotError> {
        let dir = self.temp_dir()?.keep();
        let fs_dir = dir.join("fs");
        let work = dir.join("work");
        fs::create_dir(&fs_dir).map_err(io_err(&fs_dir))?;
        fs::create_dir(&work).map_err(io_err(&work))?;
        // Overlay's upper dir becomes the root of the merged view: it must be traversable.
        set_mode(&fs_dir, 0o755)?;
        Ok(Prepared {
            dir,
            fs: fs_dir,
            work,
        })
    }

    /// Makes a prepared snapshot the committed snapshot `id`, recording `r` (whose top must be
    /// `id`). If another process committed `id` first, its record wins and ours is returned
    /// for deletion as the second value.
    pub fn commit(
        &self,
        prepared: Prepared,
        id: &str,
        r: &SnapRef,
    ) -> Result<(SnapRef, Option<PathBuf>), SnapshotError> {
        Self::check_id(id)?;
        write_atomic(
            &prepared.dir.join(RECORD),
            &serde_json::to_vec_pretty(r).map_err(|source| SnapshotError::Corrupt {
                path: prepared.dir.join(RECORD),
                source,
            })?,
        )?;
        let target = self.root.join(id);
        // What the step wrote reaches the disk before its record can be found (a crash after
        // the rename must not leave a record over lost data): one syncfs of the store's file
        // system, then the rename, then the directory that holds it.
        sync_fs(&prepared.dir)?;
        // rename(2) of a directory onto an existing non-empty directory fails: the first
        // committer wins.
        match fs::rename(&prepared.dir, &target) {
            Ok(()) => {
                sync_dir(&self.root)?;
                Ok((r.clone(), None))
            }
            Err(e) => match self.lookup(id)? {
                Some(existing) => Ok((existing, Some(prepared.dir))),
                None => Err(SnapshotError::Io {
                    path: target,
                    source: e,
                }),
            },
        }
    }

    /// Leftovers of interrupted steps (uncommitted `tmp-*` dirs and files) of processes that
    /// are gone, for deletion. Those of this process and of other live ones are left alone.
    pub fn stale(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let leases = self.root.join(LEASES);
        let mine = self.lease.as_ref().map(|l| l.id.as_str());
        let mut dead: std::collections::HashMap<String, bool> = Default::default();
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("tmp-") else {
                continue;
            };
            let owner = rest.split('-').next().unwrap_or("");
            if Some(owner) == mine {
                continue;
            }
            let is_dead = *dead
                .entry(owner.to_string())
                .or_insert_with(|| lease_is_dead(&leases, owner));
            if is_dead {
                out.push(entry.path());
            }
        }
        Ok(out)
    }
}

/// `syncfs(2)` of the file system `path` is on.
fn sync_fs(path: &Path) -> Result<(), SnapshotError> {
    let f = fs::File::open(path).map_err(io_err(path))?;
    nix::unistd::syncfs(&f).map_err(|e| io_err(path)(std::io::Error::from(e)))
}

/// fsync of a directory (a rename in it is then durable).
fn sync_dir(path: &Path) -> Result<(), SnapshotError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// [`crate::fsutil::write_atomic`] with this module's error.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SnapshotError> {
    crate::fsutil::write_atomic(path, data, true).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_then_lookup_and_first_committer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshots::open(dir.path()).unwrap();
        assert_eq!(s.lookup("abcd").unwrap(), None);
        let r = SnapRef {
            chain: vec!["abcd".into()],
            base: None,
        };
        let p = s.prepare().unwrap();
        fs::write(p.fs.join("x"), b"1").unwrap();
        let (got, loser) = s.commit(p, "abcd", &r).unwrap();
        assert_eq!(got, r);
        assert!(loser.is_none());
        assert_eq!(fs::read(s.fs("abcd").join("x")).unwrap(), b"1");
        assert_eq!(s.lookup("abcd").unwrap(), Some(r.clone()));

        let p2 = s.prepare().unwrap();
        let other = SnapRef {
            chain: vec!["ffff".into(), "abcd".into()],
            base: None,
        };
        let (got, loser) = s.commit(p2, "abcd", &other).unwrap();
        assert_eq!(got, r);
        assert!(loser.unwrap().starts_with(s.root()));
    }

    #[test]
    fn ids_are_checked_and_only_dead_processes_leave_stale_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let a = Snapshots::open(dir.path()).unwrap();
        assert!(matches!(a.lookup("../etc"), Err(SnapshotError::BadId(_))));
        let _p = a.prepare().unwrap();
        // Another live process (here: a second lease) sees nothing to clean.
        let b = Snapshots::open(dir.path()).unwrap();
        assert!(b.stale().unwrap().is_empty());
        assert!(a.stale().unwrap().is_empty(), "its own dirs are in use");
        // Once `a` is gone, its leftovers are stale.
        drop(a);
        assert_eq!(b.stale().unwrap().len(), 1);
        // So are old dirs without a lease.
        fs::create_dir(b.root().join("tmp-abc")).unwrap();
        assert_eq!(b.stale().unwrap().len(), 2);
    }

    #[test]
    fn own_layers_skip_the_base_image() {
        let r = SnapRef {
            chain: vec!["a".into(), "b".into()],
            base: Some(BaseImage {
                reference: "x".into(),
                manifest_digest: "m".into(),
                config_digest: "c".into(),
                layers: vec![],
            }),
        };
        assert_eq!(r.own_layers(), &["b".to_string()]);
        let s = Snapshots {
            root: PathBuf::from("/s"),
            lease: None,
        };
        assert_eq!(
            s.lowers(&r),
            vec![PathBuf::from("/s/b/fs"), PathBuf::from("/s/a/fs")]
        );
    }
}

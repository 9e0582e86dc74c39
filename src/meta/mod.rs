//! The metadata database: one redb file, `<root>/meta.db`.
//!
//! Tables (each its own redb table, so later issues add theirs without touching these):
//! * `images`: image name → [`ImageRecord`] (JSON), the named images `envkit images` lists.
//! * reserved names for later issues: `cache_keys` (cache key → result), `snapshots`,
//!   `leases`.
//!
//! Several envkit processes may use one store at once: the database is opened in redb's
//! multi-writer mode (byte-range locks; one write transaction at a time across processes,
//! readers never block). If another process holds the file exclusively (an older redb, or
//! another tool), opening retries with backoff for a while and then fails with an error that
//! says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// Table names later issues will use; listed here so nobody reuses them for something else.
pub const RESERVED_TABLES: &[&str] = &["cache_keys", "snapshots", "leases"];

/// How long [`Meta::open`] keeps retrying while another process holds the file exclusively.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the metadata database.
#[derive(Debug, Error)]
pub enum MetaError {
    #[error("metadata database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error(
        "metadata database {path} is held exclusively by another process (waited {waited:?}); \
         is another envkit (or an older version) running on this store?"
    )]
    Busy { path: PathBuf, waited: Duration },
    #[error("metadata database {path}: creating its directory: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database {path}: record for {key:?} is corrupt: {message}")]
    Corrupt {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A named image in envkit's own store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Digest of the image manifest (in the content store).
    pub manifest_digest: String,
    /// Size of the manifest in bytes.
    pub size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

/// The open metadata database.
pub struct Meta {
    path: PathBuf,
    db: Database,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta").field("path", &self.path).finish()
    }
}

impl Meta {
    /// Opens (creating if needed) `<root>/meta.db`.
    pub fn open(root: &Path) -> Result<Meta, MetaError> {
        Self::open_with_timeout(root, OPEN_TIMEOUT)
    }

    /// Like [`Meta::open`], with a custom wait for a busy database.
    pub fn open_with_timeout(root: &Path, timeout: Duration) -> Result<Meta, MetaError> {
        crate::content::private_root(root).map_err(|source| MetaError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let path = root.join("meta.db");
        let start = Instant::now();
        let mut delay = Duration::from_millis(10);
        loop {
            let attempt = Database::builder()
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .create(&path);
            match attempt {
                Ok(db) => {
                    let meta = Meta { path, db };
                    meta.init()?;
                    return Ok(meta);
                }
                Err(DatabaseError::DatabaseAlreadyOpen)
                | Err(DatabaseError::LockProtocolMismatch) => {
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Err(MetaError::Busy { path, waited });
                    }
                    std::thread::sleep(delay.min(timeout.saturating_sub(waited)));
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(MetaError::Db {
                        path,
                        source: e.into(),
                    });
                }
            }
        }
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> MetaError {
        MetaError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// The record of a named image, read without opening the database for writing (which
    /// costs redb several syncs): what a warm rebuild checks before it writes anything.
    /// Unreadable or busy counts as unknown.
    pub fn peek_image(root: &Path, name: &str) -> Option<ImageRecord> {
        let path = root.join("meta.db");
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .open_read_only(&path)
            .ok()?;
        let txn = db.begin_read().ok()?;
        let t = txn.open_table(IMAGES).ok()?;
        let v = t.get(name).ok()??;
        serde_json::from_slice(v.value()).ok()
    }

    /// Creates the tables so that readers find them (a write, with its syncs, only the first
    /// time).
    fn init(&self) -> Result<(), MetaError> {
        if let Ok(r) = self.db.begin_read()
            && r.open_table(IMAGES).is_ok()
        {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        txn.open_table(IMAGES).map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records (or replaces) a named image.
    pub fn put_image(&self, name: &str, record: &ImageRecord) -> Result<(), MetaError> {
        let value = serde_json::to_vec(record).map_err(|e| MetaError::Corrupt {
            path: self.path.clone(),
            key: name.to_string(),
            message: e.to_string(),
        })?;
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut t = txn.open_table(IMAGES).map_err(|e| self.db_err(e))?;
            t.insert(name, value.as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<ImageRecord, MetaError> {
        serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    /// The record of a named image.
    pub fn get_image(&self, name: &str) -> Result<Option<ImageRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(IMAGES).map_err(|e| self.db_err(e))?;
        match t.get(name).map_err(|e| self.db_err(e))? {
            Some(v) => Ok(Some(self.decode(name, v.value())?)),
            None => Ok(None),
        }
    }

    /// All named images, sorted by name.
    pub fn list_images(&self) -> Result<Vec<(String, ImageRecord)>, MetaError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(IMAGES).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let name = k.value().to_string();
            let rec = self.decode(&name, v.value())?;
            out.push((name, rec));
        }
        Ok(out)
    }

    /// Removes a named image; returns whether it was there.
    pub fn remove_image(&self, name: &str) -> Result<bool, MetaError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        let existed = {
            let mut t = txn.open_table(IMAGES).map_err(|e| self.db_err(e))?;
            t.remove(name).map_err(|e| self.db_err(e))?.is_some()
        };
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u64) -> ImageRecord {
        ImageRecord {
            manifest_digest: format!("sha256:{}", &format!("{n:x}").repeat(64)[..64]),
            size: 100 + n,
            created: 1_700_000_000 + n,
        }
    }

    #[test]
    fn put_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        assert!(dir.path().join("meta.db").is_file());
        assert_eq!(m.get_image("a").unwrap(), None);
        assert!(m.list_images().unwrap().is_empty());
        m.put_image("docker.io/library/b:latest", &rec(2)).unwrap();
        m.put_image("docker.io/library/a:latest", &rec(1)).unwrap();
        assert_eq!(
            m.get_image("docker.io/library/a:latest").unwrap(),
            Some(rec(1))
        );
        m.put_image("docker.io/library/a:latest", &rec(3)).unwrap();
        let names: Vec<String> = m
            .list_images()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            vec!["docker.io/library/a:latest", "docker.io/library/b:latest"]
        );
        assert!(m.remove_image("docker.io/library/a:latest").unwrap());
        assert!(!m.remove_image("docker.io/library/a:latest").unwrap());
        assert_eq!(m.list_images().unwrap().len(), 1);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = Meta::open(dir.path()).unwrap();
            m.put_image("x", &rec(1)).unwrap();
        }
        let m = Meta::open(dir.path()).unwrap();
        assert_eq!(m.get_image("x").unwrap(), Some(rec(1)));
    }

    /// A second handle in this process: redb refuses it, and we report it as busy (with a
    /// short timeout) instead of hanging or corrupting anything.
    #[test]
    fn second_handle_waits_then_reports_busy_or_shares() {
        let dir = tempfile::tempdir().unwrap();
        let a = Meta::open(dir.path()).unwrap();
        a.put_image("x", &rec(1)).unwrap();
        match Meta::open_with_timeout(dir.path(), Duration::from_millis(50)) {
            Ok(b) => {
                assert_eq!(b.get_image("x").unwrap(), Some(rec(1)));
            }
            Err(e) => {
                assert!(matches!(e, MetaError::Busy { .. }), "{e}");
                assert!(e.to_string().contains("meta.db"), "{e}");
            }
        }
        assert_eq!(a.get_image("x").unwrap(), Some(rec(1)));
    }

    /// Two processes with the database open at once: the parent keeps its handle while a
    /// child process (this same test binary, re-run as the child) writes; both see both writes.
    #[test]
    fn two_processes_share_the_database() {
        if let Some(root) = std::env::var_os("ENVKIT_META_CHILD_ROOT") {
            let m = Meta::open(Path::new(&root)).unwrap();
            assert_eq!(m.get_image("parent").unwrap(), Some(rec(1)));
            m.put_image("child", &rec(2)).unwrap();
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        m.put_image("parent", &rec(1)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "meta::tests::two_processes_share_the_database",
                "--test-threads=1",
            ])
            .env("ENVKIT_META_CHILD_ROOT", dir.path())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {log}");
        assert!(log.contains("1 passed"), "child did not run: {log}");
        assert_eq!(m.get_image("child").unwrap(), Some(rec(2)));
        m.put_image("parent2", &rec(3)).unwrap();
        assert_eq!(m.list_images().unwrap().len(), 3);
    }
}

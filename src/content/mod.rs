//! The content-addressed blob store: `<root>/content/blobs/sha256/<hex>`.
//!
//! Every blob enters through a [`BlobWriter`]: bytes go to a temporary file under
//! `<root>/content/ingest/` (same file system as the blobs) while their sha256 and length are
//! computed; the digest and size are checked against what the caller expected **before** the
//! file is synced and renamed into place. A failed check removes the temporary file, so a blob
//! path either does not exist or holds exactly the bytes its name promises.
//!
//! Several processes may share one store: ingests never write to a final path, and renaming a
//! blob over an existing one with the same name replaces identical content.

mod private;
pub use private::private_root;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;
use thiserror::Error;

/// Errors of the content store.
#[derive(Debug, Error)]
pub enum ContentError {
    #[error("content store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unsupported digest {0} (only sha256 is stored)")]
    UnsupportedDigest(String),
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the content store")]
    NotFound(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What was stored: the blob's digest and length in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// The hex sha256 of a byte slice (keys and names; [`sha256_digest`] for content).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Computes `sha256:<hex>` of a byte slice.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    digest_from_hasher(Sha256::new_with_prefix(bytes))
}

/// The sha256 digest a hasher has computed.
pub(crate) fn digest_from_hasher(hasher: Sha256) -> Digest {
    let hex = hex::encode(hasher.finalize());
    // A lower-case 64-digit hex string is always a valid sha256 digest.
    match Digest::from_str(&format!("sha256:{hex}")) {
        Ok(d) => d,
        Err(_) => unreachable!("sha256 hex is a valid digest"),
    }
}

/// Parses `sha256:<hex>`; other algorithms are refused.
pub fn parse_digest(s: &str) -> Result<Digest, ContentError> {
    let d = Digest::from_str(s).map_err(|_| ContentError::InvalidDigest(s.to_string()))?;
    if *d.algorithm() != DigestAlgorithm::Sha256 {
        return Err(ContentError::UnsupportedDigest(s.to_string()));
    }
    Ok(d)
}

/// A content-addressed store rooted at `<root>/content`.
#[derive(Debug, Clone)]
pub struct Store {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `root` (the envkit store root).
    pub fn open(root: &Path) -> Result<Store, ContentError> {
        private_root(root).map_err(io_err(root))?;
        let content = root.join("content");
        let blobs = content.join("blobs").join("sha256");
        let ingest = content.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        fs::create_dir_all(&ingest).map_err(io_err(&ingest))?;
        sweep_ingests(&ingest);
        Ok(Store { blobs, ingest })
    }

    /// A small note kept beside the blobs (`content/<kind>/<key>.json`): caches that may be
    /// lost at any time. `key` must be a plain file name.
    pub fn read_note(&self, kind: &str, key: &str) -> Option<Vec<u8>> {
        fs::read(self.note_path(kind, key)?).ok()
    }

    /// Writes a note atomically (best effort). A note that already says `bytes` is left
    /// alone: a warm build rewrites nothing (a rename over a file costs ext4 a data flush).
    pub fn write_note(&self, kind: &str, key: &str, bytes: &[u8]) {
        let Some(p) = self.note_path(kind, key) else {
            return;
        };
        if fs::read(&p).is_ok_and(|old| old == bytes) {
            return;
        }
        if let Some(dir) = p.parent()
            && fs::create_dir_all(dir).is_ok()
        {
            let _ = crate::fsutil::write_atomic(&p, bytes, false);
        }
    }

    fn note_path(&self, kind: &str, key: &str) -> Option<PathBuf> {
        if key.is_empty() || key.contains(['/', '\\']) || key.starts_with('.') {
            return None;
        }
        let content = self.blobs.parent()?.parent()?;
        Some(content.join(kind).join(format!("{key}.json")))
    }

    /// Where a blob lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> Result<PathBuf, ContentError> {
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(ContentError::UnsupportedDigest(digest.to_string()));
        }
        Ok(self.blobs.join(digest.digest()))
    }

    /// Whether the blob is present.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Size of a present blob.
    pub fn size(&self, digest: &Digest) -> Result<u64, ContentError> {
        let path = self.path(digest)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.to_string()))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Starts an ingest: write the bytes, then [`BlobWriter::commit`]. The temporary file is
    /// flocked while it is written, which tells a live ingest from a killed one's leftover.
    pub fn writer(&self) -> Result<BlobWriter, ContentError> {
        // Made under a name sweeps leave alone for a while (`new-*`), locked, and only then
        // named `ingest-*`: an `ingest-*` file nobody locks is always a killed writer's.
        let fresh = tempfile::Builder::new()
            .prefix(NEW_PREFIX)
            .tempfile_in(&self.ingest)
            .map_err(io_err(&self.ingest))?;
        if !try_lock(fresh.as_file()) {
            return Err(io_err(fresh.path())(io::Error::last_os_error()));
        }
        let (file, path) = fresh.into_parts();
        let suffix = path
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches(NEW_PREFIX)
                    .to_string()
            })
            .unwrap_or_default();
        let named = self.ingest.join(format!("ingest-{suffix}"));
        fs::rename(&path, &named).map_err(io_err(&named))?;
        // The old name is gone: forget it without removing anything there.
        let _ = path.keep();
        let file = NamedTempFile::from_parts(
            file,
            tempfile::TempPath::try_from_path(&named).map_err(io_err(&named))?,
        );
        Ok(BlobWriter {
            blobs: self.blobs.clone(),
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
            keep: false,
        })
    }

    /// Starts or resumes the download of `digest`: the bytes an earlier, interrupted attempt
    /// wrote (`ingest/partial-<hex>`, kept when a resumable writer is dropped) are re-hashed
    /// and [`BlobWriter::written`] says where to go on. Another process resuming the same blob
    /// holds it locked; then this is a fresh, private writer.
    pub fn resumable_writer(&self, digest: &Digest) -> Result<BlobWriter, ContentError> {
        let path = self.ingest.join(format!("partial-{}", digest.digest()));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if file.try_lock().is_err() {
            return self.writer();
        }
        let (hasher, size) = hash_all(&mut file, &path)?;
        Ok(BlobWriter {
            blobs: self.blobs.clone(),
            file: Some(NamedTempFile::from_parts(
                file,
                tempfile::TempPath::try_from_path(&path).map_err(io_err(&path))?,
            )),
            hasher,
            size,
            keep: true,
        })
    }

    /// Copies `reader` into the store. With `expected`, the digest and size must match or
    /// nothing is stored.
    pub fn ingest<R: Read>(
        &self,
        mut reader: R,
        expected: Option<(&Digest, u64)>,
    ) -> Result<BlobInfo, ContentError> {
        let mut w = self.writer()?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.ingest)(e)),
            };
            w.update(&buf[..n])?;
        }
        w.commit(expected)
    }

    /// Takes in a file already written whole, whose digest and size the writer computed as
    /// it wrote it (a layer tar from the helper): made durable and renamed into place, not
    /// copied or read again. The size is checked against the file; a blob already present is
    /// kept and the file removed. On another filesystem it is ingested (and so checked) instead.
    pub fn adopt(
        &self,
        file: NamedTempFile,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobInfo, ContentError> {
        let dest = self.path(digest)?;
        let tmp_path = file.path().to_path_buf();
        let actual = file.as_file().metadata().map_err(io_err(&tmp_path))?.len();
        if actual != size {
            return Err(ContentError::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual,
            });
        }
        let info = BlobInfo {
            digest: digest.clone(),
            size,
        };
        if dest.is_file() {
            return Ok(info);
        }
        file.as_file().sync_all().map_err(io_err(&tmp_path))?;
        match file.persist(&dest) {
            Ok(_) => Ok(info),
            Err(e) if e.error.kind() == io::ErrorKind::CrossesDevices => {
                let mut f = e.file;
                io::Seek::rewind(f.as_file_mut()).map_err(io_err(&tmp_path))?;
                self.ingest(
                    io::BufReader::with_capacity(1 << 20, f),
                    Some((digest, size)),
                )
            }
            Err(e) => Err(ContentError::Io {
                path: dest,
                source: e.error,
            }),
        }
    }

    /// Stores a small blob held in memory (configs, manifests).
    pub fn write_blob(&self, bytes: &[u8]) -> Result<BlobInfo, ContentError> {
        let digest = sha256_digest(bytes);
        if self.has(&digest) {
            return Ok(BlobInfo {
                digest,
                size: bytes.len() as u64,
            });
        }
        let mut w = self.writer()?;
        w.update(bytes)?;
        let size = bytes.len() as u64;
        w.commit(Some((&digest, size)))
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        let path = self.path(digest)?;
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.to_string()))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Reads a whole blob and checks that its bytes still hash to its name.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest)?;
        let mut bytes = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        let actual = sha256_digest(&bytes);
        if actual != *digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Re-hashes a stored blob (streaming) and fails if it no longer matches its name.
    pub fn verify(&self, digest: &Digest) -> Result<u64, ContentError> {
        let path = self.path(digest)?;
        let mut f = self.open_blob(digest)?;
        let (hasher, size) = hash_all(&mut f, &path)?;
        let actual = digest_from_hasher(hasher);
        if actual != *digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(size)
    }
}

/// The digest and length of everything `r` gives (`what` names it in errors).
pub fn hash_reader(r: &mut impl Read, what: &Path) -> Result<BlobInfo, ContentError> {
    let (hasher, size) = hash_all(r, what)?;
    Ok(BlobInfo {
        digest: digest_from_hasher(hasher),
        size,
    })
}

/// Reads `r` to its end: the sha256 state and the byte count (`path` names it in errors).
fn hash_all(r: &mut impl Read, path: &Path) -> Result<(Sha256, u64), ContentError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher, size))
}

/// Where a writer's file starts, before its lock is taken.
const NEW_PREFIX: &str = "new-";

/// `new-*` files older than this are a killed writer's (a younger one may not have taken its
/// lock yet).
const STALE_NEW: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the files of writers that are gone (killed mid-ingest): `ingest-*` files nobody
/// locks (a writer locks its file before naming it so), and unlocked `new-*` files older than
/// [`STALE_NEW`]. Resumable `partial-*` downloads are prune's business.
fn sweep_ingests(dir: &Path) {
    for p in stale_ingests(dir) {
        let _ = fs::remove_file(&p);
    }
}

/// The files of killed writers in `dir`: `ingest-*` files no writer holds (their flock is
/// free), and such `new-*` files at least [`STALE_NEW`] old.
pub fn stale_ingests(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now();
    rd.flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("ingest-")
                || (name.starts_with(NEW_PREFIX)
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|age| age >= STALE_NEW))
        })
        .map(|e| e.path())
        .filter(|p| File::open(p).is_ok_and(|f| try_lock(&f)))
        .collect()
}

/// Takes `f`'s exclusive flock without waiting; false when another holder has it. The lock
/// goes with the descriptor.
fn try_lock(f: &File) -> bool {
    f.try_lock().is_ok()
}

/// An ingest in progress. Dropping it without [`commit`](BlobWriter::commit) removes the
/// temporary file.
pub struct BlobWriter {
    blobs: PathBuf,
    /// Always Some until commit or drop.
    file: Option<NamedTempFile>,
    hasher: Sha256,
    size: u64,
    /// A resumable download: dropping keeps what was written.
    keep: bool,
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(f) = self.file.take()
            && self.keep
        {
            let _ = f.into_temp_path().keep();
        }
    }
}

impl BlobWriter {
    fn file(&mut self) -> Result<&mut NamedTempFile, ContentError> {
        self.file.as_mut().ok_or_else(|| ContentError::Io {
            path: self.blobs.clone(),
            source: io::Error::other("the writer was already committed"),
        })
    }

    /// Appends bytes.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), ContentError> {
        let f = self.file()?;
        f.write_all(bytes).map_err(|source| ContentError::Io {
            path: f.path().to_path_buf(),
            source,
        })?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Drops the writer and what it wrote, even for a resumable download (its bytes are
    /// known to be wrong).
    pub fn discard(mut self) {
        self.keep = false;
    }

    /// Forgets what was written (a server that ignored a range request sends it all again).
    pub fn reset(&mut self) -> Result<(), ContentError> {
        let f = self.file()?;
        let path = f.path().to_path_buf();
        f.as_file().set_len(0).map_err(io_err(&path))?;
        self.hasher = Sha256::new();
        self.size = 0;
        Ok(())
    }

    /// The file being written (until the commit moves it into place).
    pub fn path(&self) -> Option<PathBuf> {
        self.file.as_ref().map(|f| f.path().to_path_buf())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// Checks digest and size, then moves the blob into place.
    pub fn commit(mut self, expected: Option<(&Digest, u64)>) -> Result<BlobInfo, ContentError> {
        // Taken out: on any error below, it is dropped and removed (a bad partial download
        // must not be resumed).
        let file = self.file.take().ok_or_else(|| ContentError::Io {
            path: self.blobs.clone(),
            source: io::Error::other("the writer was already committed"),
        })?;
        let (blobs, size) = (self.blobs.clone(), self.size);
        let hasher = std::mem::take(&mut self.hasher);
        let digest = digest_from_hasher(hasher);
        if let Some((want, want_size)) = expected {
            if *want != digest {
                return Err(ContentError::DigestMismatch {
                    expected: want.to_string(),
                    actual: digest.to_string(),
                });
            }
            if want_size != size {
                return Err(ContentError::SizeMismatch {
                    digest: want.to_string(),
                    expected: want_size,
                    actual: size,
                });
            }
        }
        let tmp_path = file.path().to_path_buf();
        file.as_file().sync_all().map_err(io_err(&tmp_path))?;
        let dest = blobs.join(digest.digest());
        file.persist(&dest).map_err(|e| ContentError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(BlobInfo { digest, size })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    fn ingest_dir_is_empty(dir: &Path) -> bool {
        fs::read_dir(dir.join("content/ingest")).unwrap().count() == 0
    }

    /// The security issue's defect 8: a killed ingest's file stayed for ever.
    #[test]
    fn stale_ingests_are_removed_on_open_and_live_ones_kept() {
        let (dir, s) = store();
        let mut live = s.writer().unwrap();
        live.update(b"in progress").unwrap();
        let dead = dir.path().join("content/ingest/ingest-killed");
        fs::write(&dead, b"left by a killed process").unwrap();
        let young = dir.path().join("content/ingest/new-young");
        fs::write(&young, b"maybe not locked yet").unwrap();
        let old_new = dir.path().join("content/ingest/new-old");
        fs::write(&old_new, b"killed before it was named").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let f = File::options().write(true).open(&old_new).unwrap();
        f.set_modified(old).unwrap();
        let _again = Store::open(dir.path()).unwrap();
        let left: Vec<String> = fs::read_dir(dir.path().join("content/ingest"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            !dead.exists(),
            "a fresh unlocked ingest is a killed writer's"
        );
        assert!(!old_new.exists());
        assert!(young.exists());
        live.update(b" and still writable").unwrap();
    }

    #[test]
    fn notes_are_written_once_and_replaced_when_they_change() {
        use std::os::unix::fs::MetadataExt;
        let (dir, s) = store();
        assert_eq!(s.read_note("tags", "k"), None);
        s.write_note("tags", "k", b"sha256:aa");
        let path = dir.path().join("content/tags/k.json");
        let first = fs::metadata(&path).unwrap().ino();
        // The same content again: the file is not replaced (a rename would give a new inode).
        s.write_note("tags", "k", b"sha256:aa");
        assert_eq!(fs::metadata(&path).unwrap().ino(), first);
        s.write_note("tags", "k", b"sha256:bb");
        assert_eq!(s.read_note("tags", "k").as_deref(), Some(&b"sha256:bb"[..]));
        // Keys that would leave the notes dir are refused.
        s.write_note("tags", "../escape", b"x");
        assert!(!dir.path().join("content/escape.json").exists());
    }

    #[test]
    fn write_and_read_back() {
        let (dir, s) = store();
        let info = s.write_blob(b"hello").unwrap();
        assert_eq!(
            info.digest.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(info.size, 5);
        assert!(s.has(&info.digest));
        assert_eq!(s.read_blob(&info.digest).unwrap(), b"hello");
        assert_eq!(s.size(&info.digest).unwrap(), 5);
        assert!(
            dir.path()
                .join("content/blobs/sha256")
                .join(info.digest.digest())
                .is_file()
        );
        assert!(ingest_dir_is_empty(dir.path()));
        // Writing again is a no-op.
        assert_eq!(s.write_blob(b"hello").unwrap(), info);
    }

    #[test]
    fn adopt_renames_a_written_file_in_and_checks_its_size() {
        let (dir, s) = store();
        let digest = sha256_digest(b"layer bytes");
        let temp_in = |bytes: &[u8]| {
            let mut f = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
            f.write_all(bytes).unwrap();
            f
        };
        // A size that is not the file's is refused, and the file goes.
        let f = temp_in(b"layer bytes");
        let path = f.path().to_path_buf();
        let err = s.adopt(f, &digest, 3).unwrap_err();
        assert!(matches!(err, ContentError::SizeMismatch { .. }), "{err}");
        assert!(!s.has(&digest) && !path.exists());
        // Adopted: the same file, renamed, reads back verified.
        let f = temp_in(b"layer bytes");
        let path = f.path().to_path_buf();
        assert_eq!(s.adopt(f, &digest, 11).unwrap().size, 11);
        assert!(!path.exists());
        assert_eq!(s.read_blob(&digest).unwrap(), b"layer bytes");
        // Already there: kept, and the new file removed.
        let f = temp_in(b"layer bytes");
        let path = f.path().to_path_buf();
        assert_eq!(s.adopt(f, &digest, 11).unwrap().digest, digest);
        assert!(!path.exists());
        assert!(ingest_dir_is_empty(dir.path()));
    }

    #[test]
    fn ingest_verifies_digest_before_rename() {
        let (dir, s) = store();
        let wrong = sha256_digest(b"something else");
        let err = s.ingest(&b"hello"[..], Some((&wrong, 5))).unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(!s.has(&wrong));
        assert!(!s.has(&sha256_digest(b"hello")));
        assert!(ingest_dir_is_empty(dir.path()));
    }

    #[test]
    fn resumable_writers_keep_resume_and_discard() {
        let (dir, s) = store();
        let data = b"hello, resumable world";
        let d = sha256_digest(data);
        let mut w = s.resumable_writer(&d).unwrap();
        assert_eq!(w.written(), 0);
        w.update(&data[..7]).unwrap();
        drop(w); // an interrupted download
        assert!(!ingest_dir_is_empty(dir.path()));
        // A second writer of the same blob while the first holds it: private, from zero.
        let mut w = s.resumable_writer(&d).unwrap();
        assert_eq!(w.written(), 7);
        let other = s.resumable_writer(&d).unwrap();
        assert_eq!(other.written(), 0);
        drop(other);
        w.update(&data[7..]).unwrap();
        w.commit(Some((&d, data.len() as u64))).unwrap();
        assert!(s.has(&d));
        assert!(ingest_dir_is_empty(dir.path()));
        // Wrong bytes resumed: the commit fails and nothing is left to resume.
        let d2 = sha256_digest(b"other");
        let mut w = s.resumable_writer(&d2).unwrap();
        w.update(b"oth").unwrap();
        drop(w);
        let mut w = s.resumable_writer(&d2).unwrap();
        w.update(b"ERS").unwrap();
        assert!(w.commit(Some((&d2, 5))).is_err());
        assert!(ingest_dir_is_empty(dir.path()));
        // discard and reset.
        let mut w = s.resumable_writer(&d2).unwrap();
        w.update(b"xx").unwrap();
        w.reset().unwrap();
        assert_eq!(w.written(), 0);
        w.update(b"x").unwrap();
        w.discard();
        assert!(ingest_dir_is_empty(dir.path()));
    }

    #[test]
    fn ingest_verifies_size() {
        let (dir, s) = store();
        let d = sha256_digest(b"hello");
        let err = s.ingest(&b"hello"[..], Some((&d, 6))).unwrap_err();
        assert!(matches!(err, ContentError::SizeMismatch { .. }), "{err}");
        assert!(!s.has(&d));
        assert!(ingest_dir_is_empty(dir.path()));
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let (dir, s) = store();
        let mut w = s.writer().unwrap();
        w.update(b"partial").unwrap();
        drop(w);
        assert!(ingest_dir_is_empty(dir.path()));
    }

    #[test]
    fn read_blob_detects_corruption() {
        let (_dir, s) = store();
        let info = s.write_blob(b"hello").unwrap();
        fs::write(s.path(&info.digest).unwrap(), b"jello").unwrap();
        assert!(matches!(
            s.read_blob(&info.digest),
            Err(ContentError::DigestMismatch { .. })
        ));
        assert!(s.verify(&info.digest).is_err());
    }

    #[test]
    fn missing_blob_and_bad_digests() {
        let (_dir, s) = store();
        let d = sha256_digest(b"nope");
        assert!(matches!(s.read_blob(&d), Err(ContentError::NotFound(_))));
        assert!(parse_digest("sha256:xyz").is_err());
        assert!(matches!(
            parse_digest(&format!("sha512:{}", "a".repeat(128))),
            Err(ContentError::UnsupportedDigest(_))
        ));
        assert!(parse_digest("../../etc/passwd").is_err());
    }
}

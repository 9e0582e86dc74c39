//! Reading a blob while it downloads, so that a layer is unpacked as its bytes arrive instead
//! of after the whole blob is in the store.
//!
//! The download publishes where its bytes are (a [`Tap`]: the file it writes, how much is in
//! it, how it ended); a [`Follower`] reads that file behind it and copies the bytes on. The
//! download keeps writing the store's resumable ingest file as before (retries, resumed
//! ranges, a restart from nothing), so the content store gets the same verified blob either
//! way. The follower hashes what it copied: only when that is exactly the blob its
//! descriptor names (digest and size) does [`Follower::copy_to`] succeed, so a reader of the
//! copy has seen the verified blob's bytes and nothing else, whatever the download went
//! through.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{Registry, RegistryError, Resolved, Source};
use crate::content;

/// How a download stands, as its followers see it.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// The file the bytes are written to.
    file: Option<PathBuf>,
    /// Bumped whenever the download starts a file again (a new file, or the same one
    /// truncated): bytes already read from the old one may differ from the new one's.
    generation: u64,
    /// Bytes in `file` so far.
    written: u64,
    /// How the download ended: the verified blob's path in the store, or why it failed.
    end: Option<Result<PathBuf, String>>,
}

/// The download's side: where its bytes are going.
pub(super) struct Tap(watch::Sender<Progress>);

impl Tap {
    /// The download (re)starts writing `path`, which already holds `written` bytes.
    pub(super) fn file(&self, path: Option<PathBuf>, written: u64) {
        self.0.send_modify(|p| {
            p.file = path;
            p.generation += 1;
            p.written = written;
        });
    }

    /// `written` bytes are in the file now.
    pub(super) fn written(&self, written: u64) {
        self.0.send_modify(|p| p.written = written);
    }

    /// The download ended: the blob is in the store at the path, or it failed.
    pub(super) fn end(&self, end: Result<PathBuf, String>) {
        self.0.send_modify(|p| p.end = Some(end));
    }
}

/// Why a followed blob could not be copied.
#[derive(Debug, Error)]
pub enum FollowError {
    #[error("downloading {digest}: {message}")]
    Download { digest: String, message: String },
    #[error("the download of {digest} stopped before it ended")]
    Stopped { digest: String },
    /// The bytes read are not the blob: the download started again and sent other bytes
    /// than the first attempt had. The blob in the store is right; a reader of the copy saw
    /// something else.
    #[error(
        "the bytes read while {digest} downloaded are not the blob (got {actual}, {size} bytes)"
    )]
    Changed {
        digest: String,
        actual: String,
        size: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The reader's side of one blob's download.
pub struct Follower {
    rx: watch::Receiver<Progress>,
    desc: Descriptor,
}

/// How much a follower reads at a time.
const CHUNK: usize = 256 * 1024;

impl Follower {
    /// Copies the blob to `out` from its first byte to its last as the download writes it,
    /// and returns its size once what was copied has the descriptor's digest and size. When
    /// `out` stops taking bytes (a pipe whose reader has all it wanted: a tar stream ends
    /// before the blob does), the rest is still read and hashed: the bytes it took must be
    /// the start of the verified blob.
    pub async fn copy_to<W: AsyncWrite + Unpin>(mut self, out: &mut W) -> Result<u64, FollowError> {
        let digest = self.desc.digest().to_string();
        let size = self.desc.size();
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut reader_gone = false;
        // The file being read, its path, and which generation of the download it belongs to
        // (`None`: the finished blob in the store).
        let mut open: Option<(Option<u64>, PathBuf, Arc<std::fs::File>)> = None;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let p = self.rx.borrow_and_update().clone();
            let (available, generation, path) = match &p.end {
                Some(Err(message)) => {
                    return Err(FollowError::Download {
                        digest,
                        message: message.clone(),
                    });
                }
                Some(Ok(path)) => (size, None, Some(path.clone())),
                None => (p.written, Some(p.generation), p.file.clone()),
            };
            if done >= available {
                if p.end.is_some() {
                    break;
                }
                self.changed(&digest).await?;
                continue;
            }
            if open.as_ref().map(|(g, _, _)| *g) != Some(generation) {
                let Some(path) = path else {
                    self.changed(&digest).await?;
                    continue;
                };
                match std::fs::File::open(&path) {
                    Ok(f) => open = Some((generation, path, Arc::new(f))),
                    // Moved into the store between the look and the open: the end is next.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && p.end.is_none() => {
                        self.changed(&digest).await?;
                        continue;
                    }
                    Err(source) => return Err(FollowError::Io { path, source }),
                }
            }
            let Some((_, path, file)) = &open else {
                continue;
            };
            let want = usize::try_from(available - done).map_or(CHUNK, |n| n.min(CHUNK));
            let (n, back) = read_at(file.clone(), buf, done, want).await;
            buf = back;
            let n = n.map_err(|source| FollowError::Io {
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                // Shorter than announced: the file was truncated for a new start.
                self.changed(&digest).await?;
                continue;
            }
            let bytes = &buf[..n];
            hasher.update(bytes);
            done += n as u64;
            if !reader_gone {
                match out.write_all(bytes).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => reader_gone = true,
                    Err(source) => {
                        return Err(FollowError::Io {
                            path: PathBuf::from("(the unpack's pipe)"),
                            source,
                        });
                    }
                }
            }
        }
        let actual = content::digest_from_hasher(hasher);
        if actual != *self.desc.digest() || done != size {
            return Err(FollowError::Changed {
                digest,
                actual: actual.to_string(),
                size: done,
            });
        }
        Ok(done)
    }

    async fn changed(&mut self, digest: &str) -> Result<(), FollowError> {
        self.rx.changed().await.map_err(|_| FollowError::Stopped {
            digest: digest.to_string(),
        })
    }
}

/// `want` bytes of `file` at `offset` into `buf`, read off the runtime's threads.
async fn read_at(
    file: Arc<std::fs::File>,
    mut buf: Vec<u8>,
    offset: u64,
    want: usize,
) -> (std::io::Result<usize>, Vec<u8>) {
    let job = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let r = loop {
            match file.read_at(&mut buf[..want], offset) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        (r, buf)
    });
    match job.await {
        Ok(out) => out,
        Err(e) => (Err(std::io::Error::other(e.to_string())), vec![0u8; CHUNK]),
    }
}

impl Registry {
    /// Like [`Registry::pull`], with every layer the store lacks readable while it
    /// downloads: one entry per layer of `resolved.layers`, a [`Follower`] where the layer is
    /// downloaded (a layer listed twice gets two) and `None` where the store has it, and the
    /// download itself, which must run for the followers to get anywhere.
    pub fn pull_followed<'a>(
        &'a self,
        resolved: &'a Resolved,
        store: &'a content::Store,
    ) -> (
        Vec<Option<Follower>>,
        impl Future<Output = Result<(), RegistryError>> + 'a,
    ) {
        let missing = super::missing_blobs(&resolved.layers, store);
        let mut taps = Vec::new();
        let mut followers: Vec<Option<Follower>> = resolved.layers.iter().map(|_| None).collect();
        for blob in &missing {
            let (tx, rx) = watch::channel(Progress::default());
            for (i, l) in resolved.layers.iter().enumerate() {
                if l.digest() == blob.digest() {
                    followers[i] = Some(Follower {
                        rx: rx.clone(),
                        desc: l.clone(),
                    });
                }
            }
            taps.push(Some(Tap(tx)));
        }
        let download = async move {
            if !store.has(resolved.config_digest()) {
                store.ingest(
                    &resolved.config_bytes[..],
                    Some((resolved.config_digest(), resolved.config_descriptor.size())),
                )?;
            }
            let source = Source {
                reference: &resolved.reference,
                host: &resolved.host,
                repository: &resolved.repository,
                manifest: &resolved.manifest_digest,
            };
            self.pull_missing(&source, missing, taps, store).await
        };
        (followers, download)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn desc_of(bytes: &[u8]) -> Descriptor {
        oci_spec::image::DescriptorBuilder::default()
            .media_type(oci_spec::image::MediaType::ImageLayerGzip)
            .digest(content::sha256_digest(bytes))
            .size(bytes.len() as u64)
            .build()
            .unwrap()
    }

    fn pair(bytes: &[u8]) -> (Tap, Follower) {
        let (tx, rx) = watch::channel(Progress::default());
        (
            Tap(tx),
            Follower {
                rx,
                desc: desc_of(bytes),
            },
        )
    }

    /// A first attempt that wrote `bytes` to a new `path` and stopped there.
    fn first_attempt(tap: &Tap, path: &std::path::Path, bytes: &[u8]) {
        let mut f = std::fs::File::create(path).unwrap();
        tap.file(Some(path.to_path_buf()), 0);
        f.write_all(bytes).unwrap();
        tap.written(bytes.len() as u64);
    }

    /// Writes `bytes` to `path` in three pieces, telling the tap after each, then ends.
    async fn download(tap: &Tap, path: &std::path::Path, bytes: &[u8], end: Result<(), String>) {
        let mut f = std::fs::File::create(path).unwrap();
        tap.file(Some(path.to_path_buf()), 0);
        let mut n = 0;
        for piece in bytes.chunks(bytes.len().div_ceil(3)) {
            f.write_all(piece).unwrap();
            n += piece.len() as u64;
            tap.written(n);
            tokio::task::yield_now().await;
        }
        tap.end(end.map(|()| path.to_path_buf()));
    }

    #[tokio::test]
    async fn a_follower_copies_the_blob_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let (tap, follower) = pair(&blob);
        let mut out = Vec::new();
        let path = dir.path().join("partial");
        let (copied, ()) = tokio::join!(
            follower.copy_to(&mut out),
            download(&tap, &path, &blob, Ok(()))
        );
        assert_eq!(copied.unwrap(), blob.len() as u64);
        assert_eq!(out, blob);
    }

    #[tokio::test]
    async fn a_download_started_again_with_the_same_bytes_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..600_000u32).map(|i| (i % 13) as u8).collect();
        let (tap, follower) = pair(&blob);
        let path = dir.path().join("partial");
        let mut out = Vec::new();
        let again = async {
            // Half of it, then the file is started again from nothing.
            first_attempt(&tap, &path, &blob[..300_000]);
            tokio::task::yield_now().await;
            download(&tap, &path, &blob, Ok(())).await;
        };
        let (copied, ()) = tokio::join!(follower.copy_to(&mut out), again);
        assert_eq!(copied.unwrap(), blob.len() as u64);
        assert_eq!(out, blob);
    }

    #[tokio::test]
    async fn bytes_read_from_a_first_attempt_that_differ_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blob = vec![7u8; 400_000];
        let (tap, follower) = pair(&blob);
        let path = dir.path().join("partial");
        let mut out = Vec::new();
        let again = async {
            first_attempt(&tap, &path, &[9u8; 200_000]);
            // Let the follower read the wrong bytes before the download starts again.
            for _ in 0..10 {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            download(&tap, &path, &blob, Ok(())).await;
        };
        let (copied, ()) = tokio::join!(follower.copy_to(&mut out), again);
        let e = copied.unwrap_err();
        assert!(matches!(e, FollowError::Changed { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_download_ends_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let blob = vec![1u8; 100_000];
        let (tap, follower) = pair(&blob);
        let mut out = Vec::new();
        let path = dir.path().join("p");
        let (copied, ()) = tokio::join!(
            follower.copy_to(&mut out),
            download(&tap, &path, &blob, Err("HTTP 404".into()))
        );
        let e = copied.unwrap_err().to_string();
        assert!(e.contains("HTTP 404"), "{e}");

        let (tap, follower) = pair(&blob);
        drop(tap);
        let e = follower.copy_to(&mut Vec::new()).await.unwrap_err();
        assert!(matches!(e, FollowError::Stopped { .. }), "{e}");
    }

    /// A writer that takes `left` bytes, then says its reader is gone.
    struct Closes {
        left: usize,
        took: Vec<u8>,
    }

    impl AsyncWrite for Closes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.left == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            self.took.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_reader_that_stops_early_still_gets_the_blob_checked() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..500_000u32).map(|i| (i % 7) as u8).collect();
        let (tap, follower) = pair(&blob);
        let mut out = Closes {
            left: 10_000,
            took: Vec::new(),
        };
        let path = dir.path().join("p");
        let (copied, ()) = tokio::join!(
            follower.copy_to(&mut out),
            download(&tap, &path, &blob, Ok(()))
        );
        assert_eq!(copied.unwrap(), blob.len() as u64);
        assert_eq!(out.took, blob[..10_000]);
    }
}

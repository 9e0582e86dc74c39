//! Pushing an image from the content store to a registry: every blob the registry lacks is
//! uploaded (chunked, streamed from disk) or, when it came from another repository of the same
//! registry, mounted from there; then the manifest. Credentials as for pulls.

use std::io::Read;

use futures_util::{StreamExt as _, stream};
use oci_client::{Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageManifest};

use super::{Registry, RegistryError, describe, endpoint_for, normalize, section_for};
use crate::content;

/// Blobs up to this size go up in one request; larger ones stream in chunks.
const SMALL: u64 = 8 << 20;
const CHUNK: usize = 4 << 20;

/// Blobs uploaded at once.
const PARALLEL_UPLOADS: usize = 4;

/// What became of one blob of a push.
enum Sent {
    Present,
    Mounted,
    Uploaded,
}

/// What a push did, for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    pub reference: String,
    pub manifest_digest: String,
    pub uploaded: usize,
    pub mounted: usize,
    pub present: usize,
}

impl Registry {
    /// Pushes the image whose manifest is `manifest` to `reference` (a tag, or a digest that
    /// must be the manifest's).
    pub async fn push(
        &self,
        reference: &str,
        manifest: &Descriptor,
        store: &content::Store,
    ) -> Result<Pushed, RegistryError> {
        let norm = normalize(reference)?;
        let registry = norm.registry().to_string();
        let host = endpoint_for(&registry).to_string();
        let repo = norm.repository().to_string();
        let fail = |message: String| RegistryError::Push {
            reference: norm.whole(),
            message,
        };
        if let Some(d) = norm.digest()
            && d != manifest.digest().as_ref()
        {
            return Err(fail(format!("the image is {}, not {d}", manifest.digest())));
        }
        if crate::image::index::is_index(manifest) {
            return Box::pin(self.push_index(&norm, manifest, store)).await;
        }
        let bytes = store.read_blob(manifest.digest())?;
        let parsed: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("the manifest is not an image manifest: {e}")))?;
        let client = self.client(&host, section_for(&registry))?;
        let target = match norm.tag() {
            Some(t) => Reference::with_tag(host.clone(), repo.clone(), t.to_string()),
            None => {
                Reference::with_digest(host.clone(), repo.clone(), manifest.digest().to_string())
            }
        };
        let creds = self.credentials(&host)?;
        client
            .auth(&target, &creds, RegistryOperation::Push)
            .await
            .map_err(|e| fail(describe(&e)))?;
        let mut out = Pushed {
            reference: norm.whole(),
            manifest_digest: manifest.digest().to_string(),
            ..Pushed::default()
        };
        let mut blobs: Vec<Descriptor> = vec![parsed.config().clone()];
        blobs.extend(parsed.layers().iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        blobs.retain(|b| seen.insert(b.digest().to_string()));
        // Blobs go up a few at a time (the manifest only after all of them).
        let done: Vec<Result<Sent, RegistryError>> = stream::iter(blobs.iter())
            .map(|b| self.push_blob(&client, &target, b, store, &host, &repo, &fail))
            .buffer_unordered(PARALLEL_UPLOADS)
            .collect()
            .await;
        for d in done {
            match d? {
                Sent::Present => out.present += 1,
                Sent::Mounted => out.mounted += 1,
                Sent::Uploaded => out.uploaded += 1,
            }
        }
        let media_type = manifest.media_type().to_string();
        let content_type = media_type
            .parse()
            .map_err(|_| fail(format!("bad media type {media_type}")))?;
        client
            .push_manifest_raw(&target, bytes, content_type)
            .await
            .map_err(|e| fail(format!("uploading the manifest: {}", describe(&e))))?;
        Ok(out)
    }

    /// An index: each of its manifests pushed by digest into the same repository (their
    /// blobs first, as for one image), then the index under the reference.
    async fn push_index(
        &self,
        norm: &Reference,
        index: &Descriptor,
        store: &content::Store,
    ) -> Result<Pushed, RegistryError> {
        let fail = |message: String| RegistryError::Push {
            reference: norm.whole(),
            message,
        };
        let stored =
            crate::image::index::stored(store, index.digest()).map_err(|e| fail(e.to_string()))?;
        let crate::image::index::Stored::Index { manifests, .. } = stored else {
            return Err(fail("not an image index".into()));
        };
        let mut out = Pushed {
            reference: norm.whole(),
            manifest_digest: index.digest().to_string(),
            ..Pushed::default()
        };
        let repo = format!("{}/{}", norm.registry(), norm.repository());
        for m in &manifests {
            let p = self
                .push(&format!("{repo}@{}", m.digest()), m, store)
                .await?;
            out.uploaded += p.uploaded;
            out.mounted += p.mounted;
            out.present += p.present;
        }
        let registry = norm.registry().to_string();
        let host = endpoint_for(&registry).to_string();
        let client = self.client(&host, section_for(&registry))?;
        let target = match norm.tag() {
            Some(t) => Reference::with_tag(host.clone(), norm.repository().to_string(), t.into()),
            None => Reference::with_digest(
                host.clone(),
                norm.repository().to_string(),
                index.digest().to_string(),
            ),
        };
        let creds = self.credentials(&host)?;
        client
            .auth(&target, &creds, RegistryOperation::Push)
            .await
            .map_err(|e| fail(describe(&e)))?;
        let media_type = index.media_type().to_string();
        let content_type = media_type
            .parse()
            .map_err(|_| fail(format!("bad media type {media_type}")))?;
        client
            .push_manifest_raw(&target, store.read_blob(index.digest())?, content_type)
            .await
            .map_err(|e| fail(format!("uploading the index: {}", describe(&e))))?;
        Ok(out)
    }

    /// One blob of a push: already there, mounted from where it came from, or uploaded.
    #[allow(clippy::too_many_arguments)]
    async fn push_blob(
        &self,
        client: &oci_client::Client,
        target: &Reference,
        b: &Descriptor,
        store: &content::Store,
        host: &str,
        repo: &str,
        fail: &dyn Fn(String) -> RegistryError,
    ) -> Result<Sent, RegistryError> {
        let digest = b.digest().to_string();
        if client
            .blob_exists(target, &digest)
            .await
            .map_err(|e| fail(format!("checking blob {digest}: {}", describe(&e))))?
        {
            return Ok(Sent::Present);
        }
        if self.mount_from_origin(client, target, b, store, host).await {
            return Ok(Sent::Mounted);
        }
        if !store.has(b.digest()) {
            return Err(fail(format!("blob {digest} is not in the store")));
        }
        if b.size() <= SMALL {
            let data = store.read_blob(b.digest())?;
            client
                .push_blob(target, data, &digest)
                .await
                .map_err(|e| fail(format!("uploading {digest}: {}", describe(&e))))?;
        } else {
            let file = store.open_blob(b.digest())?;
            let chunks = stream::unfold(Some(file), |state| async move {
                let mut f = state?;
                let mut buf = vec![0u8; CHUNK];
                let res = tokio::task::spawn_blocking(move || {
                    let mut n = 0;
                    while n < buf.len() {
                        match f.read(&mut buf[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    buf.truncate(n);
                    Ok((f, buf))
                })
                .await;
                match res {
                    Ok(Ok((_, buf))) if buf.is_empty() => None,
                    Ok(Ok((f, buf))) => Some((Ok(bytes::Bytes::from(buf)), Some(f))),
                    Ok(Err(e)) => Some((
                        Err(oci_client::errors::OciDistributionError::IoError(e)),
                        None,
                    )),
                    Err(e) => Some((
                        Err(oci_client::errors::OciDistributionError::IoError(
                            std::io::Error::other(e.to_string()),
                        )),
                        None,
                    )),
                }
            });
            client
                .push_blob_stream(target, chunks, &digest, Some(b.size()))
                .await
                .map_err(|e| fail(format!("uploading {digest}: {}", describe(&e))))?;
        }
        // Now it is here too: a later push to another repository can mount it.
        store.write_note(
            "origin",
            b.digest().digest(),
            format!("{host}\n{repo}").as_bytes(),
        );
        Ok(Sent::Uploaded)
    }

    /// Mounts a blob from the repository it was pulled from, when that is on `host` too.
    async fn mount_from_origin(
        &self,
        client: &oci_client::Client,
        target: &Reference,
        b: &Descriptor,
        store: &content::Store,
        host: &str,
    ) -> bool {
        let Some(note) = store
            .read_note("origin", b.digest().digest())
            .and_then(|n| String::from_utf8(n).ok())
        else {
            return false;
        };
        let Some((from_host, from_repo)) = note.split_once('\n') else {
            return false;
        };
        if from_host != host || from_repo == target.repository() {
            return false;
        }
        let source = Reference::with_digest(
            host.to_string(),
            from_repo.to_string(),
            b.digest().to_string(),
        );
        let digest = b.digest().to_string();
        if client.mount_blob(target, &source, &digest).await.is_err() {
            return false;
        }
        client.blob_exists(target, &digest).await.unwrap_or(false)
    }
}

//! `envkit load`: reads an image archive back into the content store — an OCI image-layout
//! tarball (what `envkit save`, `-o type=oci`, `skopeo copy oci-archive:` and `podman save
//! --format oci-archive` write) or a `docker save` tarball (`-o type=docker`, `docker save`,
//! `podman save`), plain or gzip-compressed. The archive is read once, as a stream: every blob
//! goes through the store's verifying ingest (an OCI blob must hash to its file name), and
//! only then are the manifests read and checked. A docker archive's images get an OCI
//! manifest made from its config and layer files.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde_json::json;

use super::ExportError;
use crate::content::{self, BlobInfo, Store};
use crate::image;
use crate::platform::Platform;

/// Small JSON files of an archive are read into memory up to this size each…
const MAX_JSON: u64 = 16 << 20;
/// …and up to this size together.
const MAX_JSON_TOTAL: u64 = 64 << 20;

/// A reader that fails once more than `left` bytes came through: a decompressed archive may
/// not expand past `[worker] max-layer-size`.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the archive expands to more than {} bytes ([worker] max-layer-size)",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// One image found in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// The names the archive gives it (may be empty: the caller names it).
    pub names: Vec<String>,
    pub manifest: Descriptor,
    /// Manifest + config + layers, in bytes.
    pub size: u64,
}

fn bad(message: impl Into<String>) -> ExportError {
    ExportError::Archive(message.into())
}

/// A stored file of the archive: where its bytes went and how it starts.
#[derive(Debug, Clone)]
struct Stored {
    info: BlobInfo,
    magic: [u8; 4],
}

/// Reads an archive from `r` into `store`; returns its images. `limit` bounds what the
/// archive may expand to (decompressed), and each layer's uncompressed size.
pub fn load_archive(
    r: impl Read,
    store: &Store,
    limit: u64,
) -> Result<Vec<LoadedImage>, ExportError> {
    let mut buf = BufReader::with_capacity(256 * 1024, r);
    let head = buf
        .fill_buf()
        .map_err(|e| bad(format!("reading the archive: {e}")))?;
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else {
        Box::new(buf)
    };
    let reader = Capped {
        inner: reader,
        left: limit,
        limit,
    };
    let mut ar = tar::Archive::new(reader);
    let mut json_total = 0u64;
    let mut json_files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut files: BTreeMap<String, Stored> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut blobs = 0usize;
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("an entry's name: {e}")))?
            .into_owned();
        let Some(path) = clean(&raw) else {
            return Err(bad(format!(
                "entry {:?} has `..` or an absolute path",
                raw.display()
            )));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                // Older `docker save` links a repeated layer to its first copy.
                if let Ok(Some(target)) = entry.link_name() {
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&path)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(&target)
                    } else {
                        target.into_owned()
                    };
                    if let Some(t) = clean(&base) {
                        links.insert(path, t);
                    }
                }
                continue;
            }
            _ => continue,
        }
        let size = entry.size();
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = content::parse_digest(&format!("sha256:{hex}"))
                .map_err(|e| bad(format!("{path}: {e}")))?;
            let info = store
                .ingest(&mut entry, Some((&digest, size)))
                .map_err(|e| bad(format!("{path}: {e}")))?;
            blobs += 1;
            files.insert(
                path,
                Stored {
                    info,
                    magic: [0; 4],
                },
            );
        } else if path.ends_with(".json") || path == "oci-layout" || path == "repositories" {
            if size > MAX_JSON {
                return Err(bad(format!(
                    "{path} is {size} bytes: too large for metadata"
                )));
            }
            json_total += size;
            if json_total > MAX_JSON_TOTAL {
                return Err(bad(format!(
                    "{path}: the archive's JSON files together pass {MAX_JSON_TOTAL} bytes: \
                     too much metadata"
                )));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("{path}: {e}")))?;
            if path != "index.json" && path != "manifest.json" {
                // A docker config: stored too, under its own digest.
                let info = store.write_blob(&bytes)?;
                files.insert(
                    path.clone(),
                    Stored {
                        info,
                        magic: [0; 4],
                    },
                );
            }
            json_files.insert(path, bytes);
        } else {
            let mut magic = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                match entry.read(&mut magic[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => return Err(bad(format!("{path}: {e}"))),
                }
            }
            let info = store
                .ingest(
                    std::io::Cursor::new(magic[..got].to_vec()).chain(&mut entry),
                    None,
                )
                .map_err(|e| bad(format!("{path}: {e}")))?;
            files.insert(path, Stored { info, magic });
        }
    }
    let lookup = |path: &str| -> Option<&Stored> {
        let mut p = path.to_string();
        for _ in 0..8 {
            if let Some(s) = files.get(&p) {
                return Some(s);
            }
            p = links.get(&p)?.clone();
        }
        None
    };
    if let Some(index) = json_files.get("index.json")
        && blobs > 0
    {
        return oci_images(index, store);
    }
    if let Some(manifest) = json_files.get("manifest.json") {
        return docker_images(manifest, store, &lookup, limit);
    }
    Err(bad(
        "neither an OCI image layout (index.json + blobs/) nor a docker save archive (manifest.json)",
    ))
}

/// `a/./b` → `a/b`; None for `..` or absolute names.
fn clean(p: &Path) -> Option<String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out.to_string_lossy().into_owned())
}

fn image_size(manifest: &Descriptor, store: &Store) -> Result<u64, ExportError> {
    let bytes = store.read_blob(manifest.digest())?;
    let parsed: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{}: not an image manifest: {e}", manifest.digest())))?;
    let mut size = bytes.len() as u64 + parsed.config().size();
    for d in std::iter::once(parsed.config()).chain(parsed.layers()) {
        if !store.has(d.digest()) {
            return Err(bad(format!(
                "image {} needs blob {}, which the archive does not hold",
                manifest.digest(),
                d.digest()
            )));
        }
    }
    size += parsed.layers().iter().map(|l| l.size()).sum::<u64>();
    Ok(size)
}

fn oci_images(index: &[u8], store: &Store) -> Result<Vec<LoadedImage>, ExportError> {
    let index: ImageIndex =
        serde_json::from_slice(index).map_err(|e| bad(format!("index.json: {e}")))?;
    let host = Platform::host();
    let mut out = Vec::new();
    for m in index.manifests() {
        let annotations = m.annotations().clone().unwrap_or_default();
        let mut names = Vec::new();
        if let Some(n) = annotations.get("io.containerd.image.name") {
            names.push(n.clone());
        } else if let Some(n) = annotations.get("org.opencontainers.image.ref.name")
            && (n.contains('/') || n.contains(':'))
        {
            names.push(n.clone());
        }
        let manifest = match m.media_type() {
            MediaType::ImageIndex => {
                let bytes = store.read_blob(m.digest())?;
                let nested: ImageIndex = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("{}: {e}", m.digest())))?;
                nested
                    .manifests()
                    .iter()
                    .find(|d| {
                        d.platform().as_ref().is_some_and(|p| {
                            p.os().to_string() == host.os
                                && p.architecture().to_string() == host.architecture
                        })
                    })
                    .cloned()
                    .ok_or_else(|| {
                        bad(format!(
                            "{} has no image for {}/{}",
                            m.digest(),
                            host.os,
                            host.architecture
                        ))
                    })?
            }
            MediaType::ImageManifest => m.clone(),
            MediaType::Other(t) if t == "application/vnd.docker.distribution.manifest.v2+json" => {
                m.clone()
            }
            other => {
                return Err(bad(format!(
                    "index.json names {} of type {other}, not an image",
                    m.digest()
                )));
            }
        };
        let size = image_size(&manifest, store)?;
        out.push(LoadedImage {
            names,
            manifest,
            size,
        });
    }
    if out.is_empty() {
        return Err(bad("index.json names no image"));
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The digest of a layer's uncompressed tar (its diff id), reading it back from the store
/// (at most `limit` bytes of it).
fn diff_id(
    store: &Store,
    d: &Descriptor,
    limit: u64,
) -> Result<oci_spec::image::Digest, ExportError> {
    if super::compress::Compression::of(d.media_type())
        == Some(super::compress::Compression::Uncompressed)
    {
        return Ok(d.digest().clone());
    }
    let mut capped = Capped {
        inner: super::compress::decompressed(store, d)?,
        left: limit,
        limit,
    };
    Ok(content::hash_reader(&mut capped, Path::new(&d.digest().to_string()))?.digest)
}

fn docker_images<'a>(
    manifest: &[u8],
    store: &Store,
    lookup: &dyn Fn(&str) -> Option<&'a Stored>,
    limit: u64,
) -> Result<Vec<LoadedImage>, ExportError> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let missing = |p: &str| bad(format!("manifest.json names {p}, which the archive lacks"));
        let config = lookup(&e.config).ok_or_else(|| missing(&e.config))?;
        let config_bytes = store.read_blob(&config.info.digest)?;
        let parsed: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|err| bad(format!("{}: not an image config: {err}", e.config)))?;
        if parsed.rootfs().diff_ids().len() != e.layers.len() {
            return Err(bad(format!(
                "{} lists {} layers but its config {} diff ids",
                e.config,
                e.layers.len(),
                parsed.rootfs().diff_ids().len()
            )));
        }
        let mut layers = Vec::new();
        let mut size = config.info.size;
        for (l, want) in e.layers.iter().zip(parsed.rootfs().diff_ids()) {
            let s = lookup(l).ok_or_else(|| missing(l))?;
            let media_type = if s.magic.starts_with(&[0x1f, 0x8b]) {
                image::MEDIA_TYPE_LAYER_GZIP
            } else if s.magic == [0x28, 0xb5, 0x2f, 0xfd] {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            } else {
                image::MEDIA_TYPE_LAYER_TAR
            };
            let desc = Descriptor::new(
                MediaType::from(media_type),
                s.info.size,
                s.info.digest.clone(),
            );
            let got = diff_id(store, &desc, limit).map_err(|err| bad(format!("{l}: {err}")))?;
            if got.to_string() != *want {
                return Err(bad(format!(
                    "{l}: its contents hash to {got}, but the config {} says {want} \
                     (rootfs.diff_ids): a corrupt or altered archive",
                    e.config
                )));
            }
            size += s.info.size;
            layers.push(json!({
                "mediaType": media_type,
                "digest": desc.digest().to_string(),
                "size": desc.size(),
            }));
        }
        let manifest = image::canonical_json(&json!({
            "schemaVersion": 2,
            "mediaType": image::MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": image::MEDIA_TYPE_CONFIG,
                "digest": config.info.digest.to_string(),
                "size": config.info.size,
            },
            "layers": layers,
        }));
        let info = store.write_blob(&manifest)?;
        size += info.size;
        let desc = Descriptor::new(MediaType::ImageManifest, info.size, info.digest);
        out.push(LoadedImage {
            names: e.repo_tags.unwrap_or_default(),
            manifest: desc,
            size,
        });
    }
    if out.is_empty() {
        return Err(bad("manifest.json names no image"));
    }
    Ok(out)
}

//! `type=docker`: the tarball `docker save` writes and `docker load` / `podman load` read:
//! `manifest.json` (config file, repo tags, layer files), the config as `<hex>.json`, and one
//! `<diff-id hex>/layer.tar` per layer. Layers are written uncompressed (what every loader
//! reads; the default for this type), or gzip-compressed when `compression=gzip` asks for it,
//! which modern loaders also accept.

use std::io::{self, Read, Seek};
use std::path::PathBuf;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use serde_json::json;

use super::compress::{self, Compression, CompressionOpts};
use super::{ExportError, io_err, tar_header, write_to_dest};
use crate::content::Store;

/// One image of a docker archive, read.
struct Part {
    tag: String,
    config_name: String,
    config_bytes: Vec<u8>,
    /// The blobs to write, and their file names in the archive.
    layers: Vec<Descriptor>,
    layer_names: Vec<String>,
}

fn read_part(
    manifest: &Descriptor,
    tag: String,
    store: &Store,
    opts: &CompressionOpts,
) -> Result<Part, ExportError> {
    let bad = |message: String| ExportError::Manifest {
        digest: manifest.digest().to_string(),
        message,
    };
    let parsed: ImageManifest = serde_json::from_slice(&store.read_blob(manifest.digest())?)
        .map_err(|e| bad(format!("not an image manifest: {e}")))?;
    let config_bytes = store.read_blob(parsed.config().digest())?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| bad(format!("not an image config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != parsed.layers().len() {
        return Err(bad(format!(
            "{} layers but {} diff ids",
            parsed.layers().len(),
            diff_ids.len()
        )));
    }
    let layers: Vec<Descriptor> = if opts.kind == Compression::Gzip {
        let m = compress::convert_manifest(manifest, store, opts)?;
        let p: ImageManifest = serde_json::from_slice(&store.read_blob(m.digest())?)
            .map_err(|e| bad(format!("not an image manifest: {e}")))?;
        p.layers().clone()
    } else {
        parsed.layers().clone()
    };
    let layer_names = diff_ids
        .iter()
        .map(|id| format!("{}/layer.tar", id.trim_start_matches("sha256:")))
        .collect();
    Ok(Part {
        tag,
        config_name: format!("{}.json", parsed.config().digest().digest()),
        config_bytes,
        layers,
        layer_names,
    })
}

/// Writes the image whose manifest is `manifest` as a `docker save` tarball named `name`;
/// layers as gzip when `opts` asks for gzip, plain tars otherwise. An index (a multi-platform
/// image) becomes one image per platform in the one archive, each tagged `name-os-arch` as
/// `--platform-tags` names them (a docker archive has no index; BuildKit's docker exporter
/// refuses one).
pub fn docker_tar(
    dest: &std::path::Path,
    manifest: &Descriptor,
    name: &str,
    store: &Store,
    opts: &CompressionOpts,
) -> Result<(), ExportError> {
    let mut images: Vec<(Descriptor, String)> = Vec::new();
    match crate::image::index::stored(store, manifest.digest()) {
        Ok(crate::image::index::Stored::Index { manifests, .. }) => {
            for m in manifests {
                let suffix = match crate::image::index::platform_of(&m) {
                    Some(p) => crate::image::index::tag_suffix(&p),
                    None => format!(
                        "-{}",
                        m.digest().digest().chars().take(12).collect::<String>()
                    ),
                };
                images.push((m, format!("{name}{suffix}")));
            }
        }
        _ => images.push((manifest.clone(), name.to_string())),
    }
    let parts = images
        .into_iter()
        .map(|(m, tag)| read_part(&m, tag, store, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let gzip = opts.kind == Compression::Gzip;
    let index: Vec<serde_json::Value> = parts
        .iter()
        .map(|p| {
            json!({
                "Config": p.config_name,
                "RepoTags": [p.tag],
                "Layers": p.layer_names,
            })
        })
        .collect();
    let index = serde_json::to_vec(&index).map_err(|e| ExportError::Manifest {
        digest: manifest.digest().to_string(),
        message: e.to_string(),
    })?;
    let label = PathBuf::from("<docker tar>");
    write_to_dest(dest, |out| {
        let mut tar = tar::Builder::new(out);
        let mut seen = std::collections::BTreeSet::new();
        for part in &parts {
            for (l, lname) in part.layers.iter().zip(&part.layer_names) {
                if !seen.insert(lname.clone()) {
                    continue; // the same layer twice: one file serves both
                }
                let dir = lname.trim_end_matches("layer.tar");
                let h = tar_header(dir, 0, 0o755, tar::EntryType::Directory);
                tar.append(&h, io::empty()).map_err(io_err(&label))?;
                let h = tar_header(&format!("{dir}VERSION"), 3, 0o644, tar::EntryType::Regular);
                tar.append(&h, &b"1.0"[..]).map_err(io_err(&label))?;
                let plain = Compression::of(l.media_type()) == Some(Compression::Uncompressed);
                if gzip || plain {
                    // Stored as it is: stream the blob.
                    let size = store.size(l.digest())?;
                    let f = store.open_blob(l.digest())?;
                    let h = tar_header(lname, size, 0o644, tar::EntryType::Regular);
                    tar.append(&h, f.take(size)).map_err(io_err(&label))?;
                } else {
                    // A tar entry needs its size first: decompress to a temporary file.
                    let mut tmp = tempfile::tempfile().map_err(io_err(&label))?;
                    let size = compress::write_uncompressed(store, l, &mut tmp)?;
                    tmp.rewind().map_err(io_err(&label))?;
                    let h = tar_header(lname, size, 0o644, tar::EntryType::Regular);
                    tar.append(&h, tmp.take(size)).map_err(io_err(&label))?;
                }
            }
            if !seen.insert(part.config_name.clone()) {
                continue;
            }
            let h = tar_header(
                &part.config_name,
                part.config_bytes.len() as u64,
                0o644,
                tar::EntryType::Regular,
            );
            tar.append(&h, &part.config_bytes[..])
                .map_err(io_err(&label))?;
        }
        let h = tar_header(
            "manifest.json",
            index.len() as u64,
            0o644,
            tar::EntryType::Regular,
        );
        tar.append(&h, &index[..]).map_err(io_err(&label))?;
        let out = tar.into_inner().map_err(io_err(&label))?;
        out.flush().map_err(io_err(&label))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;
    use std::io::Write;

    #[test]
    fn writes_manifest_json_config_and_plain_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hi", &b"hi"[..]).unwrap();
        let layer = b.into_inner().unwrap();
        let raw = store.write_blob(&layer).unwrap();
        // The same content as a gzip "base" layer.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&layer).unwrap();
        let gz = store.write_blob(&gz.finish().unwrap()).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [raw.digest.to_string(), raw.digest.to_string()]},
            "config": {}
        });
        let cfg = store
            .write_blob(&serde_json::to_vec(&config).unwrap())
            .unwrap();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "size": cfg.size, "digest": cfg.digest.to_string()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": gz.size, "digest": gz.digest.to_string()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": raw.size, "digest": raw.digest.to_string()},
            ],
        });
        let mi = store.write_blob(&serde_json::to_vec(&m).unwrap()).unwrap();
        let md = Descriptor::new(MediaType::ImageManifest, mi.size, mi.digest);
        let dest = dir.path().join("d.tar");
        docker_tar(
            &dest,
            &md,
            "docker.io/library/x:1",
            &store,
            &CompressionOpts {
                kind: Compression::Uncompressed,
                ..Default::default()
            },
        )
        .unwrap();
        let mut ar = tar::Archive::new(std::fs::File::open(&dest).unwrap());
        let mut files = std::collections::BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            files.insert(p, v);
        }
        let hex = raw.digest.digest().to_string();
        assert_eq!(files[&format!("{hex}/layer.tar")], layer);
        let index: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(index[0]["RepoTags"][0], "docker.io/library/x:1");
        assert_eq!(index[0]["Layers"].as_array().unwrap().len(), 2);
        assert!(files.contains_key(&format!("{}.json", cfg.digest.digest())));
    }
}

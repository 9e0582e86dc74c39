//! Layer compression when an image leaves the store: `compression=gzip|zstd|uncompressed`,
//! `compression-level`, `force-compression`, with BuildKit's rules: layers envkit made (kept
//! uncompressed in the store) get the asked compression; layers already compressed (a pulled
//! base) keep theirs unless `force-compression=true`. Conversions are remembered per source
//! blob, compression and level, so a second export compresses nothing.

use std::fs::File;
use std::io::{self, Read, Write};

use oci_spec::image::{Descriptor, ImageManifest, MediaType};

use super::{ExportError, io_err, pgzip};
use crate::content::Store;

/// A layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            "uncompressed" => Some(Compression::Uncompressed),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Uncompressed => "uncompressed",
        }
    }

    fn media_type(self) -> MediaType {
        match self {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
            Compression::Uncompressed => MediaType::ImageLayer,
        }
    }

    /// The compression a layer media type stands for (Docker's types included).
    pub fn of(mt: &MediaType) -> Option<Compression> {
        match mt {
            MediaType::ImageLayer => Some(Compression::Uncompressed),
            MediaType::ImageLayerGzip => Some(Compression::Gzip),
            MediaType::ImageLayerZstd => Some(Compression::Zstd),
            other => match other.to_string().as_str() {
                "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
                "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::Uncompressed),
                _ => None,
            },
        }
    }
}

/// What `-o …,compression=…` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompressionOpts {
    pub kind: Compression,
    /// gzip 0–9 (default 6), zstd 1–22 (default 3).
    pub level: Option<i32>,
    /// Recompress layers that are already compressed some other way.
    pub force: bool,
}

impl CompressionOpts {
    fn level(&self) -> i32 {
        match (self.kind, self.level) {
            (_, Some(l)) => l,
            (Compression::Gzip, None) => 6,
            (Compression::Zstd, None) => 3,
            (Compression::Uncompressed, None) => 0,
        }
    }

    /// Checks the level against the compression.
    pub fn validate(&self) -> Result<(), String> {
        let ok = match (self.kind, self.level) {
            (_, None) => true,
            (Compression::Gzip, Some(l)) => (0..=9).contains(&l),
            (Compression::Zstd, Some(l)) => (1..=22).contains(&l),
            (Compression::Uncompressed, Some(_)) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "compression-level {:?} does not fit {} (gzip 0-9, zstd 1-22, none for uncompressed)",
                self.level,
                self.kind.name()
            ))
        }
    }
}

/// Threads for one compression: the cores, at most 8.
pub(super) fn cores() -> usize {
    crate::cores::cores().min(8)
}

/// A reader of a blob's uncompressed bytes.
pub(super) fn decompressed(store: &Store, d: &Descriptor) -> Result<Box<dyn Read>, ExportError> {
    let f = store.open_blob(d.digest())?;
    let f = io::BufReader::with_capacity(1 << 20, f);
    Ok(match Compression::of(d.media_type()) {
        Some(Compression::Uncompressed) => Box::new(f),
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Some(Compression::Zstd) => Box::new(
            zstd::stream::Decoder::with_buffer(f).map_err(io_err(&store.path(d.digest())?))?,
        ),
        None => {
            return Err(ExportError::Manifest {
                digest: d.digest().to_string(),
                message: format!("layer of unknown media type {}", d.media_type()),
            });
        }
    })
}

/// Stores `d`'s content compressed as `opts` asks; the new descriptor (remembered per blob).
pub fn convert(
    store: &Store,
    d: &Descriptor,
    opts: &CompressionOpts,
) -> Result<Descriptor, ExportError> {
    let note = format!(
        "{}-{}-{}",
        d.digest().digest(),
        opts.kind.name(),
        opts.level()
    );
    if let Some(done) = store
        .read_note("layers", &note)
        .and_then(|b| serde_json::from_slice::<Descriptor>(&b).ok())
        .filter(|done| store.has(done.digest()))
    {
        return Ok(done);
    }
    let label = store.path(d.digest())?;
    let input = decompressed(store, d)?;
    let mut writer = store.writer()?;
    match opts.kind {
        Compression::Gzip => {
            pgzip::compress(
                input,
                &mut writer,
                flate2::Compression::new(opts.level() as u32),
                cores(),
                |_| {},
            )
            .map_err(io_err(&label))?;
        }
        Compression::Zstd => {
            let mut enc =
                zstd::stream::Encoder::new(&mut writer, opts.level()).map_err(io_err(&label))?;
            enc.multithread(cores() as u32).map_err(io_err(&label))?;
            let mut input = input;
            io::copy(&mut input, &mut enc).map_err(io_err(&label))?;
            enc.finish().map_err(io_err(&label))?;
        }
        Compression::Uncompressed => {
            let mut input = input;
            io::copy(&mut input, &mut writer).map_err(io_err(&label))?;
        }
    }
    writer.flush().map_err(io_err(&label))?;
    let info = writer.commit(None)?;
    let out = Descriptor::new(opts.kind.media_type(), info.size, info.digest);
    if let Ok(bytes) = serde_json::to_vec(&out) {
        store.write_note("layers", &note, &bytes);
    }
    Ok(out)
}

/// The manifest an image is exported with, its layers compressed as `opts` asks (see the
/// module's rules). A manifest with nothing to change is returned as it is.
pub fn convert_manifest(
    manifest: &Descriptor,
    store: &Store,
    opts: &CompressionOpts,
) -> Result<Descriptor, ExportError> {
    if crate::image::index::is_index(manifest) {
        return convert_index(manifest, store, opts);
    }
    let bytes = store.read_blob(manifest.digest())?;
    let mut parsed: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| ExportError::Manifest {
            digest: manifest.digest().to_string(),
            message: format!("not an image manifest: {e}"),
        })?;
    let mut layers = parsed.layers().clone();
    let todo: Vec<usize> = (0..layers.len())
        .filter(|&i| {
            let have = Compression::of(layers[i].media_type());
            let mine = have == Some(Compression::Uncompressed);
            let redo = have != Some(opts.kind) && (mine || opts.force);
            // A level asked for is a reason to redo even a layer of the same kind, when forced.
            let relevel = opts.force && opts.level.is_some() && have == Some(opts.kind);
            redo || (relevel && opts.kind != Compression::Uncompressed)
        })
        .collect();
    if todo.is_empty() {
        return Ok(manifest.clone());
    }
    // Layers in parallel, as many at once as there are cores (each one also compresses on
    // all cores: a lone large layer still uses the whole machine).
    let cores = crate::cores::cores();
    for group in todo.chunks(cores) {
        let done: Vec<(usize, Result<Descriptor, ExportError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|&i| {
                    let l = &layers[i];
                    (i, scope.spawn(move || convert(store, l, opts)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    let r = h.join().unwrap_or_else(|_| {
                        Err(ExportError::Manifest {
                            digest: manifest.digest().to_string(),
                            message: "a compression thread panicked".into(),
                        })
                    });
                    (i, r)
                })
                .collect()
        });
        for (i, r) in done {
            layers[i] = r?;
        }
    }
    parsed.set_layers(layers);
    let out = serde_json::to_vec(&parsed).map_err(|e| ExportError::Manifest {
        digest: manifest.digest().to_string(),
        message: e.to_string(),
    })?;
    let info = store.write_blob(&out)?;
    let mut d = manifest.clone();
    d.set_size(info.size);
    d.set_digest(info.digest);
    Ok(d)
}

/// [`convert_manifest`] for an index: each of its manifests converted, and an index over
/// them in the same order with the same platforms (the same index when none changed).
fn convert_index(
    index: &Descriptor,
    store: &Store,
    opts: &CompressionOpts,
) -> Result<Descriptor, ExportError> {
    let bad = |message: String| ExportError::Manifest {
        digest: index.digest().to_string(),
        message,
    };
    let stored =
        crate::image::index::stored(store, index.digest()).map_err(|e| bad(e.to_string()))?;
    let crate::image::index::Stored::Index { manifests, .. } = stored else {
        return Err(bad("not an image index".into()));
    };
    let mut converted = Vec::with_capacity(manifests.len());
    for m in &manifests {
        converted.push(convert_manifest(m, store, opts)?);
    }
    if converted == manifests {
        return Ok(index.clone());
    }
    let made = crate::image::index::index_of(&converted).map_err(|e| bad(e.to_string()))?;
    store.write_blob(&made.bytes)?;
    Ok(made.descriptor)
}

/// Copies a layer's uncompressed tar into `out` (for formats that want plain tars).
pub fn write_uncompressed(
    store: &Store,
    d: &Descriptor,
    out: &mut File,
) -> Result<u64, ExportError> {
    let mut input = decompressed(store, d)?;
    io::copy(&mut input, out).map_err(io_err(&store.path(d.digest())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_store() -> (tempfile::TempDir, Store, Descriptor, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let data = "some layer content\n".repeat(1000);
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", data.as_bytes()).unwrap();
        let tar_bytes = b.into_inner().unwrap();
        let info = store.write_blob(&tar_bytes).unwrap();
        let d = Descriptor::new(MediaType::ImageLayer, info.size, info.digest);
        (dir, store, d, tar_bytes)
    }

    fn manifest_with(store: &Store, layers: &[Descriptor]) -> Descriptor {
        let config = store.write_blob(b"{}").unwrap();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "size": config.size, "digest": config.digest.to_string()},
            "layers": layers,
        });
        let info = store.write_blob(&serde_json::to_vec(&m).unwrap()).unwrap();
        Descriptor::new(MediaType::ImageManifest, info.size, info.digest)
    }

    fn layers_of(store: &Store, m: &Descriptor) -> Vec<Descriptor> {
        let p: ImageManifest =
            serde_json::from_slice(&store.read_blob(m.digest()).unwrap()).unwrap();
        p.layers().clone()
    }

    fn content(store: &Store, d: &Descriptor) -> Vec<u8> {
        let mut v = Vec::new();
        decompressed(store, d).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn own_layers_get_the_asked_compression_and_base_layers_keep_theirs() {
        let (_d, store, raw, tar_bytes) = layer_store();
        let m = manifest_with(&store, std::slice::from_ref(&raw));
        for kind in [Compression::Gzip, Compression::Zstd] {
            let opts = CompressionOpts {
                kind,
                ..Default::default()
            };
            let out = convert_manifest(&m, &store, &opts).unwrap();
            let l = &layers_of(&store, &out)[0];
            assert_eq!(l.media_type(), &kind.media_type());
            assert_eq!(content(&store, l), tar_bytes);
            // Remembered: the same descriptor again.
            assert_eq!(convert_manifest(&m, &store, &opts).unwrap(), out);
            // A compressed layer is kept as it is unless forced.
            let other = if kind == Compression::Gzip {
                Compression::Zstd
            } else {
                Compression::Gzip
            };
            let keep = CompressionOpts {
                kind: other,
                ..Default::default()
            };
            assert_eq!(convert_manifest(&out, &store, &keep).unwrap(), out);
            let forced = CompressionOpts {
                kind: other,
                force: true,
                ..Default::default()
            };
            let re = convert_manifest(&out, &store, &forced).unwrap();
            let l = &layers_of(&store, &re)[0];
            assert_eq!(l.media_type(), &other.media_type());
            assert_eq!(content(&store, l), tar_bytes);
        }
        let none = CompressionOpts {
            kind: Compression::Uncompressed,
            ..Default::default()
        };
        assert_eq!(convert_manifest(&m, &store, &none).unwrap(), m);
    }

    #[test]
    fn levels_are_checked() {
        let bad = CompressionOpts {
            kind: Compression::Gzip,
            level: Some(12),
            force: false,
        };
        assert!(bad.validate().is_err());
        let ok = CompressionOpts {
            kind: Compression::Zstd,
            level: Some(19),
            force: false,
        };
        assert!(ok.validate().is_ok());
    }
}

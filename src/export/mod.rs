//! Exporters: turn a layer tar into a stored gzip layer, and write an image out.
//!
//! * [`layer_from_tar`]: an uncompressed layer tar → gzip blob in the content store, with its
//!   diff_id (sha256 of the tar) computed in the same pass; compressed on all cores
//!   (`pgzip.rs`).
//! * [`oci_tar`]: an OCI image-layout tarball (`oci-layout`, `index.json`, `blobs/sha256/…`)
//!   that `podman load`, `skopeo copy oci-archive:` and `ctr import` read. Written to a
//!   temporary file beside the destination, then renamed; `-` streams to stdout.
//! * [`parse_output`]: the `-o type=…,dest=…` syntax of `buildctl`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageManifest, MediaType};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::content::{self, ContentError, Store};
use crate::image::{self, NewLayer};

mod compress;
pub mod containerd;
mod docker;
pub mod exporter;
pub mod load;
mod pgzip;

pub use compress::{Compression, CompressionOpts, convert, convert_manifest};
pub use docker::docker_tar;

/// Errors of the exporters.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("manifest {digest}: {message}")]
    Manifest { digest: String, message: String },
    #[error("invalid --output {spec:?}: {message}")]
    Output { spec: String, message: String },
    #[error("image archive: {0}")]
    Archive(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// What an exporter cannot do, or a failure it reports, said plainly.
    #[error("{0}")]
    Refused(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Gzip-compresses an uncompressed layer tar into the store.
///
/// Returns the layer with descriptor = the gzip blob (`application/vnd.oci.image.layer.v1.tar+gzip`)
/// and `diff_id` = sha256 of the tar. The gzip header carries no name and no mtime, so equal tars
/// give equal blobs.
pub fn layer_from_tar(tar_path: &Path, store: &Store) -> Result<NewLayer, ExportError> {
    let input = File::open(tar_path).map_err(io_err(tar_path))?;
    let mut writer = store.writer()?;
    let mut raw = Sha256::new();
    let threads = compress::cores();
    pgzip::compress(
        io::BufReader::with_capacity(256 * 1024, input),
        &mut writer,
        flate2::Compression::default(),
        threads,
        |chunk| raw.update(chunk),
    )
    .map_err(io_err(tar_path))?;
    let info = writer.commit(None)?;
    let diff_id = content::parse_digest(&format!("sha256:{}", hex::encode(raw.finalize())))?;
    Ok(NewLayer {
        descriptor: Descriptor::new(MediaType::ImageLayerGzip, info.size, info.digest),
        diff_id,
        created_by: None,
    })
}

/// Stores an uncompressed layer tar as it is (`application/vnd.oci.image.layer.v1.tar`):
/// what envkit's own image store keeps, so a build spends no time compressing. Its digest is
/// its diff_id. [`gzip_manifest`] makes the compressed form when an image leaves the store.
pub fn raw_layer_from_tar(tar_path: &Path, store: &Store) -> Result<NewLayer, ExportError> {
    let input = File::open(tar_path).map_err(io_err(tar_path))?;
    let info = store.ingest(io::BufReader::with_capacity(1 << 20, input), None)?;
    Ok(raw_layer(info))
}

/// The layer of an uncompressed layer tar already in the store (see [`raw_layer_from_tar`]).
pub fn raw_layer(info: content::BlobInfo) -> NewLayer {
    NewLayer {
        descriptor: Descriptor::new(MediaType::ImageLayer, info.size, info.digest.clone()),
        diff_id: info.digest,
        created_by: None,
    }
}

/// The manifest an image is exported with by default: layers kept uncompressed in the store
/// are gzip-compressed (on all cores the first time, remembered after).
pub fn gzip_manifest(manifest: &Descriptor, store: &Store) -> Result<Descriptor, ExportError> {
    compress::convert_manifest(manifest, store, &CompressionOpts::default())
}

/// Where `-o` sends the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `type=oci,dest=FILE[,name=REF]`: an OCI image-layout tarball; `dest=-` is stdout.
    Oci {
        dest: PathBuf,
        name: Option<String>,
        compression: CompressionOpts,
    },
    /// `type=docker,dest=FILE[,name=REF]`: a `docker save` tarball (`docker load`,
    /// `podman load`).
    Docker {
        dest: PathBuf,
        name: Option<String>,
        compression: CompressionOpts,
    },
    /// `type=tar,dest=FILE`: the image's root filesystem as one tar.
    Tar { dest: PathBuf },
    /// `type=local,dest=DIR`: the root filesystem written into a directory, owned by the user.
    Local { dest: PathBuf },
    /// `type=containerd[,name=REF][,address=SOCK][,namespace=NS][,unpack=true]` (or
    /// `type=image,store=containerd,…`): imported into a containerd over its socket.
    Containerd {
        name: Option<String>,
        target: containerd::Target,
        compression: CompressionOpts,
    },
    /// `type=image[,name=REF][,push=true]`: envkit's own image store (the default); with
    /// `push=true` also pushed to the registry `name` names, layers compressed as asked.
    Image {
        name: Option<String>,
        push: bool,
        compression: CompressionOpts,
    },
}

impl Output {
    /// How `-o` names it (`type=oci`, …), for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Output::Oci { .. } => "type=oci",
            Output::Docker { .. } => "type=docker",
            Output::Tar { .. } => "type=tar",
            Output::Local { .. } => "type=local",
            Output::Containerd { .. } => "type=containerd",
            Output::Image { push: true, .. } => "type=image,push=true",
            Output::Image { .. } => "type=image",
        }
    }
}

/// Splits `a=b,c="d,e"` like a CSV record (double quotes group, `""` is a quote).
fn split_csv(s: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Parses one `-o` / `--output` value the way `buildctl` does:
/// `type=oci|docker,dest=FILE[,name=…][,compression=…][,compression-level=N]
/// [,force-compression=true]`, `type=tar|local,dest=…` or `type=image[,name=…]`.
pub fn parse_output(spec: &str) -> Result<Output, ExportError> {
    let err = |message: String| ExportError::Output {
        spec: spec.to_string(),
        message,
    };
    let mut typ = None;
    let mut dest = None;
    let mut name = None;
    let mut compression = CompressionOpts::default();
    let mut compression_set = false;
    let mut push = false;
    let mut address = None;
    let mut namespace = None;
    let mut unpack = false;
    let mut snapshotter = None;
    let mut store = None;
    let truth = |k: &str, v: &str| match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(err(format!("{k} {v:?} (want true or false)"))),
    };
    for field in split_csv(spec) {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let Some((k, v)) = field.split_once('=') else {
            return Err(err(format!("{field:?} is not key=value")));
        };
        let v = v.to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "type" => typ = Some(v),
            "dest" => dest = Some(v),
            "name" => name = Some(v),
            "compression" => {
                compression.kind = Compression::parse(&v).ok_or_else(|| {
                    err(format!(
                        "compression {v:?} (known: gzip, zstd, uncompressed)"
                    ))
                })?;
                compression_set = true;
            }
            "compression-level" => {
                compression.level = Some(
                    v.parse()
                        .map_err(|_| err(format!("compression-level {v:?} is not a number")))?,
                );
                compression_set = true;
            }
            "push" => push = truth("push", &v)?,
            "address" => address = Some(v),
            "namespace" => namespace = Some(v),
            "unpack" => unpack = truth("unpack", &v)?,
            "snapshotter" => snapshotter = Some(v),
            "store" => store = Some(v),
            "force-compression" => {
                compression.force = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(err(format!("force-compression {v:?} (want true or false)"))),
                };
                compression_set = true;
            }
            "output" | "out" | "path" | "file" => {
                return Err(err(format!("unknown key {k:?} (did you mean dest=?)")));
            }
            other => {
                return Err(err(format!(
                    "unknown key {other:?} (known: type, dest, name, push, compression, \
                     compression-level, force-compression, store, address, namespace, unpack, \
                     snapshotter)"
                )));
            }
        }
    }
    compression.validate().map_err(err)?;
    let Some(typ) = typ else {
        return Err(err("missing type= (e.g. type=oci,dest=image.tar)".into()));
    };
    let name = name.filter(|n| !n.is_empty());
    let dest = dest.filter(|d| !d.is_empty()).map(PathBuf::from);
    let containerd_keys =
        address.is_some() || namespace.is_some() || unpack || snapshotter.is_some();
    let to_containerd =
        typ == "containerd" || (typ == "image" && store.as_deref() == Some("containerd"));
    if containerd_keys && !to_containerd {
        return Err(err(format!(
            "address=, namespace=, unpack= and snapshotter= are for type=containerd, not type={typ}"
        )));
    }
    if let Some(st) = &store
        && typ != "image"
    {
        return Err(err(format!("store={st} is for type=image, not type={typ}")));
    }
    if let Some(st) = store.as_deref()
        && !matches!(st, "containerd" | "true" | "false" | "1" | "0")
    {
        return Err(err(format!(
            "store={st:?} (want containerd, or true/false for envkit's own store)"
        )));
    }
    if to_containerd {
        if push {
            return Err(err(
                "push=true cannot go with store=containerd: push with type=image or `envkit push`"
                    .into(),
            ));
        }
        if dest.is_some() {
            return Err(err(
                "type=containerd takes no dest= (it writes to address=)".into(),
            ));
        }
        let unpack = match (unpack, snapshotter) {
            (_, Some(sn)) => Some(sn),
            (true, None) => Some("overlayfs".to_string()),
            (false, None) => None,
        };
        return Ok(Output::Containerd {
            name: name.filter(|n| !n.is_empty()),
            target: containerd::Target::new(address, namespace, unpack),
            compression,
        });
    }
    if push && typ != "image" {
        return Err(err(format!("push=true is for type=image, not type={typ}")));
    }
    let need_dest = |what: &str| {
        dest.clone()
            .ok_or_else(|| err(format!("type={typ} needs dest={what}")))
    };
    let no_compression = |t: &str| {
        if compression_set {
            Err(err(format!("type={t} takes no compression options")))
        } else {
            Ok(())
        }
    };
    match typ.as_str() {
        "oci" => Ok(Output::Oci {
            dest: need_dest("FILE (or dest=- for stdout)")?,
            name,
            compression,
        }),
        "docker" => {
            if compression.kind == Compression::Zstd {
                return Err(err(
                    "type=docker cannot carry zstd layers (docker load reads gzip or plain tars)"
                        .into(),
                ));
            }
            // docker save writes plain layer tars; gzip only when asked for.
            let mut compression = compression;
            if !compression_set {
                compression.kind = Compression::Uncompressed;
            }
            Ok(Output::Docker {
                dest: need_dest("FILE (or dest=- for stdout)")?,
                name,
                compression,
            })
        }
        "tar" => {
            no_compression("tar")?;
            Ok(Output::Tar {
                dest: need_dest("FILE (or dest=- for stdout)")?,
            })
        }
        "local" => {
            no_compression("local")?;
            let dest = need_dest("DIR")?;
            if dest == Path::new("-") {
                return Err(err(
                    "type=local writes a directory: dest=- is for tar outputs".into(),
                ));
            }
            Ok(Output::Local { dest })
        }
        "image" => {
            if dest.is_some() {
                return Err(err(
                    "type=image takes no dest= (use type=oci for a file)".into()
                ));
            }
            if !push {
                no_compression(
                    "image without push=true (envkit's store keeps its own layers uncompressed)",
                )?;
            }
            if push && name.is_none() {
                return Err(err("push=true needs name=REF (where to push)".into()));
            }
            Ok(Output::Image {
                name,
                push,
                compression,
            })
        }
        // BuildKit's shorthand for type=image,push=true.
        "registry" => {
            if dest.is_some() {
                return Err(err("type=registry takes no dest=".into()));
            }
            let Some(name) = name else {
                return Err(err("type=registry needs name=REF (where to push)".into()));
            };
            Ok(Output::Image {
                name: Some(name),
                push: true,
                compression,
            })
        }
        other => Err(err(format!(
            "unknown output type {other:?} (supported: image, registry, oci, docker, tar, local, \
             containerd)"
        ))),
    }
}

/// The tag part of a reference (`docker.io/library/x:1.0` → `1.0`), `latest` if none.
fn tag_of(name: &str) -> String {
    let without_digest = name.split('@').next().unwrap_or(name);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag.to_string(),
        _ => "latest".to_string(),
    }
}

/// The `index.json` of a one-image layout named `name`.
///
/// `io.containerd.image.name` carries the full reference (what `ctr import` and
/// `podman load` use); `org.opencontainers.image.ref.name` carries the tag, as the OCI layout
/// spec and BuildKit's OCI exporter write it.
pub fn layout_index(manifest: &Descriptor, name: &str) -> Vec<u8> {
    layout_index_of(&[(manifest.clone(), name.to_string())])
}

/// The `index.json` of a layout holding several images, each with its name.
pub fn layout_index_of(images: &[(Descriptor, String)]) -> Vec<u8> {
    let mut entries = Vec::with_capacity(images.len());
    for (manifest, name) in images {
        let mut entry = json!({
            "mediaType": manifest.media_type().to_string(),
            "digest": manifest.digest().to_string(),
            "size": manifest.size(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag_of(name),
            },
        });
        if let Some(p) = manifest.platform()
            && let Some(obj) = entry.as_object_mut()
        {
            let mut platform =
                json!({"architecture": p.architecture().to_string(), "os": p.os().to_string()});
            if let Some(v) = p.variant() {
                platform["variant"] = json!(v);
            }
            obj.insert("platform".into(), platform);
        }
        entries.push(entry);
    }
    image::canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": image::MEDIA_TYPE_INDEX,
        "manifests": entries,
    }))
}

fn tar_header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // Paths here are short ASCII (`blobs/sha256/<64 hex>`), always valid in a ustar header.
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

fn write_layout<W: Write>(
    out: W,
    images: &[(Descriptor, String)],
    store: &Store,
) -> Result<W, ExportError> {
    let mut blobs: Vec<Digest> = Vec::new();
    let mut manifests: Vec<Descriptor> = Vec::new();
    for (top, _) in images {
        if crate::image::index::is_index(top) {
            let stored = crate::image::index::stored(store, top.digest()).map_err(|e| {
                ExportError::Manifest {
                    digest: top.digest().to_string(),
                    message: e.to_string(),
                }
            })?;
            blobs.push(top.digest().clone());
            if let crate::image::index::Stored::Index { manifests: m, .. } = stored {
                manifests.extend(m);
            }
        } else {
            manifests.push(top.clone());
        }
    }
    for manifest in &manifests {
        let manifest_bytes = store.read_blob(manifest.digest())?;
        let parsed: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| ExportError::Manifest {
                digest: manifest.digest().to_string(),
                message: format!("not an image manifest: {e}"),
            })?;
        let mut mine = vec![manifest.digest().clone(), parsed.config().digest().clone()];
        mine.extend(parsed.layers().iter().map(|l| l.digest().clone()));
        for d in &mine {
            if !store.has(d) {
                return Err(ExportError::Manifest {
                    digest: manifest.digest().to_string(),
                    message: format!("blob {d} is not in the content store"),
                });
            }
        }
        blobs.extend(mine);
    }
    let mut seen = BTreeSet::new();
    blobs.retain(|d| seen.insert(d.to_string()));

    let label = PathBuf::from("<oci tar>");
    let mut tar = tar::Builder::new(out);
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let index = layout_index_of(images);
    for dir in ["blobs/", "blobs/sha256/"] {
        let h = tar_header(dir, 0, 0o755, tar::EntryType::Directory);
        tar.append(&h, io::empty()).map_err(io_err(&label))?;
    }
    for (path, bytes) in [("oci-layout", &layout[..]), ("index.json", &index[..])] {
        let h = tar_header(path, bytes.len() as u64, 0o644, tar::EntryType::Regular);
        tar.append(&h, bytes).map_err(io_err(&label))?;
    }
    for d in &blobs {
        let size = store.size(d)?;
        let f = store.open_blob(d)?;
        let path = format!("blobs/sha256/{}", d.digest());
        let h = tar_header(&path, size, 0o644, tar::EntryType::Regular);
        tar.append(&h, f.take(size)).map_err(io_err(&label))?;
    }
    tar.into_inner().map_err(io_err(&label))
}

/// Writes an OCI image-layout tarball of the image whose manifest is `manifest`, naming it
/// `name` (a full reference such as `docker.io/library/app:latest`). `dest` = `-` writes to
/// stdout; otherwise the tar is written to a temporary file in `dest`'s directory and renamed.
pub fn oci_tar(
    dest: &Path,
    manifest: &Descriptor,
    name: &str,
    store: &Store,
) -> Result<(), ExportError> {
    oci_tar_of(dest, &[(manifest.clone(), name.to_string())], store)
}

/// An OCI image-layout tarball of several images (`envkit save`): blobs they share are written
/// once, `index.json` names each.
pub fn oci_tar_of(
    dest: &Path,
    images: &[(Descriptor, String)],
    store: &Store,
) -> Result<(), ExportError> {
    write_to_dest(dest, |out| {
        write_layout(out, images, store)?;
        Ok(())
    })
}

/// Runs `write` on `dest`: stdout for `-`; otherwise a temporary file in `dest`'s directory,
/// synced and renamed into place only when everything was written (a failure leaves nothing).
pub fn write_to_dest(
    dest: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    if dest == Path::new("-") {
        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        write(&mut out)?;
        out.flush().map_err(io_err(dest))?;
        return Ok(());
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".envkit-export-")
        .tempfile_in(&dir)
        .map_err(io_err(&dir))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out.into_inner().map_err(|e| io_err(dest)(e.into_error()))?;
    file.sync_all().map_err(io_err(dest))?;
    tmp_path.persist(dest).map_err(|e| ExportError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outputs() {
        assert_eq!(
            parse_output("type=oci,dest=/tmp/x.tar").unwrap(),
            Output::Oci {
                dest: "/tmp/x.tar".into(),
                name: None,
                compression: CompressionOpts::default(),
            }
        );
        assert_eq!(
            parse_output("type=oci,dest=-,name=docker.io/library/a:1").unwrap(),
            Output::Oci {
                dest: "-".into(),
                name: Some("docker.io/library/a:1".into()),
                compression: CompressionOpts::default(),
            }
        );
        assert_eq!(
            parse_output("type=image,name=app").unwrap(),
            Output::Image {
                name: Some("app".into()),
                push: false,
                compression: CompressionOpts::default(),
            }
        );
        assert_eq!(
            parse_output(r#"type=oci,"dest=/tmp/a,b.tar""#).unwrap(),
            Output::Oci {
                dest: "/tmp/a,b.tar".into(),
                name: None,
                compression: CompressionOpts::default(),
            }
        );
        assert_eq!(
            parse_output("type=docker,dest=d.tar,compression=uncompressed").unwrap(),
            Output::Docker {
                dest: "d.tar".into(),
                name: None,
                compression: CompressionOpts {
                    kind: Compression::Uncompressed,
                    level: None,
                    force: false,
                },
            }
        );
        assert_eq!(
            parse_output(
                "type=oci,dest=o.tar,compression=zstd,compression-level=9,force-compression=true"
            )
            .unwrap(),
            Output::Oci {
                dest: "o.tar".into(),
                name: None,
                compression: CompressionOpts {
                    kind: Compression::Zstd,
                    level: Some(9),
                    force: true,
                },
            }
        );
        assert_eq!(
            parse_output("type=tar,dest=-").unwrap(),
            Output::Tar { dest: "-".into() }
        );
        assert_eq!(
            parse_output("type=local,dest=out").unwrap(),
            Output::Local { dest: "out".into() }
        );
        assert_eq!(
            parse_output("type=registry,name=r/a:1,compression=zstd").unwrap(),
            Output::Image {
                name: Some("r/a:1".into()),
                push: true,
                compression: CompressionOpts {
                    kind: Compression::Zstd,
                    ..CompressionOpts::default()
                },
            }
        );
        let c =
            parse_output("type=containerd,name=a,address=unix:///s.sock,namespace=n,unpack=true")
                .unwrap();
        assert_eq!(
            c,
            Output::Containerd {
                name: Some("a".into()),
                target: containerd::Target {
                    address: "/s.sock".into(),
                    namespace: "n".into(),
                    unpack: Some("overlayfs".into()),
                },
                compression: CompressionOpts::default(),
            }
        );
        let Output::Containerd { target, .. } =
            parse_output("type=image,store=containerd,address=/x,snapshotter=native").unwrap()
        else {
            panic!("store=containerd is a containerd output");
        };
        assert_eq!(target.unpack.as_deref(), Some("native"));
    }

    #[test]
    fn output_errors_are_helpful() {
        let msg = |s: &str| parse_output(s).unwrap_err().to_string();
        assert!(msg("type=oci,output=/x").contains("did you mean dest="));
        assert!(msg("type=oci").contains("needs dest="));
        assert!(msg("type=foo,dest=x").contains("unknown output type \"foo\""));
        assert!(msg("type=registry").contains("needs name="));
        assert!(msg("type=oci,dest=x,namespace=a").contains("for type=containerd"));
        assert!(msg("type=containerd,dest=x").contains("no dest="));
        assert!(msg("type=image,store=containerd,name=a,push=true").contains("push=true"));
        assert!(msg("type=image,store=bogus").contains("want containerd"));
        assert!(msg("type=oci,dest=x,store=containerd").contains("for type=image"));
        assert!(msg("type=docker,dest=x,compression=zstd").contains("zstd"));
        assert!(msg("type=oci,dest=x,compression=lz4").contains("known: gzip"));
        assert!(msg("type=oci,dest=x,compression-level=12").contains("gzip 0-9"));
        assert!(msg("type=local,dest=-").contains("directory"));
        assert!(msg("type=tar,dest=x,compression=gzip").contains("no compression"));
        assert!(msg("type=image,push=true").contains("needs name="));
        assert!(msg("type=oci,dest=x,push=true").contains("for type=image"));
        assert!(msg("dest=x").contains("missing type="));
        assert!(msg("type=oci,dest=x,bogus=1").contains("unknown key \"bogus\""));
        assert!(msg("type=oci,dest").contains("not key=value"));
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of("docker.io/library/a:1.0"), "1.0");
        assert_eq!(tag_of("127.0.0.1:5000/a"), "latest");
        assert_eq!(tag_of("a@sha256:abc"), "latest");
    }

    #[test]
    fn layer_from_tar_is_deterministic_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let tar_path = dir.path().join("layer.tar");
        let mut b = tar::Builder::new(Vec::new());
        let data = b"hello\n";
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "opt/hello.txt", &data[..]).unwrap();
        let tar_bytes = b.into_inner().unwrap();
        std::fs::write(&tar_path, &tar_bytes).unwrap();

        let a = layer_from_tar(&tar_path, &store).unwrap();
        let again = layer_from_tar(&tar_path, &store).unwrap();
        assert_eq!(a, again);
        assert_eq!(a.diff_id, content::sha256_digest(&tar_bytes));
        assert_eq!(a.descriptor.media_type(), &MediaType::ImageLayerGzip);
        let gz = store.read_blob(a.descriptor.digest()).unwrap();
        assert_eq!(gz.len() as u64, a.descriptor.size());
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, tar_bytes);
    }

    #[test]
    fn raw_layers_are_stored_as_they_are_and_exported_gzipped_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let tar_path = dir.path().join("layer.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "x", &b"abc"[..]).unwrap();
        let tar_bytes = b.into_inner().unwrap();
        std::fs::write(&tar_path, &tar_bytes).unwrap();
        let raw = raw_layer_from_tar(&tar_path, &store).unwrap();
        assert_eq!(raw.descriptor.media_type(), &MediaType::ImageLayer);
        assert_eq!(raw.descriptor.digest(), &raw.diff_id);
        assert_eq!(store.read_blob(&raw.diff_id).unwrap(), tar_bytes);

        let config = store.write_blob(b"{}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "size": config.size, "digest": config.digest.to_string()},
            "layers": [serde_json::to_value(&raw.descriptor).unwrap()],
        });
        let m = store
            .write_blob(&serde_json::to_vec(&manifest).unwrap())
            .unwrap();
        let md = Descriptor::new(MediaType::ImageManifest, m.size, m.digest);
        let out = gzip_manifest(&md, &store).unwrap();
        assert_ne!(out.digest(), md.digest());
        let again = gzip_manifest(&md, &store).unwrap();
        assert_eq!(out, again, "the gzip form is remembered");
        let parsed: ImageManifest =
            serde_json::from_slice(&store.read_blob(out.digest()).unwrap()).unwrap();
        let l = &parsed.layers()[0];
        assert_eq!(l.media_type(), &MediaType::ImageLayerGzip);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&store.read_blob(l.digest()).unwrap()[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, tar_bytes);
        // Already compressed: returned as it is.
        assert_eq!(gzip_manifest(&out, &store).unwrap(), out);
    }

    #[test]
    fn index_names_the_image() {
        let d = Descriptor::new(MediaType::ImageManifest, 3, content::sha256_digest(b"m"));
        let idx: serde_json::Value =
            serde_json::from_slice(&layout_index(&d, "docker.io/library/app:v1")).unwrap();
        let a = &idx["manifests"][0]["annotations"];
        assert_eq!(a["io.containerd.image.name"], "docker.io/library/app:v1");
        assert_eq!(a["org.opencontainers.image.ref.name"], "v1");
        assert_eq!(idx["manifests"][0]["digest"], d.digest().to_string());
    }

    #[test]
    fn oci_tar_refuses_missing_blobs_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","size":2,"digest":"{}"}},"layers":[]}}"#,
            image::MEDIA_TYPE_CONFIG,
            content::sha256_digest(b"{}")
        );
        let info = store.write_blob(manifest.as_bytes()).unwrap();
        let d = Descriptor::new(MediaType::ImageManifest, info.size, info.digest);
        let dest = dir.path().join("out.tar");
        let err = oci_tar(&dest, &d, "x:1", &store).unwrap_err();
        assert!(
            err.to_string().contains("not in the content store"),
            "{err}"
        );
        assert!(!dest.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".envkit-export")
            })
            .collect();
        assert!(leftovers.is_empty());

        store.write_blob(b"{}").unwrap();
        oci_tar(&dest, &d, "x:1", &store).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(File::open(&dest).unwrap());
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&"oci-layout".to_string()));
        assert!(names.contains(&"index.json".to_string()));
        assert!(names.contains(&format!("blobs/sha256/{}", d.digest().digest())));
    }
}

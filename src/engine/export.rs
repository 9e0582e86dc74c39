//! Writing a result out: the image in the store under its name, then the `-o` output
//! (`type=image` with or without push, `containerd`, `oci`, `docker`, `tar`, `local`), as
//! BuildKit's exporters do. The formats themselves are `crate::export`'s.

use super::{Engine, EngineError};
use crate::export::{self, Output};
use crate::image;
use crate::meta;
use crate::progress::Event;
use crate::snapshot::SnapRef;
use crate::worker::Worker;

impl Engine {
    /// Makes the result an image named `name` in the store, and writes the `-o` output.
    pub async fn export(
        &self,
        snap: &SnapRef,
        spec: &image::ImageSpec,
        name: &str,
        output: Option<Output>,
        started: std::time::Instant,
    ) -> Result<(), EngineError> {
        self.reporter.event(Event::Note("exporting layers".into()));
        let (assembled, created) = self.image(snap, spec).await?;
        let size = assembled.manifest_bytes.len() as u64
            + assembled.config_bytes.len() as u64
            + assembled.layers.iter().map(|l| l.size()).sum::<u64>();
        let record = meta::ImageRecord {
            manifest_digest: assembled.manifest_digest.to_string(),
            size,
            created,
        };
        // A warm rebuild makes the same image: nothing to write.
        if meta::Meta::peek_image(&self.root, name).as_ref() != Some(&record) {
            meta::Meta::open(&self.root)?.put_image(name, &record)?;
        }
        let ref_for = |n: Option<String>| -> Result<String, EngineError> {
            Ok(match n {
                Some(n) => {
                    crate::compile::full_name(&n).map_err(|e| EngineError::Output(e.to_string()))?
                }
                None => name.to_string(),
            })
        };
        let content = &self.worker.content;
        match output {
            None => {}
            Some(Output::Image {
                name: image_name,
                push,
                compression,
            }) => {
                let Some(n) = image_name else {
                    // The image is in the store under `name` already.
                    return self.built(name, &assembled, started);
                };
                let target = ref_for(Some(n))?;
                if target != name {
                    meta::Meta::open(&self.root)?.put_image(&target, &record)?;
                }
                if push {
                    self.reporter
                        .event(Event::Note(format!("pushing {target}")));
                    let manifest = export::convert_manifest(
                        &assembled.manifest_descriptor,
                        content,
                        &compression,
                    )?;
                    let p = self
                        .worker
                        .registry
                        .push(&target, &manifest, content)
                        .await?;
                    self.reporter.event(Event::Note(pushed_note(&p)));
                }
            }
            Some(Output::Containerd {
                name: cd_name,
                target,
                compression,
            }) => {
                let ref_name = ref_for(cd_name)?;
                self.reporter.event(Event::Note(format!(
                    "importing {ref_name} into containerd at {} (namespace {})",
                    target.address.display(),
                    target.namespace
                )));
                let manifest = export::convert_manifest(
                    &assembled.manifest_descriptor,
                    content,
                    &compression,
                )?;
                let done = export::containerd::import(&target, &ref_name, &manifest, content)
                    .await
                    .map_err(|e| EngineError::Output(e.to_string()))?;
                let unpacked = match &done.unpacked {
                    Some(chain) => format!(
                        ", unpacked into {} as {chain}",
                        target.unpack.as_deref().unwrap_or("")
                    ),
                    None => String::new(),
                };
                self.reporter.event(Event::Note(format!(
                    "containerd has {ref_name} ({}): {} blobs written, {} already there{unpacked}",
                    manifest.digest(),
                    done.written,
                    done.present
                )));
            }
            Some(Output::Oci {
                dest,
                name: oci_name,
                compression,
            }) => {
                let ref_name = ref_for(oci_name)?;
                self.reporter.event(Event::Note(format!(
                    "writing OCI image layout to {}",
                    dest.display()
                )));
                let manifest = export::convert_manifest(
                    &assembled.manifest_descriptor,
                    content,
                    &compression,
                )?;
                export::oci_tar(&dest, &manifest, &ref_name, content)?;
            }
            Some(Output::Docker {
                dest,
                name: docker_name,
                compression,
            }) => {
                let ref_name = ref_for(docker_name)?;
                self.reporter.event(Event::Note(format!(
                    "writing docker image tarball to {}",
                    dest.display()
                )));
                export::docker_tar(
                    &dest,
                    &assembled.manifest_descriptor,
                    &ref_name,
                    content,
                    &compression,
                )?;
            }
            Some(Output::Tar { dest }) => {
                self.reporter.event(Event::Note(format!(
                    "writing the root filesystem as a tar to {}",
                    dest.display()
                )));
                let tar = rootfs_tar(&self.worker, &assembled.layers).await?;
                export::write_to_dest(&dest, |out| {
                    let mut f = std::fs::File::open(tar.path()).map_err(|source| {
                        export::ExportError::Io {
                            path: tar.path().to_path_buf(),
                            source,
                        }
                    })?;
                    std::io::copy(&mut f, out).map_err(|source| export::ExportError::Io {
                        path: dest.clone(),
                        source,
                    })?;
                    Ok(())
                })?;
            }
            Some(Output::Local { dest }) => {
                self.reporter.event(Event::Note(format!(
                    "writing the root filesystem into {}",
                    dest.display()
                )));
                let tar = rootfs_tar(&self.worker, &assembled.layers).await?;
                let notes = extract_as_user(tar.path(), &dest)?;
                for n in notes {
                    self.reporter.event(Event::Note(n));
                }
            }
        }
        self.built(name, &assembled, started)
    }

    fn built(
        &self,
        name: &str,
        assembled: &image::Assembled,
        started: std::time::Instant,
    ) -> Result<(), EngineError> {
        self.reporter.event(Event::Note(format!(
            "built {name} ({}) in {:.1}s",
            assembled.manifest_digest,
            started.elapsed().as_secs_f64()
        )));
        Ok(())
    }
}

/// One line on what a push did.
pub fn pushed_note(p: &crate::registry::Pushed) -> String {
    format!(
        "pushed {} ({}): {} blobs uploaded, {} mounted, {} already there",
        p.reference, p.manifest_digest, p.uploaded, p.mounted, p.present
    )
}

/// The root filesystem of an image's layers (base first) as one tar in a temporary file: the
/// helper unpacks the layers in the user namespace (whiteouts applied, ids as in the image)
/// and tars the result with the image's ids.
pub async fn rootfs_tar(
    worker: &Worker,
    layers: &[oci_spec::image::Descriptor],
) -> Result<tempfile::NamedTempFile, EngineError> {
    let mut files = Vec::with_capacity(layers.len());
    for l in layers {
        let compression = match export::Compression::of(l.media_type()) {
            Some(export::Compression::Gzip) => rootless::Compression::Gzip,
            Some(export::Compression::Uncompressed) => rootless::Compression::None,
            _ => {
                return Err(EngineError::Output(format!(
                    "layer {} is {}: envkit unpacks gzip and plain layers",
                    l.digest(),
                    l.media_type()
                )));
            }
        };
        files.push(rootless::LayerFile {
            path: worker.content.path(l.digest())?,
            compression,
        });
    }
    let dir = worker.snapshots.temp_dir()?;
    let rootfs = dir.path().join("rootfs");
    let out = worker.snapshots.temp_file()?;
    let res = async {
        worker
            .run_helper(
                rootless::Request::Unpack {
                    layers: files,
                    dest: rootfs.clone(),
                    max_layer_bytes: Some(worker.config.worker.max_layer_size()),
                },
                None,
                None,
            )
            .await
            .map_err(|e| EngineError::Output(format!("unpacking the image's layers: {e}")))?;
        worker
            .run_helper(
                rootless::Request::DiffTar {
                    upper: rootfs.clone(),
                    out: out.path().to_path_buf(),
                    mtime_clamp: None,
                },
                None,
                None,
            )
            .await
            .map_err(|e| EngineError::Output(format!("writing the root filesystem tar: {e}")))?;
        Ok::<(), EngineError>(())
    }
    .await;
    // The unpacked files belong to subordinate ids: only the helper removes them.
    let dir = dir.keep();
    let cleaned = worker.remove_tree(&dir).await;
    res?;
    cleaned
        .map_err(|e| EngineError::Output(format!("removing the unpacked root filesystem: {e}")))?;
    Ok(out)
}

/// Extracts a root filesystem tar into `dest` as the user running envkit: every file is
/// theirs (ids in the image cannot be kept outside the user namespace), entries that would
/// land outside `dest` are refused, device nodes are skipped. Returns notes on skipped entries.
pub fn extract_as_user(
    tar: &std::path::Path,
    dest: &std::path::Path,
) -> Result<Vec<String>, EngineError> {
    let io = |what: String| move |e: std::io::Error| EngineError::Output(format!("{what}: {e}"));
    std::fs::create_dir_all(dest).map_err(io(format!("creating {}", dest.display())))?;
    let dest = std::fs::canonicalize(dest).map_err(io(dest.display().to_string()))?;
    let f = std::fs::File::open(tar).map_err(io(tar.display().to_string()))?;
    let me = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let mut notes = Vec::new();
    rootless::unpack_tar(
        std::io::BufReader::new(f),
        tar,
        &dest,
        &mut notes,
        rootless::TarMode {
            layer: false,
            owner: Some(me),
            mtime: None,
            max_bytes: None,
        },
    )
    .map_err(|e| EngineError::Output(format!("extracting into {}: {e}", dest.display())))?;
    Ok(notes)
}

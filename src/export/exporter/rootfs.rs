//! `type=tar,dest=FILE` and `type=local,dest=DIR`: the image's root filesystem, unpacked and
//! tarred by the rootless helper (ids as in the image), written as one tar or extracted into a
//! directory as the user running envkit.

use std::path::PathBuf;

use super::{Back, BoxFuture, Cx, Exporter, RemoteExport, RemoteKind};
use crate::export::ExportError;
use crate::worker::Worker;

pub(super) struct Rootfs<'o> {
    pub dest: &'o PathBuf,
    /// `type=local`: a directory; else one tar.
    pub tree: bool,
}

impl Exporter for Rootfs<'_> {
    fn export<'a>(&'a self, cx: &'a Cx<'a>) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            let dest = self.dest;
            let several = cx.images.len() > 1;
            let parts: Vec<(Option<String>, &[oci_spec::image::Descriptor])> = cx
                .images
                .iter()
                .map(|a| {
                    let dir = several.then(|| {
                        crate::image::index::platform_of(&a.manifest_descriptor)
                            .map(|p| crate::image::index::platform_dir(&p))
                            .unwrap_or_else(|| a.manifest_digest.digest().to_string())
                    });
                    (dir, &a.layers[..])
                })
                .collect();
            let each = if several {
                " (one directory per platform)"
            } else {
                ""
            };
            if self.tree {
                cx.note(format!(
                    "writing the root filesystem into {}{each}",
                    dest.display()
                ));
                let tar = rootfs_tar_of(cx.worker, &parts).await?;
                for n in extract_as_user(tar.path(), dest)? {
                    cx.note(n);
                }
                return Ok(());
            }
            cx.note(format!(
                "writing the root filesystem as a tar to {}{each}",
                dest.display()
            ));
            let tar = rootfs_tar_of(cx.worker, &parts).await?;
            crate::export::write_to_dest(dest, |out| {
                let mut f = std::fs::File::open(tar.path()).map_err(|source| ExportError::Io {
                    path: tar.path().to_path_buf(),
                    source,
                })?;
                std::io::copy(&mut f, out).map_err(|source| ExportError::Io {
                    path: dest.clone(),
                    source,
                })?;
                Ok(())
            })
        })
    }

    fn remote(&self, _: &RemoteKind, _: &str) -> Result<RemoteExport, ExportError> {
        Ok(if self.tree {
            RemoteExport {
                exporter: "local",
                attrs: Default::default(),
                back: Back::Tree(self.dest.clone()),
            }
        } else {
            RemoteExport {
                exporter: "tar",
                attrs: Default::default(),
                back: Back::File(self.dest.clone()),
            }
        })
    }
}

/// The root filesystem of an image's layers (base first) as one tar in a temporary file: the
/// helper unpacks the layers in the user namespace (whiteouts applied, ids as in the image)
/// and tars the result with the image's ids.
pub async fn rootfs_tar(
    worker: &Worker,
    layers: &[oci_spec::image::Descriptor],
) -> Result<tempfile::NamedTempFile, ExportError> {
    rootfs_tar_of(worker, &[(None, layers)]).await
}

/// [`rootfs_tar`] of several images: each one's root filesystem under its directory name
/// (`linux_arm64/...`), or at the top where it has none.
pub async fn rootfs_tar_of(
    worker: &Worker,
    parts: &[(Option<String>, &[oci_spec::image::Descriptor])],
) -> Result<tempfile::NamedTempFile, ExportError> {
    let dir = worker.snapshots.temp_dir()?;
    let rootfs = dir.path().join("rootfs");
    let mut unpacks = Vec::with_capacity(parts.len());
    for (sub, layers) in parts {
        let dest = match sub {
            Some(s) => rootfs.join(s),
            None => rootfs.clone(),
        };
        unpacks.push(
            worker
                .unpack_request(layers, &dest)
                .map_err(|e| ExportError::Refused(e.to_string()))?,
        );
    }
    let out = worker.snapshots.temp_file()?;
    let res = async {
        for unpack in unpacks {
            worker
                .run_helper(unpack, None, None)
                .await
                .map_err(|e| ExportError::Refused(format!("unpacking the image's layers: {e}")))?;
        }
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
            .map_err(|e| ExportError::Refused(format!("writing the root filesystem tar: {e}")))?;
        Ok::<(), ExportError>(())
    }
    .await;
    // The unpacked files belong to subordinate ids: only the helper removes them.
    let dir = dir.keep();
    let cleaned = worker.remove_tree(&dir).await;
    res?;
    cleaned
        .map_err(|e| ExportError::Refused(format!("removing the unpacked root filesystem: {e}")))?;
    Ok(out)
}

/// Extracts a root filesystem tar into `dest` as the user running envkit: every file is
/// theirs (ids in the image cannot be kept outside the user namespace), entries that would
/// land outside `dest` are refused, device nodes are skipped. Returns notes on skipped entries.
pub fn extract_as_user(
    tar: &std::path::Path,
    dest: &std::path::Path,
) -> Result<Vec<String>, ExportError> {
    let io = |what: String| move |e: std::io::Error| ExportError::Refused(format!("{what}: {e}"));
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
    .map_err(|e| ExportError::Refused(format!("extracting into {}: {e}", dest.display())))?;
    Ok(notes)
}

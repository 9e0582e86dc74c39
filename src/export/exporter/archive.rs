//! `type=oci,dest=FILE[,name=REF]` and `type=docker,dest=FILE[,name=REF]`: the image as an OCI
//! image-layout tar or a `docker save` tar (`-` is stdout).

use std::path::PathBuf;

use super::image::moby_refuses;
use super::{Back, BoxFuture, Cx, Exporter, RemoteExport, RemoteKind};
use crate::export::{CompressionOpts, ExportError};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Oci,
    Docker,
}

pub(super) struct Archive<'o> {
    pub format: Format,
    pub dest: &'o PathBuf,
    pub name: &'o Option<String>,
    pub compression: &'o CompressionOpts,
}

impl Exporter for Archive<'_> {
    fn export<'a>(&'a self, cx: &'a Cx<'a>) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            let ref_name = cx.ref_for(self.name)?;
            let content = &cx.worker.content;
            let manifest = cx.descriptor;
            match self.format {
                Format::Oci => {
                    cx.note(format!(
                        "writing OCI image layout to {}",
                        self.dest.display()
                    ));
                    let manifest =
                        crate::export::convert_manifest(manifest, content, self.compression)?;
                    crate::export::oci_tar(self.dest, &manifest, &ref_name, content)
                }
                Format::Docker => {
                    cx.note(format!(
                        "writing docker image tarball to {}",
                        self.dest.display()
                    ));
                    crate::export::docker_tar(
                        self.dest,
                        manifest,
                        &ref_name,
                        content,
                        self.compression,
                    )
                }
            }
        })
    }

    fn remote(&self, remote: &RemoteKind, name: &str) -> Result<RemoteExport, ExportError> {
        let named = self.name.clone().unwrap_or_else(|| name.to_string());
        let (exporter, kind) = match self.format {
            Format::Oci => ("oci", "type=oci"),
            Format::Docker => ("docker", "type=docker"),
        };
        if remote.dockerd {
            // Built into dockerd, then dockerd's `docker save` of it.
            return Ok(RemoteExport::named("moby", named, Back::Saved));
        }
        if remote.moby {
            return Err(moby_refuses(kind, remote));
        }
        Ok(
            RemoteExport::named(exporter, named, Back::File(self.dest.clone()))
                .compression(self.compression),
        )
    }
}

//! `type=containerd[,name=REF][,address=SOCK][,namespace=NS][,unpack=true]`: the image
//! imported into a containerd over its socket (the protocol is `export::containerd`'s). Only
//! the embedded engine exports there.

use super::{BoxFuture, Cx, Exporter, RemoteExport, RemoteKind};
use crate::export::containerd::Target;
use crate::export::{CompressionOpts, ExportError};

pub(super) struct Containerd<'o> {
    pub name: &'o Option<String>,
    pub target: &'o Target,
    pub compression: &'o CompressionOpts,
}

impl Exporter for Containerd<'_> {
    fn export<'a>(&'a self, cx: &'a Cx<'a>) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            let ref_name = cx.ref_for(self.name)?;
            let target = self.target;
            cx.note(format!(
                "importing {ref_name} into containerd at {} (namespace {})",
                target.address.display(),
                target.namespace
            ));
            let content = &cx.worker.content;
            let manifest =
                crate::export::convert_manifest(cx.descriptor, content, self.compression)?;
            let done = crate::export::containerd::import(target, &ref_name, &manifest, content)
                .await
                .map_err(|e| ExportError::Refused(e.to_string()))?;
            let unpacked = match &done.unpacked {
                Some(chain) => format!(
                    ", unpacked into {} as {chain}",
                    target.unpack.as_deref().unwrap_or("")
                ),
                None => String::new(),
            };
            cx.note(format!(
                "containerd has {ref_name} ({}): {} blobs written, {} already there{unpacked}",
                manifest.digest(),
                done.written,
                done.present
            ));
            Ok(())
        })
    }

    fn remote(&self, _: &RemoteKind, _: &str) -> Result<RemoteExport, ExportError> {
        Err(ExportError::Refused(
            "-o type=containerd: a remote BuildKit exports to an image (push=true for a \
             registry), oci, docker, tar or local; a containerd import is the embedded engine's"
                .into(),
        ))
    }
}

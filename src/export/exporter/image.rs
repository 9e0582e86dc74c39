//! `type=image[,name=REF][,push=true]`: envkit's image store (the default), under a further
//! name, and pushed to the registry that name names.

use super::{Back, BoxFuture, Cx, Exporter, RemoteExport, RemoteKind};
use crate::export::{CompressionOpts, ExportError};

pub(super) struct Image<'o> {
    pub name: &'o Option<String>,
    pub push: bool,
    pub compression: &'o CompressionOpts,
}

impl Exporter for Image<'_> {
    fn export<'a>(&'a self, cx: &'a Cx<'a>) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            if self.name.is_none() {
                // The image is in the store under its name already.
                return Ok(());
            }
            let target = cx.ref_for(self.name)?;
            if target != cx.name {
                crate::meta::Meta::open(cx.root)?.put_image(&target, cx.record)?;
            }
            if self.push {
                cx.note(format!("pushing {target}"));
                let content = &cx.worker.content;
                let manifest =
                    crate::export::convert_manifest(cx.descriptor, content, self.compression)?;
                let p = cx.worker.registry.push(&target, &manifest, content).await?;
                cx.note(pushed_note(&p));
            }
            Ok(())
        })
    }

    fn remote(&self, remote: &RemoteKind, name: &str) -> Result<RemoteExport, ExportError> {
        let named = self.name.clone().unwrap_or_else(|| name.to_string());
        if remote.moby && (!self.push || remote.dockerd) {
            // Into dockerd's store; with push=true dockerd pushes it afterwards.
            return Ok(RemoteExport::named("moby", named, Back::Nothing));
        }
        if remote.moby {
            return Err(moby_refuses("type=image,push=true", remote));
        }
        let mut r = RemoteExport::named("image", named, Back::Nothing);
        if self.push {
            r.attrs.insert("push".into(), "true".into());
        }
        Ok(r.compression(self.compression))
    }
}

/// What dockerd's BuildKit, reached as a buildkitd, cannot make.
pub(super) fn moby_refuses(kind: &str, remote: &RemoteKind) -> ExportError {
    ExportError::Refused(format!(
        "-o {kind}: {} is dockerd's BuildKit, whose only image exporter puts the image into \
         dockerd; make a dockerd context for its API socket to push or save it",
        remote.endpoint
    ))
}

/// One line on what a push did.
pub fn pushed_note(p: &crate::registry::Pushed) -> String {
    format!(
        "pushed {} ({}): {} blobs uploaded, {} mounted, {} already there",
        p.reference, p.manifest_digest, p.uploaded, p.mounted, p.present
    )
}

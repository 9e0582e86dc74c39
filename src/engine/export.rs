//! Writing a result out: the image in the store under its name, then the `-o` output through
//! its exporter (`crate::export::exporter`: `type=image` with or without push, `containerd`,
//! `oci`, `docker`, `tar`, `local`), as BuildKit's exporters do.

use super::{Engine, EngineError};
use crate::export::{self, Output};
use crate::image;
use crate::meta;
use crate::progress::Event;
use crate::snapshot::SnapRef;

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
        self.export_platforms(&[(snap.clone(), spec.clone())], name, output, started)
            .await
    }

    /// [`Engine::export`] of one result per platform: with more than one, the image is an
    /// OCI index over each platform's manifest (in the order given).
    pub async fn export_platforms(
        &self,
        results: &[(SnapRef, image::ImageSpec)],
        name: &str,
        output: Option<Output>,
        started: std::time::Instant,
    ) -> Result<(), EngineError> {
        if results.is_empty() {
            return Err(EngineError::Output("no result to export".into()));
        }
        self.reporter.event(Event::Note("exporting layers".into()));
        let mut images = Vec::with_capacity(results.len());
        let mut created = 0;
        for (snap, spec) in results {
            let (assembled, made) = self.image(snap, spec).await?;
            created = created.max(made);
            images.push(assembled);
        }
        let mut size: u64 = images
            .iter()
            .map(|a| {
                a.manifest_bytes.len() as u64
                    + a.config_bytes.len() as u64
                    + a.layers.iter().map(|l| l.size()).sum::<u64>()
            })
            .sum();
        let descriptor = match &images[..] {
            [one] => one.manifest_descriptor.clone(),
            several => {
                let manifests: Vec<_> = several
                    .iter()
                    .map(|a| a.manifest_descriptor.clone())
                    .collect();
                let index = image::index::index_of(&manifests)?;
                self.worker.content.write_blob(&index.bytes)?;
                size += index.bytes.len() as u64;
                index.descriptor
            }
        };
        // Nothing is recorded on a tag resolved ahead until the registry has said it still
        // names that image.
        self.worker.registry.confirm_tags().await?;
        let record = meta::ImageRecord {
            manifest_digest: descriptor.digest().to_string(),
            size,
            created,
        };
        // A warm rebuild makes the same image: nothing to write.
        if meta::Meta::peek_image(&self.root, name).as_ref() != Some(&record) {
            meta::Meta::open(&self.root)?.put_image(name, &record)?;
        }
        let output = output.unwrap_or_else(export::exporter::default_output);
        let cx = export::exporter::Cx {
            worker: &self.worker,
            root: &self.root,
            descriptor: &descriptor,
            images: &images,
            record: &record,
            name,
            reporter: &*self.reporter,
        };
        output.exporter().export(&cx).await?;
        self.built(name, &descriptor, started)
    }

    fn built(
        &self,
        name: &str,
        descriptor: &oci_spec::image::Descriptor,
        started: std::time::Instant,
    ) -> Result<(), EngineError> {
        self.reporter.event(Event::Note(format!(
            "built {name} ({}) in {:.1}s",
            descriptor.digest(),
            started.elapsed().as_secs_f64()
        )));
        Ok(())
    }
}

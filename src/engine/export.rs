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
        let output = output.unwrap_or_else(export::exporter::default_output);
        let cx = export::exporter::Cx {
            worker: &self.worker,
            root: &self.root,
            assembled: &assembled,
            record: &record,
            name,
            reporter: &*self.reporter,
        };
        output.exporter().export(&cx).await?;
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

//! The embedded engine as a backend: solve here, export from this store.

use std::path::{Path, PathBuf};

use super::{Backend, BackendError, BoxFuture, ImageConfig, Job};
use crate::engine::Engine;
use crate::image::ImageSpec;
use crate::lower;
use crate::registry::Registry;
use crate::snapshot::SnapRef;

/// envkit's own engine on this machine.
pub struct Embedded {
    pub engine: Engine,
}

impl Embedded {
    pub fn new(engine: Engine) -> Self {
        Embedded { engine }
    }

    /// Runs the job; the result's snapshots (what `envkit up` starts). The progress is left
    /// open.
    pub async fn build(&self, job: Job) -> Result<SnapRef, BackendError> {
        let solved = self
            .engine
            .solve_with(&job.definition, job.locals, &job.cache)
            .await?;
        let snap = solved.snap.clone();
        let mut spec = match &job.image {
            ImageConfig::Spec { spec, .. } | ImageConfig::Full { spec, .. } => (**spec).clone(),
            ImageConfig::Base => ImageSpec::default(),
        };
        if let Some(e) = job
            .cache
            .exports
            .iter()
            .find(|e| e.location == crate::bkcache::spec::Location::Inline)
        {
            match self.engine.inline_cache(&solved).await {
                Ok(records) => spec.inline_cache = records,
                Err(err) if e.ignore_error => {
                    self.engine
                        .reporter
                        .event(crate::progress::Event::Note(format!(
                            "warning: exporting cache (inline): {err}"
                        )))
                }
                Err(err) => return Err(err.into()),
            }
        }
        self.engine
            .export(&snap, &spec, &job.name, job.output, job.started)
            .await?;
        if !job.cache.exports.is_empty() {
            self.engine
                .export_cache(&solved, &job.cache.exports)
                .await?;
        }
        Ok(snap)
    }
}

impl Backend for Embedded {
    fn target(&self) -> lower::Target {
        lower::Target::Embedded
    }

    fn registry(&self) -> &Registry {
        &self.engine.worker.registry
    }

    fn ca_bundle_local(&self, _: Option<&Path>) -> Result<Option<(PathBuf, String)>, BackendError> {
        Ok(None)
    }

    fn run(&self, job: Job) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let res = self.build(job).await;
            self.engine.reporter.finish();
            res.map(|_| ())
        })
    }

    fn finish(&self) {
        self.engine.reporter.finish();
    }
}

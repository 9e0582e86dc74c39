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

impl Embedded {
    /// [`Backend::run_platforms`] here: every platform's graph solved at once (what they share,
    /// such as the context, is done once through the cache's per-key locks), then one index.
    async fn build_platforms(&self, jobs: Vec<Job>) -> Result<(), BackendError> {
        let Some(first) = jobs.first() else {
            return Err(BackendError::Refused("no platform to build".into()));
        };
        if !first.cache.exports.is_empty() {
            return Err(BackendError::Refused(
                "--export-cache with several platforms: not yet (export each platform's cache \
                 from a build of its own)"
                    .into(),
            ));
        }
        let (name, output, started) = (first.name.clone(), first.output.clone(), first.started);
        // Each platform's steps get numbers of their own in the one progress display.
        let mut engines = Vec::with_capacity(jobs.len());
        let mut base = 0;
        for job in &jobs {
            let mut engine = self.engine.clone();
            engine.reporter = std::sync::Arc::new(crate::progress::Offset {
                inner: self.engine.reporter.clone(),
                base,
            });
            engines.push(engine);
            base += <crate::pb::Definition as prost::Message>::decode(&job.definition[..])
                .map_or(0, |d| d.def.len());
        }
        let solves = jobs.iter().zip(&engines).map(|(job, engine)| {
            engine.solve_with(&job.definition, job.locals.clone(), &job.cache)
        });
        let solved = futures_util::future::try_join_all(solves).await?;
        let results: Vec<(SnapRef, ImageSpec)> = solved
            .into_iter()
            .zip(&jobs)
            .map(|(s, job)| {
                let spec = match &job.image {
                    ImageConfig::Spec { spec, .. } | ImageConfig::Full { spec, .. } => {
                        (**spec).clone()
                    }
                    ImageConfig::Base => ImageSpec::default(),
                };
                (s.snap, spec)
            })
            .collect();
        self.engine
            .export_platforms(&results, &name, output, started)
            .await?;
        Ok(())
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

    fn default_platform(&self) -> crate::platform::Platform {
        crate::platform::Platform::host()
    }

    fn check_platforms(&self, _: &[crate::platform::Platform]) -> Result<(), BackendError> {
        // Each step of another platform finds its emulator, or fails before it runs saying
        // which package to install.
        Ok(())
    }

    fn run(&self, job: Job) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let res = self.build(job).await;
            // A base image's tag that moved while the build was keyed: the caller compiles
            // again and reports on the same display.
            if res.is_ok() || !self.engine.worker.registry.moved() {
                self.engine.reporter.finish();
            }
            res.map(|_| ())
        })
    }

    fn resolves_ahead(&self) -> bool {
        true
    }

    fn resolves_sources(&self) -> bool {
        true
    }

    fn run_platforms(&self, jobs: Vec<Job>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let res = self.build_platforms(jobs).await;
            self.engine.reporter.finish();
            res
        })
    }

    fn finish(&self) {
        self.engine.reporter.finish();
    }

    fn note(&self, line: String) {
        self.engine
            .reporter
            .event(crate::progress::Event::Note(line));
    }
}

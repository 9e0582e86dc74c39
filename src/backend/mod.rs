//! Where a Definition runs: the embedded engine, a buildkitd, or the BuildKit inside a dockerd,
//! behind one [`Backend`] trait, so `build` and `solve` never branch on the context. A backend
//! says how to lower for it, which registry the frontend resolves base images with, whether
//! the host's CA bundle must travel with the build, and runs a [`Job`]: the Definition bytes,
//! the local sources, the image's name and config, and the `-o` output.

mod embedded;
mod remote;

pub use embedded::Embedded;
pub use remote::{Remote, RemoteBackend, RemoteOptions, ignoring_cache};

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use thiserror::Error;

use crate::export::Output;
use crate::image::ImageSpec;
use crate::lower;
use crate::registry::Registry;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// What the backend cannot do, or a refusal from the remote side, said plainly.
    #[error("{0}")]
    Refused(String),
}

impl BackendError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let what = what.into();
        move |source| BackendError::Io { what, source }
    }
}

/// The image config a job's result gets.
#[derive(Debug, Clone)]
pub enum ImageConfig {
    /// envd's spec over its base image (a build file).
    Spec {
        spec: Box<ImageSpec>,
        base_config: Box<oci_spec::image::ImageConfiguration>,
        base_layers: Vec<oci_spec::image::Descriptor>,
    },
    /// A Dockerfile's: the spec the embedded engine applies over the result's base image,
    /// and the whole config a remote BuildKit's exporter starts from (it sets the layers).
    Full {
        spec: Box<ImageSpec>,
        config: Vec<u8>,
    },
    /// None of its own: the base image's, if any (a bare Definition, `envkit solve`).
    Base,
}

/// One build for a backend.
#[derive(Debug, Clone)]
pub struct Job {
    pub definition: Vec<u8>,
    /// Local sources by the names the Definition uses.
    pub locals: BTreeMap<String, PathBuf>,
    /// The image's full name (`docker.io/library/app:dev`).
    pub name: String,
    pub output: Option<Output>,
    pub image: ImageConfig,
    /// When the build began (what the closing line reports).
    pub started: std::time::Instant,
    /// `--import-cache` / `--export-cache`.
    pub cache: crate::bkcache::spec::CacheSpecs,
}

/// A boxed future of a backend (not `Send`: the CLI awaits it where it is).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A place to build.
pub trait Backend {
    /// How a build file is lowered for it (Merge/Diff or a chain).
    fn target(&self) -> lower::Target;
    /// The registry base images are resolved with, for the frontend.
    fn registry(&self) -> &Registry;
    /// Whether a build's base image tags may be resolved ahead of the registry's answer
    /// ([`Registry::speculate`]): the engine waits for it before it builds or records
    /// anything, and `run` then fails with [`Registry::moved`] true when a tag moved.
    fn resolves_ahead(&self) -> bool {
        false
    }
    /// Whether a Definition's image sources are resolved with [`Backend::registry`] (the
    /// embedded engine), so that its settings ([`Registry::prefer_local`]) reach them; a
    /// remote BuildKit resolves them itself, from what the Definition says.
    fn resolves_sources(&self) -> bool {
        false
    }
    /// The host's CA bundle as a local source (its directory and file name), where the
    /// build's steps cannot read the host (`cli_ca` is `--ca-bundle`): `None` for the
    /// embedded engine, whose steps get the file bound in.
    fn ca_bundle_local(
        &self,
        cli_ca: Option<&std::path::Path>,
    ) -> Result<Option<(PathBuf, String)>, BackendError>;
    /// The platform a build that names none is for: this machine's here, a remote worker's
    /// first (as BuildKit takes it).
    fn default_platform(&self) -> crate::platform::Platform;
    /// Refuses, before anything is compiled, platforms the backend says it cannot build.
    fn check_platforms(&self, wanted: &[crate::platform::Platform]) -> Result<(), BackendError>;
    /// Runs the job and exports its result; the progress is finished when this returns.
    fn run(&self, job: Job) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Runs one job per platform (the same name, output and caches; each its own Definition
    /// and image config) and exports one image: an OCI index over each platform's manifest.
    fn run_platforms(&self, jobs: Vec<Job>) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Ends the progress display without a job (the build failed before it ran).
    fn finish(&self);
    /// A line on the progress display.
    fn note(&self, line: String);
}

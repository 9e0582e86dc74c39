//! The embedded engine as a library: open a store with [`Options`], then [`Engine::solve`]
//! Definition bytes (what any BuildKit client sends) with the local sources they read. The
//! engine sees only the bytes: it loads them (checking every digest), hands the graph to the
//! solver and the ops, and returns the result's snapshot stack. Exporting the result is the
//! caller's next step: [`Engine::image`] makes it an image in the store (`image.rs`), the
//! exporters (`crate::export`) write it out, dispatched by [`Engine::export`] (`export.rs`).

mod cacheexport;
mod cacheimport;
mod explain;
mod export;
mod image;
mod rootfs;

pub use image::reproducible_epoch;
pub use rootfs::{ImageRootfs, StoredImage};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::bkcache::spec::CacheSpecs;
use crate::config::Config;
use crate::llb::{self, LlbError};
use crate::ops::{LlbRunner, OpVertex};
use crate::progress::{Event, Reporter};
use crate::snapshot::SnapRef;
use crate::solver::{self, SolveError, SolveOptions};
use crate::worker::{Worker, WorkerError};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("opening the store at {}: {source}", path.display())]
    Store { path: PathBuf, source: WorkerError },
    #[error("CA bundle {} does not exist", .0.display())]
    CaBundle(PathBuf),
    #[error("--allow {0:?}: envkit knows the entitlements network.host and security.insecure")]
    Entitlement(String),
    #[error("loading the LLB Definition: {0}")]
    Load(#[from] LlbError),
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error("the Definition's result is output {0} of an op that has no such output")]
    NoSuchOutput(i64),
    #[error("parsing the base image's config: {0}")]
    BaseConfig(String),
    #[error("computing the layer of snapshot {id}: {message}")]
    Layer { id: String, message: String },
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    OutputCount(#[from] crate::solver::cache::OutputCount),
    #[error("{0}")]
    Output(String),
}

/// The entitlements a build may be granted (`--allow`), as in BuildKit.
pub const ENTITLEMENTS: [&str; 2] = ["network.host", "security.insecure"];

/// How to open an engine.
pub struct Options {
    /// The store's root directory.
    pub root: PathBuf,
    pub config: Config,
    /// A CA bundle on the host that build steps trust (else `[worker] ca-bundle`).
    pub ca_bundle: Option<PathBuf>,
    /// Steps at once (else `[worker] max-parallelism`, else the solver's default).
    pub parallelism: Option<usize>,
    /// Every exec and file op runs again (sources are content-addressed and stay cached).
    pub no_cache: bool,
    /// Granted entitlements (members of [`ENTITLEMENTS`]).
    pub entitlements: BTreeSet<String>,
    /// Secrets by id, for secret mounts and env vars.
    pub secrets: BTreeMap<String, rootless::SecretBytes>,
    /// SSH agent sockets by id, for ssh mounts.
    pub ssh: BTreeMap<String, PathBuf>,
    pub reporter: Arc<dyn Reporter>,
}

/// What a build runs on: the store, the registry and the rootless helper.
#[derive(Clone)]
pub struct Engine {
    pub root: PathBuf,
    pub worker: Arc<Worker>,
    pub reporter: Arc<dyn Reporter>,
    parallelism: usize,
    secrets: Arc<BTreeMap<String, rootless::SecretBytes>>,
    ssh: Arc<BTreeMap<String, PathBuf>>,
    no_cache: bool,
    entitlements: Arc<BTreeSet<String>>,
}

impl Engine {
    /// Opens the store (shared with other builds) and removes what killed processes left.
    pub async fn open(o: Options) -> Result<Engine, EngineError> {
        Self::open_with(o, None).await
    }

    /// [`Engine::open`] with `executor` doing the namespace work (a fake, in tests).
    pub async fn with_executor(
        o: Options,
        executor: Arc<dyn crate::worker::Executor>,
    ) -> Result<Engine, EngineError> {
        Self::open_with(o, Some(executor)).await
    }

    async fn open_with(
        o: Options,
        executor: Option<Arc<dyn crate::worker::Executor>>,
    ) -> Result<Engine, EngineError> {
        if let Some(bad) = o
            .entitlements
            .iter()
            .find(|e| !ENTITLEMENTS.contains(&e.as_str()))
        {
            return Err(EngineError::Entitlement(bad.clone()));
        }
        let ca_bundle = o.ca_bundle.or_else(|| o.config.worker.ca_bundle.clone());
        if let Some(ca) = &ca_bundle
            && !ca.is_file()
        {
            return Err(EngineError::CaBundle(ca.clone()));
        }
        let parallelism = o
            .parallelism
            .or(o.config.worker.max_parallelism)
            .unwrap_or_else(|| SolveOptions::default().parallelism)
            .max(1);
        let worker = match executor {
            None => Worker::new(&o.root, o.config, ca_bundle),
            Some(e) => Worker::with_executor(&o.root, o.config, ca_bundle, e),
        }
        .map_err(|source| EngineError::Store {
            path: o.root.clone(),
            source,
        })?;
        let worker = Arc::new(worker);
        worker.clean_stale().await;
        Ok(Engine {
            root: o.root,
            worker,
            reporter: o.reporter,
            parallelism,
            secrets: Arc::new(o.secrets),
            ssh: Arc::new(o.ssh),
            entitlements: Arc::new(o.entitlements),
            no_cache: o.no_cache,
        })
    }

    /// Loads Definition bytes (checking every digest) and solves them with `locals` as the
    /// local sources: the result's snapshot stack.
    pub async fn solve(
        &self,
        bytes: &[u8],
        locals: BTreeMap<String, PathBuf>,
    ) -> Result<SnapRef, EngineError> {
        Ok(self
            .solve_with(bytes, locals, &CacheSpecs::default())
            .await?
            .snap)
    }

    /// [`Engine::solve`] with imported caches (`cache.imports`); what it built is kept for
    /// [`Engine::export_cache`] when `cache.exports` asks for it.
    pub async fn solve_with(
        &self,
        bytes: &[u8],
        locals: BTreeMap<String, PathBuf>,
        cache: &CacheSpecs,
    ) -> Result<Solved, EngineError> {
        let graph = llb::load(bytes)?;
        let Some((sv, mut ov, root_v)) = vertices(&graph) else {
            self.reporter.event(Event::Note(
                "the Definition is empty: the result is an empty filesystem".into(),
            ));
            return Ok(Solved {
                snap: SnapRef::scratch(),
                graph,
                results: BTreeMap::new(),
                plan: None,
                locals,
            });
        };
        if self.no_cache {
            for v in &mut ov {
                if !matches!(v.op.op, Some(crate::pb::op::Op::Source(_))) {
                    v.ignore_cache = true;
                }
            }
        }
        let ov = Arc::new(ov);
        // Local sources are hashed once for both passes; images the first pass finds missing
        // are pulled while it goes on (dropped with the solve, or as soon as the plan does not
        // need them).
        let shared = Passes::default();
        // A first pass computes every key; then only what the head needs runs.
        let plan = if self.no_cache {
            if cache.explain {
                self.reporter.event(Event::Note(
                    "explain: every step runs (--no-cache); sources stay cached".into(),
                ));
            }
            None
        } else {
            match self.keys(&sv, root_v, &ov, &locals, &shared).await {
                Some(keys) => {
                    let (plan, seen) = self.plan(&graph, &ov, &keys, &cache.imports, &locals).await;
                    shared.prefetch.keep_only(|v| {
                        matches!(plan.roles.get(v), Some(crate::ops::import::Role::Run))
                    });
                    self.remember_graph(&graph, &sv, &keys, &shared.sums, cache, &plan, &ov, &seen);
                    Some(Arc::new(plan))
                }
                None => {
                    if cache.explain {
                        self.reporter.event(Event::Note(
                            "explain: the steps' keys could not be computed; the build says why"
                                .into(),
                        ));
                    }
                    None
                }
            }
        };
        let mut attempt = plan;
        loop {
            let results = (!cache.exports.is_empty()).then(Default::default);
            let runner = self.runner(
                &ov,
                &locals,
                self.reporter.clone(),
                attempt.clone(),
                results.clone(),
                &shared,
            );
            let opts = SolveOptions {
                parallelism: self.parallelism,
            };
            match solver::solve(&sv, root_v, runner, self.reporter.clone(), &opts).await {
                Ok(result) => {
                    let out = result
                        .output(graph.head_output)
                        .ok_or(EngineError::NoSuchOutput(graph.head_output))?;
                    let results = results
                        .and_then(
                            |r: Arc<std::sync::Mutex<BTreeMap<usize, crate::ops::Res>>>| {
                                r.lock().ok().map(|m| m.clone())
                            },
                        )
                        .unwrap_or_default();
                    return Ok(Solved {
                        snap: out.snap,
                        graph,
                        results,
                        plan: attempt,
                        locals,
                    });
                }
                // A cached result that could not be loaded (a hostile or broken layer): the
                // build goes on without the imported cache.
                Err(e) if attempt.is_some() && is_import_failure(&e) => {
                    self.reporter.event(Event::Note(format!(
                        "warning: {e}; building again without the imported cache"
                    )));
                    attempt = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Runs `f`, which reads the disk (content hashes of local sources while a cache is matched
/// or exported), without stalling the runtime's other tasks where the runtime allows it.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What the passes of one solve share: local sources' checksums, and the image pulls the
/// first pass started ([`crate::ops::prefetch`]).
#[derive(Default)]
struct Passes {
    sums: crate::ops::LocalSums,
    prefetch: Arc<crate::ops::prefetch::Prefetches>,
}

/// Every vertex's result, as a solve collects them.
type Results = Arc<std::sync::Mutex<BTreeMap<usize, crate::ops::Res>>>;

impl Engine {
    /// The ops' runner for one pass of a solve.
    fn runner(
        &self,
        ov: &Arc<Vec<OpVertex>>,
        locals: &BTreeMap<String, PathBuf>,
        reporter: Arc<dyn Reporter>,
        import: Option<Arc<crate::ops::import::ImportPlan>>,
        results: Option<Results>,
        shared: &Passes,
    ) -> Arc<LlbRunner> {
        Arc::new(LlbRunner {
            worker: self.worker.clone(),
            vertices: ov.clone(),
            locals: locals.clone(),
            secrets: self.secrets.clone(),
            ssh: self.ssh.clone(),
            entitlements: self.entitlements.clone(),
            reporter,
            import,
            results,
            sums: shared.sums.clone(),
            prefetch: Some(shared.prefetch.clone()),
        })
    }

    /// Every vertex's cache key, computed without building anything (`None` when that fails:
    /// the real solve then reports why); an image source the store lacks starts pulling
    /// meanwhile ([`crate::ops::prefetch`]).
    async fn keys(
        &self,
        sv: &[solver::Vertex],
        root: usize,
        ov: &Arc<Vec<OpVertex>>,
        locals: &BTreeMap<String, PathBuf>,
        shared: &Passes,
    ) -> Option<Vec<String>> {
        let results: Results = Default::default();
        let first_pass = crate::ops::import::ImportPlan {
            roles: Vec::new(),
            keys_only: true,
        };
        let runner = self.runner(
            ov,
            locals,
            Arc::new(crate::progress::Silent),
            Some(Arc::new(first_pass)),
            Some(results.clone()),
            shared,
        );
        let opts = SolveOptions {
            parallelism: self.parallelism,
        };
        solver::solve(sv, root, runner, Arc::new(crate::progress::Silent), &opts)
            .await
            .ok()?;
        let done = results.lock().ok()?;
        Some(
            (0..sv.len())
                .map(|v| done.get(&v).map(|r| r.key.clone()).unwrap_or_default())
                .collect(),
        )
    }
}

impl Engine {
    /// Keeps the graph's record for the next `--explain-cache` (when the keys changed), and
    /// explains this build against the last one when asked.
    #[allow(clippy::too_many_arguments)]
    fn remember_graph(
        &self,
        graph: &llb::LoadedGraph,
        sv: &[solver::Vertex],
        keys: &[String],
        sums: &crate::ops::LocalSums,
        cache: &CacheSpecs,
        plan: &crate::ops::import::ImportPlan,
        ov: &[OpVertex],
        seen: &[explain::ImportSeen],
    ) {
        let recorded = cache
            .target
            .as_ref()
            .map(|t| (t, explain::keys_digest(keys)));
        let same = recorded
            .as_ref()
            .is_some_and(|(t, d)| explain::is_recorded(&self.root, t, d));
        if !cache.explain && (same || recorded.is_none()) {
            return;
        }
        let now = explain::Record::new(graph, sv, keys, sums);
        if cache.explain {
            let last = recorded
                .as_ref()
                .and_then(|(t, _)| explain::Record::load(&self.root, t));
            for line in explain::explain(&now, last.as_ref(), &plan.roles, ov, seen) {
                self.reporter.event(Event::Note(line));
            }
        }
        if let Some((t, d)) = &recorded
            && !same
        {
            explain::save(&self.root, t, d, &now);
        }
    }
}

/// What a solve made: the head's snapshots and, for a cache export, every vertex's result.
pub struct Solved {
    pub snap: SnapRef,
    pub graph: llb::LoadedGraph,
    /// Results by vertex (kept only when a cache export was asked for).
    pub results: BTreeMap<usize, crate::ops::Res>,
    /// The import plan the solve went by (vertices it skipped have no real result).
    pub plan: Option<Arc<crate::ops::import::ImportPlan>>,
    /// The local sources it was given.
    pub locals: BTreeMap<String, PathBuf>,
}

/// Whether a solve failed while loading an imported result.
fn is_import_failure(e: &SolveError) -> bool {
    let SolveError::Vertex { source, .. } = e else {
        return false;
    };
    matches!(
        source.downcast_ref::<crate::ops::OpsError>(),
        Some(crate::ops::OpsError::Import { .. })
    )
}

#[cfg(test)]
mod tests;

/// The solver's view and the ops' view of a loaded Definition, and the vertex to build.
type Vertices = (Vec<solver::Vertex>, Vec<OpVertex>, usize);

/// [`Vertices`] of a loaded Definition (None for an empty Definition: the empty
/// filesystem, as in BuildKit).
fn vertices(graph: &llb::LoadedGraph) -> Option<Vertices> {
    let head = graph.head?;
    let mut sv = Vec::with_capacity(graph.vertices.len());
    let mut ov = Vec::with_capacity(graph.vertices.len());
    for v in &graph.vertices {
        let name = v
            .metadata
            .description
            .get("llb.customname")
            .cloned()
            .unwrap_or_else(|| llb::op_label(&v.op));
        sv.push(solver::Vertex {
            id: v.digest.to_string(),
            name,
            inputs: v.inputs.clone(),
        });
        // Inputs come first in a loaded graph: their key digests are known.
        let input_keys: Vec<&str> = v
            .inputs
            .iter()
            .map(|&i| ov.get(i).map_or("", |o: &OpVertex| o.key_digest.as_str()))
            .collect();
        let key_digest = crate::ops::key_digest(&v.op, &v.digest.to_string(), &input_keys);
        ov.push(OpVertex {
            key_digest,
            digest: v.digest.to_string(),
            op: v.op.clone(),
            inputs: v.inputs.clone(),
            ignore_cache: v.metadata.ignore_cache,
        });
    }
    Some((sv, ov, head))
}

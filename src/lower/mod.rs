//! Lowering: an [`Environment`] (the IR) becomes an LLB graph in envd v1's stage order, plus the
//! [`ImageSpec`] envd would attach as `containerimage.config`.
//!
//! The stages follow envd's `CompileLLB` (`ENVD_API.md` §5–§6): base image with envd's
//! environment, apt source, [dev prelude], system packages, languages (chained, or branched and
//! joined with Merge/Diff for a BuildKit that has them), language packages, `io.http`,
//! `io.copy`, code agents, [dev post-processing], `run()` groups, mount dirs.
//! `system.rs` has the system stages, `lang.rs` the languages and their packages, `image.rs`
//! the image config and labels.
//!
//! Where envd iterates a Go map (the runtime environment) the order is random in envd; envkit
//! sorts by key so that the same file always gives the same bytes.

mod dev;
mod gojson;
mod image;
mod lang;
mod system;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use thiserror::Error;

use crate::image::ImageSpec;
use crate::ir::{self, Environment, IrError};
use crate::llb::{self, Chown, Constraints, LlbError, MarshalOptions, Platform, State};

/// Name of the local source that carries the build context (envd's `flag.FlagBuildContext`).
pub const CONTEXT_LOCAL: &str = "build-context";

/// envd's `/home/envd`.
const ENVD_HOME: &str = "/home/envd";

/// Errors while lowering an environment.
#[derive(Debug, Error)]
pub enum LowerError {
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error("building the LLB graph: {0}")]
    Llb(#[from] LlbError),
    #[error("{0} is not implemented yet in envkit")]
    NotImplemented(&'static str),
}

/// The parts of the base image's config that lowering needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseImage {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

/// The BuildKit a graph is lowered for: it decides whether parallel branches are joined with
/// MergeOp/DiffOp (envd's default) or chained one after another (envd's `moby-worker`
/// builder, for BuildKits without Merge/Diff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// envkit's own engine: Merge/Diff, like a buildkitd (it executes them lazily).
    #[default]
    Embedded,
    /// A buildkitd: Merge/Diff, like envd with a BuildKit container.
    Buildkitd,
    /// dockerd's embedded BuildKit: no Merge/Diff, like envd's moby-worker.
    Dockerd,
}

impl Target {
    /// Whether parallel branches are joined with MergeOp/DiffOp.
    pub fn merge_op(self) -> bool {
        matches!(self, Target::Embedded | Target::Buildkitd)
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(Target::Embedded),
            "buildkitd" => Ok(Target::Buildkitd),
            "dockerd" | "moby" => Ok(Target::Dockerd),
            other => Err(format!(
                "unknown target {other:?} (want embedded, buildkitd or dockerd)"
            )),
        }
    }
}

/// What lowering needs to know besides the environment.
#[derive(Debug, Clone)]
pub struct LowerOptions {
    /// Absolute build-context directory (goes into the `build.context` label).
    pub context_dir: PathBuf,
    /// envd's environment name: the basename of the build context.
    pub env_name: String,
    /// uid and gid for chowned files (`config.owner`, else the host user).
    pub owner: (u32, u32),
    /// Target platform of the ops.
    pub platform: Platform,
    /// The BuildKit the graph is for.
    pub target: Target,
    /// Dev environments: the public SSH key written to `/var/envd/authorized_keys`, and the
    /// host file it came from (recorded in the graph label, like envd's `PublicKeyPath`).
    pub ssh_public_key: String,
    pub ssh_public_key_path: String,
    /// For a remote BuildKit: the host CA bundle's file name, served as the local source
    /// [`CA_LOCAL`]; every step gets it read-only at [`CA_DIR`] with the variables that point
    /// tools at it (the embedded engine binds the bundle itself).
    pub ca_bundle: Option<String>,
    /// `--use-proxy`: the proxy variables every step gets (`ExecOp.meta.proxy_env`, which
    /// caches leave out of their keys).
    pub proxy_env: Option<crate::pb::ProxyEnv>,
    /// The base image op's resolve mode (`--pull missing`: `local`); `None` as envd's.
    pub base_resolve: Option<crate::llb::ResolveMode>,
}

/// The local source that carries the CA bundle to a remote BuildKit.
pub const CA_LOCAL: &str = "envkit-ca";
/// Where steps of a remote build find it.
pub const CA_DIR: &str = "/run/envkit-ca";

/// The result: the marshalled graph and the image config decisions.
#[derive(Debug, Clone)]
pub struct Lowered {
    pub definition: llb::Definition,
    pub image: ImageSpec,
}

/// Lowers `env` on top of a base image whose config is `base`.
pub fn lower(
    env: &Environment,
    base: &BaseImage,
    opts: &LowerOptions,
) -> Result<Lowered, LowerError> {
    env.validate()?;
    let mut c = Compiler::new(env, base, opts);

    let base_state = c.base_state();
    let mut apt_mirror = c.apt_source(base_state.clone());
    if env.dev {
        apt_mirror = c.dev_prelude(apt_mirror);
    }
    let system_packages = c.system_packages(apt_mirror.clone());
    let language = if opts.target.merge_op() {
        let lang = c.languages(apt_mirror)?;
        llb::merge(
            &[
                base_state.clone(),
                llb::diff(
                    &base_state,
                    &system_packages,
                    named("[internal] install system packages"),
                ),
                llb::diff(&base_state, &lang, named("[internal] prepare language")),
            ],
            named("[internal] language environment and system packages"),
        )
    } else {
        c.languages(system_packages)?
    };
    let packages = c.language_packages(language)?;
    let source = c.extra_source(packages);
    let copied = c.copies(source);
    let mut agent = c.agents(copied);
    if env.dev {
        agent = c.dev_post(agent)?;
    }
    let run = c.run_groups(agent);
    let head = c.mount_dirs(run);

    let exec_extra = match (&opts.ca_bundle, opts.target) {
        (Some(file), Target::Buildkitd | Target::Dockerd) => Some(llb::ExecExtra {
            source: llb::local(
                CA_LOCAL,
                llb::LocalOptions {
                    include_patterns: vec![file.clone()],
                    ..Default::default()
                },
            ),
            target: CA_DIR.to_string(),
            env: rootless::CA_BUNDLE_ENV
                .iter()
                .map(|k| format!("{k}={CA_DIR}/{file}"))
                .collect(),
        }),
        _ => None,
    };
    let definition = head.marshal(&MarshalOptions {
        platform: opts.platform.clone(),
        local_unique_id: local_unique_id(opts),
        worker_constraints: Vec::new(),
        exec_extra,
        proxy_env: opts.proxy_env.clone(),
    })?;
    let image = c.image_spec();
    Ok(Lowered { definition, image })
}

/// The image the environment is built on: the base image, or NVIDIA's CUDA image for it with
/// `install.cuda` (whose config the caller must fetch).
pub fn base_image_ref(env: &Environment) -> String {
    match &env.cuda {
        Some(cuda) => cuda_image(&env.image, cuda, &env.cudnn, env.dev),
        None => env.image.clone(),
    }
}

/// `local.unique` for the build context: derived from its path, so one project always gives
/// the same graph (the Go client uses a random id per marshal).
fn local_unique_id(opts: &LowerOptions) -> String {
    let digest = crate::content::sha256_hex(opts.context_dir.as_os_str().as_encoded_bytes());
    format!("envkit-{}", &digest[..16])
}

fn named(name: impl Into<String>) -> Constraints {
    Constraints::new().custom_name(name)
}

/// The compile state: envd's graph fields that compiling changes (the image, the runtime
/// environment and PATH list, the directories the dev user must own, the pip groups).
pub(crate) struct Compiler<'a> {
    env: &'a Environment,
    opts: &'a LowerOptions,
    base: &'a BaseImage,
    /// The base image (NVIDIA's CUDA image with `install.cuda`).
    image: String,
    /// envd's `RuntimeEnviron`: base image `ENV`s over `runtime.environ`, plus what
    /// installers add.
    environ: BTreeMap<String, String>,
    /// envd's `RuntimeEnvPaths`: the default PATH, `extra_path`, the base image's PATH entries,
    /// then what installers add.
    paths: Vec<String>,
    /// envd's `UserDirectories` (chowned to the dev user).
    user_dirs: Vec<String>,
    /// envd's `PyPIPackages` after `config.jupyter` added `jupyter`.
    pypi: Vec<Vec<String>>,
    /// envd's `User` for dev environments: `envd` once the dev user took over (uid ≠ 0).
    dev_user: Option<String>,
    /// `config.jupyter`'s token; envd rewrites an empty one to `''` when it writes the
    /// service (dev), and its graph label shows the rewritten value.
    jupyter_token: Option<String>,
}

impl<'a> Compiler<'a> {
    /// envd's `compileBaseImage` bookkeeping: the image, and the runtime environment after the
    /// base image's config was read (every base `ENV` over `runtime.environ`; new PATH entries
    /// of the base appended, deduplicated).
    fn new(env: &'a Environment, base: &'a BaseImage, opts: &'a LowerOptions) -> Compiler<'a> {
        let image = base_image_ref(env);
        let mut environ = env.environ.clone();
        let mut paths: Vec<String> = ir::DEFAULT_PATH.split(':').map(str::to_string).collect();
        paths.extend(env.extra_path.iter().cloned());
        for entry in &base.env {
            let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            environ.insert(k.to_string(), v.to_string());
            if k == "PATH" {
                for p in v.split(':') {
                    if !paths.iter().any(|x| x == p) {
                        paths.push(p.to_string());
                    }
                }
            }
        }
        let mut pypi = env.python_packages.clone();
        if env.jupyter.is_some() {
            pypi.push(vec!["jupyter".to_string()]);
        }
        Compiler {
            env,
            opts,
            base,
            image,
            environ,
            paths,
            user_dirs: Vec::new(),
            pypi,
            dev_user: None,
            jupyter_token: env.jupyter.as_ref().map(|j| j.token.clone()),
        }
    }

    /// `/home/envd/<env name>`: the cwd of `run()` groups, even for non-dev images.
    fn working_dir(&self) -> String {
        format!("{ENVD_HOME}/{}", self.opts.env_name)
    }

    /// envd's cache mount id: `<path>/<env name>-cpu`, `-gpu` with CUDA.
    fn cache_id(&self, path: &str) -> String {
        let kind = if self.env.cuda.is_some() {
            "gpu"
        } else {
            "cpu"
        };
        format!("{path}/{}-{kind}", self.opts.env_name)
    }

    fn chown(&self) -> Chown {
        Chown::ids(self.opts.owner.0, self.opts.owner.1)
    }

    /// envd's `updateEnvPath`: appends to the PATH list and sets PATH on the state to all of it.
    fn update_env_path(&mut self, root: State, path: &str) -> State {
        self.paths.push(path.to_string());
        root.add_env("PATH", &self.paths.join(":"))
    }
}

/// NVIDIA's image for `install.cuda`: `docker.io/nvidia/cuda:<cuda>-cudnn<cudnn>-<devel|runtime>-<image without ':'>`.
fn cuda_image(image: &str, cuda: &str, cudnn: &str, dev: bool) -> String {
    let target = if dev { "devel" } else { "runtime" };
    let tag = image.replacen(':', "", 1);
    format!("docker.io/nvidia/cuda:{cuda}-cudnn{cudnn}-{target}-{tag}")
}

/// The build context as envd declares it: `llb.Local("build-context")` without options.
fn context_local() -> State {
    llb::local(CONTEXT_LOCAL, Default::default())
}

//! The compile pipeline: a build file → IR (frontend) → the base image's config (registry)
//! → LLB (lower). What comes out, [`Compiled`], is all an engine or a remote BuildKit needs:
//! the Definition, the image spec and the local sources it reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use thiserror::Error;

use crate::config;
use crate::frontend::{self, FrontendError};
use crate::lower::{self, LowerError};
use crate::platform::Platform;
use crate::registry::{Registry, RegistryError, Resolved};

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("build context {}: {source}", path.display())]
    Context {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("build context {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    // Not transparent: the CLI finds the frontend error in the chain and shows its caret.
    #[error("{0}")]
    Frontend(#[from] FrontendError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error("{0}")]
    SshKey(String),
    #[error("invalid image name {name:?}: {source}")]
    ImageName { name: String, source: RegistryError },
}

/// What to compile.
#[derive(Debug, Clone)]
pub struct Request {
    /// The build context directory.
    pub context: PathBuf,
    /// The build file and function, `file[:func]`.
    pub from: String,
    pub target: lower::Target,
    /// The path of the CA bundle steps get (`[worker] ca-bundle`), for the lowering.
    pub ca_bundle: Option<String>,
    pub platform: Platform,
}

/// A build file compiled to LLB, with what the exporter needs to know.
pub struct Compiled {
    pub context_dir: PathBuf,
    pub env_name: String,
    pub lowered: lower::Lowered,
    pub env: crate::ir::Environment,
    /// The base image's config (what a remote BuildKit's image config starts from).
    pub base_config: ImageConfiguration,
    pub base_layers: Vec<oci_spec::image::Descriptor>,
}

impl Compiled {
    /// The local sources its Definition reads: the build context.
    pub fn locals(&self) -> BTreeMap<String, PathBuf> {
        let mut locals = BTreeMap::new();
        locals.insert(lower::CONTEXT_LOCAL.to_string(), self.context_dir.clone());
        locals
    }

    /// The image's full name: `tag`, else `<env name>:dev` as envd names it.
    pub fn image_name(&self, tag: Option<&String>) -> Result<String, CompileError> {
        full_name(
            &tag.cloned()
                .unwrap_or_else(|| format!("{}:dev", self.env_name)),
        )
    }
}

/// frontend → IR → (base image config from the registry) → lower.
pub async fn compile(req: &Request, registry: &Registry) -> Result<Compiled, CompileError> {
    let context_dir =
        std::fs::canonicalize(&req.context).map_err(|source| CompileError::Context {
            path: req.context.clone(),
            source,
        })?;
    if !context_dir.is_dir() {
        return Err(CompileError::NotADirectory(context_dir));
    }
    let env_name = context_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "envkit".to_string());
    let (file, func) = frontend::parse_from(&req.from)?;
    let env = frontend::evaluate(&context_dir, &file, &func)?;
    let base = registry
        .resolve_for(&lower::base_image_ref(&env), &req.platform)
        .await?;
    let owner = env.owner.unwrap_or_else(|| {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        (uid, gid)
    });
    let mut opts = lower::LowerOptions {
        context_dir: context_dir.clone(),
        env_name: env_name.clone(),
        owner,
        platform: req.platform.clone(),
        target: req.target,
        ssh_public_key: String::new(),
        ssh_public_key_path: String::new(),
        ca_bundle: req.ca_bundle.clone(),
    };
    if env.dev {
        let (path, key) = ssh_public_key()?;
        opts.ssh_public_key = key;
        opts.ssh_public_key_path = path.display().to_string();
    }
    let lowered = lower::lower(&env, &base_image(&base), &opts)?;
    Ok(Compiled {
        context_dir,
        env_name,
        lowered,
        env,
        base_config: base.config.clone(),
        base_layers: base.layers.clone(),
    })
}

/// The public key dev environments authorise for envd-sshd: envd's own key
/// (`~/.config/envd/id_rsa_envd.pub`) when the user has one, else envkit's
/// (`$XDG_CONFIG_HOME/envkit/id_envkit.pub`), made with `ssh-keygen` the first time.
fn ssh_public_key() -> Result<(PathBuf, String), CompileError> {
    if let Some(h) = config::home() {
        let envd = h.join(".config/envd/id_rsa_envd.pub");
        if let Ok(key) = std::fs::read_to_string(&envd) {
            return Ok((envd, key));
        }
    }
    let fail = |m: String| CompileError::SshKey(m);
    let dir = config::config_dir()
        .ok_or_else(|| fail("finding envkit's config directory: no HOME".into()))?;
    let private = dir.join("id_envkit");
    let public = dir.join("id_envkit.pub");
    if let Ok(key) = std::fs::read_to_string(&public) {
        return Ok((public, key));
    }
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "envkit", "-f"])
        .arg(&private)
        .output()
        .map_err(|e| {
            fail(format!(
                "a dev environment needs an SSH key pair and `ssh-keygen` could not be run \
                 (install openssh-client, or create ~/.config/envd/id_rsa_envd.pub): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(fail(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let key = std::fs::read_to_string(&public)
        .map_err(|e| fail(format!("reading {}: {e}", public.display())))?;
    Ok((public, key))
}

/// A tag as a full reference (`app:dev` → `docker.io/library/app:dev`), like envd and docker.
pub fn full_name(tag: &str) -> Result<String, CompileError> {
    let r = crate::registry::normalize(&tag.to_ascii_lowercase()).map_err(|source| {
        CompileError::ImageName {
            name: tag.to_string(),
            source,
        }
    })?;
    Ok(r.to_string())
}

/// The parts of the base image's config that lowering needs.
fn base_image(r: &Resolved) -> lower::BaseImage {
    let cfg = r.config.config().as_ref();
    lower::BaseImage {
        env: cfg.and_then(|c| c.env().clone()).unwrap_or_default(),
        entrypoint: cfg.and_then(|c| c.entrypoint().clone()),
        cmd: cfg.and_then(|c| c.cmd().clone()),
        user: cfg.and_then(|c| c.user().clone()).filter(|u| !u.is_empty()),
        working_dir: cfg
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty()),
    }
}

/// A [`Request`] for `context` and `from` with this machine's platform.
pub fn request(context: &Path, from: &str, target: lower::Target) -> Request {
    Request {
        context: context.to_path_buf(),
        from: from.to_string(),
        target,
        ca_bundle: None,
        platform: Platform::host(),
    }
}

//! The intermediate representation: a plain, typed description of one environment.
//!
//! The frontend records into an [`Environment`] while a `build.envd` runs; `lower` turns it into
//! LLB. Nothing here knows Starlark or LLB. Field meanings follow envd v1's graph (see
//! `ENVD_API.md` §1–§5): where a builtin "appends", the field is a list; where the last call
//! wins, it is a plain value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// envd's default base image when `base()` names none.
pub const DEFAULT_IMAGE: &str = "ubuntu:22.04";

/// envd's default cuDNN major version for `install.cuda`.
pub const DEFAULT_CUDNN: &str = "8";

/// envd's default Python version (`install.python`, `install.uv`).
pub const DEFAULT_PYTHON: &str = "3.11";

/// BuildKit's default PATH for Unix containers; envd starts its runtime PATH from it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One `io.copy(...)` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Path inside the build context, or inside `image` when set.
    pub source: String,
    /// Absolute path in the environment.
    pub target: String,
    /// Copy from this image instead of the build context.
    pub image: Option<String>,
}

/// One `run(commands=[...])` call: becomes one exec step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunGroup {
    pub commands: Vec<String>,
    pub mount_host: bool,
}

/// `config.pip_index(...)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipIndex {
    pub url: String,
    pub extra_url: String,
    pub trust: bool,
}

/// A language an `install.<lang>()` call asked for, in call order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LanguageName {
    Python,
    R,
    Julia,
    Rust,
    Go,
    NodeJs,
}

impl LanguageName {
    /// envd's name for it (`ir.Language.Name`).
    pub fn as_str(self) -> &'static str {
        match self {
            LanguageName::Python => "python",
            LanguageName::R => "r",
            LanguageName::Julia => "julia",
            LanguageName::Rust => "rust",
            LanguageName::Go => "go",
            LanguageName::NodeJs => "nodejs",
        }
    }
}

/// One `install.<lang>(version=...)` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Language {
    pub name: LanguageName,
    /// As given; `None` where envd records no version (r, julia, and rust/go/nodejs without one).
    pub version: Option<String>,
}

/// `install.conda(...)` and what `install.conda_packages` / `config.conda_channel` add to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CondaConfig {
    pub use_micromamba: bool,
    pub packages: Vec<String>,
    pub channels: Vec<String>,
    /// `env_file=`: the last `install.conda_packages` call's value, even when empty.
    pub env_file: String,
    /// `config.conda_channel`: the full `.condarc` text.
    pub channel: Option<String>,
}

/// `install.uv(python_version=...)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UvConfig {
    pub python_version: String,
}

/// `install.pixi(...)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixiConfig {
    pub use_pixi_mirror: bool,
    pub pypi_index: Option<String>,
}

/// `git_config(...)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitConfig {
    pub name: String,
    pub email: String,
    pub editor: String,
}

/// `config.jupyter(...)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JupyterConfig {
    pub token: String,
    /// Host port chosen at `up` (0: a free one). Inside the environment it is always 8888.
    pub port: i64,
}

/// One `io.http(...)` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSource {
    pub url: String,
    /// `sha256:<hex>` (or another algorithm go-digest knows), validated by the frontend.
    pub checksum: Option<String>,
    pub filename: String,
}

/// One `runtime.expose(...)` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expose {
    pub envd_port: u16,
    pub host_port: u16,
    pub service: String,
    pub listen_addr: String,
}

/// One `runtime.mount(...)` call, with `~` already expanded on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountDir {
    pub host_path: String,
    pub envd_path: String,
}

/// A VS Code extension, `publisher.extension[-version]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VscodePlugin {
    pub publisher: String,
    pub extension: String,
    pub version: Option<String>,
}

impl VscodePlugin {
    /// envd's parsing (`vscode.ParsePlugin`): the publisher is what precedes the first `.`;
    /// the text after the last `-` is a version only when it starts with a digit.
    pub fn parse(p: &str) -> Result<VscodePlugin, IrError> {
        let Some((publisher, rest)) = p.split_once('.') else {
            return Err(IrError::InvalidPublisher(p.to_string()));
        };
        if publisher.is_empty() || rest.is_empty() {
            return Err(IrError::InvalidPublisher(p.to_string()));
        }
        let (extension, version) = match rest.rsplit_once('-') {
            Some((ext, ver)) if ver.starts_with(|c: char| c.is_ascii_digit()) => {
                (ext.to_string(), Some(ver.to_string()))
            }
            _ => (rest.to_string(), None),
        };
        Ok(VscodePlugin {
            publisher: publisher.to_string(),
            extension,
            version,
        })
    }
}

/// A code agent (`install.codex`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeAgent {
    pub name: String,
    pub version: Option<String>,
}

/// `config.repo(...)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    pub url: String,
    pub description: String,
}

/// Everything a build file said about the environment, in envd's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Base image reference as written (`python:3.11-slim`); normalised when lowered.
    pub image: String,
    /// `base(dev=True)`: the development-environment graph.
    pub dev: bool,
    /// `shell(name)`, lower-cased. Only matters in dev mode.
    pub shell: String,
    /// `install.<lang>()` calls, in call order.
    pub languages: Vec<Language>,
    /// `install.conda`.
    pub conda: Option<CondaConfig>,
    /// `install.uv`.
    pub uv: Option<UvConfig>,
    /// `install.pixi`.
    pub pixi: Option<PixiConfig>,
    /// `install.apt_packages`: all calls in one flat list.
    pub apt_packages: Vec<String>,
    /// `install.python_packages(name=...)`: one group per call, each its own pip run.
    pub python_packages: Vec<Vec<String>>,
    /// `install.python_packages(requirements=...)`: path in the build context; last wins.
    pub requirements_file: Option<String>,
    /// `install.python_packages(local_wheels=...)`: accumulate.
    pub local_wheels: Vec<String>,
    /// `install.r_packages`: one group per call.
    pub r_packages: Vec<Vec<String>>,
    /// `install.julia_packages`: one group per call.
    pub julia_packages: Vec<Vec<String>>,
    /// `install.cuda(version)`: replaces the base image with NVIDIA's.
    pub cuda: Option<String>,
    /// `install.cuda(cudnn=)`, default `8`.
    pub cudnn: String,
    /// `install.vscode_extensions`.
    pub vscode_plugins: Vec<VscodePlugin>,
    /// `install.codex` and other code agents.
    pub code_agents: Vec<CodeAgent>,
    /// `config.pip_index`.
    pub pip_index: Option<PipIndex>,
    /// `config.apt_source`: the full text of /etc/apt/sources.list.
    pub apt_source: Option<String>,
    /// `config.cran_mirror` (recorded even when empty, like envd).
    pub cran_mirror: Option<String>,
    /// `config.julia_pkg_server` (recorded; envd v1 never uses it when compiling).
    pub julia_pkg_server: Option<String>,
    /// `config.jupyter`.
    pub jupyter: Option<JupyterConfig>,
    /// `config.rstudio_server()`.
    pub rstudio_server: bool,
    /// `config.gpu(count)`: used when the environment is started.
    pub num_gpus: i64,
    /// `config.shm_size(size)` in MB: used when the environment is started.
    pub shm_size: i64,
    /// `config.repo`.
    pub repo: Repo,
    /// `git_config(...)`.
    pub git_config: Option<GitConfig>,
    /// `io.copy` calls, in call order.
    pub copies: Vec<Copy>,
    /// `io.http` calls, in call order.
    pub http: Vec<HttpSource>,
    /// `runtime.environ(env=...)`, merged over calls.
    pub environ: BTreeMap<String, String>,
    /// `runtime.environ(extra_path=...)`, appended over calls.
    pub extra_path: Vec<String>,
    /// `runtime.command(commands=...)`, merged over calls.
    pub runtime_commands: BTreeMap<String, String>,
    /// `runtime.daemon(commands=...)`: one argv per daemon.
    pub runtime_daemon: Vec<Vec<String>>,
    /// `runtime.init(commands=...)`: one group per call (even an empty one).
    pub runtime_init: Vec<Vec<String>>,
    /// `runtime.expose(...)`.
    pub runtime_expose: Vec<Expose>,
    /// `runtime.mount(...)`.
    pub mounts: Vec<MountDir>,
    /// `run(...)` groups, in call order.
    pub run: Vec<RunGroup>,
    /// `config.entrypoint(args)`: appended over calls.
    pub entrypoint: Vec<String>,
    /// Owner of copied files and the dev user: `config.owner`, else the host user.
    pub owner: Option<(u32, u32)>,
}

impl Default for Environment {
    fn default() -> Self {
        Environment {
            image: DEFAULT_IMAGE.to_string(),
            dev: false,
            shell: "bash".to_string(),
            languages: Vec::new(),
            conda: None,
            uv: None,
            pixi: None,
            apt_packages: Vec::new(),
            python_packages: Vec::new(),
            requirements_file: None,
            local_wheels: Vec::new(),
            r_packages: Vec::new(),
            julia_packages: Vec::new(),
            cuda: None,
            cudnn: DEFAULT_CUDNN.to_string(),
            vscode_plugins: Vec::new(),
            code_agents: Vec::new(),
            pip_index: None,
            apt_source: None,
            cran_mirror: None,
            julia_pkg_server: None,
            jupyter: None,
            rstudio_server: false,
            num_gpus: 0,
            shm_size: 0,
            repo: Repo::default(),
            git_config: None,
            copies: Vec::new(),
            http: Vec::new(),
            environ: BTreeMap::new(),
            extra_path: Vec::new(),
            runtime_commands: BTreeMap::new(),
            runtime_daemon: Vec::new(),
            runtime_init: Vec::new(),
            runtime_expose: Vec::new(),
            mounts: Vec::new(),
            run: Vec::new(),
            entrypoint: Vec::new(),
            owner: None,
        }
    }
}

/// A graph that the frontend accepted but that cannot be built as a whole.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IrError {
    #[error("`config.entrypoint` is only for custom image, maybe you need `runtime.init`")]
    EntrypointInDevMode,
    #[error(
        "io.copy target is empty (give a path: an absolute one, or one relative to the working directory)"
    )]
    EmptyCopyTarget,
    #[error("invalid publisher in VS Code extension {0:?} (want `publisher.extension[-version]`)")]
    InvalidPublisher(String),
    #[error("python version {0} is not supported")]
    PythonVersion(String),
}

impl Environment {
    /// Checks the rules that span several builtins (the per-call checks live in the frontend).
    pub fn validate(&self) -> Result<(), IrError> {
        if self.dev && !self.entrypoint.is_empty() {
            return Err(IrError::EntrypointInDevMode);
        }
        for c in &self.copies {
            if c.target.is_empty() {
                return Err(IrError::EmptyCopyTarget);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_envd() {
        let env = Environment::default();
        assert_eq!(env.image, "ubuntu:22.04");
        assert_eq!(env.shell, "bash");
        assert!(!env.dev);
        assert!(env.validate().is_ok());
    }

    #[test]
    fn entrypoint_is_refused_in_dev_mode() {
        let env = Environment {
            dev: true,
            entrypoint: vec!["python3".into()],
            ..Environment::default()
        };
        assert_eq!(env.validate(), Err(IrError::EntrypointInDevMode));
    }

    #[test]
    fn a_copy_target_may_be_relative_but_not_empty() {
        let mut env = Environment {
            copies: vec![Copy {
                source: "a".into(),
                target: "opt/a".into(),
                image: None,
            }],
            ..Environment::default()
        };
        assert_eq!(env.validate(), Ok(()));
        env.copies[0].target.clear();
        assert_eq!(env.validate(), Err(IrError::EmptyCopyTarget));
    }
}

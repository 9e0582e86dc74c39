//! The intermediate representation: a plain, typed description of one environment.
//!
//! The frontend records into an [`Environment`] while a `build.envd` runs; `lower` turns it into
//! LLB. Nothing here knows Starlark or LLB. Field meanings follow envd v1's graph (see
//! `ENVD_API.md` §1–§5): where a builtin "appends", the field is a list; where the last call
//! wins, it is a plain value.

use std::collections::BTreeMap;

use thiserror::Error;

/// envd's default base image when `base()` names none.
pub const DEFAULT_IMAGE: &str = "ubuntu:22.04";

/// BuildKit's default PATH for Unix containers; envd starts its runtime PATH from it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One `io.copy(...)` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Path inside the build context, or inside `image` when set.
    pub source: String,
    /// Absolute path in the environment.
    pub target: String,
    /// Copy from this image instead of the build context.
    pub image: Option<String>,
}

/// One `run(commands=[...])` call: becomes one exec step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunGroup {
    pub commands: Vec<String>,
    pub mount_host: bool,
}

/// `config.pip_index(...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipIndex {
    pub url: String,
    pub extra_url: String,
    pub trust: bool,
}

/// Everything a build file said about the environment, in envd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Base image reference as written (`python:3.11-slim`); normalised when lowered.
    pub image: String,
    /// `base(dev=True)`: the development-environment graph.
    pub dev: bool,
    /// `shell(name)`, lower-cased. Only matters in dev mode.
    pub shell: String,
    /// `install.apt_packages`: all calls in one flat list.
    pub apt_packages: Vec<String>,
    /// `install.python_packages(name=...)`: one group per call, each its own pip run.
    pub python_packages: Vec<Vec<String>>,
    /// `install.python_packages(requirements=...)`: path in the build context; last wins.
    pub requirements_file: Option<String>,
    /// `install.python_packages(local_wheels=...)`: accumulate.
    pub local_wheels: Vec<String>,
    /// `config.pip_index`.
    pub pip_index: Option<PipIndex>,
    /// `config.apt_source`: the full text of /etc/apt/sources.list.
    pub apt_source: Option<String>,
    /// `io.copy` calls, in call order.
    pub copies: Vec<Copy>,
    /// `runtime.environ(env=...)`, merged over calls.
    pub environ: BTreeMap<String, String>,
    /// `runtime.environ(extra_path=...)`, appended over calls.
    pub extra_path: Vec<String>,
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
            apt_packages: Vec::new(),
            python_packages: Vec::new(),
            requirements_file: None,
            local_wheels: Vec::new(),
            pip_index: None,
            apt_source: None,
            copies: Vec::new(),
            environ: BTreeMap::new(),
            extra_path: Vec::new(),
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
    #[error("io.copy target must be an absolute path, got {0:?}")]
    RelativeCopyTarget(String),
}

impl Environment {
    /// Checks the rules that span several builtins (the per-call checks live in the frontend).
    pub fn validate(&self) -> Result<(), IrError> {
        if self.dev && !self.entrypoint.is_empty() {
            return Err(IrError::EntrypointInDevMode);
        }
        for c in &self.copies {
            if !c.target.starts_with('/') {
                return Err(IrError::RelativeCopyTarget(c.target.clone()));
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
    fn copy_target_must_be_absolute() {
        let env = Environment {
            copies: vec![Copy {
                source: "a".into(),
                target: "opt/a".into(),
                image: None,
            }],
            ..Environment::default()
        };
        assert!(matches!(
            env.validate(),
            Err(IrError::RelativeCopyTarget(_))
        ));
    }
}

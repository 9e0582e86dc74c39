//! Files a build file brings in: `load()` of local files, `include()` of a git repository of
//! `.envd` files, and the per-user `config.envd` prelude. All of them run with the same
//! builtins and record into the same environment, as in envd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use starlark::environment::FrozenModule;
use starlark::environment::Module;
use starlark::eval::Evaluator;
use starlark::eval::FileLoader;
use starlark::values::OwnedFrozenValue;

use super::builtins::Recorder;
use super::error::{Diagnostic, FrontendError};
use super::program::{BadCalls, from_starlark, parse_checked};

/// How an evaluation finds the user's files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Files whose top level runs before the build file (the user's `config.envd`).
    pub prelude: Vec<PathBuf>,
    /// envkit's cache directory: `data.envd()` directories (`<cache>/data/<name>`) and
    /// `include()`d repositories (`<cache>/envdlib/`). `None`: neither can be used.
    pub cache_dir: Option<PathBuf>,
}

impl Options {
    /// The running user's: [`user_config_files`] and `$XDG_CACHE_HOME/envkit`
    /// (default `~/.cache/envkit`).
    pub fn for_user() -> Options {
        Options {
            prelude: user_config_files(),
            cache_dir: crate::config::cache_dir(),
        }
    }

    /// A hermetic evaluation: no prelude, the cache in `dir`.
    pub fn hermetic(cache_dir: &Path) -> Options {
        Options {
            prelude: Vec::new(),
            cache_dir: Some(cache_dir.to_path_buf()),
        }
    }
}

/// The cache directory, or why there is none.
pub(crate) fn cache_dir(dir: &Option<PathBuf>) -> Result<&Path, String> {
    dir.as_deref()
        .ok_or_else(|| "cannot find envkit's cache directory: HOME is not set".to_string())
}

fn diag(message: impl Into<String>) -> Box<Diagnostic> {
    Box::new(Diagnostic::new(message, None))
}

/// What `include()` can fail with: a message for the call site, or an error inside one of the
/// repository's files (which carries its own location).
pub(crate) enum IncludeError {
    Message(String),
    Eval(FrontendError),
}

impl Recorder {
    /// Runs the top level of the file at `path` as a module of its own, recording into this
    /// evaluation's environment, and freezes it.
    pub(crate) fn exec_module(&self, path: &Path) -> Result<FrozenModule, FrontendError> {
        let shown = path.display().to_string();
        let source = self
            .trace
            .read_to_string(path)
            .map_err(|e| FrontendError::Read(diag(format!("cannot read `{shown}`: {e}"))))?;
        let (ast, _bindings, bad_calls) = parse_checked(&shown, source)?;
        Module::with_temp_heap(|module| {
            {
                let mut eval = Evaluator::new(&module);
                eval.extra = Some(self);
                eval.set_loader(self);
                eval.set_print_handler(&self.trace);
                eval.eval_module(ast, &self.globals)
                    .map_err(|e| self.failure_or(e, &bad_calls))?;
            }
            module.freeze().map_err(|e| {
                FrontendError::Runtime(diag(format!("cannot freeze module `{shown}`: {e:?}")))
            })
        })
    }

    /// The error to report for a starlark error: a failure recorded by a nested load or
    /// include (it has the better location), else the error itself.
    pub(crate) fn failure_or(&self, e: starlark::Error, bad_calls: &BadCalls) -> FrontendError {
        self.failure
            .borrow_mut()
            .take()
            .unwrap_or_else(|| from_starlark(e, None, bad_calls))
    }

    /// Keeps the first (innermost) failure of a nested module; returns the error to hand back
    /// to starlark, which only needs to stop the evaluation.
    pub(crate) fn fail_nested(&self, e: FrontendError) -> starlark::Error {
        let mut f = self.failure.borrow_mut();
        let text = e.message().to_string();
        if f.is_none() {
            *f = Some(e);
        }
        starlark::Error::new_native(super::error::BuiltinError::Invalid(text))
    }

    /// Where `load("x")` finds `x`: as given (relative to the current directory, like envd),
    /// else relative to the build context.
    fn resolve_load(&self, module: &str) -> Option<PathBuf> {
        let direct = PathBuf::from(module);
        if self.trace.is_file(&direct) {
            return Some(direct);
        }
        let in_context = Path::new(&self.context_abs).join(module);
        self.trace.is_file(&in_context).then_some(in_context)
    }

    /// `include(git)`: every `.envd` file of the repository (in walk order), their public
    /// globals merged into one namespace. A name defined twice is an error.
    pub(crate) fn include(
        &self,
        git: &str,
    ) -> Result<Vec<(String, OwnedFrozenValue)>, IncludeError> {
        // A repository (fetched, or a directory walked) is more than the memo of
        // evaluations can check again.
        self.trace.opaque();
        if let Some(hit) = self.includes.borrow().get(git) {
            return Ok(hit.clone());
        }
        if git.is_empty() {
            return Err(IncludeError::Message(
                "include: `git` is required (a repository URL or a local path)".into(),
            ));
        }
        let in_context = Path::new(&self.context_abs).join(git);
        let repo = if !git.contains("://") && !Path::new(git).is_dir() && in_context.is_dir() {
            // A relative directory in the build context (envd resolves it against the
            // current directory only).
            in_context
        } else {
            let cache = cache_dir(&self.cache_dir).map_err(IncludeError::Message)?;
            fetch_repo(git, &cache.join("envdlib")).map_err(IncludeError::Message)?
        };
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(&repo)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.file_name() != ".git")
        {
            let entry = entry.map_err(|e| IncludeError::Message(format!("reading {git}: {e}")))?;
            if entry.file_type().is_file() && entry.file_name().to_string_lossy().ends_with(".envd")
            {
                files.push(entry.into_path());
            }
        }
        let mut members: BTreeMap<String, OwnedFrozenValue> = BTreeMap::new();
        for f in &files {
            let module = self.exec_module(f).map_err(IncludeError::Eval)?;
            for name in module.names() {
                let name = name.as_str().to_string();
                if name.starts_with('_') {
                    continue;
                }
                if members.contains_key(&name) {
                    return Err(IncludeError::Message(format!(
                        "found duplicated object name: {name} in {}",
                        repo.display()
                    )));
                }
                let value = module.get(&name).map_err(|e| {
                    IncludeError::Message(format!("{name} in {}: {e}", f.display()))
                })?;
                members.insert(name, value);
            }
        }
        let members: Vec<(String, OwnedFrozenValue)> = members.into_iter().collect();
        self.includes
            .borrow_mut()
            .insert(git.to_string(), members.clone());
        Ok(members)
    }
}

impl FileLoader for Recorder {
    fn load(&self, path: &str) -> starlark::Result<FrozenModule> {
        let cached = self.modules.borrow().get(path).cloned();
        match cached {
            Some(Some(m)) => return Ok(m),
            Some(None) => {
                return Err(self.fail_nested(FrontendError::Invalid(diag(format!(
                    "Detected cycle import during parsing {path}"
                )))));
            }
            None => {}
        }
        let Some(file) = self.resolve_load(path) else {
            return Err(super::builtins::invalid(format!(
                "load: cannot find `{path}` (looked relative to the current directory and to the build context {})",
                self.context_abs
            )));
        };
        self.modules.borrow_mut().insert(path.to_string(), None);
        match self.exec_module(&file) {
            Ok(m) => {
                self.modules
                    .borrow_mut()
                    .insert(path.to_string(), Some(m.clone()));
                Ok(m)
            }
            Err(e) => Err(self.fail_nested(e)),
        }
    }
}

/// A local directory is used in place; anything else (a `file://`, `https://` or ssh URL) is
/// cloned with the system `git` into the envdlib cache, or updated there (`git pull`, whose
/// failure is ignored, like envd's).
fn fetch_repo(git: &str, envdlib: &Path) -> Result<PathBuf, String> {
    let local = Path::new(git);
    if !git.contains("://") && local.is_dir() {
        return Ok(local.to_path_buf());
    }
    let dir = envdlib.join(git.replace('/', "_"));
    if dir.join(".git").is_dir() {
        let _ = Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["pull", "--ff-only", "-q"])
            .output();
        return Ok(dir);
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let out = Command::new("git")
        .args(["clone", "-q", "--", git])
        .arg(&dir)
        .output()
        .map_err(|e| format!("include {git}: cannot run git: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "include {git}: git clone failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(dir)
}

/// The per-user prelude files that run before a build file: envd's
/// `~/.config/envd/config.envd`, then envkit's `$XDG_CONFIG_HOME/envkit/config.envd`, each when
/// it exists.
pub fn user_config_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(h) = crate::config::home() {
        out.push(h.join(".config").join("envd").join("config.envd"));
    }
    if let Some(c) = crate::config::config_dir() {
        out.push(c.join("config.envd"));
    }
    out.retain(|p| p.is_file());
    out
}

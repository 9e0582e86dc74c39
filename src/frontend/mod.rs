//! The frontend: evaluates an envd v1 build file (Starlark) and records what it says into an
//! [`Environment`](crate::ir::Environment). Knows nothing of LLB or execution.
//!
//! - [`parse_from`] splits envd's `-f file[:func]` value.
//! - [`evaluate`] runs the file's top level, then the entry function, and returns the validated
//!   environment; any mistake is a [`FrontendError`] that renders like rustc (`error: ...`,
//!   ` --> file:line:col`, the source line and a caret), and nothing is returned to build.
//!
//! `program` holds envd's dialect and the evaluation; `builtins/` one file per namespace.

mod builtins;
mod error;
mod memo;
mod modules;
mod program;

use std::path::Path;

pub use builtins::data::DGL_PATH;
pub use builtins::data::HUGGINGFACE_PATH;
pub use error::Diagnostic;
pub use error::FrontendError;
pub use error::Location;
pub use memo::MemoStore;
pub use modules::{Options, user_config_files};

/// A Markdown reference of every envd builtin envkit implements (from their doc comments).
pub fn builtins_reference() -> String {
    builtins::reference()
}

/// The default `-f` value's file.
pub const DEFAULT_FILE: &str = "build.envd";
/// The default `-f` value's function.
pub const DEFAULT_FUNC: &str = "build";

/// envd's `-f` value: `file[:func]`, default `build.envd:build`. Without `:` the whole value is
/// the file; with one `:`, an empty side keeps its default (`:serving`, `x.envd:`); more than one
/// `:` is an error. An empty value is the default.
pub fn parse_from(spec: &str) -> Result<(String, String), FrontendError> {
    let or = |s: &str, default: &str| {
        if s.is_empty() {
            default.to_string()
        } else {
            s.to_string()
        }
    };
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [file] => Ok((or(file, DEFAULT_FILE), DEFAULT_FUNC.to_string())),
        [file, func] => Ok((or(file, DEFAULT_FILE), or(func, DEFAULT_FUNC))),
        _ => Err(FrontendError::FromSpec(Box::new(Diagnostic::new(
            format!("invalid `-f` value `{spec}`: expected `file[:func]` with at most one `:`"),
            None,
        )))),
    }
}

/// Evaluates the build file (resolved as `<context_dir>/<file>`, else against the current
/// directory, like envd), then calls `func` with no arguments, and returns the recorded
/// environment, checked with [`Environment::validate`](crate::ir::Environment::validate).
/// The user's `config.envd` files ([`user_config_files`]) run first.
pub fn evaluate(
    context_dir: &Path,
    file: &str,
    func: &str,
) -> Result<crate::ir::Environment, FrontendError> {
    program::run(context_dir, file, func, &Options::for_user())
}

/// The environment the memo in `store` holds for `file:func` in `context_dir` (see
/// `memo.rs`), when nothing its evaluation read has changed since; its `print()` lines are
/// printed again. `None`: the file must be evaluated ([`evaluate_traced`]).
pub fn recall(
    context_dir: &Path,
    file: &str,
    func: &str,
    store: &dyn MemoStore,
) -> Option<crate::ir::Environment> {
    let key = memo::key(context_dir, file, func, &Options::for_user())?;
    memo::recall(store, &key)
}

/// An evaluation with what it read, to be kept in a memo ([`Evaluation::keep`]).
#[derive(Debug)]
pub struct Evaluation {
    pub env: crate::ir::Environment,
    key: Option<String>,
    trace: memo::Trace,
}

impl Evaluation {
    /// Keeps the evaluation in `store` for [`recall`] (unless it did something a memo
    /// cannot check again), and returns its environment.
    pub fn keep(self, store: &dyn MemoStore) -> crate::ir::Environment {
        if let Some(k) = &self.key {
            memo::keep(store, k, self.trace, &self.env);
        }
        self.env
    }
}

/// [`evaluate`], traced for the memo of evaluations.
pub fn evaluate_traced(
    context_dir: &Path,
    file: &str,
    func: &str,
) -> Result<Evaluation, FrontendError> {
    let options = Options::for_user();
    let key = memo::key(context_dir, file, func, &options);
    let (env, trace) = program::run_traced(context_dir, file, func, &options)?;
    Ok(Evaluation { env, key, trace })
}

/// Like [`evaluate`], with explicit options (prelude files, cache directory).
pub fn evaluate_with(
    context_dir: &Path,
    file: &str,
    func: &str,
    options: &Options,
) -> Result<crate::ir::Environment, FrontendError> {
    program::run(context_dir, file, func, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(spec: &str) -> Option<(String, String)> {
        parse_from(spec).ok()
    }

    fn pair(a: &str, b: &str) -> Option<(String, String)> {
        Some((a.to_string(), b.to_string()))
    }

    #[test]
    fn from_spec_defaults_like_envd() {
        assert_eq!(from("build.envd:build"), pair("build.envd", "build"));
        assert_eq!(from(""), pair("build.envd", "build"));
        assert_eq!(from("x.envd"), pair("x.envd", "build"));
        assert_eq!(from(":serving"), pair("build.envd", "serving"));
        assert_eq!(from("x.envd:"), pair("x.envd", "build"));
        assert_eq!(from(":"), pair("build.envd", "build"));
        assert_eq!(from("dir/y.envd:gpu"), pair("dir/y.envd", "gpu"));
    }

    #[test]
    fn from_spec_with_two_colons_is_an_error() {
        let err = parse_from("a:b:c");
        assert!(matches!(err, Err(FrontendError::FromSpec(_))), "{err:?}");
        if let Err(e) = err {
            assert!(
                e.to_string()
                    .starts_with("error: invalid `-f` value `a:b:c`")
            );
        }
    }
}

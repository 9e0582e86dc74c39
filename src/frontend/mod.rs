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
mod modules;
mod program;

use std::path::Path;

pub use builtins::data::DGL_PATH;
pub use builtins::data::HUGGINGFACE_PATH;
pub use error::Diagnostic;
pub use error::FrontendError;
pub use error::Location;
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

/// Starts the interpreter's one-time set-up on a thread of its own: the starlark crate
/// parses the documentation of its standard library when the first globals are built, with
/// regexes it compiles then, which takes a few milliseconds, a third of a warm build. Called
/// when a command starts that will evaluate a build file; the evaluation then finds it done
/// (or waits for the part still under way).
pub fn prewarm() {
    let _ = std::thread::Builder::new()
        .name("envkit-prewarm".into())
        .spawn(|| drop(builtins::globals("")));
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

//! envd's v1 builtins. One file per namespace, each with one `register_*` function; builtins
//! only record into the [`Environment`] held by the evaluation's [`Recorder`].
//!
//! Builtins of envd's API that envkit does not implement yet are still defined (so a file using
//! them is not an "unknown name" error) and fail with "`<name>` is not implemented yet in
//! envkit" at the call.

use std::cell::RefCell;

use starlark::any::ProvidesStaticType;
use starlark::codemap::FileSpan;
use starlark::environment::Globals;
use starlark::environment::GlobalsBuilder;
use starlark::environment::LibraryExtension;
use starlark::eval::Evaluator;

use super::error::BuiltinError;
use crate::ir::Environment;

pub mod base;
pub mod config;
pub mod data;
pub mod install;
pub mod io;
pub mod runtime;

/// Per-evaluation state: what the build file has said so far.
#[derive(Debug, Default, ProvidesStaticType)]
pub(crate) struct Recorder {
    pub(crate) env: RefCell<Environment>,
    /// Where `config.entrypoint` was first called, to point at it if the environment is
    /// rejected as a whole (entrypoint in dev mode).
    pub(crate) entrypoint_site: RefCell<Option<FileSpan>>,
}

/// The recorder of this evaluation.
pub(crate) fn recorder<'a>(eval: &Evaluator<'_, 'a, '_>) -> starlark::Result<&'a Recorder> {
    eval.extra
        .and_then(|x| x.downcast_ref::<Recorder>())
        .ok_or_else(|| BuiltinError::NoRecorder.into_starlark())
}

/// Runs `f` on the environment being recorded.
pub(crate) fn record<R>(
    eval: &Evaluator<'_, '_, '_>,
    f: impl FnOnce(&mut Environment) -> R,
) -> starlark::Result<R> {
    let rec = recorder(eval)?;
    let mut env = rec.env.borrow_mut();
    Ok(f(&mut env))
}

/// The error a stub builtin raises.
pub(crate) fn not_implemented(name: &'static str) -> starlark::Error {
    BuiltinError::NotImplemented(name).into_starlark()
}

/// A builtin's own validation failure.
pub(crate) fn invalid(message: impl Into<String>) -> starlark::Error {
    BuiltinError::Invalid(message.into()).into_starlark()
}

/// Defines `#[starlark_module] fn $register` with one stub per name: each accepts any
/// arguments and fails with "`<prefix><name>` is not implemented yet in envkit".
macro_rules! stubs {
    ($register:ident, $prefix:literal, [$($name:ident),* $(,)?]) => {
        #[starlark::starlark_module]
        fn $register(builder: &mut starlark::environment::GlobalsBuilder) {
            $(
                fn $name<'v>(
                    #[starlark(args)] args: starlark::values::tuple::UnpackTuple<
                        starlark::values::Value<'v>,
                    >,
                    #[starlark(kwargs)] kwargs: starlark::values::dict::DictRef<'v>,
                ) -> starlark::Result<starlark::values::none::NoneType> {
                    let _ = (args, kwargs);
                    Err($crate::frontend::builtins::not_implemented(concat!(
                        $prefix,
                        stringify!($name)
                    )))
                }
            )*
        }
    };
}
pub(crate) use stubs;

/// Signatures of the implemented builtins, as the user calls them: used to name the accepted
/// keywords when a call passes an unexpected one.
pub(crate) const SIGNATURES: &[(&str, &[&str])] = &[
    ("base", &["image", "dev"]),
    ("run", &["commands", "mount_host"]),
    ("install.apt_packages", &["name"]),
    (
        "install.python_packages",
        &["name", "requirements", "local_wheels"],
    ),
    ("io.copy", &["source", "target", "image"]),
    ("runtime.environ", &["env", "extra_path"]),
    ("config.pip_index", &["url", "extra_url", "trust"]),
    ("config.apt_source", &["source"]),
    ("config.entrypoint", &["args"]),
];

/// The predeclared names of a build file: Starlark's standard functions plus `print`, the
/// top-level envd builtins, the namespaces, and `_build_context_dir`.
pub(crate) fn globals(build_context_dir: &str) -> Globals {
    let mut builder = GlobalsBuilder::extended_by(&[LibraryExtension::Print]);
    base::register_base(&mut builder);
    builder.namespace("install", install::register_install);
    builder.namespace("config", config::register_config);
    builder.namespace("io", io::register_io);
    builder.namespace("runtime", runtime::register_runtime);
    builder.namespace("data", data::register_data);
    builder.set("_build_context_dir", build_context_dir);
    builder.build()
}

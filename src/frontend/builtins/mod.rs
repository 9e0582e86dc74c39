//! envd's v1 builtins. One file per namespace, each with one `register_*` function; builtins
//! only record into the [`Environment`] held by the evaluation's [`Recorder`].

use std::cell::RefCell;
use std::collections::HashMap;

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

// starlark's `ProvidesStaticType` derive implements an unsafe marker trait: the type lives in a
// module of its own where that is allowed (the crate denies `unsafe` code).
#[allow(unsafe_code)]
mod recorder_type {
    use super::*;

    /// Per-evaluation state: what the build file has said so far, and what every module of the
    /// evaluation shares (the builtins, `load()`ed and `include()`d modules).
    #[derive(ProvidesStaticType)]
    pub(crate) struct Recorder {
        pub(crate) env: RefCell<Environment>,
        /// The build context, absolute (`_build_context_dir`).
        pub(crate) context_abs: String,
        /// The predeclared names every module sees.
        pub(crate) globals: Globals,
        /// `load()`ed modules by the string the file gave (`None` while it is being loaded).
        pub(crate) modules: RefCell<HashMap<String, Option<starlark::environment::FrozenModule>>>,
        /// `include()`d repositories' members, by the `git` argument.
        pub(crate) includes:
            RefCell<HashMap<String, Vec<(String, starlark::values::OwnedFrozenValue)>>>,
        /// envkit's cache directory (`data.envd`, `include`).
        pub(crate) cache_dir: Option<std::path::PathBuf>,
        /// The first error inside a nested module, reported instead of the outer one.
        pub(crate) failure: RefCell<Option<crate::frontend::error::FrontendError>>,
        /// Where `config.entrypoint` was first called, to point at it if the environment is
        /// rejected as a whole (entrypoint in dev mode).
        pub(crate) entrypoint_site: RefCell<Option<FileSpan>>,
        /// What the evaluation read and printed (for the memo of evaluations).
        pub(crate) trace: crate::frontend::memo::Trace,
    }
}
pub(crate) use recorder_type::Recorder;

impl Recorder {
    pub(crate) fn new(
        context_abs: String,
        cache_dir: Option<std::path::PathBuf>,
        trace: crate::frontend::memo::Trace,
    ) -> Recorder {
        let globals = globals(&context_abs);
        Recorder {
            env: RefCell::new(Environment::default()),
            context_abs,
            globals,
            modules: RefCell::new(HashMap::new()),
            includes: RefCell::new(HashMap::new()),
            failure: RefCell::new(None),
            cache_dir,
            entrypoint_site: RefCell::new(None),
            trace,
        }
    }
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

/// A builtin's own validation failure.
pub(crate) fn invalid(message: impl Into<String>) -> starlark::Error {
    BuiltinError::Invalid(message.into()).into_starlark()
}

/// Signatures of the implemented builtins, as the user calls them: used to name the accepted
/// keywords when a call passes an unexpected one.
pub(crate) const SIGNATURES: &[(&str, &[&str])] = &[
    ("base", &["image", "dev"]),
    ("run", &["commands", "mount_host"]),
    ("git_config", &["name", "email", "editor"]),
    ("include", &["git"]),
    ("install.python", &["version"]),
    ("install.conda", &["use_mamba"]),
    ("install.uv", &["python_version"]),
    ("install.pixi", &["use_pixi_mirror", "pypi_index"]),
    ("install.rust", &["version"]),
    ("install.go", &["version"]),
    ("install.nodejs", &["version"]),
    ("install.apt_packages", &["name"]),
    (
        "install.python_packages",
        &["name", "requirements", "local_wheels"],
    ),
    ("install.conda_packages", &["name", "channel", "env_file"]),
    ("install.r_packages", &["name"]),
    ("install.julia_packages", &["name"]),
    ("install.cuda", &["version", "cudnn"]),
    ("install.vscode_extensions", &["name"]),
    ("install.codex", &["version"]),
    ("config.pip_index", &["url", "extra_url", "trust"]),
    ("config.apt_source", &["source"]),
    ("config.cran_mirror", &["url"]),
    ("config.julia_pkg_server", &["url"]),
    ("config.conda_channel", &["channel"]),
    ("config.jupyter", &["token", "port"]),
    ("config.gpu", &["count"]),
    ("config.shm_size", &["size"]),
    ("config.entrypoint", &["args"]),
    ("config.repo", &["url", "description"]),
    ("config.owner", &["uid", "gid"]),
    ("io.copy", &["source", "target", "image"]),
    ("io.http", &["url", "checksum", "filename"]),
    ("runtime.command", &["commands"]),
    ("runtime.daemon", &["commands"]),
    (
        "runtime.expose",
        &["envd_port", "host_port", "service", "listen_addr"],
    ),
    ("runtime.environ", &["env", "extra_path"]),
    ("runtime.mount", &["host_path", "envd_path"]),
    ("runtime.init", &["commands"]),
    ("data.envd", &["name"]),
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

/// The names of envd's top-level builtins (the rest of the globals are Starlark's own).
const TOP_LEVEL: &[&str] = &["base", "shell", "run", "git_config", "include"];
/// envd's namespaces, in the order the reference shows them.
const NAMESPACES: &[&str] = &["install", "config", "io", "runtime", "data"];

/// A Markdown reference of every envd builtin, generated from the builtins' doc comments:
/// one section per builtin with its signature (as Starlark) and description.
pub(crate) fn reference() -> String {
    use starlark::docs::{DocItem, DocMember};
    let docs = globals("/path/to/context").documentation();
    let mut out = String::from(
        "# envd builtins in envkit\n\nGenerated from the builtins' doc comments (`envkit reference builtins`; the test `builtins_reference_is_up_to_date` regenerates this file with `ENVKIT_BLESS=1`).\n",
    );
    let section = |out: &mut String, name: &str, item: &DocItem| {
        if let DocItem::Member(DocMember::Function(f)) = item {
            out.push_str(&format!(
                "\n## `{name}`\n\n```python\n{}\n```\n",
                f.render_as_code(name).trim_end()
            ));
        }
    };
    for name in TOP_LEVEL {
        if let Some(item) = docs.members.get(*name) {
            section(&mut out, name, item);
        }
    }
    for ns in NAMESPACES {
        if let Some(DocItem::Module(m)) = docs.members.get(*ns) {
            for (member, item) in m.members.iter() {
                section(&mut out, &format!("{ns}.{member}"), item);
                if let DocItem::Module(sub) = item {
                    for (leaf, _) in sub.members.iter() {
                        out.push_str(&format!(
                            "\n## `{ns}.{member}.{leaf}`\n\nA string constant.\n"
                        ));
                    }
                }
            }
        }
    }
    out
}

//! `install.*`: `apt_packages` and `python_packages` are implemented; the rest are stubs.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;

use super::record;
use super::stubs;

/// Registers the members of the `install` namespace.
pub fn register_install(builder: &mut GlobalsBuilder) {
    implemented(builder);
    not_yet(builder);
}

#[starlark_module]
fn implemented(builder: &mut GlobalsBuilder) {
    /// `install.apt_packages(name=[])`: all calls go into one flat list.
    fn apt_packages(
        #[starlark(default = UnpackList::default())] name: UnpackList<String>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| env.apt_packages.extend(name.items))?;
        Ok(NoneType)
    }

    /// `install.python_packages(name=[], requirements="", local_wheels=[])`: a non-empty `name`
    /// is one pip group; a non-empty `requirements` replaces the earlier one; wheels accumulate.
    fn python_packages(
        #[starlark(default = UnpackList::default())] name: UnpackList<String>,
        #[starlark(default = "")] requirements: &str,
        #[starlark(default = UnpackList::default())] local_wheels: UnpackList<String>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            if !name.items.is_empty() {
                env.python_packages.push(name.items);
            }
            if !requirements.is_empty() {
                env.requirements_file = Some(requirements.to_string());
            }
            env.local_wheels.extend(local_wheels.items);
        })?;
        Ok(NoneType)
    }
}

stubs!(
    not_yet,
    "install.",
    [
        python,
        conda,
        uv,
        pixi,
        r_lang,
        julia,
        rust,
        go,
        nodejs,
        conda_packages,
        r_packages,
        julia_packages,
        cuda,
        vscode_extensions,
        codex,
    ]
);

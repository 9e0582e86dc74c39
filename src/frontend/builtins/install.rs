//! `install.*`: languages, package managers and packages. Each builtin records what envd's
//! `ir/v1/interface.go` records, with envd's validation.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::Value;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;
use starlark::values::tuple::UnpackTuple;

use super::invalid;
use super::record;
use crate::ir::{CodeAgent, CondaConfig, Language, LanguageName, PixiConfig, UvConfig};
use crate::ir::{DEFAULT_PYTHON, VscodePlugin};

/// Registers the members of the `install` namespace.
pub fn register_install(builder: &mut GlobalsBuilder) {
    languages(builder);
    packages(builder);
}

fn language(name: LanguageName, version: &str) -> Language {
    Language {
        name,
        version: (!version.is_empty()).then(|| version.to_string()),
    }
}

#[starlark_module]
fn languages(builder: &mut GlobalsBuilder) {
    /// `install.python(version="3.11")`: a Python environment at `/opt/conda/envs/envd`
    /// (micromamba, or conda with `install.conda()`). Python 2 is refused.
    fn python(
        #[starlark(default = DEFAULT_PYTHON)] version: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if version.starts_with('2') {
            return Err(invalid("envd doesn't support this Python version"));
        }
        record(eval, |env| {
            env.languages.push(Language {
                name: LanguageName::Python,
                version: Some(version.to_string()),
            })
        })?;
        Ok(NoneType)
    }

    /// `install.conda(use_mamba=False)`: install Python with conda (or micromamba). Replaces
    /// an earlier `install.conda()`, dropping the conda packages recorded before it.
    fn conda(
        #[starlark(default = false)] use_mamba: bool,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.conda = Some(CondaConfig {
                use_micromamba: use_mamba,
                ..CondaConfig::default()
            })
        })?;
        Ok(NoneType)
    }

    /// `install.uv(python_version="3.11")`: the uv package manager and a uv-managed Python.
    fn uv(
        #[starlark(default = DEFAULT_PYTHON)] python_version: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.uv = Some(UvConfig {
                python_version: python_version.to_string(),
            })
        })?;
        Ok(NoneType)
    }

    /// `install.pixi(use_pixi_mirror=False, pypi_index="")`: the pixi package manager.
    fn pixi(
        #[starlark(default = false)] use_pixi_mirror: bool,
        #[starlark(default = "")] pypi_index: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.pixi = Some(PixiConfig {
                use_pixi_mirror,
                pypi_index: (!pypi_index.is_empty()).then(|| pypi_index.to_string()),
            })
        })?;
        Ok(NoneType)
    }

    /// `install.r_lang()`: R from CRAN's apt repository. Arguments are ignored, as in envd.
    fn r_lang<'v>(
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
        #[starlark(kwargs)] kwargs: starlark::values::dict::DictRef<'v>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        let _ = (args, kwargs);
        record(eval, |env| {
            env.languages.push(language(LanguageName::R, ""))
        })?;
        Ok(NoneType)
    }

    /// `install.julia()`: Julia 1.10 in `/opt/julia`. Arguments are ignored, as in envd.
    fn julia<'v>(
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
        #[starlark(kwargs)] kwargs: starlark::values::dict::DictRef<'v>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        let _ = (args, kwargs);
        record(eval, |env| {
            env.languages.push(language(LanguageName::Julia, ""))
        })?;
        Ok(NoneType)
    }

    /// `install.rust(version="")`: Rust through rustup in `/opt/rust`.
    fn rust(
        #[starlark(default = "")] version: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.languages.push(language(LanguageName::Rust, version))
        })?;
        Ok(NoneType)
    }

    /// `install.go(version="")`: Go in `/usr/local/go` (default version 1.25.3).
    fn go(
        #[starlark(default = "")] version: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.languages.push(language(LanguageName::Go, version))
        })?;
        Ok(NoneType)
    }

    /// `install.nodejs(version="")`: Node.js in `/opt/nodejs` (default version 25.1.0).
    fn nodejs(
        #[starlark(default = "")] version: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.languages.push(language(LanguageName::NodeJs, version))
        })?;
        Ok(NoneType)
    }

    /// `install.cuda(version, cudnn="8")`: use NVIDIA's CUDA image
    /// (`nvidia/cuda:<version>-cudnn<cudnn>-<devel|runtime>-<image>`) as the base.
    fn cuda(
        version: &str,
        #[starlark(default = "")] cudnn: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.cuda = Some(version.to_string());
            if !cudnn.is_empty() {
                env.cudnn = cudnn.to_string();
            }
        })?;
        Ok(NoneType)
    }

    /// `install.codex(version="")`: OpenAI's codex CLI in `/usr/bin/codex`.
    fn codex(
        #[starlark(default = "")] version: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.code_agents.push(CodeAgent {
                name: "codex".to_string(),
                version: (!version.is_empty()).then(|| version.to_string()),
            })
        })?;
        Ok(NoneType)
    }
}

#[starlark_module]
fn packages(builder: &mut GlobalsBuilder) {
    /// `install.apt_packages(name=[])`: all calls go into one flat list, installed in one
    /// `apt-get install` step.
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

    /// `install.conda_packages(name=[], channel=[], env_file="")`: needs `install.conda()`
    /// first. `env_file` (an environment file in the build context) excludes `name`/`channel`.
    fn conda_packages(
        #[starlark(default = UnpackList::default())] name: UnpackList<String>,
        #[starlark(default = UnpackList::default())] channel: UnpackList<String>,
        #[starlark(default = "")] env_file: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if !env_file.is_empty() && (!name.items.is_empty() || !channel.items.is_empty()) {
            return Err(invalid("env_file and name/channel are mutually exclusive"));
        }
        let ok = record(eval, |env| match env.conda.as_mut() {
            None => false,
            Some(c) => {
                c.packages.extend(name.items);
                c.channels.extend(channel.items);
                c.env_file = env_file.to_string();
                true
            }
        })?;
        if !ok {
            return Err(invalid(
                "cannot install conda packages when conda is not installed (call `install.conda()` first)",
            ));
        }
        Ok(NoneType)
    }

    /// `install.r_packages(name)`: one `install.packages(...)` step per call.
    fn r_packages(name: UnpackList<String>, eval: &mut Evaluator) -> starlark::Result<NoneType> {
        if name.items.is_empty() {
            return Err(invalid("Can not install empty R package"));
        }
        record(eval, |env| env.r_packages.push(name.items))?;
        Ok(NoneType)
    }

    /// `install.julia_packages(name)`: one `Pkg.add(...)` step per call.
    fn julia_packages(
        name: UnpackList<String>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if name.items.is_empty() {
            return Err(invalid("Can not install empty Julia package"));
        }
        record(eval, |env| env.julia_packages.push(name.items))?;
        Ok(NoneType)
    }

    /// `install.vscode_extensions(name)`: extensions as `publisher.extension[-version]`,
    /// installed for the VS Code server in dev environments.
    fn vscode_extensions(
        name: UnpackList<String>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        let mut plugins = Vec::with_capacity(name.items.len());
        for n in &name.items {
            plugins.push(VscodePlugin::parse(n).map_err(|e| invalid(e.to_string()))?);
        }
        record(eval, |env| env.vscode_plugins.extend(plugins))?;
        Ok(NoneType)
    }
}

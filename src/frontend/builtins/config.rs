//! `config.*`: `pip_index`, `apt_source` and `entrypoint` are implemented; the rest are stubs.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;

use super::invalid;
use super::record;
use super::recorder;
use super::stubs;
use crate::ir::PipIndex;

/// Registers the members of the `config` namespace.
pub fn register_config(builder: &mut GlobalsBuilder) {
    implemented(builder);
    not_yet(builder);
}

#[starlark_module]
fn implemented(builder: &mut GlobalsBuilder) {
    /// `config.pip_index(url, extra_url="", trust=False)`: the index pip uses in build steps
    /// (written to `/etc/pip.conf`). The last call wins.
    fn pip_index(
        url: &str,
        #[starlark(default = "")] extra_url: &str,
        #[starlark(default = false)] trust: bool,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if url.is_empty() {
            return Err(invalid("config.pip_index: `url` must not be empty"));
        }
        record(eval, |env| {
            env.pip_index = Some(PipIndex {
                url: url.to_string(),
                extra_url: extra_url.to_string(),
                trust,
            })
        })?;
        Ok(NoneType)
    }

    /// `config.apt_source(source)`: the full text of `/etc/apt/sources.list`. The last call wins.
    fn apt_source(
        #[starlark(default = "")] source: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if source.is_empty() {
            return Err(invalid("config.apt_source: source is required"));
        }
        record(eval, |env| env.apt_source = Some(source.to_string()))?;
        Ok(NoneType)
    }

    /// `config.entrypoint(args)`: appended to the image entrypoint (non-dev images only).
    fn entrypoint(args: UnpackList<String>, eval: &mut Evaluator) -> starlark::Result<NoneType> {
        let site = eval.call_stack_top_location();
        let rec = recorder(eval)?;
        if rec.entrypoint_site.borrow().is_none() {
            *rec.entrypoint_site.borrow_mut() = site;
        }
        record(eval, |env| env.entrypoint.extend(args.items))?;
        Ok(NoneType)
    }
}

stubs!(
    not_yet,
    "config.",
    [
        cran_mirror,
        julia_pkg_server,
        conda_channel,
        jupyter,
        rstudio_server,
        gpu,
        shm_size,
        repo,
        owner,
    ]
);

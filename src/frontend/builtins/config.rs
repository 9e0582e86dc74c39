//! `config.*`: mirrors and indexes, Jupyter/RStudio, GPUs, shared memory, the entrypoint, the
//! repository label and the owner.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::Value;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;
use starlark::values::tuple::UnpackTuple;

use super::invalid;
use super::record;
use super::recorder;
use crate::ir::{JupyterConfig, PipIndex, Repo};

/// Registers the members of the `config` namespace.
pub fn register_config(builder: &mut GlobalsBuilder) {
    members(builder);
}

#[starlark_module]
fn members(builder: &mut GlobalsBuilder) {
    /// `config.pip_index(url, extra_url="", trust=False)`: the index pip uses in build steps
    /// (written to `/etc/pip.conf`). The last call wins.
    fn pip_index(
        url: &str,
        #[starlark(default = "")] extra_url: &str,
        #[starlark(default = false)] trust: bool,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if url.is_empty() {
            return Err(invalid("config.pip_index: url is required"));
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

    /// `config.cran_mirror(url="")`: the CRAN mirror for `install.r_packages` (default
    /// `https://cran.rstudio.com`).
    fn cran_mirror(
        #[starlark(default = "")] url: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| env.cran_mirror = Some(url.to_string()))?;
        Ok(NoneType)
    }

    /// `config.julia_pkg_server(url="")`: recorded in the graph; envd v1 does not use it.
    fn julia_pkg_server(
        #[starlark(default = "")] url: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| env.julia_pkg_server = Some(url.to_string()))?;
        Ok(NoneType)
    }

    /// `config.conda_channel(channel="")`: the full `.condarc` of the conda environment. Needs
    /// `install.conda()` first.
    fn conda_channel(
        #[starlark(default = "")] channel: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        let ok = record(eval, |env| match env.conda.as_mut() {
            Some(c) => {
                c.channel = Some(channel.to_string());
                true
            }
            None => false,
        })?;
        if !ok {
            return Err(invalid(
                "cannot config conda when conda is not installed (call `install.conda()` first)",
            ));
        }
        Ok(NoneType)
    }

    /// `config.jupyter(token="", port=0)`: a Jupyter notebook server (port 8888 inside; `port`
    /// is the host port chosen when the environment starts, 0 for a free one).
    fn jupyter(
        #[starlark(default = "")] token: &str,
        #[starlark(default = 0)] port: i64,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.jupyter = Some(JupyterConfig {
                token: token.to_string(),
                port,
            })
        })?;
        Ok(NoneType)
    }

    /// `config.rstudio_server()`: an RStudio server service on port 8787 (envd does not
    /// install RStudio itself). Arguments are ignored, as in envd.
    fn rstudio_server<'v>(
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
        #[starlark(kwargs)] kwargs: starlark::values::dict::DictRef<'v>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        let _ = (args, kwargs);
        record(eval, |env| env.rstudio_server = true)?;
        Ok(NoneType)
    }

    /// `config.gpu(count=0)`: how many GPUs the environment gets when it starts.
    fn gpu(
        #[starlark(default = 0)] count: i64,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| env.num_gpus = count)?;
        Ok(NoneType)
    }

    /// `config.shm_size(size)`: `/dev/shm` size in MB when the environment starts.
    fn shm_size(size: i64, eval: &mut Evaluator) -> starlark::Result<NoneType> {
        record(eval, |env| env.shm_size = size)?;
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

    /// `config.repo(url, description="")`: the project's repository, in the
    /// `ai.tensorchord.envd.repo` label.
    fn repo(
        url: &str,
        #[starlark(default = "")] description: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.repo = Repo {
                url: url.to_string(),
                description: description.to_string(),
            }
        })?;
        Ok(NoneType)
    }

    /// `config.owner(uid, gid)`: the uid and gid of copied files and of the dev user
    /// (default: the user running envkit).
    fn owner(uid: i64, gid: i64, eval: &mut Evaluator) -> starlark::Result<NoneType> {
        let id = |v: i64| u32::try_from(v).ok().filter(|v| *v <= 65535);
        let (Some(u), Some(g)) = (id(uid), id(gid)) else {
            return Err(invalid(format!(
                "get a wrong uid or gid: uid {uid}, gid {gid} (each must be 0..=65535)"
            )));
        };
        record(eval, |env| env.owner = Some((u, g)))?;
        Ok(NoneType)
    }
}

//! Top-level builtins: `base`, `run` (implemented) and `shell`, `git_config`, `include` (stubs).

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;

use super::record;
use super::stubs;
use crate::ir::RunGroup;

/// Registers the top-level envd builtins.
pub fn register_base(builder: &mut GlobalsBuilder) {
    implemented(builder);
    not_yet(builder);
}

#[starlark_module]
fn implemented(builder: &mut GlobalsBuilder) {
    /// `base(image="", dev=False)`: sets the base image (when non-empty) and the dev flag. The
    /// last call wins, so a later `base()` without `dev` resets it to False, as in envd.
    fn base(
        #[starlark(default = "")] image: &str,
        #[starlark(default = false)] dev: bool,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            if !image.is_empty() {
                env.image = image.to_string();
            }
            env.dev = dev;
        })?;
        Ok(NoneType)
    }

    /// `run(commands, mount_host=False)`: one build step running the commands in order. An
    /// empty list records nothing.
    fn run(
        commands: UnpackList<String>,
        #[starlark(default = false)] mount_host: bool,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if commands.items.is_empty() {
            return Ok(NoneType);
        }
        record(eval, |env| {
            env.run.push(RunGroup {
                commands: commands.items,
                mount_host,
            })
        })?;
        Ok(NoneType)
    }
}

stubs!(not_yet, "", [shell, git_config, include]);

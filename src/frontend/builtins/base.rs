//! Top-level builtins: `base`, `shell`, `run`, `git_config` (and `include`, in `program`).

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;

use starlark::values::Value;
use starlark::values::structs::AllocStruct;

use super::invalid;
use super::record;
use crate::ir::{GitConfig, RunGroup};

/// Registers the top-level envd builtins.
pub fn register_base(builder: &mut GlobalsBuilder) {
    implemented(builder);
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

    /// `shell(name)`: the dev environment's shell (`bash`, `zsh`, `fish`), lower-cased.
    fn shell(
        #[starlark(require = pos)] name: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| env.shell = name.to_lowercase())?;
        Ok(NoneType)
    }

    /// `git_config(name="", email="", editor="")`: `~/.gitconfig` of the dev user. The last
    /// call wins.
    fn git_config(
        #[starlark(default = "")] name: &str,
        #[starlark(default = "")] email: &str,
        #[starlark(default = "")] editor: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.git_config = Some(GitConfig {
                name: name.to_string(),
                email: email.to_string(),
                editor: editor.to_string(),
            })
        })?;
        Ok(NoneType)
    }

    /// `include(git)`: the `.envd` files of a git repository (a URL, `file://` URL or local
    /// path), run like envd's: every file's top level, their public names as one namespace.
    fn include<'v>(
        #[starlark(default = "")] git: &str,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let rec = super::recorder(eval)?;
        let members = match rec.include(git) {
            Ok(m) => m,
            Err(crate::frontend::modules::IncludeError::Message(m)) => return Err(invalid(m)),
            Err(crate::frontend::modules::IncludeError::Eval(e)) => return Err(rec.fail_nested(e)),
        };
        let frozen = eval.frozen_heap();
        let fields: Vec<(String, Value<'v>)> = members
            .iter()
            .map(|(n, v)| {
                // SAFETY: `owned_frozen_value` makes this module's frozen heap keep the
                // member's heap alive, so the value lives as long as the module holding the
                // result (what `OwnedFrozenValue::owned_value` does, without its lifetime
                // tie to the heap reference).
                #[allow(unsafe_code)]
                let fv = unsafe { v.owned_frozen_value(frozen) };
                (n.clone(), fv.to_value())
            })
            .collect();
        Ok(eval.heap().alloc(AllocStruct(fields)))
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

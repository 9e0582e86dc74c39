//! `runtime.*`: `environ` is implemented; the rest are stubs.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::dict::UnpackDictEntries;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;

use super::record;
use super::stubs;

/// Registers the members of the `runtime` namespace.
pub fn register_runtime(builder: &mut GlobalsBuilder) {
    implemented(builder);
    not_yet(builder);
}

#[starlark_module]
fn implemented(builder: &mut GlobalsBuilder) {
    /// `runtime.environ(env={}, extra_path=[])`: `env` is merged over earlier calls (a later
    /// value wins); `extra_path` entries are appended. Both apply to build steps and the image.
    fn environ(
        #[starlark(default = UnpackDictEntries::default())] env: UnpackDictEntries<String, String>,
        #[starlark(default = UnpackList::default())] extra_path: UnpackList<String>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |e| {
            e.environ.extend(env.entries);
            e.extra_path.extend(extra_path.items);
        })?;
        Ok(NoneType)
    }
}

stubs!(not_yet, "runtime.", [command, daemon, expose, mount, init]);

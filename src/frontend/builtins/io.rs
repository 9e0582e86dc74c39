//! `io.*`: `copy` is implemented; `http` is a stub.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::none::NoneType;

use super::invalid;
use super::record;
use super::stubs;
use crate::ir::Copy;

/// Registers the members of the `io` namespace.
pub fn register_io(builder: &mut GlobalsBuilder) {
    implemented(builder);
    not_yet(builder);
}

#[starlark_module]
fn implemented(builder: &mut GlobalsBuilder) {
    /// `io.copy(source, target, image="")`: copies `source` from the build context (or from
    /// `image`) to the absolute path `target`.
    fn copy(
        source: &str,
        target: &str,
        #[starlark(default = "")] image: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if !target.starts_with('/') {
            return Err(invalid(format!(
                "io.copy target must be an absolute path, got {target:?}"
            )));
        }
        record(eval, |env| {
            env.copies.push(Copy {
                source: source.to_string(),
                target: target.to_string(),
                image: (!image.is_empty()).then(|| image.to_string()),
            })
        })?;
        Ok(NoneType)
    }
}

stubs!(not_yet, "io.", [http]);

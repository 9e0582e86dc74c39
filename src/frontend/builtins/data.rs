//! `data.*`: `data.envd` is a stub; `data.path.huggingface` and `data.path.dgl` are envd's
//! string constants.

use starlark::environment::GlobalsBuilder;

use super::stubs;

/// `data.path.huggingface`: Hugging Face's cache directory on the host.
pub const HUGGINGFACE_PATH: &str = "~/.cache/huggingface";
/// `data.path.dgl`: DGL's data directory on the host.
pub const DGL_PATH: &str = "~/.dgl";

/// Registers the members of the `data` namespace.
pub fn register_data(builder: &mut GlobalsBuilder) {
    not_yet(builder);
    builder.namespace("path", |path| {
        path.set("huggingface", HUGGINGFACE_PATH);
        path.set("dgl", DGL_PATH);
    });
}

stubs!(not_yet, "data.", [envd]);

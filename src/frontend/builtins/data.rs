//! `data.*`: `data.envd(name)` (a data directory envkit manages on the host, for
//! `runtime.mount`) and envd's well-known host paths `data.path.huggingface` / `data.path.dgl`.

use std::fmt;
use std::path::Path;

use allocative::Allocative;
use starlark::environment::GlobalsBuilder;
use starlark::starlark_module;
use starlark::starlark_simple_value;
use starlark::values::NoSerialize;
use starlark::values::ProvidesStaticType;
use starlark::values::StarlarkValue;
use starlark::values::starlark_value;

/// `data.path.huggingface`: Hugging Face's cache directory on the host.
pub const HUGGINGFACE_PATH: &str = "~/.cache/huggingface";
/// `data.path.dgl`: DGL's data directory on the host.
pub const DGL_PATH: &str = "~/.dgl";

// starlark's derives and `starlark_simple_value!` implement unsafe marker traits: the type
// lives in a module of its own where that is allowed (the crate denies `unsafe` code).
#[allow(unsafe_code)]
mod data_source_type {
    use super::*;

    /// The value `data.envd(name)` returns: a named data directory under envkit's cache dir.
    #[derive(Debug, Clone, ProvidesStaticType, NoSerialize, Allocative)]
    pub struct DataSource {
        pub name: String,
    }

    starlark_simple_value!(DataSource);
}
pub use data_source_type::DataSource;

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "envd managed data source")
    }
}

#[starlark_value(type = "envd managed data source")]
impl<'v> StarlarkValue<'v> for DataSource {}

impl DataSource {
    /// The host directory `<cache>/data/<name>` (`~/.cache/envkit/data/<name>`), created
    /// (mode 0755) when missing. envd makes it 0777 for its container user; envkit's
    /// environments run as the user themself, and a world-writable directory in the user's
    /// home is not wanted on a shared host. The name must be one plain component: an empty
    /// one would name (and once chmod) the data root itself.
    pub fn host_dir(&self, cache: &Path) -> Result<String, String> {
        let n = self.name.as_str();
        if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
            return Err(format!(
                "invalid data.envd name {n:?}: give the data set a name, e.g. data.envd(name=\"mnist\")"
            ));
        }
        let root = cache.join("data");
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("creating data directory {}: {e}", root.display()))?;
        let dir = root.join(n);
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(format!("creating data directory {}: {e}", dir.display())),
        }
        Ok(dir.display().to_string())
    }
}

/// Registers the members of the `data` namespace.
pub fn register_data(builder: &mut GlobalsBuilder) {
    members(builder);
    builder.namespace("path", |path| {
        path.set("huggingface", HUGGINGFACE_PATH);
        path.set("dgl", DGL_PATH);
    });
}

#[starlark_module]
fn members(builder: &mut GlobalsBuilder) {
    /// `data.envd(name="")`: a data directory managed by envkit on the host
    /// (`~/.cache/envkit/data/<name>`), for `runtime.mount(host_path=data.envd(...))`.
    fn envd(#[starlark(default = "")] name: &str) -> starlark::Result<DataSource> {
        Ok(DataSource {
            name: name.to_string(),
        })
    }
}

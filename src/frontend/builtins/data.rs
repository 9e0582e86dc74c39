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

/// The value `data.envd(name)` returns: a named data directory under envkit's cache dir.
#[derive(Debug, Clone, ProvidesStaticType, NoSerialize, Allocative)]
pub struct DataSource {
    pub name: String,
}

starlark_simple_value!(DataSource);

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "envd managed data source")
    }
}

#[starlark_value(type = "envd managed data source")]
impl<'v> StarlarkValue<'v> for DataSource {}

impl DataSource {
    /// The host directory `<cache>/data/<name>` (`~/.cache/envkit/data/<name>`), created
    /// (mode 0777, like envd) when missing.
    pub fn host_dir(&self, cache: &Path) -> Result<String, String> {
        if self.name.contains('/') || self.name == ".." {
            return Err(format!("invalid data.envd name {:?}", self.name));
        }
        let dir = cache.join("data").join(&self.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("creating data directory {}: {e}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("setting mode of {}: {e}", dir.display()))?;
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

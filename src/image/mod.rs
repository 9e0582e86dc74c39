//! OCI image config / manifest / index assembly.
//!
//! [`ImageSpec`] is what `lower` decides about the final image (envd's `containerimage.config`):
//! the exporter combines it with the base image's config and the layers the build made.

use std::collections::BTreeMap;

/// The runtime part of an image config that a build decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSpec {
    /// `KEY=value` entries, in order.
    pub env: Vec<String>,
    /// `None` keeps the base image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// `None` keeps the base image's cmd.
    pub cmd: Option<Vec<String>>,
    /// Empty keeps the base image's user.
    pub user: Option<String>,
    /// Empty keeps the base image's working dir.
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// e.g. `2222/tcp`.
    pub exposed_ports: Vec<String>,
}
